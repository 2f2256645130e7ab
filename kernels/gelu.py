"""GELU (tanh approximation), optionally with a fused bias add: forward and backward.

Elementwise over a contiguous tensor viewed as (N,) with the bias broadcast over the last dim D:
``u = x + bias``, ``y = 0.5 u (1 + tanh(z)) = u * sigmoid(2 z)``, ``z = sqrt(2/pi) (u + 0.044715 u^3)``;
``dy/du = sigmoid(2z) + 2 u sigmoid(2z) (1 - sigmoid(2z)) z'(u)``, ``z'(u) = sqrt(2/pi) (1 + 3 * 0.044715 u^2)``.
Loads in the storage dtype, computes in fp32, stores in the output dtype; offsets in int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


# The constants are written out in the kernels: a compiled kernel may only read constexpr globals, which
# the interpreter does not treat as numbers. sqrt(2/pi) = 0.7978845608028654; 2 sqrt(2/pi) = 1.5957691216057308.


@triton.jit
def _load_u(x_ptr, b_ptr, offs, mask, D, HAS_BIAS: tl.constexpr):
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(b_ptr + offs % D, mask=mask, other=0.0).to(tl.float32)
    return u


@triton.jit
def _gelu_forward_kernel(x_ptr, b_ptr, y_ptr, N, D, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    u = _load_u(x_ptr, b_ptr, offs, mask, D, HAS_BIAS)
    s = tl.sigmoid(1.5957691216057308 * (u + 0.044715 * u * u * u))
    tl.store(y_ptr + offs, (u * s).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_backward_kernel(dy_ptr, x_ptr, b_ptr, du_ptr, N, D, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    u = _load_u(x_ptr, b_ptr, offs, mask, D, HAS_BIAS)
    s = tl.sigmoid(1.5957691216057308 * (u + 0.044715 * u * u * u))
    dz = 0.7978845608028654 * (1.0 + 0.134145 * u * u)  # z'(u) = sqrt(2/pi) (1 + 3 * 0.044715 u^2)
    grad = s + 2.0 * u * s * (1.0 - s) * dz
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(du_ptr + offs, (dy * grad).to(du_ptr.dtype.element_ty), mask=mask)


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


def gelu_tanh_forward(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = gelu_tanh(x + bias), in x's dtype."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n, d = x.numel(), x.shape[-1] if x.ndim else 1
    if n:
        _gelu_forward_kernel[_grid(n)](x, bias if bias is not None else x, y, n, d, bias is not None, BLOCK=BLOCK)
    return y


def gelu_tanh_backward(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """dL/du = dy * gelu_tanh'(x + bias), in x's dtype (also dL/dx; dL/dbias is its sum over rows)."""
    x, dy = x.contiguous(), dy.contiguous()
    du = torch.empty_like(x)
    n, d = x.numel(), x.shape[-1] if x.ndim else 1
    if n:
        _gelu_backward_kernel[_grid(n)](dy, x, bias if bias is not None else x, du, n, d, bias is not None, BLOCK=BLOCK)
    return du
