"""What every backend's graph runner shares: the interface check at load and the input check at each call.

A runner (:class:`etta_engine.runtime.ort.OrtGraph`, :class:`etta_engine.runtime.tensorrt.TensorRTGraph`) is
called with NumPy arrays by input name and returns the outputs, in the interface's order, as NumPy arrays::

    (velocity,) = graph(x=x, t=t, context=context, context_mask=mask, global_cond=g)

Before running, the inputs are checked against the interface (names, dtypes, ranks, fixed sizes), against
each other (a dimension name has one size in every input) and against the sizes the backend accepts
(``ranges``: for ONNX Runtime the model's limits, for TensorRT the engine's optimisation profile).

A generation calls the DiT graph once per solver step with the same conditioning. :meth:`Graph.bind` fixes
those inputs once; the backends keep them where the graph runs (ONNX Runtime: device OrtValues in an I/O
binding; TensorRT: device buffers copied once), so that a step transfers only x and t::

    dit = graph.bind(context=context, context_mask=mask, global_cond=g)
    (velocity,) = dit(x=x, t=t)

:meth:`Graph.run_resident` leaves the outputs where the graph ran, as :class:`ResidentTensor` handles that
another graph of the same backend takes as inputs without a round trip through the host (ONNX Runtime; the
other backends return NumPy arrays): the cached DiT's tables go from ``dit_prepare`` straight into the step's
binding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from etta_engine.runtime.manifest import GraphInterface, ManifestError, TensorSpec


class ShapeError(ValueError):
    """Inputs whose sizes the graph (or its TensorRT profile) does not accept."""


@dataclass(frozen=True)
class ResidentTensor:
    """An output left where its graph ran: ``value`` is the backend's handle (an ONNX Runtime OrtValue),
    ``dtype`` a NumPy dtype name. ``numpy()`` copies it to the host."""

    value: object
    shape: tuple[int, ...]
    dtype: str

    def numpy(self) -> np.ndarray:
        return self.value.numpy()


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_declared(
    graph: str, source: str, spec: TensorSpec, dtype: str, shape: tuple[int | str | None, ...] | None
) -> None:
    """A graph's declared input/output (``dtype``, ``shape`` with None or names for dynamic sizes) must fit
    ``spec``: the same dtype and rank, the same fixed sizes, and dynamic sizes where the runtime needs them."""
    problem = None
    if dtype != spec.dtype:
        problem = f"dtype {dtype}"
    elif shape is not None and len(shape) != len(spec.shape):
        problem = f"rank {len(shape)}"
    elif shape is not None:
        for want, got in zip(spec.shape, shape, strict=True):
            if isinstance(want, int) and isinstance(got, int) and want != got:
                problem = f"size {got} where {want} is expected"
            elif isinstance(want, str) and isinstance(got, int) and got >= 0:
                problem = f"a fixed size {got} where the runtime needs a dynamic {want!r}"
    if problem is not None:
        got_shape = "?" if shape is None else _shape_str(shape)
        raise ManifestError(
            f"{source}: graph {graph!r} declares {spec.name!r} as {dtype} {got_shape} ({problem}), but the runtime "
            f"expects {spec.dtype} {_shape_str(spec.shape)}; re-export it with this version of etta_engine"
        )


class Graph(ABC):
    """Base of the backends' runners: ``__call__(**inputs) -> tuple of outputs``, with the checks above.

    Subclasses set ``name``, ``interface``, ``ranges`` ({dimension name: (min, max or None)}) and ``range_hint``
    and implement ``_run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]``.
    """

    name: str
    interface: GraphInterface
    ranges: dict[str, tuple[int, int | None]]
    range_hint: str = ""

    @property
    def input_names(self) -> list[str]:
        return self.interface.input_names

    @property
    def output_names(self) -> list[str]:
        return self.interface.output_names

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, int]:
        """Raise a clear error for a wrong input; return the sizes of the named dimensions."""
        names = set(inputs)
        expected = set(self.input_names)
        if names != expected:
            raise ValueError(
                f"graph {self.name!r} takes inputs {self.input_names}; got {sorted(names)} "
                f"(missing {sorted(expected - names)}, unexpected {sorted(names - expected)})"
            )
        sizes: dict[str, tuple[int, str]] = {}
        for spec in self.interface.inputs:
            value = inputs[spec.name]
            if not isinstance(value, np.ndarray | ResidentTensor):
                raise TypeError(f"graph {self.name!r}: input {spec.name!r} must be a numpy array, got {type(value)}")
            if np.dtype(value.dtype) != np.dtype(spec.dtype):
                raise TypeError(f"graph {self.name!r}: input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
            if len(value.shape) != len(spec.shape):
                raise ValueError(
                    f"graph {self.name!r}: input {spec.name!r} must have shape {_shape_str(spec.shape)}, "
                    f"got {value.shape}"
                )
            for dim, size in zip(spec.shape, value.shape, strict=True):
                if isinstance(dim, int):
                    if size != dim:
                        raise ValueError(
                            f"graph {self.name!r}: input {spec.name!r} must have shape {_shape_str(spec.shape)}, "
                            f"got {value.shape}"
                        )
                    continue
                if dim in sizes and sizes[dim][0] != size:
                    other_size, other = sizes[dim]
                    raise ValueError(
                        f"graph {self.name!r}: inputs disagree on {dim}: {other!r} has {other_size}, "
                        f"{spec.name!r} has {size}"
                    )
                sizes[dim] = (size, spec.name)
        for dim, (size, name) in sizes.items():
            lo, hi = self.ranges.get(dim, (0, None))
            if size < lo or (hi is not None and size > hi):
                bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ShapeError(
                    f"graph {self.name!r}: {dim}={size} (input {name!r} of shape {inputs[name].shape}) is outside "
                    f"{bound}{self.range_hint}"
                )
        return {dim: size for dim, (size, _) in sizes.items()}

    def __call__(self, **inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        self.check_inputs(inputs)
        outputs = self._run(inputs)
        return tuple(outputs)

    def run_resident(self, **inputs: np.ndarray | ResidentTensor) -> tuple[np.ndarray | ResidentTensor, ...]:
        """The outputs left where the graph ran (:class:`ResidentTensor`), for another graph of this backend;
        by default (a backend without them) NumPy arrays, as a plain call."""
        return self(**inputs)

    def bind(self, **fixed: np.ndarray) -> BoundGraph:
        """This graph with the inputs ``fixed`` (copied here) in every call; the calls give the others."""
        unknown = sorted(set(fixed) - set(self.input_names))
        if unknown:
            raise ValueError(f"graph {self.name!r} has no inputs {unknown}; its inputs are {self.input_names}")
        return BoundGraph(self, fixed)

    def _bind(self, fixed: dict[str, np.ndarray]) -> object:
        """A backend's state for the checked ``fixed`` inputs of a binding (default: none)."""
        return None

    def _run_bound(self, bound: BoundGraph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with a binding's fixed inputs and the call's checked ``inputs`` (default: as an unbound call)."""
        return self._run({**bound.fixed, **inputs})

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph on checked inputs; the outputs in the interface's order."""


class BoundGraph:
    """A graph with some inputs fixed (:meth:`Graph.bind`): ``__call__(**other_inputs) -> outputs``.

    Every call is checked as a plain call (all inputs together); the backend's state for the fixed inputs is
    made at the first call, once they have passed that check.
    """

    def __init__(self, graph: Graph, fixed: dict[str, np.ndarray]) -> None:
        self.graph = graph
        # Copied, so that the caller changing its arrays cannot change what the device holds.
        self.fixed = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in fixed.items()}
        self.state: object = None
        self._ready = False

    def __call__(self, **inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        again = sorted(set(inputs) & set(self.fixed))
        if again:
            raise ValueError(f"graph {self.graph.name!r}: inputs {again} are bound already; pass only the others")
        self.graph.check_inputs({**self.fixed, **inputs})
        if not self._ready:
            self.state, self._ready = self.graph._bind(self.fixed), True
        return tuple(self.graph._run_bound(self, inputs))
