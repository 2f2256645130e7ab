"""Bar charts of a benchmarks/ops.py result: time per implementation for every op and regime.

python benchmarks/plot_ops.py benchmarks/results/ops-<device>-<date>.json -o ops.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot(result: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(result.read_text())
    rows = data["rows"]
    groups = sorted({(r["regime"], r["op"]) for r in rows})
    impls = sorted({r["impl"] for r in rows}, key=lambda i: (i != "torch", i))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.2 + 1.1 * len(groups)), squeeze=False)
    for ax, (regime, op) in zip(axes[:, 0], groups, strict=True):
        times = {r["impl"]: r["ms"] for r in rows if (r["regime"], r["op"]) == (regime, op)}
        names = [i for i in impls if i in times]
        ax.barh(names, [times[i] for i in names], color=["tab:gray" if i == "torch" else "tab:blue" for i in names])
        ax.set_xscale("log")
        ax.set_title(f"{op} ({regime})", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("milliseconds per call (log scale; lower is faster)")
    env = data["environment"]
    fig.suptitle(f"etta_engine ops on {env['device']} (torch {env['torch']}, {env['commit'][:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args(argv)
    path = plot(args.result, args.out or args.result.with_suffix(".png"))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
