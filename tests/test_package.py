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
    import etta_engine.kernels.support as support

    assert Path(support.__file__).resolve() == ROOT / "kernels" / "support.py"  # the editable install maps it
    assert isinstance(support.triton_available(), bool)


def test_the_kernels_folder_does_not_hide_an_installed_kernels_package():
    """At the repository root (first on sys.path for `python -c`, `-m` and scripts there) `kernels` is not our
    folder as a regular package: transformers >= 5.25 imports the `kernels` distribution when it loads a model."""
    code = (
        "import importlib.util, transformers.activations; spec = importlib.util.find_spec('kernels'); "
        "print(spec and spec.origin)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    origin = out.stdout.strip()  # None: our folder as a namespace portion (no `kernels` installed); else theirs
    assert not origin.startswith(str(ROOT / "kernels")), origin


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
    assert "etta_engine/kernels/support.py" in names and "etta_engine/kernels/adaln.py" in names
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
        "import etta_engine, etta_engine.kernels.support, etta_engine._C as C; "
        "print(etta_engine.__file__); print(etta_engine.kernels.support.__file__); print(C.version())"
    )
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = out.stdout.split()
    assert files[0].startswith(str(purelib)) and files[1].startswith(str(purelib))
    assert files[2] == "0.1.0"
