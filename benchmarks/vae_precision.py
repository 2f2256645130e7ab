"""Is the VAE decoder accurate enough in bf16 (or fp16)? The same latents decoded by the fp32 decoder (the
reference) and by copies with the weight norms folded and the weights cast, each timed, with the distance of
its audio to the reference: relative L2 error, max abs error, SNR and the multi-resolution STFT distance of the
training loss (:class:`etta_engine.train.losses.MultiResolutionSTFTLoss`, 0 for identical audio).

Variants: ``fp32`` (the reference, weight norm computed per call), ``fp32-folded`` (weight norms folded once,
as the export does), ``bf16`` and ``fp16`` (folded in fp32, then cast), and ``bf16-snake32`` (bf16 convolutions
with the Snake activations in fp32: ``sin(exp(alpha) x)`` of a bf16 ``x`` has an absolute argument error of
about ``|x| / 256``, the suspect of a bf16 decoder).

    python benchmarks/vae_precision.py --model etta --seconds 2 --device cuda
    python benchmarks/vae_precision.py --smoke            # tiny preset, CPU: checks the script runs

Latents are N(0, 1) (the prior the DiT's samples follow) from a fixed seed; a trained model (``--model demo``
or a checkpoint) gives the numbers that matter, a preset's random weights the speed and a first look.
Rows go to benchmarks/results/vae_precision-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from _common import environment, synchronize, write_results

from etta_engine.checkpoint import PRETRAINED, is_pretrained, load
from etta_engine.config import PRESETS, VAEConfig, get_preset
from etta_engine.export.onnx import fold_weight_norm
from etta_engine.models.model import ETTAModel
from etta_engine.models.vae import VAE, OobleckDecoder, SnakeBeta
from etta_engine.train.losses import MultiResolutionSTFTLoss

VARIANTS = ("fp32", "fp32-folded", "bf16", "bf16-snake32", "fp16")
CALIBRATION_SNR_DB = (40, 60)  # rows of the reference plus white noise, to read the distances by
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Fp32Snake(nn.Module):
    """A Snake activation evaluated in fp32 and returned in its input's dtype."""

    def __init__(self, snake: SnakeBeta) -> None:
        super().__init__()
        self.snake = snake.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.snake(x.float()).to(x.dtype)


def _snakes_to_fp32(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, SnakeBeta):
            setattr(module, name, Fp32Snake(child))
        else:
            _snakes_to_fp32(child)
    return module


def decoder_variant(decoder: OobleckDecoder, variant: str) -> tuple[nn.Module, torch.dtype]:
    """A copy of ``decoder`` for ``variant`` and the dtype its latents take."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
    if variant == "fp32":
        return decoder, torch.float32
    folded = fold_weight_norm(copy.deepcopy(decoder).float())  # folded in fp32, then cast
    dtype = DTYPES[variant.split("-")[0]]
    folded = folded.to(dtype)
    if variant == "bf16-snake32":
        _snakes_to_fp32(folded)
    return folded.eval(), dtype


def distances(audio: torch.Tensor, ref: torch.Tensor, mrstft: MultiResolutionSTFTLoss) -> dict:
    """How far ``audio`` is from ``ref`` (both (B, C, S) fp32)."""
    diff = (audio.double() - ref.double()).flatten()
    rel = float(diff.norm() / ref.double().flatten().norm().clamp_min(1e-30))
    return {
        "finite": bool(torch.isfinite(audio).all()),
        "rel_err": rel,
        "max_abs_err": float(diff.abs().max()),
        "snr_db": -20 * math.log10(rel) if rel > 0 else math.inf,
        "mrstft": float(mrstft(audio.flatten(0, 1)[:, None], ref.flatten(0, 1)[:, None])),
    }


def load_decoder(name: str) -> tuple[OobleckDecoder, VAEConfig, int]:
    """The VAE decoder of a preset (random weights, seed 0; the VAE alone is built), a shipped trained model or
    an ETTAModel checkpoint, with its config and the audio sample rate."""
    if name in PRESETS and not is_pretrained(name):
        cfg = get_preset(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return VAE(cfg.vae).decoder.eval(), cfg.vae, cfg.sample_rate
    model = load(PRETRAINED[name] if is_pretrained(name) else name)
    if not isinstance(model, ETTAModel):
        raise SystemExit(f"{name} holds a {type(model).__name__}, not a full model (ETTAModel)")
    return model.vae.decoder.eval(), model.cfg.vae, model.cfg.sample_rate


@torch.no_grad()
def run(args) -> list[dict]:
    device = torch.device(args.device)
    decoder, vae_cfg, sample_rate = load_decoder(args.model)
    decoder = decoder.float().to(device)
    frames = max(1, round(args.seconds * sample_rate / vae_cfg.downsampling_ratio))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, vae_cfg.latent_dim, frames, generator=g).to(device)
    mrstft = MultiResolutionSTFTLoss().to(device)
    seconds = frames * vae_cfg.downsampling_ratio / sample_rate
    ref = None
    rows = []
    for variant in args.variants:
        module, dtype = decoder_variant(decoder, variant)
        inputs = latents.to(dtype)
        audio = module(inputs).float()  # also the warm-up
        times = []
        for _ in range(args.reps):
            synchronize(device)
            start = time.perf_counter()
            module(inputs).float()
            synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
        if variant == "fp32":
            ref = audio
        ms = statistics.median(times)
        rows.append(
            {
                "model": args.model,
                "variant": variant,
                "dtype": str(dtype).removeprefix("torch."),
                "batch": args.batch,
                "frames": frames,
                "seconds": seconds,
                "ms_median": ms,
                "ms_all": times,
                "rtf": ms / 1e3 / (seconds * args.batch),
                **distances(audio, ref, mrstft),
                "reference": "fp32 decoder, weight norm per call",
            }
        )
    # Scale of the distances: the reference plus white noise at a known SNR (no decoder involved).
    for snr_db in CALIBRATION_SNR_DB:
        noise = torch.randn(ref.shape, generator=g).to(device)
        noise *= ref.norm() / noise.norm() * 10 ** (-snr_db / 20)
        rows.append(
            {
                "model": args.model,
                "variant": f"reference+noise-{snr_db}dB",
                "dtype": None,
                "batch": args.batch,
                "frames": frames,
                "seconds": seconds,
                "ms_median": None,
                **distances(ref + noise, ref, mrstft),
                "reference": "fp32 decoder, weight norm per call",
            }
        )
    return rows


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="etta", help="preset name (random weights), 'demo' or a checkpoint path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 0.5 s, one rep, CPU")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.device, args.seconds, args.reps = "tiny", "cpu", 0.5, 1
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choices: {list(VARIANTS)}")
    if args.variants[0] != "fp32":
        args.variants = ["fp32", *[v for v in args.variants if v != "fp32"]]  # the reference comes first
    if not args.seconds > 0 or args.batch < 1 or args.reps < 1:
        parser.error(f"--seconds={args.seconds} must be > 0, --batch={args.batch} and --reps={args.reps} >= 1")
    if args.device == "cpu" and "fp16" in args.variants and not args.smoke:
        print("note: fp16 convolutions on a CPU run PyTorch's slow generic kernels (100x and more behind fp32)")
    rows = run(args)
    path = write_results("vae_precision", environment(torch.device(args.device)), rows, args.out)
    for r in rows:
        ms = "" if r["ms_median"] is None else f"{r['ms_median']:9.1f} ms"
        print(
            f"{r['variant']:<24} {ms:>12}  rel err {r['rel_err']:.2e}  SNR {r['snr_db']:6.1f} dB  "
            f"MR-STFT {r['mrstft']:.4f}"
        )
    print(f"-> {path}")
    return path


if __name__ == "__main__":
    main()
