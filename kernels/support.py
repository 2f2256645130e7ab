"""Triton kernels of etta_engine, installed as ``etta_engine.kernels``; this module says whether they can run.

One file per op: the ``@triton.jit`` kernels and their launchers, which take and return torch tensors.
The public ops (custom ops with fake and autograd registrations) live in ``etta_engine.ops``. Triton is
optional (``pip install etta_engine[triton]``); on a CPU-only machine the kernels run under the Triton
interpreter (``TRITON_INTERPRET=1``, set before triton is imported), which is how CI tests them.

The folder has no ``__init__.py`` on purpose: at the repository root, where a script, ``python -c`` or
``python -m`` puts the folder's parent first on ``sys.path``, a regular package named ``kernels`` would hide the
``kernels`` distribution that transformers imports (a dependency of transformers >= 5.25), and every T5 load
would fail. A folder without ``__init__.py`` is a namespace portion, which an installed regular package
always wins over; ``etta_engine.kernels`` imports the same either way.
"""

import importlib.util
import os


def triton_available() -> bool:
    """True if the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True if Triton kernels run in the interpreter (``TRITON_INTERPRET=1``) rather than compiled."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
