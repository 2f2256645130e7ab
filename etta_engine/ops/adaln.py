"""AdaLN-modulate: LayerNorm (no bias, optional weight) followed by ``(1 + scale) * h + shift``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch, promote, rows_contiguous
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable


def adaln_modulate_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reference AdaLN-modulate, the specification of every implementation.

    ``out = layer_norm(x, weight, bias=None, eps) * (1 + scale[:, None]) + shift[:, None]``

    x: (B, T, D); shift, scale: (B, D); weight: (D,) or None (no affine). Computed in fp32 (also
    under autocast) and returned in ``x.dtype``.
    """
    with fp32_region(x.device):
        h = F.layer_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(), None, eps)
        out = h * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]  # (B, T, D)
    return out.to(x.dtype)


register("adaln_modulate", "torch", adaln_modulate_ref)


# ------------------------------------------------------------------ Triton (kernels/adaln.py)


# The forward also returns the per-row mean and rstd (fp32, (B*T,)) so that the backward does not recompute them;
# they are marked non-differentiable and the registered implementation returns only ``out``.
@torch.library.custom_op("etta::adaln_modulate_triton", mutates_args=())
def _adaln_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from etta_engine.kernels.adaln import adaln_modulate_forward

    return adaln_modulate_forward(x, shift, scale, weight, eps)


@_adaln_modulate_triton.register_fake
def _(x, shift, scale, weight, eps):
    B, T, _ = x.shape
    stats = x.new_empty((B * T,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


@torch.library.custom_op("etta::adaln_modulate_triton_backward", mutates_args=())
def _adaln_modulate_triton_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's dtype; dshift, dscale (B, D) fp32; dweight (D,) fp32, or (0,) without a weight)."""
    from etta_engine.kernels.adaln import adaln_modulate_backward

    dx, dshift, dscale, dweight = adaln_modulate_backward(dy, x, scale, weight, mean, rstd)
    return dx, dshift, dscale, dweight if dweight is not None else dshift.new_empty((0,))


@_adaln_modulate_triton_backward.register_fake
def _(dy, x, scale, weight, mean, rstd):
    B, _, D = x.shape
    dshift = x.new_empty((B, D), dtype=torch.float32)
    dweight = x.new_empty((0 if weight is None else D,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dshift, torch.empty_like(dshift), dweight


def _adaln_setup_context(ctx, inputs, output) -> None:
    x, shift, scale, weight, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, scale, weight, mean, rstd)
    ctx.shift_dtype = shift.dtype


def _adaln_backward(ctx, dout, dmean, drstd):
    x, scale, weight, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale, dweight = _adaln_modulate_triton_backward(dout, x, scale, weight, mean, rstd)
    dweight = None if weight is None else dweight.to(weight.dtype)
    return dx, dshift.to(ctx.shift_dtype), dscale.to(scale.dtype), dweight, None


_adaln_modulate_triton.register_autograd(_adaln_backward, setup_context=_adaln_setup_context)


def _adaln_modulate_triton_out(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return _adaln_modulate_triton(x, shift, scale, weight, eps)[0]


register("adaln_modulate", "triton", _adaln_modulate_triton_out, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _adaln_modulate_cuda(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    shift, scale, weight = promote(rows_contiguous(shift), rows_contiguous(scale), weight)
    launch(x, "adaln_modulate", x, shift, scale, out, weight, eps)
    return out


_adaln_modulate_cuda_op = torch.library.custom_op("etta::adaln_modulate_cuda", _adaln_modulate_cuda, mutates_args=())


@_adaln_modulate_cuda_op.register_fake
def _(x, shift, scale, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _adaln_modulate_csrc(x, shift, scale, weight, eps):
    x, shift, scale, weight = inference_inputs("adaln_modulate", x, shift, scale, weight)
    return call(_adaln_modulate_cuda, _adaln_modulate_cuda_op, x, shift, scale, weight, eps)


register("adaln_modulate", "cuda", _adaln_modulate_csrc, csrc_unusable)


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """AdaLN-modulate (see :func:`adaln_modulate_ref`) with the chosen implementation."""
    check_tensor("x", x, 3)
    B, _, D = x.shape
    for name, t in (("shift", shift), ("scale", scale)):
        check_tensor(name, t, 2)
        if t.shape != (B, D):
            raise ValueError(
                f"{name} must have shape (B, D) = {(B, D)} for x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
    if weight is not None:
        check_tensor("weight", weight, 1)
        if weight.shape[0] != D:
            raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    if not eps > 0:
        raise ValueError(f"eps={eps} must be positive")
    return select("adaln_modulate", impl, x.device)(x, shift, scale, weight, eps)
