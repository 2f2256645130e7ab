"""Compiles every Triton kernel for sm_80 and sm_90 ahead of time, without a GPU, and prints one JSON line
per kernel configuration. Run in a process where TRITON_INTERPRET is unset (the interpreter replaces the
compiler); tests/test_kernel_compile.py does so.

    python tests/compile_kernels.py
"""

from __future__ import annotations

import json
import sys

import triton
from etta_engine.kernels import adaln, attention, gelu, residual, residual_modulate, rope, snake
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

FLOAT_ARGS = {"eps", "qk_scale", "log2_inv_freq_step"}
POINTER_TYPES = {
    "mask_ptr": "*u8",
    "skip_ptr": "*u8",
    "kv_len_ptr": "*i32",
    "inv_freq_ptr": "*fp32",
    "mean_ptr": "*fp32",
    "rstd_ptr": "*fp32",
    "partial_ptr": "*fp32",
    "dshift_ptr": "*fp32",
    "dscale_ptr": "*fp32",
    "dw_ptr": "*fp32",
    "da_ptr": "*fp32",
    "db_ptr": "*fp32",
}


def compile_for(kernel, dtype: str, constexprs: dict, capability: int, num_warps: int = 4):
    """Compile ``kernel`` with data pointers of ``dtype`` for ``sm_<capability>``; returns the compiled kernel."""
    signature = {}
    for name, param in zip(kernel.arg_names, kernel.params, strict=True):
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES.get(name, f"*{dtype}")
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    missing = {n for n, p in zip(kernel.arg_names, kernel.params, strict=True) if p.is_constexpr} - set(constexprs)
    assert not missing, f"constexprs {missing} of {kernel.fn.__name__} are not set"
    source = ASTSource(
        fn=kernel, signature=signature, constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    )
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


ATTENTION_BLOCKS = dict(UPCAST=False, PRECISION="tf32", BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_HALF=32)

# tl.dot input precision: moot for bf16 operands; fp32 inputs get "ieee" (exact), as the launcher asks
ATTENTION_BLOCKS = dict(UPCAST=False, PRECISION="tf32", BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_HALF=32)

# (kernel, constexprs, num_warps) at the etta shapes: width 1536, FFN 6144, 24 heads x 64, cross 16 x 48
CASES = {
    "gelu_forward": (gelu._gelu_forward_kernel, dict(HAS_BIAS=True, BLOCK=gelu.BLOCK), 4),
    "gelu_backward": (gelu._gelu_backward_kernel, dict(HAS_BIAS=False, BLOCK=gelu.BLOCK), 4),
    "adaln_forward": (adaln._adaln_forward_kernel, dict(HAS_WEIGHT=True, BLOCK_D=2048), 8),
    "adaln_forward_noweight": (adaln._adaln_forward_kernel, dict(HAS_WEIGHT=False, BLOCK_D=2048), 8),
    "adaln_backward": (adaln._adaln_backward_kernel, dict(HAS_WEIGHT=True, BLOCK_D=2048), 8),
    "residual_forward": (residual._gated_rows_kernel, dict(HAS_X=True, ACCUMULATE=False, BLOCK_D=1024), 4),
    "residual_backward": (residual._gated_rows_kernel, dict(HAS_X=False, ACCUMULATE=True, BLOCK_D=1024), 4),
    "residual_modulate": (residual_modulate._residual_modulate_kernel, dict(HAS_WEIGHT=False, BLOCK_D=2048), 8),
    "residual_modulate_weight": (residual_modulate._residual_modulate_kernel, dict(HAS_WEIGHT=True, BLOCK_D=2048), 8),
    "snake_forward": (snake._snake_forward_kernel, dict(BLOCK=snake.BLOCK), 4),
    "snake_backward": (snake._snake_backward_kernel, dict(BLOCK=snake.BLOCK), 4),
    "rope": (rope._rope_kernel, dict(SIGN=1, BLOCK_R=2, BLOCK_H=32, BLOCK_P=32), 4),
    "rope_inverse": (rope._rope_kernel, dict(SIGN=-1, BLOCK_R=2, BLOCK_H=32, BLOCK_P=32), 4),
    "self_attention_rope": (
        attention._attention_forward_kernel,
        dict(ATTENTION_BLOCKS, HAS_MASK=False, HAS_SKIP=False, ROPE=True),
        4,
    ),
    "cross_attention_cfg": (
        attention._attention_forward_kernel,
        dict(ATTENTION_BLOCKS, HAS_MASK=True, HAS_SKIP=True, ROPE=False),
        4,
    ),
}


def main() -> int:
    failures = 0
    for name, (kernel, constexprs, num_warps) in sorted(CASES.items()):
        for dtype in ("bf16", "fp32"):
            config = dict(constexprs)
            if dtype == "fp32" and "PRECISION" in config:
                config["PRECISION"] = "ieee"  # exact fp32 dot products, as the launcher asks for fp32 inputs
            for capability in (80, 90):
                row = {"kernel": name, "dtype": dtype, "sm": capability}
                try:
                    compiled = compile_for(kernel, dtype, config, capability, num_warps)
                except Exception as e:  # report every failure, not only the first
                    row["error"] = f"{type(e).__name__}: {e}"[:2000]
                    failures += 1
                else:
                    ptx = compiled.asm["ptx"]
                    row["shared"] = compiled.metadata.shared
                    row["target_ok"] = f".target sm_{capability}" in ptx
                    row["mma"] = "mma" in ptx
                print(json.dumps(row), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
