"""Every Triton kernel compiles for Ampere (sm_80) and Hopper (sm_90) at the etta shapes' configurations,
ahead of time and without a GPU.

The interpreter that runs the numerical tests on a CPU does not check what only the compiler does: that
globals read in a kernel are constexpr, that tl.dot operands have supported shapes and dtypes, that the
tiles fit in registers and shared memory. This test does, in a process where the interpreter is off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
SCRIPT = Path(__file__).with_name("compile_kernels.py")


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(rows) == 2 * 2 * 15  # 15 kernel configurations x (bf16, fp32) x (sm_80, sm_90)
    for r in rows:
        assert r["target_ok"], r
        assert r["shared"] <= (163 if r["sm"] == 80 else 227) * 1024, r  # shared memory per block
        if "attention" in r["kernel"] and r["dtype"] == "bf16":
            assert r["mma"], r  # bf16 attention dot products run on the tensor cores
