"""Triton kernels of etta_engine, installed as ``etta_engine.kernels``.

One file per op (kernel + launcher). Triton is optional (``pip install etta_engine[triton]``);
on a CPU-only machine the kernels run under ``TRITON_INTERPRET=1``.
"""

import importlib.util


def triton_available() -> bool:
    """True if the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None
