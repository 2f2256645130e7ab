"""Does an audio prompt move the demo model's output toward the prompt's sound? Measured with the demo analyzer.

    python benchmarks/audio_prompt.py --adapter runs/demo_adapter/stage1/adapter.safetensors

Two experiments, each with a text prompt that leaves one attribute open and audio prompts that fix it:
- pitch: text "a tone", audio prompts = low or medium sine tones from the synthesizer (``PITCH_BANDS``;
  ``high_pitch``: low or high);
- kind: text "a sound", audio prompts = a tone or white noise.
For every audio prompt scale (0 = the text-only model), the rows give how often the analyzer finds the prompt's
value of the attribute in the generated clip, and (pitch) the mean dominant frequency per prompt class. Rows go to
benchmarks/results/audio_prompt-<device>-<date>.json, with a plot next to it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from _common import at_least, environment, pyplot, save_figure, write_results
from tqdm.auto import tqdm

from etta_engine.checkpoint import file_sha256, model_reference
from etta_engine.demo.analyzer import analyze
from etta_engine.demo.synth import PITCH_BANDS, SAMPLE_RATE, ClipSpec, Event, render
from etta_engine.pipeline import Pipeline

EXPERIMENTS = {
    "pitch": ("a tone", {"low": {"kind": "tone", "pitch": "low"}, "medium": {"kind": "tone", "pitch": "medium"}}),
    "high_pitch": ("a tone", {"low": {"kind": "tone", "pitch": "low"}, "high": {"kind": "tone", "pitch": "high"}}),
    "kind": ("a sound", {"tone": {"kind": "tone", "pitch": "medium"}, "noise": {"kind": "noise", "color": "white"}}),
}


def prompt_clip(spec: dict, seed: int) -> np.ndarray:
    """A 2 s clip of one event with the attributes ``spec`` (the rest drawn from ``seed``)."""
    rng = np.random.default_rng([seed, 7])
    kw = dict(spec)
    if kw["kind"] == "tone":
        lo, hi = PITCH_BANDS[kw["pitch"]]
        kw |= {"waveform": "sine", "freq": float(math.exp(rng.uniform(math.log(lo), math.log(hi))))}
    event = Event(start=float(rng.uniform(0.2, 0.4)), duration=float(rng.uniform(1.2, 1.5)), **kw)
    return render(ClipSpec((event,)), rng)


def run(args) -> list[dict]:
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    pipe.load_adapter(args.adapter)
    rows = []
    settings = dict(nfe=args.nfe, solver=args.solver, cfg_scale=args.cfg, progress=False)
    grid = [(e, v, s) for e in args.experiments for v in EXPERIMENTS[e][1] for s in args.scales]
    for experiment, value, scale in tqdm(grid, desc="audio prompts", unit="setting"):
        text, values = EXPERIMENTS[experiment]
        found, freqs = [], []
        for i in range(args.n):
            clip = prompt_clip(values[value], seed=1000 * i + len(value))
            audio = pipe.generate(text, audio_prompt=clip, audio_prompt_sample_rate=SAMPLE_RATE,
                                  audio_prompt_scale=scale, seed=args.seed + i, **settings)  # fmt: skip
            m = analyze(audio.waveform[0].numpy(), audio.sample_rate)[0]
            found.append(m.label(experiment.removeprefix("high_")) == value)
            freqs.append(m.dominant_hz)
        rows.append(
            {
                "experiment": experiment,
                "text": text,
                "audio_prompt": value,
                "audio_prompt_scale": scale,
                "n": args.n,
                "matches": sum(found) / len(found),
                "mean_dominant_hz": float(np.mean([f for f in freqs if f > 0])) if any(freqs) else 0.0,
                **{k: v for k, v in settings.items() if k != "progress"},
            }
        )
        tqdm.write(f"{experiment}={value:6s} scale={scale:3.1f}: matches {rows[-1]['matches']:.2f}")
    return rows


def plot(path: Path) -> Path:
    plt = pyplot()
    data = json.loads(path.read_text())
    experiments = sorted({r["experiment"] for r in data["rows"]})
    fig, axes = plt.subplots(1, len(experiments), figsize=(4.5 * len(experiments), 3.4), squeeze=False)
    for ax, experiment in zip(axes[0], experiments, strict=True):
        rows = [r for r in data["rows"] if r["experiment"] == experiment]
        for value in sorted({r["audio_prompt"] for r in rows}):
            pts = sorted((r["audio_prompt_scale"], r["matches"]) for r in rows if r["audio_prompt"] == value)
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"audio prompt: {value}")
        ax.set_title(f'{experiment}: text "{rows[0]["text"]}"')
        ax.set_xlabel("audio_prompt_scale (0: text only)")
        ax.set_ylabel(f"generated {experiment.removeprefix('high_')} = the prompt's")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, f"demo model + audio-prompt adapter - {data['environment']['device']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="an adapter checkpoint for --model")
    p.add_argument("--model", default="demo")
    p.add_argument("--experiments", nargs="+", default=["kind", "pitch"], choices=sorted(EXPERIMENTS))
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    p.add_argument("--n", type=at_least(1), default=8, help="audio prompts per value")
    p.add_argument("--nfe", type=at_least(1), default=16)
    p.add_argument("--solver", default="euler")
    p.add_argument("--cfg", type=float, default=3.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    env = environment(torch.device(args.device)) | {"model": args.model, "adapter": str(args.adapter)}
    env["adapter_sha256"] = file_sha256(args.adapter)
    env["model_sha256"] = model_reference(args.model)[1]
    rows = run(args)
    path = write_results("audio_prompt", env, rows, args.out)
    print(f"wrote {path} and {plot(path)}")


if __name__ == "__main__":
    main()
