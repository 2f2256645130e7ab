"""ODE inversion: ``sampling.invert`` against the exact solution of a linear ODE (with the solvers' orders), the
round trip invert -> sample, ``Pipeline.edit`` reconstructing its input at high NFE, and ``etta edit``."""

from __future__ import annotations

import math

import pytest
import soundfile as sf
import torch

import etta_engine as E
from etta_engine import cli
from etta_engine.pipeline import Pipeline
from etta_engine.sampling import invert, sample

RATE = -0.8  # dx/dt = RATE * x + sin(3 t): linear, so the exact flow map is known


def velocity(x, t):
    return RATE * x + torch.sin(3 * t)[:, None, None]


def exact(x0, t0, t1):
    """x(t1) from x(t0) of dx/dt = a x + sin(3 t)."""
    a = RATE

    def particular(t):  # a particular solution: (-a sin 3t - 3 cos 3t) / (a^2 + 9)
        return (-a * math.sin(3 * t) - 3 * math.cos(3 * t)) / (a * a + 9)

    return (x0 - particular(t0)) * math.exp(a * (t1 - t0)) + particular(t1)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_invert_converges_to_the_exact_flow_with_the_solver_order(solver, order):
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).view(2, 1, 3)
    truth = exact(x0, 0.0, 0.9)
    errors = []
    for nfe in (8, 16) if solver != "rk4" else (16, 32):
        result = invert(velocity, x0, solver=solver, nfe=nfe, t_end=0.9)
        errors.append(float((result.x - truth).abs().max()))
        assert result.nfe <= nfe
    assert errors[1] < errors[0] * 0.5 ** (order - 0.3)  # halving the step divides the error by ~2^order


@pytest.mark.parametrize(("solver", "bound"), [("euler", 5e-2), ("heun", 2e-2)])
def test_invert_then_sample_returns_to_the_start_as_nfe_grows(solver, bound):
    x0 = torch.randn(2, 3, 5, dtype=torch.float64)
    errors = []
    for nfe in (4, 16, 64):
        noise = invert(velocity, x0, solver=solver, nfe=nfe, schedule="shifted", t_end=0.8).x
        back = sample(velocity, noise, solver=solver, nfe=nfe, schedule="shifted", t_start=0.8).x
        errors.append(float((back - x0).abs().max()))
    assert errors[2] < errors[1] < errors[0] and errors[2] < bound, errors


def test_invert_errors():
    x = torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="only integrates towards t = 0; for inversion use"):
        invert(velocity, x, solver="dpmpp_2m", nfe=4)
    with pytest.raises(ValueError, match=r"t_end=1.5 is outside \(0, 1\]"):
        invert(velocity, x, nfe=4, t_end=1.5)
    with pytest.raises(ValueError, match="nfe=0 must be an integer >= 1"):
        invert(velocity, x, nfe=0)
    with pytest.raises(ValueError, match="unknown solver 'leapfrog'"):
        invert(velocity, x, solver="leapfrog", nfe=4)


@pytest.fixture(scope="module")
def pipe():
    """The tiny model with its zero-initialised layers perturbed, so that its velocity is not zero."""
    model = E.ETTAModel.from_preset("tiny")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return Pipeline(model, device="cpu")


def test_edit_with_the_same_prompt_reconstructs_the_input(pipe):
    clip = 0.3 * torch.randn(2, 22050, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # The reference: the input through the VAE (what a perfect inversion gives back).
        n = pipe.latent_frames(0.5) * pipe.cfg.vae.downsampling_ratio  # padded to whole latent frames
        mean, _ = pipe.model.vae.encode(torch.nn.functional.pad(clip[None], (0, n - clip.shape[-1])))
        target = pipe.model.vae.decode(mean)[..., :22050]
    errors = {}
    for nfe in (4, 32):
        out = pipe.edit(clip, "a dog barks", nfe=nfe, solver="heun", cfg_scale=1.0, progress=False)
        assert out.waveform.shape == (1, 2, 22050)
        errors[nfe] = float((out.waveform - target).norm() / target.norm())
    assert errors[32] < errors[4] / 4 and errors[32] < 0.02, errors
    # another prompt, or a partial inversion, gives another clip
    other = pipe.edit(clip, "rain on a tin roof", source_prompt="a dog barks", nfe=8, strength=0.6, progress=False)
    assert float((other.waveform - target).norm() / target.norm()) > 2 * errors[32]


def test_edit_errors(pipe):
    clip = torch.zeros(2, 22050)
    with pytest.raises(ValueError, match="cannot run the inversion"):
        pipe.edit(clip, "x", solver="dpmpp_2m", progress=False)
    with pytest.raises(ValueError, match=r"strength=0.0 is outside \(0, 1\]"):
        pipe.edit(clip, "x", strength=0.0, progress=False)
    with pytest.raises(ValueError, match="at least one latent frame"):
        pipe.edit(torch.zeros(2, 100), "x", progress=False)
    with pytest.raises(ValueError, match="edit takes one clip"):
        pipe.edit(torch.zeros(2, 2, 22050), "x", progress=False)


def test_edit_command_writes_the_edited_clip(pipe, tmp_path, capsys):
    model = E.save(tmp_path / "model.safetensors", pipe.model)
    sf.write(tmp_path / "in.wav", 0.3 * torch.randn(11025, 2).numpy(), 22050)  # resampled to 44.1 kHz
    argv = ["edit", str(tmp_path / "in.wav"), "a dog barks", "-o", str(tmp_path / "out.wav"), "--model", str(model)]
    assert cli.main([*argv, "--nfe", "4", "--strength", "0.5", "--quiet"]) == 0
    info = sf.info(tmp_path / "out.wav")
    assert info.samplerate == 44100 and info.channels == 2 and abs(info.duration - 0.5) < 0.01
    assert cli.main([*argv, "--solver", "dpmpp_2m", "--quiet"]) == 2
    argv[2] = "y" * 130  # over the tiny model's 128 tokens: refused, unless --truncate
    capsys.readouterr()
    assert cli.main([*argv, "--nfe", "2", "--quiet"]) == 2
    assert "131 tokens long" in capsys.readouterr().err
    assert cli.main([*argv, "--nfe", "2", "--quiet", "--truncate"]) == 0


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
def test_the_engine_knows_the_inversion_s_call_times(solver):
    from etta_engine.engine import evaluation_times

    calls = []

    def record(x, t):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    invert(record, torch.zeros(1, 1, 1), solver=solver, nfe=8, schedule="shifted", t_end=0.7)
    assert evaluation_times(solver, 8, "shifted", 0.7, inverse=True) == calls
    assert calls[0] == 0.0 and calls == sorted(calls)
