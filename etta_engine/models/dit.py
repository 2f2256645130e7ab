"""The ETTA Diffusion Transformer: adaLN-Zero blocks with self-attention (RoPE), cross-attention
to the text/number memory and a GELU-tanh feed-forward network.

Reference: ../shared/spec/ETTA.md. Differences from the official code, all deliberate:
- 1x1 convolutions (project_in, the FFN, pre/post-process) are ``nn.Linear`` on (B, T, C);
  ``etta_engine.convert`` reshapes official weights.
- Timestep Fourier features, adaLN-modulate, LayerNorms and RoPE (angles, cos and sin) are fp32
  islands even under autocast; the official code rounds the timestep features and RoPE's cos/sin
  to the autocast dtype.
- Dropout is off in eval mode, including on attention probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from etta_engine import ops
from etta_engine._validation import autocast_enabled, check_bool_mask, check_tensor
from etta_engine.config import DiTConfig
from etta_engine.ops._dispatch import fp32_region

if TYPE_CHECKING:
    from etta_engine.models.adapter import AudioPrompt


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in fp32 and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32_region(x.device):
            out = F.layer_norm(x.float(), self.weight.shape, self.weight.float(), None, self.eps)
        return out.to(x.dtype)


class TimestepEmbedding(nn.Module):
    """t (B,) -> (B, width): fixed random Fourier features ``[cos(2 pi t w), sin(2 pi t w)]`` and an MLP."""

    def __init__(self, features_dim: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features_dim // 2, 1))  # (F/2, 1), official layout
        self.mlp = nn.Sequential(nn.Linear(features_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        with fp32_region(t.device):
            f = 2.0 * math.pi * t.float()[:, None] * self.weight.float()[:, 0][None, :]  # (B, F/2)
            features = torch.cat((f.cos(), f.sin()), dim=-1)  # (B, F)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def mlp(dim_in: int, dim_out: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out, bias=bias), nn.SiLU(), nn.Linear(dim_out, dim_out, bias=bias))


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on the full head dim of q and k."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.rope_base = cfg.rope_base
        self.dropout = cfg.dropout
        self.ops = cfg.ops
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)  # output laid out as (3, heads, head_dim)
        self.out = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, _ = h.shape
        qkv = self.qkv(h).view(B, T, 3, self.heads, self.head_dim)  # (B, T, 3, H, Dh)
        p = self.dropout if self.training else 0.0
        # RoPE on q and k is part of the attention op (fused into the Triton kernel), read from the qkv views.
        o = ops.attention(
            qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rope_base=self.rope_base, dropout_p=p, impl=self.ops
        )
        return F.dropout(self.out(o.reshape(B, T, -1)), p=p)


class CrossAttention(nn.Module):
    """Multi-head attention from the latent tokens to the (normalised) conditioning memory."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.cross_heads, cfg.cross_head_dim
        self.dropout = cfg.dropout
        self.ops = cfg.ops
        self.q = nn.Linear(cfg.width, cfg.cond_dim, bias=False)
        self.kv = nn.Linear(cfg.cond_dim, 2 * cfg.cond_dim, bias=False)  # output laid out as (2, heads, head_dim)
        self.out = nn.Linear(cfg.cond_dim, cfg.width, bias=False)

    def forward(self, h: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = h.shape
        L = memory.shape[1]
        q = self.q(h).view(B, T, self.heads, self.head_dim)  # (B, T, Hc, Dc)
        kv = self.kv(memory).view(B, L, 2, self.heads, self.head_dim)  # (B, L, 2, Hc, Dc)
        p = self.dropout if self.training else 0.0
        o = ops.attention(q, kv[:, :, 0], kv[:, :, 1], memory_mask, dropout_p=p, impl=self.ops)  # (B, T, Hc, Dc)
        return F.dropout(self.out(o.reshape(B, T, -1)), p=p)


class FeedForward(nn.Module):
    """``down(gelu_tanh(up(h)))``, no biases, no gating."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.ops = cfg.ops
        self.up = nn.Linear(cfg.width, cfg.ff_mult * cfg.width, bias=False)
        self.down = nn.Linear(cfg.ff_mult * cfg.width, cfg.width, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return F.dropout(self.down(ops.gelu_tanh(self.up(h), impl=self.ops)), p=p)


class DiTBlock(nn.Module):
    """One adaLN-Zero block: self-attention, cross-attention and FFN, each gated (unbounded gates).

    ``adaln(silu(c))`` gives nine (B, width) vectors: shift/scale/gate for self-attention, then for
    cross-attention, then for the FFN. ``forward`` computes them; :meth:`modulated` takes them ready-made,
    so that an inference engine can hoist them out of the sampling loop.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.ops = cfg.ops
        self.self_attn = SelfAttention(cfg)
        self.memory_norm = LayerNorm(cfg.cond_dim, eps=1e-5)
        self.cross_attn = CrossAttention(cfg)
        self.ff_norm = LayerNorm(cfg.width, eps=1e-5)  # its weight is applied inside adaln_modulate
        self.ff = FeedForward(cfg)
        self.adaln = nn.Linear(cfg.width, 9 * cfg.width)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        c_act: torch.Tensor,
        audio: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D); memory (B, L, Dc); memory_mask (B, L); c_act = silu(c) (B, D); ``audio``: the audio-prompt
        adapter's residual of this block (etta_engine.models.adapter), applied after the text cross-attention."""
        return self.modulated(x, memory, memory_mask, self.adaln(c_act), audio)

    def modulated(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        modulation: torch.Tensor,
        audio: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The block given its adaLN output ``modulation`` (B, 9 D)."""
        shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_ff, scale_ff, gate_ff = modulation.chunk(9, 1)
        h = ops.adaln_modulate(x, shift_sa, scale_sa, None, 1e-6, impl=self.ops)
        x = ops.gated_residual(x, gate_sa, self.self_attn(h), impl=self.ops)
        h = ops.adaln_modulate(x, shift_ca, scale_ca, None, 1e-6, impl=self.ops)
        x = ops.gated_residual(x, gate_ca, self.cross_attn(h, self.memory_norm(memory), memory_mask), impl=self.ops)
        if audio is not None:
            x = audio(x)
        h = ops.adaln_modulate(x, shift_ff, scale_ff, self.ff_norm.weight, self.ff_norm.eps, impl=self.ops)
        return ops.gated_residual(x, gate_ff, self.ff(h), impl=self.ops)


class FinalLayer(nn.Module):
    """``linear(adaln_modulate(x, shift, scale))`` with (shift, scale) = ``adaln(silu(c))``."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.ops = cfg.ops
        self.adaln = nn.Linear(cfg.width, 2 * cfg.width)
        self.linear = nn.Linear(cfg.width, cfg.io_channels)

    def forward(self, x: torch.Tensor, c_act: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaln(c_act).chunk(2, dim=1)
        return self.linear(ops.adaln_modulate(x, shift, scale, None, 1e-6, impl=self.ops))


class DiT(nn.Module):
    """Velocity model ``v(x_t, t | context, global_cond)`` of ETTA (flow time: t=1 noise, t=0 data).

    forward(x (B, C, T), t (B,), context (B, L, cond_dim), context_mask (B, L) bool,
    global_cond (B, global_cond_dim)) -> velocity (B, C, T).
    ``context`` is the raw memory (text tokens and number tokens) and ``global_cond`` the raw
    concatenated number embeddings: the model projects both itself.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.timestep_features_dim, cfg.width)
        self.cond_embed = mlp(cfg.cond_dim, cfg.cond_dim, bias=False)
        self.global_embed = mlp(cfg.global_cond_dim, cfg.width, bias=False)
        self.preprocess = nn.Linear(cfg.io_channels, cfg.io_channels, bias=False)
        self.project_in = nn.Linear(cfg.io_channels, cfg.width)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.postprocess = nn.Linear(cfg.io_channels, cfg.io_channels, bias=False)
        # Training-time memory policy (not part of the model): recompute each block in the backward pass.
        self.activation_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (ETTADiTStack, ETTATransformerWrapper, DiTWrapper)."""
        for block in self.blocks:
            for m in block.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            # The official FFN is a pair of 1x1 convolutions with GPT-2 initialisation.
            nn.init.normal_(block.ff.up.weight, std=0.02)
            nn.init.normal_(block.ff.down.weight, std=0.02)
            # adaLN-Zero: all gates start at zero, so every block starts as the identity.
            nn.init.zeros_(block.adaln.weight)
            nn.init.zeros_(block.adaln.bias)
        # A zero final layer makes the untrained model output exactly zero velocity.
        for p in self.final.parameters():
            nn.init.zeros_(p)
        nn.init.zeros_(self.preprocess.weight)
        nn.init.zeros_(self.postprocess.weight)
        nn.init.normal_(self.time_embed.weight, std=1.0)
        # The official wrapper halves every parameter after construction.
        for p in self.parameters():
            p.mul_(0.5)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the DiT's parameters (the dtype its inputs must have outside autocast)."""
        return self.project_in.weight.dtype

    def conditioning(self, t: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """The adaLN conditioning ``c = time_embed(t) + global_embed(global_cond)``, (B, width)."""
        return self.time_embed(t) + self.global_embed(global_cond)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        global_cond: torch.Tensor,
        audio: AudioPrompt | None = None,
    ) -> torch.Tensor:
        """``audio``: an audio prompt (:meth:`etta_engine.models.adapter.AudioAdapter.prompt`) whose gated
        cross-attention runs in every block; None: the text-only model."""
        self.check_inputs(x, t, context, context_mask, global_cond)
        if audio is not None:
            audio.check(self.cfg, x.shape[0])
        memory = self.cond_embed(context)  # (B, L, Dc)
        c_act = F.silu(self.conditioning(t, global_cond))  # (B, D), shared by every adaLN
        x = x.transpose(1, 2)  # (B, T, C)
        x = self.preprocess(x) + x
        h = self.project_in(x)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            extra = None if audio is None else audio.layer(i)
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, memory, context_mask, c_act, extra, use_reentrant=False)
            else:
                h = block(h, memory, context_mask, c_act, extra)
        out = self.final(h, c_act)  # (B, T, C)
        out = self.postprocess(out) + out
        return out.transpose(1, 2)  # (B, C, T)

    def check_inputs(self, x, t, context, context_mask, global_cond) -> None:
        """Shape/dtype checks with errors that name the value and what is allowed (no device syncs)."""
        cfg = self.cfg
        check_tensor("x", x, 3)
        B, C, T = x.shape
        if C != cfg.io_channels:
            raise ValueError(f"x must have shape (B, {cfg.io_channels}, T), got {tuple(x.shape)}")
        if T < 1:
            raise ValueError(f"x must have at least one frame, got shape {tuple(x.shape)}")
        check_tensor("t", t, 1)
        if t.shape[0] != B:
            raise ValueError(f"t must have shape (B,) = ({B},), got {tuple(t.shape)}")
        check_tensor("context", context, 3)
        if context.shape[0] != B or context.shape[2] != cfg.cond_dim:
            raise ValueError(f"context must have shape ({B}, L, {cfg.cond_dim}), got {tuple(context.shape)}")
        check_bool_mask("context_mask", context_mask, tuple(context.shape[:2]))
        check_tensor("global_cond", global_cond, 2)
        if global_cond.shape != (B, cfg.global_cond_dim):
            raise ValueError(
                f"global_cond must have shape ({B}, {cfg.global_cond_dim}), got {tuple(global_cond.shape)}"
            )
        param_dtype = self.dtype
        if not autocast_enabled(x.device):
            for name, v in (("x", x), ("context", context), ("global_cond", global_cond)):
                if v.dtype != param_dtype:
                    raise TypeError(
                        f"{name} is {v.dtype} but the DiT's parameters are {param_dtype}; "
                        "cast the inputs or the model, or run under torch.autocast"
                    )
