"""The audio-prompt adapter: a fresh adapter changes nothing, the gated path is what it says, LoRA hooks equal
folded weights, each training stage trains only its parameters, checkpoints hold only a stage's tensors, the
embedding providers, the pipeline's audio prompts and bad inputs."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import etta_engine as E
from etta_engine.audio_prompt import ClapProvider, get_provider
from etta_engine.checkpoint import CheckpointError, load_adapter, save_adapter
from etta_engine.models.adapter import AdapterConfig, AudioAdapter
from etta_engine.ops import attention_ref
from etta_engine.pipeline import Pipeline
from etta_engine.train.adapter import AdapterFlowModel, set_trainable, stage_adapter, trained_names
from etta_engine.train.dit import FlowModel

EMBED = 24


@pytest.fixture(scope="module")
def model() -> E.ETTAModel:
    """The tiny model with its zero-initialised layers perturbed, so that every path changes the output."""
    m = E.ETTAModel.from_preset("tiny")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def adapter_for(model, lora_rank=0, gates=0.0, seed=0) -> AudioAdapter:
    torch.manual_seed(seed)
    adapter = AudioAdapter(AdapterConfig.for_dit(model.cfg.dit, embed_dim=EMBED, lora_rank=lora_rank)).eval()
    with torch.no_grad():
        for gate in adapter.gates():
            gate.fill_(gates)
        for lora in adapter.lora.values():
            lora.up.normal_(0.0, 0.05)
        adapter.null_tokens.normal_()
    return adapter


def inputs(model, B=2, T=7):
    torch.manual_seed(3)
    x = torch.randn(B, model.cfg.dit.io_channels, T)
    t = torch.rand(B)
    cond = model.condition(["a dog barks", "rain on a roof"][:B], 0.0, 1.0)
    return x, t, cond


@torch.no_grad()
def test_a_fresh_adapter_leaves_the_output_bit_identical(model):
    x, t, cond = inputs(model)
    adapter = AudioAdapter(AdapterConfig.for_dit(model.cfg.dit, embed_dim=EMBED, lora_rank=4)).eval()
    tokens = adapter.tokens(torch.randn(2, EMBED))
    adapter.attach_lora(model.dit)  # fresh LoRA: B = 0
    try:
        out = model.dit(x, t, *cond, audio=adapter.prompt(tokens, scale=3.0))
    finally:
        adapter.detach_lora()
    assert torch.equal(out, model.dit(x, t, *cond))


@torch.no_grad()
def test_the_gated_path_is_x_plus_tanh_g_times_cross_attention(model):
    adapter = adapter_for(model, gates=0.4)
    layer = adapter.layers[0]
    x = torch.randn(2, 5, model.cfg.dit.width)
    tokens = adapter.tokens(torch.randn(2, EMBED))
    heads, dh = layer.heads, layer.head_dim
    q = layer.q(F.layer_norm(x, (x.shape[-1],), layer.norm.weight, None, 1e-5)).view(2, 5, heads, dh)
    k, v = layer.kv(tokens).view(2, 8, 2, heads, dh).unbind(2)
    expected = x + 0.5 * math.tanh(0.4) * layer.out(attention_ref(q, k, v).reshape(2, 5, -1))
    torch.testing.assert_close(layer(x, tokens, scale=0.5), expected, rtol=1e-5, atol=1e-5)
    # audio_prompt_scale 0 is the text-only model, exactly
    assert torch.equal(layer(x, tokens, scale=0.0), x)


@torch.no_grad()
def test_the_projector_makes_8_tokens_with_4_mlps_of_2_tokens(model):
    adapter = adapter_for(model)
    embedding = torch.randn(3, EMBED)
    tokens = adapter.tokens(embedding)
    assert tokens.shape == (3, 8, model.cfg.dit.cond_dim) and len(adapter.projector.mlps) == 4
    adapter.projector.mlps[2][2].bias.add_(1.0)  # MLP 2 makes tokens 4 and 5 only
    changed = (adapter.tokens(embedding) != tokens).flatten(2).any(dim=2).any(dim=0)
    assert changed.tolist() == [False] * 4 + [True] * 2 + [False] * 2


@torch.no_grad()
def test_lora_hooks_equal_folded_weights_and_leave_the_state_dict_alone(model):
    x, t, cond = inputs(model)
    adapter = adapter_for(model, lora_rank=4, gates=0.3)
    tokens = adapter.tokens(torch.randn(2, EMBED))
    keys = set(model.dit.state_dict())
    adapter.attach_lora(model.dit)
    try:
        hooked = model.dit(x, t, *cond, audio=adapter.prompt(tokens))
        assert set(model.dit.state_dict()) == keys
    finally:
        adapter.detach_lora()
    plain = model.dit(x, t, *cond, audio=adapter.prompt(tokens))
    assert (hooked - plain).abs().max() > 1e-3  # the LoRA update does something
    folded = copy.deepcopy(model.dit)
    adapter.fold_lora(folded)
    torch.testing.assert_close(folded(x, t, *cond, audio=adapter.prompt(tokens)), hooked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_only_its_parameters(model, stage):
    base = copy.deepcopy(model)
    previous = adapter_for(base, lora_rank=4 if stage == 3 else 0, gates=0.5)
    adapter = stage_adapter(stage, base, previous, embed_dim=EMBED, provider="latent_stats", lora_rank=4)
    with torch.no_grad():  # nonzero gates and LoRA B, so that every trainable parameter gets a gradient
        for gate in adapter.gates():
            gate.fill_(0.5)
        for lora in adapter.lora.values():
            lora.up.normal_(0.0, 0.05)
    flow = AdapterFlowModel(FlowModel(base.dit, base.conditioner).train(), adapter)
    x, t, _ = inputs(base)
    text, mask = base.text_encoder(["a dog barks", "rain on a roof"])
    B = x.shape[0]
    out = flow(x, t, text, mask, torch.zeros(B), torch.ones(B), torch.zeros(B, dtype=torch.bool),
               torch.randn(B, EMBED), torch.tensor([False, True]))  # fmt: skip
    out.square().mean().backward()
    adapter.detach_lora()

    def has_grad(p):
        return p.grad is not None and p.grad.abs().sum() > 0

    assert not any(p.grad is not None for p in flow.base.parameters()), "the base model is frozen"
    got = {n for n, p in adapter.named_parameters() if has_grad(p)}
    gates = {f"layers.{i}.gate" for i in range(base.cfg.dit.depth)}
    lora = {n for n, _ in adapter.named_parameters() if n.startswith("lora.")}
    if stage == 3:
        assert got == gates and set(trained_names(adapter)) == gates
    else:
        assert gates <= got and "projector.mlps.0.0.weight" in got and "null_tokens" in got
        assert "layers.0.kv.weight" in got
        assert (got & lora) == (lora if stage == 2 else set())
        assert bool(lora) == (stage == 2)


def test_stage_rules_and_errors(model):
    with pytest.raises(ValueError, match="stage 3 trains the gates of an existing adapter"):
        stage_adapter(3, model, None, embed_dim=EMBED, provider="latent_stats")
    with pytest.raises(ValueError, match="adapter stage 4"):
        stage_adapter(4, model, None, embed_dim=EMBED, provider="latent_stats")
    previous = adapter_for(model)
    with pytest.raises(ValueError, match="takes 'latent_stats' embeddings of size 24; this run gives 'clap'"):
        stage_adapter(1, model, previous, embed_dim=512, provider="clap")
    stage2 = stage_adapter(2, model, previous, embed_dim=EMBED, provider="latent_stats", lora_rank=3)
    assert stage2.cfg.lora_rank == 3
    torch.testing.assert_close(stage2.layers[1].q.weight, previous.layers[1].q.weight, rtol=0, atol=0)
    other = dataclasses.replace(model.cfg.dit, depth=model.cfg.dit.depth + 1)
    with pytest.raises(ValueError, match=r"made for a DiT with \(width, cond_dim, cross_heads, depth\)"):
        previous.cfg.check_dit(other)
    set_trainable(stage2, 1)
    assert not any(n.startswith("lora.") for n in trained_names(stage2))


def test_adapter_checkpoints_hold_a_stage_and_resolve_their_parents(model, tmp_path):
    base = E.save(tmp_path / "base.safetensors", model)
    stage1 = adapter_for(model, lora_rank=4, gates=0.2)
    p1 = save_adapter(tmp_path / "a1.safetensors", stage1, stage=2, base=base)
    stage3 = copy.deepcopy(stage1)
    with torch.no_grad():
        for gate in stage3.gates():
            gate.fill_(0.9)
    names = [f"layers.{i}.gate" for i in range(model.cfg.dit.depth)]
    p3 = save_adapter(tmp_path / "a3.safetensors", stage3, stage=3, base=base, parent=p1, names=names)
    from safetensors import safe_open

    with safe_open(str(p3), "pt") as f:
        assert sorted(f.keys()) == sorted(names)
        assert f.metadata()["base"] == str(base.resolve()) and f.metadata()["parent"] == str(p1.resolve())
    loaded, meta = load_adapter(p3)
    assert meta["stage"] == "3"
    for (name, a), b in zip(stage3.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # a changed parent is refused, and so is a chain trained on two bases
    save_adapter(tmp_path / "a1.safetensors", adapter_for(model, lora_rank=4, seed=5), stage=2, base=base)
    with pytest.raises(CheckpointError, match="its parent .* changed since it was written"):
        load_adapter(p3)
    with pytest.raises(ValueError, match=r"\['nope'\] are not tensors of the adapter"):
        save_adapter(tmp_path / "x.safetensors", stage1, stage=1, base=base, names=["nope"])
    with pytest.raises(CheckpointError, match="not an etta_engine adapter checkpoint"):
        load_adapter(base)


# ------------------------------------------------------------------ embedding providers


@torch.no_grad()
def test_latent_stats_are_mean_std_and_segment_means_of_the_vae_latents(model):
    provider = get_provider("latent_stats", model)
    C = model.cfg.vae.latent_dim
    assert provider.dim == 6 * C and provider.sample_rate == model.cfg.sample_rate
    latents = torch.randn(2, C, 10)
    e = provider.from_latents(latents)
    torch.testing.assert_close(e[:, :C], latents.mean(-1))
    torch.testing.assert_close(e[:, C : 2 * C], latents.std(-1))
    torch.testing.assert_close(e[:, 2 * C : 3 * C], latents[..., :2].mean(-1))  # segment 0: frames [0, 2.5)
    torch.testing.assert_close(e[:, 5 * C :], latents[..., 8:].mean(-1))  # segment 3: frames [7.5, 10)
    audio = 0.3 * torch.randn(1, 2, 16 * model.cfg.vae.downsampling_ratio)
    mean, _ = model.vae.encode(audio)
    torch.testing.assert_close(provider.embed(audio, model.cfg.sample_rate), provider.from_latents(mean))
    # other rates are resampled, mono is duplicated for the stereo VAE
    assert provider.embed(audio[0, :1, :8000], 16000).shape == (1, provider.dim)
    with pytest.raises(ValueError, match=r"the audio prompt is too short: 0.002 s; at least 0.186 s"):
        provider.embed(torch.zeros(2, 88), model.cfg.sample_rate)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        provider.embed(torch.full((2, 44100), math.nan), model.cfg.sample_rate)
    with pytest.raises(ValueError, match="unknown audio embedding provider 'mfcc'"):
        get_provider("mfcc", model)


def test_clap_provider_needs_its_package_and_a_local_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "laion_clap", None)
    with pytest.raises(ImportError, match="needs the laion-clap package"):
        ClapProvider(tmp_path / "clap.pt")
    with pytest.raises(ValueError, match="needs checkpoint="):
        get_provider("clap")

    calls = {}

    class FakeClap:
        def __init__(self, enable_fusion, amodel, device):
            calls["init"] = (enable_fusion, amodel)

        def load_ckpt(self, path, verbose):
            calls["ckpt"] = path

        def get_audio_embedding_from_data(self, x, use_tensor):
            calls["x"] = x
            return x[:, :512] * 2

    monkeypatch.setitem(sys.modules, "laion_clap", types.SimpleNamespace(CLAP_Module=FakeClap))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ClapProvider(tmp_path / "clap.pt")
    (tmp_path / "clap.pt").write_bytes(b"x")
    provider = ClapProvider(tmp_path / "clap.pt")
    assert calls["init"] == (False, "HTSAT-tiny") and calls["ckpt"] == str(tmp_path / "clap.pt")
    stereo = torch.stack([torch.full((24000,), 0.5), torch.full((24000,), 0.25)])  # 1 s at 24 kHz
    e = provider.embed(stereo, 24000)
    assert calls["x"].shape == (1, 48000)  # resampled to 48 kHz mono
    assert e.shape == (1, 512)
    torch.testing.assert_close(e[0, 100:400], torch.full((300,), 2 * round(0.375 * 32767) / 32767), atol=2e-3, rtol=0)


# ------------------------------------------------------------------ the pipeline


@pytest.fixture()
def adapter_path(model, tmp_path):
    base = E.save(tmp_path / "base.safetensors", model)
    adapter = adapter_for(model, lora_rank=4, gates=0.6)
    adapter = AudioAdapter(dataclasses.replace(adapter.cfg, embed_dim=6 * model.cfg.vae.latent_dim, lora_rank=4))
    with torch.no_grad():
        for gate in adapter.gates():
            gate.fill_(0.6)
        adapter.null_tokens.normal_()
    return save_adapter(tmp_path / "adapter.safetensors", adapter, stage=1, base=base), base


def test_pipeline_audio_prompts(model, adapter_path):
    path, base = adapter_path
    pipe = Pipeline.from_adapter(path, device="cpu")
    plain = Pipeline(E.load(base), device="cpu")
    kw = dict(seconds=0.5, nfe=3, progress=False, cfg_scale=2.0)
    clip = 0.3 * torch.randn(2, 22050, generator=torch.Generator().manual_seed(0))
    with_prompt = pipe.generate("a dog barks", audio_prompt=clip, **kw).waveform
    # scale 0 is the text-only model (the adapter had no trained LoRA, so the base is unchanged), exactly on the
    # plain path; the engine path equals it within its own tolerance (tests/test_engine.py)
    pipe.use_engine = plain.use_engine = False
    torch.testing.assert_close(
        pipe.generate("a dog barks", audio_prompt=clip, audio_prompt_scale=0.0, **kw).waveform,
        plain.generate("a dog barks", **kw).waveform,
        rtol=0,
        atol=0,
    )
    assert (with_prompt - plain.generate("a dog barks", **kw).waveform).abs().max() > 1e-4
    pipe.use_engine = plain.use_engine = True
    # a clip and its embedding are the same prompt; one prompt serves every text prompt
    embedding = pipe.audio_embedding(clip, 44100)
    torch.testing.assert_close(pipe.generate("a dog barks", audio_prompt=embedding[0], **kw).waveform, with_prompt)
    two = pipe.generate(["a dog barks", "rain"], audio_prompt=clip, **kw).waveform
    torch.testing.assert_close(two[:1], with_prompt, rtol=1e-4, atol=1e-5)
    dim = 6 * model.cfg.vae.latent_dim
    with pytest.raises(ValueError, match=rf"must have shape \(B, {dim}\) for this adapter, got \(1, {dim - 1}\)"):
        pipe.generate("a dog barks", audio_prompt=torch.zeros(1, dim - 1), **kw)
    with pytest.raises(ValueError, match="got 3 audio prompts for 1 prompts"):
        pipe.generate("a dog barks", audio_prompt=torch.zeros(3, dim), **kw)
    with pytest.raises(ValueError, match="audio_prompt_scale=-1.0 must be"):
        pipe.generate("a dog barks", audio_prompt=clip, audio_prompt_scale=-1.0, **kw)
    with pytest.raises(ValueError, match="the audio prompt is too short"):
        pipe.generate("a dog barks", audio_prompt=torch.zeros(2, 5000), **kw)
    with pytest.raises(RuntimeError, match="audio prompts need an adapter"):
        plain.generate("a dog barks", audio_prompt=clip, **kw)
    with pytest.raises(RuntimeError, match="already has an adapter"):
        pipe.load_adapter(path)


@torch.no_grad()
@pytest.mark.parametrize("cuda_graph", [True, "eager"])
def test_the_engine_runs_audio_prompts_like_the_plain_model(model, cuda_graph):
    from etta_engine.engine import DiTEngine, evaluation_times

    adapter = adapter_for(model, gates=0.5)
    x, _, cond = inputs(model)
    tokens = adapter.tokens(torch.randn(2, EMBED))
    times = evaluation_times("heun", 5)
    prepared = DiTEngine(model.dit, cuda_graph=cuda_graph).prepare(cond, times, audio=adapter.prompt(tokens, 0.7))
    for tk in times:
        t = torch.full((2,), tk)
        expected = model.dit(x, t, *cond, audio=adapter.prompt(tokens, 0.7))
        got = prepared(x, t)
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)
        assert (got - model.dit(x, t, *cond)).abs().max() > 1e-3  # the audio path is in it
    with pytest.raises(ValueError, match="the audio prompt has 1 rows for a batch of 2"):
        DiTEngine(model.dit).prepare(cond, times, audio=adapter.prompt(tokens[:1]))


@torch.no_grad()
def test_the_fp16_engine_keeps_the_audio_path_in_fp32(model):
    from etta_engine.engine import DiTEngine

    adapter = adapter_for(model, gates=0.5)
    x, t, cond = inputs(model)
    tokens = adapter.tokens(torch.randn(2, EMBED))
    expected = model.dit(x, t, *cond, audio=adapter.prompt(tokens))
    half = copy.deepcopy(model.dit).half()
    cond16 = type(cond)(cond.context.half(), cond.context_mask, cond.global_cond.half())
    prepared = DiTEngine(half).prepare(cond16, [float(t[0])], audio=adapter.half().prompt(tokens.half()))
    got = prepared(x.half(), t).float()
    text_only = DiTEngine(half).prepare(cond16, [float(t[0])])(x.half(), t).float()
    reference = model.dit(x, t, *cond)

    def error(a, b):
        return float((a - b).norm() / b.norm())

    # the audio path adds no more error than fp16 already brings to the text-only model
    assert torch.isfinite(got).all() and error(got, expected) < 2 * error(text_only, reference) + 1e-3


def test_generate_command_with_an_adapter_and_an_audio_prompt(adapter_path, tmp_path):
    import soundfile as sf

    from etta_engine import cli

    path, base = adapter_path
    sf.write(tmp_path / "prompt.wav", 0.3 * torch.randn(22050).numpy(), 22050)  # mono, another rate
    argv = ["generate", "a dog barks", "--model", str(base), "--seconds", "0.5", "--nfe", "2", "--quiet"]
    out = tmp_path / "out.wav"
    prompt = ["--audio-prompt", str(tmp_path / "prompt.wav")]
    assert cli.main([*argv, "-o", str(out), "--adapter", str(path), *prompt]) == 0
    assert sf.info(out).frames == 22050
    with pytest.raises(SystemExit, match="--audio-prompt needs --adapter"):
        cli.main([*argv, "-o", str(out), *prompt])


def test_the_shipped_demo_adapter_moves_the_pitch_toward_the_audio_prompt():
    """The adapter trained for the demo model (scripts/train_demo_adapter.py): with the text "a tone", which the
    demo model renders low, medium-pitched audio prompts raise the generated pitch (benchmarks/audio_prompt.py
    measures it on more prompts)."""
    from etta_engine.checkpoint import ASSETS
    from etta_engine.demo.analyzer import PITCH_EDGES_HZ, analyze
    from etta_engine.demo.synth import PITCH_BANDS, SAMPLE_RATE, ClipSpec, Event, render

    pipe = Pipeline.from_adapter(ASSETS / "demo_audio_adapter.safetensors", device="cpu")
    kw = dict(nfe=16, cfg_scale=3.5, progress=False, audio_prompt_sample_rate=SAMPLE_RATE)
    pitch = {0.0: [], 4.0: []}
    lo, hi = PITCH_BANDS["medium"]
    for i, freq in enumerate((lo, (lo * hi) ** 0.5, hi)):
        event = Event("tone", start=0.3, duration=1.3, pitch="medium", waveform="sine", freq=freq)
        clip = render(ClipSpec((event,)), np.random.default_rng(i))
        for scale in pitch:
            audio = pipe.generate("a tone", audio_prompt=clip, audio_prompt_scale=scale, seed=i, **kw)
            pitch[scale].append(analyze(audio.waveform[0].numpy(), audio.sample_rate)[0].dominant_hz)
    assert max(pitch[0.0]) < PITCH_EDGES_HZ[0] and sum(pitch[4.0]) > 1.5 * sum(pitch[0.0]), pitch
