"""A stand-in for TensorRT 10 and cuda-python's runtime API, so that the TensorRT paths (engine builds, the
runner's buffers, shapes and copies, device-resident tensors) run in CI, where neither can be installed.

It follows the documented calls our code makes and checks how they are used: "device" memory is host memory
that only ``cudaMalloc`` hands out, and every copy, tensor address and launch is checked against it (a host
pointer passed as a device one, a copy of the wrong kind or size, an unset or too small address all raise).
An "engine" is the ONNX file and the optimisation profile it was built with; running one runs the ONNX graph
in ONNX Runtime on the bytes at the bound addresses. Every copy is recorded (``FakeCudart.copies``).

    with fake_tensorrt.installed() as (trt, rt): ...   # in sys.modules as tensorrt and cuda.bindings.runtime
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

__version__ = "10.99.0-fake"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bool)": np.bool_, "tensor(int32)": np.int32}  # fmt: skip


class FakeCudart:
    """cuda-python's ``cuda.bindings.runtime``: results are ``(error, *values)`` tuples."""

    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.copies: list[tuple[str, int]] = []  # (kind, bytes) of every copy
        self.streams = 0

    def device_range(self, ptr: int, nbytes: int) -> bool:
        """Whether [ptr, ptr + nbytes) lies inside one allocation."""
        for base, block in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + block.nbytes:
                return True
        return False

    def cudaMalloc(self, nbytes: int):
        block = np.zeros(max(int(nbytes), 1), np.uint8)
        self.memory[block.ctypes.data] = block
        return (0, block.ctypes.data)

    def cudaFree(self, ptr: int):
        if ptr not in self.memory:
            raise AssertionError(f"cudaFree of {ptr:#x}, which cudaMalloc did not return (or freed already)")
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind, stream):
        return self.cudaMemcpy(dst, src, nbytes, kind)

    def cudaMemcpy(self, dst: int, src: int, nbytes: int, kind):
        names = {1: "h2d", 2: "d2h", 3: "d2d"}
        device_dst, device_src = {1: (True, False), 2: (False, True), 3: (True, True)}[kind]
        for side, ptr, on_device in (("destination", dst, device_dst), ("source", src, device_src)):
            if self.device_range(ptr, nbytes) != on_device:
                where = "device memory" if on_device else "host memory"
                raise AssertionError(f"{names[kind]} copy of {nbytes} bytes: its {side} {ptr:#x} is not {where}")
        ctypes.memmove(dst, src, nbytes)
        self.copies.append((names[kind], nbytes))
        return (0,)

    def cudaStreamCreate(self):
        self.streams += 1
        return (0, self.streams)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaGetErrorString(self, err):
        return (0, b"fake error")

    def cudaGetDeviceProperties(self, device: int):
        return (0, types.SimpleNamespace(name=b"Fake GPU\x00", major=9, minor=0))


# ------------------------------------------------------------------ TensorRT


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING) -> None:
        self.severity = severity


class TensorIOMode:
    INPUT = "input"
    OUTPUT = "output"


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 5


class BuilderFlag:
    FP16 = "fp16"
    BF16 = "bf16"


class MemoryPoolType:
    WORKSPACE = "workspace"


def nptype(dtype) -> type:
    return np.dtype(dtype).type


@dataclass
class _Network:
    flags: int
    onnx_path: str | None = None


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # raises on a file ONNX Runtime rejects
        self.network.onnx_path = path
        return True

    def get_error(self, i: int) -> str:
        raise IndexError(i)


@dataclass
class _Profile:
    shapes: dict = field(default_factory=dict)

    def set_shape(self, name: str, lo, opt, hi) -> None:
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise ValueError(f"profile of {name}: min {lo} <= opt {opt} <= max {hi} fails")
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data) or b"fake timing cache"

    def serialize(self) -> bytes:
        return self.data


class _BuilderConfig:
    def __init__(self) -> None:
        self.flags, self.profiles, self.cache = set(), [], None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.cache

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int) -> _Network:
        return _Network(flags)

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> bytes:
        (profile,) = config.profiles
        session = ort.InferenceSession(network.onnx_path, providers=["CPUExecutionProvider"])
        missing = {i.name for i in session.get_inputs()} - set(profile.shapes)
        if missing:
            raise AssertionError(f"the optimisation profile has no shapes for inputs {sorted(missing)}")
        return json.dumps({"onnx": network.onnx_path, "profile": profile.shapes}).encode()


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        return _Engine(json.loads(bytes(data)))


class _Engine:
    def __init__(self, spec: dict) -> None:
        self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        self.profile = spec["profile"]
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = [*self.inputs, *self.outputs]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        info = self.inputs.get(name) or self.outputs[name]
        return np.dtype(_ORT_TYPES[info.type])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        info = self.inputs.get(name) or self.outputs[name]
        return tuple(d if isinstance(d, int) else -1 for d in info.shape)

    def get_tensor_profile_shape(self, name: str, profile: int):
        return tuple(tuple(s) for s in self.profile[name])

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.profile[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
            return False  # as TensorRT: outside the optimisation profile
        self.shapes[name] = shape
        return True

    def _input_arrays(self, zeros: bool) -> dict[str, np.ndarray]:
        arrays = {}
        for name, info in self.engine.inputs.items():
            if name not in self.shapes:
                raise AssertionError(f"input {name!r} has no shape set")
            dtype, shape = np.dtype(_ORT_TYPES[info.type]), self.shapes[name]
            if zeros:
                arrays[name] = np.zeros(shape, dtype)
                continue
            array = np.empty(shape, dtype)
            ctypes.memmove(array.ctypes.data, self._address(name, array.nbytes), array.nbytes)
            arrays[name] = array
        return arrays

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.inputs:
            return self.shapes[name]
        # Shape inference: the graph on zeros of the set input shapes.
        out = self.engine.session.run([name], self._input_arrays(zeros=True))[0]
        return tuple(out.shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def _address(self, name: str, nbytes: int) -> int:
        ptr = self.addresses.get(name)
        if ptr is None:
            raise AssertionError(f"tensor {name!r} has no address set")
        if not _CUDART.device_range(ptr, nbytes):
            raise AssertionError(f"tensor {name!r}: {nbytes} bytes at {ptr:#x} are not device memory")
        return ptr

    def execute_async_v3(self, stream) -> bool:
        outputs = self.engine.session.run(None, self._input_arrays(zeros=False))
        for name, out in zip(self.engine.outputs, outputs, strict=True):
            out = np.ascontiguousarray(out)
            ctypes.memmove(self._address(name, out.nbytes), out.ctypes.data, out.nbytes)
        self.runs += 1
        return True


_CUDART: FakeCudart | None = None


@contextlib.contextmanager
def installed():
    """This module as ``tensorrt`` and a fresh :class:`FakeCudart` as ``cuda.bindings.runtime`` in sys.modules
    (restored after); yields (tensorrt, runtime)."""
    global _CUDART
    _CUDART = FakeCudart()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = _CUDART
    cuda.bindings = bindings
    fakes = {"tensorrt": sys.modules[__name__], "cuda": cuda, "cuda.bindings": bindings,
             "cuda.bindings.runtime": _CUDART}  # fmt: skip
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        yield sys.modules[__name__], _CUDART
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        _CUDART = None
