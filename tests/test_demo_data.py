"""The synthetic sound-event dataset of the demo model: determinism, rendering, captions, the manifest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etta_engine.data import read_manifest
from etta_engine.demo import synth
from etta_engine.demo.analyzer import parse_caption
from etta_engine.demo.synth import Event, make_example


def expected_words(spec: synth.ClipSpec) -> list[dict[str, str]]:
    """What the caption of ``spec`` must name, event by event."""
    out = []
    for e in spec.events:
        words = {"kind": e.kind}
        for name in ("pitch", "color", "direction", "rate"):
            if getattr(e, name) is not None and not (e.kind == "chirp" and name == "pitch"):
                words[name] = getattr(e, name)
        if e.mention_waveform:
            words["waveform"] = e.waveform
        if e.loudness != "normal":
            words["loudness"] = e.loudness
        if e.fade != "none":
            words["fade"] = e.fade
        out.append(words)
    return out


def test_clips_are_deterministic_and_independent_of_each_other():
    a, b = make_example(3, 17), make_example(3, 17)
    assert a.caption == b.caption and a.spec == b.spec
    np.testing.assert_array_equal(a.audio, b.audio)
    assert make_example(4, 17).caption != a.caption or not np.array_equal(make_example(4, 17).audio, a.audio)


def test_clip_shape_range_and_silence_outside_events():
    for i in range(30):
        ex = make_example(0, i)
        assert ex.audio.shape == (round(synth.SECONDS * synth.SAMPLE_RATE),)
        assert ex.audio.dtype == np.float32 and np.abs(ex.audio).max() <= 1.0
        first = round(ex.spec.events[0].start * synth.SAMPLE_RATE)
        assert np.all(ex.audio[:first] == 0)


def test_captions_round_trip_through_the_parser():
    """Every caption names exactly the attributes of its spec (the analyzer scores against these)."""
    for i in range(1500):
        ex = make_example(1, i)
        assert parse_caption(ex.caption) == expected_words(ex.spec), ex.caption


def test_vocabulary_and_distribution():
    captions = [make_example(0, i).caption for i in range(1500)]
    text = " ".join(captions)
    for word in ("low", "high", "beep", "tone", "noise", "rising", "falling", "followed by", "then", "pink"):
        assert word in text, word
    kinds = [e.kind for i in range(1500) for e in make_example(0, i).spec.events]
    for kind in synth.KINDS:
        assert kinds.count(kind) > 100, (kind, kinds.count(kind))
    n_sequences = sum(" followed by " in c or ", then " in c for c in captions)
    assert 0.25 < n_sequences / len(captions) < 0.45
    assert len(set(captions)) > 500  # paraphrases and attributes make many distinct captions


def test_rendered_level_matches_the_spec():
    """The RMS of an event's sounding part is its level_db (reference: numpy on the rendered samples)."""
    rng = np.random.default_rng(0)
    for kind, extra in (("tone", {"pitch": "low", "waveform": "square", "freq": 250.0}), ("noise", {"color": "pink"})):
        e = Event(kind=kind, start=0.1, duration=1.0, level_db=-20.0, **extra)
        x = synth.render_event(e, rng)
        middle = x[len(x) // 4 : 3 * len(x) // 4]
        assert 20 * math.log10(np.sqrt(np.mean(middle**2))) == pytest.approx(-20.0, abs=0.3)


def test_band_limited_waveforms_have_the_right_harmonics():
    """Square: odd harmonics at 1/k; sawtooth: every harmonic at 1/k (Fourier series), none above 0.45 sr."""
    sr, f0 = synth.SAMPLE_RATE, 250.0
    t = np.arange(sr) / sr  # 1 s: bin k Hz exactly
    for kind in ("square", "sawtooth"):
        x = synth._band_limited(kind, 2 * np.pi * f0 * t, f0, sr)
        amp = np.abs(np.fft.rfft(x)) / (sr / 2)
        for k in (1, 2, 3, 5):
            want = 0.0 if kind == "square" and k % 2 == 0 else (4 / np.pi if kind == "square" else 2 / np.pi) / k
            assert amp[int(k * f0)] == pytest.approx(want, abs=1e-6)
        assert amp[int(0.45 * sr) + 1 :].max() < 1e-6


def test_chirp_sweeps_between_its_end_points():
    e = Event(kind="chirp", start=0.0, duration=1.0, direction="falling")
    x = synth.render_event(e, np.random.default_rng(0))
    sr = synth.SAMPLE_RATE
    zero_crossings = lambda seg: np.count_nonzero(np.diff(np.signbit(seg))) / 2 / (len(seg) / sr)  # ~ frequency
    f_start, f_end = zero_crossings(x[200:1000]), zero_crossings(x[-1000:-200])
    assert synth.CHIRP_HIGH[0] * 0.8 < f_start and f_end < synth.CHIRP_LOW[1] * 1.4


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match=r"kind='whistle' is not one of"):
        Event(kind="whistle", start=0.0, duration=1.0)
    with pytest.raises(ValueError, match=r"start=1.5 s, duration=1.0 s must lie inside"):
        Event(kind="noise", start=1.5, duration=1.0, color="white")
    with pytest.raises(ValueError, match=r"index=-1 must be an integer >= 0"):
        make_example(0, -1)
    with pytest.raises(ValueError, match=r"sequence_probability=2 is outside"):
        synth.sample_clip(np.random.default_rng(0), sequence_probability=2)


def test_generate_dataset_writes_a_readable_manifest(tmp_path):
    import soundfile as sf

    path = synth.generate_dataset(tmp_path / "d", 5, seed=2, progress=False)
    entries = read_manifest(path)
    assert [e.caption for e in entries] == [make_example(2, i).caption for i in range(5)]
    audio, sr = sf.read(entries[3].path, dtype="float32")
    assert sr == synth.SAMPLE_RATE
    np.testing.assert_allclose(audio, make_example(2, 3).audio, atol=1.0 / 32768)
    assert len((tmp_path / "d" / "specs.jsonl").read_text().splitlines()) == 5


def test_mono_training_clips_and_spectral_floor(tmp_path):
    """The demo model is mono: AudioTextDataset(channels=1) yields (1, L) clips; the VAE trainer's spectral
    floor reaches the MR-STFT."""
    from etta_engine.data import AudioTextDataset
    from etta_engine.train.losses import VAELosses

    entries = read_manifest(synth.generate_dataset(tmp_path / "d", 2, seed=0, progress=False))
    item = AudioTextDataset(entries, synth.SAMPLE_RATE, 1.0, random_crop=False, channels=1)[1]
    assert item["audio"].shape == (1, synth.SAMPLE_RATE)
    np.testing.assert_allclose(item["audio"][0].numpy(), make_example(0, 1).audio[: synth.SAMPLE_RATE], atol=1e-4)
    with pytest.raises(ValueError, match=r"channels=3 is not allowed; choices: 1 \(mono models\), 2"):
        AudioTextDataset(entries, synth.SAMPLE_RATE, 1.0, channels=3)
    assert VAELosses(spectral_eps=3.0).spectral.mrstft.eps == 3.0
