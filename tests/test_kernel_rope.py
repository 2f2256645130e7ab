"""Triton RoPE (kernels/rope.py) against its reference and an independent complex-multiplication formulation:
forward, inverse and gradients, strided QKV views, the fused q/k launch, fp32 and bf16, under the interpreter on
the CPU (and compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import err_budget_ok, kernel_device, rel_err

from etta_engine import ops

pytest.importorskip("triton")

BASE = 16384.0
# (B, T, H, Dh): T=1 and T=215, H in {1, 4}, Dh in {10, 48, 64} (non-power-of-two Dh/2 = 5, 24). The interpreter
# is slow, so the long sequences go with few heads.
SHAPES = [(3, 1, 4, 64), (3, 215, 1, 64), (3, 215, 1, 10), (3, 17, 4, 48), (3, 5, 4, 10)]
# fp32 angles up to t=214 carry ~1e-5 absolute error (in the reference as well): a little wider than 1e-5.
FP32_TOL = 2e-5


def rope_complex(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as complex multiplication in fp64: pair i is x[i] + j x[i + Dh/2], multiplied by e^{j t base^(-2i/Dh)}."""
    T, Dh = x.shape[1], x.shape[3]
    xd = x.double()
    z = torch.complex(xd[..., : Dh // 2], xd[..., Dh // 2 :])
    freq = base ** (-torch.arange(0, Dh, 2, dtype=torch.float64, device=x.device) / Dh)
    angle = torch.arange(T, dtype=torch.float64, device=x.device)[:, None] * freq  # (T, Dh/2)
    z = z * torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
    return torch.cat((z.real, z.imag), dim=-1)


def rope_naive(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE computed in x's dtype throughout (the naive same-dtype torch baseline of rule 7)."""
    T, Dh = x.shape[1], x.shape[3]
    theta = ops.rope_angles(T, Dh, base, x.device).to(x.dtype)[None, :, None, :]
    cos, sin = theta.cos(), theta.sin()
    x1, x2 = x[..., : Dh // 2], x[..., Dh // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_match_the_reference(shape, dtype):
    dev = kernel_device()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dev, dtype).requires_grad_()
    dy = torch.randn(shape, generator=g).to(dev, dtype)
    y = ops.apply_rope(x, BASE, impl="triton")
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    (dx,) = torch.autograd.grad(y, x, dy)
    assert dx.dtype == dtype and dx.shape == x.shape

    # fp32 reference on the same (rounded) inputs, and the naive same-dtype computation for the budget
    xr = x.detach().float().requires_grad_()
    yr = ops.apply_rope_ref(xr, BASE)
    (dxr,) = torch.autograd.grad(yr, xr, dy.float())
    xn = x.detach().clone().requires_grad_()
    yn = rope_naive(xn, BASE)
    (dxn,) = torch.autograd.grad(yn, xn, dy)

    if dtype == torch.float32:
        assert rel_err(y, yr) < FP32_TOL
        assert rel_err(y, rope_complex(x.detach(), BASE)) < FP32_TOL
        assert rel_err(dx, dxr) < FP32_TOL
    else:
        assert err_budget_ok(y, yn, yr)
        assert err_budget_ok(dx, dxn, dxr)


@pytest.mark.parametrize("shape", [(3, 215, 2, 48), (3, 9, 4, 10)])
def test_strided_qkv_views_need_no_copy(shape):
    dev = kernel_device()
    B, T, H, Dh = shape
    qkv = torch.randn(B, T, 3, H, Dh, device=dev)
    for j in range(3):
        view = qkv[:, :, j]
        assert not view.is_contiguous()
        got = ops.apply_rope(view, BASE, impl="triton")
        assert torch.equal(got, ops.apply_rope(view.contiguous(), BASE, impl="triton"))
        assert rel_err(got, ops.apply_rope_ref(view, BASE)) < FP32_TOL
    # a view with heads and time swapped in memory, and a non-unit last stride (copied by the launcher)
    x = torch.randn(B, H, T, Dh, device=dev).transpose(1, 2)
    assert torch.equal(ops.apply_rope(x, BASE, impl="triton"), ops.apply_rope(x.contiguous(), BASE, impl="triton"))
    x = torch.randn(B, T, H, 2 * Dh, device=dev)[..., ::2]
    assert torch.equal(ops.apply_rope(x, BASE, impl="triton"), ops.apply_rope(x.contiguous(), BASE, impl="triton"))


@pytest.mark.parametrize("shape", [(3, 215, 1, 64), (3, 7, 4, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_qk_equals_two_separate_calls(shape, dtype):
    dev = kernel_device()
    B, T, H, Dh = shape
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, T, 3, H, Dh, generator=g).to(dev, dtype).requires_grad_()
    dq, dk = (torch.randn(shape, generator=g).to(dev, dtype) for _ in range(2))

    q, k = ops.apply_rope_qk(qkv, BASE, impl="triton")
    assert q.shape == k.shape == shape and q.dtype == k.dtype == dtype
    (dqkv,) = torch.autograd.grad((q, k), qkv, (dq, dk))

    qkv2 = qkv.detach().clone().requires_grad_()
    q2 = ops.apply_rope(qkv2[:, :, 0], BASE, impl="triton")
    k2 = ops.apply_rope(qkv2[:, :, 1], BASE, impl="triton")
    (dqkv2,) = torch.autograd.grad((q2, k2), qkv2, (dq, dk))
    assert torch.equal(q, q2) and torch.equal(k, k2)
    assert torch.equal(dqkv, dqkv2)
    assert torch.count_nonzero(dqkv[:, :, 2]) == 0

    # and the torch implementation of the fused helper agrees with the reference
    qr, kr = ops.apply_rope_qk(qkv.detach().float(), BASE, impl="torch")
    tol = FP32_TOL if dtype == torch.float32 else 1e-2
    assert rel_err(q, qr) < tol and rel_err(k, kr) < tol


def test_fused_qk_gradient_when_only_one_output_is_used():
    dev = kernel_device()
    qkv = torch.randn(2, 6, 3, 2, 16, device=dev, requires_grad=True)
    q, _ = ops.apply_rope_qk(qkv, BASE, impl="triton")
    (dqkv,) = torch.autograd.grad(q.sum(), qkv)
    qkv_r = qkv.detach().clone().requires_grad_()
    (dqkv_r,) = torch.autograd.grad(ops.apply_rope_ref(qkv_r[:, :, 0], BASE).sum(), qkv_r)
    assert rel_err(dqkv, dqkv_r) < FP32_TOL
    assert torch.count_nonzero(dqkv[:, :, 1:]) == 0


@pytest.mark.parametrize("shape", [(3, 215, 1, 48), (2, 5, 4, 10)])
def test_inverse_undoes_the_rotation(shape):
    from etta_engine.kernels.rope import rope

    x = torch.randn(shape, device=kernel_device())
    y = rope(x, BASE)
    assert rel_err(rope(y, BASE, sign=-1), x) < 1e-6
    assert rel_err(rope(rope(x, BASE, sign=-1), BASE), x) < 1e-6
    with pytest.raises(ValueError, match="sign=2"):
        rope(x, BASE, sign=2)


def test_double_backward_matches_the_reference():
    dev = kernel_device()
    x = torch.randn(2, 6, 3, 10, device=dev, requires_grad=True)
    qkv = torch.randn(2, 6, 3, 3, 10, device=dev, requires_grad=True)
    w = torch.randn(2, 6, 3, 10, device=dev)

    def grad_norm(fn, inp):
        (g,) = torch.autograd.grad((fn(inp) * w).pow(2).sum(), inp, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), inp)[0]

    ref = grad_norm(lambda v: ops.apply_rope_ref(v, BASE), x)
    assert rel_err(grad_norm(lambda v: ops.apply_rope(v, BASE, impl="triton"), x), ref) < FP32_TOL
    ref_qk = grad_norm(lambda v: sum(ops.apply_rope_qk(v, BASE, impl="torch")), qkv)
    assert rel_err(grad_norm(lambda v: sum(ops.apply_rope_qk(v, BASE, impl="triton")), qkv), ref_qk) < FP32_TOL


def test_empty_tensor_and_bad_inputs():
    dev = kernel_device()
    assert ops.apply_rope(torch.empty(0, 4, 2, 8, device=dev), impl="triton").shape == (0, 4, 2, 8)
    q, k = ops.apply_rope_qk(torch.empty(2, 0, 3, 2, 8, device=dev), impl="triton")
    assert q.shape == k.shape == (2, 0, 2, 8)
    with pytest.raises(ValueError, match="qkv must have 5 dimensions"):
        ops.apply_rope_qk(torch.randn(2, 3, 3, 8))
    with pytest.raises(ValueError, match=r"shape \(B, T, 3, H, Dh\)"):
        ops.apply_rope_qk(torch.randn(2, 3, 2, 1, 8))
    with pytest.raises(ValueError, match="even head dim"):
        ops.apply_rope_qk(torch.randn(2, 3, 3, 1, 7))
    with pytest.raises(TypeError, match="floating-point"):
        ops.apply_rope_qk(torch.ones(2, 3, 3, 1, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="base=0.5"):
        ops.apply_rope_qk(torch.randn(2, 3, 3, 1, 8), base=0.5)


def test_under_torch_compile():
    dev = kernel_device()
    qkv = torch.randn(2, 9, 3, 4, 16, device=dev, requires_grad=True)

    def fn(v):
        q, k = ops.apply_rope_qk(v, BASE, impl="triton")
        return q * 2 + ops.apply_rope(v[:, :, 1], BASE, impl="triton") - k

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    out = compiled(qkv)
    assert torch.allclose(out, 2 * ops.apply_rope_ref(qkv[:, :, 0], BASE), atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), qkv)
    (g_ref,) = torch.autograd.grad(fn(qkv).sum(), qkv)
    assert torch.allclose(g, g_ref)


def test_opcheck():
    dev = kernel_device()
    qkv = torch.randn(2, 5, 3, 2, 10, device=dev, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.etta.apply_rope_triton, (qkv[:, :, 0], BASE), test_utils=tests)
    torch.library.opcheck(torch.ops.etta.apply_rope_qk_triton, (qkv, BASE), test_utils=tests)
