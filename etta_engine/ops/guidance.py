"""The update that ends a sampling step: classifier-free guidance and the solver's state update, fused.

``v = v_uncond + guidance * (v_cond - v_uncond)``, then ``x_out = x + a * v + b * v_prev``. With ``a = dt``
it is an Euler step; a Heun step is a predictor (``a = dt``, keep ``v``) and a corrector (``a = b = dt / 2``,
``v_prev`` the predictor's ``v``); the midpoint method is ``a = dt / 2`` then ``a = dt`` from the step's start.
"""

from __future__ import annotations

import math

import torch

from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch
from etta_engine.ops._dispatch import fp32_region, register, select


def guided_update_ref(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    guidance: float = 1.0,
    a: float = 1.0,
    v_prev: torch.Tensor | None = None,
    b: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference guided update, the specification of every implementation.

    ``v = v_uncond + guidance * (v_cond - v_uncond)`` (``v = v_cond`` when ``v_uncond`` is None) and
    ``x_out = x + a * v + b * v_prev`` (no ``b`` term when ``v_prev`` is None).
    x: any shape, the solver state; v_cond, v_uncond, v_prev: x's shape, one dtype (the model's output).
    fp32 arithmetic; returns ``(x_out in x.dtype, v in v_cond.dtype)``.
    """
    with fp32_region(x.device):
        v = v_cond.float()
        if v_uncond is not None:
            u = v_uncond.float()
            v = u + guidance * (v - u)
        x_out = x.float() + a * v
        if v_prev is not None:
            x_out = x_out + b * v_prev.float()
    return x_out.to(x.dtype), v.to(v_cond.dtype)


register("guided_update", "torch", guided_update_ref)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _guided_update_cuda(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    guidance: float,
    a: float,
    v_prev: torch.Tensor | None,
    b: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    x, v_cond = x.contiguous(), v_cond.contiguous()
    v_uncond = None if v_uncond is None else v_uncond.contiguous()
    v_prev = None if v_prev is None else v_prev.contiguous()
    x_out, v_out = torch.empty_like(x), torch.empty_like(v_cond)
    launch(x, "guided_update", x, v_cond, x_out, v_uncond, v_prev, v_out, guidance, a, b)
    return x_out, v_out


_guided_update_cuda_op = torch.library.custom_op("etta::guided_update_cuda", _guided_update_cuda, mutates_args=())


@_guided_update_cuda_op.register_fake
def _(x, v_cond, v_uncond, guidance, a, v_prev, b):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        v_cond, memory_format=torch.contiguous_format
    )


def _guided_update_csrc(x, v_cond, v_uncond, guidance, a, v_prev, b):
    x, v_cond, v_uncond, v_prev = inference_inputs("guided_update", x, v_cond, v_uncond, v_prev)
    return call(_guided_update_cuda, _guided_update_cuda_op, x, v_cond, v_uncond, guidance, a, v_prev, b)


register("guided_update", "cuda", _guided_update_csrc, csrc_unusable)


def guided_update(
    x: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None = None,
    *,
    guidance: float = 1.0,
    a: float = 1.0,
    v_prev: torch.Tensor | None = None,
    b: float = 0.0,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided solver update (see :func:`guided_update_ref`) with the chosen implementation.

    ``guidance``, ``a`` and ``b`` are Python numbers (host values: the schedule is known before the loop, so
    reading them costs no device sync).
    """
    for name, t in (("x", x), ("v_cond", v_cond), ("v_uncond", v_uncond), ("v_prev", v_prev)):
        if t is None and name in ("v_uncond", "v_prev"):
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = getattr(t, "dtype", type(t).__name__)
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
        if name == "x":
            continue
        if t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x, {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != v_cond.dtype:
            raise TypeError(f"{name} must have the dtype of v_cond, {v_cond.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; all inputs must share a device")
    for name, value in (("guidance", guidance), ("a", a), ("b", b)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite Python number")
    return select("guided_update", impl, x.device)(x, v_cond, v_uncond, float(guidance), float(a), v_prev, float(b))
