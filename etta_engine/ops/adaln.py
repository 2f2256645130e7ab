"""AdaLN-modulate: LayerNorm (no bias, optional weight) followed by ``(1 + scale) * h + shift``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from etta_engine._validation import check_tensor
from etta_engine.ops._dispatch import fp32_region, register, select


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
