"""Prompt adherence of a text-to-audio pipeline on a fixed, seeded set of demo captions.

    prompts = evaluation_prompts(48)                              # captions of generator clips, seed 1000
    report = adherence(pipe, prompts, nfe=8, solver="heun", cfg_scale=3.5)
    report.accuracy                                               # correct attribute checks / all checks

The metric: every prompt names attributes (kind, pitch, waveform, color, direction, rate, loudness, fade,
and for two events each event's plus their order); the analyzer checks each against the generated clip.
``accuracy`` pools the checks of all prompts, ``per_attribute`` splits them by attribute name (``first.pitch``
counts as ``pitch``), ``all_correct`` is the fraction of prompts whose every check passes.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from etta_engine.demo.analyzer import Adherence, score
from etta_engine.demo.synth import SAMPLE_RATE, make_example

EVALUATION_SEED = 1000  # the training data uses seed 0


def evaluation_prompts(n: int, seed: int = EVALUATION_SEED) -> list[str]:
    """The captions of clips 0..n-1 of the generator with ``seed``: a fixed prompt set with the training
    distribution of events, attributes and paraphrases."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    return [make_example(seed, i).caption for i in range(n)]


@dataclass(frozen=True)
class AdherenceReport:
    results: list[Adherence]

    @property
    def checks(self) -> int:
        return sum(len(r.checks) for r in self.results)

    @property
    def accuracy(self) -> float:
        return sum(c.ok for r in self.results for c in r.checks.values()) / self.checks

    @property
    def mean_score(self) -> float:
        return sum(r.score for r in self.results) / len(self.results)

    @property
    def all_correct(self) -> float:
        return sum(r.score == 1.0 for r in self.results) / len(self.results)

    @property
    def per_attribute(self) -> dict[str, float]:
        total, ok = collections.Counter(), collections.Counter()
        for r in self.results:
            for name, check in r.checks.items():
                attribute = name.split(".")[-1]
                total[attribute] += 1
                ok[attribute] += check.ok
        return {a: ok[a] / total[a] for a in sorted(total)}


def adherence(pipe, prompts: list[str], *, seed: int = 0, batch_size: int = 64, **generate_options) -> AdherenceReport:
    """Generate one clip per prompt (prompt i with seed ``seed + i``) and score each against its prompt."""
    results = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        audio = pipe.generate(chunk, seed=seed + start, progress=False, **generate_options)
        for i, prompt in enumerate(chunk):
            results.append(score(audio.waveform[i], audio.sample_rate, prompt))
    return AdherenceReport(results)


@torch.no_grad()
def reconstruction_adherence(pipe, n: int, seed: int = EVALUATION_SEED) -> tuple[AdherenceReport, AdherenceReport]:
    """The analyzer on the generator's own clips behind ``evaluation_prompts(n, seed)`` (ground truth) and on
    their VAE reconstructions (encode, posterior mean, decode): the ceiling that generation through this VAE
    can reach. Returns (ground truth, reconstruction) reports."""
    model = pipe.model
    if model.cfg.sample_rate != SAMPLE_RATE:
        raise ValueError(f"the model runs at {model.cfg.sample_rate} Hz; the demo clips are {SAMPLE_RATE} Hz")
    ratio = model.cfg.vae.downsampling_ratio
    truth, recon = [], []
    for i in range(n):
        ex = make_example(seed, i)
        audio = torch.from_numpy(ex.audio[: len(ex.audio) // ratio * ratio])  # (S,)
        x = audio[None, None].expand(1, model.cfg.vae.audio_channels, -1).to(pipe.device, model.vae.dtype)
        mean, _ = model.vae.encode(x)
        y = model.vae.decode(mean).float().cpu()[0]  # (C, S)
        truth.append(score(audio, SAMPLE_RATE, ex.caption))
        recon.append(score(y, model.cfg.sample_rate, ex.caption))
    return AdherenceReport(truth), AdherenceReport(recon)
