"""Measure the attributes of the demo's sound events from audio, and score a clip against its caption.

    result = score(audio, sample_rate, "a low beep followed by white noise")
    result.score                      # fraction of the caption's attributes the audio has (prompt adherence)
    result.checks["second.color"]     # Check(expected="white", measured="white", ok=True)

Measurements (numpy only), on the mono mix:

- activity: frames (16 ms, hop 10 ms) whose RMS is within ``ACTIVE_RANGE_DB`` of the loudest frame and above
  ``FLOOR_DB`` dBFS; runs of active frames closer than 30 ms are merged.
- events: a caption with two events splits the active span at the middle of its longest interior silence
  (or at the span's middle when there is none); each part is measured on its own.
- dominant frequency: per frame of a 64 ms Hann STFT, the peak bin in [60, 3900] Hz refined by parabolic
  interpolation of the log power; the median over active frames. Pitch words: the boundaries are the
  geometric middles of the gaps between the generator's bands (``PITCH_EDGES_HZ``, about 170 and 375 Hz).
- spectral flatness: geometric over arithmetic mean of the active frames' mean power spectrum in
  [100, 3500] Hz (1 for white noise, near 0 for a tone); spectral slope: the least-squares slope of that
  spectrum in dB per decade (0 white, -10 pink).
- sweep: least-squares slope of log2(peak frequency) against time, octaves per second (chirp direction).
- loudness: RMS of the active frames in dBFS; fade: mean power of the last third of the active span over
  the first third, in dB.
- onset rate: (active runs - 1) / span seconds (pulse trains).
- waveform: power at 2 f0 and 3 f0 relative to f0 (sawtooth has both, square only odd harmonics).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from etta_engine.demo.synth import COLORS, DIRECTIONS, FADES, KINDS, LOUDNESS, PITCH_BANDS, PITCHES, RATES, WAVEFORMS

ACTIVE_RANGE_DB = 30.0
FLOOR_DB = -55.0
# low | medium | high: the geometric middles of the gaps between the generator's bands
PITCH_EDGES_HZ = tuple(math.sqrt(PITCH_BANDS[a][1] * PITCH_BANDS[b][0]) for a, b in itertools.pairwise(PITCHES))
NOISE_FLATNESS = 0.3  # above: noise
PINK_SLOPE_DB_PER_DECADE = -5.0  # below: pink
CHIRP_OCTAVES_PER_S = 0.7  # |sweep| above: chirp
BEEP_MAX_SECONDS = 0.45  # shorter single runs are beeps, longer ones tones
FAST_ONSETS_PER_S = 5.0
LOUDNESS_EDGES_DB = (-27.0, -17.0)  # quiet | normal | loud
FADE_DB = 6.0
ENV_WINDOW, ENV_HOP = 0.016, 0.010  # seconds
STFT_WINDOW = 0.064

ATTRIBUTES = ("kind", "pitch", "waveform", "color", "direction", "rate", "loudness", "fade")
CHOICES = {
    "kind": KINDS,
    "pitch": PITCHES,
    "waveform": WAVEFORMS,
    "color": COLORS,
    "direction": DIRECTIONS,
    "rate": RATES,
    "loudness": LOUDNESS,
    "fade": FADES,
}


@dataclass(frozen=True)
class Measurement:
    """What one event sounds like: raw measurements and the attribute values they imply."""

    kind: str
    pitch: str
    waveform: str
    color: str
    direction: str
    rate: str
    loudness: str
    fade: str
    dominant_hz: float
    flatness: float
    slope_db_per_decade: float
    sweep_octaves_per_s: float
    level_db: float
    fade_db: float
    onset_rate: float
    seconds: float
    runs: int

    def label(self, attribute: str) -> str:
        return getattr(self, attribute)


SILENT = Measurement(
    *("silence",) * 8,
    dominant_hz=0.0,
    flatness=0.0,
    slope_db_per_decade=0.0,
    sweep_octaves_per_s=0.0,
    level_db=-math.inf,
    fade_db=0.0,
    onset_rate=0.0,
    seconds=0.0,
    runs=0,
)


# ---------------------------------------------------------------------------------------------- measuring


def _mono(audio, sample_rate: int) -> np.ndarray:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 4000:
        raise ValueError(f"sample_rate={sample_rate!r} must be an integer >= 4000 (the analyzer reads up to 3.9 kHz)")
    x = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=0)  # (channels, samples) -> the mono mix
    if x.ndim != 1 or x.shape[0] < round(STFT_WINDOW * sample_rate):
        raise ValueError(
            f"audio must be (samples,) or (channels, samples) with at least {STFT_WINDOW} s of samples, "
            f"got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("audio contains NaN or inf")
    return x


def envelope_db(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Frame RMS in dBFS (frames of ENV_WINDOW s every ENV_HOP s), shape (frames,)."""
    win, hop = round(ENV_WINDOW * sample_rate), round(ENV_HOP * sample_rate)
    n = 1 + max(0, (len(x) - win) // hop)
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]  # (frames, win)
    power = np.mean(x[idx] ** 2, axis=1)
    return 10 * np.log10(power + 1e-12)


def active_frames(env_db: np.ndarray) -> np.ndarray:
    """Bool (frames,): within ACTIVE_RANGE_DB of the loudest frame and above FLOOR_DB; gaps under 30 ms filled."""
    active = (env_db > env_db.max() - ACTIVE_RANGE_DB) & (env_db > FLOOR_DB)
    runs = _runs(active)
    for (_, end), (start, _) in itertools.pairwise(runs):
        if (start - end) * ENV_HOP < 0.03:
            active[end:start] = True
    return active


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a bool array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def split_events(active: np.ndarray, n_events: int) -> list[tuple[int, int]]:
    """``n_events`` (1 or 2) frame ranges [a, b) covering the active span; two are split at the middle of
    the longest interior silence, or at the middle of the span when there is none."""
    runs = _runs(active)
    if not runs:
        return [(0, 0)] * n_events
    first, last = runs[0][0], runs[-1][1]
    if n_events == 1:
        return [(first, last)]
    gaps = [(start - end, end, start) for (_, end), (start, _) in itertools.pairwise(runs)]
    if gaps:
        _, end, start = max(gaps)
        cut = (end + start) // 2
    else:
        cut = (first + last) // 2
    return [(first, cut), (cut, last)]


def _stft_power(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(power (frames, bins), bin frequencies (bins,), frame centre times (frames,)) of a Hann STFT."""
    win, hop = round(STFT_WINDOW * sample_rate), round(ENV_HOP * sample_rate)
    padded = np.pad(x, (win // 2, win // 2))
    n = 1 + (len(padded) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    frames = padded[idx] * np.hanning(win)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return power, np.fft.rfftfreq(win, 1.0 / sample_rate), np.arange(n) * hop / sample_rate


def _peak_frequencies(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Per frame, the peak frequency in [60, 3900] Hz, refined by a parabola through the log power."""
    band = np.flatnonzero((freqs >= 60) & (freqs <= 3900))
    logp = np.log(power[:, band] + 1e-20)
    k = np.argmax(logp, axis=1)
    k = np.clip(k, 1, len(band) - 2)
    rows = np.arange(len(k))
    a, b, c = logp[rows, k - 1], logp[rows, k], logp[rows, k + 1]
    denom = a - 2 * b + c
    offset = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    step = freqs[1] - freqs[0]
    return freqs[band[k]] + np.clip(offset, -0.5, 0.5) * step


def _harmonic_db(spectrum: np.ndarray, freqs: np.ndarray, f0: float, k: int) -> float:
    """Power near k f0 relative to the power near f0, dB (max over +-4 % and +-1 bin)."""
    step = freqs[1] - freqs[0]

    def near(f: float) -> float:
        sel = np.abs(freqs - f) <= max(0.04 * f, step)
        return float(spectrum[sel].max()) if sel.any() else 0.0

    return 10 * math.log10((near(k * f0) + 1e-20) / (near(f0) + 1e-20))


def _label(value: float, edges: tuple[float, float], names: tuple[str, str, str]) -> str:
    return names[0] if value < edges[0] else names[1] if value < edges[1] else names[2]


def measure_event(x: np.ndarray, sample_rate: int, frames: tuple[int, int], active: np.ndarray) -> Measurement:
    """The attributes of the event in envelope frames [a, b) of ``x`` (mono)."""
    a, b = frames
    act = np.zeros_like(active)
    act[a:b] = active[a:b]
    runs = _runs(act)
    if not runs:
        return SILENT
    first, last = runs[0][0], runs[-1][1]
    span = (last - first) * ENV_HOP + ENV_WINDOW
    env = envelope_db(x, sample_rate)
    power_env = 10 ** (env / 10)
    level_db = 10 * math.log10(float(power_env[act].mean()) + 1e-12)
    third = max(1, (last - first) // 3)
    head, tail = power_env[first : first + third].mean(), power_env[last - third : last].mean()
    fade_db = 10 * math.log10((tail + 1e-12) / (head + 1e-12))
    onset_rate = (len(runs) - 1) / span if len(runs) > 1 else 0.0

    power, freqs, times = _stft_power(x, sample_rate)
    env_times = np.arange(len(active)) * ENV_HOP + ENV_WINDOW / 2
    frame_idx = np.clip(np.searchsorted(env_times, times), 0, len(active) - 1)
    sel = act[frame_idx]
    if not sel.any():
        sel = np.zeros(len(times), dtype=bool)
        sel[np.argmin(np.abs(times - env_times[first]))] = True
    spectrum = power[sel].mean(axis=0)
    band = (freqs >= 100) & (freqs <= 3500)
    s = spectrum[band] + 1e-20
    flatness = float(np.exp(np.mean(np.log(s))) / np.mean(s))
    slope = float(np.polyfit(np.log10(freqs[band]), 10 * np.log10(s), 1)[0])
    peaks = _peak_frequencies(power[sel], freqs)
    dominant = float(np.median(peaks))
    sweep = float(np.polyfit(times[sel], np.log2(peaks), 1)[0]) if sel.sum() >= 3 else 0.0
    h2, h3 = _harmonic_db(spectrum, freqs, dominant, 2), _harmonic_db(spectrum, freqs, dominant, 3)

    if flatness > NOISE_FLATNESS:
        kind = "noise"
    elif len(runs) >= 3:
        kind = "pulses"
    elif abs(sweep) > CHIRP_OCTAVES_PER_S:
        kind = "chirp"
    elif span < BEEP_MAX_SECONDS:
        kind = "beep"
    else:
        kind = "tone"
    waveform = "sawtooth" if h2 > -18 else "square" if h3 > -20 else "sine"
    return Measurement(
        kind=kind,
        pitch=_label(dominant, PITCH_EDGES_HZ, PITCHES),
        waveform=waveform,
        color="pink" if slope < PINK_SLOPE_DB_PER_DECADE else "white",
        direction="rising" if sweep > 0 else "falling",
        rate="fast" if onset_rate > FAST_ONSETS_PER_S else "slow",
        loudness=_label(level_db, LOUDNESS_EDGES_DB, LOUDNESS),
        fade="in" if fade_db > FADE_DB else "out" if fade_db < -FADE_DB else "none",
        dominant_hz=dominant,
        flatness=flatness,
        slope_db_per_decade=slope,
        sweep_octaves_per_s=sweep,
        level_db=level_db,
        fade_db=fade_db,
        onset_rate=onset_rate,
        seconds=span,
        runs=len(runs),
    )


def analyze(audio, sample_rate: int, n_events: int = 1) -> list[Measurement]:
    """Measure ``n_events`` (1 or 2) events, in time order, in ``audio`` ((samples,) or (channels, samples))."""
    if n_events not in (1, 2):
        raise ValueError(f"n_events={n_events!r} is not allowed; choices: 1, 2")
    x = _mono(audio, sample_rate)
    active = active_frames(envelope_db(x, sample_rate))
    return [measure_event(x, sample_rate, frames, active) for frames in split_events(active, n_events)]


# ---------------------------------------------------------------------------------------------- captions

_WORDS = {
    "pitch": {"low": "low", "medium": "medium", "mid": "medium", "high": "high"},
    "waveform": {"sine": "sine", "pure": "sine", "square": "square", "sawtooth": "sawtooth", "saw": "sawtooth"},
    "color": {"white": "white", "pink": "pink"},
    "direction": {"rising": "rising", "falling": "falling"},
    "rate": {"fast": "fast", "rapid": "fast", "quickly": "fast", "slow": "slow", "slowly": "slow"},
    "loudness": {"quiet": "quiet", "soft": "quiet", "loud": "loud"},
}
_SPLIT = re.compile(r"\s*,?\s+(?:followed by|then)\s+")
_FADE = re.compile(r"\bfad(?:ing|es|e) (in|out)\b")


def parse_event(phrase: str) -> dict[str, str]:
    """The attributes a caption phrase names, e.g. "a quiet low square-wave beep" ->
    {"kind": "beep", "pitch": "low", "waveform": "square", "loudness": "quiet"}."""
    words = re.findall(r"[a-z]+", phrase.lower())
    spec: dict[str, str] = {}
    if "noise" in words or "hiss" in words:
        spec["kind"] = "noise"
    elif "rising" in words or "falling" in words or "chirp" in words or "sweep" in words:
        spec["kind"] = "chirp"
    elif "pulse" in words or "beeps" in words or "repeated" in words or "repeating" in words:
        spec["kind"] = "pulses"
    elif "beep" in words:
        spec["kind"] = "beep"
    elif "tone" in words or "hum" in words:
        spec["kind"] = "tone"
    else:
        raise ValueError(
            f"caption phrase {phrase!r} names no sound the analyzer knows; it needs one of: beep, beeps, tone, "
            "noise, chirp, sweep, rising, falling, pulse"
        )
    for attribute, table in _WORDS.items():
        for w in words:
            if w in table:
                spec[attribute] = table[w]
                break
    if spec["kind"] != "chirp":
        spec.pop("direction", None)
    if spec["kind"] == "chirp":
        spec.pop("pitch", None)  # "rising in pitch" names a direction, not a pitch
    fade = _FADE.search(phrase.lower())
    if fade:
        spec["fade"] = fade.group(1)
    return spec


def parse_caption(caption: str) -> list[dict[str, str]]:
    """The events a caption names, in order (one, or two joined by "followed by" / "then"), each as the
    attributes it names."""
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be a non-empty string, got {caption!r}")
    phrases = [p for p in _SPLIT.split(caption.strip().rstrip(".")) if p]
    if len(phrases) > 2:
        raise ValueError(f"caption {caption!r} names {len(phrases)} events; the analyzer scores at most 2")
    return [parse_event(p) for p in phrases]


# ---------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Check:
    expected: str
    measured: str
    ok: bool


@dataclass(frozen=True)
class Adherence:
    """How well a clip matches a caption: one check per named attribute (keys ``kind``, ``pitch``, ... for one
    event; ``first.kind``, ``second.pitch``, ..., ``order`` for two) and their mean, ``score``."""

    caption: str
    checks: dict[str, Check]
    measurements: list[Measurement] = field(repr=False)

    @property
    def score(self) -> float:
        return sum(c.ok for c in self.checks.values()) / len(self.checks)


def _matches(m: Measurement, event: dict[str, str]) -> int:
    return sum(m.label(k) == v for k, v in event.items())


def score(audio, sample_rate: int, caption: str) -> Adherence:
    """Score ``audio`` against ``caption``: the prompt-adherence score is the fraction of the caption's named
    attributes that the analyzer measures in the audio. For two events, ``order`` checks that the events
    match better in the caption's order than swapped."""
    events = parse_caption(caption)
    measured = analyze(audio, sample_rate, len(events))
    prefixes = [""] if len(events) == 1 else ["first.", "second."]
    checks = {}
    for prefix, event, m in zip(prefixes, events, measured, strict=True):
        for attribute, expected in event.items():
            checks[prefix + attribute] = Check(expected, m.label(attribute), m.label(attribute) == expected)
    if len(events) == 2:
        straight = _matches(measured[0], events[0]) + _matches(measured[1], events[1])
        swapped = _matches(measured[0], events[1]) + _matches(measured[1], events[0])
        checks["order"] = Check("as captioned", "as captioned" if straight > swapped else "not", straight > swapped)
    return Adherence(caption, checks, measured)
