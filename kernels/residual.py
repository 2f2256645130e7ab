"""Gated residual ``out = x + gate[b] * y`` (x, y (B, T, D), gate (B, D)), forward and backward.

One kernel serves both directions: a program holds gate[b] for a block of columns and walks a chunk of rows t,
storing ``[x +] gate * v`` and, when asked, accumulating ``sum_t v * u`` in fp32 registers:
forward ``v = y`` (``out = x + gate * y``); backward ``v = dy``, ``u = y`` (``dy_in = gate * dy``, and the
(B, chunks, D) partial sums of ``dgate = sum_t dy * y``, reduced by torch). ``dx = dy`` needs no kernel.
x, y, dy are made contiguous (row offsets ``(b * T + t) * D``); gate may be a strided view (a chunk of the adaLN
output), so its row stride is passed. Loads in the storage dtype, computes in fp32, stores in the output dtype;
offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from etta_engine.kernels._launch import rows_per_program

MAX_BLOCK_D = 1024


@triton.jit
def _gated_rows_kernel(
    x_ptr,
    gate_ptr,
    v_ptr,
    u_ptr,
    out_ptr,
    partial_ptr,  # (B, chunks, D) fp32 sums of v * u over the program's rows
    T,
    D,
    rows_per_program,
    stride_gate_b,
    HAS_X: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    chunk = tl.program_id(2).to(tl.int64)
    mask = cols < D
    gate = tl.load(gate_ptr + b * stride_gate_b + cols, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    t_start = chunk * rows_per_program
    for t in range(t_start, tl.minimum(t_start + rows_per_program, T)):
        offs = (b * T + t) * D + cols
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = gate * v
        if HAS_X:
            out += tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
        if ACCUMULATE:
            acc += v * tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACCUMULATE:
        tl.store(partial_ptr + (b * tl.num_programs(2) + chunk) * D + cols, acc, mask=mask)


def _launch(x, gate, v, u, out, partial, rows, chunks, block):
    B, T, D = v.shape
    _gated_rows_kernel[(B, triton.cdiv(D, block), chunks)](
        x if x is not None else v,
        gate,
        v,
        u if u is not None else v,
        out,
        partial if partial is not None else out,
        T,
        D,
        rows,
        gate.stride(0),
        HAS_X=x is not None,
        ACCUMULATE=u is not None,
        BLOCK_D=block,
    )


def _schedule(v: torch.Tensor) -> tuple[int, int, int]:
    """(rows per program, chunks of t, BLOCK_D) for a (B, T, D) tensor."""
    B, T, D = v.shape
    block = min(triton.next_power_of_2(max(D, 1)), MAX_BLOCK_D)
    rows = rows_per_program(B, T, v.device, programs_per_row=triton.cdiv(D, block)) if T else 1
    return rows, triton.cdiv(T, rows), block


def _gate_rows(gate: torch.Tensor) -> torch.Tensor:
    return gate if gate.stride(-1) == 1 else gate.contiguous()


def gated_residual_forward(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate[:, None] * y, (B, T, D) in x's dtype, contiguous."""
    x, y, gate = x.contiguous(), y.contiguous(), _gate_rows(gate)
    out = torch.empty_like(x)
    rows, chunks, block = _schedule(x)
    if out.numel():
        _launch(x, gate, y, None, out, None, rows, chunks, block)
    return out


def gated_residual_backward(dy: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgate = sum_t dy * y (B, D) in gate's dtype, summed in fp32; dy_in = gate[:, None] * dy in y's dtype)."""
    dy, y, gate = dy.contiguous(), y.contiguous(), _gate_rows(gate)
    B, _, D = y.shape
    dy_in = torch.empty_like(y)
    rows, chunks, block = _schedule(y)
    partial = torch.zeros((B, chunks, D), dtype=torch.float32, device=y.device)
    if dy_in.numel():
        _launch(None, gate, dy, y, dy_in, partial, rows, chunks, block)
    return partial.sum(1).to(gate.dtype), dy_in
