"""Staged adapter training through ``etta train dit --adapter-stage N``: what each stage's checkpoint holds, the
chain of references back to the base, exact resume, and the adapter in generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open
from test_train import SECONDS, assert_same_checkpoints, write_dataset

import etta_engine as E
from etta_engine import cli
from etta_engine.checkpoint import file_sha256, load_adapter
from etta_engine.pipeline import Pipeline
from etta_engine.train.cache import CacheConfig, build_cache
from etta_engine.train.dit import DiTTrainConfig, train_dit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    manifest = write_dataset(folder / "data", n=6)
    cache = folder / "cache"
    build_cache(CacheConfig(manifest=str(manifest), out=str(cache), seconds=SECONDS, batch_size=3), progress=False)
    # A base whose output depends on its insides (an untrained DiT's zero final layer would block every gradient).
    model = E.ETTAModel.from_preset("tiny")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    base = E.save(folder / "base.safetensors", model)
    return cache, base


def config(cache, base, out, **kw) -> DiTTrainConfig:
    options = dict(batch_size=4, lr=3e-3, warmup=0.0, log_every=2, save_every=4, precision="fp32", lora_rank=4)
    return DiTTrainConfig(cache=str(cache), out=str(out), model=str(base), **{**options, **kw})


def keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_three_stages_save_what_they_train_and_chain_back_to_the_base(setup, tmp_path):
    cache, base = setup
    base_sha = file_sha256(base)
    a1 = train_dit(config(cache, base, tmp_path / "s1", adapter_stage=1, max_steps=6), False)
    a2 = train_dit(config(cache, base, tmp_path / "s2", adapter_stage=2, adapter=str(a1), max_steps=4), False)
    # stage 3 from the command line
    argv = ["train", "dit", str(cache), str(tmp_path / "s3"), "--model", str(base), "--adapter-stage", "3"]
    argv += ["--adapter", str(a2), "--max-steps", "4", "--batch-size", "4", "--lr", "0.05", "--precision", "fp32"]
    assert cli.main([*argv, "--quiet"]) == 0
    a3 = tmp_path / "s3" / "adapter.safetensors"

    depth = E.PRESETS["tiny"].dit.depth
    gates = {f"layers.{i}.gate" for i in range(depth)}
    k1, k2, k3 = keys(a1), keys(a2), keys(a3)
    assert gates < k1 and "null_tokens" in k1 and "projector.norm.weight" in k1
    assert not any(k.startswith("lora.") for k in k1)
    assert k2 == k1 | {k for k in k2 if k.startswith("lora.")} and len(k2 - k1) == 2 * 5 * depth
    assert k3 == gates
    with safe_open(str(a3), "pt") as f:
        meta = f.metadata()
    assert (meta["stage"], meta["base"], meta["base_sha256"]) == ("3", str(base.resolve()), base_sha)
    assert meta["parent"] == str(a2.resolve())

    stage2, _ = load_adapter(a2)
    stage3, _ = load_adapter(a3)
    changed = {k for k, v in stage3.state_dict().items() if not torch.equal(v, stage2.state_dict()[k])}
    assert changed == gates  # stage 3 moved the gates and nothing else
    assert file_sha256(base) == base_sha  # the base model was never written

    pipe = Pipeline.from_adapter(a3, device="cpu")
    clip = 0.3 * torch.randn(2, 22050, generator=torch.Generator().manual_seed(0))
    audio = pipe.generate("a steady tone", audio_prompt=clip, seconds=SECONDS, nfe=2, progress=False)
    assert audio.waveform.shape == (1, 2, 22050) and torch.isfinite(audio.waveform).all()


def test_an_adapter_stage_resumes_bit_identically(setup, tmp_path):
    cache, base = setup
    straight = tmp_path / "straight"
    train_dit(config(cache, base, straight, adapter_stage=1, max_steps=8), False)
    split = tmp_path / "split"
    train_dit(config(cache, base, split, adapter_stage=1, max_steps=4), False)
    cfg = config(cache, base, split, adapter_stage=1, max_steps=8)
    train_dit(dataclasses.replace(cfg, resume=str(split / "checkpoints")), False)
    assert_same_checkpoints(straight / "checkpoints" / "step_0000008.pt", split / "checkpoints" / "step_0000008.pt")
    state = torch.load(split / "checkpoints" / "step_0000008.pt", weights_only=True)
    assert not any(k.startswith(("dit.", "conditioner.")) for k in state["model"])  # the adapter only


def test_adapter_stage_errors_are_named(setup, tmp_path):
    cache, base = setup
    with pytest.raises(ValueError, match="stage 3 trains the gates of an existing adapter"):
        train_dit(config(cache, base, tmp_path / "r", adapter_stage=3), False)
    with pytest.raises(ValueError, match="adapter_stage=5; allowed"):
        config(cache, base, tmp_path / "r", adapter_stage=5)
    with pytest.raises(ValueError, match="needs adapter_stage 1, 2 or 3"):
        config(cache, base, tmp_path / "r", adapter="x.safetensors")
    with pytest.raises(ValueError, match="the cache holds no audio embeddings; the 'clap' provider needs them"):
        train_dit(config(cache, base, tmp_path / "r", adapter_stage=1, audio_provider="clap"), False)


def test_a_provider_s_embeddings_cached_by_etta_cache_train_an_adapter(setup, tmp_path, monkeypatch):
    """The pluggable path: embeddings of another provider (here a stand-in for LAION-CLAP, whose weights are not
    available offline) are computed once by the cache and read by the adapter stage."""
    import sys
    import types

    class StandInClap:
        def __init__(self, enable_fusion, amodel, device):
            pass

        def load_ckpt(self, path, verbose):
            pass

        def get_audio_embedding_from_data(self, x, use_tensor):
            return torch.stack([x[:, i::512].std(dim=1) for i in range(512)], dim=1)  # (B, 512)

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=StandInClap))
    (tmp_path / "clap.pt").write_bytes(b"weights")
    _, base = setup
    manifest = write_dataset(tmp_path / "data", n=4)
    cache = tmp_path / "cache"
    settings = dict(manifest=str(manifest), out=str(cache), seconds=SECONDS, model=str(base))
    build_cache(CacheConfig(**settings, audio_embedder="clap", clap_checkpoint=str(tmp_path / "clap.pt")), False)
    from etta_engine.train.cache import LatentCache

    batch = LatentCache(cache).get([0, 3])
    assert batch["audio_embedding"].shape == (2, 512) and batch["audio_embedding"].abs().sum() > 0
    path = train_dit(config(cache, base, tmp_path / "run", adapter_stage=1, audio_provider="clap", max_steps=2), False)
    adapter, _ = load_adapter(path)
    assert (adapter.cfg.provider, adapter.cfg.embed_dim) == ("clap", 512)
    with pytest.raises(ValueError, match="audio_embedder='mfcc'; allowed"):
        CacheConfig(**settings, audio_embedder="mfcc")


def test_a_cache_encoded_by_other_vae_weights_is_refused(setup, tmp_path):
    cache, _ = setup
    other = E.save(tmp_path / "other.safetensors", E.ETTAModel.from_preset("tiny", seed=1))  # same config
    with pytest.raises(ValueError, match="encoded by a VAE or text encoder with other weights"):
        train_dit(config(cache, other, tmp_path / "r", max_steps=1), False)
