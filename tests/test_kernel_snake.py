"""Snake-beta (kernels/snake.py, csrc/) against its reference: forward and gradients (input and both parameters),
odd lengths, fp32 and bf16, under the Triton interpreter on the CPU (and compiled on a GPU); the VAE decoder with
each implementation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import err_budget_ok, kernel_device, rel_err

import etta_engine as E
from etta_engine import ops

SHAPES = [(1, 1, 1), (2, 3, 7), (2, 5, 1000), (1, 4, 2500)]


def _inputs(shape, dtype, dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 2).to(dev, dtype)
    alpha = (torch.randn(C, generator=g) * 0.5).to(dev, dtype)
    beta = (torch.randn(C, generator=g) * 0.5).to(dev, dtype)
    dy = torch.randn(shape, generator=g).to(dev, dtype)
    return x, alpha, beta, dy


def _naive(x, alpha, beta):
    """The activation as the VAE wrote it before the op: every step in the storage dtype."""
    a, b = alpha.exp()[None, :, None], beta.exp()[None, :, None]
    return x + (1.0 / (b + 1e-9)) * torch.sin(a * x).pow(2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_and_gradients_match_the_reference(shape, dtype):
    pytest.importorskip("triton")
    dev = kernel_device()
    x, alpha, beta, dy = _inputs(shape, dtype, dev)
    leaves = [t.clone().requires_grad_() for t in (x, alpha, beta)]
    y = ops.snake_beta(*leaves, impl="triton")
    assert y.dtype == dtype and y.shape == x.shape
    grads = torch.autograd.grad(y, leaves, dy)

    ref_leaves = [t.detach().float().requires_grad_() for t in (x, alpha, beta)]
    yr = ops.snake_beta_ref(*ref_leaves)
    ref_grads = torch.autograd.grad(yr, ref_leaves, dy.float())
    naive_leaves = [t.clone().requires_grad_() for t in (x, alpha, beta)]
    yn = _naive(*naive_leaves)
    naive_grads = torch.autograd.grad(yn, naive_leaves, dy)
    if dtype == torch.float32:
        assert rel_err(y, yr) < 1e-6
        for got, ref in zip(grads, ref_grads, strict=True):
            assert rel_err(got, ref) < 1e-5
    else:
        assert err_budget_ok(y, yn, yr)
        assert err_budget_ok(grads[0], naive_grads[0], ref_grads[0], tiny=1e-3)
        for got, ref in zip(grads[1:], ref_grads[1:], strict=True):  # sums accumulated in fp32, rounded once
            assert rel_err(got, ref) < 2e-2


def test_reference_is_the_vaes_formula_in_fp32():
    x, alpha, beta, _ = _inputs((2, 3, 50), torch.float32, "cpu")
    assert torch.equal(ops.snake_beta_ref(x, alpha, beta), _naive(x, alpha, beta))
    # bf16 storage: the reference computes in fp32 and rounds once, closer to fp32 than the all-bf16 formula
    xb, ab, bb = (t.bfloat16() for t in (x, alpha, beta))
    exact = ops.snake_beta_ref(xb.float(), ab.float(), bb.float())
    assert rel_err(ops.snake_beta_ref(xb, ab, bb), exact) < rel_err(_naive(xb, ab, bb), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_csrc_kernel_matches_the_reference(dtype):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for shape in SHAPES:
        x, alpha, beta, _ = _inputs(shape, dtype, dev, seed=1)
        got = ops.snake_beta(x, alpha, beta.float(), impl="cuda")  # parameters in another dtype than x
        ref = ops.snake_beta_ref(x, alpha, beta.float())
        assert got.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert rel_err(got, ref) < tol
    with pytest.raises(RuntimeError, match="no backward"):
        ops.snake_beta(x.requires_grad_(), alpha, beta, impl="cuda")


def test_bad_inputs_are_named():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"x must have 3 dimensions, got shape \(3, 5\)"):
        ops.snake_beta(x[0], torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"alpha must have shape \(3,\) for x of shape \(2, 3, 5\), got \(4,\)"):
        ops.snake_beta(x, torch.zeros(4), torch.zeros(3))
    with pytest.raises(TypeError, match="beta must be a floating-point tensor"):
        ops.snake_beta(x, torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="impl='fast' is not one of"):
        ops.snake_beta(x, torch.zeros(3), torch.zeros(3), impl="fast")


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_vae_decoder_with_each_implementation(impl):
    """The tiny VAE's decoder with the kernels equals it with the torch ops (the config's ``ops``)."""
    if impl == "triton":
        pytest.importorskip("triton")
    dev = kernel_device() if impl == "triton" else torch.device("cpu")
    cfg = E.PRESETS["tiny"].vae
    torch.manual_seed(0)
    vae = E.VAE(cfg).eval().to(dev)
    with torch.no_grad():
        for p in vae.parameters():  # non-trivial snake parameters
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(1, cfg.latent_dim, 5, device=dev)
    with torch.no_grad():
        ref = vae.decode(z)
        fast = E.VAE(dataclasses.replace(cfg, ops=impl)).eval().to(dev)
        fast.load_state_dict(vae.state_dict())
        got = fast.decode(z)
    assert rel_err(got, ref) < 1e-5
