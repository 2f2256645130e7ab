"""The DiT: exact parameter counts, adaLN-Zero init, an independent forward over official weights,
fp32 islands under autocast, training behaviour and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import dit_inputs, official_dit_shapes, official_key_shapes, randomize_, rel_err

import etta_engine as E
from etta_engine.convert import convert_official

# ------------------------------------------------------------------ sizes


def test_etta_parameter_counts_on_meta():
    cfg = E.PRESETS["etta"]
    with torch.device("meta"):
        dit, vae = E.DiT(cfg.dit), E.VAE(cfg.vae)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(dit) == 1_287_988_928
    assert count(vae.encoder) == 77_989_888
    assert count(vae.decoder) == 78_122_626
    # The spec's per-block figures: 53.1 M per block, of which 21.2 M is the adaLN linear.
    assert count(dit.blocks[0]) == 53_100_288
    assert count(dit.blocks[0].adaln) == 21_247_488


def test_official_shapes_formula_matches_reference_listing():
    listing = {k: v for k, v in official_key_shapes().items() if k.startswith("model.model.")}
    assert official_dit_shapes(E.PRESETS["etta"].dit) == listing
    assert sum(math.prod(s) for s in listing.values()) == 1_287_988_928


# ------------------------------------------------------------------ init


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_untrained_dit_outputs_exactly_zero(preset):
    cfg = E.PRESETS[preset].dit
    dit = E.DiT(cfg).eval()
    v = dit(*dit_inputs(cfg, B=3, T=9))
    assert v.shape == (3, cfg.io_channels, 9)
    assert torch.count_nonzero(v) == 0


def test_every_block_is_the_identity_at_init():
    cfg = E.PRESETS["tiny"].dit
    dit = E.DiT(cfg)
    randomize_(dit.time_embed)  # a non-trivial conditioning vector c
    _, t, context, mask, g = dit_inputs(cfg)
    c_act = F.silu(dit.conditioning(t, g))
    h = torch.randn(3, 7, cfg.width)
    memory = dit.cond_embed(context)
    for block in dit.blocks:
        assert torch.equal(block(h, memory, mask, c_act), h)


def test_init_is_the_official_recipe():
    torch.manual_seed(1)
    dit = E.DiT(E.PRESETS["demo"].dit)
    block = dit.blocks[0]
    # xavier-uniform, halved: |w| <= 0.5 * sqrt(6 / (fan_in + fan_out))
    w = block.self_attn.qkv.weight
    assert w.abs().max() <= 0.5 * math.sqrt(6 / sum(w.shape)) + 1e-7
    assert w.abs().max() > 0.4 * math.sqrt(6 / sum(w.shape))
    assert block.ff.up.weight.std().item() == pytest.approx(0.01, rel=0.05)  # N(0, 0.02), halved
    assert dit.time_embed.weight.std().item() == pytest.approx(0.5, rel=0.25)  # N(0, 1), halved
    for p in (block.adaln.weight, block.adaln.bias, dit.final.linear.weight, dit.preprocess.weight):
        assert torch.count_nonzero(p) == 0


# ------------------------------------------------------------------ the forward against an independent reference


def official_forward(sd: dict[str, torch.Tensor], cfg: E.DiTConfig, x, t, context, context_mask, global_cond):
    """The ETTA DiT forward written from the spec over *official* key names and layouts (1x1 convs as
    conv1d, RoPE as complex multiplication), sharing no code with etta_engine."""
    p = "model.model."
    W = cfg.width

    def lin(h, name, bias=True):
        return F.linear(h, sd[name + ".weight"], sd.get(name + ".bias") if bias else None)

    def mlp(h, name, bias):
        return lin(F.silu(lin(h, f"{name}.0", bias)), f"{name}.2", bias)

    def modulate(h, shift, scale):
        return h * (1 + scale[:, None]) + shift[:, None]

    def rope(u):  # u (B, T, H, D)
        T, D = u.shape[1], u.shape[3]
        z = torch.complex(u[..., : D // 2].double(), u[..., D // 2 :].double())
        w = cfg.rope_base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        z = z * torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.arange(T)[:, None] * w)[None, :, None]
        return torch.cat((z.real, z.imag), -1).float()

    def attend(q, k, v, mask=None):  # (B, T, H, D)
        s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)

    memory = mlp(context, p + "to_cond_embed", bias=False)
    f = 2 * math.pi * t[:, None] @ sd[p + "timestep_features.weight"].T
    c = mlp(torch.cat((f.cos(), f.sin()), -1), p + "to_timestep_embed", True)
    c = c + mlp(global_cond, p + "to_global_embed", False)

    x = F.conv1d(x, sd[p + "preprocess_conv.weight"]) + x
    h = F.conv1d(x, sd[p + "transformer.project_in.weight"], sd[p + "transformer.project_in.bias"]).transpose(1, 2)
    B, T, _ = h.shape
    for i in range(cfg.depth):
        b = f"{p}transformer.model.blocks.{i}."
        mod = lin(F.silu(c), b + "adaLN_modulation.1").chunk(9, dim=1)
        y = modulate(F.layer_norm(h, (W,), eps=1e-6), mod[0], mod[1])
        qkv = lin(y, b + "self_attention.qkv_net", False).reshape(B, T, 3, cfg.heads, -1)
        o = attend(rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]).reshape(B, T, W)
        h = h + mod[2][:, None] * lin(o, b + "self_attention.o_net", False)

        y = modulate(F.layer_norm(h, (W,), eps=1e-6), mod[3], mod[4])
        m = F.layer_norm(memory, (cfg.cond_dim,), sd[b + "norm_xattn_cross.weight"], eps=1e-5)
        q = lin(y, b + "cross_attention.q_net", False).reshape(B, T, cfg.cross_heads, -1)
        kv = lin(m, b + "cross_attention.kv_net", False).reshape(B, m.shape[1], 2, cfg.cross_heads, -1)
        o = attend(q, kv[:, :, 0], kv[:, :, 1], context_mask).reshape(B, T, cfg.cond_dim)
        h = h + mod[5][:, None] * lin(o, b + "cross_attention.o_net", False)

        y = modulate(F.layer_norm(h, (W,), sd[b + "norm_pos_ff.weight"], eps=1e-5), mod[6], mod[7])
        u = F.conv1d(y.transpose(1, 2), sd[b + "pos_ff.proj.conv.weight"])
        u = F.conv1d(F.gelu(u, approximate="tanh"), sd[b + "pos_ff.o_net.conv.weight"]).transpose(1, 2)
        h = h + mod[8][:, None] * u

    shift, scale = lin(F.silu(c), p + "transformer.project_out.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(modulate(F.layer_norm(h, (W,), eps=1e-6), shift, scale), p + "transformer.project_out.linear")
    out = out.transpose(1, 2)
    return F.conv1d(out, sd[p + "postprocess_conv.weight"]) + out


@pytest.mark.parametrize("T", [1, 23])
def test_forward_matches_independent_reference_on_official_weights(T):
    cfg = E.PRESETS["tiny"].dit
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(s, generator=g) * 0.2 for k, s in official_dit_shapes(cfg).items()}
    kind, ours, unknown = convert_official(official)
    assert kind == "model" and not unknown
    dit = E.DiT(cfg).eval()
    dit.load_state_dict({k[len("dit.") :]: v for k, v in ours.items()}, strict=True)
    inputs = dit_inputs(cfg, B=3, T=T, L=6)
    expected = official_forward(official, cfg, *inputs)
    out = dit(*inputs)
    assert out.abs().mean() > 1e-2  # a non-trivial output
    assert rel_err(out, expected) < 1e-5


# ------------------------------------------------------------------ precision


def test_bf16_autocast_keeps_fp32_islands_and_stays_close():
    cfg = E.PRESETS["tiny"].dit
    dit = randomize_(E.DiT(cfg), std=0.2).eval()
    inputs = dit_inputs(cfg, B=2, T=16)
    features = {}

    def record(module, args, output):
        features[torch.is_autocast_enabled("cpu")] = args[0]

    dit.time_embed.mlp[0].register_forward_hook(record)
    ref = dit(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dit(*inputs)
    assert out.dtype == torch.bfloat16
    # The timestep Fourier features are computed in fp32 even under autocast: identical to the fp32 run.
    assert features[True].dtype == torch.float32 and torch.equal(features[True], features[False])
    assert rel_err(out, ref) < 3e-2


def test_bf16_weights_forward_matches_fp32_within_bf16_budget():
    cfg = E.PRESETS["tiny"].dit
    dit = randomize_(E.DiT(cfg), std=0.2).eval()
    inputs = dit_inputs(cfg, B=2, T=16)
    ref = dit(*inputs)
    dit_bf16 = dit.to(torch.bfloat16)
    out = dit_bf16(*(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 5e-2


# ------------------------------------------------------------------ training behaviour


def test_dropout_only_in_training_and_gradients_reach_every_parameter():
    cfg = E.PRESETS["tiny"].dit
    dit = randomize_(E.DiT(cfg), std=0.2)
    inputs = dit_inputs(cfg, B=2, T=8)
    dit.eval()
    assert torch.equal(dit(*inputs), dit(*inputs))
    dit.train()
    a, b = dit(*inputs), dit(*inputs)
    assert not torch.equal(a, b)  # dropout 0.1 is active
    a.square().mean().backward()
    missing = [n for n, p in dit.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not missing


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_named():
    cfg = E.PRESETS["tiny"].dit
    dit = E.DiT(cfg)
    x, t, ctx, mask, g = dit_inputs(cfg, B=2, T=4, L=3)
    cases = [
        ((x[:, :5], t, ctx, mask, g), ValueError, r"x must have shape \(B, 64, T\)"),
        ((x[0], t, ctx, mask, g), ValueError, "x must have 3 dimensions"),
        ((x, t[:1], ctx, mask, g), ValueError, r"t must have shape \(B,\) = \(2,\)"),
        ((x, t, ctx[..., :5], mask, g), ValueError, r"context must have shape \(2, L, 32\)"),
        ((x, t, ctx, mask.float(), g), TypeError, "context_mask must be a bool tensor"),
        ((x, t, ctx, mask[:, :2], g), ValueError, r"context_mask must have shape \(2, 3\)"),
        ((x, t, ctx, mask, g[:, :3]), ValueError, r"global_cond must have shape \(2, 64\)"),
        ((x.double(), t, ctx, mask, g), TypeError, "x is torch.float64 but the DiT's parameters are torch.float32"),
        ((x.long(), t, ctx, mask, g), TypeError, "x must be a floating-point tensor"),
    ]
    for args, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            dit(*args)
