"""Attention forward in the flash-attention style: one program per (query block, batch * head).

Layout and semantics as ``etta_engine.ops.attention_ref``: q (B, Tq, H, D), k and v (B, Tk, Hkv, D) given as
strided views (unit last stride: q/k/v come straight out of fused projections such as ``qkv[:, :, 0]`` of a
(B, T, 3, H, D) tensor), head ``h`` reads kv head ``h // (H / Hkv)`` (grouped-query attention), an optional
(B, Tk) bool key mask, output (B, Tq, H, D) contiguous in q's dtype.

Per program, with ``s = scale * log2(e) * q . k`` (fp32) over key blocks ``j``, the online softmax keeps a
running max ``m``, a running sum ``l`` and an accumulator ``acc``:
``m' = max(m, max_j s)``, ``p = exp2(s - m')``, ``l = l * exp2(m - m') + sum_j p``,
``acc = acc * exp2(m - m') + p @ v``; the output is ``acc / l``. Masked keys get ``s = -inf``; while every key
seen so far is masked ``m' = -inf`` and the code subtracts 0 instead, so ``p = 0`` and nothing is NaN; a query
with no valid key ends with ``l = 0`` and writes zeros.

Options (all ``tl.constexpr``, so the unused paths compile away):
- ROPE: rotary position embedding on q and k inside the kernel (rotate-half, positions = row indices,
  ``theta[t, i] = t * inv_freq[i]`` in fp32 with ``inv_freq`` computed as ``etta_engine.ops.rope_angles``
  does). The two halves of the head dim are loaded separately and rotated in registers,
  ``[x1 cos - x2 sin, x2 cos + x1 sin]``, and the score is the sum of the two half dot products; no rotated
  copy of q or k is written.
- HAS_MASK: the key mask, loaded per key block. The key loop of batch row b also stops after the last valid
  key of that row (``kv_len[b]``, computed by the launcher), so the padding of a 514-token text memory with a
  short prompt costs nothing.
- HAS_SKIP: per-batch skip flags. A skipped batch row runs zero key blocks and so writes zeros without
  reading k or v (the uncond half of a CFG batch in cross-attention, whose K and V are zero anyway).
- UPCAST: dot operands in fp32. The Triton interpreter computes ``tl.dot`` on bf16 operands wrongly, so the
  launcher sets it when interpreting; compiled kernels feed bf16/fp16 operands to the tensor cores.

Dropout is not implemented here; ``etta_engine.ops.attention`` sends ``dropout_p > 0`` to the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from etta_engine.kernels.support import interpreting

LOG2E = 1.4426950408889634
BLOCK_N = 64  # keys per inner step
NUM_WARPS = 4


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _rope_halves(x1, x2, pos, inv_freq):
    """Rotate-half RoPE of the two fp32 halves (rows at positions ``pos``); returns both rotated halves."""
    theta = pos.to(tl.float32)[:, None] * inv_freq[None, :]
    cos, sin = tl.cos(theta), tl.sin(theta)
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def _attention_forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    mask_ptr,
    kv_len_ptr,
    skip_ptr,
    inv_freq_ptr,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_mb,
    stride_mt,
    H,
    Tq,
    Tk,
    D,
    GROUPS,
    qk_scale,  # scale * log2(e)
    HAS_MASK: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    ROPE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    h_kv = (h // GROUPS).to(tl.int64)
    h = h.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    d_ok = offs_d < D

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h_kv * stride_kh
    v_base = v_ptr + b * stride_vb + h_kv * stride_vh

    # Number of keys to visit: all of them, or up to the last valid key of this row; none when skipped.
    n_keys = Tk
    if HAS_MASK:
        n_keys = tl.load(kv_len_ptr + b)
    if HAS_SKIP:
        n_keys = tl.where(tl.load(skip_ptr + b) != 0, 0, n_keys)

    if ROPE:
        half = D // 2
        offs_h = tl.arange(0, BLOCK_HALF)
        h_ok = offs_h < half
        inv_freq = tl.load(inv_freq_ptr + offs_h, mask=h_ok, other=0.0)
        q_rows = q_base + offs_m.to(tl.int64)[:, None] * stride_qt
        q_mask = row_ok[:, None] & h_ok[None, :]
        q1 = tl.load(q_rows + offs_h[None, :], mask=q_mask, other=0.0).to(tl.float32)
        q2 = tl.load(q_rows + (half + offs_h)[None, :], mask=q_mask, other=0.0).to(tl.float32)
        q1, q2 = _rope_halves(q1, q2, offs_m, inv_freq)
        q1 = q1.to(q_ptr.dtype.element_ty)  # round like a rotated copy in q's dtype would be
        q2 = q2.to(q_ptr.dtype.element_ty)
    else:
        q = tl.load(
            q_base + offs_m.to(tl.int64)[:, None] * stride_qt + offs_d[None, :],
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, n_keys, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < n_keys
        if HAS_MASK:
            col_ok &= tl.load(mask_ptr + b * stride_mb + cols.to(tl.int64) * stride_mt, mask=col_ok, other=0) != 0
        k_rows = cols.to(tl.int64)[None, :] * stride_kt  # (1, BLOCK_N): k is read transposed, (D, N)
        if ROPE:
            kt_mask = h_ok[:, None] & (cols < n_keys)[None, :]
            k1 = tl.load(k_base + k_rows + offs_h[:, None], mask=kt_mask, other=0.0).to(tl.float32)
            k2 = tl.load(k_base + k_rows + (half + offs_h)[:, None], mask=kt_mask, other=0.0).to(tl.float32)
            # rotate the transposed halves: positions run along the columns
            theta = cols.to(tl.float32)[None, :] * inv_freq[:, None]
            cos, sin = tl.cos(theta), tl.sin(theta)
            k1, k2 = k1 * cos - k2 * sin, k2 * cos + k1 * sin
            k1 = k1.to(k_ptr.dtype.element_ty)
            k2 = k2.to(k_ptr.dtype.element_ty)
            s = _dot(q1, k1, UPCAST, PRECISION) + _dot(q2, k2, UPCAST, PRECISION)
        else:
            kt = tl.load(k_base + k_rows + offs_d[:, None], mask=d_ok[:, None] & (cols < n_keys)[None, :], other=0.0)
            s = _dot(q, kt, UPCAST, PRECISION)
        s = tl.where(col_ok[None, :], s * qk_scale, float("-inf"))  # (BLOCK_M, BLOCK_N)

        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked: p = 0, alpha = 0
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + cols.to(tl.int64)[:, None] * stride_vt + offs_d[None, :],
            mask=(cols < n_keys)[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + _dot(p.to(v_ptr.dtype.element_ty), v, UPCAST, PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # no valid key: acc = 0, so zeros
    o_ptrs = o_ptr + b * stride_ob + h * stride_oh + offs_m.to(tl.int64)[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _block_m(tq: int) -> int:
    return min(64, max(16, triton.next_power_of_2(tq)))


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
    rope_base: float | None,
    skip: torch.Tensor | None,
) -> torch.Tensor:
    """Attention output (B, Tq, H, D), contiguous in q's dtype (inputs already validated by the public op).

    q: (B, Tq, H, D), k/v: (B, Tk, Hkv, D), any strides with a unit last stride (others are copied);
    key_mask: (B, Tk) bool or None; rope_base: RoPE on q and k first (Tq == Tk, D even) or None;
    skip: (B,) bool or None, True where the batch row's output is zeros without being computed.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    out = torch.empty((B, Tq, H, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if Tk == 0:  # no keys at all: every query outputs zeros
        return out.zero_()

    dummy = out  # stands in for absent optional pointers; never read (the flags are constexpr)
    mask_u8, kv_len = dummy, dummy
    if key_mask is not None:
        mask_u8 = key_mask.view(torch.uint8)
        # one past the last valid key of each row (0 if none): the key loop stops there
        kv_len = (key_mask * torch.arange(1, Tk + 1, device=q.device)).amax(-1).to(torch.int32)
    skip_u8 = dummy if skip is None else skip.view(torch.uint8)
    inv_freq = dummy
    if rope_base is not None:
        # exactly as etta_engine.ops.rope.rope_angles computes it
        inv_freq = 1.0 / rope_base ** (torch.arange(0, D, 2, dtype=torch.float32, device=q.device) / D)

    block_d = max(16, triton.next_power_of_2(D))
    block_half = max(16, triton.next_power_of_2(D // 2))
    block_m = _block_m(Tq)
    grid = (triton.cdiv(Tq, block_m), B * H)
    _attention_forward_kernel[grid](
        q,
        k,
        v,
        out,
        mask_u8,
        kv_len,
        skip_u8,
        inv_freq,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        *(key_mask.stride() if key_mask is not None else (0, 0)),
        H,
        Tq,
        Tk,
        D,
        H // Hkv,
        scale * LOG2E,
        HAS_MASK=key_mask is not None,
        HAS_SKIP=skip is not None,
        ROPE=rope_base is not None,
        UPCAST=interpreting(),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_D=block_d,
        BLOCK_HALF=block_half,
        num_warps=NUM_WARPS,
    )
    return out
