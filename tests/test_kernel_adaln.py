"""Triton AdaLN-modulate (kernels/adaln.py) against its reference: forward and every gradient (x, shift, scale,
weight), odd widths, T=1 and T=215, strided views, large magnitudes, fp32 and bf16, under the interpreter on the
CPU (and compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import err_budget_ok, kernel_device, rel_err

from etta_engine import ops

pytest.importorskip("triton")

F32, BF16 = torch.float32, torch.bfloat16
# (shape, dtype, with_weight). The interpreter runs one program after another, so the long rows (D=1535) come
# with few of them; T=215 is tested at the narrow widths.
CASES = [
    *[(shape, dtype, w) for shape in [(3, 1, 1535), (2, 7, 33)] for dtype in (F32, BF16) for w in (False, True)],
    ((3, 215, 64), F32, True),
    ((3, 215, 33), BF16, False),
    ((3, 40, 1535), F32, False),
    ((3, 40, 1535), BF16, True),
]
CASE_IDS = ["x".join(map(str, s)) + f"-{str(d)[6:]}-{'weight' if w else 'no_weight'}" for s, d, w in CASES]


def _inputs(shape, dtype, with_weight, dev, x_scale=3.0, x_offset=1.0, seed=0):
    B, _, D = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * x_scale + x_offset
    shift, scale = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g) * 0.5
    weight = torch.randn(D, generator=g) if with_weight else None
    dy = torch.randn(shape, generator=g)
    cast = lambda t: None if t is None else t.to(dev, dtype)
    return cast(x), cast(shift), cast(scale), cast(weight), cast(dy)


def _forward_and_grads(fn, x, shift, scale, weight, dy, eps):
    """fn's output and its gradients with respect to (x, shift, scale[, weight]), on fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, shift, scale, weight) if t is not None]
    w = leaves[3] if weight is not None else None
    out = fn(leaves[0], leaves[1], leaves[2], w, eps)
    return out, torch.autograd.grad(out, leaves, dy)


def _naive(x, shift, scale, weight, eps):
    """The same-dtype torch computation: layer_norm in x's dtype, then the affine in x's dtype."""
    return F.layer_norm(x, (x.shape[-1],), weight, None, eps) * (1 + scale[:, None]) + shift[:, None]


def _triton(x, shift, scale, weight, eps):
    return ops.adaln_modulate(x, shift, scale, weight, eps, impl="triton")


def _fp32_ref(x, shift, scale, weight, eps):
    return ops.adaln_modulate_ref(
        x.float(), shift.float(), scale.float(), None if weight is None else weight.float(), eps
    )


@pytest.mark.parametrize(("shape", "dtype", "with_weight"), CASES, ids=CASE_IDS)
def test_forward_and_gradients_match_the_reference(shape, dtype, with_weight):
    dev = kernel_device()
    x, shift, scale, weight, dy = _inputs(shape, dtype, with_weight, dev)
    eps = 1e-5 if with_weight else 1e-6
    out, grads = _forward_and_grads(_triton, x, shift, scale, weight, dy, eps)
    assert out.dtype == dtype and out.shape == shape and out.is_contiguous()
    assert [g.dtype for g in grads] == [dtype] * len(grads)

    # fp32 reference on the same (rounded) inputs, and the naive same-dtype computation for the budget
    f32 = [None if t is None else t.float() for t in (x, shift, scale, weight, dy)]
    ref, ref_grads = _forward_and_grads(lambda *a: ops.adaln_modulate_ref(*a), *f32, eps)
    if dtype == torch.float32:
        assert rel_err(out, ref) < 1e-5
        for got, want in zip(grads, ref_grads, strict=True):
            assert rel_err(got, want) < 1e-4
    else:
        naive, naive_grads = _forward_and_grads(_naive, x, shift, scale, weight, dy, eps)
        assert err_budget_ok(out, naive, ref)
        for got, nv, want in zip(grads, naive_grads, ref_grads, strict=True):
            assert err_budget_ok(got, nv, want, tiny=1e-3)


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("x_scale", [1e4, 1e3])
def test_large_magnitudes_do_not_cancel(x_scale, with_weight):
    """Noise of 1e4 or 1e3 on offsets of 3e4 that differ per row. The variance as E[x^2] - E[x]^2 in fp32 would
    cancel: rel. error 1e-4 at x_scale=1e3 (measured), against 2e-6 for mean((x - mean)^2) on the row."""
    dev = kernel_device()
    B, T, D = 3, 5, 1535
    x, shift, scale, weight, dy = _inputs((B, T, D), torch.float32, with_weight, dev, x_scale=x_scale, x_offset=3e4)
    x = x + 3e4 * torch.randn(B, T, 1, generator=torch.Generator().manual_seed(1)).to(dev)
    out, grads = _forward_and_grads(_triton, x, shift, scale, weight, dy, 1e-6)

    def fp64_definition(x, shift, scale, weight, eps):
        mean = x.mean(-1, keepdim=True)
        xhat = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
        h = xhat if weight is None else xhat * weight
        return h * (1 + scale[:, None]) + shift[:, None]

    f64 = [None if t is None else t.double() for t in (x, shift, scale, weight, dy)]
    ref, ref_grads = _forward_and_grads(fp64_definition, *f64, 1e-6)
    assert rel_err(out, ref) < 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel_err(got, want) < 1e-4


def test_strided_views_match_contiguous_inputs():
    """x and dy as views with a padded row stride, shift/scale as chunks of one (B, 2 D) adaLN output (as in the
    DiT), and x with a non-unit last stride (copied by the launcher)."""
    dev = kernel_device()
    B, T, D = 2, 6, 33
    x_base = torch.randn(B, T, D + 7, device=dev)
    shift, scale = torch.randn(B, 2 * D, device=dev).chunk(2, dim=1)
    weight = torch.randn(D, device=dev)
    dy = torch.randn(B, T, D + 5, device=dev)[..., :D]
    for x in (x_base[..., :D], torch.randn(B, D, T, device=dev).transpose(1, 2)):
        assert not x.is_contiguous()
        out, grads = _forward_and_grads(_triton, x, shift, scale, weight, dy, 1e-6)
        ref, ref_grads = _forward_and_grads(_fp32_ref, x.contiguous(), shift, scale, weight, dy.contiguous(), 1e-6)
        assert rel_err(out, ref) < 1e-5
        for got, want in zip(grads, ref_grads, strict=True):
            assert rel_err(got, want) < 1e-4


def test_forward_returns_the_row_statistics():
    dev = kernel_device()
    x = torch.randn(2, 3, 33, device=dev) * 2 + 1
    shift, scale = torch.zeros(2, 33, device=dev), torch.zeros(2, 33, device=dev)
    _, mean, rstd = torch.ops.etta.adaln_modulate_triton(x, shift, scale, None, 1e-6)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (6,)
    torch.testing.assert_close(mean, x.mean(-1).flatten())
    torch.testing.assert_close(rstd, torch.rsqrt(x.var(-1, unbiased=False) + 1e-6).flatten())


def test_empty_rows():
    dev = kernel_device()
    x = torch.randn(2, 0, 8, device=dev, requires_grad=True)
    shift = torch.randn(2, 8, device=dev, requires_grad=True)
    out = ops.adaln_modulate(x, shift, torch.zeros(2, 8, device=dev), impl="triton")
    assert out.shape == (2, 0, 8)
    out.sum().backward()
    assert torch.equal(shift.grad, torch.zeros(2, 8, device=dev))


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) functions and autograd registration, as torch.compile and export rely on them."""
    dev = kernel_device()
    x, shift, scale, weight, dy = _inputs((2, 3, 33), torch.float32, True, dev)
    for w in (weight, None):
        args = (x.requires_grad_(), shift.requires_grad_(), scale.requires_grad_(), w, 1e-6)
        torch.library.opcheck(torch.ops.etta.adaln_modulate_triton, args)
        mean, rstd = torch.ops.etta.adaln_modulate_triton(*args)[1:]
        bwd_args = (dy, x.detach(), scale.detach(), w, mean, rstd)
        torch.library.opcheck(torch.ops.etta.adaln_modulate_triton_backward, bwd_args)


def test_under_torch_compile():
    dev = kernel_device()
    x, shift, scale, weight, dy = _inputs((2, 5, 33), torch.float32, True, dev)
    fn = torch.compile(lambda *a: _triton(*a) * 2, fullgraph=True, backend="eager")
    out, grads = _forward_and_grads(fn, x, shift, scale, weight, dy, 1e-5)
    ref, ref_grads = _forward_and_grads(lambda *a: _fp32_ref(*a) * 2, x, shift, scale, weight, dy, 1e-5)
    assert rel_err(out, ref) < 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert rel_err(got, want) < 1e-4
