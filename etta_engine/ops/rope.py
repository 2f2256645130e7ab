"""Rotary position embedding (RoPE), rotate-half layout, positions 0..T-1."""

from __future__ import annotations

import torch

from etta_engine._validation import check_tensor
from etta_engine.ops._dispatch import fp32_region, register, select


def rope_angles(seq_len: int, head_dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """Angles ``theta[t, i] = t * base^(-2i / head_dim)`` in fp32, shape (seq_len, head_dim // 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    return positions[:, None] * inv_freq[None, :]


def apply_rope_ref(x: torch.Tensor, base: float = 16384.0) -> torch.Tensor:
    """Reference RoPE, the specification of every implementation.

    x: (B, T, H, Dh) with Dh even; position of token t is t. With ``x = [x1, x2]`` split in halves
    of the last dim and ``theta`` from :func:`rope_angles`:
    ``out = [x1 * cos(theta) - x2 * sin(theta), x2 * cos(theta) + x1 * sin(theta)]``.
    Angles and arithmetic in fp32; returned in ``x.dtype``.
    """
    T, Dh = x.shape[1], x.shape[-1]
    with fp32_region(x.device):
        theta = rope_angles(T, Dh, base, x.device)[None, :, None, :]  # (1, T, 1, Dh/2)
        cos, sin = theta.cos(), theta.sin()
        xf = x.float()
        x1, x2 = xf[..., : Dh // 2], xf[..., Dh // 2 :]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, T, H, Dh)
    return out.to(x.dtype)


register("apply_rope", "torch", apply_rope_ref)


def apply_rope(x: torch.Tensor, base: float = 16384.0, *, impl: str = "auto") -> torch.Tensor:
    """RoPE (see :func:`apply_rope_ref`) with the chosen implementation."""
    check_tensor("x", x, 4)
    if x.shape[-1] % 2:
        raise ValueError(f"apply_rope needs an even head dim, got x of shape {tuple(x.shape)}")
    if not base > 1.0:
        raise ValueError(f"base={base} must be > 1")
    return select("apply_rope", impl, x.device)(x, base)
