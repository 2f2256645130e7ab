"""Official ETTA checkpoints -> etta_engine's layout.

The official state dict (``../shared/spec/etta_reference_state_dict.txt``) holds the DiT under
``model.model.``, the VAE under ``pretransform.model.`` (legacy weight norm ``weight_g``/``weight_v``)
and the number conditioners under ``conditioner.conditioners.``. Our VAE keeps the official module
layout, so its keys only change prefix; the DiT's names are ours and its 1x1 convolutions are
``nn.Linear``, so their (out, in, 1) weights are squeezed to (out, in).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_BLOCK = r"model\.model\.transformer\.model\.blocks\.(\d+)\."

# (official key pattern, our key template, squeeze a trailing kernel dim of 1)
_RULES: list[tuple[re.Pattern, str, bool]] = [
    (re.compile(p), r, squeeze)
    for p, r, squeeze in [
        (r"model\.model\.timestep_features\.weight", "dit.time_embed.weight", False),
        (r"model\.model\.to_timestep_embed\.([02])\.(weight|bias)", r"dit.time_embed.mlp.\1.\2", False),
        (r"model\.model\.to_cond_embed\.([02])\.weight", r"dit.cond_embed.\1.weight", False),
        (r"model\.model\.to_global_embed\.([02])\.weight", r"dit.global_embed.\1.weight", False),
        (r"model\.model\.preprocess_conv\.weight", "dit.preprocess.weight", True),
        (r"model\.model\.postprocess_conv\.weight", "dit.postprocess.weight", True),
        (r"model\.model\.transformer\.project_in\.weight", "dit.project_in.weight", True),
        (r"model\.model\.transformer\.project_in\.bias", "dit.project_in.bias", False),
        (r"model\.model\.transformer\.project_out\.linear\.(weight|bias)", r"dit.final.linear.\1", False),
        (r"model\.model\.transformer\.project_out\.adaLN_modulation\.1\.(weight|bias)", r"dit.final.adaln.\1", False),
        (_BLOCK + r"self_attention\.qkv_net\.weight", r"dit.blocks.\1.self_attn.qkv.weight", False),
        (_BLOCK + r"self_attention\.o_net\.weight", r"dit.blocks.\1.self_attn.out.weight", False),
        (_BLOCK + r"norm_xattn_cross\.weight", r"dit.blocks.\1.memory_norm.weight", False),
        (_BLOCK + r"cross_attention\.q_net\.weight", r"dit.blocks.\1.cross_attn.q.weight", False),
        (_BLOCK + r"cross_attention\.kv_net\.weight", r"dit.blocks.\1.cross_attn.kv.weight", False),
        (_BLOCK + r"cross_attention\.o_net\.weight", r"dit.blocks.\1.cross_attn.out.weight", False),
        (_BLOCK + r"norm_pos_ff\.weight", r"dit.blocks.\1.ff_norm.weight", False),
        (_BLOCK + r"pos_ff\.proj\.conv\.weight", r"dit.blocks.\1.ff.up.weight", True),
        (_BLOCK + r"pos_ff\.o_net\.conv\.weight", r"dit.blocks.\1.ff.down.weight", True),
        (_BLOCK + r"adaLN_modulation\.1\.(weight|bias)", r"dit.blocks.\1.adaln.\2", False),
        (r"pretransform\.model\.((?:encoder|decoder)\..+)", r"vae.\1", False),
        (
            r"conditioner\.conditioners\.(\w+)\.embedder\.embedding\.0\.weights",
            r"conditioner.numbers.\1.fourier_weight",
            False,
        ),
        (
            r"conditioner\.conditioners\.(\w+)\.embedder\.embedding\.1\.(weight|bias)",
            r"conditioner.numbers.\1.proj.\2",
            False,
        ),
    ]
]

# Bare autoencoder checkpoints (stable-audio-tools' unwrapped or training-wrapper layout).
_VAE_PREFIXES = ("pretransform.model.", "autoencoder.", "")


def is_official(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if the keys look like an official ETTA / stable-audio-tools checkpoint."""
    prefixes = ("model.model.", "pretransform.model.", "autoencoder.", "encoder.layers.", "decoder.layers.")
    return any(k.startswith(prefixes) for k in state_dict)


def official_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"model"`` for a full text-to-audio checkpoint, ``"vae"`` for an autoencoder alone."""
    return "model" if any(k.startswith("model.model.") for k in state_dict) else "vae"


def convert_key(key: str) -> tuple[str, bool] | None:
    """Our key for an official full-model key and whether to squeeze its kernel dim, or None if unknown."""
    for pattern, template, squeeze in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(template), squeeze
    return None


def _vae_key(key: str) -> tuple[str, bool] | None:
    for prefix in _VAE_PREFIXES:
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if rest is not None and rest.startswith(("encoder.", "decoder.")):
            return rest, False
    return None


def convert_official(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Official state dict -> (kind, our state dict, official keys that have no place in ours).

    kind ``"model"`` gives keys of :class:`etta_engine.ETTAModel`; ``"vae"`` keys of :class:`etta_engine.VAE`.
    """
    kind = official_kind(state_dict)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        target = convert_key(key) if kind == "model" else _vae_key(key)
        if target is None:
            unknown.append(key)
            continue
        new_key, squeeze = target
        if squeeze:
            if value.ndim != 3 or value.shape[-1] != 1:
                raise ValueError(f"official {key} should be a 1x1 convolution (out, in, 1), got {tuple(value.shape)}")
            value = value[..., 0]
        if new_key in out:
            raise ValueError(f"official checkpoint maps two keys to {new_key}")
        out[new_key] = value
    return kind, out, unknown
