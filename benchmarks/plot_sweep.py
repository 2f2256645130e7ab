"""Plots of a benchmarks/sweep.py result: end-to-end latency against NFE, and the error against latency with
each solver's Pareto front (the settings no other setting beats on both), one column per guidance scale.
In the latency plot a backend has one colour and a solver one marker; the torch-free runtime's rows (backends
``onnx``, ``tensorrt`` and their ``-plain`` variants: the exported graphs) are drawn dashed.

python benchmarks/plot_sweep.py benchmarks/results/sweep-<device>-<date>.json -o sweep.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNTIME_BACKENDS = ("onnx", "onnx-plain", "tensorrt", "tensorrt-plain")
MARKERS = "osD^vP*X"  # one per solver


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated in (latency, error), sorted by latency."""
    front, best = [], float("inf")
    for latency, error in sorted(points):
        if error < best:
            front.append((latency, error))
            best = error
    return front


def plot(result: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(result.read_text())["rows"]
    scales = sorted({r["cfg_scale"] for r in rows})
    solvers = sorted({r["solver"] for r in rows})
    backends = sorted({r["backend"] for r in rows})
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    fig, axes = plt.subplots(2, len(scales), figsize=(5.5 * len(scales), 8), squeeze=False)
    for col, scale in enumerate(scales):
        top, bottom = axes[0, col], axes[1, col]
        for k, solver in enumerate(solvers):
            for backend in backends:
                cells = sorted(
                    (r["nfe"], r["e2e_ms"])
                    for r in rows
                    if (r["solver"], r["backend"], r["cfg_scale"]) == (solver, backend, scale)
                )
                if cells:
                    style = "--" if backend in RUNTIME_BACKENDS else "-"
                    look = dict(marker=MARKERS[k % len(MARKERS)], color=colors[backend], label=f"{solver} / {backend}")
                    top.plot(*zip(*cells, strict=True), style, **look)
            points = [
                (r["e2e_ms"], r["latent_rel_rmse"]) for r in rows if (r["solver"], r["cfg_scale"]) == (solver, scale)
            ]
            if points:
                scatter = bottom.scatter(*zip(*points, strict=True), s=12, alpha=0.5)
                front = pareto(points)
                bottom.plot(*zip(*front, strict=True), color=scatter.get_facecolor()[0], label=solver)
        top.set(xscale="log", yscale="log", xlabel="NFE", ylabel="end-to-end latency (ms)", title=f"CFG {scale:g}")
        bottom.set(xscale="log", yscale="log", xlabel="end-to-end latency (ms)", ylabel="latent relative RMSE")
        bottom.set_title("error vs latency (lines: Pareto front per solver)", fontsize=9)
        top.legend(fontsize=6)
        bottom.legend(fontsize=7)
    fig.suptitle(result.stem, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=None, help="PNG path (default: next to the JSON)")
    args = parser.parse_args()
    print(plot(args.result, args.out or args.result.with_suffix(".png")))


if __name__ == "__main__":
    main()
