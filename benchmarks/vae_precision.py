"""Is the VAE decoder accurate enough in bf16 (or fp16)? The same latents decoded by the fp32 decoder (the
reference) and by copies with the weight norms folded and the weights cast, each timed, with the distance of
its audio to the reference: relative L2 error, max abs error, SNR and the multi-resolution STFT distance of the
training loss (:class:`etta_engine.train.losses.MultiResolutionSTFTLoss`, 0 for identical audio).

Variants: ``fp32`` (the reference: the decoder as the pipeline runs it, each weight norm folded at its first
use and kept), ``fp32-folded`` (weight-normed convolutions replaced by plain ones, as the export does), ``bf16``
and ``fp16`` (folded in fp32, then cast; the Snake-beta activations compute in fp32 inside, whatever the storage
dtype), and ``bf16-naive-snake`` (the activations computed in bf16 throughout, as the decoder did before:
``sin(exp(alpha) x)`` of a bf16 ``x`` has an absolute argument error of about ``|x| / 256``). ``--ops`` picks the
Snake-beta implementation of every variant but the reference (``triton`` or ``cuda``: one fused pass instead of
five; see :mod:`etta_engine.ops`).

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
from _common import at_least, environment, positive, synchronize, write_results

from etta_engine.checkpoint import PRETRAINED, is_pretrained, load
from etta_engine.config import OPS_IMPLS, PRESETS, VAEConfig, get_preset
from etta_engine.export.onnx import fold_weight_norm
from etta_engine.models.model import ETTAModel
from etta_engine.models.vae import VAE, OobleckDecoder, SnakeBeta
from etta_engine.pipeline import PRECISIONS
from etta_engine.train.losses import MultiResolutionSTFTLoss

VARIANTS = ("fp32", "fp32-folded", "bf16", "bf16-naive-snake", "fp16")
CALIBRATION_SNR_DB = (40, 60)  # rows of the reference plus white noise, to read the distances by


class NaiveSnake(nn.Module):
    """Snake-beta computed in its input's dtype throughout (five passes, each rounded)."""

    def __init__(self, snake: SnakeBeta) -> None:
        super().__init__()
        self.alpha, self.beta = snake.alpha, snake.beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.exp()[None, :, None], self.beta.exp()[None, :, None]
        return x + (1.0 / (beta + 1e-9)) * torch.sin(alpha * x).pow(2)


def _snakes(module: nn.Module, ops: str, naive: bool) -> nn.Module:
    """``module`` with every Snake-beta run by ``ops`` (or, with ``naive``, replaced by :class:`NaiveSnake`)."""
    for name, child in module.named_children():
        if isinstance(child, SnakeBeta):
            child.ops = ops
            if naive:
                setattr(module, name, NaiveSnake(child))
        else:
            _snakes(child, ops, naive)
    return module


def decoder_variant(decoder: OobleckDecoder, variant: str, ops: str = "auto") -> tuple[nn.Module, torch.dtype]:
    """A copy of ``decoder`` for ``variant`` (its Snake-beta run by ``ops``) and the dtype its latents take."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
    if variant == "fp32":
        return decoder, torch.float32
    folded = fold_weight_norm(copy.deepcopy(decoder).float())  # folded in fp32, then cast
    dtype = PRECISIONS[variant.split("-")[0]]
    folded = _snakes(folded.to(dtype), ops, naive=variant == "bf16-naive-snake")
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
        module, dtype = decoder_variant(decoder, variant, args.ops)
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
                "ops": "auto" if variant == "fp32" else args.ops,
                "dtype": str(dtype).removeprefix("torch."),
                "batch": args.batch,
                "frames": frames,
                "seconds": seconds,
                "ms_median": ms,
                "ms_all": times,
                "rtf": ms / 1e3 / (seconds * args.batch),
                **distances(audio, ref, mrstft),
                "reference": "fp32 decoder",
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
                "reference": "fp32 decoder",
            }
        )
    return rows


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="etta", help="preset name (random weights), 'demo' or a checkpoint path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=positive, default=2.0)
    parser.add_argument("--batch", type=at_least(1), default=1)
    parser.add_argument("--reps", type=at_least(1), default=3)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--ops", default="auto", choices=OPS_IMPLS, help="Snake-beta implementation (not fp32's)")
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
