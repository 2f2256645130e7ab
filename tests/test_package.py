"""Packaging: the kernels/ folder imports as etta_engine.kernels, and a wheel holds everything."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_kernels_import_as_part_of_the_package():
    import etta_engine.kernels as kernels

    assert Path(kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"  # the editable install maps it
    assert isinstance(kernels.triton_available(), bool)


def test_public_names():
    import etta_engine as E

    cfg = E.PRESETS["etta"]
    assert (cfg.dit, cfg.vae, cfg.text) == (E.DiTConfig(), E.VAEConfig(), E.TextConfig())
    for name in ("adaln_modulate", "apply_rope", "gelu_tanh", "attention"):
        assert callable(getattr(E.ops, name)) and callable(getattr(E.ops, name + "_ref"))
    assert callable(E.load) and callable(E.save)


@pytest.mark.slow
def test_wheel_contains_kernels_and_extension_and_imports(tmp_path):
    build = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
    build += ["-w", str(tmp_path), "-C", f"build-dir={tmp_path / 'build'}", "-C", "cmake.define.ETTA_WITH_CUDA=OFF"]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("etta_engine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "etta_engine/kernels/__init__.py" in names
    assert "etta_engine/ops/adaln.py" in names
    assert any(n.startswith("etta_engine/_C") and n.endswith(".so") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)

    # Install it into a fresh environment that sees torch & co. from this one but not the editable install.
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    zipfile.ZipFile(wheel).extractall(purelib)
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import etta_engine, etta_engine.kernels, etta_engine._C as C; "
        "print(etta_engine.__file__); print(etta_engine.kernels.__file__); print(C.version())"
    )
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = out.stdout.split()
    assert files[0].startswith(str(purelib)) and files[1].startswith(str(purelib))
    assert files[2] == "0.1.0"
