"""The runtime without PyTorch: NumPy schedules and solvers against etta_engine.sampling, the tokenizers against
transformers, generation against the torch Pipeline from the same noise, a run with torch blocked, the
command lines, and clear errors for bad exports and bad inputs.

Tolerance: generated audio within ``AUDIO_TOL`` relative error of the torch pipeline's (measured about 1e-6:
the graphs' fp32 rounding, accumulated over the solver's steps).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import rel_err
from test_export import exported, tiny_model

import etta_engine as E
from etta_engine import sampling as S
from etta_engine.cli import main as etta
from etta_engine.pipeline import Pipeline
from etta_engine.runtime import ManifestError, RuntimePipeline, ShapeError
from etta_engine.runtime import sampling as R
from etta_engine.runtime.tokenizer import ByteTokenizer, JsonTokenizer, padded_width

pytest.importorskip("onnxruntime")

AUDIO_TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return exported(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def runtime(onnx_dir) -> RuntimePipeline:
    return RuntimePipeline(onnx_dir)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(tiny_model(), device="cpu")


# ------------------------------------------------------------------ schedules and solvers vs etta_engine.sampling


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 7, 50, 100, 1000])
def test_schedules_are_bit_identical_to_torch(name, steps):
    want = S.SCHEDULES[name](steps).numpy()
    got = R.SCHEDULES[name](steps)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    if name == "shifted":
        assert np.array_equal(R.shifted_schedule(steps, shift=0.5), S.shifted_schedule(steps, shift=0.5).numpy())


def numpy_velocity(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.cos(np.float32(3.0) * t.reshape(-1, 1, 1)) * np.sin(x)


def torch_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.cos(3.0 * t.reshape(-1, 1, 1)) * torch.sin(x)


@pytest.mark.parametrize("solver", sorted(R.SOLVERS))
@pytest.mark.parametrize("schedule", sorted(R.SCHEDULES))
def test_solvers_match_torch_on_an_analytic_flow(solver, schedule):
    x1 = torch.linspace(-3, 3, 48).reshape(3, 2, 8)
    nfe = 12
    want = S.sample(torch_velocity, x1, solver=solver, nfe=nfe, schedule=schedule)
    got = R.sample(numpy_velocity, x1.numpy(), solver=solver, nfe=nfe, schedule=schedule)
    assert (got.nfe, got.steps) == (want.nfe, want.steps)
    assert got.x.dtype == np.float32
    assert rel_err(torch.from_numpy(got.x), want.x) < 1e-6
    # and the solution is that of the ODE, not only the same as torch's
    exact = 2 * torch.atan(torch.tan(x1 / 2) * math.exp((math.sin(0.0) - math.sin(3.0)) / 3.0))
    assert rel_err(torch.from_numpy(got.x), exact) < 0.1  # 12 calls; euler on the logsnr grid is the worst


@pytest.mark.parametrize("solver", sorted(R.SOLVERS))
def test_nfe_budget_and_errors_match_torch(solver):
    for nfe in range(1, 9):
        calls = []
        velocity = lambda x, t, calls=calls: calls.append(t) or numpy_velocity(x, t)
        try:
            want = S.steps_for(solver, nfe)
        except ValueError as e:
            with pytest.raises(ValueError, match=str(e).replace("(", r"\(").replace(")", r"\)")):
                R.sample(velocity, np.zeros((1, 1, 2), np.float32), solver=solver, nfe=nfe)
            continue
        result = R.sample(velocity, np.zeros((2, 1, 3), np.float32), solver=solver, nfe=nfe)
        assert result.steps == want and result.nfe == len(calls) <= nfe
        assert all(t.shape == (2,) and t.dtype == np.float32 for t in calls)
    with pytest.raises(ValueError, match=r"unknown solver 'dopri5'; choices: \['dpmpp_2m', 'euler'"):
        R.sample(numpy_velocity, np.zeros((1, 1, 2), np.float32), solver="dopri5")
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        R.sample(numpy_velocity, np.zeros((1, 1, 2), np.float32), schedule="cosine")


# ------------------------------------------------------------------ tokenizers vs transformers


TRICKY = [
    "a dog barks",
    "",
    "Sirène — 漢字 ñ 🎵",
    "a </s> b",
    "x<unk>y <pad> z",
    "a <extra_id_0> b<extra_id_124>",
    "<extra_id_125> <extra_id_007> <s>",
    "ends with eos</s>",
    "</s></s>",
    "tabs\tand\nnewlines  ",
]


@pytest.mark.filterwarnings("ignore:This sequence already has")
@pytest.mark.parametrize("max_length", [6, 128])
def test_byte_tokenizer_matches_byt5(max_length):
    import transformers

    ref = transformers.ByT5Tokenizer()
    ours = ByteTokenizer(max_length)
    enc = ref(TRICKY, padding="max_length", max_length=max_length, truncation=True)
    ids, mask = ours(TRICKY, truncate=True)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (len(TRICKY), max_length)
    assert ids.tolist() == enc["input_ids"] and mask.tolist() == enc["attention_mask"]
    longest, longest_mask = ours(TRICKY, truncate=True, padding="longest")
    assert longest.shape[1] == padded_width(max(int(m.sum()) for m in mask), max_length, "longest")
    assert np.array_equal(longest, ids[:, : longest.shape[1]]) and np.array_equal(longest_mask.sum(1), mask.sum(1))
    if max_length == 6:
        with pytest.raises(ValueError, match="prompt 0 is 12 tokens long, over the text encoder's limit of 6"):
            ours(TRICKY)


def fast_tokenizer(tmp_path):
    """A word-level tokenizer with T5's conventions (pad 0, </s> 1, unk 2, </s> appended), as transformers'
    fast tokenizers are saved (tokenizer.json)."""
    import tokenizers
    import transformers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {
        w: i + 3 for i, w in enumerate("a dog barks rain on the roof".split())
    }
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def test_json_tokenizer_matches_transformers_fast_tokenizer(tmp_path):
    ref = fast_tokenizer(tmp_path)
    ref.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    prompts = ["a dog barks", "rain on the roof of the dog", "unknown words here", ""]
    for L in (4, 16):
        ours = JsonTokenizer(tmp_path / "tokenizer.json", L, pad_id=0)
        enc = ref(prompts, padding="max_length", max_length=L, truncation=True)
        ids, mask = ours(prompts, truncate=True)
        assert ids.tolist() == enc["input_ids"] and mask.tolist() == enc["attention_mask"]


def test_pretrained_style_tokenizer_exports_and_runs_in_the_runtime(tmp_path):
    """A text encoder with a tokenizers-library tokenizer (as a pretrained T5's) exports its tokenizer.json; the
    runtime's conditioning equals the torch model's."""
    from etta_engine.export import export_onnx
    from etta_engine.models.text import T5TextEncoder

    model = tiny_model()
    model.text_encoder = T5TextEncoder(model.cfg.text, model.text_encoder.model, fast_tokenizer(tmp_path))
    export_onnx(model, tmp_path / "out", parts=["conditioner"], progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokenizer"] == {"kind": "tokenizers", "file": "tokenizer.json", "pad_id": 0}
    rt = RuntimePipeline(tmp_path / "out")
    prompts = ["a dog barks", "rain on the roof"]
    got = rt.encode(prompts, seconds_total=7.0)
    with torch.no_grad():
        want = model.condition(prompts, 0.0, 7.0)
    assert rel_err(torch.from_numpy(got.context), want.context) < 1e-5
    assert np.array_equal(got.context_mask, want.context_mask.numpy())


# ------------------------------------------------------------------ generation vs the torch pipeline


def torch_noise(cfg: E.ModelConfig, seeds, frames: int) -> np.ndarray:
    """The initial noise of Pipeline.generate for these seeds."""
    C = cfg.dit.io_channels
    return np.stack([torch.randn(C, frames, generator=torch.Generator().manual_seed(s)).numpy() for s in seeds])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(solver="euler", nfe=4, cfg_scale=3.5),
        dict(solver="heun", nfe=5, cfg_scale=2.0, cfg_rescale=0.5, schedule="shifted"),
        dict(solver="dpmpp_2m", nfe=4, cfg_scale=1.0, schedule="logsnr"),
        dict(solver="rk4", nfe=4, cfg_scale=3.0, cfg_interval=(0.2, 0.8)),
        dict(solver="midpoint", nfe=4, cfg_scale=3.0, negative_prompt="wind"),
    ],
    ids=["euler-cfg", "heun-rescale", "dpmpp-nocfg", "rk4-interval", "midpoint-negative"],
)
@pytest.mark.parametrize("cached", [None, False])
def test_runtime_generates_the_torch_pipelines_audio_from_the_same_noise(pipe, onnx_dir, kwargs, cached):
    runtime = RuntimePipeline(onnx_dir, cached=cached)
    prompts, seconds = ["a dog barks", "rain on a tin roof"], 1.0
    want = pipe.generate(prompts, seconds=seconds, seed=3, progress=False, **kwargs)
    noise = torch_noise(pipe.cfg, [3, 4], pipe.latent_frames(seconds))
    got = runtime.generate(prompts, seconds=seconds, noise=noise, progress=False, **kwargs)
    assert got.sample_rate == want.sample_rate and got.waveform.shape == tuple(want.waveform.shape) == (2, 2, 44100)
    assert rel_err(torch.from_numpy(got.waveform), want.waveform) < AUDIO_TOL
    # the cached graphs run unless asked not to; a negative prompt's halves both run in dit_cached
    dit_graphs = {name for name in runtime._graphs if name.startswith("dit")}
    if cached is None:
        negative = "negative_prompt" in kwargs
        guided = kwargs["cfg_scale"] != 1.0 or "cfg_interval" in kwargs
        plain = kwargs["cfg_scale"] == 1.0 or "cfg_interval" in kwargs or negative
        want = {"dit_prepare"} | ({"dit_cfg_cached"} if guided and not negative else set())
        assert dit_graphs == want | ({"dit_cached"} if plain else set())
    else:
        assert dit_graphs <= {"dit", "dit_cfg"}


@pytest.mark.parametrize("solver", sorted(R.SOLVERS))
@pytest.mark.parametrize("schedule", ["uniform", "logsnr"])
def test_evaluation_times_are_the_torch_engines(solver, schedule):
    from etta_engine.engine import evaluation_times

    for nfe in (4, 5, 8):
        got = R.evaluation_times(solver, nfe, schedule)
        assert got.dtype == np.float32 and got.tolist() == evaluation_times(solver, nfe, schedule)
        calls = []
        record = lambda x, t, calls=calls: calls.append(t[0]) or x
        R.sample(record, np.zeros((2, 1, 1), np.float32), solver=solver, nfe=nfe, schedule=schedule)
        assert calls == got.tolist()


def test_cached_velocity_serves_one_solve_at_its_times(runtime):
    """The cached velocity checks each call's t against the times it was prepared for (a wrong schedule would
    otherwise silently use another step's tables), and bad ``cached`` settings are clear errors."""
    cond = runtime.encode(["a dog barks"], seconds_total=1.0)
    times = R.evaluation_times("euler", 3)
    v = runtime.velocity_fn(cond, None, cfg_scale=3.0, times=times)
    x = np.zeros((1, 64, 5), np.float32)
    assert v(x, np.full(1, times[0], np.float32)).shape == x.shape
    with pytest.raises(RuntimeError, match=r"velocity call 1 at t=\[0.5\], but the DiT was prepared for the calls"):
        v(x, np.full(1, 0.5, np.float32))
    v(x, np.full(1, times[1], np.float32)), v(x, np.full(1, times[2], np.float32))
    with pytest.raises(RuntimeError, match="velocity call 3 at"):
        v(x, np.full(1, times[2], np.float32))
    with pytest.raises(ValueError, match=r"times must be a non-empty 1-D array in \[0, 1\]"):
        runtime.velocity_fn(cond, None, cfg_scale=3.0, times=np.array([1.5], np.float32))
    with pytest.raises(ValueError, match="cached='yes' must be None"):
        RuntimePipeline(runtime.directory, cached="yes")


@pytest.mark.parametrize("kwargs", [dict(cfg_rescale=0.7), dict(cfg_interval=(0.3, 0.8))], ids=["rescale", "interval"])
def test_negative_prompts_run_cached_as_plain(onnx_dir, kwargs):
    """A negative prompt on the cached graphs (both halves in dit_cached, guidance combined in NumPy, the cond
    half alone outside an interval) gives the plain dit_cfg's audio."""
    kw = dict(seconds=0.5, nfe=4, solver="heun", cfg_scale=3.0, negative_prompt="wind", seed=2, progress=False)
    cached, plain = RuntimePipeline(onnx_dir, cached=True), RuntimePipeline(onnx_dir, cached=False)
    got = cached.generate(["a dog barks", "rain"], **kw, **kwargs).waveform
    want = plain.generate(["a dog barks", "rain"], **kw, **kwargs).waveform
    assert {n for n in cached._graphs if n.startswith("dit")} == {"dit_prepare", "dit_cached"}
    assert rel_err(torch.from_numpy(got), torch.from_numpy(want)) < AUDIO_TOL
    other = cached.generate(["a dog barks", "rain"], **(kw | {"negative_prompt": "music"}), **kwargs).waveform
    assert rel_err(torch.from_numpy(other), torch.from_numpy(want)) > 1e-3  # the negative prompt matters


def test_resident_tables_go_from_prepare_to_the_step_without_the_host(runtime):
    """dit_prepare's outputs stay OrtValues on the session's device and bind into the step graph as they are:
    the same velocity as the tables through NumPy, and clear errors for a resident tensor that does not fit."""
    from etta_engine.runtime import ResidentTensor

    cond = runtime.encode(["a dog barks", "rain"], seconds_total=1.0)
    times = R.evaluation_times("heun", 4)
    inputs = dict(times=times, context=cond.context, global_cond=cond.global_cond)
    prepare = runtime.graph("dit_prepare")
    resident, host = prepare.run_resident(**inputs), prepare(**inputs)
    for r, h in zip(resident, host, strict=True):
        assert isinstance(r, ResidentTensor) and r.shape == h.shape and r.dtype == h.dtype.name
        assert np.array_equal(r.numpy(), h)
    x = np.random.default_rng(0).standard_normal((2, 64, 5), dtype=np.float32)
    step = np.array([2], np.int64)
    names = ("modulation", "final_modulation", "kv")
    cached = runtime.graph("dit_cached")
    (want,) = cached.bind(context_mask=cond.context_mask, **dict(zip(names, host, strict=True)))(x=x, step=step)
    (got,) = cached.bind(context_mask=cond.context_mask, **dict(zip(names, resident, strict=True)))(x=x, step=step)
    assert np.array_equal(got, want)
    (unbound,) = cached(x=x, step=step, context_mask=cond.context_mask, **dict(zip(names, resident, strict=True)))
    assert np.array_equal(unbound, want)
    wrong = dict(zip(names, resident, strict=True)) | {"kv": resident[0]}  # modulation where kv goes
    with pytest.raises(ValueError, match=r"graph 'dit_cached': input 'kv' must have shape \(2, batch, context"):
        cached(x=x, step=step, context_mask=cond.context_mask, **wrong)


def test_an_export_without_cached_graphs_runs_the_plain_ones(onnx_dir, tmp_path):
    old = tmp_path / "export"
    shutil.copytree(onnx_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("dit_prepare", "dit_cached", "dit_cfg_cached"):
        del manifest["graphs"][name]
        (old / f"{name}.onnx").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    kw = dict(seconds=0.5, nfe=2, cfg_scale=3.0, seed=1, progress=False)
    plain = RuntimePipeline(old)
    audio = plain.generate(["a dog"], **kw).waveform
    assert set(plain._graphs) == {"conditioner", "dit_cfg", "vae_decoder"}
    assert np.allclose(audio, RuntimePipeline(onnx_dir).generate(["a dog"], **kw).waveform, atol=1e-5)
    with pytest.raises(ManifestError, match=r"has no cached graphs \['dit_prepare', 'dit_cfg_cached'\]"):
        RuntimePipeline(old, cached=True).generate(["a dog"], **kw)


def test_padded_width_rounds_the_longest_prompt_up_to_a_multiple():
    from etta_engine.runtime.tokenizer import PAD_MULTIPLE

    assert PAD_MULTIPLE == 32
    assert [padded_width(n, 512, "longest") for n in (1, 32, 33, 500, 512)] == [32, 32, 64, 512, 512]
    assert padded_width(33, 40, "longest") == 40 and padded_width(3, 40, "max_length") == 40
    with pytest.raises(ValueError, match=r"padding='right' is not one of \('max_length', 'longest'\)"):
        padded_width(3, 40, "right")


def test_padding_to_the_longest_prompt_changes_only_rounding(runtime):
    kw = dict(seconds=0.5, nfe=3, cfg_scale=3.0, seed=1, progress=False)
    a = runtime.generate(["a dog", "rain on a roof"], **kw).waveform
    b = runtime.generate(["a dog", "rain on a roof"], padding="longest", **kw).waveform
    assert rel_err(torch.from_numpy(b), torch.from_numpy(a)) < AUDIO_TOL
    c = runtime.generate(["a cat", "rain on a roof"], **kw).waveform
    assert rel_err(torch.from_numpy(c[:1]), torch.from_numpy(a[:1])) > 1e-3  # the prompt matters


def test_windowed_decoding_matches_the_vae(runtime, pipe):
    z = np.random.default_rng(0).standard_normal((1, 64, 45), dtype=np.float32)
    got = runtime.decode(z, chunk_frames=24, overlap_frames=4)  # 3 windows
    with torch.no_grad():
        want = pipe.model.vae.decode(torch.from_numpy(z), chunk_frames=24, overlap_frames=4)
    assert rel_err(torch.from_numpy(got), want) < 1e-5


def test_seeded_noise_is_reproducible_and_independent_of_the_batch(runtime):
    kw = dict(seconds=0.5, nfe=2, cfg_scale=2.0, progress=False)
    batch = runtime.generate(["a", "b"], seed=5, **kw).waveform
    single = runtime.generate(["b"], seed=6, **kw).waveform
    assert np.allclose(batch[1], single[0], atol=1e-5) and np.array_equal(
        batch, runtime.generate(["a", "b"], seed=5, **kw).waveform
    )


# ------------------------------------------------------------------ without torch


def test_generation_and_wav_without_torch_installed(onnx_dir, tmp_path):
    out = tmp_path / "dog.wav"
    code = f"""
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError, as on a machine without it
sys.modules["transformers"] = None
import etta_engine
assert etta_engine.PRESETS["tiny"].latent_rate > 0  # the configs need no torch
try:
    etta_engine.DiT
except ImportError:
    pass
else:
    raise AssertionError("the torch model imported without torch")
from etta_engine.runtime.cli import main
rc = main(["generate", "a dog barks", "--model", {str(onnx_dir)!r}, "-o", {str(out)!r}, "--seconds", "1.5",
           "--nfe", "3", "--solver", "heun", "--quiet"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") and sys.modules[m])
print("rc", rc, "loaded", loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rc 0 loaded []" in result.stdout and f"wrote {out}" in result.stdout
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 32 * 2048)  # round(1.5 s x 21.53) frames
    data, _ = sf.read(out)
    assert 0 < np.abs(data).max() <= 1.0


def test_etta_generate_backend_onnx(onnx_dir, tmp_path, capsys):
    out = tmp_path / "rain.wav"
    argv = ["generate", "rain", "--backend", "onnx", "--model", str(onnx_dir), "-o", str(out), "--seconds", "0.5"]
    assert etta([*argv, "--nfe", "2", "--batch", "2", "--quiet", "--padding", "longest"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rain_0.wav", "rain_1.wav"]
    assert sf.info(tmp_path / "rain_0.wav").frames == round(0.5 * 44100)
    plain = tmp_path / "plain" / "rain.wav"
    plain.parent.mkdir()
    argv_plain = [
        *argv[:6],
        "-o",
        str(plain),
        *argv[8:],
        "--nfe",
        "2",
        "--quiet",
        "--padding",
        "longest",
        "--plain-dit",
    ]
    assert etta(argv_plain) == 0  # the plain graphs: the same clip, up to the 16-bit WAV's rounding
    assert np.abs(sf.read(plain)[0] - sf.read(tmp_path / "rain_0.wav")[0]).max() <= 2**-15
    capsys.readouterr()
    with pytest.raises(SystemExit, match="--init-audio need --backend torch"):
        etta([*argv, "--init-audio", str(tmp_path / "rain_0.wav")])
    assert etta([*argv, "--solver", "dopri5"]) == 2
    assert "unknown solver 'dopri5'" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_refuses_an_over_long_prompt_unless_truncate(backend, onnx_dir, tmp_path, capsys):
    """A prompt over the text encoder's limit is refused, naming the flag; with --truncate it generates what its
    first tokens do (the tiny model's byte tokenizer keeps 127 bytes and </s>)."""
    if backend == "torch":  # the exported model (the tiny preset, fully random: its text reaches the output)
        from etta_engine.checkpoint import save

        model = ["--model", str(save(tmp_path / "tiny.safetensors", tiny_model()))]
    else:
        model = ["--backend", "onnx", "--model", str(onnx_dir)]
    argv = ["generate", *model, "--seconds", "0.5", "--nfe", "1", "--cfg-scale", "1", "--quiet"]
    long, kept = tmp_path / "long.wav", tmp_path / "kept.wav"
    assert etta([*argv, "y" * 130, "-o", str(long)]) == 2
    err = capsys.readouterr().err
    assert "prompt 0 is 131 tokens long, over the text encoder's limit of 128 tokens" in err and "--truncate" in err
    assert not long.exists()
    assert etta([*argv, "y" * 130, "-o", str(long), "--truncate"]) == 0
    assert etta([*argv, "y" * 127, "-o", str(kept)]) == 0
    assert np.array_equal(sf.read(long)[0], sf.read(kept)[0])
    assert etta([*argv, "x" * 127, "-o", str(tmp_path / "other.wav")]) == 0  # the prompt does matter
    assert not np.array_equal(sf.read(long)[0], sf.read(tmp_path / "other.wav")[0])


# ------------------------------------------------------------------ bad exports and bad inputs


def test_missing_or_foreign_directories_are_clear_errors(tmp_path, capsys):
    from etta_engine.runtime.cli import main as etta_runtime

    assert etta_runtime(["generate", "x", "--model", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.wav")]) == 2
    assert "etta-runtime generate: error: " in capsys.readouterr().err and not (tmp_path / "x.wav").exists()
    with pytest.raises(FileNotFoundError, match="is not a directory; expected the output of `etta export onnx`"):
        RuntimePipeline(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        RuntimePipeline(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(ManifestError, match="is not an etta_engine ONNX manifest"):
        RuntimePipeline(tmp_path)
    with pytest.raises(ValueError, match=r"backend='cuda' is not one of \('onnxruntime', 'tensorrt'\)"):
        RuntimePipeline(tmp_path, backend="cuda")


def test_graphs_that_do_not_match_the_runtime_are_refused(onnx_dir, tmp_path):
    bad = tmp_path / "export"
    shutil.copytree(onnx_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["graphs"]["dit"]["inputs"][0]["dtype"] = "float16"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ManifestError, match=r"graph 'dit' was exported with inputs \[x: float16 .* expects \[x: float32"
    ):
        RuntimePipeline(bad)
    manifest["graphs"]["dit"]["inputs"][0]["dtype"] = "float32"
    manifest["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="has format_version 99; this runtime reads 1"):
        RuntimePipeline(bad)
    manifest["format_version"] = 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(bad / "vae_decoder.onnx", bad / "dit.onnx")  # a graph file that is not what the manifest says
    rt = RuntimePipeline(bad)
    with pytest.raises(
        ManifestError, match=r"graph 'dit' has inputs \['latents'\], but the runtime expects \['x', 't'"
    ):
        rt.graph("dit")
    (bad / "dit.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="dit.onnx listed in the manifest does not exist"):
        RuntimePipeline(bad).graph("dit")


def test_bad_graph_inputs_are_clear_errors(runtime):
    dit = runtime.graph("dit")
    B, L = 2, 7
    ok = dict(
        x=np.zeros((B, 64, 5), np.float32),
        t=np.zeros(B, np.float32),
        context=np.zeros((B, L, 32), np.float32),
        context_mask=np.ones((B, L), bool),
        global_cond=np.zeros((B, 64), np.float32),
    )
    assert dit(**ok)[0].shape == (B, 64, 5)
    with pytest.raises(ShapeError, match=r"graph 'dit': frames=11026 \(input 'x' of shape \(2, 64, 11026\)\) is "
                                         r"outside \[1, 11025\] \(the model's limits\)"):  # fmt: skip
        dit(**ok | {"x": np.zeros((B, 64, 11026), np.float32)})
    with pytest.raises(ShapeError, match=r"context=131 .* is outside \[3, 130\]"):
        dit(**ok | {"context": np.zeros((B, 131, 32), np.float32), "context_mask": np.ones((B, 131), bool)})
    with pytest.raises(TypeError, match="input 'x' must be float32, got float64"):
        dit(**ok | {"x": np.zeros((B, 64, 5))})
    with pytest.raises(ValueError, match="inputs disagree on batch: 'x' has 2, 't' has 3"):
        dit(**ok | {"t": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"input 'x' must have shape \(batch, 64, frames\), got \(2, 63, 5\)"):
        dit(**ok | {"x": np.zeros((B, 63, 5), np.float32)})
    with pytest.raises(ValueError, match=r"takes inputs .* \(missing \['global_cond'\], unexpected \['g'\]\)"):
        dit(**{k: v for k, v in ok.items() if k != "global_cond"}, g=ok["global_cond"])


def test_bound_graph_equals_the_plain_call(runtime):
    """A generation's conditioning bound once (device OrtValues in an I/O binding): every step's result is the
    plain call's, the binding is made once, the caller's arrays are copied, and misuse is a clear error."""
    g = np.random.default_rng(0)
    B, L = 2, 7
    fixed = dict(
        context=g.standard_normal((B, L, 32), np.float32),
        context_mask=np.arange(L)[None, :] < np.array([[4], [7]]),
        global_cond=g.standard_normal((B, 64), np.float32),
    )
    dit = runtime.graph("dit")
    bound = dit.bind(**fixed)
    states = []
    for k in range(3):
        x, t = g.standard_normal((B, 64, 5), np.float32), np.full(B, 1 - k / 3, np.float32)
        (want,) = dit(x=x, t=t, **fixed)
        (got,) = bound(x=x, t=t)
        assert np.array_equal(got, want)
        states.append(bound.state)
    assert states[0] is not None and all(s is states[0] for s in states)
    fixed["global_cond"] += 1.0  # the binding holds its own copy
    assert np.array_equal(bound(x=x, t=t)[0], want)
    assert not np.array_equal(dit(x=x, t=t, **fixed)[0], want)
    with pytest.raises(ValueError, match=r"graph 'dit' has no inputs \['memory'\]; its inputs are"):
        dit.bind(memory=fixed["context"])
    with pytest.raises(ValueError, match=r"graph 'dit': inputs \['context'\] are bound already"):
        bound(x=x, t=t, context=fixed["context"])
    with pytest.raises(TypeError, match="input 'global_cond' must be float32, got float64"):
        dit.bind(**fixed | {"global_cond": fixed["global_cond"].astype(np.float64)})(x=x, t=t)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        (dict(seconds=600.0), ValueError, r"seconds=600.0 is outside \(0, 512\]"),
        (dict(solver="dopri5"), ValueError, "unknown solver 'dopri5'"),
        (dict(nfe=0), ValueError, "nfe=0 must be an integer >= 1"),
        (dict(cfg_scale=-1.0), ValueError, "cfg_scale=-1.0 must be >= 0"),
        (dict(cfg_rescale=2.0), ValueError, r"cfg_rescale=2.0 is outside \[0, 1\]"),
        (dict(seed=[1, 2]), ValueError, "got 2 seeds for 1 prompts"),
        (
            dict(noise=np.zeros((1, 64, 3), np.float32)),
            ValueError,
            r"noise must be a numpy array of shape \(1, 64, 11\)",
        ),
        (dict(padding="left"), ValueError, "padding='left' is not one of"),
    ],
)
def test_bad_generation_arguments(runtime, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        runtime.generate(["x"], **{"progress": False, "seconds": 0.5, "nfe": 2, **kwargs})


def test_bad_conditioning_values(runtime):
    with pytest.raises(ValueError, match=r"seconds_total=600 is outside \[0, 512\]"):
        runtime.encode(["x"], seconds_total=600.0)
    with pytest.raises(ValueError, match=r"seconds_start must be a number or have 2 values"):
        runtime.encode(["x", "y"], seconds_start=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="prompt 0 is 131 tokens long, over the text encoder's limit of 128"):
        runtime.encode(["y" * 130])
    assert runtime.encode(["y" * 130], truncate=True).context.shape == (1, 130, 32)
