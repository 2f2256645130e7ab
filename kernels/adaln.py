"""AdaLN-modulate: LayerNorm (no bias, optional weight w) then ``(1 + scale) * h + shift``, forward and backward.

Per row (b, t) of x (B, T, D), with the whole row in registers (BLOCK_D = next power of two >= D, masked):
``mean = sum(x) / D``, ``rstd = 1 / sqrt(sum((x - mean)^2) / D + eps)`` (two sums over the row in registers, so
the variance never cancels as ``E[x^2] - E[x]^2`` would), ``xhat = (x - mean) * rstd``,
``out = xhat * w * (1 + scale[b]) + shift[b]``.

Backward given dy, with ``a = dy * (1 + scale[b])`` and ``g = a * w`` (the gradient reaching xhat):
``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (the LayerNorm backward),
``dshift[b] = sum_t dy``, ``dscale[b] = sum_t dy * xhat * w``, ``dw = sum_{b,t} a * xhat``.
One backward program walks a chunk of rows of one batch element, keeping the three sums in fp32 registers and
loading scale[b] and w once; the (B, chunks, D) fp32 partial sums are reduced by torch.

Loads in the storage dtype, computes in fp32, stores in the output dtype; row offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from etta_engine.kernels._launch import rows_per_program

MAX_BLOCK_D = 65536  # a row must fit in the registers of one program


@triton.jit
def _load_gain(scale_ptr, w_ptr, b, stride_scale_b, cols, mask, HAS_WEIGHT: tl.constexpr):
    """(1 + scale[b]) and w (ones without a weight) for one row, in fp32."""
    gain = 1.0 + tl.load(scale_ptr + b * stride_scale_b + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask, 1.0, 0.0)
    return gain, w


@triton.jit
def _xhat(x, mean, rstd, mask):
    return tl.where(mask, (x - mean) * rstd, 0.0)


@triton.jit
def _modulate_row(
    x, b, cols, mask, D, eps, shift_ptr, scale_ptr, w_ptr, stride_shift_b, stride_scale_b, HAS_WEIGHT: tl.constexpr
):
    """(out, mean, rstd) of one row x (fp32, zero where masked) of batch element b."""
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
    gain, w = _load_gain(scale_ptr, w_ptr, b, stride_scale_b, cols, mask, HAS_WEIGHT)
    shift = tl.load(shift_ptr + b * stride_shift_b + cols, mask=mask, other=0.0).to(tl.float32)
    return _xhat(x, mean, rstd, mask) * w * gain + shift, mean, rstd


@triton.jit
def _adaln_forward_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    w_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    T,
    D,
    stride_x_b,
    stride_x_t,
    stride_shift_b,
    stride_scale_b,
    eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # row = b * T + t
    b = row // T
    t = row % T
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_x_b + t * stride_x_t + cols, mask=mask, other=0.0).to(tl.float32)
    y, mean, rstd = _modulate_row(
        x, b, cols, mask, D, eps, shift_ptr, scale_ptr, w_ptr, stride_shift_b, stride_scale_b, HAS_WEIGHT
    )
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _adaln_backward_kernel(
    dy_ptr,
    x_ptr,
    scale_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dshift_ptr,  # (B, chunks, D) fp32 partial sums, like dscale_ptr and dw_ptr
    dscale_ptr,
    dw_ptr,
    T,
    D,
    rows_per_program,
    stride_dy_b,
    stride_dy_t,
    stride_x_b,
    stride_x_t,
    stride_scale_b,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    gain, w = _load_gain(scale_ptr, w_ptr, b, stride_scale_b, cols, mask, HAS_WEIGHT)
    acc_dshift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dscale = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    t_start = chunk * rows_per_program
    for t in range(t_start, tl.minimum(t_start + rows_per_program, T)):
        row = b * T + t
        x = tl.load(x_ptr + b * stride_x_b + t * stride_x_t + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * stride_dy_b + t * stride_dy_t + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        xhat = _xhat(x, tl.load(mean_ptr + row), rstd, mask)
        a = dy * gain
        g = a * w
        c_xhat = tl.sum(g * xhat, axis=0) / D
        c_mean = tl.sum(g, axis=0) / D
        dx = (g - c_mean - xhat * c_xhat) * rstd
        tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        acc_dshift += dy
        acc_dscale += dy * xhat * w
        if HAS_WEIGHT:
            acc_dw += a * xhat
    offs = (b * tl.num_programs(1) + chunk) * D + cols
    tl.store(dshift_ptr + offs, acc_dshift, mask=mask)
    tl.store(dscale_ptr + offs, acc_dscale, mask=mask)
    if HAS_WEIGHT:
        tl.store(dw_ptr + offs, acc_dw, mask=mask)


def _block_d(D: int) -> int:
    block = triton.next_power_of_2(D)
    if block > MAX_BLOCK_D:
        raise ValueError(f"adaln_modulate (triton): D={D} is above {MAX_BLOCK_D}, the largest row kept in registers")
    return block


def _num_warps(block_d: int) -> int:
    return 16 if block_d >= 8192 else 8 if block_d >= 2048 else 4


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its last dim has unit stride (the kernels take the other strides), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def adaln_modulate_forward(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out (B, T, D) in x's dtype, contiguous; mean, rstd (B*T,) fp32 for the backward)."""
    B, T, D = x.shape
    x, shift, scale = _unit_stride(x), _unit_stride(shift), _unit_stride(scale)
    weight = None if weight is None else weight.contiguous()
    y = torch.empty((B, T, D), dtype=x.dtype, device=x.device)
    mean = torch.empty(B * T, dtype=torch.float32, device=x.device)
    rstd = torch.empty(B * T, dtype=torch.float32, device=x.device)
    if B * T and D:
        block = _block_d(D)
        _adaln_forward_kernel[(B * T,)](
            x,
            shift,
            scale,
            weight if weight is not None else x,
            y,
            mean,
            rstd,
            T,
            D,
            x.stride(0),
            x.stride(1),
            shift.stride(0),
            scale.stride(0),
            eps,
            HAS_WEIGHT=weight is not None,
            BLOCK_D=block,
            num_warps=_num_warps(block),
        )
    return y, mean, rstd


def adaln_modulate_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx (B, T, D) in x's dtype; dshift, dscale (B, D) fp32; dweight (D,) fp32 or None without a weight)."""
    B, T, D = x.shape
    dy, x, scale = _unit_stride(dy), _unit_stride(x), _unit_stride(scale)
    weight = None if weight is None else weight.contiguous()
    dx = torch.empty((B, T, D), dtype=x.dtype, device=x.device)
    rows = rows_per_program(B, T, x.device) if T else 1
    chunks = triton.cdiv(T, rows)
    partial = torch.zeros((3 if weight is not None else 2, B, chunks, D), dtype=torch.float32, device=x.device)
    if B * T and D:
        block = _block_d(D)
        _adaln_backward_kernel[(B, chunks)](
            dy,
            x,
            scale,
            weight if weight is not None else x,
            mean,
            rstd,
            dx,
            partial[0],
            partial[1],
            partial[2] if weight is not None else partial[0],
            T,
            D,
            rows,
            dy.stride(0),
            dy.stride(1),
            x.stride(0),
            x.stride(1),
            scale.stride(0),
            HAS_WEIGHT=weight is not None,
            BLOCK_D=block,
            num_warps=_num_warps(block),
        )
    # separate tensors, not views of one: a custom op's outputs may not alias each other
    dshift, dscale = partial[0].sum(1), partial[1].sum(1)  # (B, D)
    return dx, dshift, dscale, None if weight is None else partial[2].sum((0, 1))
