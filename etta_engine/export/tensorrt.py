"""TensorRT engines built from an ONNX export (``etta export tensorrt``), one per graph.

Written against TensorRT 10's Python API (``trt.Builder``, ``trt.OnnxParser``, optimisation profiles, builder
flags, timing caches, ``build_serialized_network``). Each graph gets one optimisation profile: min/opt/max
sizes of the batch, the latent frames and the text length (the context is the text plus the number tokens;
the VAE decoder has its own frame range, the window of the runtime's windowed decoding). The output
directory holds ``<graph>.engine``, ``engines.json`` (the build settings: TensorRT version, GPU, flags,
profiles, the ONNX files' hashes), and copies of the export's ``manifest.json`` and tokenizer, so that
:class:`etta_engine.runtime.RuntimePipeline` runs it with ``backend="tensorrt"``.

Precision: an fp16 ONNX export is built as a strongly typed network, so TensorRT keeps its fp32 islands
(LayerNorms, modulation, RoPE angles) exactly as exported; an fp32 export can instead be built with the
``fp16``/``bf16`` builder flags, which let TensorRT choose lower precision per layer.
TensorRT cannot be installed on this project's CI machines: the code follows the documented API, and the
tests that need it skip when it is missing (tests/test_tensorrt.py).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from etta_engine.config import ModelConfig
from etta_engine.runtime.manifest import GRAPHS, MANIFEST, interface, read_manifest

ENGINES = "engines.json"
Range = tuple[int, int, int]  # (min, opt, max)


class BuildError(RuntimeError):
    """TensorRT could not parse a graph or build an engine."""


def tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            "building TensorRT engines needs TensorRT 10 and cuda-python on a machine with an NVIDIA GPU: "
            "pip install 'etta_engine[tensorrt]'"
        ) from e
    return trt


@dataclass(frozen=True)
class Profile:
    """Sizes the engines accept, each (min, opt, max); TensorRT tunes its kernels for ``opt``."""

    batch: Range = (1, 1, 4)
    frames: Range = (1, 215, 1292)  # latent frames of the DiT graphs (10 s at opt, 60 s at max for ETTA)
    text: Range = (1, 512, 512)  # text tokens; the context is these plus one token per number
    vae_frames: Range = (1, 215, 512)  # latent frames of one VAE decoding window
    steps: Range = (1, 100, 512)  # solver calls of one generation (the cached DiT graphs' tables)

    def __post_init__(self) -> None:
        for name, r in asdict(self).items():
            if len(r) != 3 or not all(isinstance(v, int) for v in r) or not 1 <= r[0] <= r[1] <= r[2]:
                raise ValueError(f"profile {name}={tuple(r)} must be integers with 1 <= min <= opt <= max")

    @classmethod
    def for_model(cls, cfg: ModelConfig, **overrides: Range) -> Profile:
        """Defaults for ``cfg``: opt at 10 s and the full text length; max at 60 s (or the model's limit)."""
        rate = cfg.latent_rate
        max_frames = max(1, round(min(cfg.max_seconds, 60.0) * rate))
        opt_frames = min(max(1, round(min(cfg.max_seconds, 10.0) * rate)), max_frames)
        L = cfg.text.max_length
        defaults = {
            "batch": (1, 1, 4),
            "frames": (1, opt_frames, max_frames),
            "text": (1, L, L),
            "vae_frames": (1, min(opt_frames, 512), min(max_frames, 512)),
            "steps": (1, 100, 512),
        }
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ValueError(f"unknown profile dimensions {unknown}; known: {sorted(defaults)}")
        profile = cls(**{**defaults, **{k: tuple(v) for k, v in overrides.items()}})
        if profile.text[2] > L:
            raise ValueError(f"profile text max {profile.text[2]} exceeds the text encoder's length {L}")
        return profile


def profile_shapes(graph: str, cfg: ModelConfig, profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input name: (min shape, opt shape, max shape)} of ``graph`` under ``profile``."""
    n = len(cfg.number_keys)
    sizes = {
        "batch": profile.batch,
        "frames": profile.vae_frames if graph == "vae_decoder" else profile.frames,
        "text": profile.text,
        "context": tuple(t + n for t in profile.text),
        "steps": profile.steps,
    }
    shapes = {}
    for spec in interface(graph, cfg).inputs:
        shapes[spec.name] = tuple(tuple(sizes[d][k] if isinstance(d, str) else d for d in spec.shape) for k in range(3))
    return shapes


def _gpu() -> dict:
    try:
        from etta_engine.runtime.tensorrt import cuda_call, cudart

        rt = cudart()
        props = cuda_call(rt.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception as e:  # the build settings record what is known; the build itself needs no cuda-python
        return {"name": "unknown", "error": f"{type(e).__name__}: {e}"}


def build_engines(
    onnx_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    parts: Sequence[str] | None = None,
    profile: Profile | None = None,
    fp16: bool = False,
    bf16: bool = False,
    strongly_typed: bool | None = None,
    timing_cache: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Build one engine per graph of the export in ``onnx_dir`` into the directory ``out``; returns the settings.

    strongly_typed: default True for fp16 exports (keep the exported casts), False for fp32 ones; the
    ``fp16``/``bf16`` flags apply to weakly typed builds only. timing_cache: a file read before and written
    after the builds (created if missing), which makes rebuilds on the same GPU much faster.
    """
    from etta_engine.export.onnx import ExportError, _sha256, check_output_path, publish_directory

    onnx_dir = Path(onnx_dir)
    manifest = read_manifest(onnx_dir)
    parts = list(manifest.graphs) if parts is None else list(parts)
    unknown = [p for p in parts if p not in GRAPHS]
    if unknown:
        raise ExportError(f"unknown parts {unknown}; choices: {list(GRAPHS)}")
    missing = [p for p in parts if p not in manifest.graphs]
    if missing:
        raise ExportError(f"{onnx_dir} has no graphs {missing}; it holds {sorted(manifest.graphs)}")
    profile = profile or Profile.for_model(manifest.config)
    dtypes = {manifest.graphs[p].dtype for p in parts}
    if strongly_typed is None:
        strongly_typed = dtypes != {"fp32"}
    if strongly_typed and (fp16 or bf16):
        raise ValueError("fp16/bf16 builder flags do not apply to a strongly typed build (the ONNX types decide)")
    if workspace_gib is not None and not workspace_gib > 0:
        raise ValueError(f"workspace_gib={workspace_gib} must be positive")
    out = check_output_path(out, force)
    trt = tensorrt()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    settings = {
        "tensorrt": trt.__version__,
        "gpu": _gpu(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": str(onnx_dir.resolve()),
        "strongly_typed": strongly_typed,
        "fp16": fp16,
        "bf16": bf16,
        "workspace_gib": workspace_gib,
        "timing_cache": str(cache_path) if cache_path else None,
        "profile": asdict(profile),
        "graphs": {},
    }
    try:
        from tqdm.auto import tqdm

        for graph in tqdm(parts, desc="building engines", unit="engine", disable=not progress, leave=False):
            entry = manifest.graphs[graph]
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_dir / entry.file)):  # resolves external data beside the file
                errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BuildError(f"TensorRT could not parse {onnx_dir / entry.file}:\n  {errors}")
            config = builder.create_builder_config()
            if workspace_gib is not None:
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
            if fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            if bf16:
                config.set_flag(trt.BuilderFlag.BF16)
            cache = config.create_timing_cache(cache_bytes)
            config.set_timing_cache(cache, ignore_mismatch=False)
            shapes = profile_shapes(graph, manifest.config, profile)
            opt_profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                opt_profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(opt_profile)
            start = time.perf_counter()
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise BuildError(f"TensorRT could not build an engine for {graph!r} (see the log above)")
            (tmp / f"{graph}.engine").write_bytes(memoryview(serialized))
            cache_bytes = bytes(memoryview(config.get_timing_cache().serialize()))
            settings["graphs"][graph] = {
                "engine": f"{graph}.engine",
                "onnx": entry.file,
                "onnx_sha256": entry.sha256 or _sha256(onnx_dir / entry.file),
                "dtype": entry.dtype,
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
                "build_seconds": round(time.perf_counter() - start, 3),
            }
        shutil.copy2(onnx_dir / MANIFEST, tmp / MANIFEST)
        tokenizer_file = (manifest.tokenizer or {}).get("file")
        if tokenizer_file:
            shutil.copy2(onnx_dir / tokenizer_file, tmp / tokenizer_file)
        (tmp / ENGINES).write_text(json.dumps(settings, indent=1, sort_keys=True), encoding="utf-8")
        publish_directory(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if cache_path is not None:
        from etta_engine._files import atomic_write

        atomic_write(cache_path, lambda p: Path(p).write_bytes(cache_bytes))
    return settings


# ------------------------------------------------------------------ operator support, checked without TensorRT

SUPPORT_TABLE = Path(__file__).with_name("tensorrt_onnx_ops.json")
_TRT_TYPE_NAMES = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "BF16",
    "int32": "INT32",
    "int64": "INT64",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
    "float64": "DOUBLE",
}


def support_table() -> dict:
    """TensorRT's ONNX operator support matrix as stored in the repository (see its ``source``)."""
    return json.loads(SUPPORT_TABLE.read_text(encoding="utf-8"))


def unsupported_by_tensorrt(model) -> list[str]:
    """Problems TensorRT's ONNX parser would have with ``model`` (a ModelProto or a path), per its support matrix:
    an opset outside its range, operators it does not support, or inputs of types it does not list for them."""
    import onnx

    table = support_table()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not table["opset_min"] <= opset <= table["opset_max"]:
        problems.append(f"opset {opset} is outside [{table['opset_min']}, {table['opset_max']}]")
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, str] = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[v.name] = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    for t in inferred.graph.initializer:
        types[t.name] = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
    for node in inferred.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} ({node.name}): custom domain {node.domain!r}")
            continue
        allowed = table["supported"].get(node.op_type)
        if allowed is None:
            problems.append(f"{node.op_type} ({node.name}): not supported by TensorRT {table['tensorrt']}")
            continue
        for name in node.input:
            if not name:
                continue  # an omitted optional input
            dtype = types.get(name)
            trt_type = _TRT_TYPE_NAMES.get(dtype, dtype)
            if trt_type not in allowed:
                problems.append(f"{node.op_type} ({node.name}): input {name!r} is {trt_type}; supported: {allowed}")
    return problems
