"""GELU with the tanh approximation, optionally fused with a bias add."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable


def gelu_tanh_ref(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference GELU (tanh approximation), the specification of every implementation.

    ``u = x + bias``; ``out = 0.5 * u * (1 + tanh(sqrt(2 / pi) * (u + 0.044715 * u^3)))``.
    x: any shape (..., D); bias: (D,) or None. fp32 arithmetic, returned in ``x.dtype``.
    """
    with fp32_region(x.device):
        u = x.float() if bias is None else x.float() + bias.float()
        out = F.gelu(u, approximate="tanh")
    return out.to(x.dtype)


register("gelu_tanh", "torch", gelu_tanh_ref)


# ------------------------------------------------------------------ Triton (kernels/gelu.py)


@torch.library.custom_op("etta::gelu_tanh_triton", mutates_args=())
def _gelu_tanh_triton(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    from etta_engine.kernels.gelu import gelu_tanh_forward

    return gelu_tanh_forward(x, bias)


@_gelu_tanh_triton.register_fake
def _(x, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("etta::gelu_tanh_triton_backward", mutates_args=())
def _gelu_tanh_triton_backward(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    from etta_engine.kernels.gelu import gelu_tanh_backward

    return gelu_tanh_backward(dy, x, bias)


@_gelu_tanh_triton_backward.register_fake
def _(dy, x, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    x, bias = inputs
    ctx.save_for_backward(x, bias)


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    du = _gelu_tanh_triton_backward(dy, x, bias)  # dL/dx
    dbias = None if bias is None else du.float().reshape(-1, du.shape[-1]).sum(0).to(bias.dtype)
    return du, dbias


_gelu_tanh_triton.register_autograd(_backward, setup_context=_setup_context)
register("gelu_tanh", "triton", _gelu_tanh_triton, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _gelu_tanh_cuda(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    launch(x, "gelu_tanh", x, out, None if bias is None else bias.contiguous())
    return out


_gelu_tanh_cuda_op = torch.library.custom_op("etta::gelu_tanh_cuda", _gelu_tanh_cuda, mutates_args=())


@_gelu_tanh_cuda_op.register_fake
def _(x, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_tanh_csrc(x, bias):
    x, bias = inference_inputs("gelu_tanh", x, bias)
    return call(_gelu_tanh_cuda, _gelu_tanh_cuda_op, x, bias)


register("gelu_tanh", "cuda", _gelu_tanh_csrc, csrc_unusable)


def gelu_tanh(x: torch.Tensor, bias: torch.Tensor | None = None, *, impl: str = "auto") -> torch.Tensor:
    """GELU-tanh (see :func:`gelu_tanh_ref`) with the chosen implementation."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if bias is not None:
        check_tensor("bias", bias, 1)
        if x.ndim == 0 or bias.shape[0] != x.shape[-1]:
            raise ValueError(
                f"bias must have shape ({x.shape[-1] if x.ndim else '?'},) for x of shape {tuple(x.shape)}"
            )
    return select("gelu_tanh", impl, x.device)(x, bias)
