"""Rotary position embedding (RoPE), rotate-half layout, positions 0..T-1."""

from __future__ import annotations

import torch

from etta_engine._validation import check_tensor
from etta_engine.ops._csrc import call, csrc_unusable, inference_inputs, launch, rows_contiguous
from etta_engine.ops._dispatch import fp32_region, register, select, triton_unusable


def rope_angles(seq_len: int, head_dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """Angles ``theta[t, i] = t * base^(-2i / head_dim)`` in fp32, shape (seq_len, head_dim // 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    return positions[:, None] * inv_freq[None, :]


def apply_rope_ref(x: torch.Tensor, base: float = 16384.0) -> torch.Tensor:
    """Reference RoPE, the specification of every implementation.

    x: (B, T, H, Dh) with Dh even; position of token t is t. With ``x = [x1, x2]`` split in halves
    of the last dim and ``theta`` from :func:`rope_angles`:
    ``out = [x1 * cos(theta) - x2 * sin(theta), x2 * cos(theta) + x1 * sin(theta)]``.
    Angles and arithmetic in fp32; returned in ``x.dtype``.
    """
    T, Dh = x.shape[1], x.shape[-1]
    with fp32_region(x.device):
        theta = rope_angles(T, Dh, base, x.device)[None, :, None, :]  # (1, T, 1, Dh/2)
        cos, sin = theta.cos(), theta.sin()
        xf = x.float()
        x1, x2 = xf[..., : Dh // 2], xf[..., Dh // 2 :]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, T, H, Dh)
    return out.to(x.dtype)


def _apply_rope_qk_ref(qkv: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q = qkv[:, :, 0] and k = qkv[:, :, 1] for qkv (B, T, 3, H, Dh): two :func:`apply_rope_ref` calls."""
    return apply_rope_ref(qkv[:, :, 0], base), apply_rope_ref(qkv[:, :, 1], base)


register("apply_rope", "torch", apply_rope_ref)
register("apply_rope_qk", "torch", _apply_rope_qk_ref)


# ------------------------------------------------------------------ Triton (kernels/rope.py)
# The rotation R is orthogonal and R(theta)^T = R(-theta): the backward of each op is the same kernel with the
# angle negated, and the backward of that is the forward again (so double backward works too).


@torch.library.custom_op("etta::apply_rope_triton", mutates_args=())
def _apply_rope_triton(x: torch.Tensor, base: float) -> torch.Tensor:
    from etta_engine.kernels.rope import rope

    return rope(x, base, sign=1)


@torch.library.custom_op("etta::apply_rope_triton_inverse", mutates_args=())
def _apply_rope_triton_inverse(x: torch.Tensor, base: float) -> torch.Tensor:
    from etta_engine.kernels.rope import rope

    return rope(x, base, sign=-1)


@_apply_rope_triton.register_fake
def _(x, base):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_apply_rope_triton_inverse.register_fake
def _(x, base):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save_base(ctx, inputs, output) -> None:
    ctx.base = inputs[1]


_apply_rope_triton.register_autograd(
    lambda ctx, dy: (_apply_rope_triton_inverse(dy, ctx.base), None), setup_context=_save_base
)
_apply_rope_triton_inverse.register_autograd(
    lambda ctx, dy: (_apply_rope_triton(dy, ctx.base), None), setup_context=_save_base
)
register("apply_rope", "triton", _apply_rope_triton, triton_unusable)


@torch.library.custom_op("etta::apply_rope_qk_triton", mutates_args=())
def _apply_rope_qk_triton(qkv: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    from etta_engine.kernels.rope import rope_qk

    return rope_qk(qkv, base)


@_apply_rope_qk_triton.register_fake
def _(qkv, base):
    B, T, _, H, Dh = qkv.shape
    return qkv.new_empty((B, T, H, Dh)), qkv.new_empty((B, T, H, Dh))


@torch.library.custom_op("etta::apply_rope_qk_triton_backward", mutates_args=())
def _apply_rope_qk_triton_backward(dq: torch.Tensor, dk: torch.Tensor, base: float) -> torch.Tensor:
    """dL/dqkv (B, T, 3, H, Dh): the inverse rotation of dq and dk (B, T, H, Dh), zero for v."""
    from etta_engine.kernels.rope import rope_qk_backward

    return rope_qk_backward(dq, dk, base)


@_apply_rope_qk_triton_backward.register_fake
def _(dq, dk, base):
    B, T, H, Dh = dq.shape
    return dq.new_empty((B, T, 3, H, Dh))


def _save_qk_context(ctx, inputs, output) -> None:
    ctx.base = inputs[-1]


def _qk_backward(ctx, dq, dk):
    return _apply_rope_qk_triton_backward(dq, dk, ctx.base), None


def _qk_backward_backward(ctx, dqkv):
    ddq, ddk = _apply_rope_qk_triton(dqkv, ctx.base)  # the backward is linear: its adjoint is the forward
    return ddq, ddk, None


_apply_rope_qk_triton.register_autograd(_qk_backward, setup_context=_save_qk_context)
_apply_rope_qk_triton_backward.register_autograd(_qk_backward_backward, setup_context=_save_qk_context)
register("apply_rope_qk", "triton", _apply_rope_qk_triton, triton_unusable)


# ------------------------------------------------------------------ CUDA C++ runtime (csrc/, inference only)
# The kernels read strided inputs in place (only the head dim must be contiguous) and write dense outputs.


def _apply_rope_cuda(x: torch.Tensor, base: float) -> torch.Tensor:
    x = rows_contiguous(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    launch(x, "rope", x, out, base, False)
    return out


_apply_rope_cuda_op = torch.library.custom_op("etta::apply_rope_cuda", _apply_rope_cuda, mutates_args=())


@_apply_rope_cuda_op.register_fake
def _(x, base):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _apply_rope_qk_cuda(qkv: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    qkv = rows_contiguous(qkv)
    B, T, _, H, Dh = qkv.shape
    q, k = (qkv.new_empty((B, T, H, Dh)) for _ in range(2))
    launch(qkv, "rope_qk", qkv, q, k, base, False)
    return q, k


_apply_rope_qk_cuda_op = torch.library.custom_op("etta::apply_rope_qk_cuda", _apply_rope_qk_cuda, mutates_args=())


@_apply_rope_qk_cuda_op.register_fake
def _(qkv, base):
    B, T, _, H, Dh = qkv.shape
    return qkv.new_empty((B, T, H, Dh)), qkv.new_empty((B, T, H, Dh))


def _apply_rope_csrc(x, base):
    (x,) = inference_inputs("apply_rope", x)
    return call(_apply_rope_cuda, _apply_rope_cuda_op, x, base)


def _apply_rope_qk_csrc(qkv, base):
    (qkv,) = inference_inputs("apply_rope_qk", qkv)
    return call(_apply_rope_qk_cuda, _apply_rope_qk_cuda_op, qkv, base)


register("apply_rope", "cuda", _apply_rope_csrc, csrc_unusable)
register("apply_rope_qk", "cuda", _apply_rope_qk_csrc, csrc_unusable)


def _check_base(base: float) -> None:
    if not base > 1.0:
        raise ValueError(f"base={base} must be > 1")


def apply_rope(x: torch.Tensor, base: float = 16384.0, *, impl: str = "auto") -> torch.Tensor:
    """RoPE (see :func:`apply_rope_ref`) with the chosen implementation."""
    check_tensor("x", x, 4)
    if x.shape[-1] % 2:
        raise ValueError(f"apply_rope needs an even head dim, got x of shape {tuple(x.shape)}")
    _check_base(base)
    return select("apply_rope", impl, x.device)(x, base)


def apply_rope_qk(qkv: torch.Tensor, base: float = 16384.0, *, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q and k of a fused QKV projection, as ``apply_rope(qkv[:, :, 0]), apply_rope(qkv[:, :, 1])``.

    qkv: (B, T, 3, H, Dh) with Dh even, any strides (the Triton path reads the views in place and rotates q and k
    in one launch). Returns (q, k), each (B, T, H, Dh) in ``qkv.dtype``; gradients flow back into the q and k
    slices of qkv (zero into v).
    """
    check_tensor("qkv", qkv, 5)
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv must have shape (B, T, 3, H, Dh), got {tuple(qkv.shape)}")
    if qkv.shape[-1] % 2:
        raise ValueError(f"apply_rope_qk needs an even head dim, got qkv of shape {tuple(qkv.shape)}")
    _check_base(base)
    return select("apply_rope_qk", impl, qkv.device)(qkv, base)
