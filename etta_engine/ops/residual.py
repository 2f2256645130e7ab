"""Gated residual ``x + gate * y``: the DiT's ``x = x + gate * sublayer(h)`` with a per-batch gate."""

from __future__ import annotations

import torch

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch, rows_contiguous
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference gated residual, the specification of every implementation.

    ``out = x + gate[:, None] * y``

    x, y: (B, T, D); gate: (B, D), broadcast over T; all of one floating dtype. Computed in fp32 (also under
    autocast) and returned in ``x.dtype``.
    """
    with fp32_region(x.device):
        out = x.float() + gate.float()[:, None, :] * y.float()  # (B, T, D)
    return out.to(x.dtype)


register("gated_residual", "torch", gated_residual_ref)


# ------------------------------------------------------------------ Triton (kernels/residual.py)


@torch.library.custom_op("etta::gated_residual_triton", mutates_args=())
def _gated_residual_triton(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from etta_engine.kernels.residual import gated_residual_forward

    return gated_residual_forward(x, gate, y)


@_gated_residual_triton.register_fake
def _(x, gate, y):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("etta::gated_residual_triton_backward", mutates_args=())
def _gated_residual_triton_backward(
    dy: torch.Tensor, gate: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgate = sum_t dy * y in gate's dtype, summed in fp32; dy_in = gate[:, None] * dy in y's dtype)."""
    from etta_engine.kernels.residual import gated_residual_backward

    return gated_residual_backward(dy, gate, y)


@_gated_residual_triton_backward.register_fake
def _(dy, gate, y):
    return gate.new_empty(gate.shape), torch.empty_like(y, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    _, gate, y = inputs
    ctx.save_for_backward(gate, y)


def _backward(ctx, dout):
    gate, y = ctx.saved_tensors
    dgate, dy_in = _gated_residual_triton_backward(dout, gate, y)
    return dout, dgate, dy_in  # dx = dout


_gated_residual_triton.register_autograd(_backward, setup_context=_setup_context)
register("gated_residual", "triton", _gated_residual_triton, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _gated_residual_cuda(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    launch(x, "gated_residual", x, rows_contiguous(gate), y, out)
    return out


_gated_residual_cuda_op = torch.library.custom_op("etta::gated_residual_cuda", _gated_residual_cuda, mutates_args=())


@_gated_residual_cuda_op.register_fake
def _(x, gate, y):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gated_residual_csrc(x, gate, y):
    x, gate, y = inference_inputs("gated_residual", x, gate, y)
    return call(_gated_residual_cuda, _gated_residual_cuda_op, x, gate, y)


register("gated_residual", "cuda", _gated_residual_csrc, csrc_unusable)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Gated residual ``x + gate[:, None] * y`` (see :func:`gated_residual_ref`) with the chosen implementation."""
    check_tensor("x", x, 3)
    B, T, D = x.shape
    check_tensor("gate", gate, 2)
    if gate.shape != (B, D):
        raise ValueError(
            f"gate must have shape (B, D) = {(B, D)} for x of shape {tuple(x.shape)}, got {tuple(gate.shape)}"
        )
    check_tensor("y", y, 3)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x, {(B, T, D)}, got {tuple(y.shape)}")
    for name, t in (("gate", gate), ("y", y)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x, {x.dtype}, got {t.dtype}")
    return select("gated_residual", impl, x.device)(x, gate, y)
