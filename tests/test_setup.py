"""The set-up script's guard against CUDA wheels on machines without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "scripts" / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(*names: str) -> dict:
    return {"install": [{"metadata": {"name": n, "version": "1"}} for n in names]}


def test_cuda_plans_are_recognised():
    bootstrap = load_bootstrap()
    assert bootstrap.cuda_packages(plan("torch", "filelock", "sympy")) == []
    cuda = bootstrap.cuda_packages(plan("torch", "nvidia-cublas", "nvidia-cudnn-cu13", "triton", "sympy"))
    assert cuda == ["nvidia-cublas", "nvidia-cudnn-cu13", "triton"]


def test_rebuild_is_triggered_by_build_inputs_only(tmp_path, monkeypatch):
    bootstrap = load_bootstrap()
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    (tmp_path / "csrc").mkdir()
    for name in ("pyproject.toml", "CMakeLists.txt", "csrc/gelu.cpp", "README.md"):
        (tmp_path / name).write_text("v1")
    digest = bootstrap.build_inputs_hash()
    (tmp_path / "README.md").write_text("v2")
    assert bootstrap.build_inputs_hash() == digest
    (tmp_path / "csrc" / "gelu.cpp").write_text("v2")
    assert bootstrap.build_inputs_hash() != digest
    # A Python file's contents do not matter (the editable install reads them where they are); its name does.
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "gelu.py").write_text("v1")
    digest = bootstrap.build_inputs_hash()
    (tmp_path / "kernels" / "gelu.py").write_text("v2")
    assert bootstrap.build_inputs_hash() == digest
    (tmp_path / "kernels" / "gelu.py").rename(tmp_path / "kernels" / "gelu_tanh.py")
    assert bootstrap.build_inputs_hash() != digest
