"""Training losses of ETTA-VAE: multi-resolution STFT on sum and difference, STFT discriminator, KL.

The recipe (../shared/spec/ETTA.md): a multi-resolution STFT loss on the sum ``L + R`` and difference
``L - R`` channels (FFT sizes 2048..32), an EnCodec-style multi-scale STFT discriminator trained with
the hinge loss (generator weight 0.1) plus feature matching (5.0), and the bottleneck's KL (1e-4)::

    L_G = 1.0 * mrstft + 0.1 * sum_k -mean(D_k(pred)) + 5.0 * fm(D(target), D(pred)) + 1e-4 * kl
    L_D = sum_k mean(relu(1 - D_k(target))) + mean(relu(1 + D_k(pred)))

An optional multi-scale log-mel term (``mel``, weight 0 in the ETTA recipe; DAC's vocoder loss) gives
pitched sounds a wide basin: a tone a few percent off its frequency shares the target's mel bands, while
under a fine STFT it scores worse than silence.

Audio is (B, C, S) throughout; spectra are computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from etta_engine._validation import check_tensor

SILENCE_RMS = 1e-6  # a target spectrum whose RMS magnitude is below this counts as silent


def _check_resolutions(fft_sizes: Sequence[int], hop_sizes: Sequence[int], win_lengths: Sequence[int]) -> None:
    """Raise unless the three sequences have one positive entry per resolution and ``win <= fft``."""
    lengths = (len(fft_sizes), len(hop_sizes), len(win_lengths))
    if len(set(lengths)) != 1 or lengths[0] == 0:
        raise ValueError(
            f"fft sizes {tuple(fft_sizes)}, hop sizes {tuple(hop_sizes)} and window lengths {tuple(win_lengths)} "
            "must have the same non-zero length"
        )
    for n_fft, hop, win in zip(fft_sizes, hop_sizes, win_lengths, strict=True):
        if not all(isinstance(v, int) and v > 0 for v in (n_fft, hop, win)):
            raise ValueError(f"resolution (fft={n_fft}, hop={hop}, win={win}) must be positive integers")
        if win > n_fft:
            raise ValueError(f"window length {win} exceeds its fft size {n_fft}; allowed: 1 <= win <= fft")


def _check_length(S: int, longest: int) -> None:
    """Centred STFT frames reflect-pad ``longest // 2`` samples, which needs a signal longer than that."""
    if S <= longest // 2:
        raise ValueError(
            f"signal length S={S} is too short for fft size {longest}: centred frames reflect-pad "
            f"{longest // 2} samples, which needs S > {longest // 2}"
        )


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_tensor("pred", pred, 3)
    check_tensor("target", target, 3)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} and target shape {tuple(target.shape)} must be equal")


def stft_magnitude(x: torch.Tensor, n_fft: int, hop_length: int, win_length: int) -> torch.Tensor:
    """``|STFT(x)|`` with a periodic Hann window, centred frames (reflect padding of ``n_fft // 2``).

    x (N, S) -> (N, n_fft // 2 + 1, 1 + S // hop_length), in x's dtype (call it with fp32).
    A window shorter than ``n_fft`` is zero-padded on both sides to ``n_fft`` (torch.stft's rule).
    """
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x, n_fft, hop_length, win_length, window, center=True, pad_mode="reflect", return_complex=True
    )  # (N, F, frames)
    return spec.abs()


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over resolutions of spectral convergence plus log-magnitude L1.

    Per resolution, with ``P = |STFT(pred)|`` and ``T = |STFT(target)|`` over all (B*C) channels::

        sc = ||T - P||_F / ||T||_F            log_mag = mean |log(T + eps) - log(P + eps)|

    and the loss is ``mean_r (sc_r + log_mag_r)``. Channels are independent signals. For a silent target
    (RMS magnitude below ``SILENCE_RMS``, e.g. the difference channel of mono audio) sc is 0 rather than
    ``||P|| / 0``: otherwise every mono clip would contribute an unbounded term.
    """

    def __init__(
        self,
        fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128, 64, 32),
        hop_sizes: Sequence[int] = (512, 256, 128, 64, 32, 16, 8),
        win_lengths: Sequence[int] = (2048, 1024, 512, 256, 128, 64, 32),
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        _check_resolutions(fft_sizes, hop_sizes, win_lengths)
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps={eps} must be a positive finite number")
        self.fft_sizes, self.hop_sizes, self.win_lengths = tuple(fft_sizes), tuple(hop_sizes), tuple(win_lengths)
        self.eps = eps

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(sc_r, log_mag_r)]`` per resolution, 0-dim fp32 tensors; pred, target (B, C, S)."""
        _check_pair(pred, target)
        S = pred.shape[-1]
        _check_length(S, max(self.fft_sizes))
        out = []
        with torch.autocast(device_type=pred.device.type, enabled=False):
            p, t = pred.float().reshape(-1, S), target.float().reshape(-1, S)  # (B*C, S)
            for n_fft, hop, win in zip(self.fft_sizes, self.hop_sizes, self.win_lengths, strict=True):
                p_mag = stft_magnitude(p, n_fft, hop, win)  # (B*C, n_fft // 2 + 1, frames)
                t_mag = stft_magnitude(t, n_fft, hop, win)
                t_norm = torch.linalg.vector_norm(t_mag)
                sc = torch.linalg.vector_norm(t_mag - p_mag) / t_norm.clamp_min(self.eps)
                # Undefined for a silent target (the difference channel of mono audio): 0 there, and the
                # log-magnitude term alone pulls the prediction to silence.
                sc = torch.where(t_norm > SILENCE_RMS * t_mag.numel() ** 0.5, sc, torch.zeros_like(sc))
                log_mag = (torch.log(t_mag + self.eps) - torch.log(p_mag + self.eps)).abs().mean()
                out.append((sc, log_mag))
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target (B, C, S) -> 0-dim fp32 loss."""
        return torch.stack([sc + log_mag for sc, log_mag in self.terms(pred, target)]).mean()


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """The HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular HTK mel filters (n_mels, n_freqs) over the bins of a one-sided spectrum (unnormalised, so
    neighbouring filters sum to 1 between the first and the last centre frequency)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"mel filterbank needs n_freqs >= 2, n_mels >= 1 and 0 <= f_min < f_max <= sample_rate / 2; got "
            f"n_freqs={n_freqs}, n_mels={n_mels}, f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}"
        )
    bins = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising = (bins[None] - lo) / (centre - lo)
    falling = (hi - bins[None]) / (hi - centre)
    return torch.minimum(rising, falling).clamp_min(0.0).float()  # (M, F)


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of ``mean |log10(max(P_mel, eps)) - log10(max(T_mel, eps))|`` with the mel spectra of
    the power spectrum ``|STFT|^2`` (window w, hop w / 4, ``n_mels`` filters per scale), as DAC's mel loss.

    Channels are independent signals; pred, target (B, C, S). Scales whose mel filters would be narrower than
    the STFT's bins keep fewer filters (at most ``n_fft // 4``).
    """

    def __init__(
        self,
        sample_rate: int,
        win_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(win_lengths) != len(n_mels) or not win_lengths:
            raise ValueError(f"win_lengths {tuple(win_lengths)} and n_mels {tuple(n_mels)} need equal, non-zero length")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps={eps} must be a positive finite number")
        self.sample_rate, self.win_lengths, self.eps = sample_rate, tuple(win_lengths), eps
        for w, m in zip(win_lengths, n_mels, strict=True):
            self.register_buffer(f"fb_{w}", mel_filterbank(w // 2 + 1, min(m, w // 4), sample_rate), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        S = pred.shape[-1]
        _check_length(S, max(self.win_lengths))
        losses = []
        with torch.autocast(device_type=pred.device.type, enabled=False):
            p, t = pred.float().reshape(-1, S), target.float().reshape(-1, S)
            for w in self.win_lengths:
                fb = getattr(self, f"fb_{w}")  # (M, F)
                p_mel = fb @ stft_magnitude(p, w, w // 4, w).square()  # (B*C, M, frames)
                t_mel = fb @ stft_magnitude(t, w, w // 4, w).square()
                diff = torch.log10(p_mel.clamp_min(self.eps)) - torch.log10(t_mel.clamp_min(self.eps))
                losses.append(diff.abs().mean())
        return torch.stack(losses).mean()


class SumAndDifferenceSTFTLoss(nn.Module):
    """``(mrstft(L_p + R_p, L_t + R_t) + mrstft(L_p - R_p, L_t - R_t)) / 2`` for stereo (B, 2, S);
    ``mrstft(pred, target)`` for mono (B, 1, S), which has no stereo image.

    The sum carries the mid (mono) content, the difference the stereo image; keyword arguments go to
    :class:`MultiResolutionSTFTLoss` (kept as ``self.mrstft``).
    """

    def __init__(self, **mrstft_kwargs) -> None:
        super().__init__()
        self.mrstft = MultiResolutionSTFTLoss(**mrstft_kwargs)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target (B, 2, S) or (B, 1, S) -> 0-dim fp32 loss."""
        _check_pair(pred, target)
        if pred.shape[1] == 1:
            return self.mrstft(pred, target)
        if pred.shape[1] != 2:
            raise ValueError(f"sum and difference need stereo (B, 2, S) or mono (B, 1, S), got {tuple(pred.shape)}")
        sum_p, sum_t = pred[:, :1] + pred[:, 1:], target[:, :1] + target[:, 1:]  # (B, 1, S)
        diff_p, diff_t = pred[:, :1] - pred[:, 1:], target[:, :1] - target[:, 1:]  # (B, 1, S)
        return (self.mrstft(sum_p, sum_t) + self.mrstft(diff_p, diff_t)) / 2


# ------------------------------------------------------------------ discriminator


class DiscriminatorOutput(NamedTuple):
    """One entry per scale: logits (B, 1, frames, freq') and that scale's feature maps (after activation)."""

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]


def _wn_conv2d(
    c_in: int,
    c_out: int,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> nn.Module:
    """Weight-normalised Conv2d with ``padding = dilation * (kernel - 1) // 2``: odd kernels keep length at stride 1."""
    padding = (dilation[0] * (kernel_size[0] - 1) // 2, dilation[1] * (kernel_size[1] - 1) // 2)
    return weight_norm(nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation))


class STFTDiscriminator(nn.Module):
    """One scale of the EnCodec-style discriminator, over a complex spectrogram laid out (B, 2C, time, freq).

    ``conv(kernel) -> [conv(kernel, stride, dilation (d, 1)) for d in dilations] -> conv(k0 x k0)``,
    each followed by LeakyReLU (these outputs are the feature maps), then ``conv(k0 x k0) -> 1`` logits.
    Widths: ``min(filters * filters_scale**i, max_filters)`` for the i-th convolution.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        max_filters: int,
        filters_scale: int,
        kernel_size: tuple[int, int],
        dilations: Sequence[int],
        stride: tuple[int, int],
        negative_slope: float,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.negative_slope = negative_slope
        widths = [min(filters * filters_scale**i, max_filters) for i in range(len(dilations) + 2)]
        k0 = kernel_size[0]
        convs = [_wn_conv2d(2 * in_channels, widths[0], kernel_size)]
        convs += [
            _wn_conv2d(widths[i], widths[i + 1], kernel_size, stride=stride, dilation=(d, 1))
            for i, d in enumerate(dilations)
        ]
        convs.append(_wn_conv2d(widths[-2], widths[-1], (k0, k0)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = _wn_conv2d(widths[-1], 1, (k0, k0))

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, S) -> (B, 2C, frames, n_fft // 2 + 1): real parts of all channels, then imaginary parts.

        ``STFT / sqrt(n_fft)`` (torch's ``normalized=True``), periodic Hann window, uncentred frames,
        so ``frames = 1 + (S - n_fft) // hop_length``. Computed in fp32, returned in x's dtype.
        """
        B, C, S = x.shape
        window = torch.hann_window(self.win_length, device=x.device, dtype=torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = torch.stft(
                x.float().reshape(B * C, S),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window,
                center=False,
                normalized=True,
                return_complex=True,
            )  # (B*C, F, frames)
        z = z.reshape(B, C, *z.shape[1:])  # (B, C, F, frames)
        z = torch.cat([z.real, z.imag], dim=1)  # (B, 2C, F, frames)
        return z.transpose(2, 3).to(x.dtype)  # (B, 2C, frames, F)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, C, S) -> logits (B, 1, frames, F'), feature maps [(B, width_i, frames, F_i)]."""
        z = self.spectrogram(x)
        features = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), self.negative_slope)
            features.append(z)
        return self.conv_post(z), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec-style multi-scale STFT discriminator: one :class:`STFTDiscriminator` per STFT resolution.

    x (B, in_channels, S) with ``S >= max(n_ffts)`` -> :class:`DiscriminatorOutput` (logits and features
    per scale). With the default ``stride=(1, 2)`` each scale keeps every STFT frame and halves the
    frequency axis once per dilation.
    """

    def __init__(
        self,
        in_channels: int = 2,
        filters: int = 64,
        n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128),
        hop_lengths: Sequence[int] = (512, 256, 128, 64, 32),
        win_lengths: Sequence[int] = (2048, 1024, 512, 256, 128),
        max_filters: int = 1024,
        filters_scale: int = 1,
        kernel_size: tuple[int, int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: tuple[int, int] = (1, 2),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        _check_resolutions(n_ffts, hop_lengths, win_lengths)
        for name, value in (
            ("in_channels", in_channels),
            ("filters", filters),
            ("max_filters", max_filters),
            ("filters_scale", filters_scale),
        ):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}={value} must be an integer >= 1")
        kernel_size, stride = tuple(kernel_size), tuple(stride)
        if len(kernel_size) != 2 or not all(isinstance(k, int) and k >= 1 and k % 2 == 1 for k in kernel_size):
            raise ValueError(f"kernel_size={kernel_size} must be two odd positive integers (time, freq)")
        if len(stride) != 2 or not all(isinstance(s, int) and s >= 1 for s in stride):
            raise ValueError(f"stride={stride} must be two positive integers (time, freq)")
        if not all(isinstance(d, int) and d >= 1 for d in dilations):
            raise ValueError(f"dilations={tuple(dilations)} must be positive integers")
        self.in_channels = in_channels
        self.min_length = max(n_ffts)
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(
                in_channels,
                filters,
                n_fft,
                hop,
                win,
                max_filters,
                filters_scale,
                kernel_size,
                dilations,
                stride,
                negative_slope,
            )
            for n_fft, hop, win in zip(n_ffts, hop_lengths, win_lengths, strict=True)
        )

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        check_tensor("x", x, 3)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the discriminator takes (B, {self.in_channels}, S) audio, got shape {tuple(x.shape)}")
        if x.shape[2] < self.min_length:
            raise ValueError(f"audio length {x.shape[2]} is shorter than the largest fft size {self.min_length}")
        logits, features = [], []
        for disc in self.discriminators:
            lg, fm = disc(x)
            logits.append(lg)
            features.append(fm)
        return DiscriminatorOutput(logits, features)


# ------------------------------------------------------------------ adversarial losses


def _check_scales(name_a: str, a: Sequence, name_b: str, b: Sequence) -> None:
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(f"{name_a} ({len(a)} scales) and {name_b} ({len(b)} scales) must be equal and non-empty")


def hinge_discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_k mean(relu(1 - real_k)) + mean(relu(1 + fake_k))`` over scales k; 0-dim."""
    _check_scales("real_logits", real_logits, "fake_logits", fake_logits)
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits, strict=True))


def hinge_generator_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_k -mean(fake_k)`` over scales k; 0-dim."""
    if len(fake_logits) == 0:
        raise ValueError("fake_logits has 0 scales; need at least one")
    return sum(-f.mean() for f in fake_logits)


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """``sum_k mean_l mean |real_kl - fake_kl|`` over scales k and layers l; real features are constants."""
    _check_scales("real_features", real_features, "fake_features", fake_features)
    total = 0.0
    for k, (real, fake) in enumerate(zip(real_features, fake_features, strict=True)):
        if len(real) == 0 or len(real) != len(fake):
            raise ValueError(f"scale {k}: {len(real)} real and {len(fake)} fake feature maps; need equal, >= 1")
        total = total + sum((r.detach() - f).abs().mean() for r, f in zip(real, fake, strict=True)) / len(real)
    return total


# ------------------------------------------------------------------ the VAE objective


@dataclass(frozen=True)
class VAELossWeights:
    """Weights of the generator (VAE) loss terms; the defaults are the ETTA-VAE recipe."""

    mrstft: float = 1.0
    adversarial: float = 0.1
    feature_matching: float = 5.0
    kl: float = 1e-4
    mel: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"loss weight {f.name}={value} must be a finite number >= 0")


class VAELosses(nn.Module):
    """Sum-and-difference MR-STFT, the multi-scale STFT discriminator and the weights that combine them.

    ``generator_loss`` also sends gradients into the discriminator's parameters (through ``D(pred)``):
    the trainer steps only the VAE's optimiser on it and zeroes the discriminator's gradients before
    ``discriminator_loss``'s step. ``spectral_eps`` is the MR-STFT's log-magnitude floor (raise it for
    synthetic audio with digital silence, whose empty bins would otherwise dominate the loss). A non-zero
    ``weights.mel`` needs the audio's ``sample_rate`` for its filters. Keyword arguments beyond these go to
    :class:`MultiScaleSTFTDiscriminator`.
    """

    def __init__(
        self,
        weights: VAELossWeights | None = None,
        discriminator_filters: int = 64,
        spectral_eps: float = 1e-8,
        sample_rate: int | None = None,
        **discriminator_kwargs,
    ) -> None:
        super().__init__()
        self.weights = VAELossWeights() if weights is None else weights
        self.spectral = SumAndDifferenceSTFTLoss(eps=spectral_eps)
        if self.weights.mel and sample_rate is None:
            raise ValueError(f"the mel loss (weight {self.weights.mel}) needs the audio's sample_rate")
        self.mel = MultiScaleMelLoss(sample_rate) if self.weights.mel else None
        self.discriminator = MultiScaleSTFTDiscriminator(filters=discriminator_filters, **discriminator_kwargs)

    @property
    def uses_discriminator(self) -> bool:
        """False during the spectral + KL warm-up (adversarial and feature-matching weights both 0)."""
        return self.weights.adversarial != 0 or self.weights.feature_matching != 0

    def generator_loss(
        self, pred: torch.Tensor, target: torch.Tensor, kl: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred, target (B, 2, S); kl 0-dim -> (total, parts), parts detached, keyed by the weight names.

        ``total = w.mrstft * mrstft + w.adversarial * sum_k -mean(D_k(pred))
        + w.feature_matching * fm(D(target), D(pred)) + w.kl * kl + w.mel * mel``.
        """
        check_tensor("kl", kl, 0)
        w = self.weights
        spectral = self.spectral(pred, target)
        if self.uses_discriminator:
            fake = self.discriminator(pred)
            with torch.no_grad():  # feature matching treats the real branch as constants
                real = self.discriminator(target)
            adversarial = hinge_generator_loss(fake.logits)
            matching = feature_matching_loss(real.features, fake.features)
        else:
            adversarial = matching = spectral.new_zeros(())
        mel = self.mel(pred, target) if self.mel is not None and w.mel else spectral.new_zeros(())
        total = w.mrstft * spectral + w.adversarial * adversarial + w.feature_matching * matching + w.kl * kl
        total = total + w.mel * mel
        parts = {"mrstft": spectral, "adversarial": adversarial, "feature_matching": matching, "kl": kl, "mel": mel}
        return total, {k: v.detach().float() for k, v in parts.items()}

    def discriminator_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hinge loss with ``target`` as real and ``pred`` (detached) as fake; 0-dim."""
        _check_pair(pred, target)
        real = self.discriminator(target)
        fake = self.discriminator(pred.detach())
        return hinge_discriminator_loss(real.logits, fake.logits)
