"""Snake-beta, the activation of the Oobleck VAE: ``x + sin(exp(alpha) x)^2 / (exp(beta) + 1e-9)`` per channel."""

from __future__ import annotations

import torch

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch, promote
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable


def snake_beta_ref(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Reference Snake-beta, the specification of every implementation.

    x (B, C, S); alpha, beta (C,): log-scale per-channel frequency and magnitude.
    ``out = x + sin(exp(alpha) x)^2 / (exp(beta) + 1e-9)``; fp32 arithmetic (fp64 for fp64 x), returned in
    ``x.dtype``.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    with fp32_region(x.device):
        a = alpha.to(dtype).exp()[None, :, None]
        k = 1.0 / (beta.to(dtype).exp()[None, :, None] + 1e-9)
        xf = x.to(dtype)
        out = xf + k * torch.sin(a * xf).pow(2)
    return out.to(x.dtype)


register("snake_beta", "torch", snake_beta_ref)


# ------------------------------------------------------------------ Triton (kernels/snake.py)


@torch.library.custom_op("etta::snake_beta_triton", mutates_args=())
def _snake_beta_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    from etta_engine.kernels.snake import snake_beta_forward

    return snake_beta_forward(x, alpha, beta)


@_snake_beta_triton.register_fake
def _(x, alpha, beta):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("etta::snake_beta_triton_backward", mutates_args=())
def _snake_beta_triton_backward(
    dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from etta_engine.kernels.snake import snake_beta_backward

    return snake_beta_backward(dy, x, alpha, beta)


@_snake_beta_triton_backward.register_fake
def _(dy, x, alpha, beta):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(alpha), torch.empty_like(beta)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    return _snake_beta_triton_backward(dy, *ctx.saved_tensors)


_snake_beta_triton.register_autograd(_backward, setup_context=_setup_context)
register("snake_beta", "triton", _snake_beta_triton, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)


def _snake_beta_cuda(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    alpha, beta = (p.contiguous() for p in promote(alpha, beta))
    out = torch.empty_like(x)
    launch(x, "snake_beta", x, alpha, beta, out)
    return out


_snake_beta_cuda_op = torch.library.custom_op("etta::snake_beta_cuda", _snake_beta_cuda, mutates_args=())


@_snake_beta_cuda_op.register_fake
def _(x, alpha, beta):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _snake_beta_csrc(x, alpha, beta):
    x, alpha, beta = inference_inputs("snake_beta", x, alpha, beta)
    return call(_snake_beta_cuda, _snake_beta_cuda_op, x, alpha, beta)


register("snake_beta", "cuda", _snake_beta_csrc, csrc_unusable)


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """Snake-beta (see :func:`snake_beta_ref`) with the chosen implementation. x (B, C, S); alpha, beta (C,)."""
    check_tensor("x", x, 3)
    C = x.shape[1]
    for name, p in (("alpha", alpha), ("beta", beta)):
        check_tensor(name, p, 1)
        if p.shape[0] != C:
            raise ValueError(f"{name} must have shape ({C},) for x of shape {tuple(x.shape)}, got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    return select("snake_beta", impl, x.device)(x, alpha, beta)
