"""How does quality change with NFE, solver and guidance? Prompt adherence of the demo model (the analyzer's
attribute accuracy on a fixed, seeded prompt set) for every NFE x solver x CFG scale, with wall time.

    python benchmarks/demo_quality.py                                   # the full grid (CPU: ~30 min)
    python benchmarks/demo_quality.py --prompts 16 --nfe 2 8 --solvers euler --cfg 3.5

Rows go to benchmarks/results/demo_quality-<device>-<date>.json with the environment; the plot (accuracy
against NFE, one line per solver, one panel per CFG scale) is written next to it as .png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import at_least, environment, pyplot, save_figure, write_results
from tqdm.auto import tqdm

from etta_engine.checkpoint import model_reference
from etta_engine.demo.evaluate import EVALUATION_SEED, adherence, evaluation_prompts, reconstruction_adherence
from etta_engine.pipeline import Pipeline
from etta_engine.sampling import SOLVERS, steps_for


def run(args, save) -> list[dict]:
    """The rows of the grid; ``save(rows)`` is called after each one (a long run keeps what it measured)."""
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    prompts = evaluation_prompts(args.prompts, args.prompt_seed)
    grid = []
    for solver in args.solvers:
        for nfe in args.nfe:
            try:
                steps_for(solver, nfe)
            except ValueError:
                continue  # e.g. rk4 needs nfe >= 4
            grid += [(solver, nfe, cfg_scale) for cfg_scale in args.cfg]
    rows = []
    # References: the analyzer on the generator's clips behind the prompts, and on their VAE reconstructions
    # (the ceiling of anything decoded by this VAE).
    for name, report in zip(
        ("ground_truth", "vae_reconstruction"),
        reconstruction_adherence(pipe, len(prompts), args.prompt_seed),
        strict=True,
    ):
        rows.append(_row(args, name, None, None, len(prompts), report, 0.0))
        save(rows)
        tqdm.write(f"{name}: accuracy {report.accuracy:.3f}")
    for solver, nfe, cfg_scale in tqdm(grid, desc="grid", unit="setting"):
        t0 = time.perf_counter()
        report = adherence(pipe, prompts, seed=args.seed, nfe=nfe, solver=solver, cfg_scale=cfg_scale)
        rows.append(_row(args, solver, nfe, cfg_scale, len(prompts), report, (time.perf_counter() - t0) / len(prompts)))
        save(rows)
        tqdm.write(f"{solver:9s} nfe={nfe:3d} cfg={cfg_scale:3.1f}: accuracy {report.accuracy:.3f}")
    return rows


def _row(args, solver: str, nfe: int | None, cfg_scale: float | None, n: int, report, seconds: float) -> dict:
    """One JSON row; ``solver`` is a solver name, or ``ground_truth`` / ``vae_reconstruction`` for the references."""
    return {
        "model": args.model,
        "solver": solver,
        "nfe": nfe,
        "cfg_scale": cfg_scale,
        "prompts": n,
        "prompt_seed": args.prompt_seed,
        "checks": report.checks,
        "accuracy": report.accuracy,
        "mean_score": report.mean_score,
        "all_correct": report.all_correct,
        "per_attribute": report.per_attribute,
        "seconds_per_clip": seconds,
    }


def plot(path: Path) -> Path:
    plt = pyplot()
    data = json.loads(path.read_text())
    references = {r["solver"]: r["accuracy"] for r in data["rows"] if r["nfe"] is None}
    rows = [r for r in data["rows"] if r["nfe"] is not None]
    scales = sorted({r["cfg_scale"] for r in rows})
    solvers = sorted({r["solver"] for r in rows})
    fig, axes = plt.subplots(1, len(scales), figsize=(4 * len(scales), 3.6), sharey=True, squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for solver in solvers:
            pts = sorted((r["nfe"], r["accuracy"]) for r in rows if r["solver"] == solver and r["cfg_scale"] == scale)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=solver)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--", label="target 90 %")
        if "vae_reconstruction" in references:
            ax.axhline(references["vae_reconstruction"], color="black", lw=1.0, ls="-.", label="VAE reconstruction")
        ax.set_xscale("log", base=2)
        nfes = sorted({r["nfe"] for r in rows})
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.set_title(f"CFG {scale:g}")
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("attribute accuracy")
    axes[0][-1].legend(fontsize=8)
    n = rows[0]["prompts"] if rows else 0
    return save_figure(fig, path, f"demo model prompt adherence ({n} prompts) - {data['environment']['device']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="a trained model name or checkpoint path")
    p.add_argument("--prompts", type=at_least(1), default=48, help="size of the seeded prompt set")
    p.add_argument("--prompt-seed", type=int, default=EVALUATION_SEED)
    p.add_argument("--seed", type=int, default=0, help="noise seed of prompt 0 (prompt i: seed + i)")
    p.add_argument("--nfe", type=at_least(1), nargs="+", default=[2, 4, 8, 16, 32, 100])
    p.add_argument("--solvers", nargs="+", default=["euler", "heun", "midpoint", "dpmpp_2m"], choices=sorted(SOLVERS))
    p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.5, 6.0])
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: benchmarks/results)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(device) | {"model": args.model, "model_sha256": model_reference(args.model)[1]}
    rows = run(args, lambda rows: write_results("demo_quality", env, rows, args.out))
    path = write_results("demo_quality", env, rows, args.out)
    print(f"wrote {path} and {plot(path)}")


if __name__ == "__main__":
    main()
