"""The contract between the exporter and the runtime: the graphs' interfaces and the manifest file.

An export directory holds one ONNX file per graph, ``manifest.json`` and the tokenizer. The interfaces
below are the single source of truth for input and output names, dtypes and shapes: the exporter names
the graphs' inputs from them and the runtime checks every loaded graph against them. Shapes are tuples of
ints (fixed sizes) and dimension names (dynamic sizes):

- ``conditioner``: token ids and mask (batch, text), the number values (batch, n_numbers) in the order of
  ``config.number_keys`` -> the DiT's context (batch, context, cond_dim) with context = text + n_numbers,
  its mask and the global conditioning (batch, global_cond_dim). The T5 encoder and the number
  conditioners in one graph.
- ``dit``: one velocity evaluation ``v(x, t | context, global_cond)``.
- ``dit_cfg``: classifier-free guidance in one call: cond and uncond are batched inside the graph and the
  result is ``v_u + s (v_c - v_u)``, blended with its rescaled form by ``cfg_rescale`` (see
  :func:`etta_engine.sampling.cfg`). ``uncond_context`` must have the length of ``context``.
- ``vae_decoder``: latents (batch, latent_dim, frames) -> audio (batch, audio_channels, frames x ratio).
- ``dit_prepare``, ``dit_cached``, ``dit_cfg_cached``: the DiT with the per-generation work hoisted out of the
  solver's loop (:mod:`etta_engine.engine`). ``dit_prepare`` runs once per generation on the solver's
  evaluation times (steps,): every block's adaLN output for every call (``modulation``, steps x depth rows,
  and ``final_modulation``) and every block's cross-attention K/V of the prompt (``kv``). The step graphs then
  take ``step``, the index of the call, and run only what depends on x: ``dit_cached`` with every row attending
  to its prompt, ``dit_cfg_cached`` as ``dit_cfg`` with the official null memory for the uncond half, whose
  cross-attention is exactly zero and skipped (the uncond rows share the cond rows' tables).

Every graph takes and returns fp32 (and bool/int64) tensors whatever its compute dtype: an fp16 graph casts
inside, so the sampler's state stays fp32 and the runtime does not depend on the variant.
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etta_engine.config import ModelConfig

FORMAT = "etta_engine-onnx"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("conditioner", "dit", "dit_cfg", "vae_decoder", "dit_prepare", "dit_cached", "dit_cfg_cached")
CACHED_GRAPHS = ("dit_prepare", "dit_cached", "dit_cfg_cached")
DTYPES = ("fp32", "fp16")  # compute dtypes of an export; the interfaces stay fp32
MIN_OPSET = 18  # the torch.onnx dynamo exporter emits opset 18 or newer


class ManifestError(ValueError):
    """An export directory, manifest or graph that does not match what the runtime expects."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``dtype`` is a NumPy dtype name; ``shape`` holds ints and dimension names."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def describe(self) -> str:
        return f"{self.name}: {self.dtype} ({', '.join(str(d) for d in self.shape)})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class GraphInterface:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def interface(graph: str, cfg: ModelConfig) -> GraphInterface:
    """The inputs and outputs of ``graph`` for a model of config ``cfg``."""
    if graph not in GRAPHS:
        raise ManifestError(f"unknown graph {graph!r}; choices: {list(GRAPHS)}")
    C, D, G = cfg.dit.io_channels, cfg.dit.cond_dim, cfg.dit.global_cond_dim
    f32 = "float32"
    x = TensorSpec("x", f32, ("batch", C, "frames"))
    t = TensorSpec("t", f32, ("batch",))
    context = TensorSpec("context", f32, ("batch", "context", D))
    context_mask = TensorSpec("context_mask", "bool", ("batch", "context"))
    global_cond = TensorSpec("global_cond", f32, ("batch", G))
    velocity = TensorSpec("velocity", f32, ("batch", C, "frames"))
    dit = cfg.dit
    modulation = TensorSpec("modulation", f32, ("steps", dit.depth, "batch", 9 * dit.width))
    final_modulation = TensorSpec("final_modulation", f32, ("steps", "batch", 2 * dit.width))
    kv = TensorSpec("kv", f32, (dit.depth, "batch", "context", 2, dit.cross_heads, dit.cross_head_dim))
    step = TensorSpec("step", "int64", (1,))
    guidance = (TensorSpec("cfg_scale", f32, ("batch",)), TensorSpec("cfg_rescale", f32, ("batch",)))
    if graph == "conditioner":
        return GraphInterface(
            inputs=(
                TensorSpec("input_ids", "int64", ("batch", "text")),
                TensorSpec("attention_mask", "int64", ("batch", "text")),
                TensorSpec("numbers", f32, ("batch", len(cfg.number_keys))),
            ),
            outputs=(context, context_mask, global_cond),
        )
    if graph == "dit":
        return GraphInterface(inputs=(x, t, context, context_mask, global_cond), outputs=(velocity,))
    if graph == "dit_cfg":
        return GraphInterface(
            inputs=(
                x,
                t,
                context,
                context_mask,
                TensorSpec("uncond_context", f32, ("batch", "context", D)),
                TensorSpec("uncond_context_mask", "bool", ("batch", "context")),
                global_cond,
                *guidance,
            ),
            outputs=(velocity,),
        )
    if graph == "dit_prepare":
        return GraphInterface(
            inputs=(TensorSpec("times", f32, ("steps",)), context, global_cond),
            outputs=(modulation, final_modulation, kv),
        )
    if graph in ("dit_cached", "dit_cfg_cached"):
        extra = guidance if graph == "dit_cfg_cached" else ()
        return GraphInterface(
            inputs=(x, step, modulation, final_modulation, kv, context_mask, *extra), outputs=(velocity,)
        )
    return GraphInterface(
        inputs=(TensorSpec("latents", f32, ("batch", cfg.vae.latent_dim, "frames")),),
        outputs=(TensorSpec("audio", f32, ("batch", cfg.vae.audio_channels, "samples")),),
    )


def dim_ranges(cfg: ModelConfig) -> dict[str, tuple[int, int | None]]:
    """Allowed sizes of the dynamic dimensions (inclusive; None: unbounded) for the ONNX Runtime graphs.

    frames: up to ``max_seconds`` of latents; text: the text encoder's limit; context: text plus the number
    tokens; steps: the solver's calls of one generation. TensorRT engines narrow these to their optimisation
    profiles.
    """
    max_frames = max(1, round(cfg.max_seconds * cfg.latent_rate))
    return {
        "batch": (1, None),
        "steps": (1, None),
        "frames": (1, max_frames),
        "text": (1, cfg.text.max_length),
        "context": (1 + len(cfg.number_keys), cfg.context_length),
    }


@dataclass(frozen=True)
class GraphEntry:
    """A graph of an export: its file, compute dtype and the interface it was exported with."""

    file: str
    dtype: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: str | None = None  # a file beside the graph holding its large tensors
    sha256: str | None = None  # of the .onnx file

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "dtype": self.dtype,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "external_data": self.external_data,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphEntry:
        return cls(
            file=d["file"],
            dtype=d["dtype"],
            inputs=tuple(TensorSpec.from_dict(s) for s in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(s) for s in d["outputs"]),
            external_data=d.get("external_data"),
            sha256=d.get("sha256"),
        )


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an export directory.

    tokenizer: ``{"kind": "byt5"}`` (the byte-level tokenizer of random-init text encoders, implemented in
    :mod:`etta_engine.runtime.tokenizer`) or ``{"kind": "tokenizers", "file": "tokenizer.json", "pad_id": 0}``
    (a pretrained T5's tokenizer, run with the ``tokenizers`` library).
    """

    config: ModelConfig
    opset: int
    graphs: dict[str, GraphEntry]
    tokenizer: dict[str, Any] | None = None
    export: dict[str, Any] = field(default_factory=dict)  # versions and settings, for the record

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "sample_rate": self.config.sample_rate,
                "latent_rate": self.config.latent_rate,
                "opset": self.opset,
                "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
                "tokenizer": self.tokenizer,
                "dims": {k: list(v) for k, v in dim_ranges(self.config).items()},
                "export": self.export,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{source} is not valid JSON: {e}") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ManifestError(f"{source} is not an etta_engine ONNX manifest (format {FORMAT!r} expected)")
        if d.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{source} has format_version {d.get('format_version')!r}; this runtime reads {FORMAT_VERSION}"
            )
        try:
            config = ModelConfig.from_dict(d["config"])
            graphs = {name: GraphEntry.from_dict(g) for name, g in d["graphs"].items()}
            manifest = cls(config, int(d["opset"]), graphs, d.get("tokenizer"), d.get("export", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{source} is malformed: {type(e).__name__}: {e}") from e
        unknown = sorted(set(graphs) - set(GRAPHS))
        if unknown:
            raise ManifestError(f"{source} lists unknown graphs {unknown}; known: {list(GRAPHS)}")
        for name, entry in graphs.items():
            manifest.check_entry(name, entry, source)
        return manifest

    def check_entry(self, name: str, entry: GraphEntry, source: str) -> None:
        """The manifest's record of a graph must be the interface this runtime expects."""
        expected = interface(name, self.config)
        if entry.dtype not in DTYPES:
            raise ManifestError(f"{source}: graph {name!r} has dtype {entry.dtype!r}; allowed: {list(DTYPES)}")
        for kind, got, want in (
            ("inputs", entry.inputs, expected.inputs),
            ("outputs", entry.outputs, expected.outputs),
        ):
            if tuple(got) != tuple(want):
                raise ManifestError(
                    f"{source}: graph {name!r} was exported with {kind} [{'; '.join(s.describe() for s in got)}] "
                    f"but this runtime expects [{'; '.join(s.describe() for s in want)}]; re-export it"
                )

    @property
    def dims(self) -> dict[str, tuple[int, int | None]]:
        return dim_ranges(self.config)


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of an export directory, checked; clear errors for a missing directory or file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; expected the output of `etta export onnx`")
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST}; expected the output of `etta export onnx`")
    return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))
