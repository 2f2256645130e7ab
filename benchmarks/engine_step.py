"""Is the engine's DiT step faster than the plain model's? One velocity evaluation of a CFG batch (one prompt
and the zero-memory uncond row) at a preset's full size: the eager reference ``dit(x, t, *cond)`` against the
prepared engine step (adaLN for the whole schedule, prompt K/V and timestep embeddings hoisted, the uncond
cross-attention skipped), timed alternately in one run so that both see the same machine load.

    python benchmarks/engine_step.py --preset etta --device cpu --dtype fp32 --reps 3
    python benchmarks/engine_step.py --preset etta --device cuda --dtype bf16 --compile   # + torch.compile rows

With ``--compile``, two more variants: ``compile`` (torch.compile of the reference) and ``engine-compile`` (the
engine's step with torch ops compiled by inductor, ``DiTEngine(compile=True)``). ``--ops torch,triton,cuda``
times one engine per implementation of the ops (``engine-<ops>``; one ``--ops``, or none: ``engine``), and
``--unfused`` adds each one's step with the separate residual and AdaLN ops (``...-unfused``: what the fused
seams save). On a CUDA device the engine variants replay their step from a CUDA graph (``cuda_graph`` in the
rows), as the pipeline does.

``--profile TOP`` adds, under the environment's ``profiles``, the TOP kernels (by their own time, per step) of
the reference and of the fastest variant, from torch.profiler: where the step's time goes.

Rows go to benchmarks/results/engine_step-<device>-<date>.json with the environment.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import at_least, environment, synchronize, write_results
from tqdm.auto import tqdm

from etta_engine.config import get_preset
from etta_engine.engine import DiTEngine, evaluation_times
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.dit import DiT
from etta_engine.pipeline import PRECISIONS


def cfg_batch(cfg, frames: int, prompt_tokens: int, device, dtype, padding: str = "max_length"):
    """x (2, C, T), t (2,), and the conditioning of [prompt, official null] (zero memory, same mask); the memory
    holds the text encoder's max_length tokens + 2 or, with ``padding="longest"``, the prompt's + 2."""
    g = torch.Generator().manual_seed(0)
    L = cfg.context_length if padding == "max_length" else prompt_tokens + 2
    context = torch.randn(1, L, cfg.dit.cond_dim, generator=g)
    mask = (torch.arange(L) < prompt_tokens)[None, :]
    global_cond = torch.randn(1, cfg.dit.global_cond_dim, generator=g)
    cond = DiTConditioning(
        torch.cat((context, torch.zeros_like(context))).to(device, dtype),
        torch.cat((mask, mask)).to(device),
        torch.cat((global_cond, global_cond)).to(device, dtype),
    )
    x = torch.randn(2, cfg.dit.io_channels, frames, generator=g).to(device, dtype)
    return x, torch.full((2,), 0.5, device=device), cond


def run(args) -> list[dict]:
    device, dtype = torch.device(args.device), PRECISIONS[args.dtype]
    cfg = get_preset(args.preset)
    with torch.device(device):
        dit = DiT(cfg.dit).eval().to(dtype)
    x, t, cond = cfg_batch(cfg, args.frames, args.prompt_tokens, device, dtype, args.padding)
    times = evaluation_times("euler", args.nfe)

    steps = {"reference": lambda: dit(x, t, *cond)}
    meta: dict[str, dict] = {"reference": {"ops": args.ops[0] or cfg.dit.ops}}
    for ops in args.ops:
        for fused in (True, False) if args.unfused else (True,):
            name = ("engine" if len(args.ops) == 1 else f"engine-{ops}") + ("" if fused else "-unfused")
            synchronize(device)
            start = time.perf_counter()
            velocity = DiTEngine(dit, ops=ops, fused_seams=fused).prepare(cond, times)
            synchronize(device)
            prepare_ms = (time.perf_counter() - start) * 1e3
            steps[name] = lambda v=velocity: v.velocity(x, 0)
            meta[name] = {"ops": ops or cfg.dit.ops, "fused_seams": fused, "prepare_ms": prepare_ms}
    if args.compile:
        compiled = torch.compile(dit)
        steps["compile"] = lambda: compiled(x, t, *cond)
        engine_compiled = DiTEngine(dit, ops="torch", compile=True).prepare(cond, times)
        steps["engine-compile"] = lambda: engine_compiled.velocity(x, 0)
        meta["compile"] = meta["reference"]
        meta["engine-compile"] = {"ops": "torch", "fused_seams": True}
    times_ms: dict[str, list[float]] = {name: [] for name in steps}
    with torch.no_grad():
        for fn in steps.values():  # warm-up (and compilation)
            fn()
        for _ in tqdm(range(args.reps), desc="engine step", unit="rep"):
            for name, fn in steps.items():  # alternate, so that load changes hit every variant alike
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times_ms[name].append((time.perf_counter() - start) * 1e3)
    ref = statistics.median(times_ms["reference"])
    rows = []
    for name, ms in times_ms.items():
        median = statistics.median(ms)
        rows.append(
            {
                "preset": args.preset,
                "variant": name,
                "dtype": args.dtype,
                "ops": meta[name]["ops"],
                "fused_seams": meta[name].get("fused_seams"),
                "cuda_graph": name.startswith("engine") and device.type == "cuda",
                "batch": 2,
                "frames": args.frames,
                "context_length": cond.context.shape[1],
                "padding": args.padding,
                "ms": median,
                "ms_all": ms,
                "speedup_vs_reference": ref / median,
                "prepare_ms": meta[name].get("prepare_ms"),
                "prepare_calls": len(times),
            }
        )
    profiles = {}
    if args.profile:
        fastest = min((r for r in rows if r["variant"] != "reference"), key=lambda r: r["ms"], default=None)
        for name in ["reference"] + ([fastest["variant"]] if fastest else []):
            profiles[name] = profile_step(steps[name], device, args.profile)
    return rows, profiles


def profile_step(fn, device: torch.device, top: int, reps: int = 5) -> list[dict]:
    """The ``top`` kernels (CUDA; on a CPU the operators) of ``reps`` calls of ``fn`` by their own time, under
    torch.profiler: name, launches and microseconds per step, and share of the step's total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        synchronize(device)
    # Kineto's own time per event: on the device for CUDA runs, on the host for CPU ones
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [
        {
            "name": e.key,
            "calls_per_step": e.count / reps,
            "us_per_step": getattr(e, attr) / reps,
            "share": getattr(e, attr) / total,
        }
        for e in events[:top]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="etta")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument(
        "--ops",
        type=lambda s: s.split(","),
        default=[None],
        help="ops implementations of the engine step, comma-separated (default: the DiT's)",
    )
    parser.add_argument("--unfused", action="store_true", help="add each engine's step without the fused seams")
    parser.add_argument("--frames", type=at_least(1), default=215, help="latent frames (215 = 10 s)")
    parser.add_argument("--prompt-tokens", type=at_least(1), default=24, help="valid tokens of the prompt's mask")
    padding_help = "memory length: the text encoder's max_length + 2 (official) or the prompt's + 2"
    parser.add_argument("--padding", choices=["max_length", "longest"], default="max_length", help=padding_help)
    parser.add_argument("--nfe", type=at_least(1), default=8, help="calls prepared for (the hoisted adaLN covers them)")
    parser.add_argument("--reps", type=at_least(1), default=5)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile(dit) row")
    profile_help = "also profile the reference and the fastest variant: their TOP kernels by time"
    parser.add_argument("--profile", type=at_least(0), default=0, metavar="TOP", help=profile_help)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    rows, profiles = run(args)
    env = environment(torch.device(args.device))
    if profiles:
        env["profiles"] = profiles  # {variant: its top kernels}
    path = write_results("engine_step", env, rows, args.out)
    for r in rows:
        print(f"{r['variant']:<22} {r['ms']:10.2f} ms  x{r['speedup_vs_reference']:.3f}")
    for variant, kernels in profiles.items():
        print(f"top kernels of {variant} (per step):")
        for k in kernels:
            print(f"  {k['us_per_step']:10.1f} us {k['share']:6.1%} x{k['calls_per_step']:<5g} {k['name'][:90]}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
