"""TensorRT backend: :class:`TensorRTGraph` runs one engine of ``etta export tensorrt``'s output with the
interface of :class:`etta_engine.runtime.ort.OrtGraph` (NumPy in, NumPy out).

Device buffers and the stream are managed with cuda-python's runtime API (``cudaMalloc``, ``cudaMemcpyAsync``,
``cudaStreamSynchronize``), as TensorRT's own Python samples do; each input and output has a device buffer
that grows when a call needs more. A call: set the input shapes, copy the inputs in, bind the addresses,
``execute_async_v3`` on the stream, copy the outputs back, synchronise. The fixed inputs of a binding
(:meth:`~etta_engine.runtime.graph.Graph.bind`) are copied in only when their buffer holds something else.
Inputs are checked against the engine's optimisation profile first, so a length outside it is a clear error,
not a TensorRT failure. :meth:`TensorRTGraph.run_resident` leaves its outputs in device memory
(:class:`DeviceArray`), where the next graph reads them: the cached DiT's tables never visit the host.
Written against TensorRT 10 and cuda-python 12/13, which this project's CI machines cannot install: there it
runs against tests/fake_tensorrt.py, a stand-in that checks the calls and runs each graph in ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from etta_engine.runtime.graph import Graph, ResidentTensor, check_declared
from etta_engine.runtime.manifest import Manifest, ManifestError, interface

ENGINES = "engines.json"


def tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            "the TensorRT backend needs TensorRT 10 and cuda-python: pip install 'etta_engine[tensorrt]'"
        ) from e
    return trt


def cudart():
    """cuda-python's runtime API module (``cuda.bindings.runtime``, or ``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as e:
            raise ImportError("the TensorRT backend needs cuda-python: pip install 'etta_engine[tensorrt]'") from e
    return runtime


def cuda_call(result):
    """Unpack a cuda-python ``(error, *values)`` result, raising on an error."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err}: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def read_engines(directory: Path) -> dict:
    path = directory / ENGINES
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {ENGINES}; expected the output of `etta export tensorrt`")
    return json.loads(path.read_text(encoding="utf-8"))


class DeviceArray:
    """A tensor in device memory that one TensorRT graph wrote and another reads where it lies (the value of a
    :class:`~etta_engine.runtime.graph.ResidentTensor`); freed with its last reference."""

    def __init__(self, rt, shape: tuple[int, ...], dtype: str) -> None:
        self._rt, self.shape, self.dtype = rt, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = cuda_call(rt.cudaMalloc(max(self.nbytes, 1)))

    def numpy(self) -> np.ndarray:
        """A host copy."""
        out = np.empty(self.shape, self.dtype)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(self._rt.cudaMemcpy(out.ctypes.data, self.ptr, self.nbytes, kind))
        return out

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            self._rt.cudaFree(self.ptr)
            self.ptr = 0


class TensorRTGraph(Graph):
    """One TensorRT engine, checked against the runtime's interface, with its stream and device buffers."""

    def __init__(self, directory: str | Path, name: str, manifest: Manifest) -> None:
        trt, rt = tensorrt(), cudart()
        directory = Path(directory)
        settings = read_engines(directory)
        if settings.get("tensorrt") != trt.__version__:
            raise ManifestError(
                f"{directory} was built with TensorRT {settings.get('tensorrt')} but this is TensorRT "
                f"{trt.__version__}; engines are not portable across versions: rebuild with `etta export tensorrt`"
            )
        if name not in settings.get("graphs", {}):
            raise ManifestError(f"{directory} has no {name!r} engine; it holds {sorted(settings.get('graphs', {}))}")
        path = directory / settings["graphs"][name]["engine"]
        self.name = name
        self.interface = interface(name, manifest.config)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ManifestError(f"TensorRT could not load {path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self._check_engine(trt, str(path))
        self.ranges = self._profile_ranges()
        self.range_hint = (
            " (the engine's optimisation profile; rebuild with `etta export tensorrt` and a wider --batch, "
            "--frames, --vae-frames, --text or --steps range)"
        )
        self._rt = rt
        self.stream = cuda_call(rt.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._resident: dict[str, object] = {}  # input name -> the binding whose fixed value its buffer holds

    def _check_engine(self, trt, source: str) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        want = self.interface.input_names + self.interface.output_names
        if sorted(names) != sorted(want):
            raise ManifestError(f"{source}: engine {self.name!r} has tensors {sorted(names)}, expected {want}")
        for spec in (*self.interface.inputs, *self.interface.outputs):
            is_input = self.engine.get_tensor_mode(spec.name) == trt.TensorIOMode.INPUT
            if is_input != (spec in self.interface.inputs):
                raise ManifestError(f"{source}: engine {self.name!r} has {spec.name!r} on the wrong side (in/out)")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(spec.name))).name
            shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(spec.name))
            check_declared(self.name, source, spec, dtype, shape)

    def _profile_ranges(self) -> dict[str, tuple[int, int]]:
        """{dimension name: (min, max)} from profile 0, intersected over the inputs that use the dimension."""
        ranges: dict[str, tuple[int, int]] = {}
        for spec in self.interface.inputs:
            lo_shape, _, hi_shape = self.engine.get_tensor_profile_shape(spec.name, 0)
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str):
                    lo, hi = ranges.get(dim, (0, 1 << 62))
                    ranges[dim] = (max(lo, int(lo_shape[axis])), min(hi, int(hi_shape[axis])))
        return ranges

    def _device(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_call(self._rt.cudaFree(ptr))
            ptr = cuda_call(self._rt.cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, max(nbytes, 1))
            self._resident.pop(name, None)  # a new buffer holds nothing yet
        return self._buffers[name][0]

    def _run_bound(self, bound, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run({**bound.fixed, **inputs}, bound)

    def run_resident(self, **inputs) -> tuple[ResidentTensor, ...]:
        """The outputs left in device memory (:class:`ResidentTensor` of a :class:`DeviceArray`), which this
        backend's graphs take as inputs where they lie: no trip through the host."""
        self.check_inputs(inputs)
        kept = self._set_inputs(inputs, None)  # noqa: F841  (alive until the stream is synchronised)
        outputs = []
        for spec in self.interface.outputs:
            array = DeviceArray(self._rt, tuple(self.context.get_tensor_shape(spec.name)), spec.dtype)
            self.context.set_tensor_address(spec.name, array.ptr)
            outputs.append(array)
        self._execute()
        # Synchronised: the graphs that read them run on their own streams.
        cuda_call(self._rt.cudaStreamSynchronize(self.stream))
        return tuple(ResidentTensor(a, a.shape, a.dtype.name) for a in outputs)

    def _set_inputs(self, inputs: dict, bound) -> dict[str, np.ndarray]:
        """Set the input shapes and addresses: a resident tensor of this backend where it lies, anything else
        copied into this graph's buffer (a binding's fixed inputs only when the buffer holds something else).
        Returns the host arrays, which must outlive the stream's copies."""
        rt = self._rt
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        host_inputs = {}
        for spec in self.interface.inputs:
            value = inputs[spec.name]
            if isinstance(value, ResidentTensor) and isinstance(value.value, DeviceArray):
                if not self.context.set_input_shape(spec.name, value.shape):
                    raise ValueError(f"TensorRT refused shape {value.shape} for input {spec.name!r} of {self.name!r}")
                self.context.set_tensor_address(spec.name, value.value.ptr)
                continue
            # a resident tensor of another backend comes through the host
            array = np.ascontiguousarray(value.numpy() if isinstance(value, ResidentTensor) else value)
            host_inputs[spec.name] = array
            if not self.context.set_input_shape(spec.name, array.shape):
                raise ValueError(f"TensorRT refused shape {array.shape} for input {spec.name!r} of {self.name!r}")
            ptr = self._device(spec.name, array.nbytes)
            fixed = bound is not None and spec.name in bound.fixed
            if not (fixed and self._resident.get(spec.name) is bound):
                cuda_call(rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream))
                self._resident[spec.name] = bound if fixed else None
            self.context.set_tensor_address(spec.name, ptr)
        return host_inputs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to run {self.name!r}")

    def _run(self, inputs: dict[str, np.ndarray], bound=None) -> list[np.ndarray]:
        rt = self._rt
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        kept = self._set_inputs(inputs, bound)  # noqa: F841  (alive until the stream is synchronised)
        outputs = []
        for spec in self.interface.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            array = np.empty(shape, dtype=spec.dtype)
            self.context.set_tensor_address(spec.name, self._device(spec.name, array.nbytes))
            outputs.append(array)
        self._execute()
        for spec, array in zip(self.interface.outputs, outputs, strict=True):
            ptr = self._buffers[spec.name][0]
            cuda_call(rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, d2h, self.stream))
        cuda_call(rt.cudaStreamSynchronize(self.stream))
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the runner is garbage-collected)."""
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        for ptr, _ in self._buffers.values():
            rt.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "stream", None) is not None:
            rt.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        self.close()
