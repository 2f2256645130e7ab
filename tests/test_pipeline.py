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


@pytest.mark.parametrize("negative", [None, "a long negative prompt, longer than any of the prompts"])
def test_padding_to_the_longest_prompt_changes_only_rounding(pipe, negative):
    """padding="longest": the memory holds the batch's longest prompt rounded up to 32 tokens (not 512) and the
    audio is the max_length audio up to float rounding, with the null memory and with a negative prompt of
    another length."""
    prompts = ["a dog barks", "rain on a tin roof, then thunder, then a long silence"]  # 12 and 54 bytes
    ids, mask = pipe.model.text_encoder.tokenize(prompts, padding="longest")
    assert ids.shape == mask.shape == (2, 64) and mask.sum(dim=1).tolist() == [12, 54]
    assert (ids[~mask] == pipe.model.text_encoder.tokenizer.pad_token_id).all()
    cond = pipe.model.condition(prompts, 0.0, 1.0, padding="longest")
    assert cond.context.shape[1] == 64 + 2  # + the two seconds tokens
    kw = dict(seconds=0.5, nfe=4, cfg_scale=3.5, seed=3, negative_prompt=negative, progress=False)
    full = pipe.generate(prompts, **kw).waveform
    short = pipe.generate(prompts, padding="longest", **kw).waveform
    assert (short - full).abs().max() <= 1e-4 * full.abs().max()
    with pytest.raises(ValueError, match=r"padding='left' is not one of \('max_length', 'longest'\)"):
        pipe.generate(prompts, padding="left", **kw)


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
    cmd += ["--model", "tiny"]  # the 44.1 kHz stereo preset (the default, the demo model, is 8 kHz mono)
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


# ------------------------------------------------------------------ variations, continuation, inpainting


def tone(seconds: float, sr: int = 44100, channels: int = 2) -> torch.Tensor:
    t = torch.arange(round(seconds * sr)) / sr
    return torch.stack([0.5 * torch.sin(2 * torch.pi * (220 + 110 * c) * t) for c in range(channels)])


def test_continuation_keeps_the_given_region_exactly(pipe):
    init = tone(1.0)
    out = pipe.generate(["a dog barks"], seconds=1.0, nfe=3, init_audio=init, keep=[(0.0, 0.4)], progress=False)
    n = round(0.4 * 44100)
    assert torch.equal(out.waveform[0, :, :n], init[:, :n])  # the kept region is the input, sample for sample
    assert not torch.allclose(out.waveform[0, :, n + 441 :], init[:, n + 441 : out.waveform.shape[-1]], atol=1e-2)


def test_inpainting_keeps_both_sides_and_generates_the_gap(pipe):
    init = tone(1.0)
    out = pipe.generate(
        ["thunder"], seconds=1.0, nfe=2, init_audio=init, keep=[(0.0, 0.3), (0.7, 1.0)], progress=False
    ).waveform[0]
    a, b = round(0.3 * 44100), round(0.7 * 44100)
    assert torch.equal(out[:, :a], init[:, :a])
    assert torch.equal(out[:, b:], init[:, b : out.shape[-1]])
    assert not torch.allclose(out[:, a + 441 : b - 441], init[:, a + 441 : b - 441], atol=1e-2)


def test_variation_strength_controls_closeness_to_the_input(pipe):
    init = tone(0.5)
    with torch.no_grad():
        recon = pipe.model.vae.decode(pipe.model.vae.encode(pipe._prepare_init_audio(init, None, 1, 11 * 2048))[0])
    recon = recon[..., : round(0.5 * 44100)]
    dist = {}
    for strength in (0.05, 1.0):
        out = pipe.generate("x", seconds=0.5, nfe=4, init_audio=init, strength=strength, progress=False)
        dist[strength] = float((out.waveform - recon).norm())
    assert dist[0.05] < 0.2 * dist[1.0]


def test_init_audio_is_resampled_and_upmixed(pipe):
    mono_22k = tone(0.5, sr=22050, channels=1)[0]
    out = pipe.generate(
        "x", seconds=0.5, nfe=2, init_audio=mono_22k, init_sample_rate=22050, keep=[(0, 0.5)], progress=False
    )
    expected = tone(0.5, channels=1)[0]
    n = out.waveform.shape[-1]
    assert torch.equal(out.waveform[0, 0], out.waveform[0, 1])  # mono duplicated to both channels
    middle = slice(2000, n - 2000)  # away from the resampler's edge effects
    assert torch.allclose(out.waveform[0, 0, middle], expected[middle], atol=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(init_audio=torch.zeros(3, 1000)), ValueError, "init_audio has 3 channels; allowed: 1"),
        (dict(init_audio=torch.full((2, 1000), float("nan"))), ValueError, "init_audio contains NaN"),
        (dict(init_audio=torch.zeros(2, 1000), strength=1.5), ValueError, r"strength=1.5 is outside \(0, 1\]"),
        (dict(init_audio=torch.zeros(2, 1000), keep=[(0.2, 0.9)]), ValueError, "keep region"),
        (dict(keep=[(0.0, 0.1)]), ValueError, "strength and keep need init_audio"),
        (dict(init_audio=torch.zeros(2, 1000), init_sample_rate=0), ValueError, "init_sample_rate=0 must be positive"),
        (dict(autoguidance_scale=2.0), ValueError, "needs a Pipeline built with bad_model"),
        (dict(solver="midpoint", nfe=1), ValueError, "solver 'midpoint' needs nfe >= 2"),
        (dict(schedule="cosine"), ValueError, "unknown schedule 'cosine'"),
    ],
)
def test_bad_init_and_guidance_arguments(pipe, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        pipe.generate(["x"], **{"progress": False, "seconds": 0.5, "nfe": 2, **kwargs})


def test_autoguidance_with_scale_one_is_the_good_model(pipe):
    bad = E.ETTAModel.from_preset("tiny")
    randomize_(bad.dit, std=0.1, seed=9)
    guided = Pipeline(pipe.model, device="cpu", bad_model=bad)
    kw = dict(seconds=0.5, nfe=3, seed=1, progress=False)
    plain = pipe.generate("x", **kw).waveform
    assert torch.allclose(guided.generate("x", autoguidance_scale=1.0, **kw).waveform, plain, atol=1e-4)
    assert not torch.allclose(guided.generate("x", autoguidance_scale=2.0, **kw).waveform, plain, atol=1e-2)


def test_negative_prompt_replaces_the_null_memory(pipe):
    kw = dict(seconds=0.5, nfe=2, seed=0, cfg_scale=4.0, progress=False)
    a = pipe.generate("rain", **kw).waveform
    b = pipe.generate("rain", negative_prompt="music", **kw).waveform
    assert not torch.allclose(a, b, atol=1e-3)


def test_solvers_and_schedules_run_through_the_pipeline(pipe):
    for solver, schedule in (("heun", "logsnr"), ("dpmpp_2m", "shifted"), ("rk4", "uniform")):
        out = pipe.generate("x", seconds=0.5, nfe=4, solver=solver, schedule=schedule, progress=False)
        assert out.waveform.shape == (1, 2, 22050) and torch.isfinite(out.waveform).all()


def test_cli_continuation_from_a_file(tmp_path):
    sf.write(tmp_path / "in.wav", tone(1.0, sr=22050).T.numpy(), 22050)
    out = tmp_path / "cont.wav"
    cmd = [ETTA, "generate", "more of this", "-o", str(out), "--seconds", "1", "--nfe", "2", "--quiet"]
    cmd += ["--model", "tiny", "--init-audio", str(tmp_path / "in.wav"), "--keep", "0:0.5"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data, sr = sf.read(out)
    assert sr == 44100 and data.shape[1] == 2
    bad = subprocess.run([*cmd[:-1], "0.5-0.9"], capture_output=True, text=True)
    assert bad.returncode != 0 and "not START:END" in bad.stderr


def test_batched_cfg_equals_two_separate_dit_calls(pipe):
    model = pipe.model
    prompts = ["a dog barks", "rain on a tin roof"]
    x, t = torch.randn(2, 64, 9), torch.tensor([0.9, 0.4])
    cond = model.condition(prompts, 0.0, 0.5)
    null = E.DiTConditioning(torch.zeros_like(cond.context), cond.context_mask, cond.global_cond)
    with torch.no_grad():
        v_cond, v_uncond = model.dit(x, t, *cond), model.dit(x, t, *null)
        guided = pipe._guided_velocity(model, prompts, 0.5, None, False, scale=3.0, rescale=0.0, interval=None)
        unguided = pipe._guided_velocity(model, prompts, 0.5, None, False, scale=1.0, rescale=0.0, interval=None)
        assert torch.allclose(guided(x, t), v_uncond + 3.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-4)
        assert torch.allclose(unguided(x, t), v_cond, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_engine_path_equals_the_plain_model_path(pipe, solver):
    """generate() runs the DiT through etta_engine.engine; the plain per-call model gives the same audio (CFG with
    the zero-memory uncond half, and a negative prompt)."""
    kw = dict(seconds=1.0, nfe=6, solver=solver, cfg_scale=3.5, progress=False, seed=3)
    for extra in ({}, {"negative_prompt": "static"}):
        fast = pipe.generate(["a dog barks"], **kw, **extra).waveform
        pipe.use_engine = False
        try:
            plain = pipe.generate(["a dog barks"], **kw, **extra).waveform
        finally:
            pipe.use_engine = True
        assert (fast - plain).abs().max() <= 1e-4 * plain.abs().max()


@pytest.fixture(scope="module")
def fp32_model() -> E.ETTAModel:
    model = E.ETTAModel.from_preset("tiny")
    randomize_(model.dit, std=0.2)
    return model


@pytest.mark.parametrize(("dit", "vae", "text"), [("bf16", "bf16", "bf16"), ("fp16", "fp32", "fp32")])
def test_precision_modes_cast_each_part_and_stay_close_to_fp32(fp32_model, dit, vae, text):
    import copy

    kw = dict(seconds=1.0, nfe=4, cfg_scale=3.5, progress=False, seed=1)
    reference = Pipeline(fp32_model, device="cpu").generate(["rain on a roof"], **kw).waveform
    low = Pipeline(copy.deepcopy(fp32_model), device="cpu", dtype=dit, vae_dtype=vae, text_dtype=text)
    assert low.precision == {"dit": dit, "vae": vae, "text": text}
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert low.model.dit.blocks[0].self_attn.qkv.weight.dtype == names[dit]
    assert next(low.model.text_encoder.parameters()).dtype == names[text]
    out = low.generate(["rain on a roof"], **kw).waveform
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    err = ((out - reference).norm() / reference.norm()).item()
    # the low precision ran (not the fp32 result) and stays near it: bf16 keeps 8 mantissa bits, fp16 11
    assert 1e-5 < err < {"bf16": 0.05, "fp16": 0.005}[dit], err


def test_bad_precisions_are_refused_before_anything_is_cast(fp32_model):
    import copy

    pipe = Pipeline(copy.deepcopy(fp32_model), device="cpu")
    with pytest.raises(ValueError, match=r"DiT precision 'fp8' is not supported; choices: \['fp32', 'bf16', 'fp16'\]"):
        pipe.set_precision("fp8")
    with pytest.raises(ValueError, match=r"text precision 'fp16' is not supported \(T5 overflows in fp16\)"):
        pipe.set_precision("bf16", vae="bf16", text="fp16")
    with pytest.raises(ValueError, match="VAE precision torch.int8 is not supported"):
        pipe.set_precision(vae=torch.int8)
    assert pipe.precision == {"dit": "fp32", "vae": "fp32", "text": "fp32"}  # nothing was cast
    with pytest.raises(ValueError, match="DiT precision 'half'"):
        Pipeline(fp32_model, device="cpu", dtype="half")
    with pytest.raises(TypeError, match=r"unexpected arguments \['precision'\]"):
        Pipeline.from_pretrained("demo", device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="text precision 'fp16'"):  # checked before the model is loaded
        Pipeline.from_pretrained("/no/such/checkpoint", text_dtype="fp16")
    assert pipe.set_precision(torch.bfloat16) is pipe and pipe.precision["dit"] == "bf16"


def test_cli_generate_in_bf16_and_precision_flags_refused_on_exports(tmp_path):
    out = tmp_path / "bf16.wav"
    cmd = [ETTA, "generate", "rain", "-o", str(out), "--seconds", "1", "--nfe", "2", "--quiet", "--model", "tiny",
           "--dtype", "bf16", "--vae-dtype", "bf16", "--text-dtype", "bf16"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sf.info(out).frames == 44100  # 1 s
    from etta_engine.cli import build_parser

    args = build_parser().parse_args(["generate", "rain", "-o", str(tmp_path / "x.wav"), "--backend", "onnx",
                                      "--model", str(tmp_path), "--dtype", "fp16"])  # fmt: skip
    with pytest.raises(SystemExit, match=r"--dtype need --backend torch .*fixed by `etta export --dtype`"):
        args.func(args)
    with pytest.raises(SystemExit):  # argparse: T5 has no fp16 choice
        build_parser().parse_args(["generate", "rain", "-o", "x.wav", "--text-dtype", "fp16"])


def test_warmup_prepares_every_static_buffer_a_request_of_its_shape_uses(fp32_model):
    """After warmup(...), a request with those options (any prompts and seed) adds no static function (no CUDA
    graph to capture on a GPU) to the engine's, T5's or the VAE's caches; another NFE does."""
    import copy

    pipe = Pipeline(copy.deepcopy(fp32_model), device="cpu")
    pipe.cuda_graphs = "eager"  # the static buffers a CUDA graph captures, run eagerly on the CPU
    options = dict(seconds=1.0, nfe=4, solver="heun", cfg_scale=3.5)
    assert pipe.warmup(batch=2, **options) == 1  # on a CPU nothing is captured: one generation fills the caches

    def cached() -> list:
        (engine,) = pipe._engines.values()
        caches = (engine.cache, pipe.model.text_encoder.graphs, pipe.model.vae.graphs)
        return [list(c.graphs) for c in caches]

    before = cached()
    assert all(before)
    pipe.generate(["rain on a tin roof", "a dog barks"], **options, seed=7, progress=False)
    assert cached() == before
    pipe.generate(["rain", "wind"], **options | {"nfe": 6}, progress=False)
    assert len(cached()[0]) > len(before[0])
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        pipe.warmup(batch=0)
    with pytest.raises(TypeError, match="warmup takes no prompts"):
        pipe.warmup(prompts=["x"])


@pytest.mark.gpu
def test_warmup_on_cuda_captures_so_the_first_request_replays(fp32_model):
    import copy

    pipe = Pipeline(copy.deepcopy(fp32_model), device="cuda")
    options = dict(seconds=1.0, nfe=4, cfg_scale=3.5)
    assert pipe.warmup(**options) == 2
    (engine,) = pipe._engines.values()
    captured = {key: static.graph is not None for key, static in engine.cache.graphs.items()}
    assert captured and all(captured.values())
    got = pipe.generate(["rain"], **options, progress=False).waveform
    assert {key: static.graph is not None for key, static in engine.cache.graphs.items()} == captured
    pipe.cuda_graphs = False
    want = pipe.generate(["rain"], **options, progress=False).waveform
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
