"""A synthetic sound-event dataset whose every clip is described exactly by its caption.

    spec = sample_clip(np.random.default_rng([seed, i]))   # what clip i holds (one or two events)
    audio = render(spec, np.random.default_rng(...))        # (samples,) float32 at SAMPLE_RATE
    caption = describe(spec, rng)                           # "a low beep followed by white noise"

Sounds: tones and beeps (sine, square or sawtooth, band-limited), white and pink noise, rising and
falling chirps (exponential sweeps), pulse trains (slow or fast), with pitch (low / medium / high),
loudness (quiet / normal / loud), fade-in or fade-out, and two-event sequences. Clip i of a dataset is
drawn from a generator seeded with (seed, i) alone, so it does not depend on how many clips are made.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000
SECONDS = 2.0

KINDS = ("tone", "beep", "noise", "chirp", "pulses")
PITCHES = ("low", "medium", "high")
WAVEFORMS = ("sine", "square", "sawtooth")
COLORS = ("white", "pink")
DIRECTIONS = ("rising", "falling")
RATES = ("slow", "fast")
LOUDNESS = ("quiet", "normal", "loud")
FADES = ("none", "in", "out")

# Fundamental-frequency bands (Hz) of the pitch words, log-uniform inside; the gaps between them keep
# the words unambiguous. The analyzer's boundaries are the geometric midpoints of the gaps. Every pitched
# sound stays below 800 Hz, and the third harmonic of a named waveform below 1 kHz: the demo VAE, trained on
# CPU in under an hour, renders tones up to about 650 Hz and nothing above 900 Hz (scripts/train_demo.py).
PITCH_BANDS = {"low": (90.0, 145.0), "medium": (200.0, 320.0), "high": (440.0, 700.0)}
# Chirp end points (Hz): a sweep between a low start and a high end (rising) or the reverse (falling).
CHIRP_LOW, CHIRP_HIGH = (100.0, 150.0), (500.0, 750.0)
PULSE_RATES = {"slow": (2.5, 3.5), "fast": (7.0, 9.0)}  # pulses per second
LEVELS_DB = {"quiet": -32.0, "normal": -22.0, "loud": -12.0}  # RMS of the sounding part, dBFS, +-LEVEL_JITTER
LEVEL_JITTER_DB = 2.0
BEEP_SECONDS = (0.15, 0.3)
SINGLE_SECONDS = (1.0, 1.6)  # tones, noise, chirps, pulse trains on their own
SEQUENCE_SECONDS = (0.6, 0.8)  # the same, as one of two events


@dataclass(frozen=True)
class Event:
    """One sound event. Attributes that do not apply to ``kind`` are None (pitch and waveform: tone, beep,
    pulses; color: noise; direction: chirp; rate: pulses). ``start``/``duration`` in seconds, ``freq`` the
    fundamental (Hz) of tones, beeps and pulses."""

    kind: str
    start: float
    duration: float
    loudness: str = "normal"
    fade: str = "none"
    pitch: str | None = None
    waveform: str | None = None
    color: str | None = None
    direction: str | None = None
    rate: str | None = None
    freq: float | None = None
    level_db: float = LEVELS_DB["normal"]
    mention_waveform: bool = False  # whether the caption names the waveform

    def __post_init__(self) -> None:
        allowed = {
            "kind": KINDS,
            "loudness": LOUDNESS,
            "fade": FADES,
            "pitch": (None, *PITCHES),
            "waveform": (None, *WAVEFORMS),
            "color": (None, *COLORS),
            "direction": (None, *DIRECTIONS),
            "rate": (None, *RATES),
        }
        for name, choices in allowed.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Event: {name}={getattr(self, name)!r} is not one of {choices}")
        if not (self.start >= 0 and self.duration > 0 and self.start + self.duration <= SECONDS):
            raise ValueError(
                f"Event: start={self.start} s, duration={self.duration} s must lie inside [0, {SECONDS}] s"
            )


@dataclass(frozen=True)
class ClipSpec:
    """One clip: one event, or two in sequence (the caption joins them with "followed by" or "then")."""

    events: tuple[Event, ...]
    joiner: str = " followed by "


# ---------------------------------------------------------------------------------------------- sampling


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sample_event(rng: np.random.Generator, kind: str, start: float, duration: float, single: bool) -> Event:
    """An event of ``kind`` at [start, start + duration) with its attributes drawn from ``rng``."""
    fields: dict = {"kind": kind, "start": start, "duration": duration}
    if kind in ("tone", "beep", "pulses"):
        pitch = PITCHES[rng.integers(3)]
        waveform = WAVEFORMS[rng.integers(3)]
        # The waveform is audible (harmonics below Nyquist) and named only for low and medium pitches.
        mention = pitch != "high" and rng.random() < 0.5
        fields |= {"pitch": pitch, "waveform": waveform, "mention_waveform": bool(mention)}
        fields["freq"] = _log_uniform(rng, *PITCH_BANDS[pitch])
    if kind == "noise":
        fields["color"] = COLORS[rng.integers(2)]
    if kind == "chirp":
        fields["direction"] = DIRECTIONS[rng.integers(2)]
    if kind == "pulses":
        fields["rate"] = RATES[rng.integers(2)]
    loudness = "normal"
    if single:
        loudness = ("quiet", "normal", "normal", "normal", "loud")[rng.integers(5)]
        if kind in ("tone", "noise") and rng.random() < 0.4:
            fields["fade"] = ("in", "out")[rng.integers(2)]
    fields["loudness"] = loudness
    fields["level_db"] = LEVELS_DB[loudness] + float(rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB))
    return Event(**fields)


def _duration(rng: np.random.Generator, kind: str, single: bool) -> float:
    if kind == "beep":
        return float(rng.uniform(*BEEP_SECONDS))
    return float(rng.uniform(*(SINGLE_SECONDS if single else SEQUENCE_SECONDS)))


def sample_clip(rng: np.random.Generator, sequence_probability: float = 0.35) -> ClipSpec:
    """A random clip: with ``sequence_probability`` two distinct events (no pulse trains, no fades, normal
    loudness), otherwise one event of any kind."""
    if not 0.0 <= sequence_probability <= 1.0:
        raise ValueError(f"sequence_probability={sequence_probability} is outside [0, 1]")
    if rng.random() >= sequence_probability:
        kind = ("tone", "beep", "noise", "chirp", "pulses")[rng.choice(5, p=[0.22, 0.2, 0.2, 0.2, 0.18])]
        duration = _duration(rng, kind, single=True)
        latest = 1.2 if kind == "beep" else min(0.3, SECONDS - 0.05 - duration)
        start = float(rng.uniform(0.05, latest))
        return ClipSpec((_sample_event(rng, kind, start, duration, single=True),))
    kinds = ("tone", "beep", "noise", "chirp")
    while True:
        a_kind, b_kind = kinds[rng.integers(4)], kinds[rng.integers(4)]
        d_a, d_b = _duration(rng, a_kind, single=False), _duration(rng, b_kind, single=False)
        a = _sample_event(rng, a_kind, float(rng.uniform(0.05, 0.2)), d_a, single=False)
        b = _sample_event(rng, b_kind, float(rng.uniform(1.0, 1.15)), d_b, single=False)
        if _words(a) != _words(b):  # two events the caption can tell apart
            joiner = (" followed by ", " followed by ", ", then ")[rng.integers(3)]
            return ClipSpec((a, b), joiner)


def _words(e: Event) -> tuple:
    """The attributes that tell two events of a sequence apart (the waveform is not enough)."""
    return (e.kind, e.pitch, e.color, e.direction, e.rate)


# ---------------------------------------------------------------------------------------------- rendering


def _band_limited(kind: str, phase: np.ndarray, freq: float | np.ndarray, sample_rate: int) -> np.ndarray:
    """Sine, square or sawtooth of instantaneous phase ``phase`` (radians), summed from the harmonics that
    stay below 0.45 * sample_rate (no aliasing). Square: (4/pi) sum_odd sin(k p)/k; saw: (2/pi) sum (-1)^(k+1)
    sin(k p)/k."""
    if kind == "sine":
        return np.sin(phase)
    top = float(np.max(freq))
    n = max(1, int(0.45 * sample_rate / top))
    out = np.zeros_like(phase)
    for k in range(1, n + 1):
        if kind == "square" and k % 2 == 0:
            continue
        sign = 1.0 if kind == "square" or k % 2 == 1 else -1.0
        out += sign * np.sin(k * phase) / k
    return out * (4 / math.pi if kind == "square" else 2 / math.pi)


def _edges(n: int, ramp: int) -> np.ndarray:
    """A (n,) envelope of ones with raised-cosine ramps of ``ramp`` samples at both ends (no clicks)."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        env[:ramp], env[n - ramp :] = r, r[::-1]
    return env


def _pink(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Noise with power spectral density proportional to 1/f above 20 Hz (amplitude 1/sqrt(f))."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum *= 1.0 / np.sqrt(np.maximum(f, 20.0))
    return np.fft.irfft(spectrum, n)


def render_event(e: Event, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The event's samples (round(duration * sample_rate),), scaled so that the RMS of its sounding part
    (envelope above 0.1) is ``e.level_db`` dBFS."""
    n = round(e.duration * sample_rate)
    t = np.arange(n) / sample_rate
    if e.kind in ("tone", "beep"):
        phase = 2 * math.pi * e.freq * t + rng.uniform(0, 2 * math.pi)
        x = _band_limited(e.waveform, phase, e.freq, sample_rate)
        env = _edges(n, round((0.003 if e.kind == "beep" else 0.01) * sample_rate))
    elif e.kind == "noise":
        x = rng.standard_normal(n) if e.color == "white" else _pink(rng, n, sample_rate)
        env = _edges(n, round(0.01 * sample_rate))
    elif e.kind == "chirp":
        lo, hi = _log_uniform(rng, *CHIRP_LOW), _log_uniform(rng, *CHIRP_HIGH)
        f0, f1 = (lo, hi) if e.direction == "rising" else (hi, lo)
        k = math.log(f1 / f0) / e.duration  # f(t) = f0 exp(k t)
        phase = 2 * math.pi * f0 * (np.exp(k * t) - 1.0) / k
        x = np.sin(phase)
        env = _edges(n, round(0.01 * sample_rate))
    else:  # pulses: short beeps every 1 / rate seconds
        rate = rng.uniform(*PULSE_RATES[e.rate])
        width = round((0.06 if e.rate == "slow" else 0.04) * sample_rate)
        phase = 2 * math.pi * e.freq * t + rng.uniform(0, 2 * math.pi)
        x = _band_limited(e.waveform, phase, e.freq, sample_rate)
        env = np.zeros(n)
        for start in np.arange(0.0, e.duration, 1.0 / rate):
            i = round(start * sample_rate)
            m = min(width, n - i)
            env[i : i + m] = _edges(m, round(0.004 * sample_rate))
    if e.fade == "in":
        env = env * np.linspace(0.0, 1.0, n)
    elif e.fade == "out":
        env = env * np.linspace(1.0, 0.0, n)
    sounding = env > 0.1 * env.max()
    x = x * env
    rms = math.sqrt(float(np.mean(x[sounding] ** 2)))
    return x * (10 ** (e.level_db / 20) / rms)


def render(spec: ClipSpec, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip (round(SECONDS * sample_rate),) float32 in [-1, 1]: its events placed on silence."""
    out = np.zeros(round(SECONDS * sample_rate))
    for e in spec.events:
        x = render_event(e, rng, sample_rate)
        i = round(e.start * sample_rate)
        out[i : i + len(x)] += x[: len(out) - i]
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- captions

PITCH_WORDS = {"low": ("low", "low-pitched"), "medium": ("medium", "mid-pitched"), "high": ("high", "high-pitched")}
WAVEFORM_WORDS = {"sine": ("sine", "pure"), "square": ("square-wave",), "sawtooth": ("sawtooth",)}
LOUDNESS_WORDS = {"quiet": ("quiet", "soft"), "loud": ("loud",)}
FADE_WORDS = {"in": (" fading in", " that fades in"), "out": (" fading out", " that fades out")}
RATE_WORDS = {"slow": ("slow",), "fast": ("fast", "rapid")}
RATE_ADVERBS = {"slow": "slowly", "fast": "quickly"}


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def describe_event(e: Event, rng: np.random.Generator) -> str:
    """A caption phrase for one event, from templates with paraphrases."""
    loud = [_pick(rng, LOUDNESS_WORDS[e.loudness])] if e.loudness != "normal" else []
    fade = _pick(rng, FADE_WORDS[e.fade]) if e.fade != "none" else ""
    pitch = _pick(rng, PITCH_WORDS[e.pitch]) if e.pitch else ""
    wave = [_pick(rng, WAVEFORM_WORDS[e.waveform])] if e.mention_waveform else []
    if e.kind in ("tone", "beep"):
        noun = _pick(rng, ("tone", "steady tone", "sustained tone") if e.kind == "tone" else ("beep", "short beep"))
        return _article(" ".join([*loud, pitch, *wave, noun])) + fade
    if e.kind == "noise":
        template = _pick(rng, ("{L}{c} noise", "a {L}burst of {c} noise", "{L}{c} noise hiss"))
        return template.format(L="".join(w + " " for w in loud), c=e.color) + fade
    if e.kind == "chirp":
        template = _pick(rng, ("{d} chirp", "{d} sweep", "{d} tone", "chirp {d} in pitch", "sweep {d} in pitch"))
        return _article(" ".join([*loud, template.format(d=e.direction)]))
    rate = _pick(rng, RATE_WORDS[e.rate])
    beeps = " ".join([pitch, *wave, "beeps"])
    template = _pick(rng, ("{r} pulse train of {b}", "{r} repeated {b}", "{L}{b} repeating {adv}"))
    text = template.format(
        r=" ".join([*loud, rate]), b=beeps, L="".join(w + " " for w in loud), adv=RATE_ADVERBS[e.rate]
    )
    return _article(text) if "pulse train" in template else text


def describe(spec: ClipSpec, rng: np.random.Generator) -> str:
    """The clip's caption: its events' phrases joined by the clip's joiner."""
    return spec.joiner.join(describe_event(e, rng) for e in spec.events)


# ---------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Example:
    """Clip i of a dataset: its spec, caption and audio."""

    spec: ClipSpec
    caption: str
    audio: np.ndarray


def make_example(seed: int, index: int, sample_rate: int = SAMPLE_RATE) -> Example:
    """Clip ``index`` of the dataset with ``seed``: drawn from a generator seeded by (seed, index) alone."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index={index!r} must be an integer >= 0")
    rng = np.random.default_rng([seed, index])
    spec = sample_clip(rng)
    caption = describe(spec, rng)
    return Example(spec, caption, render(spec, rng, sample_rate))


def without_waveform_mention(spec: ClipSpec) -> ClipSpec:
    """The same clip with no waveform named (for prompt sets about pitch and kind only)."""
    return replace(spec, events=tuple(replace(e, mention_waveform=False) for e in spec.events))


def generate_dataset(out: str | Path, n: int, seed: int = 0, progress: bool = True) -> Path:
    """Write clips 0..n-1 as 16-bit mono WAVs under ``out/audio`` and the manifest ``out/train.jsonl``
    ({"path", "caption"} per line, the format of :func:`etta_engine.data.read_manifest`); ``out/specs.jsonl``
    holds every clip's exact attributes. Returns the manifest's path."""
    import soundfile as sf
    from tqdm.auto import tqdm

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    manifest, specs = [], []
    for i in tqdm(range(n), disable=not progress, desc="synthesising", unit="clip"):
        ex = make_example(seed, i)
        name = f"audio/clip_{i:06d}.wav"
        sf.write(out / name, ex.audio, SAMPLE_RATE, subtype="PCM_16")
        manifest.append(json.dumps({"path": name, "caption": ex.caption}))
        specs.append(json.dumps({"index": i, "caption": ex.caption, "events": [e.__dict__ for e in ex.spec.events]}))
    (out / "specs.jsonl").write_text("\n".join(specs) + "\n")
    path = out / "train.jsonl"
    path.write_text("\n".join(manifest) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the synthetic sound-event dataset of the demo model")
    parser.add_argument("out", help="output directory (audio/, train.jsonl, specs.jsonl)")
    parser.add_argument("--n", type=int, default=8000, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    path = generate_dataset(args.out, args.n, args.seed, progress=not args.quiet)
    print(f"wrote {path} ({args.n} clips, {SAMPLE_RATE} Hz, {SECONDS} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
