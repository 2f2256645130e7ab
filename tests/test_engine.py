"""The inference engine: the prepared DiT equals the plain model path (fp32 and bf16, CFG batches with and without
a negative prompt, ragged masks), at every call of every fixed-step solver, and whole sampling runs agree."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import randomize_, rel_err

from etta_engine.engine import DiTEngine, evaluation_times, guarded_linear, sample_graphed
from etta_engine.graphs import GraphCache
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.sampling import cfg, sample

SOLVERS = ["euler", "heun", "midpoint", "rk4", "dpmpp_2m"]


def _dit(tiny_cfg, dtype=torch.float32, ops="torch") -> DiT:
    dit = DiT(dataclasses.replace(tiny_cfg.dit, dropout=0.0, ops=ops))
    return randomize_(dit, std=0.2).eval().to(dtype)


def _cond(dit: DiT, B: int, L: int = 6, negative: bool = False, seed: int = 0) -> DiTConditioning:
    """A CFG batch: B conditional rows, then B uncond rows with the official zero memory (or a negative prompt)."""
    g = torch.Generator().manual_seed(seed)
    c = dit.cfg
    context = torch.randn(B, L, c.cond_dim, generator=g)
    mask = torch.arange(L)[None, :] < torch.randint(1, L + 1, (B,), generator=g)[:, None]  # ragged prompts
    uncond = torch.randn(B, L, c.cond_dim, generator=g) if negative else torch.zeros_like(context)
    global_cond = torch.randn(B, c.global_cond_dim, generator=g)
    cat = lambda a, b: torch.cat((a, b))
    return DiTConditioning(
        cat(context, uncond).to(dit.dtype), cat(mask, mask), cat(global_cond, global_cond).to(dit.dtype)
    )


@pytest.mark.parametrize("solver", SOLVERS)
def test_evaluation_times_are_the_times_the_solver_calls(solver):
    seen = []
    sample(lambda x, t: seen.append(t.clone()) or -x, torch.randn(2, 3, 4), solver=solver, nfe=8, schedule="shifted")
    times = evaluation_times(solver, 8, "shifted")
    assert len(times) == len(seen) <= 8
    assert all(
        torch.all(t == float(torch.tensor(want, dtype=torch.float32))) for t, want in zip(seen, times, strict=True)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("negative", [False, True])
def test_prepared_velocity_equals_the_model_at_every_call(tiny_cfg, dtype, negative):
    dit = _dit(tiny_cfg, dtype)
    cond = _cond(dit, B=2, negative=negative)
    times = evaluation_times("heun", 6)
    velocity = DiTEngine(dit).prepare(cond, times)
    assert velocity.skipped_rows == (0 if negative else 2)
    x = torch.randn(4, dit.cfg.io_channels, 13, generator=torch.Generator().manual_seed(1)).to(dtype)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        for t in times:
            ref = dit(x, torch.full((4,), t), *cond).float()
            got = velocity(x, None).float()
            assert (got - ref).abs().max() <= tol * ref.abs().max(), t
    with pytest.raises(RuntimeError, match=r"called 6 times but prepared for 5 calls"):
        velocity(x, None)
    velocity.reset()
    with pytest.raises(ValueError, match=r"x must have shape \(4, C, T\) as prepared"):
        velocity(x[:2], None)


@pytest.mark.parametrize("solver", SOLVERS)
def test_engine_sampling_matches_the_plain_path(tiny_cfg, solver):
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    noise = torch.randn(2, dit.cfg.io_channels, 17, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = sample(cfg(lambda x, t: dit(x, t, *cond), 3.5), noise, solver=solver, nfe=8).x
    velocity = DiTEngine(dit).prepare(cond, evaluation_times(solver, 8))
    got = sample(cfg(velocity, 3.5), noise, solver=solver, nfe=8).x
    assert velocity.calls == len(velocity.times)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_engine_with_csrc_ops_and_non_prefix_rows(tiny_cfg):
    """The step with the csrc/ kernels; attending rows that are not a prefix of the batch (uncond first)."""
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    flipped = DiTConditioning(*(torch.cat((t[2:], t[:2])) for t in cond))  # zero-memory rows first
    x = torch.randn(4, dit.cfg.io_channels, 9)
    for c in (cond, flipped):
        velocity = DiTEngine(dit, ops="cuda").prepare(c, [0.7])
        assert velocity.rows == ([0, 1] if c is cond else [2, 3])
        with torch.no_grad():
            ref = dit(x, torch.full((4,), 0.7), *c)
        assert (velocity(x) - ref).abs().max() <= 2e-5 * ref.abs().max()


@pytest.mark.parametrize("ops", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_with_kernels_and_fused_seams_equals_the_model(tiny_cfg, ops, dtype):
    """The step with our kernels equals the model with the same kernels (in bf16, kernels and torch ops round
    differently): CFG rows in order (the residual + AdaLN seams fused, the uncond rows passing the
    cross-attention), all rows attending (a negative prompt), and attending rows out of order (unfused)."""
    if ops == "triton":
        pytest.importorskip("triton")
    dit = _dit(tiny_cfg, dtype, ops=ops)
    cond, negative = _cond(dit, B=2), _cond(dit, B=2, negative=True)
    flipped = DiTConditioning(*(torch.cat((t[2:], t[:2])) for t in cond))
    x = torch.randn(4, dit.cfg.io_channels, 9, generator=torch.Generator().manual_seed(8)).to(dtype)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    for c, rows in ((cond, [0, 1]), (negative, [0, 1, 2, 3]), (flipped, [2, 3])):
        velocity = DiTEngine(dit).prepare(c, [0.4])
        unfused = DiTEngine(dit, fused_seams=False).prepare(c, [0.4])
        assert velocity.rows == rows
        with torch.no_grad():
            ref = dit(x, torch.full((4,), 0.4), *c).float()
        assert (velocity(x).float() - ref).abs().max() <= tol * ref.abs().max()
        assert (unfused(x).float() - ref).abs().max() <= tol * ref.abs().max()


def test_zero_rows_told_by_the_caller(tiny_cfg):
    """``zero_rows`` skips the rows the caller zeroed without looking (same rows and velocities as finding them);
    rows it leaves out attend, even with a zero memory (exact: their cross-attention is zero); a memory embedding
    that does not map zero to zero makes the engine look at the memory instead of trusting the rows."""
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    x = torch.randn(4, dit.cfg.io_channels, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = dit(x, torch.full((4,), 0.6), *cond)
    found = DiTEngine(dit).prepare(cond, [0.6])
    told = DiTEngine(dit).prepare(cond, [0.6], zero_rows=range(2, 4))
    none_skipped = DiTEngine(dit).prepare(cond, [0.6], zero_rows=[])
    assert found.rows == told.rows == [0, 1] and none_skipped.rows == [0, 1, 2, 3]
    for velocity in (found, told, none_skipped):
        assert (velocity(x) - ref).abs().max() <= 2e-5 * ref.abs().max()

    biased = copy.deepcopy(dit)
    biased.cond_embed[0] = torch.nn.Linear(dit.cfg.cond_dim, dit.cfg.cond_dim)  # zero context -> non-zero memory
    velocity = DiTEngine(biased).prepare(cond, [0.6], zero_rows=range(2, 4))
    assert velocity.rows == [0, 1, 2, 3]
    with torch.no_grad():
        ref = biased(x, torch.full((4,), 0.6), *cond)
    assert (velocity(x) - ref).abs().max() <= 2e-5 * ref.abs().max()

    for bad in ([4], [-1], [1.5], [True]):
        with pytest.raises(ValueError, match=r"zero_rows must be row indices in \[0, 4\), got"):
            DiTEngine(dit).prepare(cond, [0.6], zero_rows=bad)


def test_bad_inputs(tiny_cfg):
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=1)
    with pytest.raises(ValueError, match="solver='dopri5' is adaptive"):
        evaluation_times("dopri5", 8)
    with pytest.raises(ValueError, match="times is empty"):
        DiTEngine(dit).prepare(cond, [])
    with pytest.raises(ValueError, match=r"times must lie in \[0, 1\]"):
        DiTEngine(dit).prepare(cond, [1.5])
    with pytest.raises(ValueError, match="context must have shape"):
        DiTEngine(dit).prepare(DiTConditioning(cond.context[:, :, :3], cond.context_mask, cond.global_cond), [0.5])
    with pytest.raises(TypeError, match="dit must be a DiT"):
        DiTEngine(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ static buffers and CUDA graphs


def _run(engine: DiTEngine, cond, noise, solver="heun", nfe=6):
    velocity = engine.prepare(cond, evaluation_times(solver, nfe))
    return sample(cfg(velocity, 3.5), noise, solver=solver, nfe=nfe).x


def test_static_buffers_give_the_plain_steps(tiny_cfg):
    """cuda_graph="eager" runs the graph path's buffer logic on the CPU: copies in, cached per shape, the
    per-generation inputs rebound when another generation uses the same buffers, the output copied out."""
    dit = _dit(tiny_cfg)
    conds = [_cond(dit, B=2, seed=s) for s in (0, 1)]
    noise = torch.randn(2, dit.cfg.io_channels, 11, generator=torch.Generator().manual_seed(3))
    plain, static = DiTEngine(dit, cuda_graph=False), DiTEngine(dit, cuda_graph="eager")
    for c in conds:  # the second generation reuses the first one's cached step
        ref = _run(plain, c, noise)
        assert (_run(static, c, noise) - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert len(static.graphs) == 1 and not plain.graphs
    # Two generations interleaved on one cached step: each call sees its own prompt K/V.
    x = noise.repeat(2, 1, 1)
    prepared = [static.prepare(c, [0.9, 0.5, 0.1]) for c in conds]
    refs = [plain.prepare(c, [0.9, 0.5, 0.1]) for c in conds]
    for _ in range(3):
        for p, r in zip(prepared, refs, strict=True):
            want = r(x)
            assert (p(x) - want).abs().max() <= 1e-6 * want.abs().max()
    _run(static, conds[0], noise[..., :7])  # another length: another cached step
    assert len(static.graphs) == 2


SOLVES = [  # (solver, nfe, guidance as cfg keywords or None, sample options)
    ("euler", 5, dict(scale=3.5), {}),
    ("heun", 6, dict(scale=3.5, rescale=0.7), dict(schedule="shifted", shift=2.0)),
    ("midpoint", 4, None, dict(t_start=0.6)),
    ("rk4", 8, dict(scale=2.0), dict(schedule="logsnr")),
    ("dpmpp_2m", 6, dict(scale=3.5), {}),
]


@pytest.mark.parametrize(("solver", "nfe", "guidance", "options"), SOLVES)
def test_whole_solve_on_static_buffers_equals_sample(tiny_cfg, solver, nfe, guidance, options):
    """sample_graphed's whole-solve path (the buffers and loop a CUDA graph captures, run eagerly on the CPU):
    the plain solve's result for each generation, one cached solve per shape/solver/guidance, the prepared
    DiT consumed, the callback called per step."""
    dit = _dit(tiny_cfg)
    both = [_cond(dit, B=2, seed=s) for s in (0, 1)]  # 2 conditional rows, then their 2 uncond rows
    conds = both if guidance else [DiTConditioning(*(t[:2] for t in c)) for c in both]
    noise = torch.randn(2, dit.cfg.io_channels, 9, generator=torch.Generator().manual_seed(4))
    plain, static = DiTEngine(dit, cuda_graph=False), DiTEngine(dit, cuda_graph="eager")
    times = evaluation_times(solver, nfe, **options)
    guide = (lambda v: v) if guidance is None else (lambda v: cfg(v, **guidance))
    seen = []
    for c in conds:  # the second generation reuses the first one's buffers with its own inputs
        ref = sample(guide(plain.prepare(c, times)), noise, solver=solver, nfe=nfe, **options)
        seen.clear()
        velocity = static.prepare(c, times)
        got = sample_graphed(guide(velocity), noise, solver=solver, nfe=nfe, callback=lambda i, _: seen.append(i),
                             **options)  # fmt: skip
        assert (got.nfe, got.steps) == (ref.nfe, ref.steps) == (len(times), len(seen))
        assert seen == list(range(ref.steps))
        assert (got.x - ref.x).abs().max() <= 1e-6 * ref.x.abs().max()
        assert velocity.calls == len(times)
        (key,) = static.graphs
        assert key[0] == "solve" and static.graphs[key].times == times


def test_whole_solve_falls_back_or_refuses(tiny_cfg):
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=1)
    noise = torch.randn(1, dit.cfg.io_channels, 7)
    static = DiTEngine(dit, cuda_graph="eager")
    times = evaluation_times("euler", 4)
    ref = sample(cfg(DiTEngine(dit, cuda_graph=False).prepare(cond, times), 3.5, interval=(0.2, 0.8)), noise, nfe=4)
    # A CFG interval selects on t: the run goes step by step (static steps only, no whole-solve graph).
    got = sample_graphed(cfg(static.prepare(cond, times), 3.5, interval=(0.2, 0.8)), noise, nfe=4)
    assert torch.equal(got.x, ref.x)
    assert {key[0] for key in static.graphs} == {"step"}
    step_only = DiTEngine(dit, cuda_graph="step")  # CPU: plain steps, and never a solve
    sample_graphed(cfg(step_only.prepare(cond, times), 3.5), noise, nfe=4)
    assert not step_only.graphs
    with pytest.raises(ValueError, match=r"calls the DiT at t=\[1.0, 0.75, 0.5, 0.25\] but it was prepared for t="):
        sample_graphed(cfg(static.prepare(cond, evaluation_times("heun", 4)), 3.5), noise, nfe=4)
    with pytest.raises(ValueError, match="noise has 2 rows, so the solve evaluates 4, but the DiT was prepared for 2"):
        sample_graphed(cfg(static.prepare(cond, times), 3.5), noise.repeat(2, 1, 1), nfe=4)
    with pytest.raises(ValueError, match="unknown solver 'leapfrog'"):
        sample_graphed(cfg(static.prepare(cond, times), 3.5), noise, solver="leapfrog", nfe=4)


@pytest.mark.parametrize("ops", ["torch", "triton", "cuda"])
def test_step_traces_as_one_graph(tiny_cfg, ops):
    """torch.compile(fullgraph=True) of the step: no graph breaks with any ops (our kernels are opaque custom
    ops), the eager step's result, one trace reused by later calls of the same shape."""
    dit = _dit(tiny_cfg, ops=ops)
    cond = _cond(dit, B=2)
    x = torch.randn(4, dit.cfg.io_channels, 9, generator=torch.Generator().manual_seed(5))
    times = [0.8, 0.3]
    plain = DiTEngine(dit, cuda_graph=False).prepare(cond, times)
    want = [plain(x) for _ in times]
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    velocity = DiTEngine(dit, cuda_graph=False, compile=dict(backend="eager")).prepare(cond, times)
    for ref in want:
        assert (velocity(x) - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert counters["stats"]["unique_graphs"] == 1


def test_step_under_inductor(tiny_cfg):
    """The step compiled by inductor (CPU code here): the eager step's result within fp32 rounding."""
    dit = _dit(tiny_cfg)
    cond = _cond(dit, B=2)
    x = torch.randn(4, dit.cfg.io_channels, 9, generator=torch.Generator().manual_seed(6))
    torch._dynamo.reset()
    ref = DiTEngine(dit, cuda_graph=False).prepare(cond, [0.5])(x)
    got = DiTEngine(dit, compile=True).prepare(cond, [0.5])(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_compile_option_is_checked(tiny_cfg):
    dit = _dit(tiny_cfg)
    with pytest.raises(ValueError, match="compile mode 'reduce-overhead' captures CUDA graphs of its own"):
        DiTEngine(dit, compile=dict(mode="reduce-overhead"))
    DiTEngine(dit, compile=dict(mode="reduce-overhead"), cuda_graph=False)  # its own graphs only: allowed
    with pytest.raises(TypeError, match="compile must be a bool or a dict of torch.compile keywords, got 'yes'"):
        DiTEngine(dit, compile="yes")


def test_graph_cache_keeps_the_last_used_and_warms_up_each_key_once():
    cache = GraphCache(size=2)
    assert cache.first_use("a") and not cache.first_use("a")  # warmed up once, captured at the next use
    cache.keep("a", "graph a")
    assert "a" not in cache.warm and cache.get("a") == "graph a"
    cache.keep("b", "graph b")
    assert cache.get("a") == "graph a"  # now the most recently used
    cache.keep("c", "graph c")
    assert list(cache.graphs) == ["a", "c"] and cache.get("b") is None
    for key in range(5):
        cache.first_use(key)
    assert list(cache.warm) == [3, 4]


def test_the_graphs_of_one_cache_share_its_pool_and_stream(monkeypatch):
    """Every capture of a cache gets that cache's side stream and memory pool (one per device); another cache
    has its own. CUDA is faked: a capture here runs the function and records where it was captured."""
    import contextlib

    from etta_engine import graphs

    captures, handles = [], iter(range(100))

    class FakeGraph:
        def replay(self):
            pass

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None):
        captures.append((pool, stream))
        yield

    fake = dict(
        CUDAGraph=FakeGraph,
        graph=graph,
        Stream=lambda device: ("stream", device),
        graph_pool_handle=lambda: ("pool", next(handles)),
        device=lambda d: contextlib.nullcontext(),
    )
    for name, value in fake.items():
        monkeypatch.setattr(graphs.torch.cuda, name, value)
    a, b = GraphCache(), GraphCache()
    x = torch.ones(2)
    for cache in (a, b):
        for n in (1, 2):  # two shapes, each warmed up already: captured at this use
            cache.first_use(("shape", n))
            assert torch.equal(cache.call(("shape", n), lambda t: 2 * t, (x[:n],), (), cache, capture=True), 2 * x[:n])
    (pool_a, stream_a), (pool_a2, stream_a2), (pool_b, _), (pool_b2, _) = captures
    assert pool_a == pool_a2 != pool_b == pool_b2 and pool_a is not None
    assert stream_a == stream_a2 == a.stream(x.device)


def test_cuda_graph_mode_is_checked(tiny_cfg):
    with pytest.raises(ValueError, match=r"cuda_graph='always' is not one of \(True, 'step', False, 'eager'\)"):
        DiTEngine(_dit(tiny_cfg), cuda_graph="always")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_graph_equals_the_eager_step(tiny_cfg, dtype):
    dit = _dit(tiny_cfg).cuda().to(dtype)
    conds = [DiTConditioning(*(t.cuda() for t in _cond(dit, B=2, seed=s))) for s in (0, 1)]
    noise = torch.randn(2, dit.cfg.io_channels, 23, generator=torch.Generator().manual_seed(3)).cuda().to(dtype)
    plain, graphed = DiTEngine(dit, cuda_graph=False), DiTEngine(dit)
    velocity = plain.prepare(conds[0], [0.5])
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside the step raises
    try:
        velocity(noise.repeat(2, 1, 1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # a captured GEMM may pick another algorithm
    for c in conds:  # capture in the first generation, replay from the first call in the second
        ref = _run(plain, c, noise).float()
        got = _run(graphed, c, noise).float()
        assert (got - ref).abs().max() <= tol * ref.abs().max()
    (step,) = graphed.graphs.values()
    assert step.graph is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m"])
def test_whole_solve_graph_equals_the_plain_solve(tiny_cfg, dtype, solver):
    """One CUDA graph per solve: the first generation warms up (eagerly, on the capture stream), the second
    captures and replays, the third replays with no host sync."""
    dit = _dit(tiny_cfg).cuda().to(dtype)
    conds = [DiTConditioning(*(t.cuda() for t in _cond(dit, B=2, seed=s))) for s in (0, 1, 2)]
    noise = torch.randn(2, dit.cfg.io_channels, 23, generator=torch.Generator().manual_seed(3)).cuda().to(dtype)
    plain, graphed = DiTEngine(dit, cuda_graph=False), DiTEngine(dit)
    times = evaluation_times(solver, 6)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # a captured GEMM may pick another algorithm
    for k, c in enumerate(conds):
        ref = sample(cfg(plain.prepare(c, times), 3.5, rescale=0.5), noise, solver=solver, nfe=6).x.float()
        velocity = cfg(graphed.prepare(c, times), 3.5, rescale=0.5)  # (prepare has its one host sync)
        assert len(graphed.graphs) == min(k, 1)
        torch.cuda.set_sync_debug_mode("error" if k == 2 else "default")
        try:
            got = sample_graphed(velocity, noise, solver=solver, nfe=6).x.float()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert (got - ref).abs().max() <= tol * ref.abs().max()
    (solve,) = graphed.graphs.values()
    assert solve.graph is not None and solve.times == times


@pytest.mark.gpu
def test_compiled_step_inside_the_engines_graphs(tiny_cfg):
    """DiTEngine(compile=True): inductor's step, warmed up then captured in a whole-solve graph, replayed."""
    dit = _dit(tiny_cfg).cuda()
    conds = [DiTConditioning(*(t.cuda() for t in _cond(dit, B=2, seed=s))) for s in (0, 1, 2)]
    noise = torch.randn(2, dit.cfg.io_channels, 23, generator=torch.Generator().manual_seed(3)).cuda()
    plain, compiled = DiTEngine(dit, cuda_graph=False), DiTEngine(dit, ops="torch", compile=True)
    times = evaluation_times("euler", 4)
    torch._dynamo.reset()
    for c in conds:
        ref = sample(cfg(plain.prepare(c, times), 3.5), noise, nfe=4).x
        got = sample_graphed(cfg(compiled.prepare(c, times), 3.5), noise, nfe=4).x
        assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    (solve,) = compiled.graphs.values()
    assert solve.graph is not None


@pytest.mark.gpu
def test_pipeline_with_and_without_cuda_graphs():
    from etta_engine.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny", device="cuda")
    randomize_(pipe.model.dit, std=0.05)
    kw = dict(seconds=1.0, nfe=8, solver="heun", seed=0, progress=False)
    pipe.cuda_graphs = False
    ref = pipe.generate("rain", **kw).waveform
    for mode, kind in ((True, "solve"), ("step", "step")):
        pipe.cuda_graphs = mode
        for _ in range(2):
            got = pipe.generate("rain", **kw).waveform
            assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
        (engine,) = pipe._engines.values()
        assert {key[0] for key in engine.graphs} == {kind}


# ------------------------------------------------------------------ fp16 with overflow guards


def test_guarded_linear_is_exact_scaling():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(24, 40, generator=g) * 0.3).half()
    a = torch.randn(3, 5, 40, generator=g)
    a[0, 1] *= 3e5  # one row far beyond what an fp16 matmul can hold
    bound = w.float().abs().sum(1).amax()
    got = guarded_linear(a, w, bound)
    want = a @ w.float().T
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert not torch.isfinite(torch.nn.functional.linear(a.half(), w)).all()  # the naive fp16 matmul overflows
    ordinary = torch.ones(3, 5, dtype=torch.bool)
    ordinary[0, 1] = False
    assert torch.equal(got[ordinary], torch.nn.functional.linear(a.half(), w).float()[ordinary])  # s = 1: no change
    assert rel_err(got[0, 1], want[0, 1]) <= 2e-3
    assert torch.equal(guarded_linear(torch.zeros(2, 40), w, bound), torch.zeros(2, 24))


def _fp16_pair(tiny_cfg, std=0.2):
    dit = _dit(tiny_cfg).to(torch.float32)
    randomize_(dit, std=std)
    return dit, copy.deepcopy(dit).half()


def test_fp16_guarded_step_is_close_to_fp32(tiny_cfg):
    dit, half = _fp16_pair(tiny_cfg)
    cond = _cond(dit, B=2)
    x = torch.randn(4, dit.cfg.io_channels, 13, generator=torch.Generator().manual_seed(1))
    times = [0.9, 0.4]
    ref, naive, guarded = (DiTEngine(d, fp16_guards=g).prepare(_cast(cond, d.dtype), times)
                           for d, g in ((dit, True), (half, False), (half, True)))  # fmt: skip
    assert guarded.plan.guarded and not naive.plan.guarded
    for _ in times:
        want = ref(x)
        got, plain = guarded(x.half()), naive(x.half())
        assert got.dtype == torch.float16
        # The guards keep fp32 where naive fp16 rounds: at least as accurate (STYLE.md rule 7).
        assert rel_err(got, want) <= 2 * rel_err(plain, want) + 1e-4, (rel_err(got, want), rel_err(plain, want))
        assert rel_err(got, want) <= 5e-3


def test_fp16_guards_keep_an_overflowing_model_finite(tiny_cfg):
    """FFN activations and a residual stream beyond 65504: naive fp16 gives inf/NaN, the guarded step the fp32
    result (to fp16 accuracy)."""
    dit, _ = _fp16_pair(tiny_cfg)
    with torch.no_grad():
        for block in dit.blocks[:1]:
            block.ff.up.weight.mul_(300.0)  # hidden activations ~1e3-1e4, outputs ~1e5-1e7
            block.ff.down.weight.mul_(300.0)
    half = copy.deepcopy(dit).half()
    cond = _cond(dit, B=2)
    x = torch.randn(4, dit.cfg.io_channels, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = dit(x, torch.full((4,), 0.6), *cond)
        naive = half(x.half(), torch.full((4,), 0.6), *_cast(cond, torch.float16))
    assert torch.isfinite(want).all() and not torch.isfinite(naive).all()
    got = DiTEngine(half).prepare(_cast(cond, torch.float16), [0.6])(x.half())
    assert torch.isfinite(got).all()
    assert rel_err(got, want) <= 1e-2


def _cast(cond: DiTConditioning, dtype) -> DiTConditioning:
    return DiTConditioning(cond.context.to(dtype), cond.context_mask, cond.global_cond.to(dtype))
