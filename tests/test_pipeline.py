"""Text -> WAV: the Pipeline and the `etta` command line (the README's main job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import randomize_

import etta_engine as E
from etta_engine.pipeline import Pipeline

ETTA = str(Path(sys.executable).with_name("etta"))


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """The tiny model with a fully random DiT (so its velocity is not zero); the VAE keeps its default init."""
    model = E.ETTAModel.from_preset("tiny")
    randomize_(model.dit, std=0.2)
    return Pipeline(model, device="cpu")


def test_same_seed_same_audio_and_batch_equals_single(pipe):
    kw = dict(seconds=1.0, nfe=4, cfg_scale=3.5, progress=False)
    batch = pipe.generate(["a dog barks", "rain on a roof"], seed=5, **kw)
    assert batch.waveform.shape == (2, 2, 44100) and batch.sample_rate == 44100
    again = pipe.generate(["a dog barks", "rain on a roof"], seed=5, **kw)
    assert torch.equal(batch.waveform, again.waveform)
    single = pipe.generate(["rain on a roof"], seed=6, **kw)
    assert torch.allclose(batch.waveform[1], single.waveform[0], atol=1e-5)
    other = pipe.generate(["rain on a roof"], seed=7, **kw)
    assert not torch.allclose(other.waveform, single.waveform, atol=1e-3)


def test_prompt_and_guidance_change_the_result(pipe):
    kw = dict(seconds=0.5, nfe=3, seed=0, progress=False)
    a = pipe.generate("a dog barks", cfg_scale=3.0, **kw).waveform
    b = pipe.generate("a cat meows", cfg_scale=3.0, **kw).waveform
    c = pipe.generate("a dog barks", cfg_scale=1.0, **kw).waveform
    assert not torch.allclose(a, b, atol=1e-2) and not torch.allclose(a, c, atol=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(solver="rk9"), ValueError, r"unknown solver 'rk9'; choices: \["),
        (dict(nfe=0), ValueError, "nfe=0 must be an integer >= 1"),
        (dict(cfg_scale=-1.0), ValueError, "cfg_scale=-1.0 must be >= 0"),
        (dict(seconds=600.0), ValueError, r"seconds=600.0 is outside \(0, 512\]"),
        (dict(seconds=0.0), ValueError, r"seconds=0.0 is outside \(0, 512\]"),
        (dict(seed=[1, 2]), ValueError, "got 2 seeds for 1 prompts"),
    ],
)
def test_bad_generation_arguments(pipe, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        pipe.generate(["x"], **{"progress": False, "seconds": 0.5, **kwargs})
    with pytest.raises(ValueError, match="prompts is empty"):
        pipe.generate([], progress=False)


def test_cli_generate_writes_a_wav(tmp_path):
    out = tmp_path / "dog.wav"
    cmd = [ETTA, "generate", "a dog barking in the rain", "-o", str(out), "--seconds", "1.5", "--nfe", "3", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.format) == (44100, 2, "WAV")
    assert info.frames == 32 * 2048  # round(1.5 s x 21.53 latent frames/s) frames
    data, _ = sf.read(out)
    assert abs(data).max() > 0
    assert "wrote" in result.stdout and os.listdir(tmp_path) == ["dog.wav"]


def test_cli_refuses_a_missing_output_directory(tmp_path):
    cmd = [ETTA, "generate", "x", "-o", str(tmp_path / "no" / "x.wav"), "--nfe", "1", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


def test_cli_info_lists_backends():
    result = subprocess.run([ETTA, "info"], capture_output=True, text=True, check=True)
    for word in ("torch", "cuda extension", "triton", "onnxruntime", "tensorrt", "presets"):
        assert word in result.stdout
