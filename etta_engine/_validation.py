"""Input checks shared by ops and models: errors name the value and what is allowed."""

from __future__ import annotations

import torch


def check_tensor(name: str, x, ndim: int, *, floating: bool = True) -> None:
    """Raise unless ``x`` is a tensor with ``ndim`` dimensions (and a floating dtype if asked)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def check_bool_mask(name: str, mask, shape: tuple[int, ...]) -> None:
    """Raise unless ``mask`` is a bool tensor of exactly ``shape``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for a type without autocast, such as "meta")."""
    return torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
