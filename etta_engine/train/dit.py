"""``etta train dit``: the DiT (and its number conditioners) trained with flow matching on a latent cache.

Recipe (../shared/spec/ETTA.md): rectified-flow / OT-CFM loss ``|v(x_t, t) - (noise - x0)|^2`` with
t ~ logit-normal(0, 1) (or uniform; v-diffusion as the alternative objective), the memory dropped to the
official null conditioning (zeros, same mask) with probability 0.1 for CFG, AdamW + InverseLR, EMA 0.9999
with a 3/4-power warm-up, gradient clipping, bf16 autocast (the ops keep adaLN-modulate, LayerNorms and
RoPE in fp32), optional activation checkpointing, DDP or FSDP2 under torchrun.

The randomness of a step (the latent drawn from the cached VAE posterior, the noise, t and the condition
dropout) comes from a generator seeded by (seed, step) for the whole global batch, each rank taking its
slice: a run on 2 ranks x b steps like 1 rank x 2b, and a resumed run like the uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from etta_engine import flow
from etta_engine.checkpoint import CheckpointError, load_adapter, load_model, model_reference, save, save_adapter
from etta_engine.data import ResumableSampler
from etta_engine.models.adapter import AudioAdapter
from etta_engine.models.conditioning import Conditioner
from etta_engine.models.dit import DiT
from etta_engine.models.model import ETTAModel
from etta_engine.models.text import T5TextEncoder
from etta_engine.train.adapter import AdapterFlowModel, cached_embeddings, stage_adapter, trained_names
from etta_engine.train.cache import LatentCache, encoders_digest
from etta_engine.train.common import (
    EMA,
    Dist,
    Trainer,
    _plain,
    all_ok,
    clip_gradients,
    ema_copy,
    full_optimizer_state,
    full_state_dict,
    inverse_lr_lambda,
    load_full_optimizer_state,
    load_full_state_dict,
    run_training,
    seed_everything,
    step_generator,
    unwrap,
    wrap_model,
)

OBJECTIVES = ("rectified_flow", "v_diffusion")
T_SAMPLERS = ("logit_normal", "uniform")
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class DiTTrainConfig:
    cache: str  # directory written by `etta cache`
    out: str  # checkpoints, log.csv, samples/ and the final model.safetensors go here
    model: str = "tiny"  # preset or ETTAModel checkpoint: initial DiT/conditioners; VAE and text encoder for samples
    text_encoder: str | None = None
    batch_size: int = 16  # global batch (split over ranks)
    max_steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-3
    inv_gamma: float = 1e6
    lr_power: float = 0.5
    warmup: float = 0.99
    ema_beta: float = 0.9999
    ema_power: float = 0.75
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    objective: str = "rectified_flow"
    t_sampler: str = "logit_normal"
    t_mean: float = 0.0
    t_std: float = 1.0
    cfg_dropout: float = 0.1
    precision: str = "bf16"
    activation_checkpointing: bool = False
    strategy: str = "ddp"  # with several ranks: "ddp" or "fsdp" (FSDP2, one unit per DiT block)
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 0  # write audio samples from the EMA model every N steps (0: never)
    sample_prompts: tuple[str, ...] = ("rain on a tin roof", "a dog barks twice")
    sample_nfe: int = 25
    max_bad_steps: int = 10  # consecutive non-finite losses/gradients before the run stops
    device: str | None = None
    resume: str | None = None  # a training checkpoint, or a run's checkpoints/ directory (its last one)
    # The audio-prompt adapter (etta_engine.train.adapter): stage 0 trains the base model itself.
    adapter_stage: int = 0
    adapter: str | None = None  # the previous stage's adapter checkpoint
    audio_provider: str = "latent_stats"
    audio_dropout: float = 0.1  # probability of the null audio tokens (independent of cfg_dropout)
    adapter_tokens: int = 8
    adapter_groups: int = 4
    lora_rank: int = 16  # stage 2
    lora_alpha: float = 16.0
    # Train the model's own random T5 (small presets; it is saved with the model) with the DiT, on the cache's
    # captions instead of its text embeddings. A pretrained T5 (the etta preset) stays frozen.
    train_text_encoder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "sample_prompts", tuple(self.sample_prompts))
        for name, choices in (("objective", OBJECTIVES), ("t_sampler", T_SAMPLERS), ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; allowed: {list(choices)}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy={self.strategy!r}; allowed: ['ddp', 'fsdp']")
        for name in ("batch_size", "max_steps", "save_every", "log_every", "max_bad_steps", "sample_nfe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout={self.cfg_dropout} is outside [0, 1]")
        if self.adapter_stage not in (0, 1, 2, 3):
            raise ValueError(f"adapter_stage={self.adapter_stage}; allowed: 0 (the base model), 1, 2, 3")
        if self.adapter_stage == 0 and self.adapter is not None:
            raise ValueError("adapter is a previous stage's checkpoint: it needs adapter_stage 1, 2 or 3")
        if not 0.0 <= self.audio_dropout <= 1.0:
            raise ValueError(f"audio_dropout={self.audio_dropout} is outside [0, 1]")
        if self.adapter_stage and self.train_text_encoder:
            raise ValueError("adapter stages keep the base model frozen: train_text_encoder needs adapter_stage 0")
        if self.adapter_stage and self.strategy == "fsdp":
            raise ValueError("adapter stages train a few million parameters: use strategy='ddp'")
        if self.lr <= 0 or self.grad_clip < 0 or self.t_std <= 0:
            raise ValueError(f"lr={self.lr} and t_std={self.t_std} must be > 0, grad_clip={self.grad_clip} >= 0")


# Settings that may change when a run is resumed; any other difference is refused.
RESUMABLE = frozenset(
    {
        "out",
        "cache",
        "max_steps",
        "save_every",
        "log_every",
        "sample_every",
        "sample_prompts",
        "sample_nfe",
        "max_bad_steps",
        "device",
        "resume",
        "text_encoder",
    }
)


class FlowModel(nn.Module):
    """The trained part of a text-to-audio model: the DiT and the number conditioners (and the text encoder).

    forward(x_t, t, text, text_mask, seconds_start, seconds_total, drop) -> velocity; ``drop`` (B,) bool
    replaces the whole memory of those items with zeros (the official null conditioning, mask kept). ``text``
    is the cached embeddings (B, L, D), or token ids (B, L) when the flow model holds a ``text_encoder``.
    """

    def __init__(self, dit: DiT, conditioner: Conditioner, text_encoder: T5TextEncoder | None = None) -> None:
        super().__init__()
        self.dit = dit
        self.conditioner = conditioner
        self.text_encoder = text_encoder

    def forward(self, x_t, t, text, text_mask, seconds_start, seconds_total, drop) -> torch.Tensor:
        if self.text_encoder is not None:
            text = self.text_encoder.encode(text, text_mask)
        cond = self.conditioner(text, text_mask, {"seconds_start": seconds_start, "seconds_total": seconds_total})
        context = cond.context.masked_fill(drop[:, None, None], 0.0)
        return self.dit(x_t, t, context, cond.context_mask, cond.global_cond)


def sample_t(cfg: DiTTrainConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    if cfg.t_sampler == "logit_normal":
        return flow.sample_t_logit_normal(n, cfg.t_mean, cfg.t_std, generator=generator)
    return flow.sample_t_uniform(n, generator=generator)


def training_pair(cfg: DiTTrainConfig, x0, noise, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input x_t, regression target) of the configured objective."""
    if cfg.objective == "rectified_flow":
        return flow.interpolate(x0, noise, t), flow.velocity_target(x0, noise)
    return flow.vdiffusion_interpolate(x0, noise, t), flow.vdiffusion_target(x0, noise, t)


def flow_matching_loss(
    model: nn.Module, cfg: DiTTrainConfig, batch: dict[str, torch.Tensor], g: torch.Generator, mine: slice, device
) -> torch.Tensor:
    """The loss of one step on this rank's ``batch`` (a :meth:`LatentCache.get` dict). The step's random
    draws are made for the whole global batch from ``g`` and this rank keeps the rows ``mine``."""
    G = cfg.batch_size
    shape = (G, *batch["latent_mean"].shape[1:])
    posterior_noise = torch.randn(shape, generator=g)[mine]
    noise = torch.randn(shape, generator=g)[mine]
    t = sample_t(cfg, G, g)[mine]
    drop = (torch.rand(G, generator=g) < cfg.cfg_dropout)[mine]

    x0 = (batch["latent_mean"] + batch["latent_std"] * posterior_noise).to(device)  # a draw from the VAE posterior
    noise, t, drop = noise.to(device), t.to(device), drop.to(device)
    x_t, target = training_pair(cfg, x0, noise, t)
    conditioning = [batch[k].to(device) for k in ("text_mask", "seconds_start", "seconds_total")]
    extra = []
    if cfg.adapter_stage:  # drawn after the base recipe's draws, which stay the same
        audio_drop = (torch.rand(G, generator=g) < cfg.audio_dropout)[mine]
        extra = [batch["audio_embedding"].to(device), audio_drop.to(device)]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        text = batch["text"].to(device)  # embeddings, or token ids with train_text_encoder
        pred = model(x_t, t, text.float() if text.is_floating_point() else text, *conditioning, drop, *extra)
    return F.mse_loss(pred.float(), target.float())


def train_dit(cfg: DiTTrainConfig, progress: bool = True) -> Path:
    """Train; returns the path of the exported EMA model (``out/model.safetensors``)."""
    return run_training(DiTTrainer, cfg, progress)


class DiTTrainer(Trainer):
    kind = "dit"
    resumable = RESUMABLE
    metrics = ("loss", "grad_norm")

    def __init__(self, cfg: DiTTrainConfig, d: Dist) -> None:
        super().__init__(cfg, d)
        self.cache = LatentCache(cfg.cache)
        self.base = load_model(cfg.model, cfg.text_encoder)
        mc, cc = self.base.cfg, self.cache.model_config
        if (mc.vae, mc.text, mc.sample_rate) != (cc.vae, cc.text, cc.sample_rate):
            raise ValueError(
                f"cache {cfg.cache} was encoded with model {cc.name!r} whose VAE/text encoder/sample rate differ "
                f"from those of {cfg.model!r}; encode the data with the model being trained"
            )
        digest = self.cache.index.get("encoders_digest")  # absent in caches written before it was recorded
        if digest is not None and digest != encoders_digest(self.base):
            raise ValueError(
                f"cache {cfg.cache} was encoded by a VAE or text encoder with other weights than those of "
                f"{cfg.model!r}: its latents would not match the model's VAE; encode the data with this model"
            )
        if cfg.batch_size > len(self.cache):
            raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(self.cache)} cached items")

        self.text_ids = None
        text_encoder = None
        if cfg.train_text_encoder:
            if not self.base.saves_text_encoder:
                raise ValueError(
                    f"train_text_encoder: {cfg.model!r} uses the pretrained T5 {self.base.cfg.text.pretrained!r}, "
                    "which is loaded separately and never saved with the model; only a preset's own random T5 "
                    "(text.pretrained None) can be trained"
                )
            text_encoder = self.base.text_encoder
            text_encoder.model.requires_grad_(True)
            truncate = bool(self.cache.index["settings"].get("truncate", False))
            self.text_ids = text_encoder.tokenize(self.cache.captions, truncate=truncate)  # (N, L) ids and mask

        seed_everything(cfg.seed, d.rank)
        flow_model = FlowModel(self.base.dit, self.base.conditioner, text_encoder).to(d.device).train()
        flow_model.dit.activation_checkpointing = cfg.activation_checkpointing
        self.adapter = None
        if cfg.adapter_stage:
            self.adapter = self._stage_adapter().to(d.device).train()
            ema_module = ema_copy(self.adapter).eval()  # the checkpoints and the EMA hold the adapter only
            flow_model = AdapterFlowModel(flow_model, self.adapter)
        else:
            ema_module = ema_copy(flow_model).eval()
        self.model = wrap_model(flow_model, cfg.strategy, d, list(self.base.dit.blocks))
        if cfg.strategy == "fsdp" and d.active:
            wrap_model(ema_module, "fsdp", d, list(ema_module.dit.blocks))
        self.ema = EMA(ema_module, cfg.ema_beta, cfg.ema_power)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        schedule = inverse_lr_lambda(cfg.inv_gamma, cfg.lr_power, cfg.warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.sampler = ResumableSampler(len(self.cache), seed=cfg.seed, shuffle=True, drop_last=True)
        if cfg.resume:
            self.resume(cfg.resume)

    def _stage_adapter(self) -> AudioAdapter:
        cfg = self.cfg
        previous = None
        if cfg.adapter is not None:
            previous, meta = load_adapter(cfg.adapter)
            if meta["base"] != model_reference(cfg.model)[0]:
                raise ValueError(f"adapter {cfg.adapter} was trained on base model {meta['base']!r}, not {cfg.model!r}")
        probe = self._batch([0])
        return stage_adapter(
            cfg.adapter_stage,
            self.base,
            previous,
            embed_dim=probe["audio_embedding"].shape[1],
            provider=cfg.audio_provider,
            tokens=cfg.adapter_tokens,
            groups=cfg.adapter_groups,
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
        )

    def _batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Cache items, with their audio embeddings when training an adapter."""
        batch = self.cache.get(indices)
        if self.text_ids is not None:  # the T5 being trained encodes the captions itself
            ids, mask = self.text_ids
            batch["text"], batch["text_mask"] = ids[indices], mask[indices]
        if self.cfg.adapter_stage:
            batch["audio_embedding"] = cached_embeddings(self.cfg.audio_provider, self.base, batch)
        return batch

    def _trained(self) -> nn.Module:
        """What the checkpoints hold: the flow model, or the adapter in an adapter stage."""
        return self.adapter if self.adapter is not None else self.model

    # ---------------------------------------------------------------- checkpoints

    def state(self) -> dict:
        return {
            "model_config": self.base.cfg.to_dict(),
            "cache_fingerprint": self.cache.index["fingerprint"],
            "model": full_state_dict(self._trained()),
            "ema": full_state_dict(self.ema.module),
            "ema_updates": self.ema.updates,
            "optimizer": full_optimizer_state(self.model, self.opt),
            "scheduler": self.sched.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state(self, state: dict, path: Path) -> None:
        if state["model_config"] != self.base.cfg.to_dict():
            raise CheckpointError(f"cannot resume from {path}: its model config differs from {self.cfg.model!r}'s")
        if state["cache_fingerprint"] != self.cache.index["fingerprint"]:
            raise CheckpointError(f"cannot resume from {path}: it was trained on a different cache")
        load_full_state_dict(self._trained(), state["model"])
        load_full_state_dict(self.ema.module, state["ema"])
        self.ema.updates = int(state["ema_updates"])
        load_full_optimizer_state(self.model, self.opt, state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])

    # ---------------------------------------------------------------- one step

    def _next_indices(self) -> list[int]:
        """The global batch of this step (the same on every rank)."""
        self.epoch_rollover()
        start = self.consume_batch()
        return self.sampler.epoch_order()[start : start + self.cfg.batch_size]

    def train_step(self) -> tuple[dict[str, float], bool]:
        cfg, d = self.cfg, self.d
        b = cfg.batch_size // d.world_size
        mine = slice(d.rank * b, (d.rank + 1) * b)
        batch = self._batch(self._next_indices()[mine])
        loss = flow_matching_loss(self.model, cfg, batch, step_generator(cfg.seed, self.step), mine, d.device)

        ok = all_ok(bool(torch.isfinite(loss)), d)
        grad_norm = math.nan
        if ok:
            loss.backward()
            grad_norm = clip_gradients(self.model.parameters(), cfg.grad_clip)
            ok = all_ok(math.isfinite(grad_norm), d)
            if ok:
                self.opt.step()
                self.sched.step()
                self.ema.update(self.adapter if self.adapter is not None else unwrap(self.model))
        self.opt.zero_grad(set_to_none=True)
        self.guard.record(ok, self.step, "loss or gradient")
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}, ok

    # ---------------------------------------------------------------- outputs

    def ema_model(self) -> ETTAModel | None:
        """The EMA weights in a complete ETTAModel (VAE and text encoder from the base model), on rank 0."""
        sd = full_state_dict(self.ema.module)
        if not self.d.main:
            return None
        text_encoder = self.base.text_encoder
        if self.cfg.train_text_encoder:  # the base's T5 is the one being trained: the EMA weights go to a copy
            text_encoder = copy.deepcopy(text_encoder).eval().requires_grad_(False)
            text_encoder.load_state_dict(
                {k[len("text_encoder.") :]: v for k, v in sd.items() if k.startswith("text_encoder.")}
            )
            text_encoder.model.tie_weights()
        model = ETTAModel(self.base.cfg, text_encoder=text_encoder)
        model.vae.load_state_dict(self.base.vae.state_dict())
        model.dit.load_state_dict({k[len("dit.") :]: v for k, v in sd.items() if k.startswith("dit.")})
        conditioner = {k[len("conditioner.") :]: v for k, v in sd.items() if k.startswith("conditioner.")}
        model.conditioner.load_state_dict(conditioner)
        return model.eval()

    def after_step(self) -> None:
        if self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
            self.write_samples()

    def write_samples(self) -> None:
        from etta_engine.pipeline import Pipeline

        model = self.ema_model()
        if model is None:
            return
        folder = self.out / "samples"
        folder.mkdir(exist_ok=True)
        seconds = self.cache.index["settings"]["seconds"]
        prompts = list(self.cfg.sample_prompts)
        audio = Pipeline(model, device=self.d.device).generate(
            prompts, seconds=seconds, nfe=self.cfg.sample_nfe, seed=self.cfg.seed, progress=False
        )
        for i in range(audio.waveform.shape[0]):
            audio.save(folder / f"step_{self.step:07d}_{i}.wav", index=i)

    def export(self) -> Path:
        if self.adapter is not None:
            return self.export_adapter()
        model = self.ema_model()
        path = self.out / "model.safetensors"
        if model is not None:
            save(path, model, metadata={"trained_steps": str(self.step), "train_config": json.dumps(_plain(self.cfg))})
        if self.d.active:
            dist.barrier()
        return path

    def export_adapter(self) -> Path:
        """The EMA adapter's tensors that this stage trained, with references to the base and previous stage."""
        path = self.out / "adapter.safetensors"
        if self.d.main:
            names = trained_names(self.adapter)
            metadata = {"trained_steps": str(self.step), "train_config": json.dumps(_plain(self.cfg))}
            save_adapter(
                path,
                self.ema.module,
                stage=self.cfg.adapter_stage,
                base=self.cfg.model,
                parent=self.cfg.adapter,
                names=names,
                metadata=metadata,
            )
        if self.d.active:
            dist.barrier()
        return path
