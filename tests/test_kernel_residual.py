"""Gated residual: the reference and its checks, and the Triton kernel (kernels/residual.py) against the reference:
forward and every gradient (x, gate, y), odd widths, T=1 and T=215, strided gates, fp32 and bf16, under the
interpreter on the CPU (and compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import err_budget_ok, kernel_device, rel_err

from etta_engine import ops

F32, BF16 = torch.float32, torch.bfloat16
SHAPES = [(3, 1, 1535), (3, 215, 64), (2, 7, 33), (3, 40, 1535)]


def _inputs(shape, dtype, dev, seed=0):
    B, _, D = shape
    g = torch.Generator().manual_seed(seed)
    x, y, dy = (torch.randn(shape, generator=g) for _ in range(3))
    gate = torch.randn(B, D, generator=g)
    return tuple(t.to(dev, dtype) for t in (x, gate, y, dy))


def _forward_and_grads(fn, x, gate, y, dy):
    """fn's output and its gradients with respect to (x, gate, y), on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, gate, y)]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dy)


def _triton(x, gate, y):
    return ops.gated_residual(x, gate, y, impl="triton")


# ------------------------------------------------------------------ reference and checks


def test_reference_matches_the_definition_in_fp64():
    x, gate, y, _ = _inputs((2, 5, 16), torch.bfloat16, torch.device("cpu"))
    out = ops.gated_residual(x, gate, y)
    assert out.dtype == torch.bfloat16
    want = x.double() + gate.double()[:, None] * y.double()
    assert rel_err(out, want) < 2.0**-8  # one rounding to bf16


def test_reference_stays_fp32_under_bf16_autocast():
    x, gate, y, _ = _inputs((2, 5, 16), torch.float32, torch.device("cpu"))
    plain = ops.gated_residual(x, gate, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = ops.gated_residual(x, gate, y)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)


def test_bad_inputs():
    x, gate = torch.randn(2, 3, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        ops.gated_residual(x[0], gate, x[0])
    with pytest.raises(ValueError, match=r"gate must have shape \(B, D\) = \(2, 8\)"):
        ops.gated_residual(x, torch.randn(2, 7), x)
    with pytest.raises(ValueError, match="gate must have 2 dimensions"):
        ops.gated_residual(x, gate[:, None], x)
    with pytest.raises(ValueError, match=r"y must have the shape of x, \(2, 3, 8\)"):
        ops.gated_residual(x, gate, x[:, :2])
    with pytest.raises(TypeError, match="y must have the dtype of x, torch.float32"):
        ops.gated_residual(x, gate, x.bfloat16())
    with pytest.raises(TypeError, match="gate must have the dtype of x"):
        ops.gated_residual(x, gate.double(), x)
    with pytest.raises(TypeError, match="floating-point"):
        ops.gated_residual(x.long(), gate, x)
    with pytest.raises(ValueError, match="impl='fast' is not one of"):
        ops.gated_residual(x, gate, x, impl="fast")


# ------------------------------------------------------------------ Triton


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_the_reference(shape, dtype):
    pytest.importorskip("triton")
    dev = kernel_device()
    x, gate, y, dy = _inputs(shape, dtype, dev)
    out, grads = _forward_and_grads(_triton, x, gate, y, dy)
    assert out.dtype == dtype and out.shape == shape
    assert [g.dtype for g in grads] == [dtype] * 3

    # fp32 reference on the same (rounded) inputs, and the naive same-dtype computation for the budget
    ref, ref_grads = _forward_and_grads(ops.gated_residual_ref, x.float(), gate.float(), y.float(), dy.float())
    if dtype == torch.float32:
        assert rel_err(out, ref) < 1e-5
        for got, want in zip(grads, ref_grads, strict=True):
            assert rel_err(got, want) < 1e-4
    else:
        naive, naive_grads = _forward_and_grads(lambda x, g, y: x + g[:, None] * y, x, gate, y, dy)
        assert err_budget_ok(out, naive, ref)
        for got, nv, want in zip(grads, naive_grads, ref_grads, strict=True):
            assert err_budget_ok(got, nv, want, tiny=1e-3)


def test_strided_inputs_match_contiguous_ones():
    """gate as a chunk of one (B, 3 D) adaLN output (as in the DiT), x and y transposed views, dy padded."""
    pytest.importorskip("triton")
    dev = kernel_device()
    B, T, D = 2, 6, 33
    gate = torch.randn(B, 3 * D, device=dev)[:, D : 2 * D]
    x, y = (torch.randn(B, D, T, device=dev).transpose(1, 2) for _ in range(2))
    dy = torch.randn(B, T, D + 5, device=dev)[..., :D]
    out, grads = _forward_and_grads(_triton, x, gate, y, dy)
    ref, ref_grads = _forward_and_grads(ops.gated_residual_ref, x.contiguous(), gate, y.contiguous(), dy.contiguous())
    assert rel_err(out, ref) < 1e-6
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel_err(got, want) < 1e-5


def test_empty_rows():
    pytest.importorskip("triton")
    dev = kernel_device()
    x, gate, y, dy = _inputs((2, 0, 8), torch.float32, dev)
    out, (dx, dgate, dy_in) = _forward_and_grads(_triton, x, gate, y, dy)
    assert out.shape == dx.shape == dy_in.shape == (2, 0, 8)
    assert torch.equal(dgate, torch.zeros(2, 8, device=dev))


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) functions and autograd registration, as torch.compile and export rely on them."""
    pytest.importorskip("triton")
    x, gate, y, dy = _inputs((2, 3, 33), torch.float32, kernel_device())
    args = (x.requires_grad_(), gate.requires_grad_(), y.requires_grad_())
    torch.library.opcheck(torch.ops.etta.gated_residual_triton, args)
    torch.library.opcheck(torch.ops.etta.gated_residual_triton_backward, (dy, gate.detach(), y.detach()))


def test_under_torch_compile():
    pytest.importorskip("triton")
    x, gate, y, dy = _inputs((2, 5, 33), torch.float32, kernel_device())
    fn = torch.compile(lambda *a: _triton(*a) * 2, fullgraph=True, backend="eager")
    out, grads = _forward_and_grads(fn, x, gate, y, dy)
    ref, ref_grads = _forward_and_grads(lambda *a: ops.gated_residual_ref(*a) * 2, x, gate, y, dy)
    assert rel_err(out, ref) < 1e-6
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel_err(got, want) < 1e-5
