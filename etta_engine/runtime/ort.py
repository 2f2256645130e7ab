"""ONNX Runtime backend: one :class:`OrtGraph` per exported graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from etta_engine.runtime.graph import Graph, ResidentTensor, check_declared
from etta_engine.runtime.manifest import GraphEntry, Manifest, ManifestError, interface

# ONNX Runtime's type strings -> NumPy dtype names
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bool)": "bool",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


def onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "the ONNX backend needs onnxruntime: pip install 'etta_engine[runtime]' (or onnxruntime-gpu)"
        ) from e
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then the CPU."""
    available = onnxruntime().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtGraph(Graph):
    """An exported graph in an ``onnxruntime.InferenceSession``, checked against the runtime's interface."""

    def __init__(
        self,
        directory: str | Path,
        name: str,
        manifest: Manifest,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = onnxruntime()
        if name not in manifest.graphs:
            raise ManifestError(f"{directory} has no {name!r} graph; it holds {sorted(manifest.graphs)}")
        entry: GraphEntry = manifest.graphs[name]
        path = Path(directory) / entry.file
        if not path.is_file():
            raise FileNotFoundError(f"graph file {path} listed in the manifest does not exist")
        self.name = name
        self.entry = entry
        self.interface = interface(name, manifest.config)
        self.ranges = manifest.dims
        self.range_hint = " (the model's limits)"
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.providers = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self._check_session(str(path))

    def _check_session(self, source: str) -> None:
        """The loaded graph's own declared inputs and outputs must be the runtime's interface."""
        for kind, declared, specs in (
            ("inputs", self.session.get_inputs(), self.interface.inputs),
            ("outputs", self.session.get_outputs(), self.interface.outputs),
        ):
            by_name = {d.name: d for d in declared}
            want = [s.name for s in specs]
            if sorted(by_name) != sorted(want):
                raise ManifestError(
                    f"{source}: graph {self.name!r} has {kind} {sorted(by_name)}, but the runtime expects {want}"
                )
            for spec in specs:
                d = by_name[spec.name]
                dtype = _ORT_TYPES.get(d.type, d.type)
                shape = tuple(s if isinstance(s, int) else None for s in d.shape) if d.shape is not None else None
                check_declared(self.name, source, spec, dtype, shape)

    @property
    def device(self) -> tuple[str, int]:
        """Where the session runs: ("cuda", device id) or ("cpu", 0)."""
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            return "cuda", int(self.session.get_provider_options()["CUDAExecutionProvider"].get("device_id", 0))
        return "cpu", 0

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = {k: v.numpy() if isinstance(v, ResidentTensor) else v for k, v in inputs.items()}
        return self.session.run(self.output_names, arrays)

    def run_resident(self, **inputs) -> tuple[ResidentTensor, ...]:
        """The outputs as OrtValues on the session's device (:class:`ResidentTensor`), not copied to the host."""
        self.check_inputs(inputs)
        binding = self.session.io_binding()
        kept = self._bind_inputs(binding, inputs)  # noqa: F841  (alive until the run returns)
        for name in self.output_names:
            binding.bind_output(name, *self.device)
        self.session.run_with_iobinding(binding)
        return tuple(ResidentTensor(v, tuple(v.shape()), _ORT_TYPES[v.data_type()]) for v in binding.get_outputs())

    def _bind_inputs(self, binding, inputs: dict) -> list:
        """Bind ``inputs`` on the session's device: OrtValues of NumPy arrays (copied there; on the CPU they wrap
        the arrays' memory), resident tensors as they are (they must be on that device). Returns the values,
        which must outlive the binding's runs."""
        ort, device = onnxruntime(), self.device
        values = []
        for name, a in inputs.items():
            if isinstance(a, ResidentTensor):
                value = a.value
                if value.device_name().lower() != device[0]:
                    raise ValueError(
                        f"graph {self.name!r}: input {name!r} lies on {value.device_name()}, not on this session's "
                        f"{device[0]}; pass graphs of one backend and device"
                    )
            else:
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), *device)
            binding.bind_ortvalue_input(name, value)
            values.append(value)
        return values

    def _bind(self, fixed: dict[str, np.ndarray]):
        """An I/O binding holding ``fixed`` on the session's device (copied there once), with the values it binds."""
        binding = self.session.io_binding()
        values = self._bind_inputs(binding, fixed)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        return binding, values

    def _run_bound(self, bound, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding, _ = bound.state
        arrays = {name: np.ascontiguousarray(a) for name, a in inputs.items()}  # alive until the run returns
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
