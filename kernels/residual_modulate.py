"""Gated residual then AdaLN-modulate in one pass (inference): the seam between two DiT sub-layers.

Per row (b, t) of x (B, T, D), with the whole row in registers: ``r = x + gate[b] * y[b]`` for the first n batch
rows (those that ran the sub-layer; the others pass x through, as the uncond rows of a CFG batch skip the
cross-attention), stored as ``x_out`` in x's dtype; then the AdaLN of the stored value (rounded as the unfused ops
round it), ``out = layernorm(x_out) * w * (1 + scale[b]) + shift[b]``. Unfused, the same work is three kernels
(gated residual, the concatenation of the attending rows with the others, AdaLN) and four passes over the row.

Loads in the storage dtype, computes in fp32, stores in the output dtype; row offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from etta_engine.kernels.adaln import _block_d, _modulate_row, _num_warps, _unit_stride


@triton.jit
def _residual_modulate_kernel(
    x_ptr,
    gate_ptr,
    y_ptr,
    shift_ptr,
    scale_ptr,
    w_ptr,
    x_out_ptr,
    out_ptr,
    T,
    D,
    N,
    stride_gate_b,
    stride_shift_b,
    stride_scale_b,
    eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # row = b * T + t over contiguous x, x_out, out (and y for b < N)
    b = row // T
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if b < N:
        gate = tl.load(gate_ptr + b * stride_gate_b + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        x = x + gate * y
    stored = x.to(x_out_ptr.dtype.element_ty)
    tl.store(x_out_ptr + row * D + cols, stored, mask=mask)
    x = stored.to(tl.float32)  # the AdaLN sees the residual stream as stored
    out, _, _ = _modulate_row(
        x, b, cols, mask, D, eps, shift_ptr, scale_ptr, w_ptr, stride_shift_b, stride_scale_b, HAS_WEIGHT
    )
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def residual_modulate_forward(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_out, out), both (B, T, D) in x's dtype, contiguous; y (n, T, D) holds the first n rows' sub-layer."""
    B, T, D = x.shape
    x, y = x.contiguous(), y.contiguous()
    gate, shift, scale = _unit_stride(gate), _unit_stride(shift), _unit_stride(scale)
    weight = None if weight is None else weight.contiguous()
    x_out, out = torch.empty_like(x), torch.empty_like(x)
    if B * T and D:
        block = _block_d(D)
        _residual_modulate_kernel[(B * T,)](
            x,
            gate,
            y,
            shift,
            scale,
            weight if weight is not None else x,
            x_out,
            out,
            T,
            D,
            y.shape[0],
            gate.stride(0),
            shift.stride(0),
            scale.stride(0),
            eps,
            HAS_WEIGHT=weight is not None,
            BLOCK_D=block,
            num_warps=_num_warps(block),
        )
    return x_out, out
