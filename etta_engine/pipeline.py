"""Text to waveform: the object most users touch.

    pipe = Pipeline.from_pretrained()                 # the shipped demo model; or a preset name or a checkpoint path
    audio = pipe.generate(["a low beep followed by white noise"], nfe=100, cfg_scale=3.5, seed=0)
    audio.save("beep.wav")

Besides text-to-audio, ``generate`` makes variations of an input clip (``init_audio`` + ``strength``: the cheap
way), continues or inpaints one (``keep``: the regions of the input to keep; the rest is generated) and follows an
audio prompt (``audio_prompt``: a clip or its embedding, with an adapter loaded by :meth:`Pipeline.load_adapter`).
:meth:`Pipeline.edit` edits a clip by ODE inversion: its latents are run back to noise under one prompt and
sampled forward under another.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from etta_engine.audio_prompt import EmbeddingProvider, as_batch, get_provider
from etta_engine.checkpoint import PRETRAINED, atomic_write, is_pretrained, load_model
from etta_engine.config import PRESETS
from etta_engine.data import load_audio
from etta_engine.engine import ADAPTIVE_SOLVERS, DiTEngine, evaluation_times, sample_graphed
from etta_engine.models.adapter import AudioAdapter, check_embedding
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.models.model import ETTAModel
from etta_engine.sampling import (
    INVERTIBLE_SOLVERS,
    VelocityFn,
    autoguidance,
    cfg,
    inpaint,
    invert,
    steps_for,
)

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


# Compute dtypes by name. The DiT in bf16 keeps the fp32 islands it trains with (timestep features, adaLN
# inputs, LayerNorm statistics); in fp16 the engine adds its overflow guards. T5 overflows in fp16.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_PRECISIONS = ("fp32", "bf16")
PRECISION_ARGS = ("dtype", "vae_dtype", "text_dtype")  # the precision keywords of Pipeline and from_pretrained
_PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}


def precision_dtype(value: str | torch.dtype, part: str, allowed: Sequence[str] = tuple(PRECISIONS)) -> torch.dtype:
    """The torch dtype of a precision name (or dtype) for ``part``, with an error naming the allowed ones."""
    name = _PRECISION_NAMES.get(value) if isinstance(value, torch.dtype) else value
    if name not in allowed:
        why = " (T5 overflows in fp16)" if part == "text" and name == "fp16" else ""
        raise ValueError(f"{part} precision {value!r} is not supported{why}; choices: {list(allowed)}")
    return PRECISIONS[name]


def precision_name(dtype: torch.dtype) -> str:
    return _PRECISION_NAMES.get(dtype, str(dtype))


class Pipeline:
    """Text-to-audio generation with an :class:`ETTAModel` (and optionally a weaker model for autoguidance).

    ``dtype``, ``vae_dtype``, ``text_dtype``: compute precision of the DiT, the VAE decoder and the T5 encoder
    ("fp32", "bf16", "fp16" or torch dtypes; None leaves a part as the model has it); see :meth:`set_precision`.
    """

    # Run the DiT through etta_engine.engine (hoisted adaLN, prompt K/V, skipped uncond cross-attention) for the
    # fixed-step solvers; False runs the plain model at every call (the reference path).
    use_engine: bool = True
    # On a CUDA device, replay the text encoder and the engine's work from CUDA graphs, captured once per shape
    # and kept across generations (DiTEngine's cuda_graph): True replays a whole text-to-audio solve (CFG without
    # an interval, no inpainting or autoguidance) as one graph and anything else step by step; "step" replays
    # every solve step by step; False launches the kernels one by one.
    cuda_graphs: bool | str = True

    def __init__(
        self,
        model: ETTAModel,
        *,
        device: str | torch.device | None = None,
        bad_model: ETTAModel | None = None,
        dtype: str | torch.dtype | None = None,
        vae_dtype: str | torch.dtype | None = None,
        text_dtype: str | torch.dtype | None = None,
    ) -> None:
        for name, m in (("model", model), ("bad_model", bad_model)):
            if m is not None and not isinstance(m, ETTAModel):
                raise TypeError(f"{name} must be an ETTAModel, got {type(m).__name__}")
        self._check_precision(dtype, vae_dtype, text_dtype)  # before anything moves
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.bad_model = None if bad_model is None else bad_model.to(self.device).eval()
        self.cfg = model.cfg
        self._engines: dict[int, DiTEngine] = {}  # id(dit) -> its engine, which keeps the captured CUDA graphs
        self.adapter: AudioAdapter | None = None
        self.audio_provider: EmbeddingProvider | None = None
        self.set_precision(dtype, vae=vae_dtype, text=text_dtype)

    @staticmethod
    def _check_precision(dit, vae, text) -> tuple[torch.dtype | None, ...]:
        return (
            None if dit is None else precision_dtype(dit, "DiT"),
            None if vae is None else precision_dtype(vae, "VAE"),
            None if text is None else precision_dtype(text, "text", TEXT_PRECISIONS),
        )

    def set_precision(
        self,
        dit: str | torch.dtype | None = None,
        *,
        vae: str | torch.dtype | None = None,
        text: str | torch.dtype | None = None,
    ) -> Pipeline:
        """Cast the model's parts to compute dtypes, in place; None leaves a part as it is.

        dit: "fp32", "bf16" (with the fp32 islands of training) or "fp16" (the engine's overflow guards keep it
        finite where the official fp16 path overflows); autoguidance's weaker model and a loaded adapter follow.
        vae: the decoder (and encoder): the official decodes in fp32; ``benchmarks/vae_precision.py`` measures
        what bf16 and fp16 cost. text: the T5 encoder, "fp32" or "bf16" (T5 overflows in fp16).
        All three are checked before anything is cast. Returns the pipeline."""
        dit_dtype, vae_dtype, text_dtype = self._check_precision(dit, vae, text)
        if text_dtype is not None and self.model.text_encoder is None:
            raise RuntimeError(f"model {self.cfg.name!r} has no text encoder loaded to cast to {text}")
        if dit_dtype is not None:
            for m in (self.model, self.bad_model):
                if m is not None:
                    m.dit.to(dit_dtype)
            if self.adapter is not None:
                self.adapter.to(dit_dtype)
        if vae_dtype is not None:
            self.model.vae.to(vae_dtype)
        if text_dtype is not None:
            self.model.text_encoder.to(text_dtype)
        return self

    @property
    def precision(self) -> dict[str, str | None]:
        """The compute dtype of each part by name: {"dit": ..., "vae": ..., "text": ...} (text None: no encoder)."""
        text = self.model.text_encoder
        return {
            "dit": precision_name(self.model.dit.dtype),
            "vae": precision_name(self.model.vae.dtype),
            "text": None if text is None else precision_name(next(text.parameters()).dtype),
        }

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "demo",
        *,
        device: str | torch.device | None = None,
        text_encoder_path: str | os.PathLike | None = None,
        **precision: str | torch.dtype | None,
    ) -> Pipeline:
        """A shipped trained model (``"demo"``, the default; loads offline), a preset name (random weights,
        seed 0) or a checkpoint file (ours or an official ETTA one). ``precision``: ``dtype``, ``vae_dtype``,
        ``text_dtype`` as for the constructor."""
        unknown = sorted(set(precision) - set(PRECISION_ARGS))
        if unknown:
            raise TypeError(f"unexpected arguments {unknown}; precision arguments: {', '.join(PRECISION_ARGS)}")
        cls._check_precision(*(precision.get(k) for k in PRECISION_ARGS))  # before loading
        if isinstance(name_or_path, str) and name_or_path in PRESETS and not is_pretrained(name_or_path):
            log.warning("preset %r has random weights: the output is noise-like, not a trained model's", name_or_path)
        return cls(load_model(name_or_path, text_encoder_path), device=device, **precision)

    @classmethod
    def from_adapter(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, **provider_options
    ) -> Pipeline:
        """The base model an adapter checkpoint names (checked against the sha256 it recorded), with the adapter."""
        from etta_engine.checkpoint import file_sha256, read_safetensors

        _, meta = read_safetensors(path)
        base, sha = meta.get("base"), meta.get("base_sha256", "")
        if not base:
            raise ValueError(f"{path} names no base model; build the Pipeline yourself and call load_adapter")
        pipe = cls.from_pretrained(base, device=device)
        source = PRETRAINED[base] if is_pretrained(base) else Path(base)
        if sha and source.is_file() and file_sha256(source) != sha:
            raise ValueError(f"{path} was trained on a base model {base} whose file has changed since (sha256 differs)")
        pipe.load_adapter(path, **provider_options)
        return pipe

    def load_adapter(
        self, path: str | os.PathLike, *, provider: EmbeddingProvider | None = None, **provider_options
    ) -> AudioAdapter:
        """Load an audio-prompt adapter for this pipeline's model (its LoRA, if any, is folded into the DiT's
        weights). ``provider``: the audio embedding provider (default: the one the adapter was trained with,
        built with ``provider_options``, e.g. ``checkpoint=`` for CLAP)."""
        from etta_engine.checkpoint import load_adapter

        if self.adapter is not None:
            raise RuntimeError("this pipeline already has an adapter; build a new Pipeline for another one")
        adapter, _ = load_adapter(path)
        adapter.cfg.check_dit(self.cfg.dit)
        provider = provider or get_provider(adapter.cfg.provider, self.model, **provider_options)
        if provider.dim != adapter.cfg.embed_dim:
            raise ValueError(
                f"the provider gives {provider.dim}-d embeddings; the adapter takes {adapter.cfg.embed_dim}-d ones"
            )
        adapter = adapter.to(self.device, self.model.dit.dtype).eval()
        adapter.fold_lora(self.model.dit)
        self.adapter, self.audio_provider = adapter, provider
        return adapter

    def audio_embedding(self, audio_prompt, sample_rate: int | None = None) -> torch.Tensor:
        """The embedding (B, dim) of an audio prompt: an embedding (dim,) or (B, dim) as is (a tensor of at most
        4 dim values per row is taken for one), or a clip (an
        :class:`Audio`, a file path, or a waveform (samples,), (channels, samples), (B, channels, samples) at
        ``sample_rate``, default the model's) through the provider."""
        if self.adapter is None:
            raise RuntimeError("audio prompts need an adapter: call pipe.load_adapter(path) first")
        dim = self.adapter.cfg.embed_dim
        if isinstance(audio_prompt, Audio):
            audio_prompt, sample_rate = audio_prompt.waveform, audio_prompt.sample_rate
        elif isinstance(audio_prompt, (str, os.PathLike)):
            channels = self.cfg.vae.audio_channels
            audio_prompt, sample_rate = load_audio(audio_prompt, self.cfg.sample_rate, channels), self.cfg.sample_rate
        x = torch.as_tensor(audio_prompt)
        # Rows of at most 4 dim values are embeddings: no provider accepts a clip that short.
        if x.ndim <= 2 and x.shape[-1] <= 4 * dim:
            embedding = x.reshape(1, -1) if x.ndim == 1 else x
            check_embedding(embedding, dim)
            return embedding.float()
        return self.audio_provider.embed(x, self.cfg.sample_rate if sample_rate is None else sample_rate)

    def latent_frames(self, seconds: float) -> int:
        """Latent frames for a clip of ``seconds`` (10 s at 44.1 kHz -> 215, as in ETTA)."""
        return max(1, round(seconds * self.cfg.latent_rate))

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        seconds: float | None = None,
        nfe: int = 100,
        solver: str = "euler",
        schedule: str = "uniform",
        cfg_scale: float = 3.5,
        cfg_rescale: float = 0.0,
        cfg_interval: tuple[float, float] | None = None,
        seed: int | Sequence[int] = 0,
        negative_prompt: str | None = None,
        init_audio: torch.Tensor | np.ndarray | None = None,
        init_sample_rate: int | None = None,
        strength: float = 1.0,
        keep: Sequence[tuple[float, float]] | None = None,
        autoguidance_scale: float | None = None,
        audio_prompt=None,
        audio_prompt_sample_rate: int | None = None,
        audio_prompt_scale: float = 1.0,
        decode_chunk_frames: int | None = 512,
        truncate: bool = False,
        padding: str = "max_length",
        progress: bool = True,
    ) -> Audio:
        """Generate one clip per prompt; item i uses ``seed + i`` (or ``seed[i]``) and equals a single
        generation of prompt i with that seed.

        seconds: clip length (default: the model's ``default_seconds``, the length it was trained on).
        init_audio: (samples,), (channels, samples) or (B, channels, samples) at ``init_sample_rate``
        (default: the model's; other rates are resampled; mono is duplicated for stereo models, stereo
        averaged for mono ones).
        strength: start the ODE at t = strength from the noised input (1: from pure noise).
        keep: [(start_s, end_s), ...] regions of the input kept as they are (continuation, inpainting).
        autoguidance_scale: guide the model with the pipeline's ``bad_model`` (each runs its own CFG).
        audio_prompt: a clip or an embedding (see :meth:`audio_embedding`), one for all prompts or one per
        prompt; ``audio_prompt_scale`` weighs it (0: the text-only model; the uncond half of CFG gets the null
        audio tokens).
        padding: "max_length" pads prompts to the text encoder's length (512 for etta, as the official code);
        "longest" to the batch's longest prompt, rounded up to 32 tokens: the same audio up to float rounding,
        with the text encoder, the prompt K/V and every step's cross-attention on tens of tokens.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; give at least one prompt")
        steps = steps_for(solver, nfe)
        seconds = self._check_seconds(seconds)
        if not cfg_scale >= 0:
            raise ValueError(f"cfg_scale={cfg_scale} must be >= 0")
        if init_audio is None and (strength != 1.0 or keep):
            raise ValueError("strength and keep need init_audio")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength={strength} is outside (0, 1]")
        if autoguidance_scale is not None and self.bad_model is None:
            raise ValueError("autoguidance_scale needs a Pipeline built with bad_model=...")
        B = len(prompts)
        seeds = [seed + i for i in range(B)] if isinstance(seed, int) else list(seed)
        if len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} prompts")
        audio = self._audio_prompt(audio_prompt, audio_prompt_sample_rate, audio_prompt_scale, B)

        T = self.latent_frames(seconds)
        # The engine hoists the per-generation work out of the loop; it needs the call times up front.
        times = None
        if self.use_engine and solver not in ADAPTIVE_SOLVERS:
            times = evaluation_times(solver, nfe, schedule, strength)
        guide = dict(scale=cfg_scale, rescale=cfg_rescale, interval=cfg_interval, times=times, padding=padding)
        args = (prompts, seconds, negative_prompt, truncate)
        velocity = self._guided_velocity(self.model, *args, **guide, audio=audio)
        if autoguidance_scale is not None:
            velocity = autoguidance(velocity, self._guided_velocity(self.bad_model, *args, **guide), autoguidance_scale)

        dtype = self.model.dit.dtype
        # Noise is drawn on the CPU from each item's own seed: the same on every device and batch size.
        noise = [torch.randn(self.cfg.dit.io_channels, T, generator=torch.Generator().manual_seed(s)) for s in seeds]
        noise = torch.stack(noise).to(self.device, dtype, non_blocking=True)  # (B, C, T)
        x, kept_audio, keep_samples = noise, None, None
        if init_audio is not None:
            kept_audio = self._prepare_init_audio(init_audio, init_sample_rate, B, T * self.cfg.vae.downsampling_ratio)
            mean, _ = self.model.vae.encode(kept_audio.to(self.model.vae.dtype))
            x0 = mean.to(dtype)  # (B, C, T): the posterior mean
            x = (1 - strength) * x0 + strength * noise
            if keep:
                keep_samples = self._keep_mask(keep, kept_audio.shape[-1], seconds)
                velocity = inpaint(velocity, x0, noise, self._frames_fully_inside(keep_samples, T))

        with _progress(steps or 0, progress, "sampling") as bar:
            result = sample_graphed(
                velocity,
                x,
                solver=solver,
                nfe=nfe,
                schedule=schedule,
                t_start=strength,
                callback=lambda i, _: bar.update(),
            )
        latents = result.x.to(self.model.vae.dtype)
        waveform = self.model.vae.decode(latents, chunk_frames=decode_chunk_frames, cuda_graph=self.cuda_graphs).float()
        if keep_samples is not None:
            waveform = _splice(waveform, kept_audio.float(), keep_samples, fade=self.cfg.sample_rate // 100)
        n_samples = min(waveform.shape[-1], round(seconds * self.cfg.sample_rate))
        return Audio(waveform[..., :n_samples].cpu(), self.cfg.sample_rate)

    def warmup(self, batch: int = 1, **options) -> int:
        """Run the generations that prepare a request's shape before serving it: on a CUDA device with CUDA
        graphs, the first generation of a shape (batch, length, solver, NFE, guidance) warms up (Triton
        compilation, cuBLAS workspaces) and the second captures, so that the next request is one replay. Takes
        ``generate``'s options (``seconds``, ``nfe``, ``solver``, ``cfg_scale``, ``padding``...) without the prompts
        (placeholders of its own: with ``padding="max_length"``, the default, every prompt has the same shape).
        Returns the number of generations run (2 where graphs are captured, else 1)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if "prompts" in options:
            raise TypeError("warmup takes no prompts: it generates from placeholders of the request's shape")
        runs = 2 if self.device.type == "cuda" and self.cuda_graphs is not False else 1
        for _ in range(runs):
            self.generate(["warm-up"] * batch, **{"progress": False, **options})
        return runs

    @torch.no_grad()
    def edit(self, audio, prompt: str, *, sample_rate: int | None = None, **options) -> Audio:
        """Edit a clip by ODE inversion: its latents run from t = 0 to t = ``strength`` under ``source_prompt``
        (default: ``prompt``; with CFG ``inversion_cfg_scale``), then back to t = 0 under ``prompt``.

        audio: one clip (an :class:`Audio`, (samples,) or (channels, samples) at ``sample_rate``, default the
        model's). ``options``: those of :meth:`edit_latents` (``strength``: how far towards noise the inversion
        goes; 1: all the way, lower keeps more of the input). With ``prompt == source_prompt`` and CFG 1 both ways
        the output reconstructs the input, up to the solver's error (which falls with ``nfe``) and the VAE's.
        """
        if isinstance(audio, Audio):
            audio, sample_rate = audio.waveform, audio.sample_rate
        x = torch.as_tensor(audio, dtype=torch.float32)
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        if x.ndim not in (1, 2):
            raise ValueError(f"edit takes one clip, (samples,) or (channels, samples); got shape {tuple(x.shape)}")
        rate = self.cfg.sample_rate if sample_rate is None else int(sample_rate)
        seconds = min(x.shape[-1] / rate, self.cfg.max_seconds)
        ratio = self.cfg.vae.downsampling_ratio
        if round(seconds * self.cfg.sample_rate) < ratio:
            raise ValueError(f"the clip is {seconds:.4f} s long; at least one latent frame ({ratio} samples) is needed")
        T = self.latent_frames(seconds)
        clip = self._prepare_init_audio(x, rate, 1, T * ratio)
        x0 = self.model.vae.encode(clip.to(self.model.vae.dtype))[0].to(self.model.dit.dtype)  # (1, C, T)
        x_edit = self.edit_latents(x0, prompt, seconds, **options)
        waveform = self.model.vae.decode(x_edit.to(self.model.vae.dtype), cuda_graph=self.cuda_graphs).float()
        return Audio(waveform[..., : round(seconds * self.cfg.sample_rate)].cpu(), self.cfg.sample_rate)

    @torch.no_grad()
    def edit_latents(
        self,
        x0: torch.Tensor,
        prompt: str,
        seconds: float,
        *,
        source_prompt: str | None = None,
        strength: float = 1.0,
        nfe: int = 50,
        solver: str = "euler",
        schedule: str = "uniform",
        cfg_scale: float = 3.5,
        inversion_cfg_scale: float = 1.0,
        truncate: bool = False,
        progress: bool = True,
        return_noise: bool = False,
    ):
        """:meth:`edit` on latents ``x0`` (B, C, T) of a clip of ``seconds``: the edited latents (and, with
        ``return_noise``, the inverted ones at t = ``strength`` too)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength={strength} is outside (0, 1]")
        if not (cfg_scale >= 0 and inversion_cfg_scale >= 0):
            raise ValueError(f"cfg_scale={cfg_scale} and inversion_cfg_scale={inversion_cfg_scale} must be >= 0")
        if solver not in INVERTIBLE_SOLVERS:
            raise ValueError(f"solver {solver!r} cannot run the inversion; choices: {list(INVERTIBLE_SOLVERS)}")
        steps = steps_for(solver, nfe)
        seconds = self._check_seconds(seconds)
        B = x0.shape[0]

        def velocity(text: str, scale: float, inverse: bool) -> VelocityFn:
            times = None
            if self.use_engine and solver not in ADAPTIVE_SOLVERS:
                times = evaluation_times(solver, nfe, schedule, strength, inverse=inverse)
            return self._guided_velocity(
                self.model, [text] * B, seconds, None, truncate, scale=scale, rescale=0.0, interval=None, times=times
            )

        source = prompt if source_prompt is None else source_prompt
        with _progress(2 * (steps or 0), progress, "editing") as bar:
            step = dict(solver=solver, nfe=nfe, schedule=schedule, callback=lambda i, _: bar.update())
            noise = invert(velocity(source, inversion_cfg_scale, True), x0, t_end=strength, **step).x
            x_edit = sample_graphed(velocity(prompt, cfg_scale, False), noise, t_start=strength, **step).x
        return (x_edit, noise) if return_noise else x_edit

    # ------------------------------------------------------------------ pieces of generate

    def _audio_prompt(self, audio_prompt, sample_rate, scale, B: int):
        """(tokens (B, N, Dc) of the prompt rows, scale) or None."""
        if audio_prompt is None:
            return None
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"audio_prompt_scale={scale} must be a finite number >= 0")
        embedding = self.audio_embedding(audio_prompt, sample_rate)
        if embedding.shape[0] not in (1, B):
            raise ValueError(f"got {embedding.shape[0]} audio prompts for {B} prompts; give 1 or {B}")
        embedding = embedding.expand(B, -1).to(self.device, self.adapter.null_tokens.dtype)
        return self.adapter.tokens(embedding), float(scale)

    def _check_seconds(self, seconds) -> float:
        if seconds is None:
            return self.cfg.default_seconds
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise TypeError(f"seconds must be a number, got {type(seconds).__name__}") from None
        if not 0 < value <= self.cfg.max_seconds:
            raise ValueError(f"seconds={seconds} is outside (0, {self.cfg.max_seconds:g}] (the model's limit)")
        return value

    def _engine(self, dit) -> DiTEngine:
        """The engine of ``dit``, kept between generations so that its captured CUDA graphs are reused."""
        engine = self._engines.get(id(dit))
        if engine is None or engine.dit is not dit or engine.cuda_graph != self.cuda_graphs:
            engine = self._engines[id(dit)] = DiTEngine(dit, cuda_graph=self.cuda_graphs)
        return engine

    def _guided_velocity(
        self,
        model: ETTAModel,
        prompts,
        seconds,
        negative_prompt,
        truncate,
        *,
        scale,
        rescale,
        interval,
        times=None,
        audio=None,
        padding="max_length",
    ) -> VelocityFn:
        """``model``'s velocity with classifier-free guidance, cond and uncond batched in one forward; prepared
        by the engine for calls at ``times`` (None: the plain model per call). ``audio``: (tokens, scale) of an
        audio prompt; the uncond rows get the adapter's null tokens."""
        dit = model.dit
        dtype = dit.dtype

        def velocity(c: DiTConditioning, tokens: torch.Tensor | None, zero_rows: range) -> VelocityFn:
            prompt = None if tokens is None else self.adapter.prompt(tokens, audio[1])
            if times is None:
                return lambda x, t: dit(x, t, *c, audio=prompt)
            # The rows given the null (zero) conditioning are known here: the engine need not look for them on
            # the device, so nothing waits for the GPU between the prompt and the decoded audio.
            return self._engine(dit).prepare(c, times, audio=prompt, zero_rows=zero_rows)

        tokens = None if audio is None else audio[0]
        encode = dict(truncate=truncate, padding=padding, cuda_graph=self.cuda_graphs)
        cond = model.condition(prompts, 0.0, seconds, **encode)
        cond = DiTConditioning(cond.context.to(dtype), cond.context_mask, cond.global_cond.to(dtype))
        B = len(prompts)
        if scale == 1.0 and interval is None:
            return velocity(cond, tokens, range(0))
        if negative_prompt is None:
            # The official null conditioning: a zero memory with the same mask; timestep and seconds kept.
            uncond = DiTConditioning(torch.zeros_like(cond.context), cond.context_mask, cond.global_cond)
        else:
            neg = model.condition([negative_prompt] * B, 0.0, seconds, **encode)
            cond, neg = _same_length(cond, neg)
            uncond = DiTConditioning(neg.context.to(dtype), neg.context_mask, cond.global_cond)
        both = DiTConditioning(*(torch.cat(pair) for pair in zip(cond, uncond, strict=True)))
        if tokens is not None:
            tokens = torch.cat((tokens, self.adapter.tokens(None, B).to(tokens.dtype)))
        zero_rows = range(B, 2 * B) if negative_prompt is None else range(0)
        return cfg(velocity(both, tokens, zero_rows), scale, rescale=rescale, interval=interval)

    def _prepare_init_audio(self, audio, sample_rate: int | None, B: int, n_samples: int) -> torch.Tensor:
        """``audio`` as (B, C, n_samples) float32 at the model's rate and channel count C (resampled, padded)."""
        rate = self.cfg.sample_rate if sample_rate is None else int(sample_rate)
        channels = self.cfg.vae.audio_channels
        x = as_batch(audio, rate, self.cfg.sample_rate, channels, name="init_audio", rate_name="init_sample_rate")
        if x.shape[0] not in (1, B):
            raise ValueError(
                f"init_audio must be (samples,), (channels, samples) or ({B} or 1, channels, samples), "
                f"got shape {tuple(torch.as_tensor(audio).shape)}"
            )
        x = x.expand(B, channels, -1)
        x = x[..., :n_samples]
        return torch.nn.functional.pad(x, (0, n_samples - x.shape[-1])).to(self.device, non_blocking=True)

    def _keep_mask(self, keep, n_samples: int, seconds: float) -> torch.Tensor:
        """A (n_samples,) bool mask of the regions to keep, checked against the clip."""
        sr = self.cfg.sample_rate
        mask = torch.zeros(n_samples, dtype=torch.bool)
        for region in keep:
            start, end = (float(v) for v in region)
            if not 0.0 <= start < end <= seconds:
                raise ValueError(f"keep region ({start}, {end}) must satisfy 0 <= start < end <= seconds={seconds}")
            mask[round(start * sr) : round(end * sr)] = True
        return mask.to(self.device, non_blocking=True)

    def _frames_fully_inside(self, keep_samples: torch.Tensor, T: int) -> torch.Tensor:
        """Latent frames (1, 1, T) whose whole span of samples lies inside the kept regions."""
        ratio = self.cfg.vae.downsampling_ratio
        return keep_samples[: T * ratio].view(T, ratio).all(dim=1).view(1, 1, T)


def _same_length(a: DiTConditioning, b: DiTConditioning) -> tuple[DiTConditioning, DiTConditioning]:
    """``a`` and ``b`` with the shorter memory padded at its end (zeros, masked) to the longer's length: exact,
    since the cross-attention gives masked tokens no weight and has no positions."""
    L = max(a.context.shape[1], b.context.shape[1])

    def pad(c: DiTConditioning) -> DiTConditioning:
        n = L - c.context.shape[1]
        return DiTConditioning(F.pad(c.context, (0, 0, 0, n)), F.pad(c.context_mask, (0, n)), c.global_cond)

    return pad(a), pad(b)


def _splice(generated: torch.Tensor, original: torch.Tensor, keep: torch.Tensor, fade: int) -> torch.Tensor:
    """The original audio inside ``keep`` exactly, cross-faded linearly over ``fade`` samples into the
    generated audio outside it (no click at the seams)."""
    n = min(generated.shape[-1], original.shape[-1])
    keep = keep[:n]
    idx = torch.arange(n, device=keep.device)
    big = 4 * n + fade + 1
    prev_kept = torch.where(keep, idx, -big).cummax(0).values  # last kept sample at or before i
    next_kept = torch.where(keep, idx, big).flip(0).cummin(0).values.flip(0)  # first kept sample at or after i
    distance = torch.minimum(idx - prev_kept, next_kept - idx)  # 0 inside the kept regions
    weight = (1.0 - distance / (fade + 1)).clamp(min=0.0).to(generated.dtype)
    out = generated.clone()
    out[..., :n] = weight * original[..., :n] + (1 - weight) * generated[..., :n]
    return out


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", leave=False)
