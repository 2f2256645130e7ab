"""The shipped demo model: it loads offline as the default, and what it generates follows the prompt
(checked with the analyzer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from etta_engine import checkpoint
from etta_engine.checkpoint import PRETRAINED, load_model
from etta_engine.config import PRESETS
from etta_engine.demo.analyzer import analyze, score
from etta_engine.demo.evaluate import adherence, evaluation_prompts
from etta_engine.models.model import ETTAModel
from etta_engine.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
FAST = {"nfe": 8, "solver": "heun", "cfg_scale": 3.5}
# The shipped model scores 0.946 on these 24 prompts at FAST settings (0.872 on 96 prompts; the previous model,
# whose random T5 gave context-free token features, 0.699 and 0.668) and the untrained demo preset 0.194 (measured
# when the weights were shipped). The bar sits between them, low enough for another platform's float rounding.
MIN_ACCURACY = 0.80


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return Pipeline.from_pretrained(device="cpu")


def test_demo_ships_small_and_loads_offline_as_the_default(pipe):
    path = PRETRAINED["demo"]
    assert path.is_file() and path.stat().st_size < 40e6
    assert pipe.cfg == PRESETS["demo"]
    trained = pipe.model.state_dict()
    untrained = ETTAModel.from_preset("demo").state_dict()
    assert set(trained) == set(untrained)
    for key in ("dit.blocks.0.self_attn.qkv.weight", "vae.decoder.layers.0.weight_v"):
        assert not torch.equal(trained[key], untrained[key]), key
    # The text encoder is the frozen random byte-level T5 of the preset (seed 0): its weights ship unchanged.
    key = "text_encoder.model.shared.weight"
    torch.testing.assert_close(trained[key], untrained[key], rtol=0, atol=0)


def test_default_clip_is_the_training_length(pipe):
    audio = pipe.generate("a high beep", nfe=2, cfg_scale=1.0, progress=False)
    # 2 s at 31.25 latent frames/s is 62 frames (round half to even) of 256 samples, mono.
    assert pipe.cfg.default_seconds == 2.0 and pipe.latent_frames(2.0) == 62
    assert audio.sample_rate == 8000 and audio.waveform.shape == (1, 1, 62 * 256)
    assert torch.isfinite(audio.waveform).all()


def _measure(pipe, prompts: list[str], **settings):
    audio = pipe.generate(prompts, seed=list(range(len(prompts))), **(FAST | settings), progress=False)
    return [analyze(audio.waveform[i], 8000)[0] for i in range(len(prompts))]


def test_low_tones_are_low_and_audible(pipe):
    for m in _measure(pipe, ["a low-pitched tone"] * 6):
        assert m.pitch == "low" and m.level_db > -35 and m.kind in ("tone", "chirp"), m


def test_white_and_pink_noise_have_their_spectral_slopes(pipe):
    white = _measure(pipe, ["white noise"] * 6)
    pink = _measure(pipe, ["pink noise"] * 6)
    assert all(m.kind == "noise" for m in white + pink)
    # White noise is flat (0 dB/decade), pink falls by 10 dB/decade.
    slopes_white, slopes_pink = [m.slope_db_per_decade for m in white], [m.slope_db_per_decade for m in pink]
    assert np.median(slopes_white) > np.median(slopes_pink) + 3, (slopes_white, slopes_pink)


def test_high_prompts_are_higher_than_low_prompts(pipe):
    """Over 6 seeds, "high" prompts are audible events whose median dominant frequency is well above that of
    "low" ones (about 610 Hz against 115 Hz). At 16 Euler steps: at 8 Heun steps the model renders two of these
    24 clips, short high beeps, as silence."""
    for high, low in (("a high beep", "a low beep"), ("a high-pitched tone", "a low-pitched tone")):
        ms = _measure(pipe, [high] * 6 + [low] * 6, nfe=16, solver="euler")
        hz = [m.dominant_hz for m in ms]
        assert all(m.level_db > -40 for m in ms), (high, low, [m.level_db for m in ms])
        assert np.median(hz[:6]) > 2 * np.median(hz[6:]), (high, low, hz)


def test_adherence_on_the_fixed_prompt_set(pipe):
    report = adherence(pipe, evaluation_prompts(24), seed=0, **FAST)
    assert report.accuracy >= MIN_ACCURACY, report.per_attribute


def test_missing_weights_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoint.PRETRAINED, "demo", tmp_path / "demo.safetensors")
    with pytest.raises(FileNotFoundError, match=r"the trained 'demo' model should ship at .*demo.safetensors"):
        load_model("demo")


def test_generate_command_writes_a_matching_wav(tmp_path):
    from etta_engine.cli import main

    out = tmp_path / "tone.wav"
    args = ["generate", "a low-pitched tone", "--model", "demo", "--seconds", "2", "--nfe", "8", "--solver", "heun"]
    assert main([*args, "-o", str(out), "--quiet"]) == 0
    audio, sr = sf.read(out, dtype="float32")
    assert sr == 8000 and audio.shape == (62 * 256,) and np.abs(audio).max() > 0.01
    assert score(audio, sr, "a low-pitched tone").score == 1.0


def test_quality_benchmark_writes_rows_and_a_plot(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "demo_quality.py"), "--prompts", "2", "--nfe", "2", "4",
           "--solvers", "euler", "rk4", "--cfg", "1", "3.5", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("demo_quality-*.json")
    rows = json.loads(path.read_text())["rows"]
    references = {r["solver"]: r for r in rows if r["nfe"] is None}
    assert references["ground_truth"]["accuracy"] == 1.0 and 0 < references["vae_reconstruction"]["checks"]
    rows = [r for r in rows if r["nfe"] is not None]
    # rk4 needs nfe >= 4: 2 solvers x 2 NFE x 2 scales minus rk4 at nfe 2.
    assert sorted((r["solver"], r["nfe"], r["cfg_scale"]) for r in rows) == [
        ("euler", 2, 1.0), ("euler", 2, 3.5), ("euler", 4, 1.0), ("euler", 4, 3.5), ("rk4", 4, 1.0), ("rk4", 4, 3.5)
    ]  # fmt: skip
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["prompts"] == 2 and r["checks"] >= 2 and r["seconds_per_clip"] > 0
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
