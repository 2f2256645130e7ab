"""The Oobleck VAE of ETTA (ETTA-VAE): Snake-beta activations, weight-normalised convolutions.

Module layout and parameter names follow the official code (``layers.N`` sequences, legacy
``weight_g``/``weight_v`` weight norm) so official VAE weights load by a prefix change.
Encoder: audio (B, 2, S) -> mean and scale of (B, 64, S / 2048). Decoder: (B, 64, T) -> (B, 2, 2048 T).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from etta_engine._validation import autocast_enabled, check_tensor
from etta_engine.config import VAEConfig
from etta_engine.graphs import GraphCache, check_cuda_graph_mode, static_mode
from etta_engine.ops.snake import snake_beta


class _WeightNorm(nn.Module):
    """Weight norm ``w = g * v / ||v||`` (norm over all dims but the first), legacy parameter names."""

    def __init__(self, weight_shape: tuple[int, ...], bias_dim: int | None) -> None:
        super().__init__()
        v = torch.empty(weight_shape)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # PyTorch's default convolution init
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))  # (weight_shape[0], 1, 1)
        self.weight_v = nn.Parameter(v)
        if bias_dim is None:
            self.register_parameter("bias", None)
        else:
            fan_in = v.shape[1] * v.shape[2]
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = nn.Parameter(torch.empty(bias_dim).uniform_(-bound, bound))
        self._folded: tuple[tuple, torch.Tensor] | None = None  # (parameters' identity and versions, weight)

    def weight(self) -> torch.Tensor:
        """``g * v / ||v||``. Without autograd (inference, or frozen weights) the folded weight is kept and reused
        until a parameter changes (in place, as an optimizer step or ``load_state_dict`` does, or by a move or a
        cast): a call then reads one weight instead of three tensors and launches no norm kernels."""
        g, v = self.weight_g, self.weight_v
        if torch.is_grad_enabled() and (g.requires_grad or v.requires_grad):
            return self._fold()
        key = (g.data_ptr(), g._version, v.data_ptr(), v._version, g.dtype, v.dtype, g.device)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, self._fold())
        return self._folded[1]

    def _fold(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(1, 2), keepdim=True))


class WNConv1d(_WeightNorm):
    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1, bias=True
    ) -> None:
        super().__init__((c_out, c_in, kernel_size), c_out if bias else None)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)


class WNConvTranspose1d(_WeightNorm):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__((c_in, c_out, kernel_size), c_out)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)


class SnakeBeta(nn.Module):
    """``x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2``, per-channel alpha and beta in log scale."""

    def __init__(self, channels: int, ops: str = "auto") -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, C, S)
        return snake_beta(x, self.alpha, self.beta, impl=self.ops)


class ResidualUnit(nn.Module):
    """``x + conv1(snake(conv7_dilated(snake(x))))``."""

    def __init__(self, channels: int, dilation: int, ops: str = "auto") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(channels, ops),
            WNConv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation),
            SnakeBeta(channels, ops),
            WNConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), Snake-beta, then a strided convolution (downsample by ``stride``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, ops: str = "auto") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(c_in, 1, ops),
            ResidualUnit(c_in, 3, ops),
            ResidualUnit(c_in, 9, ops),
            SnakeBeta(c_in, ops),
            WNConv1d(c_in, c_out, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Snake-beta, a transposed convolution (upsample by ``stride``), then three residual units."""

    def __init__(self, c_in: int, c_out: int, stride: int, ops: str = "auto") -> None:
        super().__init__()
        self.layers = nn.Sequential(
            SnakeBeta(c_in, ops),
            WNConvTranspose1d(c_in, c_out, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(c_out, 1, ops),
            ResidualUnit(c_out, 3, ops),
            ResidualUnit(c_out, 9, ops),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckEncoder(nn.Module):
    """audio (B, audio_channels, S) -> (B, 2 * latent_dim, S / prod(strides)): mean and pre-softplus scale."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in (1, *cfg.c_mults)]
        layers: list[nn.Module] = [WNConv1d(cfg.audio_channels, widths[0], kernel_size=7, padding=3)]
        layers += [EncoderBlock(widths[i], widths[i + 1], s, cfg.ops) for i, s in enumerate(cfg.strides)]
        layers += [SnakeBeta(widths[-1], cfg.ops), WNConv1d(widths[-1], 2 * cfg.latent_dim, kernel_size=3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """latents (B, latent_dim, T) -> audio (B, audio_channels, T * prod(strides)); no output tanh."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = [cfg.channels * m for m in (1, *cfg.c_mults)]
        n = len(cfg.strides)
        layers: list[nn.Module] = [WNConv1d(cfg.latent_dim, widths[-1], kernel_size=7, padding=3)]
        layers += [DecoderBlock(widths[i + 1], widths[i], cfg.strides[i], cfg.ops) for i in reversed(range(n))]
        layers += [
            SnakeBeta(widths[0], cfg.ops),
            WNConv1d(widths[0], cfg.audio_channels, kernel_size=7, padding=3, bias=False),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


# Latent frames (x batch) up to which a decoding window is replayed from a CUDA graph. A captured graph keeps
# its window's activations in its own memory pool for good (hundreds of MB a window at this size); longer windows
# run kernels long enough for the host to stay ahead, so they decode plainly and keep no memory.
GRAPH_MAX_FRAMES = 256


class VAE(nn.Module):
    """ETTA-VAE. ``encode(audio) -> (mean, std)``, ``sample(mean, std)``, ``decode(latents) -> audio``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = OobleckEncoder(cfg)
        self.decoder = OobleckDecoder(cfg)
        self.graphs = GraphCache()  # the decoder's CUDA graphs, per window shape (decode(cuda_graph=...))

    @property
    def downsampling_ratio(self) -> int:
        return self.cfg.downsampling_ratio

    def set_ops(self, ops: str) -> VAE:
        """Run the Snake-beta activations with ``ops`` (auto, torch, triton, cuda: see :mod:`etta_engine.ops`)
        from now on; the weights are untouched. Returns the VAE."""
        self.cfg = dataclasses.replace(self.cfg, ops=ops)  # checks the name
        for m in self.modules():
            if isinstance(m, SnakeBeta):
                m.ops = ops
        return self

    def encode(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, audio_channels, S), S a multiple of the downsampling ratio -> mean, std (B, latent_dim, T)."""
        check_tensor("audio", audio, 3)
        if audio.shape[1] != self.cfg.audio_channels:
            raise ValueError(
                f"audio must have {self.cfg.audio_channels} channels (shape (B, {self.cfg.audio_channels}, S)), "
                f"got shape {tuple(audio.shape)}"
            )
        ratio = self.downsampling_ratio
        if audio.shape[2] == 0 or audio.shape[2] % ratio:
            raise ValueError(
                f"audio length {audio.shape[2]} must be a positive multiple of {ratio} samples; "
                "pad it (etta_engine.models.vae.pad_to_multiple)"
            )
        self._check_dtype("audio", audio)
        mean, scale = self.encoder(audio).chunk(2, dim=1)
        return mean, F.softplus(scale) + 1e-4

    @staticmethod
    def sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent drawn from N(mean, std^2)."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise

    @staticmethod
    def kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, std^2) || N(0, I)) summed over channels, averaged over batch and time (official form)."""
        var = std * std
        return (mean * mean + var - var.log() - 1.0).sum(1).mean()

    def decode(
        self,
        latents: torch.Tensor,
        chunk_frames: int | None = None,
        overlap_frames: int = 32,
        cuda_graph: bool | str = False,
    ) -> torch.Tensor:
        """latents (B, latent_dim, T) -> audio (B, audio_channels, T * downsampling_ratio).

        With ``chunk_frames``, clips longer than that are decoded in windows of ``chunk_frames`` latents
        that overlap by ``overlap_frames`` on each side, keeping each window's centre: the memory of one
        window whatever the length, and (with an overlap wider than the decoder's receptive field) the
        same audio up to rounding.
        ``cuda_graph``: True (or "step") replays the decoder from a CUDA graph per window shape on a CUDA device
        (a shape's first call warms up, its second captures): one launch instead of ~600 kernels, which at low
        step counts would leave the GPU waiting for the host; "eager" runs the same static buffers eagerly on
        any device; False runs the plain decoder. Windows of more than :data:`GRAPH_MAX_FRAMES` latent frames
        (times the batch) always decode plainly.
        """
        check_cuda_graph_mode(cuda_graph)
        check_tensor("latents", latents, 3)
        if latents.shape[1] != self.cfg.latent_dim or latents.shape[2] == 0:
            raise ValueError(
                f"latents must have shape (B, {self.cfg.latent_dim}, T) with T >= 1, got {tuple(latents.shape)}"
            )
        self._check_dtype("latents", latents)
        T = latents.shape[2]
        if chunk_frames is None or T <= chunk_frames:
            return self._decode_window(latents, cuda_graph)
        hop = chunk_frames - 2 * overlap_frames
        if overlap_frames < 0 or hop < 1:
            raise ValueError(
                f"chunk_frames={chunk_frames} must exceed 2 * overlap_frames={2 * overlap_frames} (overlap >= 0)"
            )
        r = self.downsampling_ratio
        out = None
        for start in range(0, T, hop):
            end = min(start + hop, T)
            lo, hi = max(0, start - overlap_frames), min(T, end + overlap_frames)
            audio = self._decode_window(latents[..., lo:hi], cuda_graph)  # (B, C, (hi - lo) r)
            if out is None:
                out = audio.new_empty(audio.shape[0], audio.shape[1], T * r)
            out[..., start * r : end * r] = audio[..., (start - lo) * r : (end - lo) * r]
        return out

    def _decode_window(self, z: torch.Tensor, cuda_graph: bool | str) -> torch.Tensor:
        mode = static_mode(cuda_graph, z)
        if mode is None or z.shape[0] * z.shape[2] > GRAPH_MAX_FRAMES:
            return self.decoder(z)
        # The weights' addresses and versions are part of the key: a graph reads them (and the weight norm's
        # folded weights, refolded after an in-place update) where they were at capture.
        weights = tuple((p.data_ptr(), p._version) for p in self.decoder.parameters())
        key = (tuple(z.shape), z.dtype, str(z.device), self.cfg.ops, weights)
        return self.graphs.call(key, self.decoder, (z,), (), self, mode == "capture")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the VAE's parameters (the dtype its inputs must have outside autocast)."""
        return self.decoder.layers[0].weight_v.dtype

    def _check_dtype(self, name: str, x: torch.Tensor) -> None:
        param_dtype = self.dtype
        if x.dtype != param_dtype and not autocast_enabled(x.device):
            raise TypeError(f"{name} is {x.dtype} but the VAE's parameters are {param_dtype}; cast one of them")


def pad_to_multiple(audio: torch.Tensor, multiple: int) -> torch.Tensor:
    """Right-pad the last dim of ``audio`` with zeros to a multiple of ``multiple``."""
    pad = -audio.shape[-1] % multiple
    return F.pad(audio, (0, pad)) if pad else audio
