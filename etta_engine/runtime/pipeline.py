"""Text to waveform around exported graphs, with NumPy and ONNX Runtime (or TensorRT) only.

    pipe = RuntimePipeline("exported/")                    # the output of `etta export onnx`
    audio = pipe.generate(["rain on a tin roof"], seconds=10.0, nfe=100, cfg_scale=3.5, seed=0)
    audio.save("rain.wav")

It mirrors :class:`etta_engine.pipeline.Pipeline` (conditioning, classifier-free guidance with the official
null memory, the solvers and schedules, windowed VAE decoding, trimming) and, given the same initial noise,
produces the same audio within the tolerances in the tests. A seed gives NumPy's normal noise, not torch's:
pass ``noise`` to reproduce a torch generation exactly. Variations and inpainting need the VAE encoder,
which is not exported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from etta_engine._files import atomic_write
from etta_engine.runtime import sampling
from etta_engine.runtime.graph import Graph
from etta_engine.runtime.manifest import Manifest, ManifestError, read_manifest
from etta_engine.runtime.tokenizer import ByteTokenizer, JsonTokenizer

BACKENDS = ("onnxruntime", "tensorrt")


class Conditioning(NamedTuple):
    """The DiT's conditioning inputs (NumPy)."""

    context: np.ndarray  # (B, L + n_numbers, D) float32
    context_mask: np.ndarray  # (B, L + n_numbers) bool
    global_cond: np.ndarray  # (B, n_numbers * D) float32


@dataclass
class Audio:
    """Generated audio: ``waveform`` (B, channels, samples) float32, at ``sample_rate`` Hz."""

    waveform: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate

    def save(self, path: str | os.PathLike, index: int = 0, subtype: str = "PCM_16") -> Path:
        """Write item ``index`` as a WAV file, atomically; audio louder than full scale is peak-normalised."""
        try:
            import soundfile as sf
        except ImportError as e:
            raise ImportError("writing WAV files needs soundfile: pip install 'etta_engine[runtime]'") from e
        if not 0 <= index < self.waveform.shape[0]:
            raise IndexError(f"index={index} is outside [0, {self.waveform.shape[0] - 1}]")
        x = self.waveform[index].astype(np.float32)
        peak = float(np.abs(x).max()) if x.size else 0.0
        if not math.isfinite(peak):
            raise ValueError(f"audio item {index} contains NaN or inf; refusing to write {path}")
        if peak > 1.0:
            x = x / peak
        data = np.ascontiguousarray(x.T)  # (samples, channels)
        return atomic_write(path, lambda tmp: sf.write(tmp, data, self.sample_rate, subtype=subtype, format="WAV"))


def make_tokenizer(manifest: Manifest, directory: Path):
    spec = manifest.tokenizer
    L = manifest.config.text.max_length
    if spec is None:
        raise ManifestError(f"{directory}: the export has no tokenizer (it was exported without the conditioner)")
    if spec.get("kind") == "byt5":
        return ByteTokenizer(L)
    if spec.get("kind") == "tokenizers":
        return JsonTokenizer(directory / spec["file"], L, spec.get("pad_id", 0))
    raise ManifestError(f"{directory}: unknown tokenizer kind {spec.get('kind')!r}; known: 'byt5', 'tokenizers'")


class RuntimePipeline:
    """Text-to-audio generation from an export directory with ONNX Runtime or TensorRT; no PyTorch.

    Graphs load on first use, so an export without some graph still serves the others (an export without
    the conditioner takes precomputed :class:`Conditioning` in :meth:`sample`).

    ``cached``: run the DiT as the engine does, with the per-generation work (every adaLN output of the
    schedule, the prompt's cross-attention K/V) hoisted out of the solver's loop into ``dit_prepare`` and the
    uncond half's cross-attention skipped (``dit_cached``, ``dit_cfg_cached``; a negative prompt's uncond rows
    attend and run in ``dit_cached`` beside the cond rows). None (default): where the export holds those graphs;
    True: always; False: the plain ``dit``/``dit_cfg``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        backend: str = "onnxruntime",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        cached: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if cached not in (None, True, False):
            raise ValueError(f"cached={cached!r} must be None (where the export allows), True or False")
        self.cached = cached
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.cfg = self.manifest.config
        self.backend = backend
        self._options = {"providers": providers, "threads": threads}
        self._graphs: dict[str, Graph] = {}
        self.tokenizer = make_tokenizer(self.manifest, self.directory) if self.manifest.tokenizer else None

    def graph(self, name: str) -> Graph:
        """The runner of graph ``name`` (loaded once)."""
        if name not in self._graphs:
            if self.backend == "onnxruntime":
                from etta_engine.runtime.ort import OrtGraph

                self._graphs[name] = OrtGraph(self.directory, name, self.manifest, **self._options)
            else:
                from etta_engine.runtime.tensorrt import TensorRTGraph

                self._graphs[name] = TensorRTGraph(self.directory, name, self.manifest)
        return self._graphs[name]

    def latent_frames(self, seconds: float) -> int:
        """Latent frames for a clip of ``seconds`` (as :meth:`etta_engine.pipeline.Pipeline.latent_frames`)."""
        return max(1, round(seconds * self.cfg.latent_rate))

    # ------------------------------------------------------------------ stages

    def numbers(self, batch: int, **values: float | Sequence[float]) -> np.ndarray:
        """The number conditioners' inputs (B, n) in the order of ``config.number_keys``, range-checked."""
        keys = self.cfg.number_keys
        if set(values) != set(keys):
            raise ValueError(f"numbers must have exactly the keys {list(keys)}; got {sorted(values)}")
        columns = []
        for key in keys:
            v = np.asarray(values[key], dtype=np.float32)
            v = np.broadcast_to(v, (batch,)) if v.ndim == 0 else v
            if v.shape != (batch,):
                raise ValueError(f"{key} must be a number or have {batch} values (one per prompt), got shape {v.shape}")
            bad = ~np.isfinite(v) | (v < 0) | (v > self.cfg.max_seconds)
            if bad.any():
                raise ValueError(f"{key}={v[np.argmax(bad)]:g} is outside [0, {self.cfg.max_seconds:g}]")
            columns.append(v)
        return np.stack(columns, axis=1).astype(np.float32)  # (B, n)

    def encode(
        self,
        prompts: Sequence[str],
        *,
        seconds_start: float | Sequence[float] = 0.0,
        seconds_total: float | Sequence[float] = 10.0,
        truncate: bool = False,
        padding: str = "max_length",
    ) -> Conditioning:
        """Prompts and seconds -> the DiT's conditioning (the ``conditioner`` graph).

        padding="max_length" pads every prompt to the text encoder's length, as the official code does;
        "longest" pads to the longest prompt rounded up to 32 tokens (shorter cross-attention, the same result
        up to rounding).
        """
        if self.tokenizer is None:
            raise ManifestError(
                f"{self.directory} was exported without the conditioner; pass precomputed Conditioning to sample()"
            )
        ids, mask = self.tokenizer(prompts, truncate=truncate, padding=padding)
        numbers = self.numbers(len(ids), seconds_start=seconds_start, seconds_total=seconds_total)
        context, context_mask, global_cond = self.graph("conditioner")(
            input_ids=ids, attention_mask=mask, numbers=numbers
        )
        return Conditioning(context, context_mask, global_cond)

    def velocity_fn(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        *,
        cfg_scale: float = 3.5,
        cfg_rescale: float = 0.0,
        cfg_interval: tuple[float, float] | None = None,
        times: np.ndarray | None = None,
    ) -> sampling.VelocityFn:
        """The (guided) velocity ``v(x, t)``: the ``dit`` graph, or ``dit_cfg`` where guidance applies.

        As :func:`etta_engine.sampling.cfg`: guidance within ``cfg_interval`` only (elsewhere the conditional
        velocity, from the cheaper ``dit`` graph); ``uncond`` None means the official null memory (zeros, the
        cond mask) and an uncond from a negative prompt keeps the cond's global conditioning.

        ``times``: the solver's evaluation times (:func:`etta_engine.runtime.sampling.evaluation_times`). Given,
        and where the pipeline uses the cached graphs (``cached``), the per-generation work runs once in
        ``dit_prepare`` and each call runs ``dit_cached`` or ``dit_cfg_cached``; the function then serves one
        solve at exactly these times.
        """
        if not cfg_scale >= 0:
            raise ValueError(f"cfg_scale={cfg_scale} must be >= 0")
        if not 0.0 <= cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale={cfg_rescale} is outside [0, 1]")
        if cfg_interval is not None and not 0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0:
            raise ValueError(f"cfg_interval={cfg_interval} must satisfy 0 <= t_lo <= t_hi <= 1")
        B = cond.context.shape[0]
        guide = not (cfg_scale == 1.0 and cfg_interval is None)
        if guide and uncond is not None and uncond.context.shape != cond.context.shape:
            raise ValueError(
                f"the uncond context {uncond.context.shape} must have the shape of the cond context "
                f"{cond.context.shape} (tokenize both with the same padding)"
            )
        guidance = {
            "cfg_scale": np.full(B, cfg_scale, dtype=np.float32),
            "cfg_rescale": np.full(B, cfg_rescale, dtype=np.float32),
        }
        if times is not None and self.uses_cached(guide=guide, plain=not guide or cfg_interval is not None,
                                                  negative=uncond is not None):  # fmt: skip
            times = np.asarray(times, dtype=np.float32)
            plain, guided = _CachedSteps(self, cond, uncond if guide else None, times, guidance).functions()
        else:
            plain, guided = self._plain_steps(cond, uncond, guidance)
        if not guide:
            return plain
        if cfg_interval is None:
            return guided
        lo, hi = cfg_interval

        def interval(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            inside = (t >= lo) & (t <= hi)  # (B,); t is one value per step, decided on the host
            if inside.all():
                return guided(x, t)
            if not inside.any():
                return plain(x, t)
            return np.where(inside[:, None, None], guided(x, t), plain(x, t))

        return interval

    def uses_cached(self, *, guide: bool = True, plain: bool = False, negative: bool = False) -> bool:
        """Whether a generation runs the cached graphs: ``dit_prepare`` and the step graphs it needs, the guided
        one where it ``guide``-s with the null memory, the plain one where it calls the plain velocity or
        guides with a ``negative`` prompt (whose uncond rows attend: both halves run in it, 2B rows, and the
        guidance is combined here). ``cached`` None: where the export holds them; True: always (an error where
        it does not); False: never."""
        needed = ["dit_prepare"]
        needed += ["dit_cfg_cached"] if guide and not negative else []
        needed += ["dit_cached"] if plain or (guide and negative) else []
        missing = [g for g in needed if g not in self.manifest.graphs]
        if self.cached and missing:
            raise ManifestError(f"{self.directory} has no cached graphs {missing} (cached=True); re-export it")
        return not missing if self.cached is None else self.cached

    def _plain_steps(self, cond: Conditioning, uncond: Conditioning | None, guidance: dict):
        """The velocity by the plain graphs, (conditional, guided); each graph is bound at its first use (an
        export may hold only one), so that a step sends only x and t."""
        bound = {}
        if uncond is None:
            uncond = Conditioning(np.zeros_like(cond.context), cond.context_mask, cond.global_cond)
        fixed = {
            "dit": dict(context=cond.context, context_mask=cond.context_mask, global_cond=cond.global_cond),
            "dit_cfg": dict(
                context=cond.context,
                context_mask=cond.context_mask,
                uncond_context=uncond.context,
                uncond_context_mask=uncond.context_mask,
                global_cond=cond.global_cond,
                **guidance,
            ),
        }

        def run(name: str, x: np.ndarray, t: np.ndarray) -> np.ndarray:
            if name not in bound:
                bound[name] = self.graph(name).bind(**fixed[name])
            (v,) = bound[name](x=x, t=t)
            return v

        return partial(run, "dit"), partial(run, "dit_cfg")

    def sample(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        noise: np.ndarray,
        *,
        nfe: int = 100,
        solver: str = "euler",
        schedule: str = "uniform",
        cfg_scale: float = 3.5,
        cfg_rescale: float = 0.0,
        cfg_interval: tuple[float, float] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Latents (B, C, T) from ``noise`` (B, C, T): the ODE from t = 1 to 0 with the (guided) velocity."""
        steps = sampling.steps_for(solver, nfe)
        velocity = self.velocity_fn(
            cond,
            uncond,
            cfg_scale=cfg_scale,
            cfg_rescale=cfg_rescale,
            cfg_interval=cfg_interval,
            times=sampling.evaluation_times(solver, nfe, schedule),
        )
        with _progress(steps, progress) as bar:
            result = sampling.sample(
                velocity,
                np.asarray(noise, dtype=np.float32),
                solver=solver,
                nfe=nfe,
                schedule=schedule,
                callback=lambda i, _: bar.update(),
            )
        return result.x

    def decode(self, latents: np.ndarray, *, chunk_frames: int | None = 512, overlap_frames: int = 32) -> np.ndarray:
        """latents (B, C, T) -> audio (B, audio_channels, T x ratio), in overlapping windows as
        :meth:`etta_engine.models.vae.VAE.decode` (windows never exceed the graph's frame limit)."""
        vae = self.graph("vae_decoder")
        T = latents.shape[2]
        limit = vae.ranges.get("frames", (1, None))[1]
        if limit is not None:
            chunk_frames = limit if chunk_frames is None else min(chunk_frames, limit)
        if chunk_frames is None or T <= chunk_frames:
            return vae(latents=latents)[0]
        hop = chunk_frames - 2 * overlap_frames
        if overlap_frames < 0 or hop < 1:
            raise ValueError(
                f"chunk_frames={chunk_frames} must exceed 2 * overlap_frames={2 * overlap_frames} (overlap >= 0)"
            )
        r = self.cfg.vae.downsampling_ratio
        out = None
        for start in range(0, T, hop):
            end = min(start + hop, T)
            lo, hi = max(0, start - overlap_frames), min(T, end + overlap_frames)
            audio = vae(latents=np.ascontiguousarray(latents[..., lo:hi]))[0]  # (B, C, (hi - lo) r)
            if out is None:
                out = np.empty((audio.shape[0], audio.shape[1], T * r), dtype=audio.dtype)
            out[..., start * r : end * r] = audio[..., (start - lo) * r : (end - lo) * r]
        return out

    def noise(self, seeds: Sequence[int], frames: int) -> np.ndarray:
        """Initial noise (B, C, frames) fp32, item i from NumPy's generator seeded with ``seeds[i]``."""
        C = self.cfg.dit.io_channels
        return np.stack([np.random.default_rng(s).standard_normal((C, frames), dtype=np.float32) for s in seeds])

    # ------------------------------------------------------------------ text -> audio

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
        noise: np.ndarray | None = None,
        negative_prompt: str | None = None,
        decode_chunk_frames: int | None = 512,
        truncate: bool = False,
        padding: str = "max_length",
        progress: bool = True,
    ) -> Audio:
        """One clip per prompt (the arguments of :meth:`etta_engine.pipeline.Pipeline.generate` that need no
        VAE encoder). ``seconds`` defaults to the model's ``default_seconds``; ``noise`` (B, C, frames) replaces
        the seeded noise."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty; give at least one prompt")
        sampling.steps_for(solver, nfe)  # bad solver or budget: an error before any work
        seconds = self._check_seconds(self.cfg.default_seconds if seconds is None else seconds)
        B, T = len(prompts), self.latent_frames(seconds)
        if noise is None:
            seeds = [seed + i for i in range(B)] if isinstance(seed, int) else list(seed)
            if len(seeds) != B:
                raise ValueError(f"got {len(seeds)} seeds for {B} prompts")
            noise = self.noise(seeds, T)
        expected = (B, self.cfg.dit.io_channels, T)
        if not isinstance(noise, np.ndarray) or noise.shape != expected:
            raise ValueError(f"noise must be a numpy array of shape {expected}, got {getattr(noise, 'shape', noise)}")

        texts = prompts if negative_prompt is None else [*prompts, negative_prompt]
        both = self.encode(texts, seconds_start=0.0, seconds_total=seconds, truncate=truncate, padding=padding)
        cond = Conditioning(*(a[:B] for a in both))
        uncond = None
        if negative_prompt is not None:  # the negative prompt's memory and mask, the cond's global conditioning
            neg = [np.repeat(a[B:], B, axis=0) for a in both]
            uncond = Conditioning(neg[0], neg[1], cond.global_cond)
        latents = self.sample(
            cond,
            uncond,
            noise,
            nfe=nfe,
            solver=solver,
            schedule=schedule,
            cfg_scale=cfg_scale,
            cfg_rescale=cfg_rescale,
            cfg_interval=cfg_interval,
            progress=progress,
        )
        waveform = self.decode(latents, chunk_frames=decode_chunk_frames)
        n_samples = min(waveform.shape[-1], round(seconds * self.cfg.sample_rate))
        return Audio(np.ascontiguousarray(waveform[..., :n_samples], dtype=np.float32), self.cfg.sample_rate)

    def _check_seconds(self, seconds) -> float:
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise TypeError(f"seconds must be a number, got {type(seconds).__name__}") from None
        if not 0 < value <= self.cfg.max_seconds:
            raise ValueError(f"seconds={seconds} is outside (0, {self.cfg.max_seconds:g}] (the model's limit)")
        return value


class _CachedSteps:
    """The velocity of one solve by the cached graphs: ``dit_prepare`` once (here), then call ``k`` of the solve
    runs a step graph on row ``k`` of the tables, bound at its first use (the tables stay where the graph runs).

    ``uncond``: a negative prompt's conditioning; its rows attend, so cond and uncond run together in
    ``dit_cached`` (2B rows, tables of both) and the guidance of :func:`etta_engine.sampling.cfg` is combined here.
    """

    def __init__(
        self, pipe: RuntimePipeline, cond: Conditioning, uncond: Conditioning | None, times: np.ndarray, guidance: dict
    ) -> None:
        if times.ndim != 1 or times.size == 0 or not np.all((times >= 0) & (times <= 1)):
            raise ValueError(f"times must be a non-empty 1-D array in [0, 1], got {times}")
        rows = cond if uncond is None else Conditioning(*(np.concatenate(p) for p in zip(cond, uncond, strict=True)))
        # Left where dit_prepare ran (ONNX Runtime): bound to the step graphs without a trip through the host.
        modulation, final, kv = pipe.graph("dit_prepare").run_resident(
            times=times, context=rows.context, global_cond=rows.global_cond
        )
        tables = dict(modulation=modulation, final_modulation=final, kv=kv, context_mask=rows.context_mask)
        self.fixed = {"dit_cached": tables, "dit_cfg_cached": {**tables, **guidance}}
        self.pipe, self.times, self.calls, self.bound = pipe, times, 0, {}
        self.negative = uncond is not None
        self.scale, self.rescale = float(guidance["cfg_scale"][0]), float(guidance["cfg_rescale"][0])

    def functions(self):
        """(conditional, guided) velocity functions; they share the call counter."""
        if not self.negative:
            return partial(self.run, "dit_cached"), partial(self.run, "dit_cfg_cached")

        def both(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            return self.run("dit_cached", np.concatenate((x, x)), np.concatenate((t, t)))  # (2B, C, T)

        def plain(x: np.ndarray, t: np.ndarray) -> np.ndarray:  # outside a cfg_interval: the cond half
            return both(x, t)[: len(x)]

        def guided(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            v = both(x, t)
            v_cond, v_uncond = v[: len(x)], v[len(x) :]
            g = v_uncond + np.float32(self.scale) * (v_cond - v_uncond)
            if self.rescale > 0:
                ratio = v_cond.std(axis=1, ddof=1, keepdims=True) / g.std(axis=1, ddof=1, keepdims=True)
                g = np.float32(self.rescale) * (g * ratio) + np.float32(1 - self.rescale) * g
            return g

        return plain, guided

    def run(self, name: str, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        k = self.calls
        if k >= len(self.times) or not np.all(t == self.times[k]):
            raise RuntimeError(
                f"velocity call {k} at t={t.tolist()}, but the DiT was prepared for the calls at "
                f"t={self.times.tolist()}: prepare each solve with its solver's evaluation_times"
            )
        self.calls += 1
        if name not in self.bound:
            self.bound[name] = self.pipe.graph(name).bind(**self.fixed[name])
        (v,) = self.bound[name](x=x, step=np.array([k], dtype=np.int64))
        return v


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="sampling", unit="step", leave=False)
