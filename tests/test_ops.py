"""etta_engine.ops: references against independent formulations, dtype rules, fp32 islands, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from etta_engine import ops
from etta_engine.ops._dispatch import REGISTRY

# Relative error budget of one rounding to each dtype, for elementwise results (STYLE.md rule 7).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES_BTD = [(1, 1, 8), (3, 215, 48), (2, 17, 1536), (3, 5, 33)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---------------------------------------------------------------- adaln_modulate


def adaln_fp64(x, shift, scale, weight, eps):
    """LayerNorm from its definition (biased variance), then the adaLN affine, all in fp64."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    h = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        h = h * weight.double()
    return h * (1 + scale.double()[:, None]) + shift.double()[:, None]


@pytest.mark.parametrize("shape", SHAPES_BTD)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_weight", [False, True])
def test_adaln_modulate_matches_definition(shape, dtype, with_weight):
    B, _, D = shape
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    shift, scale = torch.randn(B, D).to(dtype), torch.randn(B, D).to(dtype)
    weight = torch.randn(D).to(dtype) if with_weight else None
    eps = 1e-5 if with_weight else 1e-6
    out = ops.adaln_modulate(x, shift, scale, weight, eps)
    assert out.dtype == dtype and out.shape == shape
    assert rel(out, adaln_fp64(x, shift, scale, weight, eps)) < TOL[dtype]


def test_adaln_modulate_large_magnitudes_are_stable():
    x = torch.randn(2, 9, 64) * 1e4 + 3e4  # a naive E[x^2] - E[x]^2 variance would cancel badly in fp32
    shift, scale = torch.zeros(2, 64), torch.zeros(2, 64)
    out = ops.adaln_modulate(x, shift, scale)
    assert rel(out, adaln_fp64(x, shift, scale, None, 1e-6)) < 1e-5


def test_adaln_modulate_bad_inputs():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"shift must have shape \(B, D\) = \(2, 8\)"):
        ops.adaln_modulate(x, torch.randn(2, 7), torch.randn(2, 8))
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        ops.adaln_modulate(x[0], torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ops.adaln_modulate(x, torch.randn(2, 8), torch.randn(2, 8), torch.ones(4))
    with pytest.raises(TypeError, match="floating-point"):
        ops.adaln_modulate(x.long(), torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="eps=0"):
        ops.adaln_modulate(x, torch.randn(2, 8), torch.randn(2, 8), eps=0)


# ---------------------------------------------------------------- RoPE


def rope_complex(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as complex multiplication in fp64: pair i is (x[i], x[i + D/2]) and is multiplied by e^{j t w_i}."""
    T, D = x.shape[1], x.shape[3]
    xd = x.double()
    z = torch.complex(xd[..., : D // 2], xd[..., D // 2 :])
    w = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    rot = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * w)
    z = z * rot[None, :, None, :]
    return torch.cat((z.real, z.imag), dim=-1)


@pytest.mark.parametrize("shape", [(1, 1, 1, 64), (3, 215, 24, 64), (2, 17, 3, 48), (3, 5, 2, 10)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_matches_complex_multiplication(shape, dtype):
    x = torch.randn(shape).to(dtype)
    out = ops.apply_rope(x, base=16384.0)
    assert out.dtype == dtype and out.shape == shape
    # fp32 angles up to t=214 carry ~1e-5 absolute error: the budget for fp32 is a little wider.
    tol = max(TOL[dtype], 5e-5)
    assert rel(out, rope_complex(x, 16384.0)) < tol


def test_rope_scores_depend_only_on_relative_position():
    D = 64
    q, k = torch.randn(1, 1, 1, D, dtype=torch.float64), torch.randn(1, 1, 1, D, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        qs = torch.zeros(1, max(m, n) + 1, 1, D, dtype=torch.float64)
        ks = qs.clone()
        qs[:, m], ks[:, n] = q[:, 0], k[:, 0]
        return float((ops.apply_rope_ref(qs)[0, m, 0].float() * ops.apply_rope_ref(ks)[0, n, 0].float()).sum())

    assert score(3, 1) == pytest.approx(score(40, 38), rel=1e-4)
    assert score(0, 9) == pytest.approx(score(100, 109), rel=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_rope_on_a_strided_qkv_view_equals_contiguous():
    qkv = torch.randn(2, 11, 3, 4, 16)  # the fused projection layout (B, T, 3, H, Dh)
    view = qkv[:, :, 1]
    assert not view.is_contiguous()
    assert torch.equal(ops.apply_rope(view), ops.apply_rope(view.contiguous()))


def test_rope_position_zero_is_identity_and_norms_are_kept():
    x = torch.randn(2, 9, 3, 64)
    out = ops.apply_rope(x)
    assert torch.allclose(out[:, 0], x[:, 0])
    pair_norm = lambda y: y[..., :32] ** 2 + y[..., 32:] ** 2
    assert torch.allclose(pair_norm(out), pair_norm(x), rtol=1e-5, atol=1e-6)


def test_rope_bad_inputs():
    with pytest.raises(ValueError, match="even head dim"):
        ops.apply_rope(torch.randn(1, 2, 3, 5))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ops.apply_rope(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="base=1.0"):
        ops.apply_rope(torch.randn(1, 2, 3, 4), base=1.0)


# ---------------------------------------------------------------- GELU-tanh


def gelu_tanh_fp64(u: torch.Tensor) -> torch.Tensor:
    u = u.double()
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))


@pytest.mark.parametrize("shape", [(1,), (3, 215, 48), (2, 7, 6144)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu_tanh_matches_formula(shape, dtype, with_bias):
    x = (torch.randn(shape) * 4).to(dtype)
    bias = torch.randn(shape[-1]).to(dtype) if with_bias else None
    out = ops.gelu_tanh(x, bias)
    assert out.dtype == dtype and out.shape == x.shape
    u = x.double() if bias is None else x.double() + bias.double()
    assert rel(out, gelu_tanh_fp64(u)) < TOL[dtype]


def test_gelu_tanh_bad_inputs():
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        ops.gelu_tanh(torch.randn(3, 4), torch.randn(5))
    with pytest.raises(TypeError, match="floating-point"):
        ops.gelu_tanh(torch.arange(4))


# ---------------------------------------------------------------- attention


def attention_loops(q, k, v, key_mask, scale):
    """Attention from its definition, one query at a time, fp64; queries with no key give 0."""
    B, Tq, H, D = q.shape
    groups = H // k.shape[2]
    out = torch.zeros(B, Tq, H, D, dtype=torch.float64)
    for b in range(B):
        keys = range(k.shape[1]) if key_mask is None else [j for j in range(k.shape[1]) if key_mask[b, j]]
        if not keys:
            continue
        idx = torch.tensor(list(keys))
        for h in range(H):
            kh, vh = k[b, idx, h // groups].double(), v[b, idx, h // groups].double()
            s = (q[b, :, h].double() @ kh.T) * scale
            p = torch.exp(s - s.max(-1, keepdim=True).values)
            out[b, :, h] = (p / p.sum(-1, keepdim=True)) @ vh
    return out


ATTN_CASES = [
    # B, Tq, Tk, H, Hkv, D, masked
    (1, 1, 1, 1, 1, 8, False),
    (3, 215, 215, 4, 4, 64, False),  # self-attention shape (few heads)
    (3, 17, 514, 2, 2, 48, True),  # cross-attention over a masked 514-token memory
    (2, 9, 13, 6, 3, 32, True),  # grouped-query attention
]


@pytest.mark.parametrize("case", ATTN_CASES)
@pytest.mark.parametrize("impl", ["ref", "torch"])
def test_attention_matches_definition(case, impl):
    B, Tq, Tk, H, Hkv, D, masked = case
    q, k, v = torch.randn(B, Tq, H, D), torch.randn(B, Tk, Hkv, D), torch.randn(B, Tk, Hkv, D)
    mask = None
    if masked:
        mask = torch.rand(B, Tk) < 0.5
        mask[0] = False  # a query row with no key at all: the output is zero
    fn = ops.attention_ref if impl == "ref" else lambda *a: ops.attention(*a, impl="torch")
    out = fn(q, k, v, mask)
    expected = attention_loops(q, k, v, mask, 1 / math.sqrt(D))
    assert rel(out, expected) < 1e-5
    if masked:
        assert torch.count_nonzero(out[0]) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_low_precision_error_budget(dtype):
    """err(impl in dtype vs fp32 ref) <= 2 * err(naive torch in dtype vs fp32 ref) + tiny (STYLE rule 7)."""
    B, T, H, D = 3, 215, 4, 64
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    mask = torch.rand(B, T) < 0.8
    ref = ops.attention_ref(q, k, v, mask)
    ql, kl, vl = q.to(dtype), k.to(dtype), v.to(dtype)
    s = (ql.transpose(1, 2) @ kl.transpose(1, 2).transpose(-1, -2)) / math.sqrt(D)
    p = torch.softmax(s.masked_fill(~mask[:, None, None], float("-inf")), -1)
    naive = (p @ vl.transpose(1, 2)).transpose(1, 2)
    out = ops.attention(ql, kl, vl, mask, impl="torch")
    assert out.dtype == dtype
    assert rel(out, ref) <= 2 * rel(naive, ref) + 1e-6


def test_attention_bad_inputs():
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 5, 4, 8)
    with pytest.raises(ValueError, match="key_mask must have shape"):
        ops.attention(q, k, k, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_mask must be a bool tensor"):
        ops.attention(q, k, k, torch.ones(2, 5))
    with pytest.raises(ValueError, match="q heads a multiple of k heads"):
        ops.attention(q, torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8))
    with pytest.raises(TypeError, match="share a dtype"):
        ops.attention(q, k.double(), k.double())
    with pytest.raises(ValueError, match="dropout_p=1.5"):
        ops.attention(q, k, k, dropout_p=1.5)


# ---------------------------------------------------------------- dispatch and fp32 islands


def test_impl_selection_errors_name_the_choices():
    x = torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="impl='fast' is not one of"):
        ops.adaln_modulate(x, torch.zeros(1, 4), torch.zeros(1, 4), impl="fast")
    for impl in ("triton", "cuda"):
        if impl not in REGISTRY["adaln_modulate"]:
            with pytest.raises(NotImplementedError, match="available"):
                ops.adaln_modulate(x, torch.zeros(1, 4), torch.zeros(1, 4), impl=impl)


FP32_ISLANDS = {
    "adaln_modulate": lambda x: ops.adaln_modulate(x, x[:, 0] * 0.1, x[:, 1] * 0.2, x[0, 0]),
    "apply_rope": lambda x: ops.apply_rope(x.view(2, 10, 4, 16)),
    "gelu_tanh": lambda x: ops.gelu_tanh(x, x[0, 0]),
    "attention": lambda x: ops.attention_ref(*(x.view(2, 10, 4, 16),) * 3),
}


@pytest.mark.parametrize("name", sorted(FP32_ISLANDS))
def test_ops_stay_fp32_under_bf16_autocast(name):
    x = torch.randn(2, 10, 64) * 3
    plain = FP32_ISLANDS[name](x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = FP32_ISLANDS[name](x)
    assert autocast.dtype == torch.float32
    assert torch.equal(autocast, plain)
