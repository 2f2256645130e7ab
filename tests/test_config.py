"""Configs: presets, validation with named errors, and the JSON round trip stored in checkpoints."""

from __future__ import annotations

import dataclasses

import pytest

import etta_engine as E


@pytest.mark.parametrize("name", sorted(E.PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = E.PRESETS[name]
    assert E.ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dit.width = 3  # type: ignore[misc]


def test_etta_preset_is_the_reference():
    cfg = E.PRESETS["etta"]
    assert (cfg.dit.width, cfg.dit.depth, cfg.dit.heads, cfg.dit.head_dim) == (1536, 24, 24, 64)
    assert (cfg.dit.cross_heads, cfg.dit.cross_head_dim, cfg.dit.rope_base) == (16, 48, 16384.0)
    assert (cfg.text.dim, cfg.text.max_length, cfg.context_length) == (768, 512, 514)
    assert cfg.vae.downsampling_ratio == 2048 and round(cfg.latent_rate * 10) == 215
    assert (E.PRESETS["tiny"].dit.width, E.PRESETS["tiny"].dit.depth) == (64, 2)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: E.DiTConfig(width=100, heads=3), "width=100 is not divisible by heads=3"),
        (lambda: E.DiTConfig(width=96, heads=32), "head dim 3 must be even"),
        (lambda: E.DiTConfig(depth=0), "depth=0 must be positive"),
        (lambda: E.DiTConfig(dropout=1.0), r"dropout=1.0 is outside \[0, 1\)"),
        (lambda: E.DiTConfig(ops="fast"), "ops='fast' is not one of"),
        (lambda: E.VAEConfig(strides=(2, 4)), "must be non-empty and of equal length"),
        (lambda: E.ModelConfig("x", dit=E.DiTConfig(io_channels=32)), "dit.io_channels=32 != vae.latent_dim=64"),
        (lambda: E.ModelConfig("x", text=E.TextConfig(dim=512)), "dit.cond_dim=768 != text.dim=512"),
        (lambda: E.DiTConfig.from_dict({"width": 64, "colour": 1}), r"unknown fields \['colour'\]"),
    ],
)
def test_invalid_configs_are_named(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_unknown_preset_lists_the_choices():
    with pytest.raises(KeyError, match=r"unknown preset 'big'; choices: \['demo', 'etta', 'tiny'\]"):
        E.get_preset("big")
