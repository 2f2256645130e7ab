"""Choosing an implementation for an op: an explicit ``impl`` argument, never an env variable."""

from __future__ import annotations

from collections.abc import Callable

import torch

from etta_engine.config import OPS_IMPLS

# op name -> {impl name -> function}. Kernel modules add their implementations here when they are
# built (Triton in etta_engine.kernels, CUDA in etta_engine._C); "torch" is always present.
REGISTRY: dict[str, dict[str, Callable]] = {}

# Preference order of impl="auto" on each device type.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("torch",)}


def register(op: str, impl: str, fn: Callable) -> None:
    if impl not in OPS_IMPLS or impl == "auto":
        raise ValueError(f"cannot register impl={impl!r} for {op}; allowed: {OPS_IMPLS[1:]}")
    REGISTRY.setdefault(op, {})[impl] = fn


def select(op: str, impl: str, device: torch.device) -> Callable:
    """The function implementing ``op`` for ``impl`` on ``device``."""
    impls = REGISTRY[op]
    if impl == "auto":
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            if name in impls:
                return impls[name]
    if impl not in OPS_IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {OPS_IMPLS}")
    if impl not in impls:
        raise NotImplementedError(
            f"{op}: impl={impl!r} is not available in this build (available: {sorted(impls)}); "
            "use impl='torch' or impl='auto'"
        )
    return impls[impl]


def fp32_region(device: torch.device):
    """A context where autocast is off, so an fp32 island stays fp32 under bf16/fp16 autocast."""
    return torch.autocast(device_type=device.type, enabled=False)
