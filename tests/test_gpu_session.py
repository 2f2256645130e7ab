"""scripts/gpu_session.sh, the one-call GPU run: phases, logs and the archive it brings back (checked on CPU,
where the GPU tests skip)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def run(tmp_path: Path, *phases: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, PHASE_LIMIT_S="120")
    return subprocess.run(["bash", str(SCRIPT), *phases], env=env, capture_output=True, text=True, cwd=ROOT)


def test_unknown_phase_is_refused_with_the_list(tmp_path):
    out = run(tmp_path, "tests", "benchmark")  # refused before any phase runs
    assert out.returncode == 2
    assert "unknown phase 'benchmark'" in out.stderr and "install tests step goals" in out.stderr
    assert "== tests" not in out.stdout and not (tmp_path / "logs").exists()  # nothing written


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
