"""Shared by the benchmark scripts: the environment of a run and its JSON rows under results/."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def at_least(low: int):
    """An argparse type: an integer >= ``low``, refused otherwise with the value and the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds of audio, say)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def at_least_list(low: int):
    """An argparse type: comma-separated integers, each >= ``low`` ("1,2,4")."""
    one = at_least(low)

    def parse(text: str) -> list[int]:
        return [one(v) for v in text.split(",")]

    return parse


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict:
    env = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": git_commit(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


# google-t5/t5-base's encoder, for a random stand-in of the same cost
T5_BASE = {"layers": 12, "heads": 12, "d_kv": 64, "d_ff": 3072}


def benchmark_model(name: str, text_encoder: str | None = None):
    """``(model, text_encoder_info)``: what a benchmark times, ``load_model(name, text_encoder)``; for a preset
    whose pretrained T5 is not on this machine (``text_encoder`` not given), a random T5 encoder of its size
    (the text stage's cost, not its output) with the byte-level tokenizer. ``text_encoder_info`` says which,
    for the results' environment."""
    import dataclasses

    from etta_engine.checkpoint import is_pretrained, load_model
    from etta_engine.config import PRESETS
    from etta_engine.models.model import ETTAModel
    from etta_engine.models.text import T5TextEncoder

    if is_pretrained(name) or name not in PRESETS:
        return load_model(name, text_encoder), "loaded"
    model = ETTAModel.from_preset(name)  # once: the etta preset's 1.5 B random weights take a while to draw
    if model.text_encoder is not None:
        return model, "loaded"
    try:
        model.load_text_encoder(text_encoder)
        return model, "loaded"
    except FileNotFoundError as e:
        if text_encoder is not None or "T5 encoder" not in str(e):
            raise
    pretrained = model.cfg.text.pretrained
    sizes = T5_BASE if pretrained.endswith("t5-base") else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.text_encoder = T5TextEncoder.random(dataclasses.replace(model.cfg.text, pretrained=None, **sizes))
    print(f"{pretrained} is not on this machine: a random encoder of its size stands in (timings only)")
    return model, f"random stand-in for {pretrained} ({sizes or 'config sizes'}, byte tokenizer)"


def write_results(name: str, env: dict, rows: list[dict], out: Path | None = None) -> Path:
    """``results/<name>-<device>-<date>.json`` holding the environment and the rows."""
    folder = out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")[:40]
    stamp = env["date"].replace(":", "").replace("-", "")[:15]
    path = folder / f"{name}-{slug}-{stamp}.json"
    # Atomically: a script that rewrites its file as rows come in never leaves half of one behind.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "environment": env, "rows": rows}, indent=1))
    os.replace(tmp, path)
    return path


def ort_without_cuda(device: torch.device) -> str | None:
    """Why ONNX Runtime rows on ``device`` would mislead, or None: on a CUDA device, an onnxruntime without the
    CUDA provider would time the CPU under the GPU's name (and take minutes at the etta size)."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        return f"this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu), only {providers}"
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pyplot():
    """matplotlib.pyplot with a file-only backend (benchmarks run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, title: str) -> Path:
    """Give ``fig`` its title, lay it out and write it next to the results file ``path`` as .png."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out
