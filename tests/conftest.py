"""Shared fixtures. Everything here runs on a CPU-only machine; GPU tests carry the `gpu` marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in the interpreter on a CPU-only machine; this must be set before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import etta_engine as E

ASSETS = Path(__file__).parent / "assets"


def kernel_device() -> torch.device:
    """Where Triton kernels run in this session: the GPU, or the CPU through the interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# The Triton interpreter converts fp32 to bf16/fp16 by truncation, not round-to-nearest as a GPU does:
# its low-precision outputs may be one unit in the last place further from the reference.
_INTERPRETER_ROUNDING = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def err_budget_ok(kernel: torch.Tensor, naive: torch.Tensor, ref: torch.Tensor, tiny: float = 1e-6) -> bool:
    """STYLE.md rule 7: err(kernel vs fp32 ref) <= 2 * err(same-dtype torch vs fp32 ref) + tiny (relative errors)."""
    from etta_engine.kernels.support import interpreting

    if interpreting():
        tiny += _INTERPRETER_ROUNDING.get(kernel.dtype, 0.0)
    return rel_err(kernel, ref) <= 2 * rel_err(naive, ref) + tiny


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_cfg() -> E.ModelConfig:
    return E.PRESETS["tiny"]


@pytest.fixture(scope="session")
def tiny_model() -> E.ETTAModel:
    """The tiny preset with random weights (seed 0). Session-scoped: tests must not modify it."""
    return E.ETTAModel.from_preset("tiny").eval()


def randomize_(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with random values, so zero-initialised layers do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def dit_inputs(cfg: E.DiTConfig, B: int = 3, T: int = 7, L: int = 5, seed: int = 0):
    """Random DiT inputs with a ragged context mask (every row keeps at least one key)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.io_channels, T, generator=g)
    t = torch.rand(B, generator=g)
    context = torch.randn(B, L, cfg.cond_dim, generator=g)
    lengths = torch.arange(B) % L + 1
    mask = torch.arange(L)[None, :] < lengths[:, None]
    global_cond = torch.randn(B, cfg.global_cond_dim, generator=g)
    return x, t, context, mask, global_cond


def official_key_shapes(depth: int = 24) -> dict[str, tuple[int, ...]]:
    """Official ETTA keys and shapes from the reference listing ({i} expanded over `depth` blocks)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in (ASSETS / "etta_reference_state_dict.txt").read_text().splitlines():
        if "(" not in line or line.startswith(("DIT params", "VAE decoder")):
            continue
        key, shape = line.split(" ", 1)
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        for i in range(depth) if "{i}" in key else [None]:
            shapes[key.replace("{i}", str(i))] = dims
    return shapes


def official_dit_shapes(cfg: E.DiTConfig) -> dict[str, tuple[int, ...]]:
    """Official DiT key shapes for any config, written from the spec's layer list."""
    W, C, Dc, G, Fd = cfg.width, cfg.io_channels, cfg.cond_dim, cfg.global_cond_dim, cfg.timestep_features_dim
    p = "model.model."
    shapes = {
        p + "timestep_features.weight": (Fd // 2, 1),
        p + "to_timestep_embed.0.weight": (W, Fd),
        p + "to_timestep_embed.0.bias": (W,),
        p + "to_timestep_embed.2.weight": (W, W),
        p + "to_timestep_embed.2.bias": (W,),
        p + "to_cond_embed.0.weight": (Dc, Dc),
        p + "to_cond_embed.2.weight": (Dc, Dc),
        p + "to_global_embed.0.weight": (W, G),
        p + "to_global_embed.2.weight": (W, W),
        p + "transformer.project_in.weight": (W, C, 1),
        p + "transformer.project_in.bias": (W,),
        p + "transformer.project_out.linear.weight": (C, W),
        p + "transformer.project_out.linear.bias": (C,),
        p + "transformer.project_out.adaLN_modulation.1.weight": (2 * W, W),
        p + "transformer.project_out.adaLN_modulation.1.bias": (2 * W,),
        p + "preprocess_conv.weight": (C, C, 1),
        p + "postprocess_conv.weight": (C, C, 1),
    }
    for i in range(cfg.depth):
        b = f"{p}transformer.model.blocks.{i}."
        shapes |= {
            b + "self_attention.qkv_net.weight": (3 * W, W),
            b + "self_attention.o_net.weight": (W, W),
            b + "norm_xattn_cross.weight": (Dc,),
            b + "cross_attention.q_net.weight": (Dc, W),
            b + "cross_attention.kv_net.weight": (2 * Dc, Dc),
            b + "cross_attention.o_net.weight": (W, Dc),
            b + "norm_pos_ff.weight": (W,),
            b + "pos_ff.proj.conv.weight": (cfg.ff_mult * W, W, 1),
            b + "pos_ff.o_net.conv.weight": (W, cfg.ff_mult * W, 1),
            b + "adaLN_modulation.1.weight": (9 * W, W),
            b + "adaLN_modulation.1.bias": (9 * W,),
        }
    return shapes


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory):
    """A local directory in the layout of a Hugging Face T5 release: config, weights, tokenizer."""
    import transformers

    path = tmp_path_factory.mktemp("t5-local")
    cfg = transformers.T5Config(vocab_size=384, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(path)
    transformers.ByT5Tokenizer().save_pretrained(path)
    return path
