"""The C++/CUDA runtime in csrc/: every op of the binding and of ``ops.*(impl="cuda")`` against the torch
reference (odd shapes, fp32/fp16/bf16, mixed parameter dtypes, strided and in-place layouts), the fp16/bf16
conversions bit for bit, bad inputs, the C and C++ examples that link the library without Python, and (GPU
marker) the CUDA kernels against the reference and the Triton kernels at the etta shapes."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dit_inputs, randomize_

import etta_engine
from etta_engine import _C, ops
from etta_engine.models.dit import DiT

ROOT = Path(__file__).resolve().parent.parent
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_matches_ref(out: torch.Tensor, ref: torch.Tensor, ulps: float = 1.0, atol: float = 1e-5) -> None:
    """Both sides are fp32 maths rounded to the output dtype: in fp16/bf16 they may differ by ``ulps`` units in
    the last place (the fp32 results differ in their last bits, which can flip a rounding); in fp32 by a few
    fp32 roundings."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    o, r = out.double(), ref.double()
    assert torch.equal(o.isnan(), r.isnan())
    o, r = o.nan_to_num(), r.nan_to_num()
    rel = 2e-6 if ref.dtype == torch.float32 else ulps * torch.finfo(ref.dtype).eps
    err = (o - r).abs()
    bound = rel * r.abs() + atol
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g} (max err {err.max().item():.3g})"


def rand(*shape, dtype=torch.float32, scale=1.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


# ---------------------------------------------------------------- each op against its reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", [None, torch.float32])
@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (3, 7), (2, 215, 13), (4, 64)])
def test_gelu_tanh(dtype, param_dtype, shape):
    x = rand(*shape, dtype=dtype, scale=3.0)
    for bias in (None, rand(shape[-1], dtype=param_dtype or dtype, seed=1)):
        out = torch.empty_like(x)
        _C.gelu_tanh(x, out, bias)
        assert_matches_ref(out, ops.gelu_tanh_ref(x, bias))
        assert_matches_ref(ops.gelu_tanh(x, bias, impl="cuda"), ops.gelu_tanh_ref(x, bias))


def snake_beta_fp64(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Snake-beta in float64 from the stored inputs: x + sin(exp(alpha) x)^2 / (exp(beta) + 1e-9), per channel."""
    xd, a, b = x.double(), alpha.double().exp()[:, None], beta.double().exp()[:, None]
    return xd + torch.sin(a * xd) ** 2 / (b + 1e-9)


def assert_snake_beta_close(out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> None:
    """The kernel's fp32 arithmetic against the float64 formula. Two terms: the rounding to out's dtype (one ulp:
    the fp32 error may flip it), and the fp32 error of the sine's argument, a relative few 2^-24 of exp(alpha) x
    (so absolute, growing with |exp(alpha) x|), times d(sin^2)/d(arg) <= 1 and 1 / (exp(beta) + 1e-9)."""
    assert out.dtype == x.dtype and out.shape == x.shape
    ref = snake_beta_fp64(x, alpha, beta)
    arg = (alpha.double().exp()[:, None] * x.double()).abs()
    inv_b = 1.0 / (beta.double().exp()[:, None] + 1e-9)
    fp32 = torch.finfo(torch.float32).eps
    bound = torch.finfo(out.dtype).eps * ref.abs() + 4 * fp32 * (1 + arg) * inv_b + 1e-7
    err = (out.double() - ref).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g} (max err {err.max().item():.3g})"


def test_snake_beta_reference_is_the_vae_activation():
    """The float64 formula of these tests is the model's SnakeBeta module (run in float64)."""
    from etta_engine.models.vae import SnakeBeta

    snake = SnakeBeta(3).double()
    with torch.no_grad():
        snake.alpha.copy_(rand(3, seed=1))
        snake.beta.copy_(rand(3, seed=2))
        x = rand(2, 3, 50, scale=3.0).double()
        assert torch.allclose(snake(x), snake_beta_fp64(x, snake.alpha, snake.beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S", [1, 7, 1000])
def test_snake_beta(dtype, param_dtype, S):
    # exp(alpha) x reaches tens of radians; exp(beta) spans about 0.1 to 10.
    x = rand(2, 3, S, dtype=dtype, scale=3.0)
    alpha, beta = rand(3, dtype=param_dtype, seed=1), rand(3, dtype=param_dtype, seed=2)
    out = torch.empty_like(x)
    _C.snake_beta(x, alpha, beta, out)
    assert_snake_beta_close(out, x, alpha, beta)
    y = x.clone()
    _C.snake_beta(y, alpha, beta, y)  # in place: out is x
    assert torch.equal(y, out)


def test_snake_beta_channels_and_empty_shapes():
    """Each row takes its own channel's parameters (rows b * C + c), and empty shapes are no-ops."""
    x = rand(3, 5, 33, scale=2.0)
    alpha, beta = torch.linspace(-1.0, 1.5, 5), torch.linspace(1.0, -2.0, 5)
    out = torch.empty_like(x)
    _C.snake_beta(x, alpha, beta, out)
    assert_snake_beta_close(out, x, alpha, beta)
    for c in range(5):  # one channel alone gives the same values
        one = torch.empty(3, 1, 33)
        _C.snake_beta(x[:, c : c + 1].contiguous(), alpha[c : c + 1], beta[c : c + 1], one)
        assert torch.equal(one[:, 0], out[:, c])
    for shape in ((0, 5, 7), (2, 5, 0), (2, 0, 7)):
        e = torch.empty(shape)
        _C.snake_beta(e, torch.zeros(shape[1]), torch.zeros(shape[1]), e)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "T", "D"), [(1, 1, 1), (3, 215, 7), (2, 5, 64), (1, 3, 1030)])
def test_adaln_modulate(dtype, B, T, D):
    x = rand(B, T, D, dtype=dtype, scale=2.0) + 0.5
    modulation = rand(B, 6 * D, dtype=dtype, seed=1)  # the DiT's hoisted layout: chunks are strided views
    shift, scale = modulation[:, :D], modulation[:, 2 * D : 3 * D]
    for weight in (None, rand(D, dtype=dtype, seed=2)):
        ref = ops.adaln_modulate_ref(x, shift, scale, weight, 1e-6)
        out = torch.empty_like(x)
        _C.adaln_modulate(x, shift, scale, out, weight, 1e-6)
        assert_matches_ref(out, ref, ulps=2)  # rstd is rounded differently by each side before the last rounding
        assert_matches_ref(ops.adaln_modulate(x, shift, scale, weight, 1e-6, impl="cuda"), ref, ulps=2)


def test_adaln_modulate_large_magnitudes_mixed_params_and_in_place():
    # An offset of 1e4 with unit spread: a one-pass E[x^2] - E[x]^2 in fp32 would lose every digit. The error
    # budget rule against a float64 truth: the kernel errs at most twice as much as the fp32 reference does.
    x = rand(2, 9, 33, scale=1.0) + 1e4
    shift, scale, weight = rand(2, 33, seed=1), rand(2, 33, seed=2), rand(33, seed=3)
    xd = x.double()
    mean, var = xd.mean(-1, keepdim=True), xd.var(-1, keepdim=True, unbiased=False)
    truth = (xd - mean) / (var + 1e-6).sqrt() * weight.double() * (1 + scale.double()[:, None]) + shift.double()[
        :, None
    ]
    ref = ops.adaln_modulate_ref(x, shift, scale, weight, 1e-6)
    err_ref = (ref.double() - truth).abs().max()
    got = ops.adaln_modulate(x, shift, scale, weight, 1e-6, impl="cuda")
    assert (got.double() - truth).abs().max() <= 2 * err_ref + 1e-6
    # bf16 activations with fp32 modulation (autocast's layout), and bf16 modulation with an fp32 LN weight.
    xb = x.sub(1e4).bfloat16()
    for s, c, w in ((shift, scale, weight), (shift.bfloat16(), scale.bfloat16(), weight)):
        ref = ops.adaln_modulate_ref(xb, s, c, w, 1e-6)
        assert_matches_ref(ops.adaln_modulate(xb, s, c, w, 1e-6, impl="cuda"), ref, ulps=2)
    y = x.clone()
    _C.adaln_modulate(y, shift, scale, y, weight, 1e-6)  # out aliases x
    assert torch.equal(y, got)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "T", "D"), [(1, 1, 1), (3, 215, 7), (2, 4, 64)])
def test_gated_residual(dtype, B, T, D):
    x, y = rand(B, T, D, dtype=dtype), rand(B, T, D, dtype=dtype, seed=1)
    modulation = rand(B, 6 * D, dtype=dtype, seed=2)
    for gate in (modulation[:, 2 * D : 3 * D], modulation[:1, :D].expand(B, D)):  # strided; broadcast (stride 0)
        ref = ops.gated_residual_ref(x, gate, y)
        out = torch.empty_like(x)
        _C.gated_residual(x, gate, y, out)
        assert_matches_ref(out, ref)
        assert_matches_ref(ops.gated_residual(x, gate, y, impl="cuda"), ref)
        z = x.clone()
        _C.gated_residual(z, gate, y, z)  # in place, as the DiT's residual stream would
        assert torch.equal(z, out)
    # fp32 gates on low-precision activations (the parameter dtype is free)
    gate = rand(B, D, seed=3)
    assert_matches_ref(ops.gated_residual_ref(x, gate.to(dtype), y), ops.gated_residual(x, gate.to(dtype), y))
    out = torch.empty_like(x)
    _C.gated_residual(x, gate, y, out)
    ref = (x.double() + gate.double()[:, None] * y.double()).to(dtype)
    assert_matches_ref(out, ref)


def adaln_modulate_fp64(x, shift, scale, weight, eps):
    """AdaLN-modulate in float64 from the stored inputs (LayerNorm without bias, optional weight)."""
    xd = x.double()
    mean, var = xd.mean(-1, keepdim=True), xd.var(-1, keepdim=True, unbiased=False)
    h = (xd - mean) / (var + eps).sqrt()
    if weight is not None:
        h = h * weight.double()
    return h * (1 + scale.double()[:, None]) + shift.double()[:, None]


def residual_modulate_fp64(x, gate, y, shift, scale, weight, eps):
    """The fused op's spec in float64: r = x + gate * y on the first n = y.shape[0] batch rows (x on the others),
    x_out = r rounded to x.dtype, out = AdaLN-modulate of x_out as stored. Returns (x_out in x.dtype, out in
    float64)."""
    r = x.double().clone()
    r[: y.shape[0]] += gate.double()[:, None] * y.double()
    x_out = r.to(x.dtype)
    return x_out, adaln_modulate_fp64(x_out, shift, scale, weight, eps)


def assert_residual_modulate_close(x_out, out, x, gate, y, shift, scale, weight, eps):
    """x_out against the float64 formula rounded to its dtype: one ulp (the fp32 sum may flip the rounding) and
    the fp32 error of x + gate * y, absolute (it may cancel). out against the float64 AdaLN-modulate of the
    kernel's own x_out, i.e. of the rounded values (an ulp of x_out, after the LayerNorm, is far more than an ulp
    of out when |mean| >> std): one ulp of out plus the fp32 error of h * w * (1 + scale) + shift."""
    assert x_out.dtype == out.dtype == x.dtype and x_out.shape == out.shape == x.shape
    fp32 = torch.finfo(torch.float32).eps
    ref_x, _ = residual_modulate_fp64(x, gate, y, shift, scale, weight, eps)
    gy = torch.zeros_like(x, dtype=torch.float64)
    gy[: y.shape[0]] = (gate.double()[:, None] * y.double()).abs()
    bound = torch.finfo(x.dtype).eps * ref_x.double().abs() + 4 * fp32 * (x.double().abs() + gy) + 1e-30
    err = (x_out.double() - ref_x.double()).abs()
    assert (err <= bound).all(), f"x_out: max excess {(err - bound).max().item():.3g} (max err {err.max().item():.3g})"
    ref = adaln_modulate_fp64(x_out, shift, scale, weight, eps)
    sh = shift.double()[:, None].expand_as(ref)
    bound = torch.finfo(x.dtype).eps * ref.abs() + 8 * fp32 * ((ref - sh).abs() + sh.abs()) + 1e-7
    err = (out.double() - ref).abs()
    assert (err <= bound).all(), f"out: max excess {(err - bound).max().item():.3g} (max err {err.max().item():.3g})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("B", "n"), [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("D", [7, 48, 1000])
def test_residual_modulate(dtype, param_dtype, B, n, T, D):
    x, y = rand(B, T, D, dtype=dtype, scale=2.0) + 0.5, rand(n, T, D, dtype=dtype, seed=1)
    modulation = rand(B, 9 * D, dtype=param_dtype, seed=2)  # a hoisted (B, 9 * D) modulation: strided chunks
    shift, scale, gate = modulation[:, :D], modulation[:, 4 * D : 5 * D], modulation[:n, 2 * D : 3 * D]
    for weight in (None, rand(D, dtype=param_dtype, seed=3) + 1.0):
        x_out, out = torch.empty_like(x), torch.empty_like(x)
        _C.residual_modulate(x, gate, y, shift, scale, x_out, out, weight, 1e-6)
        assert_residual_modulate_close(x_out, out, x, gate, y, shift, scale, weight, 1e-6)
        assert torch.equal(x_out[n:], x[n:])  # rows without a residual are copied
        # The unfused sequence it replaces, bit for bit: gated_residual on the first n rows, then adaln_modulate.
        x_seq, out_seq = x.clone(), torch.empty_like(x)
        _C.gated_residual(x[:n], gate, y, x_seq[:n])
        _C.adaln_modulate(x_seq, shift, scale, out_seq, weight, 1e-6)
        assert torch.equal(x_out, x_seq) and torch.equal(out, out_seq)
        z, out_z = x.clone(), torch.empty_like(x)
        _C.residual_modulate(z, gate, y, shift, scale, z, out_z, weight, 1e-6)  # in place: x_out is x
        assert torch.equal(z, x_out) and torch.equal(out_z, out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_residual_modulate_normalises_the_rounded_residual(dtype):
    """Far from zero (|mean| >> std) an ulp of x_out is a large step after the LayerNorm: out must be the LayerNorm
    of x_out as stored (rounded), not of the fp32 sum, which is far off here."""
    B, n, T, D = 3, 2, 4, 96
    x, y = rand(B, T, D, dtype=dtype) + 200.0, rand(n, T, D, dtype=dtype, seed=1)
    gate, shift, scale = rand(n, D, seed=2) * 0.3, rand(B, D, seed=3), rand(B, D, seed=4)
    x_out, out = torch.empty_like(x), torch.empty_like(x)
    _C.residual_modulate(x, gate, y, shift, scale, x_out, out, None, 1e-6)
    assert_residual_modulate_close(x_out, out, x, gate, y, shift, scale, None, 1e-6)
    _, ref = residual_modulate_fp64(x, gate, y, shift, scale, None, 1e-6)
    assert_matches_ref(out, ref.to(dtype), ulps=2, atol=1e-4)
    unrounded = x.double().clone()
    unrounded[:n] += gate.double()[:, None] * y.double()
    wrong = adaln_modulate_fp64(unrounded, shift, scale, None, 1e-6)
    assert (wrong[:n] - ref[:n]).abs().max() > 0.1  # so the rule is what the comparisons above check


def test_residual_modulate_empty_shapes():
    for B, n, T, D in ((0, 0, 3, 8), (2, 1, 0, 8), (2, 2, 3, 0)):
        x, y = torch.empty(B, T, D), torch.empty(n, T, D)
        x_out, out = torch.empty_like(x), torch.empty_like(x)
        _C.residual_modulate(x, torch.empty(n, D), y, torch.empty(B, D), torch.empty(B, D), x_out, out)


def _rope_with_angle_sign(x: torch.Tensor, base: float, sign: float) -> torch.Tensor:
    """RoPE written out in float64 with angles of the given sign (the reference of the inverse rotation)."""
    T, Dh = x.shape[1], x.shape[-1]
    theta = sign * ops.rope_angles(T, Dh, base).double()[None, :, None, :]
    x1, x2 = x.double()[..., : Dh // 2], x.double()[..., Dh // 2 :]
    return torch.cat((x1 * theta.cos() - x2 * theta.sin(), x2 * theta.cos() + x1 * theta.sin()), -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("B", "T", "H", "Dh", "base"), [(1, 1, 1, 2, 10.0), (3, 215, 5, 6, 16384.0), (2, 9, 3, 64, 1e4)]
)
def test_rope(dtype, B, T, H, Dh, base):
    x = rand(B, H, T, Dh, dtype=dtype).transpose(1, 2)  # (B, T, H, Dh) view with head-major strides
    ref = ops.apply_rope_ref(x, base)
    out = torch.empty(B, T, H, Dh, dtype=dtype)
    _C.rope(x, out, base)
    # The angles reach T radians: an ulp of sin/cos there is ~1e-5 of |x|, so fp32 gets an absolute term.
    assert_matches_ref(out, ref, ulps=2, atol=3e-5)
    assert_matches_ref(ops.apply_rope(x, base, impl="cuda"), ref, ulps=2, atol=3e-5)
    back = torch.empty_like(out)
    _C.rope(x, back, base, inverse=True)
    assert_matches_ref(back, _rope_with_angle_sign(x, base, -1.0).to(dtype), ulps=2, atol=3e-5)
    if dtype == torch.float32:
        _C.rope(out, back, base, inverse=True)
        assert torch.allclose(back, x, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "T", "H", "Dh"), [(1, 1, 1, 2), (3, 215, 3, 16), (2, 7, 4, 8)])
def test_rope_qk_reads_a_fused_qkv_in_place(dtype, B, T, H, Dh):
    qkv = rand(B, T, 3 * H * Dh, dtype=dtype).view(B, T, 3, H, Dh)  # the shape of the DiT's qkv projection
    q, k = ops.apply_rope_qk(qkv, 16384.0, impl="cuda")
    assert_matches_ref(q, ops.apply_rope_ref(qkv[:, :, 0], 16384.0), ulps=2, atol=3e-5)
    assert_matches_ref(k, ops.apply_rope_ref(qkv[:, :, 1], 16384.0), ulps=2, atol=3e-5)
    q2, k2 = torch.empty_like(q), torch.empty_like(k)
    _C.rope_qk(qkv.transpose(0, 1).contiguous().transpose(0, 1), q2, k2, 16384.0)  # batch and seq swapped strides
    assert torch.equal(q2, q) and torch.equal(k2, k)


@pytest.mark.parametrize(("x_dtype", "v_dtype"), [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("shape", [(0,), (1, 64, 1), (2, 64, 215), (3, 5, 7)])
def test_guided_update(x_dtype, v_dtype, shape):
    x = rand(*shape, dtype=x_dtype)
    vc, vu, vp = (rand(*shape, dtype=v_dtype, seed=s) for s in (1, 2, 3))
    cases = [  # (v_uncond, v_prev, guidance, a, b): Euler without and with CFG, Heun's corrector, rescaled
        (None, None, 1.0, -0.25, 0.0),
        (vu, None, 3.5, -0.25, 0.0),
        (vu, vp, 3.5, -0.125, -0.125),
        (vu, vp, 0.0, 0.5, 2.0),
    ]
    for v_uncond, v_prev, w, a, b in cases:
        ref_x, ref_v = ops.guided_update_ref(x, vc, v_uncond, w, a, v_prev, b)
        out_x, out_v = ops.guided_update(x, vc, v_uncond, guidance=w, a=a, v_prev=v_prev, b=b, impl="cuda")
        assert_matches_ref(out_x, ref_x)
        assert_matches_ref(out_v, ref_v)
    for dtype in (torch.float16, torch.bfloat16):
        xs, vs = x.to(dtype), vc.to(dtype)
        ref = ops.guided_update_ref(xs, vs, vs * 0.5, 2.0, 0.1)
        for got, want in zip(ops.guided_update(xs, vs, vs * 0.5, guidance=2.0, a=0.1, impl="cuda"), ref, strict=True):
            assert_matches_ref(got, want)


def test_guided_update_in_place_buffers():
    """The engine's static buffers: x_out is x, v_out is v_cond (each element is read before it is written)."""
    x, vc, vu = rand(2, 64, 215), rand(2, 64, 215, seed=1), rand(2, 64, 215, seed=2)
    ref_x, ref_v = ops.guided_update_ref(x, vc, vu, 3.5, -0.01)
    _C.guided_update(x, vc, x, v_uncond=vu, v_out=vc, guidance=3.5, a=-0.01)
    assert_matches_ref(x, ref_x)
    assert_matches_ref(vc, ref_v)


def test_numpy_arrays_are_accepted_through_dlpack():
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    out = np.empty_like(x)
    _C.gelu_tanh(x, out)
    assert np.allclose(out, ops.gelu_tanh_ref(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- fp16 / bf16 storage, bit for bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_widens_and_narrows_like_torch(dtype):
    """All 65536 values of the dtype go through the runtime's fp32 widening and rounding (x + 0 * v), and
    random fp32 values, halfway cases, overflow and subnormals through its rounding (0 + g * 1), against
    torch's conversions of the same fp32 results."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    zeros = torch.zeros_like(x)
    got, _ = ops.guided_update(x, zeros, a=0.0, impl="cuda")
    want, _ = ops.guided_update_ref(x, zeros, a=0.0)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.view(torch.int16)[~want.isnan()], want.view(torch.int16)[~want.isnan()])

    finfo = torch.finfo(dtype)
    exps = torch.randint(-30 if dtype == torch.float16 else -140, 17 if dtype == torch.float16 else 127, (20000,))
    values = torch.randn(20000, generator=torch.Generator().manual_seed(0)).sign() * torch.rand(20000) * 2.0**exps
    below = x[~x.isnan() & x.isfinite()].float()
    halfway = (below[:-1] + below[1:]) / 2  # exactly between two neighbours: ties round to even
    edges = torch.tensor([finfo.max, finfo.max * (1 + finfo.eps / 2), finfo.tiny, finfo.tiny / 3, 1e-30, 0.0])
    edges = torch.cat((edges, -edges, torch.tensor([math.inf, -math.inf, math.nan])))
    g = torch.cat((values, halfway[halfway.isfinite()], edges)).float()
    gate, xs, ys = g[:, None], torch.zeros(g.numel(), 1, 1, dtype=dtype), torch.ones(g.numel(), 1, 1, dtype=dtype)
    out = torch.empty_like(xs)
    _C.gated_residual(xs, gate, ys, out)
    want = ops.gated_residual_ref(xs, gate, ys)
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out.view(torch.int16)[~want.isnan()], want.view(torch.int16)[~want.isnan()])


# ---------------------------------------------------------------- the ops layer: dispatch, compile, the DiT


def test_cuda_impl_is_inference_only_and_fake_registered():
    x = torch.randn(2, 3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="gelu_tanh: impl='cuda' runs the inference kernels"):
        ops.gelu_tanh(x, impl="cuda")
    with torch.no_grad():
        assert ops.gelu_tanh(x, impl="cuda").shape == x.shape
    with pytest.raises(NotImplementedError, match=r"impl='triton' is not available .*\['cuda', 'torch'\]"):
        ops.guided_update(x.detach(), x.detach(), impl="triton")
    samples = {
        torch.ops.etta.adaln_modulate_cuda: (rand(2, 3, 8), rand(2, 8), rand(2, 8), rand(8), 1e-6),
        torch.ops.etta.gated_residual_cuda: (rand(2, 3, 8), rand(2, 8), rand(2, 3, 8)),
        torch.ops.etta.gelu_tanh_cuda: (rand(2, 3, 8), rand(8)),
        torch.ops.etta.apply_rope_cuda: (rand(2, 3, 4, 8), 100.0),
        torch.ops.etta.apply_rope_qk_cuda: (rand(2, 3, 3, 4, 8), 100.0),
        torch.ops.etta.guided_update_cuda: (rand(2, 8), rand(2, 8), rand(2, 8), 2.0, 0.5, None, 0.0),
    }
    for op, args in samples.items():
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    # Traced code sees the custom ops (no graph break), eager code calls the kernels directly.
    step = torch.compile(
        lambda x, v: ops.guided_update(ops.gelu_tanh(x, impl="cuda"), v, a=0.5, impl="cuda")[0],
        backend="aot_eager",
        fullgraph=True,
    )
    x, v = rand(3, 8), rand(3, 8, seed=1)
    with torch.no_grad():
        assert torch.equal(step(x, v), ops.guided_update(ops.gelu_tanh(x, impl="cuda"), v, a=0.5, impl="cuda")[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dit_with_cuda_ops_matches_torch_ops(tiny_cfg, dtype):
    cfg = dataclasses.replace(tiny_cfg.dit, dropout=0.0)
    ref = randomize_(DiT(dataclasses.replace(cfg, ops="torch"))).eval().to(dtype)
    fast = DiT(dataclasses.replace(cfg, ops="cuda")).eval().to(dtype)
    fast.load_state_dict(ref.state_dict())
    x, t, ctx, mask, g = dit_inputs(cfg, B=3, T=17, L=6)
    with torch.no_grad():
        a = ref(x.to(dtype), t, ctx.to(dtype), mask, g.to(dtype)).float()
        b = fast(x.to(dtype), t, ctx.to(dtype), mask, g.to(dtype)).float()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (a - b).abs().max() <= tol * a.abs().max()


# ---------------------------------------------------------------- bad inputs get clear errors


def test_bad_inputs():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"gelu_tanh: out has shape \(6, 4\) but x has shape \(4, 6\)"):
        _C.gelu_tanh(x, torch.empty(6, 4))
    with pytest.raises(TypeError, match="gelu_tanh: out is float16 but x is float32"):
        _C.gelu_tanh(x, torch.empty(4, 6, dtype=torch.float16))
    with pytest.raises(ValueError, match="gelu_tanh: x must be contiguous"):
        _C.gelu_tanh(x.T, torch.empty(6, 4))
    with pytest.raises(ValueError, match=r"gelu_tanh: bias must have shape \(D,\) with D = x.shape\[-1\] = \(6,\)"):
        _C.gelu_tanh(x, torch.empty(4, 6), torch.zeros(4))
    with pytest.raises(TypeError, match="unsupported dtype .* allowed: float32, float16, bfloat16"):
        _C.gelu_tanh(torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must support __dlpack__"):
        _C.gelu_tanh([1.0, 2.0], torch.empty(2))

    x3, s = torch.randn(2, 3, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"adaln_modulate: x must have shape \(B, T, D\), got \(2, 24\)"):
        _C.adaln_modulate(x3.view(2, 24), s, s, x3.view(2, 24))
    with pytest.raises(ValueError, match=r"adaln_modulate: shift must have shape \(B, D\) = \(2, 8\), got \(1, 8\)"):
        _C.adaln_modulate(x3, s[:1], s, torch.empty_like(x3))
    with pytest.raises(ValueError, match="adaln_modulate: scale must have a contiguous last dimension"):
        _C.adaln_modulate(x3, s, torch.randn(8, 2).T, torch.empty_like(x3))
    with pytest.raises(TypeError, match="adaln_modulate: scale is float16 but shift is float32"):
        _C.adaln_modulate(x3, s, s.half(), torch.empty_like(x3))
    with pytest.raises(ValueError, match="adaln_modulate: eps=-1.0+ must be positive"):
        _C.adaln_modulate(x3, s, s, torch.empty_like(x3), None, -1.0)
    with pytest.raises(ValueError, match=r"gated_residual: y must have shape \(B, T, D\) = \(2, 3, 8\)"):
        _C.gated_residual(x3, s, x3[:, :2], torch.empty_like(x3))
    with pytest.raises(ValueError, match="rope: the head dim must be even, got 7"):
        _C.rope(torch.randn(1, 2, 3, 7), torch.empty(1, 2, 3, 7))
    with pytest.raises(ValueError, match="rope: base=1.0+ must be > 1"):
        _C.rope(torch.randn(1, 2, 3, 8), torch.empty(1, 2, 3, 8), 1.0)
    with pytest.raises(ValueError, match="rope: x must have a contiguous last dimension"):
        _C.rope(torch.randn(1, 2, 8, 3).transpose(-1, -2), torch.empty(1, 2, 3, 8))
    with pytest.raises(ValueError, match=r"rope_qk: qkv must have shape \(B, T, 3, H, D\), got \(1, 2, 2, 3, 8\)"):
        _C.rope_qk(torch.randn(1, 2, 2, 3, 8), torch.empty(1, 2, 3, 8), torch.empty(1, 2, 3, 8))
    v = torch.randn(2, 8)
    with pytest.raises(TypeError, match="guided_update: v_uncond is bfloat16 but v_cond is float32"):
        _C.guided_update(v, v, v, v_uncond=v.bfloat16())
    with pytest.raises(TypeError, match="guided_update: x_out is float16 but x is float32"):
        _C.guided_update(v, v, v.half())
    with pytest.raises(ValueError, match=r"guided_update: v_prev must have shape x.shape = \(2, 8\), got \(8, 2\)"):
        _C.guided_update(v, v, v, v_prev=v.T.contiguous())
    with pytest.raises(ValueError, match="a=nan must be a finite Python number"):
        ops.guided_update(v, v, a=math.nan)
    with pytest.raises(TypeError, match="v_prev must have the dtype of v_cond"):
        ops.guided_update(v, v, v_prev=v.double())


def test_snake_beta_bad_inputs():
    x, p = torch.randn(2, 3, 7), torch.zeros(3)
    with pytest.raises(ValueError, match=r"snake_beta: x must have shape \(B, C, S\), got \(6, 7\)"):
        _C.snake_beta(x.view(6, 7), p, p, torch.empty(6, 7))
    with pytest.raises(
        ValueError, match=r"snake_beta: alpha must have shape \(C,\) with C = x.shape\[1\] = \(3,\), got \(4,\)"
    ):
        _C.snake_beta(x, torch.zeros(4), p, torch.empty_like(x))
    with pytest.raises(
        ValueError, match=r"snake_beta: beta must have shape \(C,\) with C = x.shape\[1\] = \(3,\), got \(1, 3\)"
    ):
        _C.snake_beta(x, p, p[None], torch.empty_like(x))
    with pytest.raises(TypeError, match="snake_beta: beta is bfloat16 but alpha is float32; they must match"):
        _C.snake_beta(x, p, p.bfloat16(), torch.empty_like(x))
    with pytest.raises(ValueError, match="snake_beta: x must be contiguous"):
        _C.snake_beta(torch.randn(2, 7, 3).transpose(1, 2), p, p, torch.empty_like(x))
    with pytest.raises(ValueError, match="snake_beta: alpha must be contiguous"):
        _C.snake_beta(x, torch.zeros(6)[::2], p, torch.empty_like(x))
    with pytest.raises(
        ValueError, match=r"snake_beta: out must have shape \(B, C, S\) = x.shape = \(2, 3, 7\), got \(2, 3, 6\)"
    ):
        _C.snake_beta(x, p, p, torch.empty(2, 3, 6))
    with pytest.raises(TypeError, match="snake_beta: out is float16 but x is float32; they must match"):
        _C.snake_beta(x, p, p, torch.empty_like(x, dtype=torch.float16))
    with pytest.raises(TypeError, match="x has an unsupported dtype .* allowed: float32, float16, bfloat16"):
        _C.snake_beta(x.double(), p, p, torch.empty_like(x, dtype=torch.float64))
    with pytest.raises(TypeError, match="alpha has an unsupported dtype .* allowed: float32, float16, bfloat16"):
        _C.snake_beta(x, p.double(), p.double(), torch.empty_like(x))


def test_residual_modulate_bad_inputs():
    B, n, T, D = 4, 2, 3, 8
    x, y, m = torch.randn(B, T, D), torch.randn(n, T, D), torch.randn(B, 9 * D)
    gate, shift, scale = m[:n, 2 * D : 3 * D], m[:, :D], m[:, D : 2 * D]
    x_out, out = torch.empty_like(x), torch.empty_like(x)
    with pytest.raises(
        ValueError,
        match=r"residual_modulate: y must have shape \(n, T, D\) with 1 <= n <= B = 4 and \(T, D\) = x.shape\[1:\] = "
        r"\(3, 8\), got \(5, 3, 8\)",
    ):
        _C.residual_modulate(x, gate, torch.randn(B + 1, T, D), shift, scale, x_out, out)
    with pytest.raises(ValueError, match=r"residual_modulate: y must have shape \(n, T, D\) .* got \(2, 2, 8\)"):
        _C.residual_modulate(x, gate, y[:, :2], shift, scale, x_out, out)
    with pytest.raises(ValueError, match=r"residual_modulate: y must have shape \(n, T, D\) .* got \(0, 3, 8\)"):
        _C.residual_modulate(x, gate[:0], y[:0], shift, scale, x_out, out)
    with pytest.raises(TypeError, match="residual_modulate: y is float16 but x is float32; they must match"):
        _C.residual_modulate(x, gate, y.half(), shift, scale, x_out, out)
    with pytest.raises(ValueError, match="residual_modulate: x must be contiguous"):
        _C.residual_modulate(torch.randn(B, D, T).transpose(1, 2), gate, y, shift, scale, x_out, out)
    with pytest.raises(ValueError, match="residual_modulate: y must be contiguous"):
        _C.residual_modulate(x, gate, torch.randn(n, D, T).transpose(1, 2), shift, scale, x_out, out)
    with pytest.raises(ValueError, match="residual_modulate: eps=0.0+ must be positive"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, out, None, 0.0)
    with pytest.raises(ValueError, match="residual_modulate: eps=-1.0+ must be positive"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, out, eps=-1.0)
    with pytest.raises(ValueError, match=r"residual_modulate: x must have shape \(B, T, D\), got \(4, 24\)"):
        _C.residual_modulate(x.view(B, T * D), gate, y, shift, scale, x_out, out)
    with pytest.raises(
        ValueError, match=r"residual_modulate: gate must have shape \(n, D\) with n = y.shape\[0\] = \(2, 8\), got"
    ):
        _C.residual_modulate(x, m[:, 2 * D : 3 * D], y, shift, scale, x_out, out)
    with pytest.raises(ValueError, match=r"residual_modulate: scale must have shape \(B, D\) = \(4, 8\), got \(2, 8\)"):
        _C.residual_modulate(x, gate, y, shift, scale[:n], x_out, out)
    with pytest.raises(ValueError, match="residual_modulate: gate must have a contiguous last dimension"):
        _C.residual_modulate(x, torch.randn(D, n).T, y, shift, scale, x_out, out)
    with pytest.raises(TypeError, match="residual_modulate: shift is bfloat16 but gate is float32; they must match"):
        _C.residual_modulate(x, gate, y, shift.bfloat16(), scale, x_out, out)
    with pytest.raises(TypeError, match="residual_modulate: weight is float16 but gate is float32; they must match"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, out, torch.ones(D, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"residual_modulate: weight must have shape \(D,\) = \(8,\), got \(7,\)"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, out, torch.ones(D - 1))
    with pytest.raises(
        ValueError, match=r"residual_modulate: out must have shape \(B, T, D\) = x.shape = \(4, 3, 8\), got"
    ):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, torch.empty(B, T, D + 1))
    with pytest.raises(TypeError, match="residual_modulate: x_out is bfloat16 but x is float32; they must match"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out.bfloat16(), out)
    with pytest.raises(ValueError, match="residual_modulate: out must not overlap x or x_out"):
        _C.residual_modulate(x, gate, y, shift, scale, x_out, x)
    with pytest.raises(ValueError, match="residual_modulate: out must not overlap x or x_out"):
        _C.residual_modulate(x, gate, y, shift, scale, x, x)
    buf = torch.empty(2 * x.numel())
    with pytest.raises(ValueError, match="residual_modulate: x_out must be x itself or not overlap it"):
        _C.residual_modulate(buf[: x.numel()].view_as(x), gate, y, shift, scale, buf[1 : x.numel() + 1].view_as(x), out)
    with pytest.raises(TypeError, match="x has an unsupported dtype .* allowed: float32, float16, bfloat16"):
        _C.residual_modulate(x.double(), gate, y.double(), shift, scale, x_out.double(), out.double())


# ---------------------------------------------------------------- the library, the build, and embedding


def test_runtime_version_and_cuda_build():
    assert _C.version() == etta_engine.__version__
    if shutil.which("nvcc"):
        # With a CUDA compiler on the machine the CUDA sources must have been compiled (so a CUDA
        # syntax error fails the build, GPU or not).
        assert _C.cuda_compiled()


def test_runtime_sources_include_no_python_or_torch_headers():
    """The header and the kernels link into programs without Python or libtorch (only bindings.cpp binds)."""
    sources = [ROOT / "csrc/include/etta/etta.h", *(ROOT / "csrc").glob("c*/*.*")]
    assert len(sources) >= 8
    for path in sources:
        includes = re.findall(r'#include\s*[<"]([^>"]+)', path.read_text())
        bad = [i for i in includes if re.match(r"(Python|pybind11|torch|ATen|c10)", i)]
        assert not bad, f"{path.relative_to(ROOT)} includes {bad}"


@pytest.mark.slow
def test_examples_link_the_library_without_python(tmp_path):
    build = tmp_path / "build"
    cmake = ["cmake", "-S", str(ROOT), "-B", str(build)]
    cmake += ["-DETTA_BUILD_PYTHON=OFF", "-DETTA_BUILD_EXAMPLES=ON", "-DETTA_BUILD_SHARED=ON", "-DETTA_WITH_CUDA=OFF"]
    subprocess.run(cmake, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True)
    assert any(build.glob("libetta_runtime.so*")), "the shared library target was not built"

    out = subprocess.run([str(build / "etta_example")], check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("gelu_tanh(")]
    assert len(lines) == 4
    for line in lines:
        x = float(line[len("gelu_tanh(") : line.index(")")])
        assert float(line.split("=")[1]) == pytest.approx(ops.gelu_tanh_ref(torch.tensor(x)).item(), abs=1e-6)

    out = subprocess.run([str(build / "etta_adaln_example")], check=True, capture_output=True, text=True).stdout
    values: dict[str, list[float]] = {}
    for line in out.splitlines():
        if re.match(r"(adaln|adaln_bf16|update) \d+ ", line):
            key, _, value = line.split()
            values.setdefault(key, []).append(float(value))
    # The example's inputs, rebuilt here: x = sin(i); shift = 0.1 (b + 1) c; scale = 0.05 c - 0.1 b; w = 1 + 0.1 c.
    i = torch.arange(30, dtype=torch.float32)
    x = torch.sin(i).view(2, 3, 5)
    b, c = torch.arange(2.0)[:, None], torch.arange(5.0)[None, :]
    shift, scale, weight = 0.1 * (b + 1) * c, 0.05 * c - 0.1 * b, 1 + 0.1 * torch.arange(5.0)
    ref = ops.adaln_modulate_ref(x, shift, scale, weight, 1e-6).flatten()
    assert torch.allclose(torch.tensor(values["adaln"]), ref, rtol=1e-5, atol=1e-5)
    ref_bf16 = ops.adaln_modulate_ref(x.bfloat16(), shift, scale, weight, 1e-6).flatten()
    assert torch.equal(torch.tensor(values["adaln_bf16"]).bfloat16(), ref_bf16)
    ref_x, _ = ops.guided_update_ref(x.flatten(), torch.cos(i), 0.5 * torch.cos(i), 3.5, -0.25)
    assert torch.allclose(torch.tensor(values["update"]), ref_x, rtol=1e-6, atol=1e-6)
    assert "bad call: invalid argument" in out


# ---------------------------------------------------------------- GPU: the CUDA kernels at the etta shapes

B2, T215, W, FF, H, DH = 2, 215, 1536, 6144, 24, 64


def _cuda_rand(*shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", generator=g).to(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_reference_and_triton_at_etta_shapes(dtype):
    x, y, hidden = _cuda_rand(B2, T215, W, dtype=dtype), _cuda_rand(B2, T215, W, dtype=dtype, seed=1), None
    hidden = _cuda_rand(B2, T215, FF, dtype=dtype, seed=2)
    modulation = _cuda_rand(B2, 6 * W, dtype=dtype, seed=3)
    shift, scale, gate = modulation[:, :W], modulation[:, W : 2 * W], modulation[:, 2 * W : 3 * W]
    weight, bias = _cuda_rand(W, dtype=dtype, seed=4), _cuda_rand(FF, dtype=dtype, seed=5)
    qkv = _cuda_rand(B2, T215, 3 * W, dtype=dtype, seed=6).view(B2, T215, 3, H, DH)
    latents = _cuda_rand(B2, 64, T215, dtype=torch.float32, seed=7)
    v2 = _cuda_rand(2 * B2, 64, T215, dtype=dtype, seed=8)
    with torch.no_grad():
        cases = {
            "adaln": (lambda i: ops.adaln_modulate(x, shift, scale, weight, 1e-6, impl=i), 2),
            "residual": (lambda i: ops.gated_residual(x, gate, y, impl=i), 1),
            "gelu": (lambda i: ops.gelu_tanh(hidden, bias, impl=i), 1),
            "rope_qk": (lambda i: torch.cat(ops.apply_rope_qk(qkv, 16384.0, impl=i)), 2),
        }
        for name, (run, ulps) in cases.items():
            cuda, ref = run("cuda"), run("torch")
            assert_matches_ref(cuda, ref, ulps=ulps, atol=3e-5), name
            assert_matches_ref(cuda, run("triton"), ulps=ulps + 1, atol=3e-5), name
        got = ops.guided_update(latents, v2[:B2], v2[B2:], guidance=3.5, a=-0.01, impl="cuda")
        for g, r in zip(got, ops.guided_update_ref(latents, v2[:B2], v2[B2:], 3.5, -0.01), strict=True):
            assert_matches_ref(g, r)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_snake_beta_vector_and_scalar_paths(dtype):
    """The CUDA kernel against the float64 formula: the vector path (aligned, S a multiple of the vector width),
    the scalar path (odd S; a view offset by one element), in place, and more rows than a grid's y dimension."""
    alpha, beta = _cuda_rand(64, dtype=torch.bfloat16, seed=1), _cuda_rand(64, dtype=torch.bfloat16, seed=2)
    for shape in ((2, 64, 4096), (2, 64, 1001), (1, 64, 1)):
        x = _cuda_rand(*shape, dtype=dtype) * 3
        out = torch.empty_like(x)
        _C.snake_beta(x, alpha, beta, out, torch.cuda.current_stream().cuda_stream)
        assert_snake_beta_close(out.cpu(), x.cpu(), alpha.cpu(), beta.cpu())
        y = x.clone()
        _C.snake_beta(y, alpha, beta, y, torch.cuda.current_stream().cuda_stream)
        assert torch.equal(y, out)
    x = _cuda_rand(2, 64, 4096, dtype=dtype) * 3
    base = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
    offset = base[1:].view_as(x)  # misaligned by one element: the scalar path
    offset.copy_(x)
    out_a, out_b = torch.empty_like(x), torch.empty_like(x)
    _C.snake_beta(x, alpha, beta, out_a, torch.cuda.current_stream().cuda_stream)
    _C.snake_beta(offset, alpha, beta, out_b, torch.cuda.current_stream().cuda_stream)
    assert torch.equal(out_a, out_b)
    many = _cuda_rand(1, 70000, 3, dtype=dtype)  # 70000 rows > 65535 blocks along grid y
    a, b = _cuda_rand(70000, dtype=torch.float32, seed=3), _cuda_rand(70000, dtype=torch.float32, seed=4)
    out = torch.empty_like(many)
    _C.snake_beta(many, a, b, out, torch.cuda.current_stream().cuda_stream)
    assert_snake_beta_close(out.cpu(), many.cpu(), a.cpu(), b.cpu())


@pytest.mark.gpu
def test_cuda_kernels_scalar_path_side_stream_and_graph_capture():
    # Misaligned views (offset by one element) take the scalar path and must give the same numbers.
    base = _cuda_rand(B2 * T215 * W + 1, dtype=torch.bfloat16)
    x_aligned = base[:-1].view(B2, T215, W).clone()
    x_offset = base[1:].view(B2, T215, W)
    x_offset.copy_(x_aligned)
    s = _cuda_rand(B2, W, dtype=torch.bfloat16, seed=1)
    out_a, out_b = torch.empty_like(x_aligned), torch.empty_like(x_aligned)
    _C.adaln_modulate(x_aligned, s, s, out_a, None, 1e-6, torch.cuda.current_stream().cuda_stream)
    _C.adaln_modulate(x_offset, s, s, out_b, None, 1e-6, torch.cuda.current_stream().cuda_stream)
    assert torch.equal(out_a, out_b)
    # On a side stream, ordered by the stream alone.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        out_side = ops.adaln_modulate(x_aligned, s, s, impl="cuda")
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out_side, out_a)
    # Captured in a CUDA graph and replayed on new inputs.
    static_x = x_aligned.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        ops.gelu_tanh(static_x, impl="cuda")  # warm-up outside the capture
        with torch.cuda.graph(graph):
            static_out = ops.gelu_tanh(static_x, impl="cuda")
    static_x.copy_(x_offset * 2)
    graph.replay()
    assert torch.equal(static_out, ops.gelu_tanh(x_offset * 2, impl="cuda"))


def _misaligned_copy(x: torch.Tensor) -> torch.Tensor:
    """A copy of x one element into a buffer: not 16-byte aligned, so the kernels take the scalar path."""
    return torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:].view_as(x).copy_(x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_cuda_residual_modulate_matches_cpu_twin(dtype, param_dtype):
    """The CUDA kernel against its C++ twin on the same inputs: the etta width with a long sequence and n < B, odd
    widths (the scalar path), rows wider than the kernel's register cache (the rest re-read from x_out, also in
    place), more rows than 65535, and a view misaligned by one element (the scalar path)."""
    stream = torch.cuda.current_stream().cuda_stream
    cases = [(2, 2, T215, W), (4, 2, 4096, W), (4, 1, 5, 7), (3, 2, 9, 1000), (2, 1, 3, 4096), (2, 2, 3, 40000)]
    cases += [(2, 1, 3, 9001), (1, 1, 70000, 48)]
    for i, (B, n, T, D) in enumerate(cases):
        modulation = _cuda_rand(B, 9 * D, dtype=param_dtype, seed=i)
        shift, scale, gate = modulation[:, :D], modulation[:, 4 * D : 5 * D], modulation[:n, 2 * D : 3 * D]
        weight = _cuda_rand(D, dtype=param_dtype, seed=i + 1) + 1.0
        x = _cuda_rand(B, T, D, dtype=dtype, seed=i + 2) * 2 + 0.5
        y = _cuda_rand(n, T, D, dtype=dtype, seed=i + 3)
        g, sh, sc, w = (p.cpu() for p in (gate, shift, scale, weight))
        cpu_x_out, cpu_out = torch.empty(B, T, D, dtype=dtype), torch.empty(B, T, D, dtype=dtype)
        _C.residual_modulate(x.cpu(), g, y.cpu(), sh, sc, cpu_x_out, cpu_out, w, 1e-6)
        for misaligned in (False, True):
            xs = _misaligned_copy(x) if misaligned else x
            x_out, out = torch.empty_like(x), torch.empty_like(x)
            _C.residual_modulate(xs, gate, y, shift, scale, x_out, out, weight, 1e-6, stream)
            assert_matches_ref(x_out.cpu(), cpu_x_out)  # a fused multiply-add may flip a rounding
            # out is the AdaLN-modulate of the kernel's own x_out (fp32 statistics against the twin's fp64).
            ref = torch.empty_like(cpu_out)
            _C.adaln_modulate(x_out.cpu(), sh, sc, ref, w, 1e-6)
            assert_matches_ref(out.cpu(), ref, ulps=2, atol=3e-5)
            z, out_z = _misaligned_copy(x) if misaligned else x.clone(), torch.empty_like(x)
            _C.residual_modulate(z, gate, y, shift, scale, z, out_z, weight, 1e-6, stream)  # in place
            assert torch.equal(z, x_out) and torch.equal(out_z, out), (B, n, T, D, misaligned)
