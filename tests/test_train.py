"""Training: the latent cache, the DiT and VAE trainers (loss falls, exact resume, atomic checkpoints,
the non-finite guard, config checks) and DDP / FSDP2 equivalence on CPU with gloo."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import etta_engine as E
from etta_engine.checkpoint import CheckpointError
from etta_engine.data import AudioTextDataset, read_manifest
from etta_engine.train import common
from etta_engine.train.cache import CacheConfig, LatentCache, build_cache
from etta_engine.train.dit import DiTTrainConfig, DiTTrainer, FlowModel, train_dit
from etta_engine.train.vae import VAETrainConfig, train_vae

SECONDS = 0.5  # crops of 22050 samples: 10 latent frames


def write_dataset(folder: Path, n: int = 10) -> Path:
    """Tones of different pitch, length, rate and channel count, with captions naming them."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        rate = 22050 if i % 3 == 0 else 44100
        t = np.arange(int(rate * (0.4 + 0.15 * i))) / rate
        freq = 110.0 * (1 + i % 4)
        tone = 0.4 * np.sin(2 * np.pi * freq * t)
        data = np.stack([tone, 0.5 * tone], axis=1) if i % 2 else tone
        sf.write(folder / "audio" / f"clip{i}.wav", data, rate)
        lines.append(json.dumps({"path": f"audio/clip{i}.wav", "caption": f"a steady tone at {int(freq)} hertz"}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_dataset(folder)


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    build_cache(
        CacheConfig(manifest=str(dataset), out=str(out), seconds=SECONDS, shard_size=4, batch_size=3), progress=False
    )
    return out


@pytest.fixture(scope="module")
def nodrop_model(tmp_path_factory) -> Path:
    """The tiny model without dropout, so that runs on different rank counts are comparable."""
    tiny = E.PRESETS["tiny"]
    cfg = dataclasses.replace(tiny, name="tiny-nodrop", dit=dataclasses.replace(tiny.dit, dropout=0.0))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = E.ETTAModel(cfg)
    return E.save(tmp_path_factory.mktemp("models") / "nodrop.safetensors", model)


@pytest.fixture(scope="module")
def sharp_cache(dataset, tmp_path_factory) -> tuple[Path, Path]:
    """A model whose VAE posterior is nearly a point (std ~ 1e-4) and a cache made with it: the latents are
    then a few fixed points, whose velocity field a tiny DiT learns quickly under either objective."""
    model = E.ETTAModel.from_preset("tiny")
    with torch.no_grad():
        model.vae.encoder.layers[-1].bias[model.cfg.vae.latent_dim :] = -12.0  # softplus(-12) + 1e-4
    folder = tmp_path_factory.mktemp("sharp")
    path = E.save(folder / "sharp.safetensors", model)
    out = folder / "cache"
    build_cache(CacheConfig(manifest=str(dataset), out=str(out), model=str(path), seconds=SECONDS), progress=False)
    return path, out


def dit_config(cache: Path, out: Path, **kw) -> DiTTrainConfig:
    base = dict(cache=str(cache), out=str(out), batch_size=4, lr=2e-3, warmup=0.0, log_every=2, save_every=4)
    return DiTTrainConfig(**{**base, **kw})


def read_log(run: Path) -> list[dict[str, str]]:
    lines = (run / "log.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a training checkpoint, flattened to dotted names."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", {k: state[k] for k in ("model", "ema", "optimizer", "scheduler", "rng") if k in state})
    walk("vae", state.get("vae", {}))
    return flat


def assert_same_checkpoints(a: Path, b: Path) -> None:
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 10
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]


# ------------------------------------------------------------------ the cache


def test_cache_holds_the_encodings_of_the_crops(dataset, cache):
    c = LatentCache(cache)
    assert len(c) == 10 and c.index["frames"] == 10
    assert c.index["padded"] == 1  # clip 0 (0.4 s) is shorter than the 0.5 s crop
    model = E.ETTAModel.from_preset("tiny").eval()
    data = AudioTextDataset(read_manifest(dataset), 44100, SECONDS, on_error="raise", seed=0)
    items = c.get([0, 5, 9])
    assert items["latent_mean"].shape == (3, 64, 10) and items["text"].dtype == torch.bfloat16
    for row, i in enumerate((0, 5, 9)):
        item = data[i]
        with torch.no_grad():
            mean, std = model.vae.encode(item["audio"][None, :, : 10 * 2048])
            text, mask = model.text_encoder([item["caption"]])
        assert torch.allclose(items["latent_mean"][row], mean[0], atol=1e-5)
        assert torch.allclose(items["latent_std"][row], std[0], atol=1e-5)
        assert torch.equal(items["text"][row], text[0].to(torch.bfloat16)) and torch.equal(
            items["text_mask"][row], mask[0]
        )
        assert (
            items["seconds_start"][row] == item["seconds_start"]
            and items["seconds_total"][row] == item["seconds_total"]
        )
    assert c.captions[5] == data[5]["caption"]


def test_cache_resumes_and_refuses_other_settings(dataset, cache, tmp_path):
    out = tmp_path / "cache"
    cfg = CacheConfig(manifest=str(dataset), out=str(out), seconds=SECONDS, shard_size=4, batch_size=3)
    build_cache(cfg, progress=False)
    shards = sorted(out.glob("shard_*.safetensors"))
    assert len(shards) == 3
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    (out / "index.json").unlink()
    shards[1].unlink()  # an interrupted run: one shard and the index missing
    build_cache(cfg, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard_*.safetensors"))}
    assert after[shards[0].name] == before[shards[0].name] and after[shards[2].name] == before[shards[2].name]
    a, b = LatentCache(cache).get(list(range(10))), LatentCache(out).get(list(range(10)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="other settings"):
        build_cache(dataclasses.replace(cfg, seed=1), progress=False)


def test_cache_skips_unreadable_files_and_names_long_captions(dataset, tmp_path):
    manifest = dataset.parent / f"{tmp_path.name}.jsonl"  # beside the audio: the manifest's paths are relative
    lines = dataset.read_text().splitlines()
    lines.insert(2, json.dumps({"path": str(tmp_path / "missing.wav"), "caption": "gone"}))
    manifest.write_text("\n".join(lines) + "\n")
    build_cache(CacheConfig(manifest=str(manifest), out=str(tmp_path / "c"), seconds=SECONDS), progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["items"] == 10 and index["skipped"][0]["index"] == 2 and "missing.wav" in index["skipped"][0]["path"]
    long = dataset.parent / f"{tmp_path.name}_long.jsonl"
    long.write_text(lines[0].replace("a steady tone", "x" * 200) + "\n")
    with pytest.raises(ValueError, match="over the text encoder's limit.*--truncate"):
        build_cache(CacheConfig(manifest=str(long), out=str(tmp_path / "l"), seconds=SECONDS), progress=False)


# ------------------------------------------------------------------ the DiT trainer


def test_dit_loss_falls_and_the_trained_model_generates(cache, tmp_path):
    run = tmp_path / "run"
    cfg = dit_config(cache, run, max_steps=100, batch_size=8, lr=3e-3, precision="fp32", log_every=20, save_every=50)
    model_path = train_dit(dataclasses.replace(cfg, sample_every=50, sample_nfe=2), False)
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == [f"step_{s:07d}_{i}.wav" for s in (50, 100) for i in (0, 1)]
    assert sf.info(run / "samples" / samples[0]).samplerate == 44100
    losses = [float(r["loss"]) for r in read_log(run)]
    # the flow-matching loss keeps a large irreducible part (the noise); the learnable part falls
    assert len(losses) == 5 and losses[-1] < 0.92 * losses[0]
    assert all(float(r["samples_per_s"]) > 0 for r in read_log(run))
    model = E.load(model_path)
    assert isinstance(model, E.ETTAModel)
    audio = E.Pipeline(model, device="cpu").generate(
        "a steady tone at 220 hertz", seconds=SECONDS, nfe=2, progress=False
    )
    assert audio.waveform.shape == (1, 2, 22050) and torch.isfinite(audio.waveform).all()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_dit_resume_is_bit_identical(cache, tmp_path, precision):
    straight = tmp_path / "straight"
    train_dit(dit_config(cache, straight, max_steps=8, precision=precision, activation_checkpointing=True), False)
    split = tmp_path / "split"
    train_dit(dit_config(cache, split, max_steps=4, precision=precision, activation_checkpointing=True), False)
    cfg = dit_config(cache, split, max_steps=8, precision=precision, activation_checkpointing=True)
    train_dit(dataclasses.replace(cfg, resume=str(split / "checkpoints")), False)
    assert_same_checkpoints(straight / "checkpoints" / "step_0000008.pt", split / "checkpoints" / "step_0000008.pt")


def text_encoder_state(model: E.ETTAModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.")}


def test_train_text_encoder_trains_the_t5_on_the_cached_captions_and_exports_its_ema(cache, tmp_path):
    trainer = DiTTrainer(
        dit_config(cache, tmp_path / "probe", train_text_encoder=True), common.Dist(0, 1, torch.device("cpu"))
    )
    indices = [3, 1, 7]
    batch = trainer._batch(indices)
    assert batch["text"].dtype == torch.int64 and batch["text"].shape == (3, trainer.base.cfg.text.max_length)
    cached = LatentCache(cache).get(indices)
    assert torch.equal(batch["text_mask"], cached["text_mask"])
    with torch.no_grad():  # the ids of item i are its caption's: the T5 reproduces the cached embeddings (bf16)
        encoded = trainer.base.text_encoder.encode(batch["text"], batch["text_mask"])
    assert (encoded - cached["text"].float()).abs().max() < 0.05

    base = E.ETTAModel.from_preset("tiny")
    frozen = E.load(train_dit(dit_config(cache, tmp_path / "frozen", max_steps=4), False))
    trained = E.load(train_dit(dit_config(cache, tmp_path / "trained", max_steps=4, train_text_encoder=True), False))
    assert all(torch.equal(v, text_encoder_state(base)[k]) for k, v in text_encoder_state(frozen).items())
    changed = [k for k, v in text_encoder_state(trained).items() if not torch.equal(v, text_encoder_state(base)[k])]
    assert len(changed) > 5  # attention, feed-forward and embedding weights moved
    ema = torch.load(tmp_path / "trained" / "checkpoints" / "step_0000004.pt", weights_only=True)["ema"]
    for k, v in text_encoder_state(trained).items():
        assert torch.equal(v, ema[k]), k  # the exported T5 is the EMA's
    assert not trained.text_encoder.model.training and not any(
        p.requires_grad for p in trained.text_encoder.parameters()
    )
    prompt = ["a steady tone at 220 hertz"]
    assert not torch.equal(trained.text_encoder(prompt)[0], frozen.text_encoder(prompt)[0])


def test_train_text_encoder_resumes_bit_identically(cache, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_dit(dit_config(cache, straight, max_steps=8, train_text_encoder=True), False)
    train_dit(dit_config(cache, split, max_steps=4, train_text_encoder=True), False)
    cfg = dit_config(cache, split, max_steps=8, train_text_encoder=True, resume=str(split / "checkpoints"))
    train_dit(cfg, False)
    assert_same_checkpoints(straight / "checkpoints" / "step_0000008.pt", split / "checkpoints" / "step_0000008.pt")


def test_train_text_encoder_refuses_a_pretrained_t5_and_adapter_stages(dataset, cache, tmp_path, t5_dir):
    with pytest.raises(ValueError, match="adapter_stage 0"):
        dit_config(cache, tmp_path / "a", adapter_stage=1, train_text_encoder=True)
    tiny = E.PRESETS["tiny"]
    cfg = dataclasses.replace(
        tiny,
        name="tiny-t5",
        text=E.TextConfig(pretrained=os.fspath(t5_dir), dim=48, max_length=64),
        dit=dataclasses.replace(tiny.dit, cond_dim=48, cross_heads=4, global_cond_dim=96),
    )
    model = E.ETTAModel(cfg)
    model.load_text_encoder()
    path = E.save(tmp_path / "t5model.safetensors", model)
    t5_cache = tmp_path / "t5cache"
    build_cache(
        CacheConfig(
            manifest=str(dataset), out=str(t5_cache), model=str(path), seconds=SECONDS, text_encoder=str(t5_dir)
        ),
        progress=False,
    )
    run = dit_config(t5_cache, tmp_path / "t5run", model=str(path), text_encoder=str(t5_dir), train_text_encoder=True)
    with pytest.raises(ValueError, match="pretrained T5"):
        train_dit(run, False)


def test_resume_refuses_a_different_config(cache, tmp_path):
    run = tmp_path / "run"
    train_dit(dit_config(cache, run, max_steps=4), False)
    with pytest.raises(CheckpointError, match=r"different config:\n  lr: checkpoint 0.002 vs now 0.001"):
        train_dit(dit_config(cache, run, max_steps=8, lr=1e-3, resume=str(run / "checkpoints")), False)
    with pytest.raises(FileNotFoundError, match="no last.json"):
        train_dit(dit_config(cache, run, max_steps=8, resume=str(tmp_path)), False)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real_save = torch.save

    def flaky_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 8) dies half-written
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        train_dit(dit_config(cache, run, max_steps=8), False)
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.json", "step_0000004.pt"]  # no half-written file
    assert json.loads((folder / "last.json").read_text())["step"] == 4
    monkeypatch.setattr(torch, "save", real_save)
    train_dit(dit_config(cache, run, max_steps=8, resume=str(folder)), False)  # the survivor resumes
    assert json.loads((folder / "last.json").read_text())["step"] == 8


def test_non_finite_losses_are_skipped_then_stop_the_run(cache, tmp_path, monkeypatch):
    real_forward = FlowModel.forward
    bad_steps = {2, 3}
    state = {"calls": 0}

    def sometimes_nan(self, *args):
        out = real_forward(self, *args)
        state["calls"] += 1
        return out * math.nan if state["calls"] in bad_steps else out

    monkeypatch.setattr(FlowModel, "forward", sometimes_nan)
    run = tmp_path / "run"
    train_dit(dit_config(cache, run, max_steps=6, log_every=6), False)
    assert read_log(run)[-1]["skipped_steps"] == "2"
    ckpt = torch.load(run / "checkpoints" / "step_0000006.pt", weights_only=True)
    assert ckpt["guard"] == {"in_a_row": 0, "total": 2}

    bad_steps.update(range(1, 100))
    state["calls"] = 0
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss or gradient"):
        train_dit(dit_config(cache, tmp_path / "run2", max_steps=20, max_bad_steps=3), False)


def test_train_config_errors_are_named(cache, tmp_path):
    with pytest.raises(ValueError, match=r"objective='eps'; allowed: \['rectified_flow', 'v_diffusion'\]"):
        dit_config(cache, tmp_path, objective="eps")
    with pytest.raises(ValueError, match="batch_size=64 exceeds the 10 cached items"):
        train_dit(dit_config(cache, tmp_path / "r", batch_size=64), False)
    with pytest.raises(ValueError, match="cfg_dropout=1.5 is outside"):
        dit_config(cache, tmp_path, cfg_dropout=1.5)


@pytest.mark.parametrize("objective", ["rectified_flow", "v_diffusion"])
def test_both_objectives_learn_a_few_fixed_latents(sharp_cache, tmp_path, objective):
    model, cache = sharp_cache
    cfg = dit_config(cache, tmp_path / "run", model=str(model), max_steps=100, batch_size=8, lr=3e-3,
                     objective=objective, t_sampler="uniform", log_every=20, save_every=100)  # fmt: skip
    train_dit(cfg, False)
    losses = [float(r["loss"]) for r in read_log(tmp_path / "run")]
    assert losses[-1] < 0.7 * losses[0]


# ------------------------------------------------------------------ data parallelism on CPU (gloo)


def torchrun(*args: str, nproc: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run([*cmd, "-m", "etta_engine.cli", *args], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.slow
def test_two_ranks_step_like_one_rank_with_the_whole_batch(cache, nodrop_model, tmp_path):
    # fp32: in bf16 the matmuls round differently for batches of 2 and 4, and Adam's first step, close to
    # lr * sign(gradient), turns that rounding into +-lr on the weights whose gradient is nearly zero.
    common_args = ["--model", str(nodrop_model), "--batch-size", "4", "--lr", "1e-3", "--warmup", "0", "--quiet"]
    common_args += ["--precision", "fp32"]
    args = ["train", "dit", str(cache)]
    single = dit_config(cache, tmp_path / "one", max_steps=1, model=str(nodrop_model), lr=1e-3, precision="fp32")
    train_dit(single, False)
    torchrun(*args, str(tmp_path / "ddp"), *common_args, "--max-steps", "1", nproc=2)
    torchrun(*args, str(tmp_path / "fsdp"), *common_args, "--max-steps", "1", "--strategy", "fsdp", nproc=2)
    one = checkpoint_tensors(tmp_path / "one" / "checkpoints" / "step_0000001.pt")
    for run in ("ddp", "fsdp"):
        other = checkpoint_tensors(tmp_path / run / "checkpoints" / "step_0000001.pt")
        for key in [k for k in one if k.startswith((".model", ".ema"))]:
            assert torch.allclose(one[key], other[key], rtol=1e-5, atol=1e-7), (run, key)
        assert not torch.equal(one[".model.dit.blocks.0.adaln.weight"], torch.zeros(1))

    # FSDP2 checkpoints resume exactly too: 1 + 1 steps equal 2 steps.
    torchrun(*args, str(tmp_path / "fsdp"), *common_args, "--max-steps", "2", "--strategy", "fsdp",
             "--resume", str(tmp_path / "fsdp" / "checkpoints"), nproc=2)  # fmt: skip
    torchrun(*args, str(tmp_path / "fsdp2"), *common_args, "--max-steps", "2", "--strategy", "fsdp", nproc=2)
    assert_same_checkpoints(tmp_path / "fsdp" / "checkpoints" / "step_0000002.pt",
                            tmp_path / "fsdp2" / "checkpoints" / "step_0000002.pt")  # fmt: skip


# ------------------------------------------------------------------ the VAE trainer


def vae_config(manifest: Path, out: Path, **kw) -> VAETrainConfig:
    base = dict(manifest=str(manifest), out=str(out), sample_size=8192, batch_size=2, lr=3e-3, warmup=0.0,
                discriminator_filters=8, log_every=5, save_every=5)  # fmt: skip
    return VAETrainConfig(**{**base, **kw})


def test_vae_loss_falls_and_the_adversarial_phase_runs(dataset, tmp_path):
    run = tmp_path / "vae"
    path = train_vae(vae_config(dataset, run, max_steps=40, adversarial_start=30, save_every=40), False)
    rows = read_log(run)
    spectral = [float(r["mrstft"]) for r in rows]
    assert spectral[5] < 0.7 * spectral[0]
    assert all(math.isfinite(float(r["disc_loss"])) for r in rows[-2:])  # the discriminator trained at the end
    assert rows[0]["disc_loss"] == ""
    vae = E.load(path)
    assert isinstance(vae, E.VAE)


def test_vae_resume_is_bit_identical(dataset, tmp_path):
    straight, split = tmp_path / "a", tmp_path / "b"
    train_vae(vae_config(dataset, straight, max_steps=10, adversarial_start=4), False)
    train_vae(vae_config(dataset, split, max_steps=5, adversarial_start=4), False)
    train_vae(vae_config(dataset, split, max_steps=10, adversarial_start=4, resume=str(split / "checkpoints")), False)
    assert_same_checkpoints(straight / "checkpoints" / "step_0000010.pt", split / "checkpoints" / "step_0000010.pt")


def test_inverse_lr_and_ema_warmup():
    f = common.inverse_lr_lambda(inv_gamma=1e6, power=0.5, warmup=0.99)
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1 - 0.99**100, rel=1e-3)
    assert common.inverse_lr_lambda(10.0, 1.0, 0.0)(30) == pytest.approx(0.25)
    ema = common.EMA(torch.nn.Linear(2, 2), beta=0.9999, power=0.75)
    decays = []
    for _ in range(3):
        decays.append(ema.decay())
        ema.updates += 1
    assert decays == pytest.approx([0.0, 1 - 2**-0.75, 1 - 3**-0.75])
    ema.updates = 10**9
    assert ema.decay() == 0.9999


def test_cache_command_line(dataset, tmp_path):
    from etta_engine.cli import main

    out = tmp_path / "c"
    assert main(["cache", str(dataset), str(out), "--seconds", "0.25", "--no-random-crop", "--shard-size", "6",
                 "--quiet"]) == 0  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert index["settings"]["random_crop"] is False and len(index["shards"]) == 2 and index["frames"] == 5
    assert index["padded"] == 0  # every clip is longer than 0.25 s
    assert main(["train", "dit", str(out), str(tmp_path / "run"), "--objective", "eps", "--quiet"]) == 2
