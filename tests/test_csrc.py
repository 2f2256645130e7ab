"""The C++/CUDA runtime in csrc/: the Python binding against the reference, bad inputs, and a C program
that links the library without Python."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import etta_engine
from etta_engine import _C
from etta_engine.ops import gelu_tanh_ref

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n", [0, 1, 7, 4096, 100_003])
def test_gelu_tanh_matches_reference(n):
    x = torch.randn(n) * 5
    out = torch.empty_like(x)
    _C.gelu_tanh(x, out)
    assert torch.allclose(out, gelu_tanh_ref(x), rtol=1e-6, atol=1e-6)


def test_gelu_tanh_accepts_any_dlpack_producer_and_nd_shapes():
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    out = np.empty_like(x)
    _C.gelu_tanh(x, out)
    assert np.allclose(out, gelu_tanh_ref(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    y = torch.randn(4, 6)
    _C.gelu_tanh(y, y)  # in place
    assert torch.isfinite(y).all()


def test_gelu_tanh_bad_inputs():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"out has shape \(6, 4\) but x has shape \(4, 6\)"):
        _C.gelu_tanh(x, torch.empty(6, 4))
    with pytest.raises(TypeError, match="out is float16 but x is float32"):
        _C.gelu_tanh(x, torch.empty(4, 6, dtype=torch.float16))
    with pytest.raises(ValueError, match="x must be contiguous"):
        _C.gelu_tanh(x.T, torch.empty(6, 4))
    with pytest.raises(TypeError, match="gelu_tanh supports float32 only, got bfloat16"):
        _C.gelu_tanh(x.bfloat16(), torch.empty(4, 6, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="unsupported dtype"):
        _C.gelu_tanh(torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must support __dlpack__"):
        _C.gelu_tanh([1.0, 2.0], torch.empty(2))


def test_runtime_version_and_cuda_build():
    assert _C.version() == etta_engine.__version__
    if shutil.which("nvcc"):
        # With a CUDA compiler on the machine the CUDA sources must have been compiled (so a CUDA
        # syntax error fails the build, GPU or not).
        assert _C.cuda_compiled()


@pytest.mark.gpu
def test_gelu_tanh_cuda_matches_reference():
    x = torch.randn(3, 1000, device="cuda")
    out = torch.empty_like(x)
    _C.gelu_tanh(x, out, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert torch.allclose(out, gelu_tanh_ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_c_example_links_without_python(tmp_path):
    build = tmp_path / "build"
    cmake = ["cmake", "-S", str(ROOT), "-B", str(build)]
    cmake += ["-DETTA_BUILD_PYTHON=OFF", "-DETTA_BUILD_EXAMPLES=ON", "-DETTA_WITH_CUDA=OFF"]
    subprocess.run(cmake, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    out = subprocess.run([str(build / "etta_example")], check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("gelu_tanh(")]
    assert len(lines) == 4
    for line in lines:
        x = float(line[len("gelu_tanh(") : line.index(")")])
        y = float(line.split("=")[1])
        expected = 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        assert y == pytest.approx(expected, abs=1e-6)
