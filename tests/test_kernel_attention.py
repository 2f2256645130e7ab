"""Triton attention (kernels/attention.py) against its reference: self-attention with fused RoPE, masked
cross-attention, grouped-query attention, strided views of fused projections, skip flags, the fall-back
gradients, dropout routing and torch.compile; fp32 and bf16, under the interpreter on the CPU (compiled on a
GPU)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import err_budget_ok, kernel_device, rel_err

from etta_engine import ops

pytest.importorskip("triton")

BASE = 16384.0


def naive_attention(q, k, v, key_mask=None, rope_base=None):
    """Attention written plainly in the inputs' dtype: the 'same-dtype torch' of the error budget."""
    if rope_base is not None:
        q, k = ops.apply_rope_ref(q, rope_base), ops.apply_rope_ref(k, rope_base)  # rotated copies in q's dtype
    groups = q.shape[2] // k.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return (p @ v).transpose(1, 2)  # (B, Tq, H, D)


def ragged_mask(B: int, L: int, g: torch.Generator, device=None) -> torch.Tensor:
    """Row 0 has no valid key, row 1 a valid prefix (text padding), row 2 random keys in a suffix only (whole key
    blocks masked before the first valid key), further rows random keys."""
    mask = torch.rand(B, L, generator=g) < 0.6
    mask[0] = False
    mask[1] = torch.arange(L) < max(1, L // 7)
    if B > 2:
        mask[2, : L - max(1, L // 8)] = False
        mask[2, -1] = True
    return mask.to(kernel_device() if device is None else device)


def check_forward(q, k, v, mask=None, rope_base=None, skip=None):
    """Run the kernel on (q, k, v) and compare it with the fp32 reference on the same (rounded) inputs."""
    out = ops.attention(q, k, v, mask, rope_base=rope_base, skip=skip, impl="triton")
    assert out.dtype == q.dtype and out.shape == q.shape and out.is_contiguous()
    assert torch.isfinite(out).all()
    ref = ops.attention_ref(q.float(), k.float(), v.float(), mask, rope_base=rope_base, skip=skip)
    if q.dtype == torch.float32:
        assert rel_err(out, ref) < 1e-5
    else:
        naive = naive_attention(q, k, v, mask, rope_base)
        if skip is not None:
            naive = naive.masked_fill(skip[:, None, None, None], 0.0)
        assert err_budget_ok(out, naive, ref)
    if mask is not None:
        empty = ~mask.any(-1)
        assert torch.count_nonzero(out[empty]) == 0  # a query with no key: zeros, not NaN
    return out


def randn(*shape, g, dtype, scale=1.0):
    return (torch.randn(shape, generator=g) * scale).to(kernel_device(), dtype)


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("T", [1, 37, 215])
@pytest.mark.parametrize("dtype", DTYPES)
def test_self_attention_with_fused_rope(T, dtype):
    g = torch.Generator().manual_seed(T)
    q, k, v = (randn(3, T, 2, 64, g=g, dtype=dtype) for _ in range(3))
    check_forward(q, k, v, rope_base=BASE)


@pytest.mark.parametrize(("Tq", "L", "magnitude"), [(17, 514, 1.0), (215, 77, 1.0), (17, 77, 12.0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_cross_attention(Tq, L, magnitude, dtype):
    g = torch.Generator().manual_seed(Tq + L)
    q = randn(3, Tq, 2, 48, g=g, dtype=dtype, scale=magnitude)  # large magnitudes: a sharp softmax
    k, v = randn(3, L, 2, 48, g=g, dtype=dtype), randn(3, L, 2, 48, g=g, dtype=dtype)
    check_forward(q, k, v, ragged_mask(3, L, g))


@pytest.mark.parametrize("D", [10, 16, 32, 48])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_query_attention_and_odd_head_dims(D, rope, dtype):
    g = torch.Generator().manual_seed(D)
    q = randn(2, 21, 4, D, g=g, dtype=dtype)
    k, v = randn(2, 21, 2, D, g=g, dtype=dtype), randn(2, 21, 2, D, g=g, dtype=dtype)
    check_forward(q, k, v, ragged_mask(2, 21, g), rope_base=BASE if rope else None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_of_fused_projections(dtype):
    """q/k/v straight out of (B, T, 3, H, D) and (B, L, 2, H, D) projections: same result as contiguous copies."""
    g = torch.Generator().manual_seed(1)
    qkv = randn(3, 37, 3, 2, 64, g=g, dtype=dtype)  # (B, T, 3, H, D)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = check_forward(q, k, v, rope_base=BASE)
    contiguous = ops.attention(q.contiguous(), k.contiguous(), v.contiguous(), rope_base=BASE, impl="triton")
    assert torch.equal(out, contiguous)

    xq = randn(3, 17, 2, 48, g=g, dtype=dtype)
    kv = randn(3, 77, 2, 2, 48, g=g, dtype=dtype)  # (B, L, 2, H, D)
    mask = ragged_mask(3, 77, g)
    out = check_forward(xq, kv[:, :, 0], kv[:, :, 1], mask)
    contiguous = ops.attention(xq, kv[:, :, 0].contiguous(), kv[:, :, 1].contiguous(), mask, impl="triton")
    assert torch.equal(out, contiguous)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_skip_flags(impl):
    g = torch.Generator().manual_seed(2)
    dev = kernel_device()
    q, k, v = (randn(3, 19, 2, 16, g=g, dtype=torch.float32) for _ in range(3))
    mask = ragged_mask(3, 19, g)
    skip = torch.tensor([False, True, False], device=dev)
    full = ops.attention(q, k, v, mask, impl=impl)
    out = ops.attention(q, k, v, mask, skip=skip, impl=impl)
    assert torch.count_nonzero(out[1]) == 0
    assert torch.equal(out[~skip], full[~skip])  # the other rows are untouched
    assert rel_err(out, ops.attention_ref(q, k, v, mask, skip=skip)) < 1e-5

    # self-attention with RoPE and every row skipped
    all_skipped = ops.attention(q, k, v, rope_base=BASE, skip=torch.ones(3, dtype=torch.bool, device=dev), impl=impl)
    assert torch.count_nonzero(all_skipped) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_cfg_batch_with_zero_uncond_memory(dtype):
    """Cross-attention of a CFG batch [cond, uncond]: the uncond K and V are zero, so its output is exactly
    zero whether it is computed or skipped, and skipping leaves the cond half bit-identical."""
    g = torch.Generator().manual_seed(3)
    dev = kernel_device()
    B, L = 1, 77
    q = randn(2 * B, 23, 2, 48, g=g, dtype=dtype)
    kv = randn(2 * B, L, 2, 2, 48, g=g, dtype=dtype)  # (2B, L, 2, H, D)
    kv[B:] = 0.0
    mask = (torch.arange(L) < 9).expand(2 * B, L).to(dev)
    skip = torch.arange(2 * B, device=dev) >= B
    computed = ops.attention(q, kv[:, :, 0], kv[:, :, 1], mask, impl="triton")
    skipped = ops.attention(q, kv[:, :, 0], kv[:, :, 1], mask, skip=skip, impl="triton")
    assert torch.count_nonzero(computed[B:]) == 0
    assert torch.equal(skipped, computed)
    check_forward(q, kv[:, :, 0], kv[:, :, 1], mask, skip=skip)


def test_rope_and_skip_in_the_reference_and_torch_impl():
    """attention_ref's RoPE is apply_rope_ref on q and k; the torch impl agrees with it."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 13, 2, 16, generator=g) for _ in range(3))
    mask = ragged_mask(2, 13, g, device="cpu")
    skip = torch.tensor([False, True])
    ref = ops.attention_ref(q, k, v, mask, rope_base=BASE, skip=skip)
    rotated = ops.attention_ref(ops.apply_rope_ref(q, BASE), ops.apply_rope_ref(k, BASE), v, mask)
    assert torch.equal(ref[0], rotated[0]) and torch.count_nonzero(ref[1]) == 0
    assert rel_err(ops.attention(q, k, v, mask, rope_base=BASE, skip=skip, impl="torch"), ref) < 1e-5


@pytest.mark.parametrize("case", ["self_rope_mask", "cross_gqa_skip"])
def test_fallback_gradients_match_the_reference(case):
    dev = kernel_device()
    g = torch.Generator().manual_seed(5)
    if case == "self_rope_mask":
        B, T, H, D = 2, 23, 2, 16
        qkv = torch.randn(B, T, 3, H, D, generator=g).to(dev).requires_grad_()  # fused projection, strided views
        leaves, args = (qkv,), lambda: (*qkv.unbind(2),)
        mask, rope, skip = ragged_mask(B, T, g), BASE, None
        dout = torch.randn(B, T, H, D, generator=g).to(dev)
    else:
        B, Tq, L, H, Hkv, D = 3, 11, 29, 4, 2, 10
        q = torch.randn(B, Tq, H, D, generator=g).to(dev).requires_grad_()
        k = torch.randn(B, L, Hkv, D, generator=g).to(dev).requires_grad_()
        v = torch.randn(B, L, Hkv, D, generator=g).to(dev).requires_grad_()
        leaves, args = (q, k, v), lambda: (q, k, v)
        mask, rope, skip = ragged_mask(B, L, g), None, torch.tensor([False, False, True], device=dev)
        dout = torch.randn(B, Tq, H, D, generator=g).to(dev)

    out = ops.attention(*args(), mask, rope_base=rope, skip=skip, impl="triton")
    grads = torch.autograd.grad(out, leaves, dout)
    ref = ops.attention_ref(*args(), mask, rope_base=rope, skip=skip)
    ref_grads = torch.autograd.grad(ref, leaves, dout)
    assert rel_err(out, ref) < 1e-5
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        assert rel_err(got, want) < 1e-5
    if skip is not None:
        assert torch.count_nonzero(grads[0][skip]) == 0  # a skipped row gets no gradient


def test_dropout_goes_to_the_torch_implementation():
    g = torch.Generator().manual_seed(6)
    q, k, v = (randn(2, 9, 2, 16, g=g, dtype=torch.float32) for _ in range(3))
    mask = ragged_mask(2, 9, g)
    torch.manual_seed(1)
    dropped = ops.attention(q, k, v, mask, dropout_p=0.3, rope_base=BASE, impl="triton")
    torch.manual_seed(1)
    torch_impl = ops.attention(q, k, v, mask, dropout_p=0.3, rope_base=BASE, impl="torch")
    assert torch.equal(dropped, torch_impl)
    assert not torch.allclose(dropped, ops.attention(q, k, v, mask, rope_base=BASE, impl="triton"))


def test_empty_inputs():
    dev = kernel_device()
    q = torch.randn(2, 5, 2, 16, device=dev)
    no_keys = torch.empty(2, 0, 2, 16, device=dev)
    out = ops.attention(q, no_keys, no_keys, impl="triton")
    assert out.shape == q.shape and torch.count_nonzero(out) == 0
    empty_q = torch.empty(2, 0, 2, 16, device=dev)
    assert ops.attention(empty_q, q, q, impl="triton").shape == (2, 0, 2, 16)


def test_bad_arguments():
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 5, 4, 8)
    with pytest.raises(ValueError, match="Tq == Tk"):
        ops.attention(q, k, k, rope_base=BASE)
    with pytest.raises(ValueError, match="even head dim, got D=7"):
        ops.attention(*(torch.randn(2, 3, 4, 7),) * 3, rope_base=BASE)
    with pytest.raises(ValueError, match="rope_base=0.5"):
        ops.attention(q, q, q, rope_base=0.5)
    with pytest.raises(ValueError, match="rope_base='x'"):
        ops.attention(q, q, q, rope_base="x")
    with pytest.raises(ValueError, match=r"skip must have shape \(2,\)"):
        ops.attention(q, k, k, skip=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="skip must be a bool tensor"):
        ops.attention(q, k, k, skip=torch.zeros(2))
    with pytest.raises(ValueError, match="key_mask is on meta"):
        ops.attention(q, k, k, torch.ones(2, 5, dtype=torch.bool, device="meta"))


def test_under_torch_compile():
    g = torch.Generator().manual_seed(7)
    dev = kernel_device()
    qkv = randn(2, 13, 3, 2, 16, g=g, dtype=torch.float32)
    xq, kv = randn(2, 7, 2, 16, g=g, dtype=torch.float32), randn(2, 11, 2, 2, 16, g=g, dtype=torch.float32)
    mask, skip = ragged_mask(2, 11, g), torch.tensor([False, True], device=dev)

    def block(qkv, xq, kv, mask, skip):
        h = ops.attention(*qkv.unbind(2), rope_base=BASE, impl="triton")
        return h, ops.attention(xq, kv[:, :, 0], kv[:, :, 1], mask, skip=skip, impl="triton")

    compiled = torch.compile(block, fullgraph=True, backend="eager")
    for got, want in zip(compiled(qkv, xq, kv, mask, skip), block(qkv, xq, kv, mask, skip), strict=True):
        assert torch.equal(got, want)
