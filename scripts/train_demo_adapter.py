"""Train an audio-prompt adapter for the shipped demo model with the project's own command, then measure it.

    .venv/bin/python scripts/train_demo_adapter.py runs/demo_adapter --cache runs/demo/cache
    .venv/bin/python benchmarks/audio_prompt.py --adapter runs/demo_adapter/stage1/adapter.safetensors

The cache is the demo model's training cache (``scripts/train_demo.py`` writes it to RUN/cache): its latents were
encoded by the demo model's VAE, and the built-in ``latent_stats`` provider turns them into the audio embeddings,
so no extra caching is needed. Stage 1 trains the adapter alone on the frozen demo model (about 16 min on one CPU
core for the defaults); ``--stage3-steps`` adds a gates-only stage on top.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="working directory")
    p.add_argument("--cache", type=Path, required=True, help="the demo model's training cache")
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--stage3-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    common += ["--precision", "fp32", "--save-every", "250", "--log-every", "25", "--device", args.device]
    stages = [("stage1", 1, args.steps, None)]
    if args.stage3_steps:
        stages.append(("stage3", 3, args.stage3_steps, args.run / "stage1" / "adapter.safetensors"))
    for name, stage, steps, previous in stages:
        out = args.run / name
        if (out / "adapter.safetensors").exists():
            print(f"[{name}] {out / 'adapter.safetensors'} exists, skipped")
            continue
        cmd = [sys.executable, "-m", "etta_engine.cli", "train", "dit", str(args.cache), str(out), *common]
        cmd += ["--adapter-stage", str(stage), "--max-steps", str(steps)]
        if previous is not None:
            cmd += ["--adapter", str(previous)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
