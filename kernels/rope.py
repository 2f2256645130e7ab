"""Rotary position embedding (rotate-half layout, positions 0..T-1): forward and inverse in one kernel.

x: (B, T, H, Dh), Dh even, any strides with a unit stride on the last dim (q = qkv[:, :, 0] of the fused
(B, T, 3, H, Dh) projection is read in place, without a copy). Pair i of a head is (x[i], x[i + Dh/2]) and
is rotated by ``theta[t, i] = t * base^(-2i/Dh)``:
``y[i] = x[i] cos - x[i + Dh/2] sin``, ``y[i + Dh/2] = x[i + Dh/2] cos + x[i] sin``.
The rotation is orthogonal, so its inverse (and its backward, dL/dx = R^T dL/dy) is the same kernel with
the angle negated: ``SIGN = -1``. Angles are computed in the kernel in fp32; loads in the storage dtype,
arithmetic in fp32, stores in the output dtype; offsets in int64.

One program rotates a (BLOCK_R rows, BLOCK_H heads, BLOCK_P pairs) tile, rows being the flattened (b, t):
the angles of each row are computed once and broadcast over its heads. A third grid axis picks one of two
(input, output) pairs, so q and k of a fused QKV tensor are rotated in one launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048  # pairs per program: BLOCK_R * BLOCK_H * BLOCK_P


@triton.jit
def _rotate(x_ptr, y_ptr, x_offs, y_offs, mask, HALF, cos, sin):
    """Rotate the pairs (x[offs], x[offs + HALF]) of a tile into y."""
    lo = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(x_ptr + x_offs + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + y_offs, (lo * cos - hi * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + y_offs + HALF, (hi * cos + lo * sin).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    x0_ptr,
    x1_ptr,
    y0_ptr,
    y1_ptr,
    ROWS,  # B * T
    T,
    H,
    HALF,
    sx_b,
    sx_t,
    sx_h,
    sy_b,
    sy_t,
    sy_h,
    log2_inv_freq_step,  # -2 * log2(base) / Dh, so that base^(-2i/Dh) = exp2(i * log2_inv_freq_step)
    SIGN: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # b * T + t (B * T < 2^31: a grid dimension)
    b = row // T  # int32 division: 64-bit division is slow on GPUs
    t = row % T
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    i = tl.arange(0, BLOCK_P)  # pair index within a head

    # theta[t, i] = t * base^(-2i/Dh) in fp32, as rope_angles computes it (to fp32 rounding).
    theta = t.to(tl.float32)[:, None] * tl.exp2(i.to(tl.float32) * log2_inv_freq_step)[None, :]  # (BLOCK_R, BLOCK_P)
    # tl.sin/tl.cos compile to the accurate libdevice functions (with range reduction), not to sin.approx.
    cos = tl.cos(theta)[:, None, :]  # (BLOCK_R, 1, BLOCK_P), shared by the heads
    sin = (SIGN * tl.sin(theta))[:, None, :]

    row3, h3, i3 = row[:, None, None], h[None, :, None], i[None, None, :]
    mask = (row3 < ROWS) & (h3 < H) & (i3 < HALF)  # (BLOCK_R, BLOCK_H, BLOCK_P)
    b3, t3 = b.to(tl.int64)[:, None, None], t.to(tl.int64)[:, None, None]
    h3 = h3.to(tl.int64)
    x_offs = b3 * sx_b + t3 * sx_t + h3 * sx_h + i3
    y_offs = b3 * sy_b + t3 * sy_t + h3 * sy_h + i3
    if tl.program_id(2) == 0:
        _rotate(x0_ptr, y0_ptr, x_offs, y_offs, mask, HALF, cos, sin)
    else:
        _rotate(x1_ptr, y1_ptr, x_offs, y_offs, mask, HALF, cos, sin)


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 or x.shape[-1] <= 1 else x.contiguous()


def _launch(xs: list[torch.Tensor], ys: list[torch.Tensor], base: float, sign: int) -> None:
    """Rotate xs[j] (B, T, H, Dh) into ys[j] for j < len(xs) <= 2; the xs share strides, and so do the ys."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign} must be +1 (rotation) or -1 (inverse rotation)")
    B, T, H, Dh = xs[0].shape
    if xs[0].numel() == 0:
        return
    half, rows = Dh // 2, B * T
    if rows + MAX_BLOCK >= 2**31:
        raise ValueError(f"B * T = {rows} rows is too many for one launch; the kernel indexes rows in int32")
    block_p = triton.next_power_of_2(half)
    block_h = min(triton.next_power_of_2(H), max(1, MAX_BLOCK // block_p))
    block_r = min(triton.next_power_of_2(rows), max(1, MAX_BLOCK // (block_h * block_p)))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(H, block_h), len(xs))
    x0, x1 = xs[0], xs[-1]
    y0, y1 = ys[0], ys[-1]
    _rope_kernel[grid](
        x0,
        x1,
        y0,
        y1,
        rows,
        T,
        H,
        half,
        x0.stride(0),
        x0.stride(1),
        x0.stride(2),
        y0.stride(0),
        y0.stride(1),
        y0.stride(2),
        -2.0 * math.log2(base) / Dh,
        SIGN=sign,
        BLOCK_R=block_r,
        BLOCK_H=block_h,
        BLOCK_P=block_p,
    )


def rope(x: torch.Tensor, base: float, sign: int = 1) -> torch.Tensor:
    """RoPE of x (B, T, H, Dh), any strides, into a new contiguous tensor in x's dtype; sign=-1 inverts it."""
    x = _unit_last_stride(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch([x], [y], base, sign)
    return y


def rope_qk(qkv: torch.Tensor, base: float, sign: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q = qkv[:, :, 0] and k = qkv[:, :, 1] for qkv (B, T, 3, H, Dh), any strides, in one launch.

    Returns two new contiguous (B, T, H, Dh) tensors in qkv's dtype; v is not read. sign=-1 inverts.
    """
    qkv = _unit_last_stride(qkv)
    B, T, _, H, Dh = qkv.shape
    q_rot = torch.empty((B, T, H, Dh), dtype=qkv.dtype, device=qkv.device)
    k_rot = torch.empty_like(q_rot)
    _launch([qkv[:, :, 0], qkv[:, :, 1]], [q_rot, k_rot], base, sign)
    return q_rot, k_rot


def rope_qk_backward(dq: torch.Tensor, dk: torch.Tensor, base: float) -> torch.Tensor:
    """dL/dqkv (B, T, 3, H, Dh) of :func:`rope_qk`: the inverse rotation of dq and dk in one launch, zero for v."""
    if dq.stride() != dk.stride() or dq.stride(-1) != 1:
        dq, dk = dq.contiguous(), dk.contiguous()
    B, T, H, Dh = dq.shape
    dqkv = torch.empty((B, T, 3, H, Dh), dtype=dq.dtype, device=dq.device)
    dqkv[:, :, 2].zero_()
    _launch([dq, dk], [dqkv[:, :, 0], dqkv[:, :, 1]], base, -1)
    return dqkv
