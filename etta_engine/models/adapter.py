"""The audio-prompt adapter: a DiT conditioned on one audio embedding besides its text.

A projector turns one embedding (512-d by default, CLAP's size) into ``tokens`` memory tokens with ``groups``
parallel MLPs (8 tokens from 4 MLPs of 2 tokens each by default). Every DiT block gets a separate gated
cross-attention path to these tokens, after its text cross-attention:

    x = x + scale * tanh(g) * XAttn(norm(x), audio_tokens)          g: one scalar per block, initialised to 0

so a fresh adapter leaves the base model's output bit-identical, and ``scale`` (the pipeline's
``audio_prompt_scale``; 0 is the text-only base model) weighs the audio prompt at inference. The text path is
untouched. The null audio tokens (a learned parameter) stand for "no audio prompt": the unconditional half of a
CFG batch and the training-time condition dropout use them.

Stage 2 of adapter training adds LoRA to the base model's attention projections (:class:`LoRA`). LoRA is
applied by forward hooks during training, so the base DiT's modules and state dict never change, and folded into
the base weights for inference (:meth:`AudioAdapter.fold_lora`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from etta_engine import ops
from etta_engine.config import DiTConfig, _DictConfig
from etta_engine.models.dit import DiT, LayerNorm

# The base DiT's attention projections that stage 2 may adapt with LoRA (module paths inside a block).
LORA_TARGETS = ("self_attn.qkv", "self_attn.out", "cross_attn.q", "cross_attn.kv", "cross_attn.out")


@dataclass(frozen=True)
class AdapterConfig(_DictConfig):
    """An audio-prompt adapter for a DiT of ``width``/``cond_dim``/``cross_heads``/``depth`` (see module doc)."""

    width: int
    cond_dim: int
    cross_heads: int
    depth: int
    embed_dim: int = 512  # the audio embedding's size (CLAP: 512)
    tokens: int = 8
    groups: int = 4  # parallel projector MLPs, tokens // groups tokens each
    lora_rank: int = 0  # 0: no LoRA (stages 1 and 3 of a stage-1 adapter)
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    provider: str = "latent_stats"  # the embedding provider the adapter was trained with (etta_engine.audio_prompt)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for name in ("width", "cond_dim", "cross_heads", "depth", "embed_dim", "tokens", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdapterConfig: {name}={value!r} must be an integer >= 1")
        if self.tokens % self.groups:
            raise ValueError(f"AdapterConfig: tokens={self.tokens} is not divisible by groups={self.groups}")
        if self.cond_dim % self.cross_heads:
            raise ValueError(
                f"AdapterConfig: cond_dim={self.cond_dim} is not divisible by cross_heads={self.cross_heads}"
            )
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError(
                f"AdapterConfig: lora_rank={self.lora_rank} must be >= 0 and lora_alpha={self.lora_alpha} > 0"
            )
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"AdapterConfig: lora_targets {unknown} are not LoRA targets; allowed: {LORA_TARGETS}")

    @classmethod
    def for_dit(cls, dit: DiTConfig, **options) -> AdapterConfig:
        return cls(width=dit.width, cond_dim=dit.cond_dim, cross_heads=dit.cross_heads, depth=dit.depth, **options)

    def check_dit(self, dit: DiTConfig) -> None:
        """Raise unless this adapter fits a DiT with config ``dit``."""
        ours = (self.width, self.cond_dim, self.cross_heads, self.depth)
        theirs = (dit.width, dit.cond_dim, dit.cross_heads, dit.depth)
        if ours != theirs:
            raise ValueError(
                f"the adapter was made for a DiT with (width, cond_dim, cross_heads, depth) = {ours}, "
                f"the model's DiT has {theirs}"
            )


class AudioProjector(nn.Module):
    """(B, embed_dim) -> (B, tokens, cond_dim): ``groups`` parallel MLPs, each giving ``tokens // groups``
    tokens, then a LayerNorm over each token."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.per_group = cfg.tokens // cfg.groups
        self.cond_dim = cfg.cond_dim
        out = self.per_group * cfg.cond_dim
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.embed_dim, out), nn.GELU(approximate="tanh"), nn.Linear(out, out))
            for _ in range(cfg.groups)
        )
        self.norm = nn.LayerNorm(cfg.cond_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        B = embedding.shape[0]
        tokens = [mlp(embedding).view(B, self.per_group, self.cond_dim) for mlp in self.mlps]  # groups x (B, n, Dc)
        return self.norm(torch.cat(tokens, dim=1))  # (B, tokens, Dc)


class GatedCrossAttention(nn.Module):
    """``x + scale * tanh(g) * out(attention(q(norm(x)), k(tokens), v(tokens)))`` with g a scalar starting at 0."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.cross_heads, cfg.cond_dim // cfg.cross_heads
        self.norm = LayerNorm(cfg.width, eps=1e-5)
        self.q = nn.Linear(cfg.width, cfg.cond_dim, bias=False)
        self.kv = nn.Linear(cfg.cond_dim, 2 * cfg.cond_dim, bias=False)  # output laid out as (2, heads, head_dim)
        self.out = nn.Linear(cfg.cond_dim, cfg.width, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def keys_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, Dc) -> (B, N, 2, heads, head_dim): what an inference engine computes once per generation."""
        B, N, _ = tokens.shape
        return self.kv(tokens).view(B, N, 2, self.heads, self.head_dim)

    def attend(self, x: torch.Tensor, kv: torch.Tensor, scale: float | torch.Tensor, impl: str) -> torch.Tensor:
        """The gated residual given the tokens' keys and values ``kv`` (see :meth:`keys_values`)."""
        B, T, _ = x.shape
        q = self.q(self.norm(x)).view(B, T, self.heads, self.head_dim)  # (B, T, Hc, Dc)
        o = ops.attention(q, kv[:, :, 0], kv[:, :, 1], impl=impl)  # (B, T, Hc, Dc)
        return x + (scale * torch.tanh(self.gate)).to(x.dtype) * self.out(o.reshape(B, T, -1))

    def forward(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor | None = None,
        scale: float | torch.Tensor = 1.0,
        impl: str = "auto",
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gated residual for ``tokens`` (B, N, Dc), or for their precomputed keys and values ``kv``."""
        return self.attend(x, self.keys_values(tokens) if kv is None else kv, scale, impl)


class LoRA(nn.Module):
    """A low-rank update ``(alpha / rank) * B A`` of one Linear layer's weight (A random, B zero at the start)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.down = nn.Parameter(torch.empty(rank, in_features))  # A
        self.up = nn.Parameter(torch.zeros(out_features, rank))  # B
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The weight update (out, in)."""
        return self.scaling * (self.up @ self.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update's contribution to the layer's output for input ``x`` (..., in)."""
        return self.scaling * ((x @ self.down.to(x.dtype).T) @ self.up.to(x.dtype).T)


class AudioAdapter(nn.Module):
    """Projector, per-block gated cross-attention, null tokens and (optionally) LoRA of the base attention."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.projector = AudioProjector(cfg)
        self.layers = nn.ModuleList(GatedCrossAttention(cfg) for _ in range(cfg.depth))
        self.null_tokens = nn.Parameter(torch.zeros(cfg.tokens, cfg.cond_dim))
        self.lora = nn.ModuleDict()
        if cfg.lora_rank:
            dims = {
                "self_attn.qkv": (cfg.width, 3 * cfg.width),
                "self_attn.out": (cfg.width, cfg.width),
                "cross_attn.q": (cfg.width, cfg.cond_dim),
                "cross_attn.kv": (cfg.cond_dim, 2 * cfg.cond_dim),
                "cross_attn.out": (cfg.cond_dim, cfg.width),
            }
            for i in range(cfg.depth):
                for target in cfg.lora_targets:
                    self.lora[lora_key(i, target)] = LoRA(*dims[target], cfg.lora_rank, cfg.lora_alpha)
        self._hooks: list = []

    def gates(self) -> list[nn.Parameter]:
        return [layer.gate for layer in self.layers]

    def tokens(self, embedding: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """The audio tokens (B, tokens, cond_dim) of ``embedding`` (B, embed_dim); None gives the null tokens
        for ``batch`` rows."""
        if embedding is None:
            if batch is None:
                raise ValueError("give an embedding or the batch size of the null tokens")
            return self.null_tokens[None].expand(batch, -1, -1)
        check_embedding(embedding, self.cfg.embed_dim)
        return self.projector(embedding.to(self.null_tokens.dtype))

    def training_tokens(self, embedding: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The tokens of ``embedding`` with the rows ``drop`` (B,) bool replaced by the null tokens."""
        tokens = self.tokens(embedding)
        return torch.where(drop[:, None, None], self.null_tokens[None].to(tokens.dtype), tokens)

    def prompt(self, tokens: torch.Tensor, scale: float = 1.0) -> AudioPrompt:
        """The per-block residual functions of ``tokens`` for :meth:`DiT.forward`'s ``audio`` argument."""
        return AudioPrompt(self, tokens, float(scale))

    # ---------------------------------------------------------------- LoRA

    def attach_lora(self, dit: DiT) -> None:
        """Apply the LoRA updates to ``dit``'s attention projections with forward hooks (training: the base
        weights stay frozen and the DiT's state dict unchanged). :meth:`detach_lora` removes them."""
        self.cfg.check_dit(dit.cfg)
        self.detach_lora()
        for name, lora in self.lora.items():
            self._hooks.append(_target(dit, name).register_forward_hook(_lora_hook(lora)))

    def detach_lora(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def fold_lora(self, dit: DiT) -> None:
        """Add the LoRA updates into ``dit``'s weights (inference: no extra work per step). Irreversible on
        that DiT: fold into a copy to keep the base model."""
        self.cfg.check_dit(dit.cfg)
        for name, lora in self.lora.items():
            linear = _target(dit, name)
            linear.weight += lora.delta().to(linear.weight.dtype)


@dataclass(frozen=True, eq=False)
class AudioPrompt:
    """Audio tokens bound to an adapter: ``layer(i)`` is block i's residual function ``x -> x + ...``."""

    adapter: AudioAdapter
    tokens: torch.Tensor  # (B, tokens, cond_dim)
    scale: float = 1.0
    impl: str = "auto"

    def check(self, dit: DiTConfig, batch: int) -> None:
        """Raise unless this prompt fits a DiT with config ``dit`` evaluating ``batch`` rows."""
        self.adapter.cfg.check_dit(dit)
        if self.tokens.shape[0] != batch:
            raise ValueError(f"the audio prompt has {self.tokens.shape[0]} rows for a batch of {batch}")

    def layer(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        gated = self.adapter.layers[i]
        return lambda x: gated(x, self.tokens, self.scale, self.impl)


def lora_key(block: int, target: str) -> str:
    """The ModuleDict key of block ``block``'s LoRA on ``target`` (dots are not allowed in keys)."""
    return f"{block}__{target.replace('.', '__')}"


def _target(dit: DiT, key: str) -> nn.Linear:
    block, path = key.split("__", 1)
    module = dit.blocks[int(block)]
    for part in path.split("__"):
        module = getattr(module, part)
    return module


def _lora_hook(lora: LoRA):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + lora(args[0])

    return hook


def check_embedding(embedding, dim: int) -> None:
    """Raise unless ``embedding`` is a finite (B, dim) floating tensor."""
    if not isinstance(embedding, torch.Tensor) or not embedding.is_floating_point():
        got = getattr(embedding, "dtype", type(embedding).__name__)
        raise TypeError(f"the audio embedding must be a floating-point tensor, got {got}")
    if embedding.ndim != 2 or embedding.shape[1] != dim:
        shape = tuple(embedding.shape)
        raise ValueError(f"the audio embedding must have shape (B, {dim}) for this adapter, got {shape}")
    if not torch.isfinite(embedding).all():
        raise ValueError("the audio embedding contains NaN or inf")
