"""Training data: a JSONL manifest of (audio file, caption) pairs -> fixed-length stereo clips.

    entries = read_manifest("train.jsonl")          # {"path": "a.wav", "caption": "a dog barks"} per line
    data = AudioTextDataset(entries, sample_rate=44100, seconds=10.0, mix_probability=0.5, seed=0)
    sampler = ResumableSampler(len(data), seed=0, rank=rank, world_size=world_size)
    loader = DataLoader(data, batch_size=8, sampler=sampler, num_workers=4)
    for epoch in range(start_epoch, epochs):
        data.set_epoch(epoch)
        sampler.set_epoch(epoch)                    # keeps the loaded position when the epoch is unchanged
        for batch in loader: ...

Everything random (crops, mixing) is drawn from a ``torch.Generator`` seeded by (seed, epoch, item index)
alone, and the order of items from (seed, epoch) alone, so an item is the same in any worker, in any call
order, and after a resume: a trainer that saves ``sampler.state_dict()`` continues bit-exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
import torch

log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("skip", "raise")
_MANIFEST_KEYS = ("path", "caption", "offset", "duration")


class AudioReadError(OSError):
    """An audio file that is missing, cannot be decoded, or cannot be used (no samples, too many channels,
    NaN/inf samples, a region past its end). The message starts with the file's path."""

    def __init__(self, path: str | os.PathLike, reason: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if reason else self.path)

    def __reduce__(self):  # keep (path, reason) across processes (DataLoader workers pickle exceptions)
        return type(self), (self.path, self.reason)


# ---------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    """One training example: ``offset`` and ``duration`` (seconds) select a region of the file at ``path``
    (``duration=None``: to the end). ``path`` is absolute when the entry comes from :func:`read_manifest`."""

    path: str
    caption: str
    offset: float = 0.0
    duration: float | None = None


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Read a JSONL manifest: one object per line with "path" (relative paths are resolved against the
    manifest's directory), "caption" (a string) and optionally "offset" (>= 0 s) and "duration" (> 0 s or
    null). Blank lines are skipped. Errors are ``ValueError("<manifest>:<line>: <what is wrong>")``; the audio
    files themselves are not opened here (that happens, and fails per file, when they are loaded)."""
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            unknown = sorted(set(obj) - set(_MANIFEST_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(_MANIFEST_KEYS)}")
            for key in ("path", "caption"):
                if key not in obj:
                    raise ValueError(f'{where}: missing required key "{key}"')
            if not isinstance(obj["path"], str) or not obj["path"]:
                raise ValueError(f'{where}: "path" must be a non-empty string, got {obj["path"]!r}')
            if not isinstance(obj["caption"], str):
                raise ValueError(f'{where}: "caption" must be a string, got {type(obj["caption"]).__name__}')
            offset = _manifest_number(obj.get("offset", 0.0), "offset", where, allow_zero=True)
            duration = obj.get("duration")
            if duration is not None:
                duration = _manifest_number(duration, "duration", where, allow_zero=False)
            audio_path = os.path.normpath(os.path.join(base, obj["path"]))  # an absolute obj["path"] is kept
            entries.append(ManifestEntry(audio_path, obj["caption"], offset, duration))
    if not entries:
        raise ValueError(f"{path}: the manifest has no entries")
    return entries


def _manifest_number(value, key: str, where: str, *, allow_zero: bool) -> float:
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'{where}: "{key}" must be a number {bound} (seconds), got {value!r}')
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f'{where}: "{key}"={value} must be a finite number {bound} (seconds)')
    return float(value)


# ---------------------------------------------------------------------------------------------- audio


def resample(audio: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """``audio`` (..., C, S) float32 resampled from ``rate_in`` to ``rate_out`` Hz with soxr (VHQ)."""
    flat = audio.reshape(-1, audio.shape[-2], audio.shape[-1]).cpu().numpy()
    items = [soxr.resample(np.ascontiguousarray(item.T), rate_in, rate_out, quality="VHQ").T for item in flat]
    out = torch.from_numpy(np.ascontiguousarray(np.stack(items), dtype=np.float32))  # (N, C, S')
    return out.reshape(*audio.shape[:-1], out.shape[-1])


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    channels: int = 2,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """The region [offset, offset + duration) s of a file as (channels, samples) float32 at ``sample_rate``.

    Only that region is read (``duration=None``: to the end of the file; a region running past the end is
    cut there): file samples [round(offset * file_rate), that + round(duration * file_rate)), resampled with
    soxr (VHQ) to ``sample_rate`` if the rates differ. channels=2: mono is duplicated, stereo kept;
    channels=1: stereo is averaged. Files with more than 2 channels are refused (no downmix rule fits every
    layout). Raises :class:`AudioReadError` (an OSError whose message starts with the path)
    for a missing, undecodable or unusable file, ``ValueError`` for bad arguments.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate!r} must be a positive integer")
    if channels not in (1, 2):
        raise ValueError(f"channels={channels!r} is not allowed; choices: 1, 2")
    if not (math.isfinite(offset) and offset >= 0):
        raise ValueError(f"offset={offset} must be a finite number >= 0 (seconds)")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration={duration} must be a finite number > 0 (seconds) or None")
    if not os.path.isfile(path):
        raise AudioReadError(path, "no such file")
    try:
        with sf.SoundFile(path) as f:
            rate, n_channels, n_frames = f.samplerate, f.channels, f.frames
            if n_channels > 2:
                raise AudioReadError(path, f"has {n_channels} channels; allowed: 1 or 2")
            start = round(offset * rate)
            if start >= n_frames:
                raise AudioReadError(path, f"offset={offset} s is at or past the end ({n_frames / rate:.6g} s)")
            f.seek(start)
            data = f.read(-1 if duration is None else round(duration * rate), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:  # libsndfile's errors (bad header, truncated data, ...)
        raise AudioReadError(path, f"cannot decode: {e}") from e
    if data.shape[0] == 0:
        raise AudioReadError(path, f"no samples in the region offset={offset} s, duration={duration} s")
    if not np.isfinite(data).all():
        raise AudioReadError(path, "contains NaN or inf samples")
    if channels == 1 and n_channels == 2:
        data = data.mean(axis=1, keepdims=True)
    x = torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))  # (C, S)
    if rate != sample_rate:
        x = resample(x, rate, sample_rate)
    return x.expand(channels, -1).contiguous() if x.shape[0] != channels else x


class CropResult(NamedTuple):
    """A fixed-length clip and the timing numbers a DiT conditions on (stable-audio-tools' convention)."""

    audio: torch.Tensor  # (C, length)
    seconds_start: float  # floor(offset / sample_rate)
    seconds_total: float  # ceil(S / sample_rate): the length of the source audio
    valid_samples: int  # min(S - offset, length): samples before the zero padding


def crop_or_pad(
    audio: torch.Tensor,
    length: int,
    generator: torch.Generator | None,
    random_crop: bool = True,
    sample_rate: int = 44100,
) -> CropResult:
    """A (C, length) window of ``audio`` (C, S). S > length: the window starts at an offset drawn uniformly
    from {0, ..., S - length} with ``generator`` (``None``: torch's global RNG; ``random_crop=False``: 0).
    S <= length: offset 0 and zeros on the right. One integer is drawn only in the first case."""
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a (channels, samples) tensor, got {getattr(audio, 'shape', type(audio))}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} must be an integer >= 1")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate} must be positive")
    S = audio.shape[-1]
    if S > length:
        offset = int(torch.randint(0, S - length + 1, (1,), generator=generator)) if random_crop else 0
        clip = audio[:, offset : offset + length].contiguous()
        valid = length
    else:
        offset = 0
        clip = torch.nn.functional.pad(audio, (0, length - S))
        valid = S
    return CropResult(clip, float(math.floor(offset / sample_rate)), float(math.ceil(S / sample_rate)), valid)


def mix(a: torch.Tensor, b: torch.Tensor, snr_db: float, offset: int) -> torch.Tensor:
    """AudioGen's mixing augmentation: ``a + g * b_shifted`` where b_shifted[:, t] = b[:, t - offset]
    (zeros for t < offset, b's last ``offset`` samples dropped) and g makes
    ``10 * log10(P(a) / P(g * b_shifted)) == snr_db``, P = mean square over channels and samples (in fp64):
    g = sqrt(P(a) / (P(b_shifted) * 10 ** (snr_db / 10))). a, b: (C, L), 0 <= offset < L; returns a's dtype.
    A silent b_shifted returns ``a`` unchanged; a silent ``a`` (no level to match) returns b_shifted as is."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be (channels, samples) tensors of the same shape, got "
            f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}"
        )
    L = a.shape[-1]
    if not 0 <= offset < L:
        raise ValueError(f"offset={offset} is outside [0, {L - 1}]")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db={snr_db} must be finite")
    shifted = torch.zeros_like(b, dtype=torch.float64)
    shifted[:, offset:] = b[:, : L - offset]
    power_a = a.double().square().mean()
    power_b = shifted.square().mean()
    if power_b == 0:
        return a.clone()
    if power_a == 0:
        return shifted.to(a.dtype)
    gain = torch.sqrt(power_a / (power_b * 10.0 ** (snr_db / 10.0)))
    return (a.double() + gain * shifted).to(a.dtype)


# ---------------------------------------------------------------------------------------------- dataset


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit generator seed from (seed, epoch, index) alone (BLAKE2b, the same in every process; unlike
    ``seed * A + epoch * B + index`` it does not repeat seeds between epochs of large datasets)."""
    digest = hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class AudioTextDataset(torch.utils.data.Dataset):
    """Fixed-length stereo clips with captions, optionally mixed in pairs (AudioGen).

    Item i (for the epoch set by :meth:`set_epoch`) is a dict: ``audio`` (channels, round(seconds * sample_rate))
    float32, ``caption`` str, ``seconds_start`` and ``seconds_total`` (floats, see :func:`crop_or_pad`; those
    of the first clip when mixed) and ``index`` (the manifest entry whose audio was loaded: i, or its
    replacement under ``on_error="skip"``). Its random draws, in this order from a generator seeded with
    ``item_seed(seed, epoch, i)``, are: the seeds of the two crops, u_mix, u_snr, u_offset (uniform [0, 1)) and
    the partner j. They are always all drawn, so the crop of clip i does not depend on ``mix_probability``.
    Mixing happens when u_mix < mix_probability, with partner j != i (uniform), SNR ``lo + (hi - lo) * u_snr``
    dB, b delayed by ``floor(u_offset * length)`` samples, and caption ``caption_i + caption_joiner +
    caption_j``; the mix is not renormalised (peaks may exceed 1).

    on_error="skip": an unreadable entry is replaced by the next readable one (i+1, i+2, ..., wrapping), its
    index added to ``skipped`` and one warning logged; "raise": :class:`AudioReadError` naming the file and the
    entry. Clips shorter than ``seconds`` are zero-padded; ``padded_count`` counts the items whose first clip
    was. ``skipped`` and ``padded_count`` are per process: with DataLoader workers each worker has its own.
    ``channels`` (2 by default, 1 for mono models) is passed to :func:`load_audio`.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        sample_rate: int,
        seconds: float,
        *,
        random_crop: bool = True,
        mix_probability: float = 0.0,
        snr_range: tuple[float, float] = (-5.0, 5.0),
        on_error: str = "skip",
        seed: int = 0,
        caption_joiner: str = ", ",
        channels: int = 2,
    ) -> None:
        entries = list(entries)
        if not entries:
            raise ValueError("entries is empty; give at least one ManifestEntry")
        for k, e in enumerate(entries):
            if not isinstance(e, ManifestEntry):
                raise TypeError(f"entries[{k}] must be a ManifestEntry, got {type(e).__name__}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate!r} must be a positive integer")
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds={seconds} must be a finite number > 0")
        length = round(seconds * sample_rate)
        if length < 1:
            raise ValueError(f"seconds={seconds} is shorter than one sample at {sample_rate} Hz")
        if not 0.0 <= mix_probability <= 1.0:
            raise ValueError(f"mix_probability={mix_probability} is outside [0, 1]")
        if mix_probability > 0 and len(entries) < 2:
            raise ValueError(f"mix_probability={mix_probability} needs at least 2 entries, got {len(entries)}")
        lo, hi = (float(v) for v in snr_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"snr_range={tuple(snr_range)} must be two finite numbers (lo, hi) with lo <= hi")
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error={on_error!r} is not allowed; choices: {list(ON_ERROR_CHOICES)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if channels not in (1, 2):
            raise ValueError(f"channels={channels!r} is not allowed; choices: 1 (mono models), 2")
        self.entries = entries
        self.channels = channels
        self.sample_rate = sample_rate
        self.seconds = float(seconds)
        self.length = length
        self.random_crop = random_crop
        self.mix_probability = float(mix_probability)
        self.snr_range = (lo, hi)
        self.on_error = on_error
        self.seed = seed
        self.caption_joiner = caption_joiner
        self.epoch = 0
        self.skipped: set[int] = set()
        self.padded_count = 0

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch={epoch!r} must be an integer >= 0")
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        n = len(self.entries)
        if not 0 <= i < n:
            raise IndexError(f"index={i} is outside [0, {n - 1}]")
        g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i))
        crop_seed_a, crop_seed_b = torch.randint(0, 2**62, (2,), generator=g).tolist()
        u_mix, u_snr, u_offset = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        partner = int(torch.randint(0, max(n - 1, 1), (1,), generator=g))

        k, caption, clip = self._clip(i, crop_seed_a)
        if clip.valid_samples < self.length:
            self.padded_count += 1
        audio = clip.audio
        if u_mix < self.mix_probability:
            j = partner if partner < i else partner + 1  # uniform over the entries other than i
            _, caption_b, clip_b = self._clip(j, crop_seed_b)
            lo, hi = self.snr_range
            offset = min(int(u_offset * self.length), self.length - 1)
            audio = mix(audio, clip_b.audio, lo + (hi - lo) * u_snr, offset)
            caption = caption + self.caption_joiner + caption_b
        return {
            "audio": audio,
            "caption": caption,
            "seconds_start": clip.seconds_start,
            "seconds_total": clip.seconds_total,
            "index": k,
        }

    def _clip(self, i: int, crop_seed: int) -> tuple[int, str, CropResult]:
        k, audio = self._load(i)
        g = torch.Generator().manual_seed(crop_seed)
        crop = crop_or_pad(audio, self.length, g, self.random_crop, self.sample_rate)
        return k, self.entries[k].caption, crop

    def _load(self, i: int) -> tuple[int, torch.Tensor]:
        """Entry i's audio, or under "skip" that of the first readable entry after it: (entry index, audio)."""
        n = len(self.entries)
        for step in range(n):
            k = (i + step) % n
            if k in self.skipped:  # known bad: not read again (and not warned about again)
                continue
            e = self.entries[k]
            try:
                return k, load_audio(e.path, self.sample_rate, self.channels, e.offset, e.duration)
            except AudioReadError as err:
                if self.on_error == "raise":
                    raise AudioReadError(e.path, f"{err.reason} (manifest entry {k})") from err
                self.skipped.add(k)
                log.warning("skipping manifest entry %d: %s", k, err)
        raise RuntimeError(f"none of the {n} manifest entries can be read (on_error='skip'; see the warnings)")


# ---------------------------------------------------------------------------------------------- sampler


class ResumableSampler(torch.utils.data.Sampler[int]):
    """The order of an epoch, split over ranks, resumable mid-epoch.

    Epoch e's order is ``torch.randperm(n, generator=Generator().manual_seed(seed + e))`` (``shuffle=False``:
    0, 1, ..., n-1), cut to a multiple of world_size (drop_last=True) or extended by repeating its start
    (drop_last=False, as DistributedSampler). Rank r takes items r, r + world_size, ..., so the first
    ``k * world_size`` items of the order are exactly those consumed after k steps on every rank.

    ``set_position(p)`` (p = samples consumed this epoch over all ranks, as the trainer counts them) makes the
    next iteration skip the first ``p // world_size`` items of this rank's share. The sampler does not count
    by itself: a DataLoader prefetches, so only the trainer knows what was consumed. ``set_epoch`` resets the
    position to 0 when the epoch changes and keeps it otherwise, so a loaded state survives the usual
    ``sampler.set_epoch(epoch)`` at the top of the epoch loop.
    """

    def __init__(
        self,
        dataset_len: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(dataset_len, bool) or not isinstance(dataset_len, int) or dataset_len < 1:
            raise ValueError(f"dataset_len={dataset_len!r} must be an integer >= 1")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r} must be an integer >= 1")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r} is outside [0, {world_size - 1}]")
        if drop_last and dataset_len < world_size:
            raise ValueError(f"dataset_len={dataset_len} < world_size={world_size}: drop_last would leave nothing")
        self.dataset_len = dataset_len
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    @property
    def total_size(self) -> int:
        """Items per epoch over all ranks: n rounded down (drop_last) or up to a multiple of world_size."""
        n, w = self.dataset_len, self.world_size
        return n - n % w if self.drop_last else -(-n // w) * w

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch={epoch!r} must be an integer >= 0")
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def set_position(self, samples_consumed_in_epoch: int) -> None:
        p = samples_consumed_in_epoch
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= self.total_size:
            raise ValueError(f"position={p!r} is outside [0, {self.total_size}] (samples per epoch, all ranks)")
        self.position = p

    def epoch_order(self) -> list[int]:
        """This epoch's order over all ranks (``total_size`` items)."""
        n = self.dataset_len
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            return order[: self.total_size]
        return (order * -(-self.total_size // n))[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        share = self.epoch_order()[self.rank :: self.world_size]
        return iter(share[self.position // self.world_size :])

    def __len__(self) -> int:
        return self.total_size // self.world_size - self.position // self.world_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "position"}:
            raise ValueError(f"sampler state must have keys ['epoch', 'position'], got {sorted(state)}")
        self.set_epoch(int(state["epoch"]))
        self.set_position(int(state["position"]))


__all__ = [
    "AudioReadError",
    "AudioTextDataset",
    "CropResult",
    "ManifestEntry",
    "ResumableSampler",
    "crop_or_pad",
    "item_seed",
    "load_audio",
    "mix",
    "read_manifest",
]
