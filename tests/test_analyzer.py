"""The analyzer: measurements against closed-form references, attribute recovery on generated ground truth,
and the prompt-adherence score ranking correct captions above wrong ones."""

from __future__ import annotations

import collections
import math
import re

import numpy as np
import pytest

from etta_engine.demo import analyzer
from etta_engine.demo.analyzer import analyze, parse_caption, score
from etta_engine.demo.synth import PITCH_BANDS, SAMPLE_RATE, make_example

SR = SAMPLE_RATE


def middle(pitch: str) -> float:
    """The geometric middle of a pitch word's band (Hz)."""
    return math.sqrt(PITCH_BANDS[pitch][0] * PITCH_BANDS[pitch][1])


def placed(x: np.ndarray, start: float = 0.2, seconds: float = 2.0) -> np.ndarray:
    out = np.zeros(round(seconds * SR))
    i = round(start * SR)
    out[i : i + len(x)] = x
    return out


def test_dominant_frequency_and_level_of_a_sine():
    """A sine of amplitude A at f: dominant frequency f (parabolic interpolation: under 1 % off a bin),
    level 20 log10(A / sqrt 2) dBFS."""
    t = np.arange(round(1.2 * SR)) / SR
    for f, amp in ((203.0, 0.1), (611.0, 0.5), (1507.0, 0.02)):
        (m,) = analyze(placed(amp * np.sin(2 * np.pi * f * t)), SR)
        assert m.dominant_hz == pytest.approx(f, rel=0.01)
        assert m.level_db == pytest.approx(20 * math.log10(amp / math.sqrt(2)), abs=0.3)
        assert m.kind == "tone" and m.flatness < 0.01 and abs(m.sweep_octaves_per_s) < 0.05


def test_flatness_and_slope_of_white_and_pink_noise():
    """White noise: flat spectrum (flatness near 1, slope 0 dB/decade); 1/f noise: -10 dB/decade."""
    rng = np.random.default_rng(0)
    n = SR
    white = 0.1 * rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0))
    pink = np.fft.irfft(spectrum, n)
    (w,) = analyze(placed(white), SR)
    (p,) = analyze(placed(0.1 * pink / pink.std()), SR)
    assert w.flatness > 0.8 and abs(w.slope_db_per_decade) < 1.0
    assert p.slope_db_per_decade == pytest.approx(-10.0, abs=1.0)
    assert (w.kind, w.color, p.kind, p.color) == ("noise", "white", "noise", "pink")


def test_sweep_rate_of_an_exponential_chirp():
    """f(t) = f0 (f1 / f0)^(t / D) sweeps log2(f1 / f0) / D octaves per second."""
    D, f0, f1 = 1.25, 1800.0, 300.0
    t = np.arange(round(D * SR)) / SR
    k = math.log(f1 / f0) / D
    x = 0.3 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    (m,) = analyze(placed(x), SR)
    assert m.sweep_octaves_per_s == pytest.approx(math.log2(f1 / f0) / D, rel=0.1)
    assert (m.kind, m.direction) == ("chirp", "falling")


def test_onset_rate_of_a_pulse_train():
    rate, n_pulses = 8.0, 12
    x = np.zeros(round(1.6 * SR))
    pulse = 0.3 * np.sin(2 * np.pi * middle("medium") * np.arange(round(0.04 * SR)) / SR)
    for k in range(n_pulses):
        i = round(k / rate * SR)
        x[i : i + len(pulse)] = pulse
    (m,) = analyze(placed(x, start=0.1), SR)
    assert m.runs == n_pulses
    span = (n_pulses - 1) / rate + 0.04
    assert m.onset_rate == pytest.approx((n_pulses - 1) / span, rel=0.05)
    assert (m.kind, m.rate, m.pitch) == ("pulses", "fast", "medium")


def test_fade_is_the_level_difference_of_the_last_and_first_thirds():
    t = np.arange(SR) / SR
    ramp = np.linspace(0.0, 1.0, len(t))
    (m,) = analyze(placed(0.3 * ramp * np.sin(2 * np.pi * 300 * t)), SR)
    (n,) = analyze(placed(0.3 * ramp[::-1] * np.sin(2 * np.pi * 300 * t)), SR)
    assert m.fade == "in" and n.fade == "out" and m.fade_db > 10 and n.fade_db < -10


def test_attributes_of_generated_clips_are_recovered():
    """On clips from the generator, every named attribute is measured as the spec says (>= 99 % of each)."""
    totals, correct = collections.Counter(), collections.Counter()
    for i in range(300):
        ex = make_example(5, i)
        result = score(ex.audio, SR, ex.caption)
        for name, check in result.checks.items():
            attribute = name.split(".")[-1]
            totals[attribute] += 1
            correct[attribute] += check.ok
    assert set(totals) == {"kind", "pitch", "waveform", "color", "direction", "rate", "loudness", "fade", "order"}
    for attribute, n in totals.items():
        assert correct[attribute] / n >= 0.99, (attribute, correct[attribute], n)


SWAPS = {"low": "high", "high": "low", "white": "pink", "pink": "white", "rising": "falling", "falling": "rising"}
SWAPS |= {"quiet": "loud", "loud": "quiet", "beep": "noise"}


def wrong_caption(caption: str) -> str | None:
    """The caption with its first swappable word replaced (one attribute made wrong), or None."""
    words = re.split(r"(\W+)", caption)
    for i, w in enumerate(words):
        if w in SWAPS:
            return "".join([*words[:i], SWAPS[w], *words[i + 1 :]])
    return None


def test_correct_captions_score_above_wrong_ones():
    compared = 0
    for i in range(120):
        ex = make_example(6, i)
        wrong = wrong_caption(ex.caption)
        if wrong is None:
            continue
        right, bad = score(ex.audio, SR, ex.caption).score, score(ex.audio, SR, wrong).score
        assert right == 1.0 and bad < right, (ex.caption, wrong, bad)
        compared += 1
    assert compared > 60


def test_order_of_two_events():
    ex = next(make_example(7, i) for i in range(100) if len(make_example(7, i).spec.events) == 2)
    first, second = re.split(r" followed by |, then ", ex.caption)
    assert score(ex.audio, SR, ex.caption).checks["order"].ok
    swapped = score(ex.audio, SR, f"{second} followed by {first}")
    assert not swapped.checks["order"].ok and swapped.score < 0.5


def test_high_beep_versus_low_beep():
    """The check the demo model's CI test relies on: pitch words map to measured dominant frequency."""
    t = np.arange(round(0.25 * SR)) / SR
    high = placed(0.3 * np.sin(2 * np.pi * middle("high") * t))
    low = placed(0.3 * np.sin(2 * np.pi * middle("low") * t))
    assert score(high, SR, "a high beep").score == 1.0 and score(low, SR, "a high beep").score == 0.5
    assert score(low, SR, "a low beep").checks["pitch"].ok


def test_parse_caption():
    assert parse_caption("a quiet low-pitched square-wave tone fading out") == [
        {"kind": "tone", "pitch": "low", "waveform": "square", "loudness": "quiet", "fade": "out"}
    ]
    assert parse_caption("a low beep followed by white noise") == [
        {"kind": "beep", "pitch": "low"},
        {"kind": "noise", "color": "white"},
    ]
    assert parse_caption("a sweep rising in pitch, then fast high beeps") == [
        {"kind": "chirp", "direction": "rising"},
        {"kind": "pulses", "pitch": "high", "rate": "fast"},
    ]
    with pytest.raises(ValueError, match=r"caption phrase 'a dog barks' names no sound the analyzer knows"):
        parse_caption("a dog barks")
    with pytest.raises(ValueError, match=r"names 3 events; the analyzer scores at most 2"):
        parse_caption("a beep followed by a tone followed by noise")
    with pytest.raises(ValueError, match=r"caption must be a non-empty string"):
        parse_caption("  ")


def test_silence_and_bad_input():
    result = score(np.zeros(SR), SR, "a high beep")
    assert result.score == 0.0 and result.measurements[0] is analyzer.SILENT
    stereo = np.stack([placed(0.3 * np.sin(2 * np.pi * middle("low") * np.arange(SR) / SR))] * 2)
    assert analyze(stereo, SR)[0].pitch == "low"
    with pytest.raises(ValueError, match=r"sample_rate=2000 must be an integer >= 4000"):
        analyze(np.zeros(SR), 2000)
    with pytest.raises(ValueError, match=r"n_events=3 is not allowed; choices: 1, 2"):
        analyze(np.zeros(SR), SR, 3)
    with pytest.raises(ValueError, match=r"audio contains NaN or inf"):
        analyze(np.full(SR, np.nan), SR)
