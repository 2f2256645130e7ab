"""How fast does the DiT train? Samples/s, step time and peak memory of flow-matching training steps
(forward, backward, AdamW, EMA) of a preset's DiT on random data of the real shapes.

    python benchmarks/train_dit_throughput.py --preset etta --batch 8 --precision bf16 --device cuda

Rows go to benchmarks/results/train_dit_throughput-<device>-<date>.json with the environment.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from _common import at_least, environment, positive, synchronize, write_results
from tqdm.auto import tqdm

from etta_engine.config import get_preset
from etta_engine.models.conditioning import Conditioner
from etta_engine.models.dit import DiT
from etta_engine.train.common import EMA, clip_gradients, ema_copy
from etta_engine.train.dit import DiTTrainConfig, FlowModel, flow_matching_loss


def random_batch(cfg, batch: int, frames: int) -> dict[str, torch.Tensor]:
    L, D = cfg.text.max_length, cfg.text.dim
    tokens = torch.randint(L // 8, L // 2, (batch,))
    return {
        "latent_mean": torch.randn(batch, cfg.vae.latent_dim, frames),
        "latent_std": torch.rand(batch, cfg.vae.latent_dim, frames) * 0.1,
        "text": torch.randn(batch, L, D).to(torch.bfloat16),
        "text_mask": torch.arange(L)[None, :] < tokens[:, None],
        "seconds_start": torch.zeros(batch),
        "seconds_total": torch.full((batch,), 10.0),
    }


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = get_preset(args.preset)
    frames = round(args.seconds * cfg.latent_rate)
    train_cfg = DiTTrainConfig(cache="-", out="-", batch_size=args.batch, precision=args.precision,
                               activation_checkpointing=args.activation_checkpointing)  # fmt: skip
    torch.manual_seed(0)
    with device:
        model = FlowModel(DiT(cfg.dit), Conditioner(cfg)).train()
    model.dit.activation_checkpointing = args.activation_checkpointing
    ema = EMA(ema_copy(model).eval())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-3)
    batch = random_batch(cfg, args.batch, frames)
    mine = slice(0, args.batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in tqdm(range(args.warmup + args.steps), desc=f"train {args.preset}", unit="step"):
        synchronize(device)
        t0 = time.perf_counter()
        loss = flow_matching_loss(model, train_cfg, batch, torch.Generator().manual_seed(i), mine, device)
        loss.backward()
        clip_gradients(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]  # the median step
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process peak RSS)
    return {
        "preset": args.preset,
        "parameters": sum(p.numel() for p in model.dit.parameters()),
        "batch": args.batch,
        "frames": frames,
        "precision": args.precision,
        "activation_checkpointing": args.activation_checkpointing,
        "step_ms": 1000 * step_s,
        "samples_per_s": args.batch / step_s,
        "peak_memory_gib": peak,
        "steps_timed": len(times),
        "final_loss": float(loss.detach()),
    }


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="etta")
    parser.add_argument("--batch", type=at_least(1), default=8)
    parser.add_argument("--seconds", type=positive, default=10.0)
    parser.add_argument("--steps", type=at_least(1), default=10)
    parser.add_argument("--warmup", type=at_least(0), default=3)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    row = run(args)
    env = environment(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    path = write_results("train_dit_throughput", env, [row], args.out)
    print(f"{row['preset']}: {row['samples_per_s']:.2f} samples/s, {row['step_ms']:.1f} ms/step, "
          f"peak {row['peak_memory_gib']:.2f} GiB -> {path}")  # fmt: skip
    return path


if __name__ == "__main__":
    main()
