"""Finding host syncs and host-device copies on a CPU-only machine: code runs on the "meta" device, which stands in
for the GPU (shapes and dtypes, no data), under :class:`HostTransfers`, which records

- "sync": a device value read on the host (``.item()``, ``.tolist()``, ``bool(t)``, ...): on a GPU the host waits
  for every queued kernel, and inside a CUDA graph capture it is an error;
- "upload": a host tensor copied to the device; ``blocking`` unless ``non_blocking=True`` (a blocking one waits for
  the device too; ``torch.tensor(data, device=...)`` is one);
- "download": a device tensor copied to the host (a sync; the result is zeros of the right shape).

A 0-d host tensor used as an operand of a device op (a solver's step size) is a kernel argument, not a copy.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

DEVICE = torch.device("meta")
_COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


@dataclass(frozen=True)
class Transfer:
    kind: str  # "sync", "upload" or "download"
    op: str
    blocking: bool
    where: str  # the innermost frame in the project's code

    def __str__(self) -> str:
        return f"{self.kind}{'' if self.blocking else ' (non-blocking)'} by {self.op} at {self.where}"


class HostSync(RuntimeError):
    """A device value was read on the host (it cannot be produced on the meta device)."""


def _where() -> str:
    frames = [f for f in traceback.extract_stack() if "/etta_engine/" in f.filename]
    if not frames:
        return "(outside etta_engine)"
    f = frames[-1]
    return f"{f.filename.split('/etta_engine/')[-1]}:{f.lineno} ({f.line})"


def _devices(tree) -> set[str]:
    return {t.device.type for t in tree_leaves(tree) if isinstance(t, torch.Tensor)}


class _Dispatch(TorchDispatchMode):
    def __init__(self, log: list[Transfer]) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _devices((args, kwargs))
        if func is torch.ops.aten._local_scalar_dense.default and "meta" in inputs:
            self.log.append(Transfer("sync", str(func), True, _where()))
            raise HostSync(f"a device value is read on the host at {_where()}")
        if func is torch.ops.aten._to_copy.default and args[0].is_meta and kwargs.get("device") is not None:
            if torch.device(kwargs["device"]).type == "cpu":
                self.log.append(Transfer("download", str(func), True, _where()))
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        out = func(*args, **kwargs)
        if func in _COPIES and "cpu" in inputs and "meta" in _devices(out):
            blocking = not (kwargs.get("non_blocking") or (len(args) > 2 and args[2]))
            self.log.append(Transfer("upload", str(func), blocking, _where()))
        return out


class _Function(TorchFunctionMode):
    """Tensors built from host data directly on the device (not seen by the dispatch mode)."""

    def __init__(self, log: list[Transfer]) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type == "meta":
            self.log.append(Transfer("upload", func.__name__, True, _where()))
        return func(*args, **kwargs)


class HostTransfers:
    """``with HostTransfers() as log: ...``: the :class:`Transfer` s of the block, in order."""

    def __enter__(self) -> list[Transfer]:
        self.log: list[Transfer] = []
        self.modes = (_Function(self.log), _Dispatch(self.log))
        for mode in self.modes:
            mode.__enter__()
        return self.log

    def __exit__(self, *exc) -> None:
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


def waits(log: list[Transfer]) -> list[Transfer]:
    """The transfers that make the host wait for the device: syncs, downloads, blocking uploads."""
    return [t for t in log if t.blocking]
