"""The runtime kernels of csrc/ (the ``etta_engine._C`` extension) behind ``impl="cuda"``.

CUDA tensors run the CUDA kernels on the current stream; CPU tensors run their C++ twins, which every build
has (so CI tests the same ABI). These are inference kernels: they have no backward, and asking for a gradient
through them is an error that names the implementations that have one.
"""

from __future__ import annotations

import torch


def runtime():
    """The ``etta_engine._C`` module (ImportError with the reason if the extension was not built)."""
    from etta_engine import _C

    return _C


def csrc_unusable(device: torch.device) -> str | None:
    """Why the csrc/ kernels cannot run on ``device``, or None if they can."""
    try:
        C = runtime()
    except ImportError as e:
        return f"the etta_engine._C extension is not built ({e}); reinstall with `pip install -e .`"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if C.cuda_compiled() else "this build of etta_engine._C has no CUDA kernels (built without nvcc)"
    return f"the csrc/ kernels run on CPU and CUDA devices, not on {device.type}"


def launch(t: torch.Tensor, name: str, *args) -> None:
    """``_C.<name>(*args, stream)`` for the device of ``t``: on a CUDA tensor, its device made current (the
    kernels launch on the current device, and DLPack export requires it) and its current stream."""
    fn = getattr(runtime(), name)
    if not t.is_cuda:
        fn(*args, 0)
    elif t.device.index == torch.cuda.current_device():
        fn(*args, torch.cuda.current_stream().cuda_stream)
    else:
        with torch.cuda.device(t.device):
            fn(*args, torch.cuda.current_stream().cuda_stream)


def inference_inputs(op: str, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The inputs, detached, for an inference kernel; an error where autograd would need its backward."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{op}: impl='cuda' runs the inference kernels of csrc/, which have no backward; "
            "use impl='triton' or impl='torch' to train, or run under torch.no_grad()"
        )
    return tuple(None if t is None else t.detach() for t in tensors)


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim has stride 1 (any other strides are passed to the kernels), else a copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def promote(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The per-channel parameters in one dtype, the widest of theirs (exact upcasts only)."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    for t in present[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [None if t is None else t.to(dtype) for t in tensors]


def call(eager, op, *args):
    """Run a csrc/ op: the plain function in eager mode, which skips the custom-op dispatch (tens of microseconds
    of host time per call), and the registered custom op where code is traced (torch.compile, export)."""
    return op(*args) if torch.compiler.is_compiling() else eager(*args)
