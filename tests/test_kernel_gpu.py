"""The Triton kernels at the etta preset's shapes (width 1536, FFN 6144, 24 heads x 64, cross-attention
16 heads x 48 over 514 tokens, T = 215, a CFG batch of 2 x 2), forward and gradients, fp32 and bf16.
GPU only: the interpreter would take hours at these sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import err_budget_ok, rel_err

from etta_engine import ops

pytestmark = pytest.mark.gpu
B, T, W, F, H, DH, HC, DC, L = 4, 215, 1536, 6144, 24, 64, 16, 48, 514


def _case(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    return lambda *shape: torch.randn(*shape, device="cuda", generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elementwise_and_norm_ops_at_etta_shapes(dtype):
    rand = _case(dtype)
    x, y, shift, scale, gate, weight, hidden = (
        rand(B, T, W),
        rand(B, T, W),
        rand(B, W),
        rand(B, W),
        rand(B, W),
        rand(W),
        rand(B, T, F),
    )
    calls = [
        (lambda impl, *a: ops.adaln_modulate(*a, impl=impl), ops.adaln_modulate_ref, (x, shift, scale, weight, 1e-5)),
        (lambda impl, *a: ops.gated_residual(*a, impl=impl), ops.gated_residual_ref, (x, gate, y)),
        (lambda impl, *a: ops.gelu_tanh(*a, impl=impl), ops.gelu_tanh_ref, (hidden,)),
    ]
    for public, ref, args in calls:
        leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        out = public("triton", *leaves)
        ref32 = ref(*[a.detach().float().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args])
        naive = ref(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])  # same dtype, fp32 inside
        if dtype == torch.float32:
            assert rel_err(out, ref32) < 1e-5
        else:
            assert err_budget_ok(out, naive, ref32, tiny=1e-3)
        tensors = [a for a in leaves if isinstance(a, torch.Tensor)]
        grads = torch.autograd.grad(out, tensors, torch.ones_like(out))
        assert all(torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_attention_at_etta_shapes(dtype):
    rand = _case(dtype)
    qkv = rand(B, T, 3, H, DH)
    q_t, k_t = ops.apply_rope_qk(qkv, 16384.0, impl="triton")
    q_r, k_r = ops.apply_rope_qk(qkv.float(), 16384.0, impl="torch")
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(q_t, q_r) < tol and rel_err(k_t, k_r) < tol

    self_out = ops.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rope_base=16384.0, impl="triton")
    self_ref = ops.attention_ref(*(qkv.float()[:, :, i] for i in range(3)), rope_base=16384.0)
    self_naive = ops.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rope_base=16384.0, impl="torch")

    q, kv = rand(B, T, HC, DC), rand(B, L, 2, HC, DC)
    kv[B // 2 :] = 0  # the uncond half of a CFG batch: zero memory
    lengths = torch.tensor([40, 514, 40, 514], device="cuda")
    mask = torch.arange(L, device="cuda")[None] < lengths[:, None]
    skip = torch.tensor([False, False, True, True], device="cuda")
    cross_out = ops.attention(q, kv[:, :, 0], kv[:, :, 1], mask, skip=skip, impl="triton")
    cross_ref = ops.attention_ref(q.float(), kv[:, :, 0].float(), kv[:, :, 1].float(), mask)
    cross_naive = ops.attention(q, kv[:, :, 0], kv[:, :, 1], mask, impl="torch")
    assert torch.count_nonzero(cross_out[B // 2 :]) == 0 and torch.count_nonzero(cross_ref[B // 2 :]) == 0
    for out, naive, ref in ((self_out, self_naive, self_ref), (cross_out, cross_naive, cross_ref)):
        if dtype == torch.float32:
            assert rel_err(out, ref) < 1e-5
        else:
            assert err_budget_ok(out, naive, ref, tiny=1e-3)
