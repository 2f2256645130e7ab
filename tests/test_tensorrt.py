"""TensorRT: the exported graphs against TensorRT's ONNX operator support matrix (no TensorRT needed), the
optimisation profiles, clear errors where TensorRT is missing, and, on a machine with TensorRT and a GPU, engines
built from the tiny export and run against ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from conftest import rel_err
from onnx import TensorProto, helper
from test_export import exported

from etta_engine.cli import main as etta
from etta_engine.config import PRESETS
from etta_engine.export.tensorrt import Profile, profile_shapes, support_table, unsupported_by_tensorrt
from etta_engine.runtime import RuntimePipeline, ShapeError

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return exported(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    return exported(
        tmp_path_factory, "tiny-fp16", dtype="fp16", parts=["dit", "vae_decoder"], external_data_threshold=0
    )


# ------------------------------------------------------------------ operator support, without TensorRT


def test_support_table_names_its_source():
    table = support_table()
    assert table["source"].startswith("https://github.com/onnx/onnx-tensorrt/") and table["tensorrt"] == "10.15"
    assert (table["opset_min"], table["opset_max"]) == (9, 24)
    assert {"LayerNormalization", "MatMul", "ConvTranspose", "Softmax"} <= set(table["supported"])
    assert not set(table["supported"]) & set(table["unsupported"])


def test_every_exported_operator_is_supported_by_tensorrt(onnx_dir, fp16_dir):
    for directory in (onnx_dir, fp16_dir):
        for path in sorted(directory.glob("*.onnx")):
            proto = onnx.load(str(path))
            assert len({n.op_type for n in proto.graph.node}) > 5
            assert unsupported_by_tensorrt(proto) == [], path


def test_the_support_check_finds_what_tensorrt_lacks():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, ["n"])
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="unique"),
        helper.make_node("ReduceMax", ["flag"], ["any"], name="reduce_bool", keepdims=0),
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
    ]
    outputs = [
        helper.make_tensor_value_info("u", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("any", TensorProto.BOOL, None),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
    ]
    graph = helper.make_graph(nodes, "g", [x, flag], outputs)
    problems = unsupported_by_tensorrt(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)]))
    assert problems[0] == "opset 25 is outside [9, 24]"
    assert any(p.startswith("Unique (unique): not supported by TensorRT 10.15") for p in problems)
    assert any(p.startswith("ReduceMax (reduce_bool): input 'flag' is BOOL") for p in problems)
    assert not any("relu" in p for p in problems)


# ------------------------------------------------------------------ profiles


def test_default_profiles_follow_the_model():
    cfg = PRESETS["etta"]
    p = Profile.for_model(cfg)
    assert p.frames == (1, 215, 1292) and p.text == (1, 512, 512) and p.vae_frames == (1, 215, 512)
    shapes = profile_shapes("dit_cfg", cfg, p)
    assert shapes["x"] == ((1, 64, 1), (1, 64, 215), (4, 64, 1292))
    assert shapes["context"] == ((1, 3, 768), (1, 514, 768), (4, 514, 768))
    assert shapes["cfg_scale"] == ((1,), (1,), (4,))
    # the cached graphs: the tables of up to 512 calls, one step index
    shapes = profile_shapes("dit_cfg_cached", cfg, p)
    assert shapes["modulation"] == ((1, 24, 1, 9 * 1536), (100, 24, 1, 9 * 1536), (512, 24, 4, 9 * 1536))
    assert shapes["kv"] == ((24, 1, 3, 2, 16, 48), (24, 1, 514, 2, 16, 48), (24, 4, 514, 2, 16, 48))
    assert shapes["step"] == ((1,), (1,), (1,))
    assert profile_shapes("dit_prepare", cfg, Profile.for_model(cfg, steps=(1, 8, 64)))["times"] == ((1,), (8,), (64,))
    tiny = PRESETS["tiny"]
    shapes = profile_shapes("conditioner", tiny, Profile.for_model(tiny, batch=(1, 2, 8)))
    assert shapes == {
        "input_ids": ((1, 1), (2, 128), (8, 128)),
        "attention_mask": ((1, 1), (2, 128), (8, 128)),
        "numbers": ((1, 2), (2, 2), (8, 2)),
    }
    assert profile_shapes("vae_decoder", tiny, Profile(vae_frames=(1, 8, 16)))["latents"][2] == (4, 64, 16)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (dict(frames=(10, 5, 20)), r"profile frames=\(10, 5, 20\) must be integers with 1 <= min <= opt <= max"),
        (dict(batch=(0, 1, 2)), r"profile batch=\(0, 1, 2\)"),
        (dict(text=(1, 64, 600)), "profile text max 600 exceeds the text encoder's length 128"),
        (dict(steps=(1, 2, 1)), r"profile steps=\(1, 2, 1\) must be integers"),
        (dict(nfe=(1, 2, 3)), r"unknown profile dimensions \['nfe'\]"),
    ],
)
def test_bad_profiles_are_clear_errors(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        Profile.for_model(PRESETS["tiny"], **overrides)


# ------------------------------------------------------------------ without TensorRT: clear errors


@pytest.mark.skipif(HAVE_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_without_tensorrt_the_commands_say_what_to_install(onnx_dir, tmp_path, capsys):
    assert etta(["export", "tensorrt", str(onnx_dir), str(tmp_path / "engines"), "--quiet"]) == 2
    assert "pip install 'etta_engine[tensorrt]'" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()
    with pytest.raises(ImportError, match=r"the TensorRT backend needs TensorRT 10 and cuda-python"):
        RuntimePipeline(onnx_dir, backend="tensorrt").graph("dit")


# ------------------------------------------------------------------ on the stand-in (tests/fake_tensorrt.py)
# TensorRT cannot be installed here: these run the build, the runner's buffers and copies and the resident
# tables against a stand-in that follows TensorRT's and cuda-python's documented calls, checks how they are used
# and runs each engine's ONNX graph in ONNX Runtime. They prove our calls' logic, not TensorRT's behaviour.

FAKE_PROFILE = Profile(batch=(1, 2, 3), frames=(1, 22, 64), text=(1, 128, 128), vae_frames=(1, 22, 64))


@pytest.fixture(scope="module")
def fake_engines(onnx_dir, tmp_path_factory):
    import fake_tensorrt

    from etta_engine.export.tensorrt import build_engines

    out = tmp_path_factory.getbasetemp() / "trt-fake-tiny"
    cache = tmp_path_factory.getbasetemp() / "trt-fake-tiny.cache"
    with fake_tensorrt.installed():
        build_engines(onnx_dir, out, profile=FAKE_PROFILE, timing_cache=cache, progress=False)
    assert cache.read_bytes()
    return out


def test_engines_are_built_with_their_settings_on_the_stand_in(fake_engines, onnx_dir):
    settings = json.loads((fake_engines / "engines.json").read_text())
    assert settings["tensorrt"] == "10.99.0-fake"
    assert settings["gpu"] == {"name": "Fake GPU", "compute_capability": "9.0"}
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert sorted(settings["graphs"]) == sorted(manifest["graphs"])  # the cached DiT graphs too
    assert settings["strongly_typed"] is False  # an fp32 export builds weakly typed
    assert settings["graphs"]["dit_cached"]["profile"]["modulation"] == [[1, 2, 1, 576], [100, 2, 2, 576],
                                                                         [512, 2, 3, 576]]  # fmt: skip
    assert (fake_engines / "manifest.json").read_text() == (onnx_dir / "manifest.json").read_text()


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("negative", [None, "static"])
def test_tensorrt_runner_on_the_stand_in_generates_what_onnx_runtime_does(fake_engines, onnx_dir, cached, negative):
    import gc

    import fake_tensorrt

    kw = dict(seconds=1.0, nfe=3, cfg_scale=3.0, seed=0, progress=False, negative_prompt=negative)
    want = RuntimePipeline(onnx_dir, cached=cached).generate(["a dog barks"], **kw).waveform
    with fake_tensorrt.installed() as (_, rt):
        pipe = RuntimePipeline(fake_engines, backend="tensorrt", cached=cached)
        got = pipe.generate(["a dog barks"], **kw).waveform
        assert pipe.cached is cached
        np.testing.assert_array_equal(got, want)  # the same graphs run: equal, not close
        del pipe
        gc.collect()
        assert rt.memory == {}  # every buffer and resident table freed with the pipeline


def test_cached_tables_stay_in_device_memory_on_tensorrt(fake_engines, monkeypatch):
    """dit_prepare's tables go from its engine to the step engines' inputs where they lie: never copied to the
    host, never into a buffer of the step engines."""
    import fake_tensorrt

    from etta_engine.runtime.tensorrt import DeviceArray

    def to_host(self):
        raise AssertionError("a table was copied to the host")

    monkeypatch.setattr(DeviceArray, "numpy", to_host)
    with fake_tensorrt.installed() as (_, rt):
        pipe = RuntimePipeline(fake_engines, backend="tensorrt")
        pipe.generate(["a dog barks"], seconds=1.0, nfe=4, cfg_scale=3.0, progress=False)
        step = pipe.graph("dit_cfg_cached")
        assert step.context.runs == 4 and step.context.engine.profile  # the guided step ran at each call
        assert {"modulation", "final_modulation", "kv"}.isdisjoint(step._buffers)
        assert "x" in step._buffers and "context_mask" in step._buffers  # inputs from the host are copied in
        # the tables' bytes: made once on the device, no copy of them either way
        prepared = pipe.graph("dit_prepare")
        table_bytes = {prepared.context.get_tensor_shape(n) for n in ("modulation", "final_modulation", "kv")}
        assert all(n != np.prod(shape) * 4 for _, n in rt.copies for shape in table_bytes), "a copy of a table's size"


def test_tensorrt_profile_errors_on_the_stand_in(fake_engines):
    import fake_tensorrt

    with fake_tensorrt.installed():
        pipe = RuntimePipeline(fake_engines, backend="tensorrt")
        kw = dict(seconds=1.0, nfe=3, cfg_scale=3.0, seed=0, progress=False)
        with pytest.raises(ShapeError, match=r"frames=65 .* outside \[1, 64\] \(the engine's optimisation profile"):
            pipe.generate(["a dog barks"], **kw | {"seconds": 65 / pipe.cfg.latent_rate})
        with pytest.raises(ShapeError, match=r"batch=4 .* outside \[1, 3\]"):
            pipe.generate(["a"] * 4, **kw)
        with pytest.raises(ShapeError, match=r"steps=513 .* outside \[1, 512\]"):
            pipe.generate(["a"], **kw | {"nfe": 513})


def test_export_and_generate_commands_on_the_stand_in(onnx_dir, tmp_path, capsys):
    """`etta export tensorrt` with its profile flags, then `etta generate --backend tensorrt`, end to end."""
    import fake_tensorrt
    import soundfile as sf

    out = tmp_path / "engines"
    with fake_tensorrt.installed():
        code = etta(["export", "tensorrt", str(onnx_dir), str(out), "--quiet", "--parts", "conditioner", "dit_prepare",
                     "dit_cached", "dit_cfg_cached", "vae_decoder", "--batch", "1", "1", "2", "--frames", "1", "22",
                     "32", "--steps", "1", "4", "8", "--timing-cache", str(tmp_path / "cache")])  # fmt: skip
        assert code == 0
        assert f"wrote {out}/dit_cached.engine" in capsys.readouterr().out
        settings = json.loads((out / "engines.json").read_text())
        assert settings["profile"]["steps"] == [1, 4, 8] and settings["profile"]["batch"] == [1, 1, 2]
        assert settings["graphs"]["dit_cached"]["profile"]["modulation"][2] == [8, 2, 2, 576]  # steps, depth, rows

        def generate(nfe: int, wav):
            return etta(["generate", "rain", "--backend", "tensorrt", "--model", str(out), "-o", str(wav),
                         "--seconds", "1", "--nfe", str(nfe), "--quiet"])  # fmt: skip

        assert generate(4, tmp_path / "rain.wav") == 0
        assert sf.info(tmp_path / "rain.wav").frames == 44100
        # NFE 9 is past the engines' steps profile: a clear error naming the flag to widen, and no file
        assert generate(9, tmp_path / "no.wav") != 0
        err = capsys.readouterr().err
        assert "steps=9" in err and "--steps range" in err and not (tmp_path / "no.wav").exists()


# ------------------------------------------------------------------ with TensorRT and a GPU


@pytest.fixture(scope="module")
def engines(onnx_dir, tmp_path_factory):
    pytest.importorskip("tensorrt")
    from etta_engine.export.tensorrt import build_engines

    out = tmp_path_factory.getbasetemp() / "trt-tiny"
    cache = tmp_path_factory.getbasetemp() / "trt-tiny.cache"
    profile = Profile(batch=(1, 2, 3), frames=(1, 22, 64), text=(1, 128, 128), vae_frames=(1, 22, 64))
    build_engines(onnx_dir, out, profile=profile, timing_cache=cache, progress=False)
    assert cache.stat().st_size > 0
    return out


@pytest.mark.gpu
def test_engines_are_saved_with_their_build_settings(engines, onnx_dir):
    import tensorrt as trt

    settings = json.loads((engines / "engines.json").read_text())
    assert settings["tensorrt"] == trt.__version__ and settings["gpu"]["name"] != "unknown"
    assert sorted(settings["graphs"]) == ["conditioner", "dit", "dit_cfg", "vae_decoder"]
    for name, entry in settings["graphs"].items():
        assert (engines / entry["engine"]).stat().st_size > 0
        assert entry["profile"]["x" if name.startswith("dit") else next(iter(entry["profile"]))]
    assert (engines / "manifest.json").read_text() == (onnx_dir / "manifest.json").read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 17, 64])
def test_tensorrt_runner_matches_onnx_runtime(engines, onnx_dir, T):
    trt_pipe = RuntimePipeline(engines, backend="tensorrt")
    ort_pipe = RuntimePipeline(onnx_dir)
    cond = ort_pipe.encode(["a dog barks", "rain"], seconds_total=3.0)
    x = np.random.default_rng(T).standard_normal((2, 64, T), dtype=np.float32)
    t = np.array([0.3, 0.9], np.float32)
    inputs = dict(x=x, t=t, context=cond.context, context_mask=cond.context_mask, global_cond=cond.global_cond)
    (want,) = ort_pipe.graph("dit")(**inputs)
    (got,) = trt_pipe.graph("dit")(**inputs)
    assert rel_err(np.asarray(got), np.asarray(want)) < 1e-3  # TF32 may be on in TensorRT's fp32 kernels
    trt_cond = trt_pipe.encode(["a dog barks", "rain"], seconds_total=3.0)
    assert rel_err(trt_cond.context, cond.context) < 1e-3


@pytest.mark.gpu
def test_tensorrt_generation_and_profile_errors(engines, onnx_dir):
    trt_pipe = RuntimePipeline(engines, backend="tensorrt")
    kw = dict(seconds=1.0, nfe=3, cfg_scale=3.0, seed=0, progress=False)
    got = trt_pipe.generate(["a dog barks"], **kw).waveform
    want = RuntimePipeline(onnx_dir).generate(["a dog barks"], **kw).waveform
    assert rel_err(got, want) < 1e-2
    with pytest.raises(ShapeError, match=r"frames=65 .* outside \[1, 64\] \(the engine's optimisation profile"):
        trt_pipe.generate(["a dog barks"], **kw | {"seconds": 65 / trt_pipe.cfg.latent_rate})
    with pytest.raises(ShapeError, match=r"batch=4 .* outside \[1, 3\]"):
        trt_pipe.generate(["a"] * 4, **kw)
