"""Is each op fast? Every op of etta_engine.ops against the honest alternatives, in the same run:
eager torch (the reference), ``torch.compile`` of the reference, our Triton kernel, the csrc/ runtime kernel
(impl "cuda": CUDA on a GPU, its C++ twin on the CPU), and for attention PyTorch's SDPA backends (flash, cuDNN,
memory-efficient, math). Plus the fused guidance + Euler update that ends each sampling step, the engine's fused
seam (gated residual + AdaLN of a CFG batch, against the unfused reference), the VAE decoder's Snake-beta
activation, and the whole DiT forward with our kernels against without them.

Two regimes: inference shapes (B=2, T=215, L=514, D=1536: one CFG half of a 10 s clip) timed as
latency, and training shapes (B=32) reported as GB/s (elementwise and normalisation ops: bytes read +
written once) or TFLOP/s (attention), each as a fraction of the device's peak measured in this run
(a large device-to-device copy; a large bf16 matrix product).

    python benchmarks/ops.py                     # on a GPU: rows to benchmarks/results/ops-<device>-<date>.json
    python benchmarks/ops.py --smoke --no-compile --device cpu   # tiny shapes, to check the script itself
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from _common import at_least, environment, synchronize, write_results
from tqdm.auto import tqdm

from etta_engine import ops
from etta_engine.config import get_preset
from etta_engine.models.dit import DiT
from etta_engine.ops._csrc import csrc_unusable
from etta_engine.ops._dispatch import triton_unusable


@dataclasses.dataclass
class Case:
    op: str
    regime: str
    shape: str
    run: dict[str, Callable[[], torch.Tensor]]  # impl -> thunk
    bytes: int = 0  # bytes an ideal kernel moves (read once, written once)
    flops: int = 0


def time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median milliseconds per call, after warm-up."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=max(reps, 25), return_mode="median"))
    for _ in range(2):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - t0))
    return statistics.median(samples)


def measure_peaks(device: torch.device, smoke: bool) -> dict[str, float]:
    """Copy bandwidth (GB/s, bytes read + written) and bf16 matmul rate (TFLOP/s) of this device."""
    n = (1 << 20) if smoke else (1 << 30) // 2  # elements of bf16: 1 GiB buffers on a GPU
    src = torch.randn(n, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, 20)
    m = 256 if smoke else 8192
    a, b = (torch.randn(m, m, device=device).to(torch.bfloat16) for _ in range(2))
    mm_ms = time_ms(lambda: a @ b, device, 20)
    return {"copy_gbps": 2 * src.numel() * 2 / ms / 1e6, "matmul_tflops": 2 * m**3 / mm_ms / 1e9}


def cases(device: torch.device, dtype: torch.dtype, smoke: bool, compile_ref: bool, dit: bool = True) -> list[Case]:
    """Every op's case (``dit``: with the whole DiT forward, whose three models are the costly part to build)."""
    cfg = get_preset("tiny" if smoke else "etta")
    W, H, Dh = cfg.dit.width, cfg.dit.heads, cfg.dit.head_dim
    Hc, Dc, L = cfg.dit.cross_heads, cfg.dit.cross_head_dim, cfg.context_length
    T = 22 if smoke else 215
    out: list[Case] = []
    size = dtype.itemsize

    def impls(public: Callable, ref: Callable, *args, **kwargs) -> dict[str, Callable]:
        run = {"torch": lambda: ref(*args, **kwargs)}
        if triton_unusable(device) is None:
            run["triton"] = lambda: public(*args, **kwargs, impl="triton")
        if csrc_unusable(device) is None and public is not ops.attention:
            run["cuda"] = lambda: public(*args, **kwargs, impl="cuda")  # the csrc/ runtime kernels
        if compile_ref:
            compiled = torch.compile(ref)
            run["compile"] = lambda: compiled(*args, **kwargs)
        return run

    for regime, B in (("inference", 2), ("training", 4 if smoke else 32)):
        rand = partial(_rand, device=device, dtype=dtype)
        x, y = rand(B, T, W), rand(B, T, W)
        shift, scale, gate, weight = rand(B, W), rand(B, W), rand(B, W), rand(W)
        n = B * T * W
        run = impls(ops.adaln_modulate, ops.adaln_modulate_ref, x, shift, scale, weight, 1e-5)
        out.append(Case("adaln_modulate", regime, f"{B}x{T}x{W}", run, bytes=2 * n * size))
        run = impls(ops.gated_residual, ops.gated_residual_ref, x, gate, y)
        out.append(Case("gated_residual", regime, f"{B}x{T}x{W}", run, bytes=3 * n * size))
        if regime == "inference":  # the engine's seam after the cross-attention of a CFG batch (2B rows, B attend)
            x2, shift2, scale2 = torch.cat((x, x)), torch.cat((shift, shift)), torch.cat((scale, scale))
            run = impls(ops.residual_modulate, ops.residual_modulate_ref, x2, gate, y, shift2, scale2, weight, 1e-6)
            # Bytes: x read, y read for half the rows, x_out and out written.
            out.append(Case("residual_modulate", regime, f"2x{B}x{T}x{W}", run, bytes=7 * n * size))
        hidden = rand(B, T, cfg.dit.ff_mult * W)
        run = impls(ops.gelu_tanh, ops.gelu_tanh_ref, hidden)
        out.append(Case("gelu_tanh", regime, f"{B}x{T}x{hidden.shape[-1]}", run, bytes=2 * hidden.numel() * size))
        qkv = rand(B, T, 3, H, Dh)
        run = impls(ops.apply_rope_qk, _rope_qk_ref, qkv, 16384.0)
        out.append(Case("apply_rope_qk", regime, f"{B}x{T}x3x{H}x{Dh}", run, bytes=4 * B * T * H * Dh * size))

        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        self_flops = 4 * B * H * T * T * Dh
        run = impls(ops.attention, ops.attention_ref, q, k, v, rope_base=16384.0)
        run |= sdpa_backends(ops.apply_rope_ref(q), ops.apply_rope_ref(k), v, None)
        out.append(Case("self_attention", regime, f"{B}x{T}x{H}x{Dh}", run, flops=self_flops))

        cq, kv = rand(B, T, Hc, Dc), rand(B, L, 2, Hc, Dc)
        lengths = torch.tensor([L // 3, L - 2] * (B // 2), device=device)
        mask = torch.arange(L, device=device)[None, :] < lengths[:, None]  # ragged prompts
        run = impls(ops.attention, ops.attention_ref, cq, kv[:, :, 0], kv[:, :, 1], mask)
        run |= sdpa_backends(cq, kv[:, :, 0], kv[:, :, 1], mask)
        out.append(Case("cross_attention", regime, f"{B}x{T}x{L}x{Hc}x{Dc}", run, flops=4 * B * Hc * T * L * Dc))
        if regime == "inference":  # a CFG batch: cond and uncond halves, the uncond cross-attention skipped
            skip = torch.tensor([False] * B + [True] * B, device=device)
            cq2, kv2 = torch.cat((cq, cq)), torch.cat((kv, torch.zeros_like(kv)))
            mask2 = torch.cat((mask, mask))
            run = sdpa_backends(cq2, kv2[:, :, 0], kv2[:, :, 1], mask2)
            if triton_unusable(device) is None:
                run["triton"] = partial(ops.attention, cq2, kv2[:, :, 0], kv2[:, :, 1], mask2, skip=skip, impl="triton")
            out.append(
                Case("cross_attention_cfg", regime, f"2x{B}x{T}x{L}x{Hc}x{Dc}", run, flops=4 * B * Hc * T * L * Dc)
            )

    # The VAE decoder's activation at its finest level: 128 channels of 10 s at 44.1 kHz. 7 of the decoder's 36
    # Snakes run at this size, 7 more on as many elements (256 channels at half the rate), the rest on fewer.
    C, S = (8, 4096) if smoke else (cfg.vae.channels, 10 * cfg.sample_rate)
    audio, alpha, beta = (
        _rand(1, C, S, device=device, dtype=dtype),
        _rand(C, device=device, dtype=dtype),
        _rand(C, device=device, dtype=dtype),
    )
    run = impls(ops.snake_beta, ops.snake_beta_ref, audio, alpha, beta)
    out.append(Case("snake_beta", "inference", f"1x{C}x{S}", run, bytes=2 * audio.numel() * size))

    # The update that ends each sampling step: CFG on a (2B, 64, T) velocity batch and an Euler step of the fp32
    # state. Bytes: the state read and written (fp32), both velocity halves read.
    latents = torch.randn(2, cfg.dit.io_channels, T, device=device)
    v2 = _rand(4, cfg.dit.io_channels, T, device=device, dtype=dtype)
    run = impls(ops.guided_update, ops.guided_update_ref, latents, v2[:2], v2[2:], guidance=3.5, a=-0.01)
    run.pop("triton", None)  # no Triton kernel: the fused update is a csrc/ op
    nbytes = 2 * latents.numel() * 4 + 2 * latents.numel() * size
    out.append(Case("guided_update", "inference", f"2x{cfg.dit.io_channels}x{T}", run, bytes=nbytes))

    if not dit:
        return out
    dit_case = Case("dit_forward", "inference", f"4x{T}", {})
    for impl in ("torch", "triton", "cuda"):
        unusable = {"triton": triton_unusable, "cuda": csrc_unusable}.get(impl)
        if unusable is not None and unusable(device) is not None:
            continue
        with device:
            dit = DiT(dataclasses.replace(cfg.dit, ops=impl)).eval().to(dtype)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in dit.parameters():  # non-zero weights everywhere (the init zeroes the gates)
                p.normal_(0, 0.02)
        B2 = 4  # a CFG batch of two prompts
        xs = torch.randn(B2, cfg.dit.io_channels, T, device=device, dtype=dtype)
        t = torch.rand(B2, device=device)
        ctx = torch.randn(B2, L, cfg.dit.cond_dim, device=device, dtype=dtype)
        cmask = torch.ones(B2, L, dtype=torch.bool, device=device)
        g = torch.randn(B2, cfg.dit.global_cond_dim, device=device, dtype=dtype)
        dit_case.run[impl] = lambda d=dit, a=(xs, t, ctx, cmask, g): d(*a)
    out.append(dit_case)
    return out


def _rand(*shape, device, dtype) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


def _rope_qk_ref(qkv: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.apply_rope_ref(qkv[:, :, 0], base), ops.apply_rope_ref(qkv[:, :, 1], base)


def sdpa_backends(q, k, v, mask) -> dict[str, Callable]:
    """PyTorch's SDPA on (B, T, H, D) inputs, once per backend that accepts them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    m = None if mask is None else mask[:, None, None, :]
    backends = {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa_math": SDPBackend.MATH,
    }
    run = {}
    for name, backend in backends.items():

        def call(b=backend):
            with sdpa_kernel(b):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=m)

        try:
            call()
        except (RuntimeError, TypeError):
            continue  # this backend does not take these inputs (mask, head dim, device)
        run[name] = call
    return run


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--reps", type=at_least(1), default=100)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script, not the speed)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    parser.add_argument("--ops", default=None, help="comma-separated subset, e.g. gelu_tanh,self_attention")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    peaks = measure_peaks(device, args.smoke)
    rows = []
    with torch.no_grad():
        all_cases = cases(device, dtype, args.smoke, not args.no_compile, not args.ops or "dit_forward" in args.ops)
        if args.ops:
            wanted = set(args.ops.split(","))
            unknown = wanted - {c.op for c in all_cases}
            if unknown:
                parser.error(f"unknown ops {sorted(unknown)}; choices: {sorted({c.op for c in all_cases})}")
            all_cases = [c for c in all_cases if c.op in wanted]
        for case in tqdm(all_cases, desc="ops", unit="case"):
            times = {impl: time_ms(fn, device, args.reps) for impl, fn in case.run.items()}
            synchronize(device)
            for impl, ms in times.items():
                row = {"op": case.op, "regime": case.regime, "shape": case.shape, "impl": impl, "dtype": args.dtype}
                row |= {"ms": ms, "speedup_vs_torch": times.get("torch", float("nan")) / ms}
                if case.bytes:
                    row["gbps"] = case.bytes / ms / 1e6
                    row["fraction_of_copy_peak"] = row["gbps"] / peaks["copy_gbps"]
                if case.flops:
                    row["tflops"] = case.flops / ms / 1e9
                    row["fraction_of_matmul_peak"] = row["tflops"] / peaks["matmul_tflops"]
                rows.append(row)
    env = environment(device) | {"peaks": peaks}
    path = write_results("ops", env, rows, args.out)
    width = max(len(r["op"]) for r in rows)
    for r in rows:
        extra = f"{r['gbps']:8.1f} GB/s" if "gbps" in r else (f"{r['tflops']:8.2f} TF/s" if "tflops" in r else "")
        print(f"{r['op']:<{width}} {r['regime']:<9} {r['impl']:<14} {r['ms']:9.4f} ms {extra}")
    print(f"peaks: {peaks['copy_gbps']:.0f} GB/s copy, {peaks['matmul_tflops']:.1f} TFLOP/s bf16 matmul -> {path}")
    return path


if __name__ == "__main__":
    main()
