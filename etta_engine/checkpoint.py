"""Checkpoints: ``save``/``load`` of our format and import of official ETTA checkpoints.

Our format is one safetensors file whose metadata holds the format tag, the module kind
(``model``, ``dit`` or ``vae``) and the full config as JSON. Writes are atomic (a temporary file
in the same directory, fsync, rename), so a crash mid-write leaves the previous file intact.
Official ``.ckpt`` files are read with ``torch.load(weights_only=True)``: nothing is unpickled
beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from etta_engine._files import atomic_write
from etta_engine.config import PRESETS, DiTConfig, ModelConfig, VAEConfig, get_preset
from etta_engine.convert import convert_official, is_official
from etta_engine.models.dit import DiT
from etta_engine.models.model import ETTAModel
from etta_engine.models.vae import VAE

FORMAT = "etta_engine"
FORMAT_VERSION = "1"
ASSETS = Path(__file__).resolve().parent / "assets"
# Trained models that ship inside the package, by name: they load offline. A name here takes precedence
# over the preset of the same name (whose random weights remain ``ETTAModel.from_preset(name)``).
PRETRAINED: dict[str, Path] = {"demo": ASSETS / "demo.safetensors"}
_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "model": (ETTAModel, ModelConfig),
    "dit": (DiT, DiTConfig),
    "vae": (VAE, VAEConfig),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not match its config."""


def _kind_of(module: nn.Module) -> str:
    for kind, (cls, _) in _KINDS.items():
        if isinstance(module, cls):
            return kind
    raise TypeError(f"save() takes an ETTAModel, DiT or VAE, got {type(module).__name__}")


def checkpoint_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that belong in ``module``'s checkpoint (a pretrained text encoder's do not)."""
    sd = module.state_dict()
    if isinstance(module, ETTAModel) and not module.saves_text_encoder:
        sd = {k: v for k, v in sd.items() if not k.startswith("text_encoder.")}
    return sd


def _dedupe(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that are views of the same memory as an earlier one (tied weights): (tensors, {alias: kept})."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for key, t in sd.items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() > 0 and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.detach().contiguous()
    return tensors, aliases


def save(path: str | os.PathLike, module: nn.Module, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``module`` (ETTAModel, DiT or VAE) and its config to ``path`` (safetensors), atomically."""
    from safetensors.torch import save_file

    kind = _kind_of(module)
    tensors, aliases = _dedupe(checkpoint_state_dict(module))
    meta = dict(metadata or {})
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        kind=kind,
        config=json.dumps(module.cfg.to_dict(), sort_keys=True),
        aliases=json.dumps(aliases, sort_keys=True),
    )
    tensors = {k: v.cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, os.fspath(tmp), metadata=meta))


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip) or ``"torch-legacy"`` from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path} is empty or truncated ({len(head)} bytes)")
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:1] == b"\x80":
        return "torch-legacy"
    header_len = int.from_bytes(head[:8], "little")
    if 0 < header_len < 100_000_000 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(f"{path} is neither a safetensors file nor a torch checkpoint")


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(tensors, metadata) of a safetensors file, with clear errors for truncated or corrupt files."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or not a valid safetensors file: {e}") from e
    return tensors, metadata


def read_torch_checkpoint(path: str | os.PathLike, mmap: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a ``.ckpt`` (``{"state_dict": ...}`` or a bare dict), read with weights_only=True.
    ``mmap`` (zip-format files only) maps the file instead of reading it: training checkpoints that also
    hold optimizer state load without holding all of it in memory."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, which are never unpickled here; "
            f"save its state_dict alone. ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is truncated or not a valid torch checkpoint: {e}") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (expected {{'state_dict': {{...}}}})")
    return sd


def check_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError listing missing, unexpected and shape-mismatched keys, if any."""
    expected = {k: tuple(v.shape) for k, v in checkpoint_state_dict(module).items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs config {expected[k]}"
        for k in sorted(set(sd) & set(expected))
        if tuple(sd[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:20])
        more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}" if items else ""

    raise CheckpointError(
        f"{source} does not match its config:"
        + listing("missing keys", missing)
        + listing("unexpected keys", unexpected)
        + listing("mismatched shapes", mismatched)
    )


def _build(kind: str, cfg) -> nn.Module:
    with torch.device("meta"):
        return _KINDS[kind][0](cfg)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` in memory aligned to 64 bytes. Tensors read from a file can sit at any offset, which slows
    vectorised kernels and can change the last bit of their results; a fresh allocation is aligned."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def _materialize(module: nn.Module, sd: dict[str, torch.Tensor], source: str, device, dtype) -> nn.Module:
    check_state_dict(module, sd, source)
    sd = {k: _aligned(v) for k, v in sd.items()}
    module.load_state_dict(sd, strict=False, assign=True)
    left = [n for n, t in module.state_dict().items() if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: tensors were not loaded: {left[:10]}")
    if isinstance(module, ETTAModel) and module.text_encoder is not None:
        module.text_encoder.model.tie_weights()  # loading by assignment unties shared embeddings
    module = module.to(device)
    if dtype is not None:
        module = module.to(dtype)
    return module.eval()


def is_pretrained(name_or_path: str | os.PathLike) -> bool:
    """True if ``name_or_path`` names a model that ships trained with the package (:data:`PRETRAINED`)."""
    return isinstance(name_or_path, str) and name_or_path in PRETRAINED


def load_model(name_or_path: str | os.PathLike, text_encoder: str | os.PathLike | None = None) -> ETTAModel:
    """A full model: the name of a shipped trained model (``"demo"``), a preset name (random weights, seed 0)
    or an ETTAModel checkpoint (ours or official), with its text encoder loaded (``text_encoder``: a local T5
    directory for pretrained encoders)."""
    if is_pretrained(name_or_path):
        path = PRETRAINED[name_or_path]
        if not path.is_file():
            raise FileNotFoundError(
                f"the trained {name_or_path!r} model should ship at {path} but is missing; reinstall the package "
                "or rebuild it with scripts/train_demo.py"
            )
        model = load(path)
    elif isinstance(name_or_path, str) and name_or_path in PRESETS:
        model = ETTAModel.from_preset(name_or_path)
    elif Path(name_or_path).is_file():
        model = load(name_or_path)
        if not isinstance(model, ETTAModel):
            raise ValueError(f"{name_or_path} holds a {type(model).__name__}, not a full text-to-audio model")
    else:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a trained model ({sorted(PRETRAINED)}), a preset ({sorted(PRESETS)}) "
            "nor a checkpoint file"
        )
    if model.text_encoder is None:
        model.load_text_encoder(text_encoder)
    return model


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: ModelConfig | str | None = None,
    text_encoder_path: str | os.PathLike | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load a checkpoint: ours (any kind) or an official ETTA ``.ckpt``/``.safetensors``.

    ``config`` is used for official files only, which carry none (default: the ``etta`` preset).
    ``text_encoder_path`` loads a pretrained T5 into a returned ETTAModel. With ``strict=False``,
    official keys that have no place in our model are skipped with a warning instead of an error.
    Returns the module in eval mode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    fmt = _sniff(path)
    if fmt == "safetensors":
        sd, metadata = read_safetensors(path, device=device)
    else:
        sd, metadata = read_torch_checkpoint(path, mmap=fmt == "torch"), {}

    if metadata.get("format") == FORMAT:
        if metadata.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path} has format version {metadata.get('format_version')!r}; this is {FORMAT_VERSION}"
            )
        kind = metadata.get("kind")
        if kind not in _KINDS:
            raise CheckpointError(f"{path} has kind {kind!r}; allowed: {sorted(_KINDS)}")
        try:
            cfg = _KINDS[kind][1].from_dict(json.loads(metadata["config"]))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path} has an invalid config: {e}") from e
        for alias, kept in json.loads(metadata.get("aliases", "{}")).items():
            sd[alias] = sd[kept]
    elif is_official(sd):
        kind, sd, unknown = convert_official(sd)
        if unknown:
            msg = f"{path}: {len(unknown)} official keys have no place in etta_engine's model: {unknown[:10]}"
            if strict:
                raise CheckpointError(msg + " (pass strict=False to skip them)")
            warnings.warn(msg, stacklevel=2)
        model_cfg = get_preset(config) if isinstance(config, str) else config or get_preset("etta")
        cfg = model_cfg if kind == "model" else model_cfg.vae
        if kind == "model" and model_cfg.text.pretrained is None:
            raise CheckpointError(f"official checkpoints carry no text encoder; config {model_cfg.name!r} expects one")
    else:
        raise CheckpointError(f"{path} is neither an etta_engine checkpoint nor an official ETTA checkpoint")

    module = _materialize(_build(kind, cfg), sd, str(path), device, dtype)
    if text_encoder_path is not None:
        if not isinstance(module, ETTAModel):
            raise ValueError(f"text_encoder_path is only for full models; {path} holds a {kind}")
        module.load_text_encoder(text_encoder_path)
        if dtype is not None:
            module.text_encoder.to(dtype)
    return module


# ------------------------------------------------------------------ audio-prompt adapters


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_reference(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """(reference, sha256) of a base model: a shipped model's name or a preset name as is, a file as its absolute
    path; the sha256 of the file behind it ("" for presets, whose random weights are fixed by their seed)."""
    if is_pretrained(name_or_path):
        return str(name_or_path), file_sha256(PRETRAINED[name_or_path]) if PRETRAINED[name_or_path].is_file() else ""
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        return name_or_path, ""
    path = Path(name_or_path).resolve()
    return str(path), file_sha256(path)


def save_adapter(
    path: str | os.PathLike,
    adapter: nn.Module,
    *,
    stage: int,
    base: str | os.PathLike,
    parent: str | os.PathLike | None = None,
    names: list[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the tensors ``names`` of an :class:`~etta_engine.models.adapter.AudioAdapter` (default: all) with
    its config, the training ``stage``, and references (with sha256) to the ``base`` model and to the ``parent``
    adapter checkpoint that holds the rest, atomically."""
    from safetensors.torch import save_file

    sd = adapter.state_dict()
    unknown = sorted(set(names or ()) - set(sd))
    if unknown:
        raise ValueError(f"{unknown} are not tensors of the adapter")
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items() if names is None or k in names}
    base_ref, base_sha = model_reference(base)
    meta = dict(metadata or {})
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        kind="adapter",
        config=json.dumps(adapter.cfg.to_dict(), sort_keys=True),
        stage=str(stage),
        base=base_ref,
        base_sha256=base_sha,
        parent="" if parent is None else str(Path(parent).resolve()),
        parent_sha256="" if parent is None else file_sha256(parent),
    )
    return atomic_write(path, lambda tmp: save_file(tensors, os.fspath(tmp), metadata=meta))


def load_adapter(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """(AudioAdapter in eval mode, metadata) of an adapter checkpoint, with the tensors its parent chain holds."""
    from etta_engine.models.adapter import AdapterConfig, AudioAdapter

    chain: list[tuple[Path, dict, dict]] = []
    current: Path | None = Path(path)
    while current is not None:
        if not current.is_file():
            raise FileNotFoundError(f"adapter checkpoint {current} does not exist")
        if any(current.resolve() == p.resolve() for p, _, _ in chain):
            raise CheckpointError(f"adapter checkpoint {current} is its own ancestor")
        sd, meta = read_safetensors(current)
        if meta.get("format") != FORMAT or meta.get("kind") != "adapter":
            raise CheckpointError(f"{current} is not an etta_engine adapter checkpoint (kind {meta.get('kind')!r})")
        chain.append((current, sd, meta))
        parent = meta.get("parent") or None
        if parent is not None and Path(parent).is_file() and file_sha256(parent) != meta.get("parent_sha256"):
            raise CheckpointError(f"{current}: its parent {parent} changed since it was written (sha256 differs)")
        current = None if parent is None else Path(parent)
    top_path, _, top_meta = chain[0]
    try:
        cfg = AdapterConfig.from_dict(json.loads(top_meta["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{top_path} has an invalid adapter config: {e}") from e
    merged: dict[str, torch.Tensor] = {}
    for p, sd, meta in reversed(chain):  # the root first; each stage overwrites what it trained
        if (meta.get("base"), meta.get("base_sha256")) != (top_meta.get("base"), top_meta.get("base_sha256")):
            raise CheckpointError(f"{top_path} and its ancestor {p} were trained on different base models")
        merged.update(sd)
    with torch.device("meta"):
        adapter = AudioAdapter(cfg)
    return _materialize(adapter, merged, str(top_path), device, None), dict(top_meta)
