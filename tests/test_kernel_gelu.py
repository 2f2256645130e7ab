"""Triton GELU-tanh (kernels/gelu.py) against its reference: forward and gradients, odd shapes, fp32 and
bf16, under the interpreter on the CPU (and compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import err_budget_ok, kernel_device, rel_err

from etta_engine import ops

pytest.importorskip("triton")

SHAPES = [(1,), (7,), (3, 215, 48), (2, 1, 1535), (3, 5, 33)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_and_gradients_match_the_reference(shape, dtype, with_bias):
    dev = kernel_device()
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(shape, generator=g) * 3
    b32 = torch.randn(shape[-1], generator=g) if with_bias else None
    dy32 = torch.randn(shape, generator=g)
    x = x32.to(dev, dtype).requires_grad_()
    b = b32.to(dev, dtype).requires_grad_() if with_bias else None
    y = ops.gelu_tanh(x, b, impl="triton")
    assert y.dtype == dtype and y.shape == x.shape
    inputs = (x, b) if with_bias else (x,)
    grads = torch.autograd.grad(y, inputs, dy32.to(dev, dtype))

    # fp32 reference on the same (rounded) inputs, and the naive same-dtype computation for the budget
    xr = x.detach().float().requires_grad_()
    br = b.detach().float().requires_grad_() if with_bias else None
    yr = ops.gelu_tanh_ref(xr, br)
    ref_grads = torch.autograd.grad(yr, (xr, br) if with_bias else (xr,), dy32.to(dev))
    xn = x.detach().clone().requires_grad_()
    bn = b.detach().clone().requires_grad_() if with_bias else None
    yn = torch.nn.functional.gelu(xn if bn is None else xn + bn, approximate="tanh")
    naive_grads = torch.autograd.grad(yn, (xn, bn) if with_bias else (xn,), dy32.to(dev, dtype))

    if dtype == torch.float32:
        assert rel_err(y, yr) < 1e-6
        for got, ref in zip(grads, ref_grads, strict=True):
            assert rel_err(got, ref) < 1e-5
    else:
        assert err_budget_ok(y, yn, yr)
        for got, naive, ref in zip(grads, naive_grads, ref_grads, strict=True):
            assert err_budget_ok(got, naive, ref, tiny=1e-3)


def test_strided_input_and_empty_tensor():
    dev = kernel_device()
    x = torch.randn(4, 6, device=dev).T  # not contiguous
    assert torch.allclose(ops.gelu_tanh(x, impl="triton"), ops.gelu_tanh_ref(x), atol=1e-6)
    assert ops.gelu_tanh(torch.empty(0, 5, device=dev), impl="triton").shape == (0, 5)


def test_under_torch_compile():
    dev = kernel_device()
    x = torch.randn(3, 17, device=dev)
    fn = torch.compile(lambda v: ops.gelu_tanh(v, impl="triton") * 2, fullgraph=True, backend="eager")
    assert torch.allclose(fn(x), 2 * ops.gelu_tanh_ref(x), atol=1e-6)
