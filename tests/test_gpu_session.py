"""scripts/gpu_session.sh, the one-call GPU run: phases, logs and the archive it brings back (checked on CPU,
where the GPU tests skip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def run(tmp_path: Path, *phases: str, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, PHASE_LIMIT_S="120") | env
    return subprocess.run(["bash", str(SCRIPT), *phases], env=env, capture_output=True, text=True, cwd=ROOT)


def test_unknown_phase_is_refused_with_the_list(tmp_path):
    out = run(tmp_path, "tests", "benchmark")  # refused before any phase runs
    assert out.returncode == 2
    assert "unknown phase 'benchmark'" in out.stderr and "install goals step tests" in out.stderr
    assert "== tests" not in out.stdout and not (tmp_path / "logs").exists()  # nothing written
    out = run(tmp_path, "tests:2m")
    assert out.returncode == 2 and "phase 'tests:2m': the time limit after ':' must be a whole number" in out.stderr
    assert not (tmp_path / "logs").exists()


def test_tests_phase_packs_its_log_and_the_environment(tmp_path):
    out = run(tmp_path, "tests")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "== tests: exit 0" in out.stdout
    with tarfile.open(tmp_path / "gpu_session.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"logs/env.txt", "logs/tests.log"} <= names
        log = tar.extractfile("logs/tests.log").read().decode()
        env = tar.extractfile("logs/env.txt").read().decode()
    assert "skipped" in log and "passed" not in log  # without CUDA every GPU test skips, none runs
    assert "torch" in env and "commit" in env


def test_a_phase_stops_at_its_own_limit_and_the_call_packs_what_it_has(tmp_path):
    out = run(tmp_path, "tests:1")  # pytest cannot even import torch in a second
    assert out.returncode == 124
    assert "== tests (limit 1 s)" in out.stdout and "== tests: exit 124 after" in out.stdout
    assert "(its time limit)" in out.stdout
    with tarfile.open(tmp_path / "gpu_session.tar.gz") as tar:
        assert {"logs/env.txt", "logs/tests.log"} <= set(tar.getnames())
        assert "plan: tests:1 (deadline 510 s)" in tar.extractfile("logs/env.txt").read().decode()


def test_phases_past_the_calls_deadline_are_skipped_not_started(tmp_path):
    """With DEADLINE_S spent, no phase starts (each is named as skipped) and the archive still comes back."""
    out = run(tmp_path, "tests", "goals:60", DEADLINE_S="10", RESERVE_S="5", MIN_PHASE_S="30")
    assert out.returncode == 124
    assert "== tests: skipped" in out.stdout and "== goals: skipped" in out.stdout
    assert "== tests (" not in out.stdout and "== goals (" not in out.stdout
    with tarfile.open(tmp_path / "gpu_session.tar.gz") as tar:
        skipped = tar.extractfile("logs/skipped.txt").read().decode()
    assert "before the call's deadline (10 s)" in skipped and "tests.log" not in str(tmp_path.iterdir())


def test_a_phase_gets_no_more_than_what_is_left_of_the_deadline(tmp_path):
    out = run(tmp_path, "tests:400", DEADLINE_S="100", RESERVE_S="20", MIN_PHASE_S="30")
    limit = int(out.stdout.split("== tests (limit ")[1].split(" s)")[0])
    assert 70 <= limit <= 80  # 100 - 20 (reserve) - the seconds already spent, not the phase's own 400
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_rehearsal_runs_every_command_of_the_default_plans_benchmarks(tmp_path):
    """REHEARSAL=1 runs the goals, step and compile phases' command lines at the tiny size on this CPU (Triton
    through its interpreter): a flag or path that would fail on the lent GPU fails here first."""
    results = tmp_path / "results"
    out = run(tmp_path / "out", "goals", "step", "compile", REHEARSAL="1", RESULTS_DIR=str(results))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert all(f"== {phase}: exit 0" in out.stdout for phase in ("goals", "step", "compile"))
    with tarfile.open(tmp_path / "out" / "gpu_session.tar.gz") as tar:
        names = set(tar.getnames())
        rows = {Path(n).name: json.load(tar.extractfile(n)) for n in names if n.startswith("benchmarks/results/")}
    assert {"logs/goals.log", "logs/step.log", "logs/compile.log", "logs/goals_table.txt"} <= names
    sweeps = [d for name, d in rows.items() if name.startswith("sweep-")]
    steps = [d for name, d in rows.items() if name.startswith("engine_step-")]
    assert len(sweeps) == 3 and len(steps) == 3 and sorted(p.name for p in results.iterdir()) == sorted(rows)
    backends = {(r["backend"], r["vae_dtype"]) for d in sweeps for r in d["rows"]}
    assert backends == {("eager", "fp32"), ("engine-cuda", "fp32"), ("engine-triton", "fp32"), ("engine-torch", "fp32"),
                        ("engine-cuda", "bf16"), ("engine-triton", "bf16"), ("compile", "fp32"),
                        ("engine-compile", "fp32")}  # fmt: skip
    assert all(d["environment"]["complete"] and not d["environment"]["failures"] for d in sweeps)
    assert any("profiles" in d["environment"] for d in steps)  # the bf16 run lists its top kernels
    assert "goal" in (tmp_path / "out" / "logs" / "goals_table.txt").read_text()


@pytest.mark.slow
def test_rehearsal_of_the_second_calls_onnx_and_train_phases(tmp_path):
    """The onnx and train phases' command lines at the tiny size on this CPU (vae and ops take minutes here: run
    `REHEARSAL=1 scripts/gpu_session.sh vae:600 ops:600` by hand). The table at the end reads only the JSON rows,
    not the plots."""
    results = tmp_path / "results"
    out = run(tmp_path / "out", "onnx", "train", REHEARSAL="1", RESULTS_DIR=str(results))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "== onnx: exit 0" in out.stdout and "== train: exit 0" in out.stdout
    names = sorted(p.name for p in results.iterdir())
    assert [n.split("-")[0] for n in names] == ["onnx_runtime", "onnx_runtime", "train_dit_throughput"], names
    assert names[1].endswith(".png")
    onnx = json.loads((results / names[0]).read_text())
    assert {r["backend"] for r in onnx["rows"]} == {"onnxruntime", "onnxruntime-plain", "torch"}
    assert "tensorrt is not installed: no TensorRT rows" in (tmp_path / "out" / "logs" / "onnx.log").read_text()
    table = (tmp_path / "out" / "logs" / "goals_table.txt").read_text()
    assert "goal" in table and "Traceback" not in table and "passing over" not in table
