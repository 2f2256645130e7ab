"""Pieces shared by the trainers: the learning-rate schedule, EMA, distributed set-up, the training
checkpoint (everything needed to resume bit-exactly), the non-finite-loss guard and the CSV log."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import gc
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn as nn

from etta_engine.checkpoint import CheckpointError, atomic_write

log = logging.getLogger("etta_engine.train")

CHECKPOINT_FORMAT = "etta_engine.train"


# ------------------------------------------------------------------ schedules and EMA


def inverse_lr_lambda(inv_gamma: float, power: float, warmup: float):
    """The InverseLR multiplier of step k: ``(1 - warmup^(k+1)) * (1 + k / inv_gamma)^(-power)``.

    The first factor is an exponential warm-up (warmup = 0.99: about 100 steps to 63 %), the second an
    inverse-power decay.
    """
    if not (inv_gamma > 0 and power >= 0 and 0 <= warmup < 1):
        raise ValueError(
            f"InverseLR needs inv_gamma > 0, power >= 0, warmup in [0, 1); got {inv_gamma}, {power}, {warmup}"
        )

    def multiplier(step: int) -> float:
        return (1.0 - warmup ** (step + 1)) * (1.0 + step / inv_gamma) ** (-power)

    return multiplier


class EMA:
    """Exponential moving average of a module's parameters with a warm-up of the decay:
    ``decay(k) = min(beta, 1 - (1 + k)^(-power))`` at update k (beta 0.9999, power 3/4 in ETTA), so early
    updates follow the model closely. ``module`` is a copy of the model (sharded the same way under FSDP)."""

    def __init__(self, module: nn.Module, beta: float = 0.9999, power: float = 0.75) -> None:
        if not (0 <= beta < 1 and power > 0):
            raise ValueError(f"EMA needs beta in [0, 1) and power > 0, got beta={beta}, power={power}")
        self.module = module.requires_grad_(False)
        self.beta, self.power = beta, power
        self.updates = 0

    def decay(self) -> float:
        return min(self.beta, 1.0 - (1.0 + self.updates) ** (-self.power))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        self.updates += 1


# ------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size, device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None) -> Dist:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, ...), if any: NCCL on GPUs,
    gloo on CPUs. Without torchrun, a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if want_cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        dev = torch.device("cuda", local) if want_cuda else torch.device("cpu")
        return Dist(dist.get_rank(), dist.get_world_size(), dev)
    return Dist(0, 1, torch.device("cuda" if want_cuda else (device or "cpu")))


def teardown_distributed() -> None:
    # Sharded modules keep references to the process group; free them first, or gloo can abort at exit.
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_ok(flag: bool, d: Dist) -> bool:
    """True only if ``flag`` holds on every rank (so that all ranks take the same branch)."""
    if not d.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def wrap_model(model: nn.Module, strategy: str, d: Dist, shard_units: list[nn.Module]) -> nn.Module:
    """Wrap for data parallelism: ``ddp`` (replicated) or ``fsdp`` (FSDP2: parameters, gradients and
    optimizer state sharded; each module in ``shard_units`` is one all-gather unit). A single process
    returns ``model`` itself."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy={strategy!r}; allowed: 'ddp', 'fsdp'")
    if not d.active:
        return model
    if strategy == "ddp":
        ids = [d.device.index] if d.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for unit in shard_units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def clip_gradients(parameters, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (0: no clipping) and return the norm before clipping
    (the same on every rank under DDP and FSDP)."""
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU: on rank 0 under FSDP (other ranks get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(unwrap(model), sd, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        unwrap(model), opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), opt, sd, options=StateDictOptions(full_state_dict=True))


# ------------------------------------------------------------------ randomness


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of the per-step randomness (noise, t, condition dropout) of the *global* batch:
    the same on every rank and independent of the number of ranks, so that 2 ranks x b reproduce
    1 rank x 2b, and a resumed run draws what the uninterrupted one drew."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))


def seed_everything(seed: int, rank: int) -> None:
    """Seed the global generators (used by dropout) differently on each rank."""
    random.seed(seed + rank)
    torch.manual_seed(seed + 1000 * rank)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(d: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state (the dropout streams), in rank order."""
    mine = rng_state()
    if not d.active:
        return [mine]
    states: list[Any] = [None] * d.world_size
    dist.all_gather_object(states, mine)
    return states


# ------------------------------------------------------------------ training checkpoints


def _plain(obj):
    """Config dataclasses as JSON-able dicts for the checkpoint (loaded with weights_only=True)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def save_training_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (temporary file, fsync, rename): a crash mid-write leaves
    the previous file intact. Tensors, numbers, strings and containers only: read back with
    ``weights_only=True``."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable training checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an etta_engine training checkpoint")
    return state


def check_resume_config(
    saved: dict, current: dict, resumable: set[str], source: Path, defaults: dict | None = None
) -> None:
    """Raise if the run being resumed was started with different settings (apart from ``resumable``
    ones such as max_steps), naming every difference. A setting the checkpoint lacks (one added to the
    config after it was written) counts as its value in ``defaults``, the settings it could not have changed."""
    saved = {**{k: v for k, v in (defaults or {}).items() if k not in saved}, **saved}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k not in resumable and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"cannot resume from {source}: it was written with a different config:\n  " + "\n  ".join(diffs)
        )


# ------------------------------------------------------------------ the non-finite guard and the log


class NonFiniteGuard:
    """Counts skipped steps (non-finite loss or gradient) and stops the run after ``max_in_a_row``."""

    def __init__(self, max_in_a_row: int) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_bad_steps={max_in_a_row} must be >= 1")
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def record(self, ok: bool, step: int, what: str) -> None:
        if ok:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        log.warning(
            "step %d: non-finite %s, step skipped (%d in a row, %d in total)", step, what, self.in_a_row, self.total
        )
        if self.in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                f"stopping at step {step}: {self.in_a_row} steps in a row had a non-finite {what} "
                f"(max_bad_steps={self.max_in_a_row}); lower the learning rate or check the data"
            )

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.in_a_row, self.total = int(state["in_a_row"]), int(state["total"])


class CSVLog:
    """Appends one row per logged step to ``path`` (header written once), flushed each time."""

    def __init__(self, path: Path, fields: list[str], enabled: bool) -> None:
        self.path, self.fields, self.enabled = path, fields, enabled
        if enabled and not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


@contextlib.contextmanager
def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def ema_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)


# ------------------------------------------------------------------ the loop shared by the trainers


def resolve_resume(path: str | os.PathLike) -> Path:
    """A training checkpoint, or a run's checkpoints/ directory (then its last checkpoint)."""
    p = Path(path)
    if p.is_dir():
        pointer = p / "last.json"
        if not pointer.is_file():
            raise FileNotFoundError(f"{p} has no last.json: no checkpoint to resume from")
        return p / json.loads(pointer.read_text())["checkpoint"]
    return p


def run_training(trainer_cls, cfg, progress: bool) -> Path:
    """Set up this process's place in the (torchrun) job, train, and tear the job down even on errors."""
    d = setup_distributed(cfg.device)
    try:
        return trainer_cls(cfg, d).run(progress)
    finally:
        teardown_distributed()


class Trainer:
    """The loop, logging, checkpointing and resume of a training run. Subclasses define ``train_step``
    (returns the step's metrics and whether it was applied), ``state``/``load_state`` (what a checkpoint
    holds besides the common part) and ``export``."""

    kind = "base"
    resumable: ClassVar[frozenset[str]] = frozenset()  # config fields that may change on resume
    metrics: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, cfg, d: Dist) -> None:
        if cfg.batch_size % d.world_size:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {d.world_size} ranks")
        self.cfg, self.d = cfg, d
        self.out = Path(cfg.out)
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.guard = NonFiniteGuard(cfg.max_bad_steps)
        self.step = 0
        fields = ["step", "epoch", *self.metrics, "lr", "samples_per_s", "skipped_steps"]
        self.log = CSVLog(self.out / "log.csv", fields, enabled=d.main)

    # subclasses -----------------------------------------------------
    def train_step(self) -> tuple[dict[str, float], bool]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        raise NotImplementedError

    def export(self) -> Path:
        raise NotImplementedError

    # subclasses hold a ResumableSampler ``sampler`` (global order) and the main LR scheduler ``sched``
    def epoch(self) -> int:
        return self.sampler.state_dict()["epoch"]

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def epoch_rollover(self) -> bool:
        """Start the next epoch if the next global batch does not fit in this one (drop_last); True if so."""
        state = self.sampler.state_dict()
        if state["position"] + self.cfg.batch_size <= self.sampler.total_size:
            return False
        self.sampler.load_state_dict({"epoch": state["epoch"] + 1, "position": 0})
        return True

    def consume_batch(self) -> int:
        """Mark the step's global batch as used; returns its start position in the epoch's order."""
        start = self.sampler.state_dict()["position"]
        self.sampler.set_position(start + self.cfg.batch_size)
        return start

    def after_step(self) -> None:
        """Called after every step (e.g. to write audio samples)."""

    # shared ---------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "kind": self.kind,
            "step": self.step,
            "config": _plain(self.cfg),
            "world_size": self.d.world_size,
            "rng": gather_rng_states(self.d),
            "guard": self.guard.state_dict(),
            **self.state(),  # every rank takes part in gathering sharded tensors
        }
        if self.d.main:
            name = f"step_{self.step:07d}.pt"
            save_training_checkpoint(self.out / "checkpoints" / name, state)
            pointer = {"checkpoint": name, "step": self.step}
            atomic_write(self.out / "checkpoints" / "last.json", lambda tmp: Path(tmp).write_text(json.dumps(pointer)))
        if self.d.active:
            dist.barrier()

    def resume(self, path: str | os.PathLike) -> None:
        path = resolve_resume(path)
        state = load_training_checkpoint(path)
        if state.get("kind") != self.kind:
            raise CheckpointError(f"{path} is a {state.get('kind')!r} training checkpoint, not a {self.kind!r} one")
        defaults = {f.name: f.default for f in dataclasses.fields(self.cfg) if f.default is not dataclasses.MISSING}
        check_resume_config(state["config"], _plain(self.cfg), self.resumable, path, json.loads(json.dumps(defaults)))
        if state["world_size"] != self.d.world_size:
            raise CheckpointError(
                f"cannot resume from {path} on {self.d.world_size} ranks: it was written by {state['world_size']} "
                "(the dropout random streams are per rank)"
            )
        self.load_state(state, path)
        self.guard.load_state_dict(state["guard"])
        set_rng_state(state["rng"][self.d.rank])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def mean_across_ranks(self, value: float) -> float:
        if not self.d.active:
            return value
        t = torch.tensor([value], device=self.d.device)
        dist.all_reduce(t)
        return float(t) / self.d.world_size

    def run(self, progress: bool = True) -> Path:
        cfg = self.cfg
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        window, t0 = 0, time.perf_counter()
        with progress_bar(cfg.max_steps, self.step, progress and self.d.main, f"train {self.kind}") as bar:
            while self.step < cfg.max_steps:
                metrics, ok = self.train_step()
                self.step += 1
                window += 1
                if ok:  # each metric is averaged over the applied steps that report it
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    elapsed = time.perf_counter() - t0
                    row = {k: self.mean_across_ranks(v / counts[k]) for k, v in sums.items()}
                    row |= {
                        "step": self.step,
                        "epoch": self.epoch(),
                        "lr": self.lr(),
                        "samples_per_s": cfg.batch_size * window / max(elapsed, 1e-9),
                        "skipped_steps": self.guard.total,
                    }
                    self.log.write(row)
                    bar.set_postfix(loss=f"{row.get('loss', math.nan):.4f}")
                    sums, counts, window, t0 = {}, {}, 0, time.perf_counter()
                if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
                self.after_step()
        return self.export()
