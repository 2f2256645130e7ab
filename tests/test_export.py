"""ONNX export: checked graphs with dynamic batch, latent and text lengths, parity with torch in ONNX Runtime,
the fp16 variant, external data, the CLI, bad input, and the runtime benchmark's smoke mode.

Tolerances (relative error ||a - b|| / ||b||, fp64): an fp32 graph in ONNX Runtime vs the torch module within
``FP32_TOL`` (measured: about 1e-6), and for the DiT also as close to an fp64 run as twice torch's own fp32 error;
an fp16 graph vs the fp32 torch reference within twice the error of torch's own fp16 run plus ``FP16_TINY``
(STYLE.md rule 7).
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_, rel_err

import etta_engine as E
from etta_engine import sampling
from etta_engine.cli import main as etta
from etta_engine.export import ExportError, export_onnx
from etta_engine.export.onnx import EXTERNAL_DATA, _externalize
from etta_engine.models.conditioning import DiTConditioning
from etta_engine.runtime import read_manifest

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
FP32_TOL = 1e-5
FP16_TINY = 1e-3


def tiny_model() -> E.ETTAModel:
    """The tiny preset with a fully random DiT (its zero-initialised layers would hide bugs), seed 0."""
    model = E.ETTAModel.from_preset("tiny").eval()
    randomize_(model.dit, std=0.2)
    return model


def exported(tmp_path_factory, name: str, **kwargs) -> Path:
    """Export ``tiny_model()`` once per test session (test_runtime.py and test_tensorrt.py share it)."""
    path = tmp_path_factory.getbasetemp() / f"onnx-{name}"
    if not (path / "manifest.json").is_file():
        export_onnx(tiny_model(), path, progress=False, **kwargs)
    return path


@functools.cache
def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path: Path, **inputs: torch.Tensor) -> list[np.ndarray]:
    return session(path).run(None, {k: v.numpy() for k, v in inputs.items()})


@pytest.fixture(scope="module")
def model() -> E.ETTAModel:
    return tiny_model()


@pytest.fixture(scope="module")
def dit64(model) -> E.DiT:
    """The DiT in fp64: the reference that fp32 results are measured against."""
    return copy.deepcopy(model.dit).double()


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return exported(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory) -> Path:
    """The fp16 variant of the DiT step (plain and cached CFG) and VAE decoder, with every tensor in external data."""
    parts = ["dit", "vae_decoder", "dit_prepare", "dit_cfg_cached"]
    return exported(tmp_path_factory, "tiny-fp16", dtype="fp16", parts=parts, external_data_threshold=0)


def ragged_inputs(cfg: E.ModelConfig, B: int, T: int, L: int, seed: int = 0):
    """DiT inputs with a context of L tokens (some rows padded) and in-range t."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.dit.io_channels, T, generator=g)
    t = torch.rand(B, generator=g)
    context = torch.randn(B, L, cfg.dit.cond_dim, generator=g)
    mask = torch.arange(L)[None, :] < (L - torch.arange(B) % L)[:, None]
    global_cond = torch.randn(B, cfg.dit.global_cond_dim, generator=g)
    return x, t, context, mask, global_cond


# ------------------------------------------------------------------ the files


def test_export_writes_checked_graphs_and_a_manifest(onnx_dir, model):
    manifest = read_manifest(onnx_dir)
    assert sorted(manifest.graphs) == sorted(
        ["conditioner", "dit", "dit_cfg", "vae_decoder", "dit_prepare", "dit_cached", "dit_cfg_cached"]
    )
    assert manifest.config == model.cfg and manifest.opset >= 17
    assert manifest.tokenizer == {"kind": "byt5"}
    raw = json.loads((onnx_dir / "manifest.json").read_text())
    assert raw["sample_rate"] == 44100 and raw["latent_rate"] == pytest.approx(44100 / 2048)
    assert raw["export"]["torch"] == torch.__version__ and raw["export"]["ops"].startswith("torch")
    for name, entry in manifest.graphs.items():
        path = onnx_dir / entry.file
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert next(o.version for o in proto.opset_import if o.domain == "") == manifest.opset
        assert entry.external_data is None and not (onnx_dir / EXTERNAL_DATA).exists()
        assert raw["export"]["verification_max_rel_err"][name] < FP32_TOL
        # the batch and the lengths are symbolic in the graph itself
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
        for spec in entry.inputs:
            for axis, dim in enumerate(spec.shape):
                assert isinstance(dims[spec.name][axis], str) == isinstance(dim, str), (name, spec, dims)
    assert not list(onnx_dir.parent.glob(".onnx-tiny.tmp-*"))  # the temporary directory was renamed into place


# ------------------------------------------------------------------ parity with torch (ONNX Runtime, CPU)


@pytest.mark.parametrize("T", [1, 17, 215])
@pytest.mark.parametrize(("B", "L"), [(1, 7), (3, 130)])
def test_dit_step_matches_torch(onnx_dir, model, dit64, T, B, L):
    x, t, context, mask, global_cond = ragged_inputs(model.cfg, B, T, L, seed=T)
    with torch.no_grad():
        want = model.dit(x, t, context, mask, global_cond)
        exact = dit64(x.double(), t.double(), context.double(), mask, global_cond.double())
    (got,) = run(onnx_dir / "dit.onnx", x=x, t=t, context=context, context_mask=mask, global_cond=global_cond)
    assert got.shape == (B, model.cfg.dit.io_channels, T)
    got = torch.from_numpy(got)
    assert rel_err(got, want) < FP32_TOL
    assert rel_err(got, exact) <= 2 * rel_err(want, exact) + 1e-7  # as accurate as torch's own fp32


@pytest.mark.parametrize("T", [1, 17, 215])
@pytest.mark.parametrize(("scale", "rescale"), [(3.5, 0.0), (2.0, 0.7), (1.0, 0.0)])
def test_dit_cfg_step_matches_sampling_cfg(onnx_dir, model, dit64, T, scale, rescale):
    B, L = 2, 9
    x, t, context, mask, global_cond = ragged_inputs(model.cfg, B, T, L, seed=T)
    _, _, uncond, uncond_mask, _ = ragged_inputs(model.cfg, B, T, L, seed=T + 1)
    uncond_mask = uncond_mask.flip(0)  # a negative prompt's own mask
    both = DiTConditioning(torch.cat((context, uncond)), torch.cat((mask, uncond_mask)), global_cond.repeat(2, 1))
    both64 = DiTConditioning(both.context.double(), both.context_mask, both.global_cond.double())
    with torch.no_grad():
        want = sampling.cfg(lambda x2, t2: model.dit(x2, t2, *both), scale, rescale=rescale)(x, t)
        exact = sampling.cfg(lambda x2, t2: dit64(x2, t2, *both64), scale, rescale=rescale)(x.double(), t.double())
    (got,) = run(
        onnx_dir / "dit_cfg.onnx",
        x=x,
        t=t,
        context=context,
        context_mask=mask,
        uncond_context=uncond,
        uncond_context_mask=uncond_mask,
        global_cond=global_cond,
        cfg_scale=torch.full((B,), scale),
        cfg_rescale=torch.full((B,), rescale),
    )
    got = torch.from_numpy(got)
    assert rel_err(got, want) < FP32_TOL
    assert rel_err(got, exact) <= 2 * rel_err(want, exact) + 1e-7


def cached_tables(onnx_dir, times, context, global_cond) -> dict[str, torch.Tensor]:
    modulation, final, kv = run(onnx_dir / "dit_prepare.onnx", times=times, context=context, global_cond=global_cond)
    return dict(modulation=modulation, final_modulation=final, kv=kv)


@pytest.mark.parametrize(("B", "L", "T"), [(1, 7, 1), (3, 130, 17), (2, 9, 215)])
def test_cached_graphs_match_the_plain_dit_at_every_call(onnx_dir, model, dit64, B, L, T):
    """dit_prepare once, then dit_cached at call k equals the plain DiT at t = times[k] (and is as accurate)."""
    x, _, context, mask, global_cond = ragged_inputs(model.cfg, B, T, L, seed=T)
    times = torch.tensor([1.0, 0.62, 0.25, 0.0])
    tables = {k: torch.from_numpy(v) for k, v in cached_tables(onnx_dir, times, context, global_cond).items()}
    cfg = model.cfg.dit
    assert tables["modulation"].shape == (4, cfg.depth, B, 9 * cfg.width)
    assert tables["kv"].shape == (cfg.depth, B, L, 2, cfg.cross_heads, cfg.cross_head_dim)
    outputs = []
    for k in (3, 0, 2):  # any order: the step index picks the row
        t = times[k].repeat(B)
        with torch.no_grad():
            want = model.dit(x, t, context, mask, global_cond)
            exact = dit64(x.double(), t.double(), context.double(), mask, global_cond.double())
        (got,) = run(onnx_dir / "dit_cached.onnx", x=x, step=torch.tensor([k]), context_mask=mask, **tables)
        got = torch.from_numpy(got)
        assert rel_err(got, want) < FP32_TOL
        # fp32 rounding of its own (batched adaLN matmuls): a few ulps, like torch's
        assert rel_err(got, exact) <= 2 * rel_err(want, exact) + 1e-6
        outputs.append(got)
    assert rel_err(outputs[0], outputs[1]) > 1e-2  # the time matters


@pytest.mark.parametrize(("scale", "rescale"), [(3.5, 0.0), (2.0, 0.7)])
def test_cached_cfg_graph_matches_dit_cfg_with_the_null_memory(onnx_dir, model, scale, rescale):
    """dit_cfg_cached (uncond cross-attention skipped) equals dit_cfg with a zero uncond context."""
    B, L, T = 2, 9, 17
    x, _, context, mask, global_cond = ragged_inputs(model.cfg, B, T, L, seed=5)
    times = torch.tensor([0.9, 0.4])
    tables = cached_tables(onnx_dir, times, context, global_cond)
    guidance = dict(cfg_scale=torch.full((B,), scale), cfg_rescale=torch.full((B,), rescale))
    for k in range(2):
        (want,) = run(onnx_dir / "dit_cfg.onnx", x=x, t=times[k].repeat(B), context=context, context_mask=mask,
                      uncond_context=torch.zeros_like(context), uncond_context_mask=mask, global_cond=global_cond,
                      **guidance)  # fmt: skip
        tensors = {k: torch.from_numpy(v) for k, v in tables.items()}
        (got,) = run(onnx_dir / "dit_cfg_cached.onnx", x=x, step=torch.tensor([k]), context_mask=mask,
                     **tensors, **guidance)  # fmt: skip
        assert rel_err(torch.from_numpy(got), torch.from_numpy(want)) < FP32_TOL


@pytest.mark.parametrize("T", [1, 17, 215])
def test_vae_decoder_matches_torch(onnx_dir, model, T):
    B = 2 if T < 100 else 1
    z = torch.randn(B, model.cfg.vae.latent_dim, T, generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        want = model.vae.decode(z)
    (got,) = run(onnx_dir / "vae_decoder.onnx", latents=z)
    assert got.shape == (B, 2, T * 2048)
    assert rel_err(torch.from_numpy(got), want) < FP32_TOL


def test_conditioner_matches_model_condition_at_two_text_lengths(onnx_dir, model):
    prompts = ["a dog barks", "rain on a tin roof, distant thunder and wind", "é"]
    seconds_start, seconds_total = torch.tensor([0.0, 1.5, 3.0]), torch.tensor([10.0, 4.0, 512.0])
    ids, mask = model.text_encoder.tokenize(prompts)
    numbers = torch.stack((seconds_start, seconds_total), dim=1)
    with torch.no_grad():
        want = model.condition(prompts, seconds_start, seconds_total)  # padded to max_length (128)
    got = run(onnx_dir / "conditioner.onnx", input_ids=ids, attention_mask=mask.long(), numbers=numbers)
    assert got[0].shape == (3, 130, 32) and got[1].dtype == np.bool_
    assert np.array_equal(got[1], want.context_mask.numpy())
    for g, w in ((got[0], want.context), (got[2], want.global_cond)):
        assert rel_err(torch.from_numpy(g), w) < FP32_TOL
    # the longest prompt's length: the same tokens up to rounding (T5's keys are masked), the pad rows absent
    L = int(mask.sum(1).max())
    short = run(onnx_dir / "conditioner.onnx", input_ids=ids[:, :L], attention_mask=mask[:, :L].long(), numbers=numbers)
    assert short[0].shape == (3, L + 2, 32)
    kept = torch.cat((torch.arange(L), torch.tensor([128, 129])))
    assert rel_err(torch.from_numpy(short[0]), want.context[:, kept]) < FP32_TOL
    assert np.array_equal(short[1], want.context_mask[:, kept].numpy())


# ------------------------------------------------------------------ fp16 and external data


@pytest.mark.parametrize("T", [1, 17, 215])
def test_fp16_variant_is_as_close_to_fp32_as_torch_fp16(fp16_dir, model, T):
    x, t, context, mask, global_cond = ragged_inputs(model.cfg, 2, T, 9, seed=T)
    half_dit = E.DiT(model.cfg.dit).half().eval()
    half_dit.load_state_dict(model.dit.state_dict())
    with torch.no_grad():
        ref = model.dit(x, t, context, mask, global_cond)
        naive = half_dit(x.half(), t, context.half(), mask, global_cond.half()).float()
    (got,) = run(fp16_dir / "dit.onnx", x=x, t=t, context=context, context_mask=mask, global_cond=global_cond)
    assert got.dtype == np.float32  # the interface stays fp32
    assert rel_err(torch.from_numpy(got), ref) <= 2 * rel_err(naive, ref) + FP16_TINY

    z = torch.randn(1, model.cfg.vae.latent_dim, T, generator=torch.Generator().manual_seed(T))
    half_vae = E.VAE(model.cfg.vae).half().eval()
    half_vae.load_state_dict(model.vae.state_dict())
    with torch.no_grad():
        ref, naive = model.vae.decode(z), half_vae.decode(z.half()).float()
    (got,) = run(fp16_dir / "vae_decoder.onnx", latents=z)
    assert rel_err(torch.from_numpy(got), ref) <= 2 * rel_err(naive, ref) + FP16_TINY


@pytest.mark.parametrize("T", [17, 215])
def test_fp16_cached_cfg_is_as_close_to_fp32_as_torch_fp16(fp16_dir, model, T):
    """The fp16 cached graphs (tables in fp16, returned through the fp32 interface: a lossless round trip)."""
    B, L, scale = 2, 9, 3.5
    x, t, context, mask, global_cond = ragged_inputs(model.cfg, B, T, L, seed=T)
    t = torch.full((B,), 0.7)
    null = torch.zeros_like(context)
    both = DiTConditioning(torch.cat((context, null)), mask.repeat(2, 1), global_cond.repeat(2, 1))
    half_dit = E.DiT(model.cfg.dit).half().eval()
    half_dit.load_state_dict(model.dit.state_dict())
    half = DiTConditioning(both.context.half(), both.context_mask, both.global_cond.half())
    with torch.no_grad():
        ref = sampling.cfg(lambda x2, t2: model.dit(x2, t2, *both), scale)(x, t)
        naive = sampling.cfg(lambda x2, t2: half_dit(x2.half(), t2, *half).float(), scale)(x, t)
    tables = cached_tables(fp16_dir, t[:1], context, global_cond)
    tensors = {k: torch.from_numpy(v) for k, v in tables.items()}
    assert torch.equal(tensors["kv"], tensors["kv"].half().float())  # fp16 values
    (got,) = run(fp16_dir / "dit_cfg_cached.onnx", x=x, step=torch.tensor([0]), context_mask=mask, **tensors,
                 cfg_scale=torch.full((B,), scale), cfg_rescale=torch.zeros(B))  # fmt: skip
    assert rel_err(torch.from_numpy(got), ref) <= 2 * rel_err(naive, ref) + FP16_TINY


def test_fp16_export_keeps_its_tensors_in_external_data(fp16_dir):
    """Tensors of 1 KiB or more move to weights.data (the threshold was 0 bytes of graph)."""
    manifest = read_manifest(fp16_dir)
    assert {e.dtype for e in manifest.graphs.values()} == {"fp16"} and manifest.tokenizer is None
    for entry in manifest.graphs.values():
        assert entry.external_data == EXTERNAL_DATA
        proto = onnx.load(str(fp16_dir / entry.file), load_external_data=False)
        big = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert big and all(not t.raw_data for t in big)
        fp16 = [t for t in big if t.data_type == onnx.TensorProto.FLOAT16]
        assert len(fp16) > len(big) // 2  # the weights are stored in fp16
    model = tiny_model()
    weights = [p for m in (model.dit, model.vae.decoder) for p in m.parameters() if p.numel() * 2 >= 1024]
    assert (fp16_dir / EXTERNAL_DATA).stat().st_size >= sum(p.numel() * 2 for p in weights)  # fp16 bytes


def test_shared_external_data_stores_the_dit_weights_once(onnx_dir, model, tmp_path):
    protos = {p: onnx.load(str(onnx_dir / f"{p}.onnx")) for p in ("dit", "dit_cfg")}
    inline = {p: sum(len(t.raw_data) for t in m.graph.initializer) for p, m in protos.items()}
    _externalize(protos, tmp_path)
    for p, m in protos.items():
        onnx.save_model(m, str(tmp_path / f"{p}.onnx"))
        onnx.checker.check_model(str(tmp_path / f"{p}.onnx"), full_check=True)
    dit_params = sum(p.numel() * 4 for p in model.dit.parameters())
    size = (tmp_path / EXTERNAL_DATA).stat().st_size
    assert size < 1.1 * max(inline.values()) < 1.1 * sum(inline.values()) / 1.5  # one copy, not two
    assert size > 0.9 * dit_params
    x, t, context, mask, global_cond = ragged_inputs(model.cfg, 2, 17, 9)
    inputs = dict(x=x, t=t, context=context, context_mask=mask, global_cond=global_cond)
    assert np.array_equal(run(tmp_path / "dit.onnx", **inputs)[0], run(onnx_dir / "dit.onnx", **inputs)[0])


# ------------------------------------------------------------------ the demo model


@pytest.mark.slow
def test_demo_model_exports_and_the_runtime_generates_its_audio(tmp_path):
    from etta_engine.export.tensorrt import unsupported_by_tensorrt
    from etta_engine.pipeline import Pipeline
    from etta_engine.runtime import RuntimePipeline

    model = E.ETTAModel.from_preset("demo").eval()
    # Weights of a trained model's scale: at std 0.2 this wider DiT's attention logits saturate, and torch's own
    # fp32 result is 1e-4 away from fp64 (ONNX Runtime is as close), too ill-conditioned for a parity check.
    randomize_(model.dit, std=0.05)
    # The graphs a guided generation runs (the plain `dit` is the same network, checked on the tiny model).
    parts = ["conditioner", "dit_cfg", "vae_decoder"]
    manifest = export_onnx(model, tmp_path / "demo", parts=parts, progress=False)
    assert sorted(manifest.graphs) == parts
    errors = manifest.export["verification_max_rel_err"]
    assert all(0 < e < FP32_TOL for e in errors.values()), errors
    for entry in manifest.graphs.values():
        assert unsupported_by_tensorrt(tmp_path / "demo" / entry.file) == []
    pipe, runtime = Pipeline(model, device="cpu"), RuntimePipeline(tmp_path / "demo")
    seconds, C = 2.0, model.cfg.dit.io_channels
    want = pipe.generate(["a bell rings twice"], seconds=seconds, nfe=4, solver="heun", seed=7, progress=False)
    noise = torch.randn(1, C, pipe.latent_frames(seconds), generator=torch.Generator().manual_seed(7)).numpy()
    got = runtime.generate(["a bell rings twice"], seconds=seconds, nfe=4, solver="heun", noise=noise, progress=False)
    assert got.sample_rate == model.cfg.sample_rate and got.waveform.shape == tuple(want.waveform.shape)
    assert rel_err(torch.from_numpy(got.waveform), want.waveform) < 1e-4


# ------------------------------------------------------------------ bad input and the command line


def test_bad_export_arguments_are_clear_errors(model, tmp_path):
    with pytest.raises(ExportError, match=r"unknown parts \['decoder'\]; choices: \['conditioner', 'dit'"):
        export_onnx(model, tmp_path / "a", parts=["decoder"])
    with pytest.raises(ExportError, match=r"output path .* exists; pass force=True \(--force\) to replace it"):
        export_onnx(model, tmp_path)
    with pytest.raises(ExportError, match=r"dtype='bf16' is not one of \['fp32', 'fp16'\]"):
        export_onnx(model, tmp_path / "b", dtype="bf16")
    with pytest.raises(ExportError, match=r"opset=17 is outside \[18, "):
        export_onnx(model, tmp_path / "c", opset=17)
    with pytest.raises(ExportError, match="directory .* does not exist"):
        export_onnx(model, tmp_path / "missing" / "out")
    import dataclasses

    cfg = dataclasses.replace(model.cfg, text=dataclasses.replace(model.cfg.text, pretrained="some/t5"))
    with pytest.raises(ExportError, match="has no text encoder loaded.*leave 'conditioner' out of the parts"):
        export_onnx(E.ETTAModel(cfg), tmp_path / "d", parts=["conditioner"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was left behind


def test_cli_export_replaces_only_with_force(tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    assert etta(["export", "onnx", str(out), "--parts", "vae_decoder", "--quiet"]) == 2
    assert "exists; pass force=True (--force)" in capsys.readouterr().err
    assert etta(["export", "onnx", str(out), "--parts", "vae_decoder", "--force", "--quiet"]) == 0
    assert "vae_decoder.onnx (fp32, ONNX Runtime vs torch rel. err" in capsys.readouterr().out
    assert sorted(read_manifest(out).graphs) == ["vae_decoder"]
    assert etta(["export", "onnx", str(tmp_path / "x"), "--parts", "dit", "vocoder", "--quiet"]) == 2
    assert "unknown parts ['vocoder']" in capsys.readouterr().err


# ------------------------------------------------------------------ the benchmark


def test_runtime_benchmark_smoke_writes_rows(onnx_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "onnx_runtime.py"), "--smoke", "--onnx", str(onnx_dir),
           "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("onnx_runtime-*.json")
    data = json.loads(path.read_text())
    env, rows = data["environment"], data["rows"]
    assert env["commit"] and env["onnxruntime"] == ort.__version__ and env["tensorrt"] is None
    stages = {(r["backend"], r["stage"]) for r in rows}
    for backend in ("onnxruntime", "onnxruntime-plain", "torch"):
        for stage in ("conditioner", "dit_step", "dit_cfg_step", "sampling_loop", "vae_decode", "total"):
            assert (backend, stage) in stages
    assert ("onnxruntime", "dit_prepare") in stages and ("onnxruntime-plain", "dit_prepare") not in stages
    graphs = {r["backend"]: r["dit_graphs"] for r in rows if r["backend"].startswith("onnx")}
    assert graphs == {"onnxruntime": "cached", "onnxruntime-plain": "plain"}
    assert all(r["ms_median"] > 0 and r["frames"] == 22 and r["nfe"] == 2 for r in rows)
    assert not any(r["backend"] == "tensorrt" for r in rows)
    assert {r["torch_path"] for r in rows if r["backend"] == "torch"} == {"eager", "Pipeline.generate"}
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the stages, plotted
    total = next(r for r in rows if r["backend"] == "onnxruntime" and r["stage"] == "total")
    assert total["rtf"] == pytest.approx(total["ms_median"] / 1000 / 1.0)


def test_runtime_benchmark_refuses_cpu_provider_rows_on_a_cuda_device(tmp_path):
    """On a GPU machine whose onnxruntime has no CUDA provider the ORT rows would time the CPU under the GPU's
    name: they are left out with the reason, and with no other backend nothing is exported or written."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "onnx_runtime.py"), "--preset", "tiny", "--device", "cuda",
           "--backends", "onnxruntime", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    assert (
        f"no CUDAExecutionProvider (pip install onnxruntime-gpu), only {ort.get_available_providers()}: no ONNX"
        in result.stdout
    )
    assert "no backend left to time" in result.stderr and not list(tmp_path.iterdir())
