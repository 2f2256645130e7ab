"""Scaled dot-product attention over (B, T, H, D) tensors with an optional key mask, optional fused RoPE and
optional per-batch skip flags."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from etta_engine._validation import check_bool_mask, check_tensor
from etta_engine.ops._csrc import csrc_unusable, inference_inputs
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable
from etta_engine.ops.rope import apply_rope, apply_rope_ref


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rope_base: float | None = None,
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference attention, the specification of every implementation.

    q: (B, Tq, H, D); k, v: (B, Tk, Hkv, D) with H a multiple of Hkv (grouped-query attention);
    key_mask: (B, Tk) bool, True where a key may be attended, or None for all keys.
    ``out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h'] | key_mask[b, j]) v[b, j, h']``
    with ``h' = h // (H / Hkv)`` and ``scale = 1 / sqrt(D)`` by default. A query whose keys are all
    masked gets zeros. Dropout with probability ``dropout_p`` is applied to the probabilities.

    rope_base: if given, q and k are first rotated by :func:`~etta_engine.ops.apply_rope_ref` with this base
    (self-attention with RoPE: needs Tq == Tk and an even D; positions 0..T-1). skip: (B,) bool or None;
    the output of a batch row with ``skip[b]`` is zeros (in a CFG batch, the uncond half of cross-attention,
    whose K and V are zero, is exactly zero anyway, so skipping it changes nothing but the cost).
    fp32 arithmetic (RoPE included); returned in ``q.dtype``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    groups = q.shape[2] // k.shape[2]
    with fp32_region(q.device):
        qf, kf, vf = q.float(), k.float(), v.float()
        if rope_base is not None:
            qf, kf = apply_rope_ref(qf, rope_base), apply_rope_ref(kf, rope_base)
        qf, kf, vf = (t.transpose(1, 2) for t in (qf, kf, vf))  # (B, H, T, D)
        if groups > 1:
            kf, vf = kf.repeat_interleave(groups, dim=1), vf.repeat_interleave(groups, dim=1)
        scores = (qf @ kf.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: -inf everywhere -> NaN -> 0
        if dropout_p > 0:
            probs = F.dropout(probs, p=dropout_p)
        out = (probs @ vf).transpose(1, 2)  # (B, Tq, H, D)
        if skip is not None:
            out = out.masked_fill(skip[:, None, None, None], 0.0)
    return out.to(q.dtype)


def _attention_sdpa(q, k, v, key_mask=None, scale=None, dropout_p=0.0, rope_base=None, skip=None):
    """PyTorch's fused scaled_dot_product_attention on the same layout and semantics.

    RoPE goes through :func:`~etta_engine.ops.apply_rope_ref` (rotated copies in q's dtype); skipped rows are
    computed and then zeroed (no data-dependent shapes, so no host sync and nothing for CUDA graphs to fear).
    """
    if rope_base is not None:
        q, k = apply_rope_ref(q, rope_base), apply_rope_ref(k, rope_base)
    mask, no_key = None, None
    if key_mask is not None:
        # A query with no valid key attends to every key instead and is zeroed afterwards: backends differ on
        # such rows (NaN or 0, and NaN gradients), the specification says 0.
        no_key = ~key_mask.any(dim=-1)  # (B,)
        mask = (key_mask | no_key[:, None])[:, None, None, :]  # (B, 1, 1, Tk)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    ).transpose(1, 2)  # (B, Tq, H, D)
    zero = no_key if skip is None else (skip if no_key is None else skip | no_key)
    if zero is not None:
        out = out.masked_fill(zero[:, None, None, None], 0.0)
    return out


register("attention", "torch", _attention_sdpa)


# ------------------------------------------------------------------ Triton (kernels/attention.py)


@torch.library.custom_op("etta::attention_triton", mutates_args=())
def _attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    skip: torch.Tensor | None,
    scale: float,
    rope_base: float | None,
) -> torch.Tensor:
    from etta_engine.kernels.attention import attention_forward

    return attention_forward(q, k, v, key_mask, scale, rope_base, skip)


@_attention_triton.register_fake
def _(q, k, v, key_mask, skip, scale, rope_base):
    return q.new_empty(q.shape)  # (B, Tq, H, D), contiguous


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_mask, skip, scale, rope_base = inputs
    ctx.save_for_backward(q, k, v, key_mask, skip)
    ctx.scale, ctx.rope_base = scale, rope_base


def _backward(ctx, dout):
    """Fall-back backward: recompute the forward with the differentiable torch path and differentiate it.

    There is no Triton backward kernel yet. The recomputation is :func:`_attention_sdpa` (SDPA, RoPE through
    ``apply_rope_ref``) on the saved inputs in their own dtype, with autocast off, so the gradients are those of
    the same maths (exact up to rounding) at the cost of a second forward in torch.
    """
    q, k, v, key_mask, skip = ctx.saved_tensors
    with torch.enable_grad(), fp32_region(q.device):
        inputs = tuple(t.detach().requires_grad_() for t in (q, k, v))
        out = _attention_sdpa(*inputs, key_mask, ctx.scale, 0.0, ctx.rope_base, skip)
        dq, dk, dv = torch.autograd.grad(out, inputs, dout)
    return dq, dk, dv, None, None, None, None


_attention_triton.register_autograd(_backward, setup_context=_setup_context)


def _attention_triton_impl(q, k, v, key_mask=None, scale=None, dropout_p=0.0, rope_base=None, skip=None):
    """The Triton forward; ``dropout_p > 0`` (training) goes to the torch implementation, as the kernel has no
    dropout."""
    if dropout_p > 0:
        return _attention_sdpa(q, k, v, key_mask, scale, dropout_p, rope_base, skip)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _attention_triton(q, k, v, key_mask, skip, scale, None if rope_base is None else float(rope_base))


register("attention", "triton", _attention_triton_impl, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _attention_csrc(q, k, v, key_mask=None, scale=None, dropout_p=0.0, rope_base=None, skip=None):
    """RoPE by the csrc/ kernel (read in place from strided q and k), then PyTorch's SDPA.

    The runtime library has no attention kernel of its own: SDPA's flash and cuDNN kernels are the attention
    on CUDA, and what the csrc/ path fuses is the rotation (no rotated copies in torch ops).
    """
    q, k, v = inference_inputs("attention", q, k, v)
    if rope_base is not None:
        q, k = apply_rope(q, rope_base, impl="cuda"), apply_rope(k, rope_base, impl="cuda")
    return _attention_sdpa(q, k, v, key_mask, scale, dropout_p, None, skip)


register("attention", "cuda", _attention_csrc, csrc_unusable)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    rope_base: float | None = None,
    skip: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Attention (see :func:`attention_ref`) with the chosen implementation.

    ``rope_base`` fuses RoPE on q and k into the attention (self-attention: Tq == Tk, even D); ``skip`` (B,)
    bool zeroes whole batch rows without computing them (the Triton kernel does not read their k and v).
    impl="triton" runs the Triton forward (kernels/attention.py) with a torch fall-back backward (see
    :func:`_backward`); with ``dropout_p > 0`` it runs the torch implementation, as the kernel has no dropout.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4)
    B, Tq, H, D = q.shape
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
    for name, t in (("k", k), ("v", v), ("key_mask", key_mask), ("skip", skip)):
        if isinstance(t, torch.Tensor) and t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must share a device")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} is outside [0, 1)")
    if rope_base is not None:
        if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1.0:
            raise ValueError(f"rope_base={rope_base!r} must be a number > 1 (or None for no RoPE)")
        if Tq != k.shape[1]:
            raise ValueError(f"rope_base needs self-attention (Tq == Tk), got Tq={Tq} and Tk={k.shape[1]}")
        if D % 2:
            raise ValueError(f"rope_base needs an even head dim, got D={D}")
    if skip is not None:
        check_bool_mask("skip", skip, (B,))
    return select("attention", impl, q.device)(q, k, v, key_mask, scale, dropout_p, rope_base, skip)
