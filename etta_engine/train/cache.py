"""``etta cache``: encode a manifest's audio to VAE latents and its captions to text embeddings, once.

The cache is a directory of safetensors shards plus ``index.json``. Each shard holds, per item:
``latent_mean``/``latent_std`` (C, T) fp32 (the VAE posterior, so training can sample it each step as
the official recipe does), ``text`` (L, D) and ``text_mask`` (L,) from the frozen text encoder, and
``seconds_start``/``seconds_total``, and with ``audio_embedder`` the clip's ``audio_embedding`` (for training an
audio-prompt adapter with a provider such as CLAP). Shards are written atomically and skipped when already present
with the same settings, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from etta_engine.audio_prompt import PROVIDERS, get_provider
from etta_engine.checkpoint import CheckpointError, atomic_write, load_model, read_safetensors
from etta_engine.config import ModelConfig
from etta_engine.data import AudioReadError, AudioTextDataset, read_manifest
from etta_engine.models.model import ETTAModel

log = logging.getLogger("etta_engine.train")

CACHE_FORMAT = "etta_engine.cache"
CACHE_VERSION = 1
TEXT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class CacheConfig:
    manifest: str
    out: str
    model: str = "tiny"  # preset name or checkpoint: its VAE and text encoder do the encoding
    text_encoder: str | None = None  # local T5 directory for models with a pretrained text encoder
    seconds: float = 10.0  # crop length
    shard_size: int = 256
    batch_size: int = 8
    seed: int = 0
    random_crop: bool = True
    mix_probability: float = 0.0  # AudioGen mixing augmentation
    on_error: str = "skip"  # unreadable audio: "skip" (counted, listed in index.json) or "raise"
    truncate: bool = False  # truncate captions over the token limit instead of stopping
    text_dtype: str = "bfloat16"
    audio_embedder: str | None = None  # an etta_engine.audio_prompt provider whose embeddings are cached too
    clap_checkpoint: str | None = None  # the local LAION-CLAP checkpoint of audio_embedder="clap"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.batch_size < 1:
            raise ValueError(f"shard_size={self.shard_size} and batch_size={self.batch_size} must be >= 1")
        if self.text_dtype not in TEXT_DTYPES:
            raise ValueError(f"text_dtype={self.text_dtype!r}; allowed: {sorted(TEXT_DTYPES)}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error={self.on_error!r}; allowed: 'skip', 'raise'")
        if self.audio_embedder not in (None, *PROVIDERS):
            raise ValueError(f"audio_embedder={self.audio_embedder!r}; allowed: {list(PROVIDERS)} or None")


def _weights_digest(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encoders_digest(model: ETTAModel) -> str:
    """sha256 of the weights that made a cache's values: the VAE's and the text encoder's."""
    return _weights_digest(model.vae, model.text_encoder)


def _fingerprint(cfg: CacheConfig, model: ETTAModel) -> str:
    """What the cached values depend on: the data settings, the model config and the encoders' weights."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "batch_size", "device", "text_encoder")}
    settings["manifest"] = os.path.abspath(cfg.manifest)
    payload = json.dumps({"settings": settings, "model": model.cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256((payload + encoders_digest(model)).encode()).hexdigest()


@torch.no_grad()
def build_cache(cfg: CacheConfig, progress: bool = True) -> Path:
    """Write (or finish writing) the cache described by ``cfg``; returns the path of ``index.json``."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(cfg.manifest)
    model = load_model(cfg.model, cfg.text_encoder)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    fingerprint = _fingerprint(cfg, model)
    index_path = out / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fingerprint:
            log.info("cache %s is complete", out)
            return index_path
        raise CheckpointError(f"{out} holds a cache written with other settings or weights; use another --out")

    dataset = AudioTextDataset(
        entries,
        model.cfg.sample_rate,
        cfg.seconds,
        random_crop=cfg.random_crop,
        mix_probability=cfg.mix_probability,
        on_error="raise",  # unreadable entries are dropped here, not replaced by a neighbour
        seed=cfg.seed,
        channels=model.cfg.vae.audio_channels,
    )
    ratio = model.cfg.vae.downsampling_ratio
    embedder = None
    if cfg.audio_embedder is not None:
        options = {"checkpoint": cfg.clap_checkpoint, "device": device} if cfg.audio_embedder == "clap" else {}
        embedder = get_provider(cfg.audio_embedder, model, **options)
    n_shards = -(-len(entries) // cfg.shard_size)
    shards, skipped, padded = [], [], 0
    with tqdm(total=len(entries), disable=not progress, desc="caching", unit="clip") as bar:
        for k in range(n_shards):
            path = out / f"shard_{k:05d}.safetensors"
            rows = range(k * cfg.shard_size, min((k + 1) * cfg.shard_size, len(entries)))
            meta = _existing_shard(path, fingerprint)
            if meta is None:
                meta = _write_shard(path, rows, dataset, model, cfg, fingerprint, ratio, device, embedder)
            shards.append({"file": path.name, "items": int(meta["items"])})
            skipped += json.loads(meta["skipped"])
            padded += int(meta["padded"])
            bar.update(len(rows))

    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "encoders_digest": encoders_digest(model),  # training checks that its model has these VAE/text weights
        "model_config": model.cfg.to_dict(),
        "settings": {k: v for k, v in asdict(cfg).items() if k != "device"},
        "frames": dataset.length // ratio,
        "items": sum(s["items"] for s in shards),
        "shards": shards,
        "skipped": skipped,
        "padded": padded,
    }
    if not any(s["items"] for s in shards):
        raise ValueError(f"none of the {len(entries)} entries of {cfg.manifest} could be read; nothing to cache")
    if skipped:
        log.warning("%d unreadable manifest entries were skipped (listed in %s)", len(skipped), index_path)
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return index_path


def _existing_shard(path: Path, fingerprint: str) -> dict | None:
    if not path.exists():
        return None
    try:
        _, meta = read_safetensors(path)
    except CheckpointError:
        return None  # an unfinished or damaged shard is written again
    if meta.get("fingerprint") != fingerprint:
        raise CheckpointError(f"{path} was written with other settings or weights; use another --out")
    return meta


def _write_shard(
    path, rows, dataset, model: ETTAModel, cfg: CacheConfig, fingerprint: str, ratio: int, device, embedder=None
):
    from safetensors.torch import save_file

    frames = dataset.length // ratio
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("latent_mean", "latent_std", "text", "text_mask", "start", "total", "audio_embedding")
    }
    captions, kept, skipped = [], [], []
    padded_before = dataset.padded_count
    rows = list(rows)
    for b in range(0, len(rows), cfg.batch_size):
        items = []
        for i in rows[b : b + cfg.batch_size]:
            try:
                items.append(dataset[i])
            except AudioReadError as e:
                if cfg.on_error == "raise":
                    raise
                log.warning("skipping manifest entry %d: %s", i, e)
                skipped.append({"index": i, "path": dataset.entries[i].path, "reason": str(e)})
        if not items:
            continue
        audio = torch.stack([it["audio"][:, : frames * ratio] for it in items]).to(device)  # (b, channels, T r)
        mean, std = model.vae.encode(audio.to(model.vae.dtype))
        prompts = [it["caption"] for it in items]
        try:
            text, mask = model.text_encoder(prompts, truncate=cfg.truncate)
        except ValueError as e:
            first = items[0]["index"]
            raise ValueError(f"manifest entries from {first}: {e} (pass --truncate to cut long captions)") from e
        parts["latent_mean"].append(mean.float().cpu())
        parts["latent_std"].append(std.float().cpu())
        if embedder is not None:
            parts["audio_embedding"].append(embedder.embed(audio.float().cpu(), model.cfg.sample_rate).float().cpu())
        parts["text"].append(text.to(TEXT_DTYPES[cfg.text_dtype]).cpu())
        parts["text_mask"].append(mask.cpu())
        parts["start"].append(torch.tensor([it["seconds_start"] for it in items], dtype=torch.float32))
        parts["total"].append(torch.tensor([it["seconds_total"] for it in items], dtype=torch.float32))
        captions += prompts
        kept += [it["index"] for it in items]
    tensors = {
        "latent_mean": _cat(parts["latent_mean"], (0, model.cfg.vae.latent_dim, frames)),
        "latent_std": _cat(parts["latent_std"], (0, model.cfg.vae.latent_dim, frames)),
        "text": _cat(parts["text"], (0, model.cfg.text.max_length, model.cfg.text.dim), TEXT_DTYPES[cfg.text_dtype]),
        "text_mask": _cat(parts["text_mask"], (0, model.cfg.text.max_length), torch.bool),
        "seconds_start": _cat(parts["start"], (0,)),
        "seconds_total": _cat(parts["total"], (0,)),
    }
    if embedder is not None:
        tensors["audio_embedding"] = _cat(parts["audio_embedding"], (0, embedder.dim))
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "items": str(len(kept)),
        "captions": json.dumps(captions),
        "entries": json.dumps(kept),
        "skipped": json.dumps(skipped),
        "padded": str(dataset.padded_count - padded_before),  # clips shorter than the crop, zero-padded
    }
    atomic_write(path, lambda tmp: save_file(tensors, os.fspath(tmp), metadata=meta))
    return meta


def _cat(parts: list[torch.Tensor], empty_shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    return torch.cat(parts).contiguous() if parts else torch.zeros(empty_shape, dtype=dtype)


class LatentCache:
    """Reads a cache written by :func:`build_cache` (memory-mapped; items fetched by global index)."""

    KEYS = ("latent_mean", "latent_std", "text", "text_mask", "seconds_start", "seconds_total")

    def __init__(self, directory: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} does not exist: is {directory} a finished `etta cache` output?")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != CACHE_FORMAT or self.index.get("version") != CACHE_VERSION:
            raise CheckpointError(f"{index_path} is not an etta_engine cache of version {CACHE_VERSION}")
        self.model_config = ModelConfig.from_dict(self.index["model_config"])
        self.shards = [safe_open(os.fspath(self.directory / s["file"]), framework="pt") for s in self.index["shards"]]
        self.starts = []
        total = 0
        for s in self.index["shards"]:
            self.starts.append(total)
            total += s["items"]
        self.length = total
        if self.length == 0:
            raise ValueError(f"cache {directory} holds no items")

    def __len__(self) -> int:
        return self.length

    @property
    def has_audio_embeddings(self) -> bool:
        """Whether the cache holds ``audio_embedding`` per item (``etta cache --audio-embedder``)."""
        return self.index["settings"].get("audio_embedder") is not None

    @property
    def captions(self) -> list[str]:
        return [c for f in self.shards for c in json.loads(f.metadata()["captions"])]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.length:
            raise IndexError(f"cache index {i} is outside [0, {self.length - 1}]")
        shard = max(k for k, start in enumerate(self.starts) if start <= i)
        return shard, i - self.starts[shard]

    def get(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The items at ``indices``, stacked: latent_mean/std (B, C, T), text (B, L, D), text_mask (B, L),
        seconds_start/seconds_total (B,)."""
        rows = [self._locate(i) for i in indices]
        out = {}
        keys = self.KEYS + (("audio_embedding",) if self.has_audio_embeddings else ())
        for key in keys:
            out[key] = torch.cat([self.shards[s].get_slice(key)[r : r + 1] for s, r in rows])
        return out
