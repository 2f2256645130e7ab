"""Audio embedding providers: one clip -> one vector, the input of the audio-prompt adapter.

A provider has a ``name``, the embedding size ``dim``, the ``sample_rate`` it reads and ``embed(audio,
sample_rate) -> (B, dim)`` for audio (B, channels, samples). Two ship:

- ``latent_stats`` (:class:`LatentStatsProvider`, built in, no download): pooled statistics of the model's own
  VAE latents: per latent channel the mean and standard deviation over time, and the means of ``segments``
  equal parts of the clip (a coarse envelope, which keeps the order of events). Training computes it from the
  cached latents (:meth:`LatentStatsProvider.from_latents`), inference from audio through the same VAE.
- ``clap`` (:class:`ClapProvider`): LAION-CLAP's 512-d audio embedding, for users who have its weights
  (``pip install laion-clap`` and a local checkpoint file; nothing is downloaded).

    provider = get_provider("latent_stats", model)
    embedding = provider.embed(waveform, 44100)          # (B, dim)
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Protocol

import torch

from etta_engine.data import resample
from etta_engine.models.vae import VAE


class EmbeddingProvider(Protocol):
    name: str
    dim: int
    sample_rate: int

    def embed(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor: ...


def as_batch(
    audio,
    sample_rate: int,
    target_rate: int,
    channels: int,
    min_samples: int = 1,
    *,
    name: str = "the audio prompt",
    rate_name: str = "sample_rate",
) -> torch.Tensor:
    """``audio`` ((samples,), (channels, samples) or (B, channels, samples)) as float32 (B, channels, samples) at
    ``target_rate`` with ``channels`` channels (stereo averaged to mono, mono duplicated), checked; errors call the
    audio ``name`` and its rate ``rate_name``."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(
            f"{name} must be (samples,), (channels, samples) or (B, channels, samples), "
            f"got shape {tuple(torch.as_tensor(audio).shape)}"
        )
    if x.shape[1] not in (1, 2):
        raise ValueError(f"{name} has {x.shape[1]} channels; allowed: 1 or 2")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"{rate_name}={sample_rate!r} must be positive (an integer, in Hz)")
    if sample_rate != target_rate:
        x = resample(x, sample_rate, target_rate)
    if x.shape[-1] < min_samples:
        raise ValueError(
            f"{name} is too short: {x.shape[-1] / target_rate:.3f} s; at least "
            f"{min_samples / target_rate:.3f} s ({min_samples} samples at {target_rate} Hz) are needed"
        )
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1)
    return x


class LatentStatsProvider:
    """Pooled statistics of the VAE latents (module doc): ``dim = latent_dim * (2 + segments)``."""

    name = "latent_stats"

    def __init__(self, vae: VAE, sample_rate: int, segments: int = 4) -> None:
        if segments < 1:
            raise ValueError(f"segments={segments} must be >= 1")
        self.vae, self.sample_rate, self.segments = vae, int(sample_rate), segments
        self.dim = vae.cfg.latent_dim * (2 + segments)

    def min_frames(self) -> int:
        return max(2, self.segments)

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T) latents -> (B, C * (2 + segments)): [mean over t, std over t, mean of each segment]."""
        if latents.ndim != 3 or latents.shape[1] != self.vae.cfg.latent_dim:
            raise ValueError(f"latents must be (B, {self.vae.cfg.latent_dim}, T), got {tuple(latents.shape)}")
        T = latents.shape[-1]
        if T < self.min_frames():
            raise ValueError(f"latents have {T} frames; the statistics need at least {self.min_frames()}")
        x = latents.float()
        edges = [round(i * T / self.segments) for i in range(self.segments + 1)]
        parts = [x[..., a:b].mean(dim=-1) for a, b in itertools.pairwise(edges)]
        return torch.cat([x.mean(dim=-1), x.std(dim=-1), *parts], dim=1)

    @torch.no_grad()
    def embed(self, audio, sample_rate: int) -> torch.Tensor:
        """The embedding of ``audio`` at ``sample_rate`` Hz, encoded by the VAE (posterior mean) at its rate."""
        ratio = self.vae.cfg.downsampling_ratio
        x = as_batch(audio, sample_rate, self.sample_rate, self.vae.cfg.audio_channels, self.min_frames() * ratio)
        x = x[..., : x.shape[-1] // ratio * ratio]  # whole latent frames (padding would add silence to the stats)
        param = next(self.vae.parameters())
        mean, _ = self.vae.encode(x.to(param.device, param.dtype))
        return self.from_latents(mean)


class ClapProvider:
    """LAION-CLAP audio embeddings (512-d, 48 kHz mono) from a local checkpoint file."""

    name = "clap"
    dim = 512
    sample_rate = 48_000

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        amodel: str = "HTSAT-tiny",
        enable_fusion: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        try:
            import laion_clap
        except ImportError as e:
            raise ImportError(
                "the 'clap' audio embedding provider needs the laion-clap package (pip install laion-clap) and a "
                "local CLAP checkpoint; the built-in 'latent_stats' provider needs neither"
            ) from e
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"CLAP checkpoint {path} does not exist (it is never downloaded here)")
        self.device = torch.device(device)
        self.model = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=self.device)
        self.model.load_ckpt(os.fspath(path), verbose=False)

    @torch.no_grad()
    def embed(self, audio, sample_rate: int) -> torch.Tensor:
        x = as_batch(audio, sample_rate, self.sample_rate, 1, self.sample_rate // 10)[:, 0]  # (B, samples)
        # CLAP was trained on 16-bit audio: quantise as its authors do before embedding.
        x = torch.round(x.clamp(-1.0, 1.0) * 32767.0) / 32767.0
        e = self.model.get_audio_embedding_from_data(x=x.to(self.device), use_tensor=True)
        e = torch.as_tensor(e, dtype=torch.float32)
        if e.shape != (x.shape[0], self.dim):
            raise RuntimeError(f"CLAP returned embeddings of shape {tuple(e.shape)}, expected ({x.shape[0]}, 512)")
        return e.cpu()


PROVIDERS = ("latent_stats", "clap")


def get_provider(name: str, model=None, **options) -> EmbeddingProvider:
    """The provider ``name`` (:data:`PROVIDERS`); ``latent_stats`` uses ``model``'s VAE (an ETTAModel)."""
    if name == "latent_stats":
        if model is None:
            raise ValueError("the 'latent_stats' provider needs the model whose VAE encodes the audio")
        return LatentStatsProvider(model.vae, model.cfg.sample_rate, **options)
    if name == "clap":
        if "checkpoint" not in options:
            raise ValueError("the 'clap' provider needs checkpoint=<path of a local LAION-CLAP .pt file>")
        return ClapProvider(**options)
    raise ValueError(f"unknown audio embedding provider {name!r}; choices: {list(PROVIDERS)}")
