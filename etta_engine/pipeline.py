"""Text to waveform: the object most users touch.

pipe = Pipeline.from_pretrained("tiny")          # a preset name or a checkpoint path
audio = pipe.generate(["rain on a tin roof"], seconds=10.0, nfe=100, cfg_scale=3.5, seed=0)
audio.save("rain.wav")
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from etta_engine.checkpoint import atomic_write, load
from etta_engine.config import PRESETS
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.model import ETTAModel
from etta_engine.sampling import SOLVERS, cfg, sample

log = logging.getLogger(__name__)


@dataclass
class Audio:
    """Generated audio: ``waveform`` (B, channels, samples) float32 on the CPU, at ``sample_rate`` Hz."""

    waveform: torch.Tensor
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate

    def save(self, path: str | os.PathLike, index: int = 0, subtype: str = "PCM_16") -> Path:
        """Write item ``index`` as a WAV file, atomically. Audio louder than full scale is peak-normalised
        (PCM would clip it); quieter audio is written as is."""
        import soundfile as sf

        if not 0 <= index < self.waveform.shape[0]:
            raise IndexError(f"index={index} is outside [0, {self.waveform.shape[0] - 1}]")
        x = self.waveform[index].float()
        peak = float(x.abs().max()) if x.numel() else 0.0
        if not math.isfinite(peak):
            raise ValueError(f"audio item {index} contains NaN or inf; refusing to write {path}")
        if peak > 1.0:
            x = x / peak
        data = x.T.contiguous().numpy()  # (samples, channels)
        return atomic_write(path, lambda tmp: sf.write(tmp, data, self.sample_rate, subtype=subtype, format="WAV"))


class Pipeline:
    """Text-to-audio generation with an :class:`ETTAModel`."""

    def __init__(self, model: ETTAModel, *, device: str | torch.device | None = None) -> None:
        if not isinstance(model, ETTAModel):
            raise TypeError(f"Pipeline needs an ETTAModel, got {type(model).__name__}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "tiny",
        *,
        device: str | torch.device | None = None,
        text_encoder_path: str | os.PathLike | None = None,
    ) -> Pipeline:
        """A preset name (random weights, seed 0) or a checkpoint file (ours or an official ETTA one)."""
        if isinstance(name_or_path, str) and name_or_path in PRESETS:
            log.warning("preset %r has random weights: the output is noise-like, not a trained model's", name_or_path)
            model = ETTAModel.from_preset(name_or_path)
            if model.text_encoder is None:
                model.load_text_encoder(text_encoder_path)
        elif Path(name_or_path).is_file():
            model = load(name_or_path, text_encoder_path=text_encoder_path)
            if not isinstance(model, ETTAModel):
                raise ValueError(f"{name_or_path} holds a {type(model).__name__}, not a full text-to-audio model")
            if model.text_encoder is None:
                model.load_text_encoder()
        else:
            raise FileNotFoundError(f"{name_or_path!r} is neither a preset ({sorted(PRESETS)}) nor a checkpoint file")
        return cls(model, device=device)

    def latent_frames(self, seconds: float) -> int:
        """Latent frames for a clip of ``seconds`` (10 s at 44.1 kHz -> 215, as in ETTA)."""
        return max(1, round(seconds * self.cfg.latent_rate))

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        seconds: float = 10.0,
        nfe: int = 100,
        solver: str = "euler",
        cfg_scale: float = 3.5,
        seed: int | Sequence[int] = 0,
        negative_prompt: str | None = None,
        truncate: bool = False,
        progress: bool = True,
    ) -> Audio:
        """Generate one clip per prompt. Item i uses ``seed + i`` (or ``seed[i]``), so it equals a
        single generation of prompt i with that seed."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; give at least one prompt")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choices: {sorted(SOLVERS)}")
        if not (isinstance(seconds, int | float) and 0 < seconds <= self.cfg.max_seconds):
            raise ValueError(f"seconds={seconds} is outside (0, {self.cfg.max_seconds:g}]")
        if not cfg_scale >= 0:
            raise ValueError(f"cfg_scale={cfg_scale} must be >= 0")
        B = len(prompts)
        seeds = [seed + i for i in range(B)] if isinstance(seed, int) else list(seed)
        if len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} prompts")

        model, dit = self.model, self.model.dit
        dtype = dit.project_in.weight.dtype
        cond = model.condition(prompts, 0.0, float(seconds), truncate=truncate)
        cond = DiTConditioning(cond.context.to(dtype), cond.context_mask, cond.global_cond.to(dtype))
        T = self.latent_frames(seconds)
        # Noise is drawn on the CPU from each item's own seed: the same on every device and batch size.
        noise = [torch.randn(self.cfg.dit.io_channels, T, generator=torch.Generator().manual_seed(s)) for s in seeds]
        noise = torch.stack(noise).to(self.device, dtype)  # (B, C, T)

        if cfg_scale == 1.0:
            velocity = lambda x, t: dit(x, t, *cond)
        else:
            uncond = self._unconditional(cond, negative_prompt, B, seconds, truncate)
            both = DiTConditioning(*(torch.cat(pair) for pair in zip(cond, uncond, strict=True)))
            velocity = cfg(lambda x, t: dit(x, t, *both), cfg_scale)

        steps = SOLVERS[solver].steps_for_nfe(nfe) if isinstance(nfe, int) and nfe >= 1 else 0
        with _progress(steps, progress, "sampling") as bar:
            result = sample(velocity, noise, solver=solver, nfe=nfe, callback=lambda i, x: bar.update(1))
        waveform = model.vae.decode(result.x.to(next(model.vae.parameters()).dtype))
        n_samples = min(waveform.shape[-1], round(seconds * self.cfg.sample_rate))
        return Audio(waveform[..., :n_samples].float().cpu(), self.cfg.sample_rate)

    def _unconditional(self, cond: DiTConditioning, negative_prompt, B: int, seconds: float, truncate: bool):
        """The uncond half of CFG: the official null memory (zeros, same mask) or a negative prompt's memory.
        Timestep and seconds conditioning are kept."""
        if negative_prompt is None:
            return DiTConditioning(torch.zeros_like(cond.context), cond.context_mask, cond.global_cond)
        neg = self.model.condition([negative_prompt] * B, 0.0, float(seconds), truncate=truncate)
        return DiTConditioning(neg.context.to(cond.context.dtype), neg.context_mask, cond.global_cond)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", leave=False)
