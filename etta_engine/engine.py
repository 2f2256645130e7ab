"""The fast inference path of the DiT: everything that does not depend on the latents, hoisted out of the loop.

A fixed-step solver calls the velocity at times known before the loop starts (:func:`evaluation_times`). For one
generation, :meth:`DiTEngine.prepare` therefore computes once:

- the timestep embeddings of every call and the conditioning ``c = time_embed(t) + global_embed(g)``;
- every block's adaLN output for the whole schedule: one ``(calls * B, D) @ (D, 9 D)`` matmul per block
  instead of one small matmul per block per call (the adaLN weights are 21.2 M of each block's 53.1 M);
- the cross-attention K/V of the prompt (memory embedding, LayerNorm and K/V projection per block);
- which rows have a zero memory (the official null conditioning of the uncond half of a CFG batch): their
  cross-attention output is exactly zero, so it is skipped, not computed.

With an audio prompt (:mod:`etta_engine.models.adapter`), the adapter's K/V of the audio tokens are computed once
too, and each block's gated audio cross-attention runs in the step.

The prepared velocity function then runs only what depends on x: self-attention, the cross-attention queries
of the rows that attend to a prompt, and the FFN. It keeps no host syncs in the step (the call index is a
Python counter), so a step can be captured in a CUDA graph.

CUDA graphs: on CUDA tensors each step runs on static buffers (:class:`StaticStep`) and, from the second call
of a shape on, is replayed from a ``torch.cuda.CUDAGraph`` instead of launching its few hundred kernels one by
one. :func:`sample_graphed` goes further: a whole fixed-step solve (every step, the guidance and the solver's
updates) is captured in one graph at the second generation of the same shape, solver and guidance (the first
warms up), and each later one is one replay, with no Python between the steps. The engine keeps the graphs of
its last :data:`~etta_engine.graphs.GRAPH_CACHE_SIZE` shapes (:mod:`etta_engine.graphs`); a generation's inputs
(noise, adaLN outputs, prompt K/V, mask) are copied into the graph's buffers.

fp16 (a DiT whose weights are float16): fp16 has a range of 65504, which a DiT's residual stream and FFN
activations can exceed (the official fp16 autocast path has no guard). With ``fp16_guards`` (default) the
engine keeps fp32 what needs the range: the residual stream, the time/global embeddings, the adaLN outputs,
the LayerNorms and modulation, the attention softmax (inside the attention kernels) and the final layer; every
other matmul runs on fp16 weights with each input row divided by a power of two chosen so that neither the
fp16 input nor the fp16 output can overflow (:func:`guarded_linear`): exact scaling, no clamping, no host sync.

    engine = DiTEngine(model.dit)
    times = evaluation_times("heun", nfe=8, schedule="uniform")
    velocity = engine.prepare(cond, times)           # cond: DiTConditioning of the (CFG-)batched rows
    result = sample_graphed(cfg(velocity, 3.5), noise, solver="heun", nfe=8)  # = sampling.sample, one graph
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from etta_engine import ops
from etta_engine.graphs import GraphCache, StaticStep, check_cuda_graph_mode, static_mode
from etta_engine.models.adapter import AudioAdapter, AudioPrompt
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.sampling import (
    SOLVERS,
    Guided,
    SampleResult,
    StepCallback,
    VelocityFn,
    grid_dtype,
    invert,
    sample,
    solver_grid,
)

ADAPTIVE_SOLVERS = ("dopri5",)
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs
FP16_MAX = 65504.0
# Inputs and outputs of a guarded fp16 matmul stay below this bound (half of FP16_MAX: room for rounding).
FP16_GUARD_LIMIT = 2.0**15
# Linear layers of a block run by guarded_linear, in the order of the bounds vector (6 per block).
GUARDED_LAYERS = ("self_attn.qkv", "self_attn.out", "cross_attn.q", "cross_attn.out", "ff.up", "ff.down")


def evaluation_times(
    solver: str, nfe: int, schedule: str = "uniform", t_start: float = 1.0, *, inverse: bool = False, **options
) -> list[float]:
    """The times at which :func:`~etta_engine.sampling.sample` calls the velocity function, in call order
    (``inverse``: those of :func:`~etta_engine.sampling.invert` up to ``t_start``).

    Found by running the solver on a one-element problem with a recording velocity: the fixed-step solvers
    never branch on values, so the real run calls at the same times in the same order.
    """
    if solver in ADAPTIVE_SOLVERS:
        raise ValueError(f"solver={solver!r} is adaptive: its evaluation times depend on the model's outputs")
    times: list[float] = []

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times.append(float(t[0]))
        return torch.zeros_like(x)

    if inverse:
        invert(record, torch.zeros(1, 1, 1), solver=solver, nfe=nfe, schedule=schedule, t_end=t_start, **options)
    else:
        sample(record, torch.zeros(1, 1, 1), solver=solver, nfe=nfe, schedule=schedule, t_start=t_start, **options)
    return times


# ------------------------------------------------------------------ fp16 guards


def guarded_linear(a: torch.Tensor, weight: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``a @ weight.T`` with a (bias-free) fp16 ``weight`` and an fp16 matmul that cannot overflow; fp32 result.

    ``bound``: a 0-d tensor >= max_j sum_i |weight[j, i]| (the largest row L1 norm). Every output is bounded by
    ``max|a_row| * bound`` and the input by ``max|a_row|``, so dividing each row of ``a`` by the power of two
    ``s = 2^ceil(log2(max|a_row| * max(bound, 1) / 2^15))`` (at least 1) keeps both below 2^15, partial sums
    included; ``s`` is multiplied back in fp32. Powers of two scale exactly: rows that need no scaling
    (``s = 1``, the usual case) get the plain fp16 matmul's result; scaled rows lose only components that
    fall below fp16's normal range.
    """
    peak = a.detach().abs().amax(dim=-1, keepdim=True).float() * bound.clamp_min(1.0)  # (..., 1)
    s = torch.exp2(torch.ceil(torch.log2(peak / FP16_GUARD_LIMIT))).clamp_min(1.0)  # peak 0: exp2(-inf) = 0 -> 1
    return F.linear((a.float() / s).to(weight.dtype), weight).float() * s


def row_l1_bound(weight: torch.Tensor) -> torch.Tensor:
    """The largest row L1 norm of a linear layer's weight, in fp32 (the ``bound`` of :func:`guarded_linear`)."""
    return weight.float().abs().sum(dim=1).amax()


def saturate_fp16(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp16, with values beyond the fp16 range clamped to +-65504 instead of becoming inf."""
    return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def _fp32_call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with fp32 copies of its parameters and floating inputs (an fp32 island of an fp16 DiT)."""
    params = {name: p.float() for name, p in module.named_parameters()}
    return functional_call(module, params, tuple(a.float() if a.is_floating_point() else a for a in args))


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


# ------------------------------------------------------------------ the per-generation tables


def _call(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return module(*args)


def adaln_input(dit: DiT, t: torch.Tensor, global_cond: torch.Tensor, run=_call) -> torch.Tensor:
    """``silu(time_embed(t) + global_embed(g))`` of every call and row, (N B, D) for t (N,) and g (B, G): the
    input of every adaLN of the schedule (``run(module, *args)`` calls the modules, e.g. in fp32)."""
    c = run(dit.time_embed, t)[:, None, :] + run(dit.global_embed, global_cond)[None, :, :]  # (N, B, D)
    return F.silu(c).reshape(-1, c.shape[-1])


def prompt_kv(block: nn.Module, memory: torch.Tensor, run=_call) -> torch.Tensor:
    """A block's cross-attention K/V of the embedded prompt: memory (n, L, Dc) -> (n, L, 2, Hc, Dc)."""
    attn = block.cross_attn
    kv = run(attn.kv, run(block.memory_norm, memory))
    return kv.view(*memory.shape[:2], 2, attn.heads, attn.head_dim)


# ------------------------------------------------------------------ the engine


class StepPlan(NamedTuple):
    """What a step's code depends on besides tensors (part of the key of a captured graph)."""

    rows: tuple[int, ...]  # batch rows with a prompt: their cross-attention is computed
    prefix: bool  # rows == 0..n-1 (the CFG layout): slices instead of gathers
    batch: int
    guarded: bool  # the fp16 path with guards
    adapter: AudioAdapter | None = None  # an audio prompt's adapter: its gated cross-attention runs in every block


class DiTEngine:
    """Inference of a :class:`~etta_engine.models.dit.DiT` with the per-generation work hoisted (module doc).

    ``ops``: the implementation of etta_engine.ops used in the step (default: the DiT's ``cfg.ops``).
    ``cuda_graph``: True captures, for CUDA tensors, each step in a CUDA graph and each whole solve run by
    :func:`sample_graphed` in one (CPU tensors run as without); "step" captures steps only (a solve replays one
    graph per call); "eager" runs steps and solves on the same static buffers and cache but eagerly, on any
    device (to tell a capture problem from a buffer problem, and to test the buffer logic on a CPU); False runs
    the plain step.
    ``fp16_guards``: for an fp16 DiT, the overflow guards of the module doc (False: every op in fp16, as a naive
    fp16 model; for comparison only).
    ``fused_seams``: run each seam between two sub-layers (gated residual, then the next AdaLN) as one
    ``ops.residual_modulate`` where the layout allows (False: the separate ops, for comparison).
    ``compile``: True, or a dict of ``torch.compile`` keywords, compiles the step as one graph (inductor fuses
    what lies between our ops, which it calls as opaque custom ops); it is traced once per step shape and
    prompt layout, and captured in the engine's CUDA graphs like the eager step (so modes with CUDA graphs of
    their own are refused while ``cuda_graph`` captures).
    """

    def __init__(
        self,
        dit: DiT,
        *,
        ops: str | None = None,
        cuda_graph: bool | str = True,
        fp16_guards: bool = True,
        fused_seams: bool = True,
        compile: bool | dict = False,
    ) -> None:
        if not isinstance(dit, DiT):
            raise TypeError(f"dit must be a DiT, got {type(dit).__name__}")
        check_cuda_graph_mode(cuda_graph)
        if not isinstance(compile, bool | dict):
            raise TypeError(f"compile must be a bool or a dict of torch.compile keywords, got {compile!r}")
        options = dict(compile) if isinstance(compile, dict) else {}
        if compile is not False and options.get("mode") in CUDA_GRAPH_COMPILE_MODES and cuda_graph is not False:
            raise ValueError(
                f"compile mode {options['mode']!r} captures CUDA graphs of its own, inside the engine's: use "
                f"mode='max-autotune-no-cudagraphs' or the default, or cuda_graph=False"
            )
        self.dit = dit
        self.ops = dit.cfg.ops if ops is None else ops
        # The step every call runs: the eager one, or its torch.compile build (one graph, no breaks).
        self.run_step = torch.compile(self.step, fullgraph=True, **options) if compile is not False else self.step
        self.cuda_graph = cuda_graph
        self.fp16_guards = bool(fp16_guards)
        self.fused_seams = bool(fused_seams)
        self.cache = GraphCache()

    @property
    def graphs(self) -> OrderedDict[tuple, StaticStep]:
        """The cached static steps and solves, by key, the most recently used last."""
        return self.cache.graphs

    @property
    def guarded(self) -> bool:
        """Whether the step runs the fp16 path with overflow guards."""
        return self.fp16_guards and self.dit.dtype == torch.float16

    @torch.no_grad()
    def prepare(
        self,
        cond: DiTConditioning,
        times: Sequence[float],
        audio: AudioPrompt | None = None,
        *,
        zero_rows: Sequence[int] | None = None,
    ) -> PreparedDiT:
        """The velocity function of one generation whose calls happen at ``times`` (see :func:`evaluation_times`).

        ``cond``: the conditioning of every row of the batch the solver evaluates (cond and uncond halves
        concatenated for CFG). ``audio``: an audio prompt for the same rows, whose tokens' K/V are computed here,
        once.

        ``zero_rows``: the rows whose context the caller made all zeros (the official null conditioning of CFG's
        uncond half), whose cross-attention is skipped; every other row attends to its prompt. None finds the
        rows with a zero memory from the tensors, at the cost of one host sync (the only one: the steps have
        none). Given, ``prepare`` launches its work without waiting for the device.
        """
        dit, cfg = self.dit, self.dit.cfg
        context, mask, global_cond = cond
        B, L = context.shape[:2]
        probe = torch.empty(B, cfg.io_channels, 1, dtype=dit.dtype, device=context.device)
        dit.check_inputs(probe, torch.zeros(B, device=context.device), context, mask, global_cond)
        times = [float(t) for t in times]
        if not times:
            raise ValueError("times is empty: the solver makes at least one call")
        if any(not 0.0 <= t <= 1.0 for t in times):
            raise ValueError(f"times must lie in [0, 1], got {times}")
        t = torch.tensor(times).to(context.device, non_blocking=True)  # no device sync (unlike tensor(device=))
        N, D = len(times), cfg.width
        guarded = self.guarded
        run = _fp32_call if guarded else _call

        c_act = adaln_input(dit, t, global_cond, run)  # (N B, D)
        modulation = c_act.new_empty(N, cfg.depth, B, 9 * D)
        for i, block in enumerate(dit.blocks):
            modulation[:, i] = run(block.adaln, c_act).view(N, B, 9 * D)
        final = run(dit.final.adaln, c_act).view(N, B, 2 * D)

        memory = run(dit.cond_embed, context)  # (B, L, Dc)
        # Rows with an all-zero memory get exactly zero cross-attention (no biases anywhere on that path).
        if zero_rows is not None and _maps_zero_to_zero(dit.cond_embed):
            rows = _rows_besides(zero_rows, B)
        else:
            rows = [i for i, a in enumerate((memory != 0).flatten(1).any(dim=1).tolist()) if a]  # a host sync
        index = torch.tensor(rows, dtype=torch.long).to(context.device, non_blocking=True)
        n = len(rows)
        kv = torch.empty(cfg.depth, n, L, 2, cfg.cross_heads, cfg.cross_head_dim, dtype=dit.dtype, device=t.device)
        for i, block in enumerate(dit.blocks):
            kv_i = prompt_kv(block, memory[index], run)
            kv[i] = saturate_fp16(kv_i) if guarded else kv_i
        bounds = None
        if guarded:
            layers = [block.get_submodule(name) for block in dit.blocks for name in GUARDED_LAYERS]
            # One read of the step's weights per generation (cheap next to the steps; no state to go stale).
            bounds = torch.stack([row_l1_bound(layer.weight) for layer in layers])  # (6 depth,)
        audio_kv = audio_scale = adapter = None
        if audio is not None:
            audio.check(cfg, B)
            adapter = audio.adapter
            audio_kv = torch.stack(
                [run(layer.kv, audio.tokens).view(B, -1, 2, layer.heads, layer.head_dim) for layer in adapter.layers]
            )  # (depth, B, N, 2, Hc, Dc)
            audio_scale = torch.full((), audio.scale, dtype=torch.float32, device=t.device)  # a buffer, not a constant
        plan = StepPlan(tuple(rows), rows == list(range(n)), B, guarded, adapter)
        shared = (kv, mask[index], index, bounds, audio_kv, audio_scale)
        return PreparedDiT(self, times, plan, modulation, final, shared)

    # ------------------------------------------------------------------ the step

    def step(
        self, plan: StepPlan, x, modulation, final, kv, kv_mask, index, bounds, audio_kv=None, audio_scale=None
    ) -> torch.Tensor:
        """The DiT's velocity x (B, C, T) -> (B, C, T) given one call's adaLN outputs ``modulation``
        (depth, B, 9 D) and ``final`` (B, 2 D), and the generation's K/V (depth, n, L, 2, Hc, Dc), key mask
        (n, L), attending-row index (n,), fp16 bounds (6 depth,) or None, and the audio prompt's K/V
        (depth, B, N, 2, Hc, Dc) and scale (0-d) or None. Tensors in, tensor out, no host syncs: this is what a
        CUDA graph captures."""
        dit, impl = self.dit, self.ops
        if plan.guarded:
            linear = lambda layer, a, j: guarded_linear(a, layer.weight, bounds[j])
            narrow = saturate_fp16
            h = x.float().transpose(1, 2)  # (B, T, C)
            h = _linear_fp32(dit.project_in, _linear_fp32(dit.preprocess, h) + h)  # (B, T, D) fp32
        else:
            linear = lambda layer, a, j: layer(a)
            narrow = lambda a: a
            h = x.transpose(1, 2)  # (B, T, C)
            h = dit.project_in(dit.preprocess(h) + h)  # (B, T, D)
        B, T, _ = h.shape
        n = kv.shape[1]  # the attending rows (len(plan.rows); from the tensor, it stays symbolic in an export)
        # Fused seams: each sub-layer's gated residual, the rows skipped by the cross-attention passed through, and
        # the next sub-layer's AdaLN are one op (ops.residual_modulate), so the step carries (h, a) from seam to
        # seam. Not with an audio prompt (its residual sits between two seams) or attending rows in another order.
        fused = self.fused_seams and plan.prefix and plan.adapter is None
        seam = partial(ops.residual_modulate, impl=impl)  # (h, gate, y, shift, scale[, weight, eps]) -> (h, a)
        a = ops.adaln_modulate(h, *modulation[0].chunk(9, dim=1)[:2], None, 1e-6, impl=impl) if fused else None
        for i, block in enumerate(dit.blocks):
            j = len(GUARDED_LAYERS) * i
            shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_ff, scale_ff, gate_ff = modulation[i].chunk(
                9, dim=1
            )
            ff_weight, ff_eps = block.ff_norm.weight.to(h.dtype), block.ff_norm.eps
            sa = block.self_attn
            if not fused:
                a = ops.adaln_modulate(h, shift_sa, scale_sa, None, 1e-6, impl=impl)
            qkv = narrow(linear(sa.qkv, a, j)).view(B, T, 3, sa.heads, sa.head_dim)  # (B, T, 3, H, Dh)
            o = ops.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rope_base=sa.rope_base, impl=impl)
            y = linear(sa.out, o.reshape(B, T, -1), j + 1)
            if fused:
                nxt = (shift_ca, scale_ca) if n else (shift_ff, scale_ff, ff_weight, ff_eps)
                h, a = seam(h, gate_sa, y, *nxt)
            else:
                h = ops.gated_residual(h, gate_sa, y, impl=impl)
            if n:
                ca = block.cross_attn
                pick = (lambda v: v[:n]) if plan.prefix else (lambda v: v.index_select(0, index))
                if fused:
                    a = a[:n]
                else:
                    hr = pick(h)  # (n, T, D)
                    a = ops.adaln_modulate(hr, pick(shift_ca), pick(scale_ca), None, 1e-6, impl=impl)
                q = narrow(linear(ca.q, a, j + 2)).view(n, T, ca.heads, ca.head_dim)  # (n, T, Hc, Dc)
                o = ops.attention(q, kv[i, :, :, 0], kv[i, :, :, 1], kv_mask, impl=impl)
                y = linear(ca.out, o.reshape(n, T, -1), j + 3)
                if fused:
                    h, a = seam(h, gate_ca[:n], y, shift_ff, scale_ff, ff_weight, ff_eps)
                else:
                    hr = ops.gated_residual(hr, pick(gate_ca), y, impl=impl)
                    if n == plan.batch:
                        h = hr
                    elif plan.prefix:
                        h = torch.cat((hr, h[n:]))
                    else:
                        h = h.index_copy(0, index, hr)
            if plan.adapter is not None:
                layer = plan.adapter.layers[i]
                if plan.guarded:  # the residual stream is fp32: so is the adapter's path
                    params = {name: p.float() for name, p in layer.named_parameters()}
                    h = functional_call(layer, params, (h,), {"kv": audio_kv[i], "scale": audio_scale, "impl": impl})
                else:
                    h = layer.attend(h, audio_kv[i], audio_scale, impl)
            if not fused:
                a = ops.adaln_modulate(h, shift_ff, scale_ff, ff_weight, ff_eps, impl=impl)
            u = ops.gelu_tanh(linear(block.ff.up, a, j + 4), impl=impl)
            y = linear(block.ff.down, u, j + 5)
            if fused:
                following = final.chunk(2, dim=1) if i + 1 == len(dit.blocks) else modulation[i + 1].chunk(9, dim=1)
                h, a = seam(h, gate_ff, y, following[0], following[1])  # the next block's (or final) shift, scale
            else:
                h = ops.gated_residual(h, gate_ff, y, impl=impl)
        if not fused:
            shift, scale = final.chunk(2, dim=1)
            a = ops.adaln_modulate(h, shift, scale, None, 1e-6, impl=impl)
        if plan.guarded:
            out = _linear_fp32(dit.final.linear, a)  # (B, T, C) fp32
            out = _linear_fp32(dit.postprocess, out) + out
            out = out.transpose(1, 2)  # (B, C, T)
            return saturate_fp16(out) if x.dtype == torch.float16 else out.to(x.dtype)
        out = dit.final.linear(a)  # (B, T, C)
        return (dit.postprocess(out) + out).transpose(1, 2)  # (B, C, T)

    # ------------------------------------------------------------------ static buffers and CUDA graphs

    def static_step(self, prepared: PreparedDiT, call: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """One call through the cached :class:`StaticStep` of its shape, or None where the caller runs the plain
        step (no static buffers here). On CUDA, a shape's first call warms up and its second captures
        (:class:`GraphCache`)."""
        x = call[0]
        mode = static_mode(self.cuda_graph, x)
        if mode is None:
            return None
        capture = mode == "capture"
        shared = prepared.shared
        # The weights' addresses are part of the key: a graph reads them where they were at capture.
        key = ("step", prepared.plan, tuple(x.shape), x.dtype, str(x.device), self.ops, prepared.weights_key,
               _shapes(shared))  # fmt: skip
        return self.cache.call(key, partial(self.run_step, prepared.plan), call, shared, prepared, capture)

    def solve(
        self,
        prepared: PreparedDiT,
        guided: Guided | None,
        noise: torch.Tensor,
        solver: str,
        nfe: int,
        schedule: str,
        t_start: float,
        options: dict,
    ) -> SampleResult | None:
        """A whole fixed-step solve of ``prepared`` (under ``guided``'s CFG, whose ``batched_fn`` it is) from
        ``noise``, on the static buffers of its :class:`StaticStep` and, for CUDA tensors, replayed from one
        CUDA graph. As for steps, the first solve of a key runs eagerly on the capture stream (warming up every
        kernel, handle and workspace the capture will record) and the second captures and replays. None where
        the caller runs the plain :func:`~etta_engine.sampling.sample` (no static buffers or "step" mode, an
        adaptive solver, a prepared DiT already called)."""
        mode = static_mode(self.cuda_graph, noise)
        plain = mode is None or self.cuda_graph == "step" or prepared.calls
        if plain or solver not in SOLVERS or "rtol" in options or "atol" in options:
            return None  # (the plain sample raises what is wrong with the arguments)
        steps, ts = solver_grid(solver, nfe, schedule, t_start, dtype=grid_dtype(noise), **options)
        if steps is None:  # adaptive
            return None
        # The grid stays on the host: its values are constants of the captured kernels (no host syncs in the
        # solvers' set-up, no device copies of it during capture).
        rows = noise.shape[0] * (1 if guided is None else 2)
        if rows != prepared.plan.batch:
            raise ValueError(
                f"noise has {noise.shape[0]} rows, so the solve evaluates {rows}, but the DiT was prepared for "
                f"{prepared.plan.batch}"
            )
        capture = mode == "capture"
        inputs = (prepared.modulation, prepared.final, *prepared.shared)
        guidance = None if guided is None else (guided.scale, guided.rescale)
        key = ("solve", solver, tuple(ts.tolist()), guidance, prepared.plan, tuple(noise.shape), noise.dtype,
               str(noise.device), self.ops, prepared.weights_key, _shapes(inputs))  # fmt: skip
        loop = self.cache.get(key)
        if loop is None:
            times = evaluation_times(solver, nfe, schedule, t_start, **options)
            _check_times(prepared, times)
            fn = partial(self._solve, prepared.plan, SOLVERS[solver].fn, ts, guided)
            if capture and self.cache.first_use(key):
                prepared.calls = len(prepared.times)
                x = self.cache.warm_up(noise.device, lambda: fn(noise, *inputs))
                return SampleResult(x=x, nfe=len(prepared.times), steps=steps)
            loop = self.cache.keep(key, self.cache.static(fn, (noise,), inputs, capture))
            loop.times = times
        else:
            _check_times(prepared, loop.times)
        x = loop((noise,), inputs, owner=prepared)
        prepared.calls = len(prepared.times)
        return SampleResult(x=x, nfe=len(prepared.times), steps=steps)

    def _solve(
        self, plan: StepPlan, solve: Callable, ts: torch.Tensor, guided: Guided | None, x, modulation, final, *shared
    ) -> torch.Tensor:
        """The solver's loop over the engine's step (what a whole-solve graph captures)."""
        calls = iter(range(modulation.shape[0]))

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            k = next(calls)
            return self.run_step(plan, x, modulation[k], final[k], *shared)

        return solve(velocity if guided is None else dataclasses.replace(guided, batched_fn=velocity), x, ts)


def sample_graphed(
    velocity: VelocityFn,
    noise: torch.Tensor,
    *,
    solver: str = "euler",
    nfe: int = 100,
    schedule: str = "uniform",
    t_start: float = 1.0,
    callback: StepCallback | None = None,
    **options,
) -> SampleResult:
    """:func:`~etta_engine.sampling.sample`, as one CUDA graph where it can be.

    Where ``velocity`` is a :class:`PreparedDiT` not called yet, or ``cfg(prepared, ...)`` of one without an
    ``interval``, and its engine keeps static buffers for ``noise`` (``cuda_graph=True`` on CUDA tensors, or
    "eager"), the whole fixed-step solve runs through :meth:`DiTEngine.solve`: one graph replay per generation
    once warmed up.
    Everything else (other velocity functions, adaptive solvers) runs ``sample`` itself. The result is the
    plain solve's up to float rounding. ``callback``: within a graph the steps' states are not seen, so it is
    called after the solve, for every step, with the final x.
    """
    guided = velocity if isinstance(velocity, Guided) and velocity.interval is None else None
    prepared = velocity if guided is None else guided.batched_fn
    result = None
    if isinstance(prepared, PreparedDiT):
        result = prepared.engine.solve(prepared, guided, noise, solver, nfe, schedule, t_start, dict(options))
    if result is None:
        return sample(velocity, noise, solver=solver, nfe=nfe, schedule=schedule, t_start=t_start,
                      callback=callback, **options)  # fmt: skip
    if callback is not None:
        for i in range(result.steps):
            callback(i, result.x)
    return result


# Modules that map a zero input to a zero output when their linear layers have no bias.
ZERO_PRESERVING = (nn.Sequential, nn.Linear, nn.SiLU, nn.GELU, nn.ReLU, nn.Identity)


def _maps_zero_to_zero(module: nn.Module) -> bool:
    """Whether ``module`` (the DiT's memory embedding) maps a zero context to a zero memory, by construction."""
    return all(isinstance(m, ZERO_PRESERVING) and getattr(m, "bias", None) is None for m in module.modules())


def _rows_besides(zero_rows: Sequence[int], batch: int) -> list[int]:
    """The rows 0..batch-1 not in ``zero_rows``, after checking that those are rows of the batch."""
    zero = set()
    for i in zero_rows:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < batch:
            raise ValueError(f"zero_rows must be row indices in [0, {batch}), got {list(zero_rows)}")
        zero.add(i)
    return [i for i in range(batch) if i not in zero]


def _shapes(tensors: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else tuple(t.shape) for t in tensors)


def _check_times(prepared: PreparedDiT, times: list[float]) -> None:
    if times != prepared.times:
        raise ValueError(
            f"the solve calls the DiT at t={times} but it was prepared for t={prepared.times}; prepare it with the "
            "solver's evaluation_times"
        )


class PreparedDiT:
    """The velocity function of one prepared generation: call ``k`` evaluates at ``times[k]``.

    The ``t`` argument is accepted for the solver interface and ignored: the times were fixed by ``prepare``
    (checking them against ``t`` would cost a host sync per call). ``reset()`` rewinds the counter for
    another run with the same conditioning and schedule (e.g. another seed).
    """

    def __init__(self, engine: DiTEngine, times, plan: StepPlan, modulation, final, shared) -> None:
        self.engine, self.times, self.plan = engine, times, plan
        self.modulation, self.final = modulation, final  # (N, depth, B, 9 D), (N, B, 2 D)
        self.shared = shared  # (kv, kv_mask, index, bounds): the step's per-generation inputs
        modules = (engine.dit,) if plan.adapter is None else (engine.dit, plan.adapter)
        self.weights_key = tuple(p.data_ptr() for m in modules for p in m.parameters())
        self.calls = 0

    @property
    def rows(self) -> list[int]:
        """Batch rows that attend to a prompt (the others have a zero memory)."""
        return list(self.plan.rows)

    @property
    def skipped_rows(self) -> int:
        """Rows whose cross-attention is skipped (zero memory)."""
        return self.plan.batch - len(self.plan.rows)

    def reset(self) -> None:
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        k = self.calls
        if k >= len(self.times):
            raise RuntimeError(
                f"the prepared DiT was called {k + 1} times but prepared for {len(self.times)} calls; "
                "prepare it with the solver's evaluation_times (or reset() it for a new run)"
            )
        if x.ndim != 3 or x.shape[0] != self.plan.batch:
            raise ValueError(f"x must have shape ({self.plan.batch}, C, T) as prepared, got {tuple(x.shape)}")
        self.calls += 1
        return self.velocity(x, k)

    def velocity(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The DiT's velocity at call ``k`` (times[k]), x (B, C, T) -> (B, C, T)."""
        call = (x, self.modulation[k], self.final[k])
        out = self.engine.static_step(self, call)
        return self.engine.run_step(self.plan, *call, *self.shared) if out is None else out
