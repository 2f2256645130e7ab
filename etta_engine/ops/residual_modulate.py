"""Gated residual then AdaLN-modulate, fused: the seam between two sub-layers of the DiT engine's step.

``x_out = x + gate * y`` on the rows that ran the sub-layer (the first n of the batch; the others pass through, as
the uncond rows of a CFG batch skip the cross-attention), then ``out = adaln_modulate(x_out, shift, scale)`` for
the next sub-layer. One kernel instead of three (residual, concatenation of the rows, AdaLN). Inference only:
the training path runs the two ops (:func:`gated_residual`, :func:`adaln_modulate`), which have backwards.
"""

from __future__ import annotations

import torch

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch, promote, rows_contiguous
from etta_engine.ops._dispatch import register, select, triton_unusable
from etta_engine.ops.adaln import adaln_modulate_ref
from etta_engine.ops.residual import gated_residual_ref


def residual_modulate_ref(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference, the specification of every implementation: ``(x_out, out)`` with

    ``x_out = concat(gated_residual(x[:n], gate, y), x[n:])`` (rounded to ``x.dtype``) and
    ``out = adaln_modulate(x_out, shift, scale, weight, eps)``.

    x: (B, T, D); y: (n, T, D) with 1 <= n <= B, x's dtype; gate: (n, D); shift, scale: (B, D); weight: (D,) or
    None. fp32 arithmetic, both results in ``x.dtype``.
    """
    n = y.shape[0]
    head = gated_residual_ref(x[:n], gate, y)
    x_out = head if n == x.shape[0] else torch.cat((head, x[n:]))
    return x_out, adaln_modulate_ref(x_out, shift, scale, weight, eps)


register("residual_modulate", "torch", residual_modulate_ref)


# ------------------------------------------------------------------ Triton (kernels/residual_modulate.py)


def _residual_modulate_kernel(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from etta_engine.kernels.residual_modulate import residual_modulate_forward

    return residual_modulate_forward(x, gate, y, shift, scale, weight, eps)


_residual_modulate_triton_op = torch.library.custom_op(
    "etta::residual_modulate_triton", _residual_modulate_kernel, mutates_args=()
)


@_residual_modulate_triton_op.register_fake
def _(x, gate, y, shift, scale, weight, eps):
    return _two_like(x)


def _residual_modulate_triton(x, gate, y, shift, scale, weight, eps):
    inputs = _inference_inputs("triton", x, gate, y, shift, scale, weight)
    return call(_residual_modulate_kernel, _residual_modulate_triton_op, *inputs, eps)


register("residual_modulate", "triton", _residual_modulate_triton, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/)


def _residual_modulate_cuda(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.contiguous(), y.contiguous()
    gate, shift, scale, weight = promote(rows_contiguous(gate), rows_contiguous(shift), rows_contiguous(scale), weight)
    x_out, out = torch.empty_like(x), torch.empty_like(x)
    launch(x, "residual_modulate", x, gate, y, shift, scale, x_out, out, weight, eps)
    return x_out, out


_residual_modulate_cuda_op = torch.library.custom_op(
    "etta::residual_modulate_cuda", _residual_modulate_cuda, mutates_args=()
)


@_residual_modulate_cuda_op.register_fake
def _(x, gate, y, shift, scale, weight, eps):
    return _two_like(x)


def _residual_modulate_csrc(x, gate, y, shift, scale, weight, eps):
    inputs = _inference_inputs("cuda", x, gate, y, shift, scale, weight)
    return call(_residual_modulate_cuda, _residual_modulate_cuda_op, *inputs, eps)


register("residual_modulate", "cuda", _residual_modulate_csrc, csrc_unusable)


def _inference_inputs(impl: str, *tensors):
    if impl == "cuda":
        return inference_inputs("residual_modulate", *tensors)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "residual_modulate: impl='triton' is an inference kernel without a backward; use impl='torch' to "
            "train (or gated_residual and adaln_modulate, whose kernels have backwards), or run under no_grad"
        )
    return tuple(None if t is None else t.detach() for t in tensors)


def _two_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(2))


def residual_modulate(
    x: torch.Tensor,
    gate: torch.Tensor,
    y: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_out, out)`` of :func:`residual_modulate_ref` with the chosen implementation."""
    check_tensor("x", x, 3)
    B, T, D = x.shape
    check_tensor("y", y, 3)
    n = y.shape[0]
    if not 1 <= n <= B or tuple(y.shape[1:]) != (T, D):
        raise ValueError(f"y must have shape (n, {T}, {D}) with 1 <= n <= {B}, got {tuple(y.shape)}")
    if y.dtype != x.dtype:
        raise TypeError(f"y is {y.dtype} but x is {x.dtype}; they must match")
    for name, p, rows in (("gate", gate, n), ("shift", shift, B), ("scale", scale, B)):
        check_tensor(name, p, 2)
        if tuple(p.shape) != (rows, D):
            raise ValueError(f"{name} must have shape ({rows}, {D}), got {tuple(p.shape)}")
    if weight is not None:
        check_tensor("weight", weight, 1)
        if weight.shape[0] != D:
            raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    if not eps > 0:
        raise ValueError(f"eps={eps} must be positive")
    return select("residual_modulate", impl, x.device)(x, gate, y, shift, scale, weight, float(eps))
