"""``etta train vae``: ETTA-VAE trained on audio crops with spectral, adversarial and KL losses.

Recipe (../shared/spec/ETTA.md): multi-resolution STFT loss on sum and difference channels, an
EnCodec-style multi-scale STFT discriminator (hinge loss 0.1, feature matching 5.0), KL 1e-4; AdamW
1.5e-4 (discriminator 3e-4), betas (0.8, 0.99), InverseLR, 65536-sample crops, EMA, gradient clipping
at 500, fp32. As in the official trainer, generator and discriminator updates alternate: even steps
update the VAE, odd steps the discriminator (once the adversarial phase has started).

Under torchrun the gradients of each update are averaged over ranks explicitly (the two networks and
their alternating updates make wrapper-based DDP awkward; the VAE is small enough that overlapping
communication does not matter). The posterior draw of a step comes from a generator seeded by
(seed, step) for the whole global batch, so 2 ranks x b step like 1 rank x 2b.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from etta_engine.checkpoint import CheckpointError, load, save
from etta_engine.config import PRESETS
from etta_engine.data import AudioTextDataset, ResumableSampler, read_manifest
from etta_engine.models.model import ETTAModel
from etta_engine.models.vae import VAE
from etta_engine.train.common import (
    EMA,
    Dist,
    Trainer,
    _plain,
    all_ok,
    clip_gradients,
    ema_copy,
    inverse_lr_lambda,
    run_training,
    seed_everything,
    step_generator,
)
from etta_engine.train.losses import VAELosses, VAELossWeights


@dataclass(frozen=True)
class VAETrainConfig:
    manifest: str  # JSONL of audio files (captions are not used)
    out: str
    model: str = "tiny"  # preset or checkpoint (a full model or a VAE) to start from
    sample_rate: int = 44100
    sample_size: int = 65536  # crop length in samples
    batch_size: int = 8  # global batch (split over ranks)
    max_steps: int = 1000
    lr: float = 1.5e-4
    disc_lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 1e-3
    inv_gamma: float = 200_000
    lr_power: float = 0.5
    warmup: float = 0.999
    ema_beta: float = 0.9999
    ema_power: float = 0.75
    grad_clip: float = 500.0
    mrstft_weight: float = 1.0
    adversarial_weight: float = 0.1
    feature_matching_weight: float = 5.0
    kl_weight: float = 1e-4
    mel_weight: float = 0.0  # multi-scale log-mel L1 (DAC's; not in the ETTA recipe)
    spectral_eps: float = 1e-8  # log-magnitude floor of the MR-STFT loss (1e-3 for audio with digital silence)
    adversarial_start: int = 0  # steps of spectral + KL training before the discriminator joins
    discriminator_filters: int = 64
    mix_probability: float = 0.0
    on_error: str = "skip"
    num_workers: int = 0
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    max_bad_steps: int = 10
    device: str | None = None
    resume: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        for name in (
            "sample_rate",
            "sample_size",
            "batch_size",
            "max_steps",
            "save_every",
            "log_every",
            "max_bad_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0 or self.disc_lr <= 0 or self.grad_clip < 0 or self.adversarial_start < 0:
            raise ValueError("lr and disc_lr must be > 0, grad_clip and adversarial_start >= 0")

    def loss_weights(self) -> VAELossWeights:
        return VAELossWeights(
            self.mrstft_weight, self.adversarial_weight, self.feature_matching_weight, self.kl_weight, self.mel_weight
        )


RESUMABLE = frozenset(
    {"out", "manifest", "max_steps", "save_every", "log_every", "max_bad_steps", "device", "resume", "num_workers"}
)


def load_vae(name_or_path: str) -> VAE:
    """The VAE of a preset (random weights, seed 0), of a full model checkpoint, or a VAE checkpoint."""
    if name_or_path in PRESETS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return VAE(PRESETS[name_or_path].vae)
    module = load(name_or_path)
    if isinstance(module, ETTAModel):
        return module.vae
    if isinstance(module, VAE):
        return module
    raise ValueError(f"{name_or_path} holds a {type(module).__name__}; a VAE or a full model is needed")


def train_vae(cfg: VAETrainConfig, progress: bool = True) -> Path:
    """Train; returns the path of the exported EMA VAE (``out/vae.safetensors``)."""
    return run_training(VAETrainer, cfg, progress)


class VAETrainer(Trainer):
    kind = "vae"
    resumable = RESUMABLE
    metrics = ("loss", "mrstft", "mel", "adversarial", "feature_matching", "kl", "disc_loss", "grad_norm")

    def __init__(self, cfg: VAETrainConfig, d: Dist) -> None:
        super().__init__(cfg, d)
        seed_everything(cfg.seed, d.rank)
        self.vae = load_vae(cfg.model).to(d.device).train()
        sr = cfg.sample_rate
        channels = self.vae.cfg.audio_channels
        self.losses = VAELosses(
            cfg.loss_weights(), cfg.discriminator_filters, cfg.spectral_eps, sample_rate=sr, in_channels=channels
        )
        self.losses = self.losses.to(d.device).train()
        self.ema = EMA(ema_copy(self.vae).eval(), cfg.ema_beta, cfg.ema_power)
        adam = dict(betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr, **adam)
        self.opt_disc = torch.optim.AdamW(self.losses.discriminator.parameters(), lr=cfg.disc_lr, **adam)
        schedule = inverse_lr_lambda(cfg.inv_gamma, cfg.lr_power, cfg.warmup)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.sched_disc = torch.optim.lr_scheduler.LambdaLR(self.opt_disc, schedule)

        entries = read_manifest(cfg.manifest)
        self.dataset = AudioTextDataset(
            entries,
            sr,
            cfg.sample_size / sr,
            mix_probability=cfg.mix_probability,
            on_error=cfg.on_error,
            seed=cfg.seed,
            channels=channels,
        )
        if cfg.batch_size > len(self.dataset):
            raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(self.dataset)} manifest entries")
        self.sampler = ResumableSampler(len(self.dataset), seed=cfg.seed, rank=d.rank, world_size=d.world_size)
        self.batches = None
        if cfg.resume:
            self.resume(cfg.resume)

    # ---------------------------------------------------------------- data

    def _loader(self):
        from torch.utils.data import DataLoader

        self.dataset.set_epoch(self.sampler.state_dict()["epoch"])
        loader = DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size // self.d.world_size,
            sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            drop_last=True,
            generator=torch.Generator(),  # keeps the global RNG (dropout, resume) untouched
        )
        return iter(loader)

    def _next_batch(self) -> torch.Tensor:
        """This rank's part of the step's global batch: (b, audio_channels, sample_size)."""
        if self.epoch_rollover() or self.batches is None:
            self.batches = self._loader()  # iterates from the sampler's position, so before consume_batch
        batch = next(self.batches)
        self.consume_batch()
        return batch["audio"].to(self.d.device)

    # ---------------------------------------------------------------- one step

    def _average_gradients(self, params) -> None:
        if not self.d.active:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.d.world_size

    def _reconstruct(self, audio: torch.Tensor):
        cfg, d = self.cfg, self.d
        G, b = cfg.batch_size, cfg.batch_size // d.world_size
        mean, std = self.vae.encode(audio)
        g = step_generator(cfg.seed, self.step)
        draw = torch.randn((G, *mean.shape[1:]), generator=g)[d.rank :: d.world_size][:b]  # strided, as the sampler
        recon = self.vae.decode(mean + std * draw.to(mean.device))
        return recon, VAE.kl(mean, std)

    def train_step(self) -> tuple[dict[str, float], bool]:
        cfg = self.cfg
        audio = self._next_batch()
        adversarial = self.losses.uses_discriminator and self.step >= cfg.adversarial_start
        discriminator_turn = adversarial and (self.step - cfg.adversarial_start) % 2 == 1
        metrics: dict[str, float] = {}
        if discriminator_turn:
            with torch.no_grad():
                recon, _ = self._reconstruct(audio)
            loss = self.losses.discriminator_loss(recon, audio)
            params, opt, sched = list(self.losses.discriminator.parameters()), self.opt_disc, self.sched_disc
            metrics["disc_loss"] = float(loss.detach())
        else:
            recon, kl = self._reconstruct(audio)
            weights = self.losses.weights
            if not adversarial:  # warm-up: spectral and KL terms only
                self.losses.weights = replace(weights, adversarial=0.0, feature_matching=0.0)
            try:
                loss, parts = self.losses.generator_loss(recon, audio, kl)
            finally:
                self.losses.weights = weights
            params, opt, sched = list(self.vae.parameters()), self.opt, self.sched
            metrics |= {k: float(v) for k, v in parts.items()} | {"loss": float(loss.detach())}

        ok = all_ok(bool(torch.isfinite(loss)), self.d)
        if ok:
            loss.backward()
            self._average_gradients(params)
            metrics["grad_norm"] = clip_gradients(params, cfg.grad_clip)
            ok = all_ok(math.isfinite(metrics["grad_norm"]), self.d)
            if ok:
                opt.step()
                sched.step()
                if not discriminator_turn:
                    self.ema.update(self.vae)
        self.opt.zero_grad(set_to_none=True)
        self.opt_disc.zero_grad(set_to_none=True)
        self.guard.record(ok, self.step, "loss or gradient")
        return metrics, ok

    # ---------------------------------------------------------------- checkpoints and outputs

    def state(self) -> dict:
        return {
            "vae_config": self.vae.cfg.to_dict(),
            "vae": self.vae.state_dict(),
            "discriminator": self.losses.discriminator.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.opt.state_dict(),
            "optimizer_disc": self.opt_disc.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scheduler_disc": self.sched_disc.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state(self, state: dict, path: Path) -> None:
        if state["vae_config"] != self.vae.cfg.to_dict():
            raise CheckpointError(f"cannot resume from {path}: its VAE config differs from {self.cfg.model!r}'s")
        self.vae.load_state_dict(state["vae"])
        self.losses.discriminator.load_state_dict(state["discriminator"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.updates = int(state["ema_updates"])
        self.opt.load_state_dict(state["optimizer"])
        self.opt_disc.load_state_dict(state["optimizer_disc"])
        self.sched.load_state_dict(state["scheduler"])
        self.sched_disc.load_state_dict(state["scheduler_disc"])
        self.sampler.load_state_dict(state["sampler"])
        self.batches = None

    def export(self) -> Path:
        path = self.out / "vae.safetensors"
        if self.d.main:
            meta = {"trained_steps": str(self.step), "train_config": json.dumps(_plain(self.cfg))}
            save(path, self.ema.module, metadata=meta)
        if self.d.active:
            dist.barrier()
        return path
