"""Static buffers and CUDA graphs: a function replayed from a ``torch.cuda.CUDAGraph`` on buffers it owns
(:class:`StaticStep`), and the cache of such functions of one owner, with their warm-up (:class:`GraphCache`).

Used by the DiT engine (:mod:`etta_engine.engine`: one step, or a whole solve) and by the text encoder.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

GRAPH_CACHE_SIZE = 4  # captured graphs kept per cache (one per shape and prompt layout; per solve and guidance)
# True: capture on CUDA (the DiT engine: steps and whole solves); "step": the engine captures steps only;
# False: no static buffers; "eager": the static buffers run eagerly, on any device.
CUDA_GRAPH_MODES = (True, "step", False, "eager")


def check_cuda_graph_mode(mode) -> None:
    """Raise a clear error unless ``mode`` is one of :data:`CUDA_GRAPH_MODES` (True and False themselves)."""
    if not any(mode is m if isinstance(m, bool) else mode == m for m in CUDA_GRAPH_MODES):
        raise ValueError(f"cuda_graph={mode!r} is not one of {CUDA_GRAPH_MODES}")


def static_mode(mode, x: torch.Tensor) -> str | None:
    """How a call on ``x`` runs under ``mode``: "capture" (CUDA graphs), "eager" (static buffers, no graph) or
    None (the plain function): True and "step" capture on CUDA tensors and run plain elsewhere."""
    if mode is False or (mode != "eager" and not x.is_cuda):
        return None
    return "eager" if mode == "eager" else "capture"


class GraphCache:
    """The static functions (:class:`StaticStep`) of one owner by key, the last ``size`` used kept, and per CUDA
    device the side stream on which they are warmed up and captured and the memory pool their graphs share.

    A key's first use on a CUDA device runs eagerly on that stream (:meth:`warm_up`): it does there what must not
    happen during a capture (cuBLAS handles and workspaces, which are per stream, Triton compilation and
    autotuning, torch.compile's tracing); its second use captures.

    The graphs of one cache share one memory pool per device, so that the activations of, say, the VAE's window
    shapes take the memory of the largest, not of all together. Sharing is safe here: they run on the stream
    that calls them, one after another, and each call copies its output out of the pool before the next replay
    (:class:`StaticStep`), so no graph reads what another's replay overwrote.
    """

    def __init__(self, size: int = GRAPH_CACHE_SIZE) -> None:
        self.size = size
        self.graphs: OrderedDict[tuple, StaticStep] = OrderedDict()
        self.warm: OrderedDict[tuple, None] = OrderedDict()  # keys warmed up, to be captured at their next use
        self.streams: dict[torch.device, torch.cuda.Stream] = {}
        self.pools: dict[torch.device, tuple] = {}

    def __deepcopy__(self, memo) -> GraphCache:
        """An empty cache: graphs read their owner's buffers, so a copy of the owner (an EMA copy of a model) must
        capture its own."""
        return GraphCache(self.size)

    def get(self, key: tuple) -> StaticStep | None:
        """The cached function of ``key`` (marked most recently used), or None."""
        static = self.graphs.get(key)
        if static is not None:
            self.graphs.move_to_end(key)
        return static

    def keep(self, key: tuple, static: StaticStep) -> StaticStep:
        """Cache ``static`` under ``key``, dropping the least recently used beyond ``size``."""
        self.warm.pop(key, None)
        self.graphs[key] = static
        while len(self.graphs) > self.size:
            self.graphs.popitem(last=False)
        return static

    def first_use(self, key: tuple) -> bool:
        """Whether ``key`` is used for the first time (then it is marked warmed up)."""
        if key in self.warm:
            return False
        self.warm[key] = None
        while len(self.warm) > self.size:
            self.warm.popitem(last=False)
        return True

    def call(
        self,
        key: tuple,
        fn: Callable[..., torch.Tensor],
        call: Sequence[torch.Tensor],
        shared: Sequence[torch.Tensor | None],
        owner: object,
        capture: bool,
    ) -> torch.Tensor:
        """``fn(*call, *shared)`` through the cached :class:`StaticStep` of ``key`` (made at a miss); with
        ``capture``, a key's first use is a warm-up run instead."""
        static = self.get(key)
        if static is None:
            device = call[0].device
            if capture and self.first_use(key):
                return self.warm_up(device, lambda: fn(*call, *shared))
            static = self.keep(key, self.static(fn, call, shared, capture))
        return static(call, shared, owner=owner)

    def static(self, fn, call: Sequence[torch.Tensor], shared: Sequence[torch.Tensor | None], capture: bool):
        """A :class:`StaticStep` of ``fn`` on buffers like ``call`` and ``shared``; with ``capture``, captured on
        this cache's stream into its pool (of the device of ``call[0]``)."""
        device = call[0].device
        place = (self.stream(device), self.pool(device)) if capture else (None, None)
        return StaticStep(fn, call, shared, capture, *place)

    def stream(self, device: torch.device) -> torch.cuda.Stream:
        """The side stream of ``device`` on which this cache warms up and captures."""
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def pool(self, device: torch.device) -> tuple:
        """The memory pool that this cache's graphs on ``device`` share (captured on :meth:`stream`, as sharing
        a pool requires)."""
        if device not in self.pools:
            with torch.cuda.device(device):
                self.pools[device] = torch.cuda.graph_pool_handle()
        return self.pools[device]

    def warm_up(self, device: torch.device, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``fn()`` run eagerly on the side stream of ``device``, ordered with the current stream both ways."""
        stream, current = self.stream(device), torch.cuda.current_stream(device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            out = fn()
        current.wait_stream(stream)
        out.record_stream(current)  # allocated on the side stream, read on this one
        return out


class StaticStep:
    """A function (a DiT step, a whole solve, the text encoder) on buffers it owns, for a CUDA graph to replay.

    Each call copies its inputs into the buffers: the per-call ones (``call``: x, and for a step the call's
    adaLN outputs) every time, the per-generation ones (``shared``: K/V, masks) when the generation using it
    changes. The output is returned as a copy (solvers keep earlier velocities; the buffer is overwritten by the
    next call). With ``capture`` (CUDA tensors, warmed up by an eager run on ``stream``) the function is
    recorded once in a ``torch.cuda.CUDAGraph`` and each call replays it on the current stream; without, it
    runs eagerly on the same buffers.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        call: Sequence[torch.Tensor],
        shared: Sequence[torch.Tensor | None],
        capture: bool,
        stream: torch.cuda.Stream | None = None,
        pool: tuple | None = None,
    ) -> None:
        self.fn = fn
        self.call = [t.clone() for t in call]
        self.shared = [None if t is None else t.clone() for t in shared]
        self.owner: weakref.ref | None = None  # the generation whose per-generation inputs the buffers hold
        self.graph = None
        self.output = None
        self.times: list[float] | None = None  # a whole solve's call times
        if capture:
            self.graph = torch.cuda.CUDAGraph()
            # Capture records the kernels without running them (the output buffer is written by replays), on
            # ``stream``: the stream of the warm-up run, whose cuBLAS handles and workspaces it reuses; its memory
            # comes from ``pool`` (None: a pool of its own).
            with torch.cuda.graph(self.graph, pool=pool, stream=stream):
                self.output = fn(*self.call, *self.shared)

    def __call__(self, call, shared, owner) -> torch.Tensor:
        if self.owner is None or self.owner() is not owner:
            for buffer, t in zip(self.shared, shared, strict=True):
                if buffer is not None:
                    buffer.copy_(t)
            self.owner = weakref.ref(owner)
        for buffer, t in zip(self.call, call, strict=True):
            buffer.copy_(t)
        if self.graph is None:
            self.output = self.fn(*self.call, *self.shared)
        else:
            self.graph.replay()
        return self.output.clone()
