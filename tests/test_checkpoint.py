"""Checkpoints: our format's round trip and atomic writes, errors for bad files, official ETTA import."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import safetensors.torch
import torch
from conftest import official_dit_shapes, official_key_shapes, randomize_

import etta_engine as E
from etta_engine.checkpoint import CheckpointError, check_state_dict
from etta_engine.cli import main as cli_main
from etta_engine.convert import convert_key, convert_official


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_model_round_trip_is_exact(tmp_path):
    model = randomize_(E.ETTAModel.from_preset("tiny"), seed=3)
    path = E.save(tmp_path / "tiny.safetensors", model)
    loaded = E.load(path)
    assert isinstance(loaded, E.ETTAModel) and loaded.cfg == model.cfg and not loaded.training
    assert_same_tensors(model, loaded)
    te = loaded.text_encoder.model
    assert te.shared.weight is te.encoder.embed_tokens.weight  # tied embeddings stay tied
    cond = loaded.condition(["a bell"], 0.0, 3.0)
    assert torch.equal(cond.context, model.condition(["a bell"], 0.0, 3.0).context)


@pytest.mark.parametrize("kind", ["dit", "vae"])
def test_part_round_trip_is_exact(tmp_path, kind):
    cfg = E.PRESETS["tiny"]
    module = randomize_(E.DiT(cfg.dit) if kind == "dit" else E.VAE(cfg.vae))
    loaded = E.load(E.save(tmp_path / f"{kind}.safetensors", module, metadata={"note": "hello"}))
    assert type(loaded) is type(module) and loaded.cfg == module.cfg
    assert_same_tensors(module, loaded)
    with safetensors.safe_open(tmp_path / f"{kind}.safetensors", "pt") as f:
        meta = f.metadata()
    assert (
        meta["kind"] == kind
        and meta["note"] == "hello"
        and type(module.cfg).from_dict(json.loads(meta["config"])) == module.cfg
    )


def test_load_with_dtype_and_device(tmp_path):
    dit = randomize_(E.DiT(E.PRESETS["tiny"].dit))
    loaded = E.load(E.save(tmp_path / "d.safetensors", dit), dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert torch.equal(loaded.project_in.weight, dit.project_in.weight.to(torch.bfloat16))


def pretrained_text_config(t5_dir) -> E.ModelConfig:
    """The tiny model with a pretrained (local) T5 of width 48 instead of an embedded random one."""
    tiny = E.PRESETS["tiny"]
    return dataclasses.replace(
        tiny,
        name="tiny-t5",
        text=E.TextConfig(pretrained=os.fspath(t5_dir), dim=48, max_length=64),
        dit=dataclasses.replace(tiny.dit, cond_dim=48, cross_heads=4, global_cond_dim=96),
    )


def test_pretrained_text_encoder_is_not_saved(tmp_path, t5_dir):
    model = E.ETTAModel(pretrained_text_config(t5_dir))
    assert model.text_encoder is None
    model.load_text_encoder()
    path = E.save(tmp_path / "m.safetensors", model)
    with safetensors.safe_open(path, "pt") as f:
        assert not [k for k in f.keys() if k.startswith("text_encoder.")]
    assert E.load(path).text_encoder is None
    loaded = E.load(path, text_encoder_path=t5_dir)
    assert torch.equal(loaded.condition(["x"]).context, model.condition(["x"]).context)


def test_writes_are_atomic(tmp_path, monkeypatch):
    dit = E.DiT(E.PRESETS["tiny"].dit)
    path = E.save(tmp_path / "d.safetensors", dit)
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        E.save(path, randomize_(E.DiT(E.PRESETS["tiny"].dit)))
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["d.safetensors"]  # and no temporary file is left behind
    assert_same_tensors(E.load(path), dit)


def test_save_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.save(tmp_path / "missing" / "x.safetensors", E.VAE(E.PRESETS["tiny"].vae))
    with pytest.raises(TypeError, match="save\\(\\) takes an ETTAModel, DiT or VAE"):
        E.save(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))


def test_truncated_and_corrupt_files(tmp_path):
    path = E.save(tmp_path / "d.safetensors", E.DiT(E.PRESETS["tiny"].dit))
    data = path.read_bytes()
    (tmp_path / "half.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a valid safetensors file"):
        E.load(tmp_path / "half.safetensors")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        E.load(tmp_path / "empty.ckpt")
    (tmp_path / "noise.bin").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="neither a safetensors file nor a torch checkpoint"):
        E.load(tmp_path / "noise.bin")
    torch.save({"state_dict": {"a": torch.zeros(1000)}}, tmp_path / "full.ckpt")
    ckpt = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a valid torch checkpoint"):
        E.load(tmp_path / "cut.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.load(tmp_path / "nothing.safetensors")


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    dit = E.DiT(E.PRESETS["tiny"].dit)
    tensors = {k: v.contiguous() for k, v in dit.state_dict().items()}
    wrong = dataclasses.replace(dit.cfg, depth=3, ff_mult=2)
    meta = {"format": "etta_engine", "format_version": "1", "kind": "dit", "config": json.dumps(wrong.to_dict())}
    safetensors.torch.save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError) as info:
        E.load(tmp_path / "bad.safetensors")
    msg = str(info.value)
    assert "does not match its config" in msg
    assert "missing keys (11)" in msg and "blocks.2.self_attn.qkv.weight" in msg
    assert "mismatched shapes (4)" in msg and "blocks.0.ff.up.weight: file (256, 64) vs config (128, 64)" in msg
    meta["config"] = json.dumps({**dit.cfg.to_dict(), "colour": "red"})
    safetensors.torch.save_file(tensors, tmp_path / "bad2.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"invalid config: DiTConfig: unknown fields \['colour'\]"):
        E.load(tmp_path / "bad2.safetensors")


# ------------------------------------------------------------------ official checkpoints


def official_state_dict(cfg: E.ModelConfig, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A random state dict in the official layout for ``cfg``: DiT, VAE (weight_g/weight_v), number conditioners."""
    g = torch.Generator().manual_seed(seed)
    make = (lambda s: torch.empty(s, device="meta")) if device == "meta" else (lambda s: torch.randn(s, generator=g))
    sd = {k: make(s) for k, s in official_dit_shapes(cfg.dit).items()}
    with torch.device("meta"):
        vae = E.VAE(cfg.vae)
    sd |= {"pretransform.model." + k: make(tuple(v.shape)) for k, v in vae.state_dict().items()}
    for key in cfg.number_keys:
        p = f"conditioner.conditioners.{key}.embedder.embedding."
        sd |= {
            p + "0.weights": make((cfg.number_fourier_dim // 2,)),
            p + "1.weight": make((cfg.text.dim, cfg.number_fourier_dim + 1)),
            p + "1.bias": make((cfg.text.dim,)),
        }
    return sd


def test_full_size_official_layout_converts_to_the_etta_model():
    """Every official key of the reference listing (full size, on meta) lands on a tensor of our etta model."""
    cfg = E.PRESETS["etta"]
    official = official_state_dict(cfg, device="meta")
    listing = official_key_shapes()
    assert {k: tuple(official[k].shape) for k in listing} == listing  # the listed names and shapes, exactly
    kind, ours, unknown = convert_official(official)
    assert kind == "model" and not unknown
    with torch.device("meta"):
        model = E.ETTAModel(cfg)
    check_state_dict(model, ours, "reference listing")  # raises on any missing/unexpected/mismatched key
    assert sum(math.prod(v.shape) for k, v in ours.items() if k.startswith("dit.")) == 1_287_988_928


@pytest.mark.parametrize("fmt", ["ckpt", "legacy.ckpt", "safetensors"])
def test_official_checkpoint_import_puts_every_tensor_in_place(tmp_path, t5_dir, fmt):
    cfg = pretrained_text_config(t5_dir)
    official = official_state_dict(cfg)
    path = tmp_path / f"etta.{fmt}"
    if fmt.endswith("ckpt"):
        legacy = fmt.startswith("legacy")  # torch.save's pre-1.6 format, which cannot be memory-mapped
        torch.save({"state_dict": official, "global_step": 12}, path, _use_new_zipfile_serialization=not legacy)
    else:
        safetensors.torch.save_file(official, path)
    model = E.load(path, config=cfg)
    ours = model.state_dict()
    for key, value in official.items():
        target, squeeze = convert_key(key)
        expected = value[..., 0] if squeeze else value
        assert torch.equal(ours[target], expected), key
    assert len(ours) == len(official)  # nothing of ours was left unfilled
    # weight norm pairs load as such: the VAE computes g * v / ||v|| from the official tensors
    w = model.vae.decoder.layers[0].weight()
    v, gain = (
        official["pretransform.model.decoder.layers.0.weight_v"],
        official["pretransform.model.decoder.layers.0.weight_g"],
    )
    assert torch.allclose(w, gain * v / v.flatten(1).norm(dim=1)[:, None, None], atol=1e-6)


def test_official_import_errors(tmp_path, t5_dir):
    cfg = pretrained_text_config(t5_dir)
    official = official_state_dict(cfg)
    official["model.model.some_new_layer.weight"] = torch.zeros(3)
    torch.save({"state_dict": official}, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match=r"1 official keys have no place.*some_new_layer.*strict=False"):
        E.load(tmp_path / "extra.ckpt", config=cfg)
    with pytest.warns(UserWarning, match="some_new_layer"):
        E.load(tmp_path / "extra.ckpt", config=cfg, strict=False)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"mismatched shapes"):
        E.load(tmp_path / "extra.ckpt", strict=False)  # the default etta config does not fit these shapes
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="carry no text encoder"):
        E.load(tmp_path / "extra.ckpt", config="tiny", strict=False)


class Payload:
    """Stands for any non-tensor object a pickle could carry."""


def test_pickled_objects_are_never_loaded(tmp_path):
    torch.save({"state_dict": {"model.model.x": torch.zeros(1)}, "callback": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="never unpickled"):
        E.load(tmp_path / "evil.ckpt")


def test_official_vae_checkpoint_loads_as_a_vae(tmp_path):
    cfg = E.PRESETS["tiny"]
    sd = {k: v for k, v in official_state_dict(cfg).items() if k.startswith("pretransform.")}
    bare = {k[len("pretransform.model.") :]: v for k, v in sd.items()}  # stable-audio-tools' unwrapped autoencoder
    torch.save({"state_dict": bare}, tmp_path / "vae.ckpt")
    vae = E.load(tmp_path / "vae.ckpt", config="tiny")
    assert isinstance(vae, E.VAE)
    assert torch.equal(vae.state_dict()["decoder.layers.0.weight_v"], bare["decoder.layers.0.weight_v"])


def test_convert_cli(tmp_path, t5_dir, monkeypatch):
    cfg = pretrained_text_config(t5_dir)
    official = official_state_dict(cfg)
    torch.save({"state_dict": official}, tmp_path / "etta.ckpt")
    monkeypatch.setitem(E.PRESETS, "tiny-t5", cfg)
    assert (
        cli_main(["convert", str(tmp_path / "etta.ckpt"), str(tmp_path / "ours.safetensors"), "--config", "tiny-t5"])
        == 0
    )
    converted = E.load(tmp_path / "ours.safetensors")
    assert converted.cfg == cfg
    assert_same_tensors(converted, E.load(tmp_path / "etta.ckpt", config=cfg))
    assert cli_main(["convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "x.safetensors")]) == 2


@pytest.mark.slow
def test_full_size_official_checkpoint_loads_with_every_tensor_in_place(tmp_path):
    """The reference listing at full size with random bf16 values: written as an official .safetensors,
    loaded as the etta model, every tensor compared."""
    cfg = E.PRESETS["etta"]
    names = official_state_dict(cfg, device="meta")
    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(v.shape, generator=g, dtype=torch.bfloat16) for k, v in names.items()}
    safetensors.torch.save_file(official, tmp_path / "etta.safetensors")
    model = E.load(tmp_path / "etta.safetensors")
    ours = model.state_dict()
    assert len(ours) == len(official)
    for key, value in official.items():
        target, squeeze = convert_key(key)
        assert torch.equal(ours[target], value[..., 0] if squeeze else value), key
    assert sum(p.numel() for p in model.dit.parameters()) == 1_287_988_928
