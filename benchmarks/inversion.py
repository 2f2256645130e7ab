"""How well does ODE inversion + regeneration reconstruct a clip, by NFE and solver? (the basis of ``etta edit``)

    python benchmarks/inversion.py                       # the demo model on the demo evaluation clips
    python benchmarks/inversion.py --model tiny --n 2 --nfe 4 8

Each clip is encoded (VAE posterior mean x0), inverted from t=0 to t=1 under its own caption, and sampled back to
t=0 under the same caption (CFG 1 both ways, which is what makes the round trip exact in the limit). Rows: the
relative RMS error of the regenerated latents against x0, the relative error of the decoded audio against the
VAE's own reconstruction of x0, and the seconds per round trip. Rows go to
benchmarks/results/inversion-<device>-<date>.json with a plot next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import at_least, environment, pyplot, save_figure, synchronize, write_results
from tqdm.auto import tqdm

from etta_engine.checkpoint import model_reference
from etta_engine.demo.evaluate import EVALUATION_SEED
from etta_engine.demo.synth import SAMPLE_RATE, make_example
from etta_engine.pipeline import Pipeline
from etta_engine.sampling import INVERTIBLE_SOLVERS


def clips(pipe: Pipeline, n: int) -> list[tuple[str, torch.Tensor]]:
    """(caption, latents (1, C, T)) of the demo evaluation clips, encoded by the pipeline's VAE."""
    out = []
    for i in range(n):
        example = make_example(EVALUATION_SEED, i)
        audio = torch.from_numpy(example.audio).float()[None]  # (1, samples) at the demo rate
        seconds = audio.shape[-1] / SAMPLE_RATE
        T = pipe.latent_frames(seconds)
        x = pipe._prepare_init_audio(audio, SAMPLE_RATE, 1, T * pipe.cfg.vae.downsampling_ratio)
        with torch.no_grad():
            out.append((example.caption, pipe.model.vae.encode(x.to(pipe.model.vae.dtype))[0]))
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run(args) -> list[dict]:
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    items = clips(pipe, args.n)
    rows = []
    grid = [(solver, nfe) for solver in args.solvers for nfe in args.nfe if solver != "rk4" or nfe >= 4]
    for solver, nfe in tqdm(grid, desc="inversion", unit="setting"):
        latent_err, audio_err, seconds = [], [], []
        for caption, x0 in items:
            seconds_clip = x0.shape[-1] / pipe.cfg.latent_rate
            synchronize(pipe.device)
            t0 = time.perf_counter()
            x = pipe.edit_latents(x0, caption, seconds_clip, nfe=nfe, solver=solver, cfg_scale=1.0, progress=False)
            synchronize(pipe.device)
            seconds.append(time.perf_counter() - t0)
            with torch.no_grad():
                reference = pipe.model.vae.decode(x0)
                audio_err.append(relative(pipe.model.vae.decode(x.to(x0.dtype)), reference))
            latent_err.append(relative(x, x0))
        rows.append(
            {
                "solver": solver,
                "nfe": nfe,
                "clips": len(items),
                "latent_rel_rmse": sum(latent_err) / len(latent_err),
                "audio_rel_err": sum(audio_err) / len(audio_err),
                "seconds_per_round_trip": sum(seconds) / len(seconds),
            }
        )
        tqdm.write(f"{solver:9s} nfe={nfe:4d}: latent rel. error {rows[-1]['latent_rel_rmse']:.2e}")
    return rows


def plot(path: Path) -> Path:
    plt = pyplot()
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for solver in sorted({r["solver"] for r in data["rows"]}):
        pts = sorted((r["nfe"], r["latent_rel_rmse"]) for r in data["rows"] if r["solver"] == solver)
        ax.plot(*zip(*pts, strict=True), marker="o", label=solver)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE of the inversion (and again of the regeneration)")
    ax.set_ylabel("latent relative RMS error")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path, f"invert + regenerate, same prompt - {data['environment']['device']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=at_least(1), default=8, help="demo evaluation clips")
    p.add_argument("--nfe", type=at_least(1), nargs="+", default=[4, 8, 16, 32, 64, 128])
    p.add_argument("--solvers", nargs="+", default=["euler", "heun", "midpoint", "rk4"], choices=INVERTIBLE_SOLVERS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    env = environment(torch.device(args.device)) | {"model": args.model}
    env["model_sha256"] = model_reference(args.model)[1]
    path = write_results("inversion", env, run(args), args.out)
    print(f"wrote {path} and {plot(path)}")


if __name__ == "__main__":
    main()
