"""Create or reuse .venv at the repository root and install etta_engine into it.

Run with any Python >= 3.11: ``python3 scripts/bootstrap.py [--extras dev,train]``.

PyTorch is installed first, as the machine needs it:
- a machine with an NVIDIA GPU reuses a CUDA build of torch that the system Python already has
  (the venv then sees system packages), or installs torch from PyPI, whose Linux wheels carry CUDA;
- a machine without one gets a CPU build. The resolution is checked before anything is installed,
  and a plan that would pull CUDA packages is refused: they are several GB and of no use there.
Then ``pip install -e .[extras]`` builds the C++/CUDA extension; it is redone only when the build
inputs (pyproject.toml, CMakeLists.txt, csrc/), the names of the package's Python files or the extras change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VPY = VENV / "bin" / "python"
STAMP = VENV / ".etta_engine_install.json"
TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def say(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def python_has_cuda_torch(python: str) -> bool:
    code = "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except Exception:
        return False


def venv_imports(module: str) -> bool:
    return subprocess.run([str(VPY), "-c", f"import {module}"], capture_output=True).returncode == 0


def create_venv(gpu: bool) -> None:
    if VPY.exists():
        return
    system_site = gpu and python_has_cuda_torch(sys.executable)
    say(f"creating {VENV}" + (" (with the system's CUDA build of torch)" if system_site else ""))
    cmd = [sys.executable, "-m", "venv", str(VENV)]
    if system_site:
        cmd.insert(3, "--system-site-packages")
    run(cmd)


def cuda_packages(report: dict) -> list[str]:
    """Packages of a `pip install --report` plan that only a CUDA build of torch pulls in."""
    names = [item["metadata"]["name"].lower() for item in report.get("install", [])]
    return [n for n in names if n.startswith(("nvidia-", "cuda-", "triton"))]


def install_torch(gpu: bool) -> None:
    if venv_imports("torch"):
        return
    pip = [str(VPY), "-m", "pip", "install", "--disable-pip-version-check"]
    if gpu:
        say(f"installing {TORCH} (CUDA build from PyPI)")
        run([*pip, TORCH])
        return
    extra = ["--extra-index-url", TORCH_CPU_INDEX] if reachable(TORCH_CPU_INDEX + "/torch/") else []
    plan = subprocess.run(
        [*pip, "--dry-run", "--quiet", "--report", "-", TORCH, *extra], capture_output=True, text=True, check=False
    )
    if plan.returncode != 0:
        sys.exit(f"[setup] cannot resolve {TORCH}:\n{plan.stderr}")
    cuda = cuda_packages(json.loads(plan.stdout))
    if cuda:
        sys.exit(
            f"[setup] refusing to install {TORCH} with CUDA packages ({', '.join(cuda[:4])}, ...) on a machine "
            f"without a GPU. Install a CPU build into {VENV} first, e.g.\n"
            f"  {VPY} -m pip install {TORCH} --index-url {TORCH_CPU_INDEX}"
        )
    say(f"installing {TORCH} (CPU build)")
    run([*pip, TORCH, *extra])


def build_inputs_hash() -> str:
    h = hashlib.sha256()
    files = [ROOT / "pyproject.toml", ROOT / "CMakeLists.txt", *sorted((ROOT / "csrc").rglob("*"))]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    # The names (not the contents) of the packaged Python files: the editable install maps each module to its
    # file, so a file added, removed or renamed needs a new install.
    for folder in ("etta_engine", "kernels"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(f.relative_to(ROOT)).encode())
    return h.hexdigest()


def install_package(extras: list[str]) -> None:
    digest = build_inputs_hash()
    stamp = json.loads(STAMP.read_text()) if STAMP.exists() else {}
    fresh = stamp.get("hash") == digest and set(extras) <= set(stamp.get("extras", []))
    if fresh and venv_imports("etta_engine._C"):
        return
    extras = sorted(set(extras) | (set(stamp.get("extras", [])) if stamp.get("hash") == digest else set()))
    spec = f".[{','.join(extras)}]" if extras else "."
    say(f"installing etta_engine{spec[1:]} (editable; builds csrc/)")
    run([str(VPY), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", spec], cwd=ROOT)
    STAMP.write_text(json.dumps({"hash": digest, "extras": extras}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="comma-separated extras, e.g. dev,train,export,triton")
    args = parser.parse_args()
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older Python
        sys.exit(f"[setup] etta_engine needs Python >= 3.11, this is {sys.version.split()[0]}")
    gpu = has_nvidia_gpu()
    create_venv(gpu)
    install_torch(gpu)
    install_package([e for e in args.extras.split(",") if e])


if __name__ == "__main__":
    main()
