"""How fast is generation on the exported graphs? Per-stage latency of the torch-free runtime (ONNX Runtime, and
TensorRT where it is installed and engines are given) next to the torch Pipeline in the same run: the
conditioner, one DiT step (plain and CFG-batched), the sampling loop at NFE n, the VAE decode and the whole
generation, with its real-time factor (RTF = generation seconds / audio seconds; below 1 is faster than real time).
Each runtime backend runs twice: on the cached DiT graphs (``dit_prepare`` once per generation, a stage of its
own, then ``dit_cached``/``dit_cfg_cached`` per call: the engine's hoisting, exported) and, as ``<backend>-plain``,
on the plain ``dit``/``dit_cfg`` graphs.

    python benchmarks/onnx_runtime.py --preset etta --seconds 10 --nfe 100 --onnx exported/ [--engines trt/]
    python benchmarks/onnx_runtime.py --smoke            # tiny preset, 1 s, NFE 2, CPU: checks the script runs

Without ``--onnx`` the preset's model (random weights, seed 0: timings do not depend on the values) is exported
first. TensorRT rows are written only when TensorRT is installed and ``--engines`` names a build of
``etta export tensorrt``; nothing is estimated. Rows go to benchmarks/results/onnx_runtime-<device>-<date>.json;
``runtime_rows`` and ``torch_rows`` are the pieces an engine-wide sweep reuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import (
    at_least,
    benchmark_model,
    environment,
    ort_without_cuda,
    positive,
    pyplot,
    save_figure,
    synchronize,
    write_results,
)

STAGES = ("conditioner", "dit_prepare", "dit_step", "dit_cfg_step", "sampling_loop", "vae_decode", "total")
# What the torch rows time: the stages run the eager modules; "total" is Pipeline.generate, with whatever
# fast path the pipeline takes (etta_engine.engine when it applies).
_TORCH_PATHS = dict.fromkeys(STAGES[:-1], "eager") | {"total": "Pipeline.generate"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One generation shape: what every stage of every backend is timed on."""

    preset: str
    seconds: float
    nfe: int
    solver: str = "euler"
    cfg_scale: float = 3.5
    batch: int = 1
    reps: int = 3
    warmup: int = 1


def timed(fn: Callable[[], object], reps: int, warmup: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Wall-clock seconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _row(backend: str, stage: str, s: Setting, frames: int, times: list[float], **extra) -> dict:
    row = {
        "backend": backend,
        "stage": stage,
        **dataclasses.asdict(s),
        "frames": frames,
        "ms_median": 1000 * float(np.median(times)),
        "ms_min": 1000 * min(times),
        **extra,
    }
    if stage == "total":
        row["rtf"] = float(np.median(times)) / s.seconds
    return row


def runtime_rows(pipe, s: Setting, backend: str) -> list[dict]:
    """Rows of a :class:`etta_engine.runtime.RuntimePipeline` (backend "onnxruntime" or "tensorrt"), on the
    cached DiT graphs where it uses them (``dit_graphs`` in each row says which)."""
    from etta_engine.runtime.sampling import evaluation_times

    prompts = ["rain on a tin roof, distant thunder"] * s.batch
    frames = pipe.latent_frames(s.seconds)
    noise = pipe.noise(range(s.batch), frames)
    cond = pipe.encode(prompts, seconds_total=s.seconds)
    latents = pipe.sample(cond, None, noise, nfe=s.nfe, solver=s.solver, cfg_scale=s.cfg_scale)
    stages = {"conditioner": lambda: pipe.encode(prompts, seconds_total=s.seconds)}
    cached = pipe.uses_cached(guide=True, plain=True)
    # A step as the sampling loop runs it: the graph with the generation's conditioning (or tables) bound.
    if cached:
        times = evaluation_times(s.solver, s.nfe)
        # As the pipeline runs it: the tables left where dit_prepare ran (ONNX Runtime), bound as they are.
        prepare = pipe.graph("dit_prepare").run_resident
        modulation, final, kv = prepare(times=times, context=cond.context, global_cond=cond.global_cond)
        tables = dict(modulation=modulation, final_modulation=final, kv=kv, context_mask=cond.context_mask)
        scale, rescale = np.full(s.batch, s.cfg_scale, np.float32), np.zeros(s.batch, np.float32)
        plain = pipe.graph("dit_cached").bind(**tables)
        guided = pipe.graph("dit_cfg_cached").bind(**tables, cfg_scale=scale, cfg_rescale=rescale)
        step = np.zeros(1, dtype=np.int64)
        stages |= {
            "dit_prepare": lambda: prepare(times=times, context=cond.context, global_cond=cond.global_cond),
            "dit_step": lambda: plain(x=noise, step=step),
            "dit_cfg_step": lambda: guided(x=noise, step=step),
        }
    else:
        t = np.full(s.batch, 0.5, dtype=np.float32)
        plain = pipe.velocity_fn(cond, None, cfg_scale=1.0)
        guided = pipe.velocity_fn(cond, None, cfg_scale=s.cfg_scale)
        stages |= {"dit_step": lambda: plain(noise, t), "dit_cfg_step": lambda: guided(noise, t)}
    stages |= {
        "sampling_loop": lambda: pipe.sample(cond, None, noise, nfe=s.nfe, solver=s.solver, cfg_scale=s.cfg_scale),
        "vae_decode": lambda: pipe.decode(latents),
        "total": lambda: pipe.generate(
            prompts, seconds=s.seconds, nfe=s.nfe, solver=s.solver, cfg_scale=s.cfg_scale, noise=noise, progress=False
        ),
    }
    dit = "dit_prepare" if cached else "dit"
    extra = {"dtype": pipe.manifest.graphs[dit].dtype, "dit_graphs": "cached" if cached else "plain"}
    if backend.startswith("onnxruntime"):
        extra["providers"] = pipe.graph(dit).providers
    return [_row(backend, name, s, frames, timed(fn, s.reps, s.warmup), **extra) for name, fn in stages.items()]


def with_depth(model, depth: int):
    """``model`` with its DiT cut to the first ``depth`` blocks (a model of that config, same other weights)."""
    from etta_engine.models.model import ETTAModel

    if not 1 <= depth <= model.cfg.dit.depth:
        raise SystemExit(f"--depth {depth} is outside [1, {model.cfg.dit.depth}]")
    cfg = dataclasses.replace(model.cfg, dit=dataclasses.replace(model.cfg.dit, depth=depth))
    cut = ETTAModel(cfg, text_encoder=model.text_encoder)
    own = cut.state_dict()
    cut.load_state_dict({k: v for k, v in model.state_dict().items() if k in own})
    return cut


def runtime_variants(directory: Path, s: Setting, backend: str, **options) -> list[dict]:
    """The rows of ``backend`` on the cached DiT graphs (where the export has them) and on the plain ones."""
    from etta_engine.runtime import RuntimePipeline, read_manifest
    from etta_engine.runtime.manifest import CACHED_GRAPHS

    rows = []
    if set(CACHED_GRAPHS) <= set(read_manifest(directory).graphs):
        rows += runtime_rows(RuntimePipeline(directory, backend=backend, cached=True, **options), s, backend)
    else:
        print(f"{directory} has no cached DiT graphs (an older export): plain graphs only")
    plain = RuntimePipeline(directory, backend=backend, cached=False, **options)
    return rows + runtime_rows(plain, s, f"{backend}-plain")


@torch.inference_mode()
def torch_rows(model, s: Setting, device: torch.device) -> list[dict]:
    """Rows of torch on ``device`` in the model's dtype: the eager modules per stage, and the whole
    :class:`etta_engine.pipeline.Pipeline` for "total" (``torch_path`` in each row says which)."""
    from etta_engine import sampling
    from etta_engine.models.conditioning import DiTConditioning
    from etta_engine.pipeline import Pipeline

    pipe = Pipeline(model, device=device)
    prompts = ["rain on a tin roof, distant thunder"] * s.batch
    frames = pipe.latent_frames(s.seconds)
    dit, vae = pipe.model.dit, pipe.model.vae
    noise = torch.randn(s.batch, model.cfg.dit.io_channels, frames, device=device, dtype=dit.dtype)
    cond = pipe.model.condition(prompts, 0.0, s.seconds)
    cond = DiTConditioning(cond.context.to(dit.dtype), cond.context_mask, cond.global_cond.to(dit.dtype))
    both = DiTConditioning(
        torch.cat((cond.context, torch.zeros_like(cond.context))),
        torch.cat((cond.context_mask, cond.context_mask)),
        torch.cat((cond.global_cond, cond.global_cond)),
    )
    t = torch.full((s.batch,), 0.5, device=device)
    guided = sampling.cfg(lambda x, t: dit(x, t, *both), s.cfg_scale)
    latents = sampling.sample(guided, noise, solver=s.solver, nfe=s.nfe).x
    stages = {
        "conditioner": lambda: pipe.model.condition(prompts, 0.0, s.seconds),
        "dit_step": lambda: dit(noise, t, *cond),
        "dit_cfg_step": lambda: guided(noise, t),
        "sampling_loop": lambda: sampling.sample(guided, noise, solver=s.solver, nfe=s.nfe),
        "vae_decode": lambda: vae.decode(latents.to(vae.dtype), chunk_frames=512),
        "total": lambda: pipe.generate(
            prompts, seconds=s.seconds, nfe=s.nfe, solver=s.solver, cfg_scale=s.cfg_scale, progress=False
        ),
    }
    sync = lambda: synchronize(device)
    extra = {"dtype": str(dit.dtype).removeprefix("torch."), "device_type": device.type}
    return [
        _row("torch", name, s, frames, timed(fn, s.reps, s.warmup, sync), torch_path=_TORCH_PATHS[name], **extra)
        for name, fn in stages.items()
    ]


def plot(path: Path) -> Path:
    """Median milliseconds of each stage, one bar per backend (cached graphs, plain graphs, torch), log scale."""
    import json

    plt = pyplot()
    data = json.loads(path.read_text())
    rows = data["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    stages = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        ms = {r["stage"]: r["ms_median"] for r in rows if r["backend"] == backend}
        xs = [k + (i - (len(backends) - 1) / 2) * width for k, s in enumerate(stages) if s in ms]
        ax.bar(xs, [ms[s] for s in stages if s in ms], width, label=backend)
    ax.set_xticks(range(len(stages)), stages, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median ms")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8)
    s = rows[0]
    title = (f"{s['preset']} (DiT depth {data['environment'].get('dit_depth')}), {s['seconds']:g} s, NFE {s['nfe']} "
             f"{s['solver']}, CFG {s['cfg_scale']:g} - {data['environment']['device']}")  # fmt: skip
    return save_figure(fig, path, title)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="etta")
    parser.add_argument("--text-encoder", default=None, help="local T5 directory (default: a random stand-in)")
    parser.add_argument("--depth", type=int, default=None, help="the preset with this many DiT blocks (per-block "
                        "costs where all of them do not fit in memory; rows record it)")  # fmt: skip
    parser.add_argument("--onnx", type=Path, default=None, help="an `etta export onnx` directory of the preset")
    parser.add_argument("--engines", type=Path, default=None, help="an `etta export tensorrt` directory")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="dtype of the export made here")
    parser.add_argument("--seconds", type=positive, default=10.0)
    parser.add_argument("--nfe", type=at_least(1), default=100)
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--cfg-scale", type=float, default=3.5)
    parser.add_argument("--batch", type=at_least(1), default=1)
    parser.add_argument("--reps", type=at_least(1), default=3)
    parser.add_argument("--warmup", type=at_least(0), default=1)
    parser.add_argument("--backends", default="onnxruntime,torch,tensorrt", help="comma-separated")
    parser.add_argument("--threads", type=at_least(1), default=None, help="intra-op threads of ONNX Runtime and torch")
    parser.add_argument("--device", default=None, help="device of the torch rows (default: cuda when available)")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 1 s, NFE 2, one rep, CPU")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.seconds, args.nfe, args.reps, args.warmup, args.device = "tiny", 1.0, 2, 1, 0, "cpu"
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - {"onnxruntime", "torch", "tensorrt"})
    if unknown:
        raise SystemExit(f"unknown backends {unknown}; choices: onnxruntime, torch, tensorrt")
    setting = Setting(args.preset, args.seconds, args.nfe, args.solver, args.cfg_scale, args.batch, args.reps,
                      args.warmup)  # fmt: skip
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from etta_engine.runtime import read_manifest

    model, text_info = benchmark_model(args.preset, args.text_encoder)
    if args.depth is not None:
        model = with_depth(model, args.depth)
    model.eval()
    reason = ort_without_cuda(device) if "onnxruntime" in backends else None
    if reason is not None:
        print(f"{reason}: no ONNX Runtime rows next to torch on {device}")
        backends.remove("onnxruntime")
        if not backends:
            raise SystemExit("no backend left to time (add torch or tensorrt to --backends)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = args.onnx
        if onnx_dir is None and {"onnxruntime", "tensorrt"} & set(backends):
            from etta_engine.export import export_onnx

            onnx_dir = Path(tmp) / "onnx"
            export_onnx(model, onnx_dir, dtype=args.dtype, progress=not args.smoke)
        if onnx_dir is not None and read_manifest(onnx_dir).config.name != args.preset:
            raise SystemExit(f"{onnx_dir} holds model {read_manifest(onnx_dir).config.name!r}, not {args.preset!r}")
        if "onnxruntime" in backends:
            rows += runtime_variants(onnx_dir, setting, "onnxruntime", threads=args.threads)
        if "tensorrt" in backends:
            try:
                import tensorrt
            except ImportError:
                print("tensorrt is not installed: no TensorRT rows")
            else:
                if args.engines is None:
                    print("no --engines directory: no TensorRT rows")
                else:
                    rows += runtime_variants(args.engines, setting, "tensorrt")
        if "torch" in backends:
            rows += torch_rows(model, setting, device)

    env = environment(device)
    import onnxruntime

    env["onnxruntime"] = onnxruntime.__version__
    env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    env["threads"] = args.threads  # None: each library's default (all cores)
    env["text_encoder"] = text_info
    env["dit_depth"] = model.cfg.dit.depth
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    path = write_results("onnx_runtime", env, rows, args.out)
    for r in rows:
        rtf = f"  RTF {r['rtf']:.3f}" if "rtf" in r else ""
        print(f"{r['backend']:>12} {r['stage']:<14} {r['ms_median']:10.2f} ms{rtf}")
    print(f"-> {path} and {plot(path).name}")
    return path


if __name__ == "__main__":
    main()
