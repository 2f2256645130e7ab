"""Staged training of the audio-prompt adapter (``etta train dit --adapter-stage N``), after CLAP2Diffusion:

1. the adapter alone (projector, gated cross-attention, gates, null tokens); the base model frozen;
2. the adapter plus LoRA on the base model's attention projections (the base weights stay frozen);
3. the gates alone.

A stage starts from a fresh adapter (stage 1) or from the previous stage's adapter checkpoint (``--adapter``),
and exports only what it trained, with a reference to the base model and to that previous checkpoint
(:func:`etta_engine.checkpoint.save_adapter`). The audio embedding of a training clip comes from the cache: the
built-in ``latent_stats`` provider computes it from the cached posterior mean; other providers need embeddings
cached by ``etta cache --audio-embedder``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from etta_engine.audio_prompt import LatentStatsProvider
from etta_engine.models.adapter import AdapterConfig, AudioAdapter
from etta_engine.models.model import ETTAModel

STAGES = (1, 2, 3)


def stage_adapter(
    stage: int,
    base: ETTAModel,
    previous: AudioAdapter | None,
    *,
    embed_dim: int,
    provider: str,
    tokens: int = 8,
    groups: int = 4,
    lora_rank: int = 16,
    lora_alpha: float = 16.0,
) -> AudioAdapter:
    """The adapter that stage ``stage`` trains, with the right parameters trainable (module doc)."""
    if stage not in STAGES:
        raise ValueError(f"adapter stage {stage!r}; allowed: {list(STAGES)}")
    if previous is None:
        if stage == 3:
            raise ValueError("adapter stage 3 trains the gates of an existing adapter: pass --adapter PATH")
        cfg = AdapterConfig.for_dit(base.cfg.dit, embed_dim=embed_dim, tokens=tokens, groups=groups, provider=provider)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            previous = AudioAdapter(cfg)
    previous.cfg.check_dit(base.cfg.dit)
    if previous.cfg.embed_dim != embed_dim or previous.cfg.provider != provider:
        raise ValueError(
            f"the adapter takes {previous.cfg.provider!r} embeddings of size {previous.cfg.embed_dim}; "
            f"this run gives {provider!r} embeddings of size {embed_dim}"
        )
    adapter = previous
    if stage == 2 and previous.cfg.lora_rank == 0:
        if lora_rank < 1:
            raise ValueError(f"adapter stage 2 trains LoRA: lora_rank={lora_rank} must be >= 1")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            adapter = AudioAdapter(dataclasses.replace(previous.cfg, lora_rank=lora_rank, lora_alpha=lora_alpha))
        missing, unexpected = adapter.load_state_dict(previous.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("lora.") for k in missing), (missing, unexpected)
    set_trainable(adapter, stage)
    return adapter


def set_trainable(adapter: AudioAdapter, stage: int) -> None:
    """Stage 1: everything but LoRA; stage 2: everything; stage 3: the gates."""
    adapter.requires_grad_(False)
    if stage == 3:
        for gate in adapter.gates():
            gate.requires_grad_(True)
        return
    adapter.requires_grad_(True)
    if stage == 1:
        adapter.lora.requires_grad_(False)


def trained_names(adapter: AudioAdapter) -> list[str]:
    return [name for name, p in adapter.named_parameters() if p.requires_grad]


class AdapterFlowModel(nn.Module):
    """The frozen base (DiT + number conditioners) with the adapter: forward(x_t, t, text, text_mask,
    seconds_start, seconds_total, drop, embedding, audio_drop) -> velocity. ``drop`` nulls the text memory,
    ``audio_drop`` the audio tokens (independent condition dropouts, for CFG over both)."""

    def __init__(self, flow_model: nn.Module, adapter: AudioAdapter) -> None:
        super().__init__()
        self.base = flow_model.requires_grad_(False)
        self.adapter = adapter
        if adapter.cfg.lora_rank:
            adapter.attach_lora(flow_model.dit)

    def forward(self, x_t, t, text, text_mask, seconds_start, seconds_total, drop, embedding, audio_drop):
        base = self.base
        cond = base.conditioner(text, text_mask, {"seconds_start": seconds_start, "seconds_total": seconds_total})
        context = cond.context.masked_fill(drop[:, None, None], 0.0)
        tokens = self.adapter.training_tokens(embedding, audio_drop)
        return base.dit(x_t, t, context, cond.context_mask, cond.global_cond, audio=self.adapter.prompt(tokens))


def cached_embeddings(provider: str, model: ETTAModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The audio embeddings of a cache batch: cached ones if the cache has them, else (``latent_stats``)
    computed from the posterior means."""
    if "audio_embedding" in batch:
        return batch["audio_embedding"].float()
    if provider != "latent_stats":
        raise ValueError(
            f"the cache holds no audio embeddings; the {provider!r} provider needs them cached "
            f"(etta cache --audio-embedder {provider})"
        )
    return LatentStatsProvider(model.vae, model.cfg.sample_rate).from_latents(batch["latent_mean"])
