"""Model configuration: frozen dataclasses and the presets.

The ``etta`` preset is the reference ETTA model (DiT 1,287,988,928 parameters, ETTA-VAE,
T5-base text encoder). ``tiny`` and ``demo`` use the same code with small widths. Every
checkpoint stores its full config (``ModelConfig.to_dict``); nothing is inferred from paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

OPS_IMPLS = ("auto", "torch", "triton", "cuda")


class _DictConfig:
    """``to_dict``/``from_dict`` for a frozen config dataclass; unknown fields are an error."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}: expected a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; allowed: {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class DiTConfig(_DictConfig):
    """The flow-matching Diffusion Transformer.

    Shapes: latents (B, io_channels, T); memory tokens (B, L, cond_dim); global conditioning
    (B, global_cond_dim); conditioning vector c (B, width).
    """

    io_channels: int = 64
    width: int = 1536
    depth: int = 24
    heads: int = 24  # self-attention heads; head dim = width / heads
    cond_dim: int = 768  # memory token width (text encoder width); also the cross-attention inner width
    cross_heads: int = 16  # cross-attention heads; head dim = cond_dim / cross_heads
    global_cond_dim: int = 1536  # concatenated number embeddings (seconds_start, seconds_total)
    ff_mult: int = 4
    timestep_features_dim: int = 256
    rope_base: float = 16384.0
    dropout: float = 0.1
    ops: str = "auto"  # implementation of etta_engine.ops used by the model: auto, torch, triton, cuda

    def __post_init__(self) -> None:
        _check_positive(self, "io_channels", "width", "depth", "heads", "cond_dim", "cross_heads", "global_cond_dim")
        _check_positive(self, "ff_mult", "timestep_features_dim")
        if self.width % self.heads:
            raise ValueError(f"DiTConfig: width={self.width} is not divisible by heads={self.heads}")
        if (self.width // self.heads) % 2:
            raise ValueError(f"DiTConfig: head dim {self.width // self.heads} must be even for RoPE")
        if self.cond_dim % self.cross_heads:
            raise ValueError(f"DiTConfig: cond_dim={self.cond_dim} is not divisible by cross_heads={self.cross_heads}")
        if self.timestep_features_dim % 2:
            raise ValueError(f"DiTConfig: timestep_features_dim={self.timestep_features_dim} must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DiTConfig: dropout={self.dropout} is outside [0, 1)")
        if self.rope_base <= 1.0:
            raise ValueError(f"DiTConfig: rope_base={self.rope_base} must be > 1")
        if self.ops not in OPS_IMPLS:
            raise ValueError(f"DiTConfig: ops={self.ops!r} is not one of {OPS_IMPLS}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def cross_head_dim(self) -> int:
        return self.cond_dim // self.cross_heads


@dataclass(frozen=True)
class VAEConfig(_DictConfig):
    """The Oobleck VAE: stereo audio (B, audio_channels, S) <-> latents (B, latent_dim, S / prod(strides))."""

    audio_channels: int = 2
    channels: int = 128
    c_mults: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 8, 8)
    latent_dim: int = 64
    ops: str = "auto"  # implementation of etta_engine.ops for the Snake-beta activations: auto, torch, triton, cuda

    def __post_init__(self) -> None:
        object.__setattr__(self, "c_mults", tuple(self.c_mults))
        object.__setattr__(self, "strides", tuple(self.strides))
        _check_positive(self, "audio_channels", "channels", "latent_dim")
        if self.ops not in OPS_IMPLS:
            raise ValueError(f"VAEConfig: ops={self.ops!r} is not one of {OPS_IMPLS}")
        if len(self.c_mults) != len(self.strides) or not self.strides:
            raise ValueError(
                f"VAEConfig: c_mults={self.c_mults} and strides={self.strides} must be non-empty and of equal length"
            )
        if any(s < 1 for s in self.strides) or any(m < 1 for m in self.c_mults):
            raise ValueError(f"VAEConfig: c_mults={self.c_mults} and strides={self.strides} must be positive")

    @property
    def downsampling_ratio(self) -> int:
        return math.prod(self.strides)


@dataclass(frozen=True)
class TextConfig(_DictConfig):
    """The T5 text encoder.

    ``pretrained`` names a local directory (or a model already in the local Hugging Face cache)
    holding a T5 encoder and its tokenizer; it is never downloaded. With ``pretrained=None`` the
    encoder is a randomly initialised T5 of the size given by ``layers``/``heads``/``d_kv``/``d_ff``
    with a byte-level (ByT5) tokenizer, and its weights are stored in the model's checkpoint.
    """

    pretrained: str | None = "google-t5/t5-base"
    dim: int = 768
    max_length: int = 512
    layers: int = 2
    heads: int = 4
    d_kv: int = 16
    d_ff: int = 128

    def __post_init__(self) -> None:
        _check_positive(self, "dim", "max_length", "layers", "heads", "d_kv", "d_ff")


@dataclass(frozen=True)
class ModelConfig(_DictConfig):
    """A complete text-to-audio model: DiT, VAE, text encoder and the number conditioners."""

    name: str
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sample_rate: int = 44100
    number_keys: tuple[str, ...] = ("seconds_start", "seconds_total")
    max_seconds: float = 512.0  # number conditioners take values in [0, max_seconds]
    number_fourier_dim: int = 256  # learned Fourier features of each number conditioner
    default_seconds: float = 10.0  # the clip length generated when none is asked for (the training length)

    def __post_init__(self) -> None:
        object.__setattr__(self, "number_keys", tuple(self.number_keys))
        _check_positive(self, "sample_rate", "max_seconds", "number_fourier_dim", "default_seconds")
        if self.default_seconds > self.max_seconds:
            raise ValueError(
                f"ModelConfig {self.name!r}: default_seconds={self.default_seconds} "
                f"exceeds max_seconds={self.max_seconds}"
            )
        if self.dit.io_channels != self.vae.latent_dim:
            raise ValueError(
                f"ModelConfig {self.name!r}: dit.io_channels={self.dit.io_channels} "
                f"!= vae.latent_dim={self.vae.latent_dim}"
            )
        if self.dit.cond_dim != self.text.dim:
            raise ValueError(f"ModelConfig {self.name!r}: dit.cond_dim={self.dit.cond_dim} != text.dim={self.text.dim}")
        expected = len(self.number_keys) * self.text.dim
        if self.dit.global_cond_dim != expected:
            raise ValueError(
                f"ModelConfig {self.name!r}: dit.global_cond_dim={self.dit.global_cond_dim} must be "
                f"{len(self.number_keys)} number embeddings x text.dim={self.text.dim} = {expected}"
            )
        if self.number_fourier_dim % 2:
            raise ValueError(f"ModelConfig: number_fourier_dim={self.number_fourier_dim} must be even")

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (44100 / 2048 = 21.53 for ETTA)."""
        return self.sample_rate / self.vae.downsampling_ratio

    @property
    def context_length(self) -> int:
        """Cross-attention memory length: text tokens plus one token per number conditioner."""
        return self.text.max_length + len(self.number_keys)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig: expected a dict, got {type(d).__name__}")
        d = dict(d)
        for key, sub_cls in (("dit", DiTConfig), ("vae", VAEConfig), ("text", TextConfig)):
            if key in d:
                d[key] = sub_cls.from_dict(d[key])
        return super().from_dict(d)

    @classmethod
    def from_json(cls, s: str) -> ModelConfig:
        return cls.from_dict(json.loads(s))


def _check_positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not value > 0:
            raise ValueError(f"{type(cfg).__name__}: {name}={value} must be positive")


PRESETS: dict[str, ModelConfig] = {
    # The reference ETTA model (../shared/spec/ETTA.md).
    "etta": ModelConfig(name="etta"),
    # Small widths, same code: fast tests and the built-in default model until a trained one exists.
    "tiny": ModelConfig(
        name="tiny",
        dit=DiTConfig(width=64, depth=2, heads=4, cond_dim=32, cross_heads=2, global_cond_dim=64),
        vae=VAEConfig(channels=4, c_mults=(1, 2, 4, 8, 16)),
        text=TextConfig(pretrained=None, dim=32, max_length=128, layers=2, heads=2, d_kv=16, d_ff=64),
    ),
    # The shipped default model (etta_engine/assets/demo.safetensors), trained on CPU in about two hours on
    # the synthetic sound events of etta_engine.demo (scripts/train_demo.py): 8 kHz mono, 2 s clips, a VAE with
    # 256x downsampling to 16 latent channels (31.25 frames/s), a small DiT, and a frozen, randomly
    # initialised byte-level T5 (its relative-position biases set to look left, right and near:
    # etta_engine.models.text._look_around) whose weights ship with the model.
    "demo": ModelConfig(
        name="demo",
        dit=DiTConfig(
            io_channels=16, width=128, depth=6, heads=4, cond_dim=128, cross_heads=4, global_cond_dim=256, dropout=0.0
        ),
        vae=VAEConfig(audio_channels=1, channels=16, c_mults=(1, 2, 4, 8), strides=(4, 4, 4, 4), latent_dim=16),
        text=TextConfig(pretrained=None, dim=128, max_length=128, layers=2, heads=4, d_kv=32, d_ff=256),
        sample_rate=8000,
        max_seconds=10.0,
        default_seconds=2.0,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; a clear error lists the choices otherwise."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choices: {sorted(PRESETS)}")
    return PRESETS[name]
