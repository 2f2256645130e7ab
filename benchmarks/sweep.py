"""What does each NFE, solver, guidance setting and backend cost, and what quality does it buy? Text to audio
with a preset's model, every combination timed by stage (text encoder, DiT loop, VAE decode) with its
distance to a high-accuracy solution from the same noise (rk4 at --reference-nfe calls, eager, fp32 maths):
the latent RMSE (relative) and a multi-resolution spectral distance of the decoded audio. The timed rows run
the DiT in ``--dtype``, the VAE decoder in ``--vae-dtype`` and T5 in ``--text-dtype`` (the reference runs all
three in fp32, so the error includes what each precision costs).

Backends: ``eager`` (the model called per step), ``compile`` (``torch.compile`` of the DiT), and the engine
(:mod:`etta_engine.engine`: hoisted adaLN/K-V/timestep work, skipped uncond cross-attention) with the torch,
Triton or csrc/ ops (``engine-torch``, ``engine-triton``, ``engine-cuda``; the last two decode with the VAE's
fused Snake-beta of the same kind) wherever they can run, the engine's step with torch ops compiled by inductor
(``engine-compile``: ``DiTEngine(compile=True)``), and the exported graphs in the torch-free runtime
(:mod:`etta_engine.runtime`): ``onnx`` (ONNX Runtime, CUDA provider when the device is CUDA and onnxruntime has
it) and ``tensorrt`` (engines built from the same export; skipped with a message where TensorRT is not
installed) on the cached graphs (the engine's hoisting, exported), and ``onnx-plain`` and ``tensorrt-plain`` on
the plain per-step DiT graphs. The model is exported once per sweep (fp32, or fp16 for ``--dtype fp16``; bf16
has no ONNX export) to a temporary directory; the runtime rows start from the same noise and are timed by the
same stages; their peak memory is not measured (None: ONNX Runtime's arena is not torch's).

Each engine backend keeps one engine for the whole sweep, as a serving process would: every cell's untimed
warm-up generation captures its CUDA graphs (``--cuda-graph solve``: one graph per whole solve, the default;
``step``: one per step; ``off``: none) and the timed generation replays them; the per-generation ``prepare``
is timed.

    python benchmarks/sweep.py --model etta --device cuda --dtype bf16             # the full grid
    python benchmarks/sweep.py --smoke                                             # CPU, tiny, a few cells
    python benchmarks/plot_sweep.py benchmarks/results/sweep-<device>-<date>.json  # latency vs NFE, Pareto

Rows go to benchmarks/results/sweep-<device>-<date>.json with the environment.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    at_least,
    at_least_list,
    benchmark_model,
    environment,
    ort_without_cuda,
    positive,
    synchronize,
    write_results,
)
from tqdm.auto import tqdm

from etta_engine.engine import DiTEngine, evaluation_times, sample_graphed
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.model import ETTAModel
from etta_engine.ops._csrc import csrc_unusable
from etta_engine.ops._dispatch import triton_unusable
from etta_engine.pipeline import PRECISIONS, TEXT_PRECISIONS
from etta_engine.sampling import SOLVERS as KNOWN_SOLVERS
from etta_engine.sampling import cfg, steps_for
from etta_engine.train.losses import MultiResolutionSTFTLoss

NFES = (1, 2, 4, 8, 16, 32, 50, 100)
SOLVERS = ("euler", "heun", "midpoint", "dpmpp_2m")
BACKENDS = ("eager", "compile", "engine-torch", "engine-triton", "engine-cuda", "engine-compile", "onnx", "onnx-plain",
            "tensorrt", "tensorrt-plain")  # fmt: skip
# sweep name -> RuntimePipeline (backend, cached): "-plain" runs the plain dit/dit_cfg graphs, the others the
# cached ones (dit_prepare once per generation, then dit_cached/dit_cfg_cached per call)
RUNTIME_BACKENDS = {
    "onnx": ("onnxruntime", True),
    "onnx-plain": ("onnxruntime", False),
    "tensorrt": ("tensorrt", True),
    "tensorrt-plain": ("tensorrt", False),
}
VAE_OPS = {"engine-triton": "triton", "engine-cuda": "cuda"}  # the VAE decoder's Snake-beta ops per backend
EXPORT_DTYPES = {"fp32": "fp32", "fp16": "fp16"}  # sweep dtype -> ONNX export dtype


def backend_unusable(name: str, device: torch.device, dtype: str = "fp32") -> str | None:
    """Why ``name`` cannot run on ``device`` in ``dtype``, or None if it can."""
    if name == "engine-triton":
        return triton_unusable(device)
    if name == "engine-cuda":
        return csrc_unusable(device)
    if name in RUNTIME_BACKENDS and dtype not in EXPORT_DTYPES:
        return f"the ONNX export has no {dtype} (choices: {sorted(EXPORT_DTYPES)})"
    if name.startswith("onnx"):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install 'etta_engine[runtime]')"
        return ort_without_cuda(device)
    if name.startswith("tensorrt"):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt is not installed (pip install 'etta_engine[tensorrt]', NVIDIA GPUs only)"
        if device.type != "cuda":
            return f"TensorRT engines run on CUDA devices, not {device.type}"
    return None


def runtime_pipelines(model: ETTAModel, backends: list[str], dtype: str, device: torch.device, folder: Path):
    """{sweep backend: RuntimePipeline} on one export of ``model`` (and TensorRT engines built from it)."""
    from etta_engine.export import export_onnx
    from etta_engine.runtime import RuntimePipeline

    export_onnx(model, folder / "onnx", dtype=EXPORT_DTYPES[dtype], progress=False)
    if any(b.startswith("tensorrt") for b in backends):
        from etta_engine.export.tensorrt import build_engines

        build_engines(folder / "onnx", folder / "tensorrt", progress=False)
    pipelines = {}
    for name in backends:
        runtime, cached = RUNTIME_BACKENDS[name]
        if runtime == "onnxruntime":
            providers = None if device.type == "cuda" else ["CPUExecutionProvider"]
            pipelines[name] = RuntimePipeline(folder / "onnx", backend=runtime, providers=providers, cached=cached)
        else:
            pipelines[name] = RuntimePipeline(folder / "tensorrt", backend=runtime, cached=cached)
    return pipelines


CUDA_GRAPH_MODES = {"solve": True, "step": "step", "off": False}  # --cuda-graph -> DiTEngine's cuda_graph


def make_engine(backend: str, dit, cuda_graph: bool | str) -> DiTEngine:
    """The sweep's engine of ``backend``: engine-<ops>, or engine-compile (torch ops, so that inductor sees
    every op of the step)."""
    if backend == "engine-compile":
        return DiTEngine(dit, ops="torch", cuda_graph=cuda_graph, compile=True)
    return DiTEngine(dit, ops=backend.removeprefix("engine-"), cuda_graph=cuda_graph)


def velocity_fn(backend: str, model: ETTAModel, both: DiTConditioning, times: list[float], compiled, engines):
    """The batched velocity of one generation for ``backend`` (a fresh prepare per run: its cost is counted;
    ``engines``: the sweep's engine of each engine backend, which keeps its CUDA graphs)."""
    if backend == "eager":
        return lambda x, t: model.dit(x, t, *both)
    if backend == "compile":
        return lambda x, t: compiled(x, t, *both)
    return engines[backend].prepare(both, times)


def timed(device: torch.device, fn):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, (time.perf_counter() - start) * 1e3


def run(args, on_update=None) -> tuple[list[dict], list[dict]]:
    """The sweep's rows and failures; ``on_update(rows, failures)`` is called after every cell."""
    device = torch.device(args.device)
    backends = []
    for backend in args.backends:
        reason = backend_unusable(backend, device, args.dtype)
        if reason is None:
            backends.append(backend)
        else:
            print(f"skipping backend {backend!r}: {reason}", file=sys.stderr)
    model, text_info = benchmark_model(args.model, args.text_encoder)
    model.eval()
    args.text_encoder_info = text_info
    if not model.dit.final.linear.weight.any():
        # An untrained preset's velocity is exactly zero (adaLN-Zero): give it weights so the solvers differ.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            for p in model.dit.parameters():
                p.normal_(0, 0.02)
    with tempfile.TemporaryDirectory(prefix="sweep-export-") as folder:
        runtime = [b for b in backends if b in RUNTIME_BACKENDS]
        # Exported from the CPU model in fp32, before the move and the cast (the export casts by itself).
        pipelines = runtime_pipelines(model, runtime, args.dtype, device, Path(folder)) if runtime else {}
        return sweep(args, model.to(device), backends, pipelines, on_update)


def sweep(args, model: ETTAModel, backends: list[str], pipelines: dict, on_update=None):
    """The rows of every cell of ``backends`` x solvers x NFE x CFG (``pipelines``: the runtime backends'), and
    the failures: a backend that raises is reported (its first error) and skipped for the rest of the sweep,
    so that it does not cost the other backends' rows. Each cell is one untimed warm-up generation, then
    ``args.reps`` times a staged generation and a queued one: the row's stage times are the staged ones'
    medians, its ``e2e_ms`` the queued ones' (what a caller of ``Pipeline.generate`` waits)."""
    device = torch.device(args.device)
    mcfg = model.cfg
    frames = max(1, round(args.seconds * mcfg.latent_rate))
    prompts = ["a dog barks twice, then rain on a tin roof"]
    noise = torch.randn(1, mcfg.dit.io_channels, frames, generator=torch.Generator().manual_seed(0)).to(device)
    mrstft = MultiResolutionSTFTLoss().to(device)
    graphs = CUDA_GRAPH_MODES[args.cuda_graph]
    compiled, engines = None, {}  # made once the model has its precision

    def generate(backend: str, solver: str, nfe: int, scale: float, staged: bool = True):
        """(latents, decoded audio, times in ms) of one generation, in the precision the model has now. Staged:
        each stage timed on its own, the device synchronised between them ({"text_ms", "dit_ms", "vae_ms"});
        else the stages queued back to back as ``Pipeline.generate`` runs them, one wait at the end, timed as
        one ({"e2e_ms"}: on a GPU the host's launches of a stage overlap the device's work on the one before)."""
        if backend in pipelines:
            return generate_runtime(pipelines[backend], solver, nfe, scale)
        dtype = model.dit.dtype
        model.vae.set_ops(VAE_OPS.get(backend, "auto"))  # the engine's kernels decode too
        # The engine backends run the text encoder and the VAE decoder as the Pipeline does: replayed from CUDA
        # graphs on a GPU.
        graphed = backend.startswith("engine")
        encode = dict(padding=args.padding, cuda_graph=graphed)
        guided = scale != 1.0
        x0 = noise.to(dtype)

        def text() -> DiTConditioning:
            cond = model.condition(prompts, 0.0, args.seconds, **encode)
            return DiTConditioning(cond.context.to(dtype), cond.context_mask, cond.global_cond.to(dtype))

        def loop(cond: DiTConditioning) -> torch.Tensor:
            null = DiTConditioning(torch.zeros_like(cond.context), cond.context_mask, cond.global_cond)
            both = DiTConditioning(*(torch.cat(p) for p in zip(cond, null, strict=True))) if guided else cond
            times = evaluation_times(solver, nfe) if backend.startswith("engine") else []
            fn = velocity_fn(backend, model, both, times, compiled, engines)
            return sample_graphed(cfg(fn, scale) if guided else fn, x0, solver=solver, nfe=nfe).x

        def decode(x: torch.Tensor) -> torch.Tensor:
            return model.vae.decode(x.to(model.vae.dtype), cuda_graph=graphed).float()

        def queued() -> tuple[torch.Tensor, torch.Tensor]:
            x = loop(text())
            return x, decode(x)

        if not staged:
            (x, audio), e2e_ms = timed(device, queued)
            return x.float(), audio, {"e2e_ms": e2e_ms}
        cond, text_ms = timed(device, text)
        x, dit_ms = timed(device, lambda: loop(cond))
        audio, vae_ms = timed(device, lambda: decode(x))
        return x.float(), audio, {"text_ms": text_ms, "dit_ms": dit_ms, "vae_ms": vae_ms}

    runtime_noise = noise.float().cpu().numpy()

    def generate_runtime(pipe, solver: str, nfe: int, scale: float):
        """The same generation with the exported graphs (NumPy in and out; the same noise and stages)."""
        cpu = torch.device("cpu")
        cond, text_ms = timed(cpu, lambda: pipe.encode(prompts, seconds_total=args.seconds, padding=args.padding))
        x, dit_ms = timed(cpu, lambda: pipe.sample(cond, None, runtime_noise, nfe=nfe, solver=solver, cfg_scale=scale))
        audio, vae_ms = timed(cpu, lambda: pipe.decode(x, chunk_frames=None))
        stages = {"text_ms": text_ms, "dit_ms": dit_ms, "vae_ms": vae_ms}
        return torch.from_numpy(x).to(device), torch.from_numpy(audio).to(device), stages

    rows, failures = [], []
    # Backends vary fastest: each setting is timed on every backend back to back, so that a drift of the
    # machine's speed over the sweep does not end up in the ratios between backends.
    cells = [
        (b, s, n, w)
        for s, n, w, b in itertools.product(args.solvers, args.nfes, args.cfg_scales, backends)
        if _fits(s, n)
    ]
    references = {}
    with torch.no_grad():
        for scale in args.cfg_scales:  # the high-accuracy solution of each guidance setting, all in fp32
            references[scale] = generate("eager", "rk4", args.reference_nfe, scale)[:2]
        model.dit.to(PRECISIONS[args.dtype])
        model.vae.to(PRECISIONS[args.vae_dtype])
        model.text_encoder.to(PRECISIONS[args.text_dtype])
        compiled = torch.compile(model.dit) if "compile" in backends else None
        engines = {b: make_engine(b, model.dit, graphs) for b in backends if b.startswith("engine-")}
        for backend, solver, nfe, scale in tqdm(cells, desc="sweep", unit="cell"):
            if any(f["backend"] == backend for f in failures):
                continue
            try:
                generate(backend, solver, nfe, scale)  # warm-up (compilation, allocator, CUDA graph capture)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                timings, e2e_all = [], []
                for _ in range(args.reps):
                    x, audio, stages = generate(backend, solver, nfe, scale)
                    timings.append(stages)
                    # the runtime backends wait for each stage's result on the host: their e2e is the stages' sum
                    queued = stages if backend in pipelines else generate(backend, solver, nfe, scale, staged=False)[2]
                    e2e_all.append(sum(queued.values()))
            except Exception as e:  # reported, and the script exits non-zero
                cell = {"backend": backend, "solver": solver, "nfe": nfe, "cfg_scale": scale}
                failures.append(cell | {"error": repr(e)})
                print(f"backend {backend!r} failed at {solver} nfe={nfe} cfg={scale}: {e!r}", file=sys.stderr)
                if on_update is not None:
                    on_update(rows, failures)
                continue
            x_ref, audio_ref = references[scale]
            graphed_here = backend.startswith("engine") and device.type == "cuda"  # T5 and the VAE decoder
            stages = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
            e2e = statistics.median(e2e_all)
            peak = None  # CPU: not measured; the runtime backends allocate outside torch
            if device.type == "cuda" and backend not in pipelines:
                peak = torch.cuda.max_memory_allocated(device) / 2**30
            rmse = (x - x_ref).pow(2).mean().sqrt() / x_ref.pow(2).mean().sqrt().clamp_min(1e-12)
            spectral = mrstft(audio.flatten(0, 1)[:, None], audio_ref.flatten(0, 1)[:, None])
            rows.append(
                {
                    "model": args.model,
                    "backend": backend,
                    "solver": solver,
                    "nfe": nfe,
                    "cfg_scale": scale,
                    "dtype": args.dtype,
                    "vae_dtype": None if backend in pipelines else args.vae_dtype,  # runtime: the export's
                    "text_dtype": None if backend in pipelines else args.text_dtype,
                    "text_cuda_graph": graphed_here,
                    "vae_cuda_graph": graphed_here,
                    "padding": args.padding,
                    "cuda_graph": args.cuda_graph if backend in engines and device.type == "cuda" else None,
                    "runtime": _runtime_info(pipelines.get(backend)),
                    "seconds": args.seconds,
                    **stages,
                    "stages_sum_ms": sum(stages.values()),
                    "e2e_ms": e2e,  # the stages queued back to back (one wait), as Pipeline.generate runs them
                    "e2e_ms_all": e2e_all,
                    "reps": args.reps,
                    "rtf": e2e / 1e3 / args.seconds,
                    "peak_memory_gib": peak,
                    "latent_rel_rmse": float(rmse),
                    "spectral_distance": float(spectral),
                    "reference": f"rk4 nfe={args.reference_nfe}",
                }
            )
            if on_update is not None:
                on_update(rows, failures)
    return rows, failures


def _runtime_info(pipe) -> dict | None:
    """How a runtime row ran: the export's dtype, the DiT graphs (cached or plain) and, for ONNX Runtime, its
    execution providers."""
    if pipe is None:
        return None
    dit = "dit_prepare" if pipe.cached else "dit"
    info = {"backend": pipe.backend, "export_dtype": pipe.manifest.graphs[dit].dtype, "cached": pipe.cached}
    if pipe.backend == "onnxruntime":
        info["providers"] = pipe.graph(dit).providers
    return info


def _fits(solver: str, nfe: int) -> bool:
    try:
        steps_for(solver, nfe)
    except ValueError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="preset name (random weights) or checkpoint path")
    parser.add_argument("--text-encoder", default=None, help="local T5 directory (default: the model's own, or for "
                        "a preset without it here a random encoder of its size)")  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp32", help="the DiT's precision")
    parser.add_argument("--vae-dtype", choices=sorted(PRECISIONS), default="fp32", help="the VAE decoder's (official)")
    parser.add_argument("--text-dtype", choices=TEXT_PRECISIONS, default="fp32", help="the T5 encoder's")
    parser.add_argument("--seconds", type=positive, default=10.0)
    parser.add_argument("--nfes", type=at_least_list(1), default=list(NFES))
    parser.add_argument("--solvers", type=lambda s: s.split(","), default=list(SOLVERS))
    parser.add_argument("--cfg-scales", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 3.5])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS))
    parser.add_argument("--reference-nfe", type=at_least(1), default=400)
    parser.add_argument("--reps", type=at_least(1), default=1, help="timed generations per cell (their median)")
    graphs_help = "the engine backends' CUDA graphs (CUDA devices): one per whole solve, one per step, or none"
    parser.add_argument("--cuda-graph", choices=list(CUDA_GRAPH_MODES), default="solve", help=graphs_help)
    parser.add_argument("--padding", choices=["max_length", "longest"], default="max_length",
                        help="prompt padding: to the text encoder's length (official) or to the prompt's")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="CPU check of the script: tiny, 1 s, a few cells")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.device, args.seconds, args.reference_nfe = "tiny", "cpu", 1.0, 16
        args.nfes, args.solvers = [2, 4], ["euler", "heun"]
        args.backends = ["eager", "engine-torch", "engine-cuda", "engine-compile", "onnx", "onnx-plain", "tensorrt"]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choices: {list(BACKENDS)}")
    unknown = sorted(set(args.solvers) - set(KNOWN_SOLVERS))
    if unknown:
        parser.error(f"unknown solvers {unknown}; choices: {sorted(KNOWN_SOLVERS)}")
    if not any(_fits(s, n) for s in args.solvers for n in args.nfes):
        parser.error(f"no cell to run: none of --solvers {args.solvers} takes a step within --nfes {args.nfes}")
    try:  # checked before the model is built: the reference is the first thing the sweep computes
        steps_for("rk4", args.reference_nfe)
    except ValueError as e:
        parser.error(f"--reference-nfe {args.reference_nfe}: {e} (the reference is an rk4 solve)")
    env = environment(torch.device(args.device))
    for name in ("onnxruntime", "tensorrt"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None

    def save(rows: list[dict], failures: list[dict], complete: bool = False) -> Path:
        """The file as it stands: rewritten after every cell, so that a run cut short keeps its rows."""
        env["failures"] = failures
        env["text_encoder"] = getattr(args, "text_encoder_info", None)
        env["complete"] = complete
        return write_results("sweep", env, rows, args.out)

    rows, failures = run(args, on_update=save)
    path = save(rows, failures, complete=True)
    for r in rows:
        print(
            f"{r['backend']:<14} {r['solver']:<9} nfe={r['nfe']:<4} cfg={r['cfg_scale']:<4} "
            f"{r['e2e_ms']:9.1f} ms (dit {r['dit_ms']:.1f})  rmse {r['latent_rel_rmse']:.3g}"
        )
    print(f"-> {path}")
    if failures:
        raise SystemExit(f"backends {[f['backend'] for f in failures]} failed (errors in the file's environment)")


if __name__ == "__main__":
    main()
