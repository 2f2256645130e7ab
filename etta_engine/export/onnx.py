"""ONNX export of the conditioner, the DiT velocity step (plain and CFG-batched) and the VAE decoder.

Graphs are traced with ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), which keeps the
batch, latent length and text length symbolic; the TorchScript exporter cannot trace the attention op's
shape-dependent arguments. The DiT is rebuilt with ``ops="torch"``, so the custom kernels export as their
reference maths (plain ONNX operators that ONNX Runtime and TensorRT run). The interfaces come from
:mod:`etta_engine.runtime.manifest`; see there for the graphs' inputs and outputs.

Files over ``external_data_threshold`` (default 2 GiB, protobuf's limit) keep their tensors in
``weights.data`` beside the graphs; the DiT graphs share one copy of the weights they have in common there.
The directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from etta_engine.engine import DiTEngine, StepPlan, _maps_zero_to_zero, adaln_input, prompt_kv
from etta_engine.models.conditioning import Conditioner
from etta_engine.models.dit import DiT
from etta_engine.models.model import ETTAModel
from etta_engine.models.vae import OobleckDecoder, WNConv1d, WNConvTranspose1d
from etta_engine.runtime.manifest import (
    CACHED_GRAPHS,
    DTYPES,
    GRAPHS,
    MANIFEST,
    MIN_OPSET,
    GraphEntry,
    Manifest,
    interface,
)

PARTS = GRAPHS
DEFAULT_OPSET = 18
EXTERNAL_DATA = "weights.data"
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # bytes of tensors; protobuf files cannot exceed 2 GiB
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Relative error of an exported graph vs the torch module on the example inputs, checked after export.
VERIFY_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


class ExportError(RuntimeError):
    """An export that cannot be done as asked (bad part, existing output, missing text encoder...)."""


def onnx_modules():
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's translation library)
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'etta_engine[export]'") from e
    return onnx


# ------------------------------------------------------------------ the exported modules


class DiTStep(nn.Module):
    """``dit``: one velocity evaluation; fp32 in and out, the DiT's dtype inside."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, x, t, context, context_mask, global_cond):
        dtype = self.dit.dtype
        return self.dit(x.to(dtype), t, context.to(dtype), context_mask, global_cond.to(dtype)).float()


class DiTCFGStep(nn.Module):
    """``dit_cfg``: cond and uncond in one forward of 2B, combined as :func:`etta_engine.sampling.cfg`:
    ``v = v_u + s (v_c - v_u)``, and where ``cfg_rescale`` phi > 0, ``phi v std(v_c)/std(v) + (1 - phi) v``
    (std over channels). The combination runs in fp32."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(
        self, x, t, context, context_mask, uncond_context, uncond_context_mask, global_cond, cfg_scale, cfg_rescale
    ):
        dtype = self.dit.dtype
        v = self.dit(
            torch.cat((x, x)).to(dtype),  # (2B, C, T)
            torch.cat((t, t)),
            torch.cat((context, uncond_context)).to(dtype),  # (2B, L, D)
            torch.cat((context_mask, uncond_context_mask)),
            torch.cat((global_cond, global_cond)).to(dtype),
        ).float()
        return _guide(v, cfg_scale, cfg_rescale)


def _guide(v: torch.Tensor, cfg_scale: torch.Tensor, cfg_rescale: torch.Tensor) -> torch.Tensor:
    """The guided velocity (B, C, T) of the cond and uncond velocities ``v`` (2B, C, T), in fp32."""
    B = v.shape[0] // 2
    v_cond, v_uncond = v[:B], v[B:]  # (B, C, T) each; chunk(2) would make torch.export specialise B
    scale, phi = cfg_scale[:, None, None], cfg_rescale[:, None, None]
    guided = v_uncond + scale * (v_cond - v_uncond)
    ratio = v_cond.std(dim=1, keepdim=True) / guided.std(dim=1, keepdim=True)  # (B, 1, T)
    return torch.where(phi > 0, phi * (guided * ratio) + (1 - phi) * guided, guided)


class DiTPrepare(nn.Module):
    """``dit_prepare``: the per-generation tables of :meth:`etta_engine.engine.DiTEngine.prepare` for rows that
    all attend to their prompt: every block's adaLN output at every evaluation time and every block's
    cross-attention K/V; computed in the DiT's dtype, returned in fp32 (a lossless round trip for fp16)."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, times, context, global_cond):
        dit, dtype = self.dit, self.dit.dtype
        N, B = times.shape[0], global_cond.shape[0]
        c_act = adaln_input(dit, times, global_cond.to(dtype))  # (N B, D)
        modulation = torch.stack([block.adaln(c_act).view(N, B, -1) for block in dit.blocks], dim=1)
        final = dit.final.adaln(c_act).view(N, B, -1)
        memory = dit.cond_embed(context.to(dtype))  # (B, L, Dc)
        kv = torch.stack([prompt_kv(block, memory) for block in dit.blocks])  # (depth, B, L, 2, Hc, Dc)
        return modulation.float(), final.float(), kv.float()


class DiTCachedStep(nn.Module):
    """``dit_cached`` and (``guided``) ``dit_cfg_cached``: one velocity evaluation from ``dit_prepare``'s
    tables, by the engine's step with the reference ops. Guided, the uncond half (the official null memory,
    whose cross-attention is exactly zero) runs self-attention and FFN only, with the cond rows' tables (the
    same times and global conditioning); the guidance is :class:`DiTCFGStep`'s."""

    def __init__(self, dit: DiT, guided: bool) -> None:
        super().__init__()
        if not _maps_zero_to_zero(dit.cond_embed):
            raise ExportError("the DiT's memory embedding does not map a zero context to zero: no cached graphs")
        self.dit = dit
        self.engine = DiTEngine(dit, ops="torch", cuda_graph=False)
        self.guided = guided
        # Attending rows: the first kv.shape[1] (the step reads their number from the tensor).
        self.plan = StepPlan(rows=(), prefix=True, batch=0, guarded=False)

    def forward(self, x, step, modulation, final_modulation, kv, context_mask, cfg_scale=None, cfg_rescale=None):
        dtype = self.dit.dtype
        m = modulation.index_select(0, step)[0].to(dtype)  # (depth, B, 9 D)
        f = final_modulation.index_select(0, step)[0].to(dtype)  # (B, 2 D)
        if self.guided:
            x, m, f = torch.cat((x, x)), torch.cat((m, m), dim=1), torch.cat((f, f))
        v = self.engine.step(self.plan, x.to(dtype), m, f, kv.to(dtype), context_mask, None, None).float()
        return _guide(v, cfg_scale, cfg_rescale) if self.guided else v


class VAEDecoderStep(nn.Module):
    """``vae_decoder``: latents -> audio; fp32 in and out. The decoder's weight norms are folded
    (:func:`fold_weight_norm`) in fp32 before the cast to the export dtype."""

    def __init__(self, decoder: OobleckDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents):
        dtype = self.decoder.layers[0].weight.dtype
        return self.decoder(latents.to(dtype)).float()


class ConditionerStep(nn.Module):
    """``conditioner``: the T5 encoder and the number conditioners, assembled as :class:`Conditioner` does
    (without its host-side range checks, which the runtime makes before the call)."""

    def __init__(self, text_model: nn.Module, conditioner: Conditioner) -> None:
        super().__init__()
        self.text_model = text_model
        self.conditioner = conditioner
        self.keys = conditioner.keys

    def forward(self, input_ids, attention_mask, numbers):
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        mask = attention_mask.bool()
        text = hidden.float() * mask[..., None]  # padding zeroed, as T5TextEncoder.forward
        embeds = [self.conditioner.numbers[k](numbers[:, i]) for i, k in enumerate(self.keys)]  # (B, D) each
        tokens = torch.stack(embeds, dim=1).to(text.dtype)  # (B, n, D)
        context = torch.cat((text, tokens), dim=1)  # (B, L + n, D)
        context_mask = torch.cat((mask, mask.new_ones(mask.shape[0], len(self.keys))), dim=1)
        return context, context_mask, torch.cat(embeds, dim=-1)  # ..., (B, n D)


def _rebuild(module: nn.Module, factory, dtype: torch.dtype) -> nn.Module:
    """``factory()`` built on the meta device and given ``module``'s weights in ``dtype`` (shared when equal)."""
    with torch.device("meta"):
        new = factory()
    state = {k: v.detach().to("cpu", dtype) for k, v in module.state_dict().items()}
    new.load_state_dict(state, assign=True)
    return new.eval().requires_grad_(False)


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-normalised convolution by a plain one holding ``g v / ||v||``, computed once in
    ``module``'s dtype (the graph then holds one weight per convolution and computes no norms per call)."""
    for name, child in list(module.named_children()):
        if isinstance(child, (WNConv1d, WNConvTranspose1d)):
            with torch.no_grad():
                weight = child.weight()
            transposed = isinstance(child, WNConvTranspose1d)
            c_in, c_out = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
            kind = nn.ConvTranspose1d if transposed else nn.Conv1d
            extra = {} if transposed else {"dilation": child.dilation}
            conv = kind(c_in, c_out, weight.shape[2], stride=child.stride, padding=child.padding,
                        bias=child.bias is not None, device=weight.device, dtype=weight.dtype, **extra)  # fmt: skip
            with torch.no_grad():
                conv.weight.copy_(weight)
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
            setattr(module, name, conv)
        else:
            fold_weight_norm(child)
    return module


def graph_module(model: ETTAModel, part: str, dtype: str = "fp32") -> nn.Module:
    """The torch module exported as ``part``, on the CPU, with the reference ops and the compute dtype."""
    if part not in PARTS:
        raise ExportError(f"unknown part {part!r}; choices: {list(PARTS)}")
    torch_dtype = _TORCH_DTYPES[dtype]
    if part in ("dit", "dit_cfg", *CACHED_GRAPHS):
        cfg = dataclasses.replace(model.dit.cfg, ops="torch")
        dit = _rebuild(model.dit, lambda: DiT(cfg), torch_dtype)
        modules = {
            "dit": DiTStep,
            "dit_cfg": DiTCFGStep,
            "dit_prepare": DiTPrepare,
            "dit_cached": partial(DiTCachedStep, guided=False),
            "dit_cfg_cached": partial(DiTCachedStep, guided=True),
        }
        return modules[part](dit).eval()
    if part == "vae_decoder":
        vae_cfg = dataclasses.replace(model.cfg.vae, ops="torch")
        decoder = _rebuild(model.vae.decoder, lambda: OobleckDecoder(vae_cfg), torch.float32)
        return VAEDecoderStep(fold_weight_norm(decoder).to(torch_dtype)).eval()
    if model.text_encoder is None:
        raise ExportError(
            f"model {model.cfg.name!r} has no text encoder loaded, so the conditioner cannot be exported: load one "
            f"(--text-encoder DIR holding {model.cfg.text.pretrained}) or leave 'conditioner' out of the parts"
        )
    # T5 is known to overflow in fp16 (../shared/spec/ETTA.md): the conditioner is always exported in fp32.
    text_model = copy.deepcopy(model.text_encoder.model).float().eval()
    conditioner = copy.deepcopy(model.conditioner).float().eval()
    return ConditionerStep(text_model, conditioner).eval()


# ------------------------------------------------------------------ example inputs and dynamic shapes

_EXAMPLE_SIZES = {"batch": 2, "frames": 11, "text": 5, "steps": 3}  # distinct, not 0 or 1 (torch.export
# specialises those)
_NUMPY_TO_TORCH = {"float32": torch.float32, "bool": torch.bool, "int64": torch.int64}


def example_inputs(part: str, model_cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random inputs of ``part``'s interface (ragged masks, in-range numbers and token ids)."""
    g = torch.Generator().manual_seed(seed)
    sizes = dict(_EXAMPLE_SIZES, context=_EXAMPLE_SIZES["text"] + len(model_cfg.number_keys))
    out = {}
    for spec in interface(part, model_cfg).inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.name in ("t", "times", "cfg_rescale"):
            value = torch.rand(shape, generator=g)
        elif spec.name == "step":
            value = torch.randint(0, sizes["steps"], shape, generator=g)
        elif spec.name == "cfg_scale":
            value = 1.0 + 3.0 * torch.rand(shape, generator=g)
        elif spec.name == "numbers":
            value = torch.rand(shape, generator=g) * model_cfg.max_seconds
        elif spec.dtype == "bool" or spec.name == "attention_mask":
            lengths = torch.arange(shape[0]) % shape[1] + shape[1] // 2 + 1  # ragged, at least one valid key
            value = (torch.arange(shape[1])[None, :] < lengths.clamp(max=shape[1])[:, None]).to(
                _NUMPY_TO_TORCH[spec.dtype]
            )
        elif spec.name == "input_ids":
            value = torch.randint(3, 259, shape, generator=g)
        else:
            value = torch.randn(shape, generator=g)
        out[spec.name] = value
    return out


def _dynamic_shapes(part: str, model_cfg) -> tuple:
    dims = {name: torch.export.Dim(name, min=1) for name in ("batch", "frames", "text", "context", "steps")}
    return tuple(
        {axis: dims[d] for axis, d in enumerate(spec.shape) if isinstance(d, str)} or None
        for spec in interface(part, model_cfg).inputs
    )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notices that say nothing about our graphs (optional torchvision ops, the
    renaming of shared dimension names, a pytree deprecation)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*The axis name: .* will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _to_onnx(module: nn.Module, part: str, model_cfg, opset: int):
    """The ONNX ModelProto of ``module`` with the interface's names and dynamic dimensions."""
    spec = interface(part, model_cfg)
    args = tuple(example_inputs(part, model_cfg).values())
    with _quiet_exporter(), torch.no_grad():
        # torch.export first, so that a dimension it cannot keep dynamic is an error here instead of a silent
        # fall-back of torch.onnx.export to fixed sizes.
        try:
            program = torch.export.export(module, args, dynamic_shapes=_dynamic_shapes(part, model_cfg), strict=False)
        except Exception as e:
            raise ExportError(f"torch.export could not trace {part!r} with dynamic shapes: {e}") from e
        onnx_program = torch.onnx.export(
            program,
            (),
            dynamo=True,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            verbose=False,
            optimize=True,
        )
    proto = onnx_program.model_proto
    _check_proto_interface(proto, part, spec)
    return proto


def _check_proto_interface(proto, part: str, spec) -> None:
    """The exported graph declares the interface's names, dtypes and dynamic dimensions."""
    import onnx

    from etta_engine.runtime.graph import check_declared

    for declared, specs in ((proto.graph.input, spec.inputs), (proto.graph.output, spec.outputs)):
        by_name = {v.name: v for v in declared}
        if sorted(by_name) != sorted(s.name for s in specs):
            raise ExportError(f"exported {part!r} has {sorted(by_name)}, expected {[s.name for s in specs]}")
        for s in specs:
            t = by_name[s.name].type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            check_declared(part, "export", s, dtype, shape)


# ------------------------------------------------------------------ files


def _tensor_bytes(tensor) -> int:
    import onnx

    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _externalize(protos: dict[str, object], directory: Path, min_bytes: int = 1024) -> None:
    """Move the initializers of ``protos`` into one ``weights.data`` file, each distinct tensor once.

    Tensors of equal content (the DiT's weights in ``dit`` and ``dit_cfg``) share one range of the file. Large
    tensors start at 4 KiB boundaries, so runtimes can map them; small ones stay inside the graph.
    """
    from onnx import TensorProto, external_data_helper, numpy_helper

    offsets: dict[bytes, tuple[int, int]] = {}
    with open(directory / EXTERNAL_DATA, "wb") as f:
        for proto in protos.values():
            for tensor in proto.graph.initializer:
                if _tensor_bytes(tensor) < min_bytes:
                    continue
                raw = numpy_helper.to_array(tensor).tobytes()
                key = hashlib.sha256(raw).digest() + bytes(f"{tensor.data_type}:{list(tensor.dims)}", "ascii")
                if key not in offsets:
                    align = 4096 if len(raw) >= 2**20 else 64
                    f.write(b"\0" * (-f.tell() % align))
                    offsets[key] = (f.tell(), len(raw))
                    f.write(raw)
                offset, length = offsets[key]
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                tensor.raw_data = b"\0"  # set_external_data wants a raw_data field to replace
                external_data_helper.set_external_data(tensor, EXTERNAL_DATA, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def publish_directory(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` directory to ``out`` (replacing it with ``force``)."""
    from etta_engine._files import fsync_dir

    _fsync_tree(tmp)
    old = None
    if out.exists():
        if not force:
            raise ExportError(f"output path {out} exists; pass force=True (--force) to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def check_output_path(out: str | os.PathLike, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"output path {out} exists; pass force=True (--force) to replace it")
    if not out.parent.is_dir():
        raise ExportError(f"cannot write {out}: directory {out.parent} does not exist")
    return out


# ------------------------------------------------------------------ the tokenizer


def _tokenizer_entry(model: ETTAModel, directory: Path) -> dict:
    """Save the text encoder's tokenizer for the runtime and check that the runtime tokenizes like it."""
    from transformers import ByT5Tokenizer

    from etta_engine.runtime.tokenizer import ByteTokenizer, JsonTokenizer

    tok = model.text_encoder.tokenizer
    L = model.cfg.text.max_length
    if isinstance(tok, ByT5Tokenizer):
        entry, runtime_tok = {"kind": "byt5"}, ByteTokenizer(L)
    elif hasattr(tok, "backend_tokenizer"):
        tok.backend_tokenizer.save(str(directory / "tokenizer.json"))
        entry = {"kind": "tokenizers", "file": "tokenizer.json", "pad_id": int(tok.pad_token_id)}
        runtime_tok = JsonTokenizer(directory / "tokenizer.json", L, entry["pad_id"])
    else:
        raise ExportError(
            f"the text encoder's tokenizer ({type(tok).__name__}) has no tokenizers-library form, so the runtime "
            "cannot run it without transformers; use a fast tokenizer (tokenizer.json) or a byte-level model"
        )
    probes = ["a dog barks in the rain", "Sirène — 漢字 ñ", "  spaces  and </s> specials <pad>", "x" * (L + 3)]
    want_ids, want_mask = model.text_encoder.tokenize(probes, truncate=True)
    got_ids, got_mask = runtime_tok(probes, truncate=True)
    if not (np.array_equal(want_ids.numpy(), got_ids) and np.array_equal(want_mask.numpy(), got_mask)):
        raise ExportError(f"the runtime's {entry['kind']} tokenizer does not reproduce {type(tok).__name__}")
    return entry


# ------------------------------------------------------------------ verification


def _verify(path: Path, module: nn.Module, part: str, model_cfg, dtype: str) -> float:
    """Max relative error (over outputs) of ONNX Runtime on ``path`` vs ``module`` on the example inputs."""
    import onnxruntime as ort

    inputs = example_inputs(part, model_cfg, seed=1)
    with torch.no_grad():
        want = module(*inputs.values())
    want = (want,) if isinstance(want, torch.Tensor) else want
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    errors = []
    for g, w in zip(got, want, strict=True):
        g, w = g.astype(np.float64), w.numpy().astype(np.float64)
        finite = np.isfinite(w)  # an untrained DiT's zero velocity makes CFG rescale 0/0 in torch too
        if not np.array_equal(finite, np.isfinite(g)):
            errors.append(np.inf)
            continue
        errors.append(float(np.linalg.norm(g[finite] - w[finite]) / max(np.linalg.norm(w[finite]), 1e-30)))
    error = max(errors)
    if not error <= VERIFY_TOLERANCE[dtype]:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from torch by a relative error of {error:.3g} on the example inputs "
            f"(tolerance for {dtype}: {VERIFY_TOLERANCE[dtype]:g})"
        )
    return error


# ------------------------------------------------------------------ the entry point


def export_onnx(
    model: ETTAModel,
    out: str | os.PathLike,
    *,
    parts: Sequence[str] | None = None,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    verify: bool = True,
    progress: bool = True,
    source: str | None = None,
) -> Manifest:
    """Export ``model``'s graphs to the directory ``out`` with a ``manifest.json`` for the runtime.

    parts: a subset of :data:`PARTS` (default: all). dtype: "fp32" or "fp16" (the DiT graphs and the VAE
    decoder; the conditioner stays fp32). opset >= 18. verify: run each graph in ONNX Runtime on example inputs
    and compare with torch (errors recorded in the manifest; above :data:`VERIFY_TOLERANCE` the export fails).
    """
    onnx = onnx_modules()
    parts = list(PARTS) if parts is None else list(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ExportError(f"unknown parts {unknown}; choices: {list(PARTS)}" if unknown else "parts is empty")
    if dtype not in DTYPES:
        raise ExportError(f"dtype={dtype!r} is not one of {list(DTYPES)}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(
            f"opset={opset!r} is outside [{MIN_OPSET}, {max_opset}] (the exporter and onnx {onnx.__version__})"
        )
    if not isinstance(model, ETTAModel):
        raise TypeError(f"export_onnx takes an ETTAModel, got {type(model).__name__}")
    out = check_output_path(out, force)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        protos, modules = {}, {}
        for part in tqdm(parts, desc="exporting", unit="graph", disable=not progress, leave=False):
            modules[part] = graph_module(model, part, dtype)
            protos[part] = _to_onnx(modules[part], part, model.cfg, opset)
            name = f"{model.cfg.name}-{part}-{dtype}"
            onnx.helper.set_model_props(protos[part], {"etta_engine.graph": part, "etta_engine.dtype": dtype})
            protos[part].graph.name = name
        large = {
            p: m for p, m in protos.items() if sum(map(_tensor_bytes, m.graph.initializer)) > external_data_threshold
        }
        if large:
            _externalize(large, tmp)
        graphs, verification = {}, {}
        for part, proto in protos.items():
            path = tmp / f"{part}.onnx"
            onnx.save_model(proto, str(path))
            onnx.checker.check_model(str(path), full_check=True)
            if verify:
                verification[part] = _verify(path, modules[part], part, model.cfg, dtype)
            spec = interface(part, model.cfg)
            graphs[part] = GraphEntry(
                file=path.name,
                dtype="fp32" if part == "conditioner" else dtype,
                inputs=spec.inputs,
                outputs=spec.outputs,
                external_data=EXTERNAL_DATA if part in large else None,
                sha256=_sha256(path),
            )
        del protos, modules
        tokenizer = _tokenizer_entry(model, tmp) if "conditioner" in parts else None
        manifest = Manifest(
            config=model.cfg,
            opset=opset,
            graphs=graphs,
            tokenizer=tokenizer,
            export=_export_record(parts, dtype, opset, source or model.cfg.name, verification),
        )
        (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        publish_directory(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _export_record(parts, dtype, opset, source, verification) -> dict:
    import onnx
    import onnxscript

    import etta_engine

    return {
        "source": str(source),
        "parts": list(parts),
        "dtype": dtype,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "ops": "torch (reference maths)",
        "etta_engine": etta_engine.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "verification_max_rel_err": verification,
    }


__all__ = ["PARTS", "ExportError", "export_onnx", "graph_module"]
