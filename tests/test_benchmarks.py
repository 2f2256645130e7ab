"""The benchmark scripts run end to end on a CPU with tiny settings and write their JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_train_dit_throughput_writes_a_row(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_dit_throughput.py"), "--preset", "tiny", "--steps", "2",
           "--warmup", "1", "--seconds", "1", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob("train_dit_throughput-*.json")
    data = json.loads(path.read_text())
    env, (row,) = data["environment"], data["rows"]
    assert env["torch"] and env["commit"] and "train_dit_throughput.py" in env["command"]
    assert row["preset"] == "tiny" and row["frames"] == 22 and row["steps_timed"] == 2
    assert row["samples_per_s"] > 0 and row["peak_memory_gib"] > 0 and row["parameters"] == 241_472


def test_ops_benchmark_and_its_plot(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ops.py"), "--smoke", "--no-compile", "--device", "cpu",
           "--reps", "1", "--ops", "gelu_tanh,cross_attention_cfg,guided_update,snake_beta,residual_modulate",
           "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("ops-*.json")
    data = json.loads(path.read_text())
    assert data["environment"]["peaks"]["copy_gbps"] > 0
    rows = {(r["op"], r["regime"], r["impl"]) for r in data["rows"]}
    assert {("gelu_tanh", "inference", "torch"), ("gelu_tanh", "training", "triton")} <= rows
    assert ("cross_attention_cfg", "inference", "triton") in rows
    assert {("gelu_tanh", "inference", "cuda"), ("guided_update", "inference", "cuda")} <= rows  # csrc/ rows
    for op in ("snake_beta", "residual_modulate"):
        assert {(op, "inference", impl) for impl in ("torch", "triton", "cuda")} <= rows
    gelu = next(r for r in data["rows"] if r["op"] == "gelu_tanh" and r["impl"] == "torch")
    assert gelu["ms"] > 0 and gelu["gbps"] > 0 and 0 < gelu["fraction_of_copy_peak"]
    plot = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_ops.py"), str(path)], capture_output=True)
    assert plot.returncode == 0, plot.stderr
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_engine_step_benchmark_writes_rows(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "engine_step.py"), "--preset", "tiny", "--device", "cpu",
           "--frames", "22", "--reps", "2", "--nfe", "4", "--compile", "--padding", "longest",
           "--prompt-tokens", "5", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("engine_step-*.json")
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"reference", "engine", "compile", "engine-compile"}
    assert rows["engine-compile"]["ops"] == "torch" and not rows["engine"]["cuda_graph"]
    assert rows["engine"]["padding"] == "longest" and rows["engine"]["context_length"] == 5 + 2
    assert rows["reference"]["speedup_vs_reference"] == 1.0 and len(rows["engine"]["ms_all"]) == 2
    assert rows["engine"]["prepare_calls"] == 4 and rows["engine"]["prepare_ms"] > 0


def test_engine_step_benchmark_times_each_ops_with_and_without_fused_seams(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "engine_step.py"), "--preset", "tiny", "--device", "cpu",
           "--frames", "9", "--reps", "1", "--nfe", "2", "--ops", "torch,cuda", "--unfused",
           "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("engine_step-*.json")
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"reference", "engine-torch", "engine-torch-unfused", "engine-cuda", "engine-cuda-unfused"}
    assert rows["engine-cuda"]["ops"] == "cuda" and rows["engine-cuda"]["fused_seams"] is True
    assert rows["engine-cuda-unfused"]["fused_seams"] is False and rows["engine-cuda-unfused"]["prepare_ms"] > 0


def test_sweep_smoke_and_its_plot(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--smoke", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("sweep-*.json")
    rows = json.loads(path.read_text())["rows"]
    cells = {(r["backend"], r["solver"], r["nfe"], r["cfg_scale"]) for r in rows}
    # backends (eager, engine-torch/cuda/compile, onnx, onnx-plain) x solvers x NFE x CFG
    assert len(cells) == len(rows) == 6 * 2 * 2 * 2
    assert "skipping backend 'tensorrt': tensorrt is not installed" in result.stderr
    for r in rows:
        assert r["e2e_ms"] >= r["dit_ms"] > 0 and r["rtf"] > 0
        assert (r["runtime"] is None) == (not r["backend"].startswith("onnx"))
    onnx = next(r for r in rows if r["backend"] == "onnx")
    assert onnx["runtime"]["export_dtype"] == "fp32" and onnx["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert onnx["runtime"]["cached"] is True
    assert next(r for r in rows if r["backend"] == "onnx-plain")["runtime"]["cached"] is False
    assert onnx["text_ms"] > 0 and onnx["vae_ms"] > 0 and onnx["peak_memory_gib"] is None
    # Same noise, same maths: the backends agree on the error, and more steps of a solver err less.
    by = {(r["backend"], r["solver"], r["nfe"], r["cfg_scale"]): r["latent_rel_rmse"] for r in rows}
    for (backend, solver, nfe, scale), err in by.items():
        assert abs(err - by[("eager", solver, nfe, scale)]) <= 1e-4
        if nfe == 4:
            assert err < by[(backend, solver, 2, scale)]
    plot = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_sweep.py"), str(path)], capture_output=True)
    assert plot.returncode == 0, plot.stderr
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_reports_a_failing_backend_and_keeps_the_others(monkeypatch):
    """A backend that raises costs only its own rows: its first error is reported, the rest of it skipped."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sweep

    def broken(*args, **kwargs):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(sweep.DiTEngine, "prepare", broken)
    args = argparse.Namespace(model="tiny", device="cpu", dtype="fp32", seconds=0.5, nfes=[2, 4], solvers=["euler"],
                              cfg_scales=[3.5], backends=["eager", "engine-torch"], reference_nfe=8, padding="longest",
                              cuda_graph="solve", text_encoder=None)  # fmt: skip
    rows, failures = sweep.run(args)
    assert [(r["backend"], r["nfe"], r["padding"]) for r in rows] == [("eager", 2, "longest"), ("eager", 4, "longest")]
    cell = {"backend": "engine-torch", "solver": "euler", "nfe": 2, "cfg_scale": 3.5}
    assert failures == [cell | {"error": "RuntimeError('capture failed')"}]


def test_vae_precision_benchmark_writes_rows(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vae_precision.py"), "--smoke", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("vae_precision-*.json")
    rows = {r["variant"]: r for r in json.loads(path.read_text())["rows"]}
    assert list(rows) == ["fp32", "fp32-folded", "bf16", "bf16-naive-snake", "fp16",
                          "reference+noise-40dB", "reference+noise-60dB"]  # fmt: skip
    assert rows["fp32"]["rel_err"] == rows["fp32"]["mrstft"] == 0.0 and rows["fp32"]["ms_median"] > 0
    assert rows["fp32-folded"]["rel_err"] <= 1e-5  # folding the weight norm changes only the rounding
    # fp16 keeps 3 more mantissa bits than bf16: about 8x less error; both finite and far from noise-like.
    assert all(rows[v]["finite"] for v in rows)
    assert 1e-4 < rows["fp16"]["rel_err"] < rows["bf16"]["rel_err"] / 3 < 0.05
    assert abs(rows["reference+noise-40dB"]["snr_db"] - 40) < 1e-3
    assert rows["reference+noise-60dB"]["mrstft"] < rows["reference+noise-40dB"]["mrstft"]


def test_a_preset_without_its_pretrained_t5_here_gets_a_random_stand_in(monkeypatch, capsys):
    """The GPU machines cannot download T5-base: the benchmarks time the etta preset with a random encoder of
    T5-base's size (said in the results), and any other missing file is still an error."""
    import dataclasses

    import pytest
    import torch

    from etta_engine.config import PRESETS

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _common import T5_BASE, benchmark_model

    tiny = PRESETS["tiny"]
    text = dataclasses.replace(tiny.text, pretrained="/nonexistent/google-t5/t5-base")
    monkeypatch.setitem(PRESETS, "tiny-t5", dataclasses.replace(tiny, name="tiny-t5", text=text))
    model, info = benchmark_model("tiny-t5")
    assert "random stand-in for /nonexistent/google-t5/t5-base" in info and "random encoder" in capsys.readouterr().out
    t5 = model.text_encoder.model.config
    assert (t5.num_layers, t5.num_heads, t5.d_kv, t5.d_ff) == tuple(
        T5_BASE[k] for k in ("layers", "heads", "d_kv", "d_ff")
    )
    with torch.no_grad():
        cond = model.condition(["rain"], 0.0, 1.0)
    assert cond.context.shape == (1, tiny.text.max_length + 2, tiny.dit.cond_dim)
    assert benchmark_model("tiny")[1] == "loaded"
    with pytest.raises(FileNotFoundError, match="neither a trained model"):
        benchmark_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="could not load a T5 encoder"):  # a given directory must exist
        benchmark_model("tiny-t5", text_encoder="/nonexistent/t5")
