"""The fused gated residual + AdaLN-modulate (kernels/residual_modulate.py, csrc/) against its reference, which is
the two unfused ops: all rows or the first n (a CFG batch whose uncond half skipped the sub-layer), strided
modulation chunks, with and without a LayerNorm weight, fp32 and bf16, under the Triton interpreter on the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_device, rel_err

from etta_engine import ops


def _inputs(B, n, T, D, dtype, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g) * 3 + 1
    y = torch.randn(n, T, D, generator=g)
    mod = torch.randn(B, 9 * D, generator=g) * 0.5  # the hoisted modulation: the chunks are strided views
    weight = torch.randn(D, generator=g)
    to = lambda t: t.to(dev, dtype)
    return to(x), to(mod[:n, 2 * D : 3 * D]), to(y), to(mod[:, 3 * D : 4 * D]), to(mod[:, 4 * D : 5 * D]), to(weight)


def _unfused(x, gate, y, shift, scale, weight):
    """What the engine's step ran before: gated residual on the attending rows, concatenation, AdaLN."""
    n = y.shape[0]
    head = ops.gated_residual_ref(x[:n], gate, y)
    x_out = torch.cat((head, x[n:]))
    return x_out, ops.adaln_modulate_ref(x_out, shift, scale, weight, 1e-6)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("B", "n", "T", "D"), [(4, 4, 5, 48), (4, 2, 5, 48), (2, 1, 1, 7), (3, 3, 2, 1000)])
@pytest.mark.parametrize("with_weight", [False, True])
def test_fused_equals_the_unfused_ops(impl, dtype, B, n, T, D, with_weight):
    if impl == "triton":
        pytest.importorskip("triton")
    dev = kernel_device() if impl == "triton" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x, gate, y, shift, scale, weight = _inputs(B, n, T, D, dtype, dev)
    weight = weight if with_weight else None
    want_x, want = _unfused(x, gate, y, shift, scale, weight)
    ref_x, ref = ops.residual_modulate_ref(x, gate, y, shift, scale, weight)
    assert torch.equal(ref_x, want_x) and torch.equal(ref, want)
    got_x, got = ops.residual_modulate(x, gate, y, shift, scale, weight, impl=impl)
    assert got_x.dtype == got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got_x[n:], x[n:])  # the rows without the sub-layer pass through
    tol = 2e-6 if dtype == torch.float32 else 1e-2
    assert rel_err(got_x, want_x) < tol and rel_err(got, want) < tol


def test_bad_inputs_are_named():
    x, gate, y, shift, scale, _ = _inputs(4, 2, 3, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"y must have shape \(n, 3, 8\) with 1 <= n <= 4, got \(5, 3, 8\)"):
        ops.residual_modulate(x, gate, torch.zeros(5, 3, 8), shift, scale)
    with pytest.raises(TypeError, match="y is torch.float16 but x is torch.float32"):
        ops.residual_modulate(x, gate, y.half(), shift, scale)
    with pytest.raises(ValueError, match=r"gate must have shape \(2, 8\), got \(4, 8\)"):
        ops.residual_modulate(x, shift, y, shift, scale)
    with pytest.raises(ValueError, match="eps=0.0 must be positive"):
        ops.residual_modulate(x, gate, y, shift, scale, eps=0.0)
    with pytest.raises(RuntimeError, match="inference kernel without a backward"):
        ops.residual_modulate(x.requires_grad_(), gate, y, shift, scale, impl="triton")
