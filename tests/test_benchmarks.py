"""The benchmark scripts run end to end on a CPU with tiny settings and write their JSON rows."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
           "--prompt-tokens", "5", "--profile", "3", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("engine_step-*.json")
    data = json.loads(path.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    fastest = min((v for v in rows if v != "reference"), key=lambda v: rows[v]["ms"])
    profiles = data["environment"]["profiles"]
    assert list(profiles) == ["reference", fastest] and f"top kernels of {fastest}" in result.stdout
    for kernels in profiles.values():
        assert len(kernels) == 3 and all(k["name"] and k["calls_per_step"] > 0 for k in kernels)
        times = [k["us_per_step"] for k in kernels]
        assert times == sorted(times, reverse=True) and 0 < sum(k["share"] for k in kernels) <= 1
    assert all(k["name"].startswith("aten::") for k in profiles["reference"])  # on a CPU, the eager operators
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
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--smoke", "--reps", "2", "--out", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("sweep-*.json")
    assert not list(tmp_path.glob(".*.tmp"))  # rewritten atomically after every cell, nothing left behind
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert data["environment"]["complete"] is True and data["environment"]["failures"] == []
    cells = {(r["backend"], r["solver"], r["nfe"], r["cfg_scale"]) for r in rows}
    # backends (eager, engine-torch/cuda/compile, onnx, onnx-plain) x solvers x NFE x CFG
    assert len(cells) == len(rows) == 6 * 2 * 2 * 2
    assert "skipping backend 'tensorrt': tensorrt is not installed" in result.stderr
    for r in rows:
        assert r["stages_sum_ms"] >= r["dit_ms"] > 0 and r["rtf"] == r["e2e_ms"] / 1e3 / 1.0
        assert r["reps"] == 2 and len(r["e2e_ms_all"]) == 2 and r["e2e_ms"] == statistics.median(r["e2e_ms_all"])
        assert r["e2e_ms"] > 0  # timed apart from the stages (queued back to back, one wait), so no ratio to them
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
                              cuda_graph="solve", text_encoder=None, reps=1,
                              vae_dtype="fp32", text_dtype="fp32")  # fmt: skip
    rows, failures = sweep.run(args)
    assert [(r["backend"], r["nfe"], r["padding"]) for r in rows] == [("eager", 2, "longest"), ("eager", 4, "longest")]
    cell = {"backend": "engine-torch", "solver": "euler", "nfe": 2, "cfg_scale": 3.5}
    assert failures == [cell | {"error": "RuntimeError('capture failed')"}]


def test_sweep_reference_is_fp32_so_the_error_includes_each_precisions_cost(monkeypatch):
    """The reference solution runs every part in fp32: the reference's own solver and NFE err exactly zero in
    fp32, and by what bf16 costs with the DiT, the VAE decoder and T5 in bf16 (the rows say which ran)."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sweep

    errors, waits = {}, []
    monkeypatch.setattr(sweep, "synchronize", lambda device: waits.append(device))
    for dtype in ("fp32", "bf16"):
        args = argparse.Namespace(model="tiny", device="cpu", dtype=dtype, vae_dtype=dtype, text_dtype=dtype,
                                  seconds=0.5, nfes=[8], solvers=["rk4"], cfg_scales=[3.5], backends=["eager"],
                                  reference_nfe=8, padding="longest", cuda_graph="solve", text_encoder=None,
                                  reps=1)  # fmt: skip
        (row,), failures = sweep.run(args)
        assert not failures and (row["dtype"], row["vae_dtype"], row["text_dtype"]) == (dtype, dtype, dtype)
        assert row["text_cuda_graph"] is False
        # 3 stages timed apart (a wait before and after each) for the reference, the warm-up and the rep, and the
        # rep once more queued as the Pipeline runs it: one wait before, one after the whole generation
        assert len(waits) == 3 * 3 * 2 + 2
        waits.clear()
        errors[dtype] = (row["latent_rel_rmse"], row["spectral_distance"])
    assert errors["fp32"] == (0.0, 0.0)
    assert 1e-3 < errors["bf16"][0] < 0.1 and errors["bf16"][1] > 0


def test_sweep_keeps_the_rows_of_a_run_cut_short(monkeypatch, tmp_path):
    """The file is rewritten after every cell: a sweep stopped mid-way (a phase's time limit on a lent GPU)
    leaves the rows it had, marked incomplete, with the failures so far."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import sweep

    seen = []

    def interrupted(args, on_update):
        failure = {"backend": "compile", "solver": "euler", "nfe": 8, "cfg_scale": 3.5, "error": "boom"}
        on_update([{"backend": "eager", "nfe": 8}], [])
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        on_update([{"backend": "eager", "nfe": 8}, {"backend": "eager", "nfe": 100}], [failure])
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--device", "cpu", "--out", str(tmp_path)])
    with pytest.raises(KeyboardInterrupt):
        sweep.main()
    (path,) = tmp_path.glob("sweep-*.json")
    assert seen == [[path.name]]  # written after the first cell already, and the same file each time
    data = json.loads(path.read_text())
    assert [r["nfe"] for r in data["rows"]] == [8, 100] and data["environment"]["complete"] is False
    assert data["environment"]["failures"][0]["error"] == "boom"


def test_sweep_refuses_bad_reps_and_cpu_provider_rows_on_cuda(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import onnxruntime
    import sweep

    cmd = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--smoke", "--reps", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 2 and "argument --reps: must be at least 1, got 0" in result.stderr
    # Refused before the model is built, each naming the value and what is allowed
    refusals = {
        ("--nfes", "4,0"): "argument --nfes: must be at least 1, got 0",
        ("--nfes", "4,x"): "argument --nfes: 'x' is not an integer",
        ("--solvers", "midpoint", "--nfes", "1"): "none of --solvers ['midpoint'] takes a step within --nfes [1]",
        (
            "--solvers",
            "euler,rk5",
        ): "unknown solvers ['rk5']; choices: ['dopri5', 'dpmpp_2m', 'euler', 'heun', 'midpoint', 'rk4']",
        ("--reference-nfe", "2"): "--reference-nfe 2: solver 'rk4' needs nfe >= 4 for one step, got nfe=2",
        ("--seconds", "0"): "argument --seconds: must be a finite number > 0, got 0",
        ("--seconds", "nan"): "argument --seconds: must be a finite number > 0, got nan",
    }
    base = [sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--model", "tiny", "--device", "cpu"]
    for flags, message in refusals.items():
        result = subprocess.run(base + list(flags), capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr[-500:])
    cuda = torch.device("cuda")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    reason = sweep.backend_unusable("onnx-plain", cuda)
    assert "no CUDAExecutionProvider" in reason and "['CPUExecutionProvider']" in reason
    assert sweep.backend_unusable("onnx", torch.device("cpu")) is None  # the CPU provider is right on a CPU
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: both)
    assert sweep.backend_unusable("onnx", cuda) is None


def _results(path: Path, benchmark: str, device: str, rows: list[dict], date: str = "") -> Path:
    environment = {"device": device, "date": date}
    path.write_text(json.dumps({"benchmark": benchmark, "environment": environment, "rows": rows}))
    return path


def test_goals_table_picks_the_best_matching_row_of_each_goal(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import goals

    def cell(backend, nfe, ms, **kw):
        row = {"model": "etta", "solver": "euler", "nfe": nfe, "cfg_scale": 3.5, "seconds": 10.0, "dtype": "bf16"}
        return row | {"backend": backend, "e2e_ms": ms} | kw

    def step(variant, ms, dtype="bf16"):
        return {"preset": "etta", "variant": variant, "ms": ms, "dtype": dtype}

    gpu = "NVIDIA H200"
    files = [
        _results(tmp_path / "a.json", "sweep", gpu, [cell("eager", 100, 900.0), cell("engine-cuda", 100, 110.0),
                                                    cell("engine-cuda", 8, 21.0), cell("engine-cuda", 4, 1.0),
                                                    cell("engine-cuda", 8, 2.0, cfg_scale=1.0)], "2026-01-01"),
        _results(tmp_path / "b.json", "sweep", gpu, [cell("engine-triton", 100, 118.0),
                                                    cell("engine-triton", 8, 19.0, vae_dtype="bf16"),
                                                    {"backend": "onnx", "error": "no CUDA provider"}], "2026-02-01"),
        _results(tmp_path / "cpu.json", "sweep", "cpu: AMD EPYC", [cell("engine-torch", 8, 5.0)]),  # not a GPU's
        _results(tmp_path / "c.json", "engine_step", gpu, [step("reference", 10.0), step("engine-cuda", 4.0),
                                                           step("engine-cuda-unfused", 1.0)]),
        _results(tmp_path / "d.json", "engine_step", gpu, [step("reference", 12.0), step("engine", 3.0),
                                                           step("compile", 6.0), step("engine-compile", 4.0)]),
        _results(tmp_path / "e.json", "engine_step", "cpu: AMD EPYC", [step("reference", 5000.0, "fp32"),
                                                                       step("engine-torch", 4400.0, "fp32")],
                 "2026-01-01"),
        _results(tmp_path / "f.json", "engine_step", "cpu: AMD EPYC", [step("reference", 4200.0, "fp32"),
                                                                       step("engine-torch", 4000.0, "fp32")],
                 "2026-03-01"),
        _results(tmp_path / "ops.json", "ops", gpu, [{"op": "gelu_tanh"}]),
    ]  # fmt: skip
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not UTF-8: passed over too, not a crash
    goals.main([str(p) for p in [*files, tmp_path / "broken.json", tmp_path / "plot.png"]])
    out = capsys.readouterr()
    printed = out.out.splitlines()[1:]
    lines = {line[:34].strip(): line for line in printed if line[:34].strip()}
    # Under a best from an older file, the newest file's value: b.json's 118 ms under a.json's 110 ms (NFE 100),
    # f.json's 1.05x (not met) under e.json's 1.14x; for NFE 8 the newest (b.json) is the best: no second line.
    latest = {printed[i - 1][:34].strip(): line for i, line in enumerate(printed) if not line[:34].strip()}
    assert sorted(latest) == ["DiT step vs eager (CPU, etta fp32)", "end to end, Euler NFE 100"]
    assert "latest" in latest["end to end, Euler NFE 100"] and "118.0 ms" in latest["end to end, Euler NFE 100"]
    assert "(b.json)" in latest["end to end, Euler NFE 100"]
    assert (
        "1.05x" in latest["DiT step vs eager (CPU, etta fp32)"]
        and "NOT met" in latest["DiT step vs eager (CPU, etta fp32)"]
    )
    assert "passing over" in out.err and "broken.json" in out.err and "plot.png" in out.err
    assert "110.0 ms" in lines["end to end, Euler NFE 100"] and " met " in lines["end to end, Euler NFE 100"]
    assert "engine-cuda bf16 (VAE fp32, T5 fp32) on NVIDIA H200" in lines["end to end, Euler NFE 100"]
    nfe8 = lines["end to end, Euler NFE 8"]  # the NFE 4, CFG-off and CPU rows are not the goal's cells
    assert "19.0 ms" in nfe8 and "NOT met" in nfe8 and "(b.json)" in nfe8 and "(VAE bf16, T5 fp32)" in nfe8
    eager = lines["DiT step vs eager (GPU)"]  # 12 / 3 (d.json) beats 10 / 4 (c.json); unfused rows excluded
    assert "4.00x" in eager and " met " in eager and "engine bf16 3.00 ms vs reference 12.00 ms" in eager
    vs_compile = lines["DiT step vs torch.compile (GPU)"]
    assert "2.00x" in vs_compile and "(d.json)" in vs_compile
    assert "1.14x" in lines["DiT step vs eager (CPU, etta fp32)"]
    goals.main([str(files[-1])])
    assert capsys.readouterr().out.count("unmeasured") == 5


@pytest.mark.parametrize(
    "script, flags, message",
    [
        ("onnx_runtime.py", ["--reps", "0"], "argument --reps: must be at least 1, got 0"),
        ("train_dit_throughput.py", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        ("demo_quality.py", ["--nfe", "8", "0"], "argument --nfe: must be at least 1, got 0"),
        ("engine_step.py", ["--frames", "-3"], "argument --frames: must be at least 1, got -3"),
        ("vae_precision.py", ["--seconds", "inf"], "argument --seconds: must be a finite number > 0, got inf"),
        ("inversion.py", ["--n", "two"], "argument --n: 'two' is not an integer"),
    ],
)
def test_benchmark_scripts_refuse_counts_and_lengths_out_of_range(script, flags, message):
    # Refused by the argument parser, before a model is built (a count of 0 used to fail late, e.g. with
    # "min() arg is an empty sequence" after the whole export).
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *flags], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-500:]


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
    from etta_engine.models.model import ETTAModel

    builds = []
    from_preset = ETTAModel.from_preset.__func__
    monkeypatch.setattr(ETTAModel, "from_preset", classmethod(lambda cls, *a: builds.append(a) or from_preset(cls, *a)))
    model, info = benchmark_model("tiny-t5")
    assert builds == [("tiny-t5",)]  # drawn once (the etta preset's weights take a while), not again after T5
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
