"""Choosing an implementation for an op: an explicit ``impl`` argument, never an env variable."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from etta_engine.config import OPS_IMPLS

# Preference order of impl="auto" on each device type. The Triton kernels join "auto" on CUDA once their
# GPU tests and benchmarks have run on a GPU (until then they are chosen explicitly: impl="triton").
_AUTO_ORDER = {"cuda": ("torch",), "cpu": ("torch",)}


def _always(device: torch.device) -> str | None:
    return None


def triton_unusable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device``, or None if they can."""
    from etta_engine.kernels.support import interpreting, triton_available

    if not triton_available():
        return "triton is not installed (pip install 'etta_engine[triton]')"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return f"Triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not on {device.type}"


@dataclass(frozen=True)
class Impl:
    fn: Callable
    unusable: Callable[[torch.device], str | None]  # None if the implementation can run on the device


# op name -> {impl name -> Impl}. "torch" is always present; the op modules add "triton" (and "cuda"
# once the extension provides it) with a check of where it can run.
REGISTRY: dict[str, dict[str, Impl]] = {}


def register(op: str, impl: str, fn: Callable, unusable: Callable[[torch.device], str | None] = _always) -> None:
    if impl not in OPS_IMPLS or impl == "auto":
        raise ValueError(f"cannot register impl={impl!r} for {op}; allowed: {OPS_IMPLS[1:]}")
    REGISTRY.setdefault(op, {})[impl] = Impl(fn, unusable)


def select(op: str, impl: str, device: torch.device) -> Callable:
    """The function implementing ``op`` for ``impl`` on ``device``."""
    impls = REGISTRY[op]
    if impl == "auto":
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            if name in impls and impls[name].unusable(device) is None:
                return impls[name].fn
        return impls["torch"].fn
    if impl not in OPS_IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {OPS_IMPLS}")
    if impl not in impls:
        raise NotImplementedError(
            f"{op}: impl={impl!r} is not available in this build (available: {sorted(impls)}); "
            "use impl='torch' or impl='auto'"
        )
    reason = impls[impl].unusable(device)
    if reason is not None:
        raise RuntimeError(f"{op}: impl={impl!r} cannot run here: {reason}")
    return impls[impl].fn


def fp32_region(device: torch.device):
    """A context where autocast is off, so an fp32 island stays fp32 under bf16/fp16 autocast (a device type
    without autocast, such as "meta", gets a no-op context)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
