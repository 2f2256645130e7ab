"""Scaled dot-product attention over (B, T, H, D) tensors with an optional key mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from etta_engine._validation import check_bool_mask, check_tensor
from etta_engine.ops._dispatch import fp32_region, register, select


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Reference attention, the specification of every implementation.

    q: (B, Tq, H, D); k, v: (B, Tk, Hkv, D) with H a multiple of Hkv (grouped-query attention);
    key_mask: (B, Tk) bool, True where a key may be attended, or None for all keys.
    ``out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h'] | key_mask[b, j]) v[b, j, h']``
    with ``h' = h // (H / Hkv)`` and ``scale = 1 / sqrt(D)`` by default. A query whose keys are all
    masked gets zeros. Dropout with probability ``dropout_p`` is applied to the probabilities.
    fp32 arithmetic; returned in ``q.dtype``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    groups = q.shape[2] // k.shape[2]
    with fp32_region(q.device):
        qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if groups > 1:
            kf, vf = kf.repeat_interleave(groups, dim=1), vf.repeat_interleave(groups, dim=1)
        scores = (qf @ kf.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: -inf everywhere -> NaN -> 0
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        out = (probs @ vf).transpose(1, 2)  # (B, Tq, H, D)
    return out.to(q.dtype)


def _attention_sdpa(q, k, v, key_mask=None, scale=None, dropout_p=0.0):
    """PyTorch's fused scaled_dot_product_attention on the same layout and semantics."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Tk)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    ).transpose(1, 2)  # (B, Tq, H, D)
    if key_mask is not None:
        # Backends differ on queries with no key (NaN or 0); the specification says 0.
        out = out.masked_fill(~key_mask.any(dim=-1)[:, None, None, None], 0.0)
    return out


register("attention", "torch", _attention_sdpa)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Attention (see :func:`attention_ref`) with the chosen implementation."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4)
    B, _, H, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D or H % k.shape[2]:
        raise ValueError(
            f"k/v of shape {tuple(k.shape)} do not fit q of shape {tuple(q.shape)}: "
            "need the same batch and head dim, and q heads a multiple of k heads"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_mask is not None:
        check_bool_mask("key_mask", key_mask, (B, k.shape[1]))
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} is outside [0, 1)")
    return select("attention", impl, q.device)(q, k, v, key_mask, scale, dropout_p)
