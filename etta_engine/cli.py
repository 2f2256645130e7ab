"""The ``etta`` command line: ``generate``, ``edit``, ``convert``, ``info``, ``export``, ``cache``, ``train``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from etta_engine.runtime.cli import (
    add_runtime_args,
    add_sampling_args,
    check_output,
    read_prompts,
    sampling_options,
    save_clips,
)

# --backend of `etta generate` -> the runtime backend (torch is the Pipeline itself)
_RUNTIME_BACKENDS = {"onnx": "onnxruntime", "tensorrt": "tensorrt"}


def _generate_with_runtime(args: argparse.Namespace) -> int:
    """``etta generate --backend onnx|tensorrt``: the torch-free runtime on an export directory."""
    torch_only = {
        "--init-audio": args.init_audio,
        "--keep": args.keep,
        "--strength": args.strength != 1.0,
        "--text-encoder": args.text_encoder,
        "--device": args.device,
        "--adapter": args.adapter,
        "--audio-prompt": args.audio_prompt,
        "--dtype": args.dtype,
        "--vae-dtype": args.vae_dtype,
        "--text-dtype": args.text_dtype,
    }
    used = [flag for flag, value in torch_only.items() if value]
    if used:
        raise SystemExit(
            f"etta generate: {', '.join(used)} need --backend torch (the exported graphs have no VAE encoder; "
            "the device is chosen by the runtime's providers; the precision was fixed by `etta export --dtype`)"
        )
    from etta_engine.runtime.cli import generate_from_args

    return generate_from_args(args, _RUNTIME_BACKENDS[args.backend], "etta generate")


def cmd_generate(args: argparse.Namespace) -> int:
    if args.backend != "torch":
        return _generate_with_runtime(args)
    from etta_engine.pipeline import Pipeline

    prompts = read_prompts(args, "etta generate")
    output = check_output(args.output, "etta generate")
    init_audio = init_rate = None
    if args.init_audio:
        import soundfile as sf

        data, init_rate = sf.read(args.init_audio, dtype="float32", always_2d=True)  # (samples, channels)
        init_audio = data.T
    if args.audio_prompt and not args.adapter:
        raise SystemExit("etta generate: --audio-prompt needs --adapter (an audio-prompt adapter checkpoint)")
    pipe = Pipeline.from_pretrained(args.model, device=args.device, text_encoder_path=args.text_encoder)
    if args.adapter:  # loaded in the model's precision, then cast with the DiT
        pipe.load_adapter(args.adapter)
    pipe.set_precision(args.dtype, vae=args.vae_dtype, text=args.text_dtype)
    audio = pipe.generate(
        prompts,
        **sampling_options(args),
        init_audio=init_audio,
        init_sample_rate=init_rate,
        strength=args.strength,
        keep=args.keep or None,
        audio_prompt=args.audio_prompt,
        audio_prompt_scale=args.audio_prompt_scale,
    )
    save_clips(audio, output, len(prompts))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from etta_engine.data import load_audio
    from etta_engine.pipeline import Pipeline

    output = check_output(args.output, "etta edit")
    pipe = Pipeline.from_pretrained(args.model, device=args.device, text_encoder_path=args.text_encoder)
    pipe.set_precision(args.dtype, vae=args.vae_dtype, text=args.text_dtype)
    clip = load_audio(args.input, pipe.cfg.sample_rate, pipe.cfg.vae.audio_channels)
    audio = pipe.edit(
        clip,
        args.prompt,
        source_prompt=args.source_prompt,
        strength=args.strength,
        nfe=args.nfe,
        solver=args.solver,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        inversion_cfg_scale=args.inversion_cfg_scale,
        truncate=args.truncate,
        progress=not args.quiet,
    )
    save_clips(audio, output, 1)
    return 0


def add_precision_args(g: argparse.ArgumentParser) -> None:
    """--dtype, --vae-dtype, --text-dtype: Pipeline.set_precision (None: as the model is, fp32)."""
    choices = ("fp32", "bf16", "fp16")
    g.add_argument("--dtype", default=None, choices=choices, help="DiT compute precision (fp16: overflow-guarded)")
    g.add_argument("--vae-dtype", default=None, choices=choices, help="VAE decoder precision (official: fp32)")
    g.add_argument("--text-dtype", default=None, choices=choices[:2], help="T5 encoder precision (fp16 overflows)")


def _region(text: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:END in seconds, e.g. 0:3.5") from None
    return start, end


def cmd_convert(args: argparse.Namespace) -> int:
    import etta_engine

    module = etta_engine.load(args.src, config=args.config, strict=not args.skip_unknown)
    etta_engine.save(args.dst, module)
    n = sum(p.numel() for p in module.parameters())
    print(f"wrote {args.dst}: {type(module).__name__}, {n:,} parameters")
    return 0


# ------------------------------------------------------------------ export


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from etta_engine.export import export_onnx

    manifest = export_onnx(
        _model_for_export(args),
        args.out,
        parts=args.parts,
        dtype=args.dtype,
        opset=args.opset,
        force=args.force,
        verify=args.verify,
        progress=not args.quiet,
        source=args.model,
    )
    errors = manifest.export.get("verification_max_rel_err", {})
    for name, entry in manifest.graphs.items():
        checked = f", ONNX Runtime vs torch rel. err {errors[name]:.1e}" if name in errors else ""
        print(f"wrote {args.out}/{entry.file} ({entry.dtype}{checked})")
    return 0


def _model_for_export(args: argparse.Namespace):
    """The model to export. Without the conditioner, a pretrained T5 is not needed, so it is not loaded."""
    from pathlib import Path

    from etta_engine.checkpoint import load, load_model
    from etta_engine.config import PRESETS
    from etta_engine.models.model import ETTAModel

    if "conditioner" in args.parts or args.text_encoder is not None:
        return load_model(args.model, args.text_encoder)
    if args.model in PRESETS and PRESETS[args.model].text.pretrained is not None:
        return ETTAModel.from_preset(args.model)
    if args.model not in PRESETS and Path(args.model).is_file():
        model = load(args.model)
        if not isinstance(model, ETTAModel):
            raise ValueError(f"{args.model} holds a {type(model).__name__}, not a full text-to-audio model")
        return model
    return load_model(args.model)  # models whose text encoder ships with them (and the errors for bad names)


def _profile_range(values: list[int] | None, name: str) -> dict:
    return {} if values is None else {name: tuple(values)}


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from etta_engine.export.tensorrt import Profile, build_engines
    from etta_engine.runtime.manifest import read_manifest

    overrides = {}
    for name in ("batch", "frames", "text", "vae_frames", "steps"):
        overrides |= _profile_range(getattr(args, name), name)
    profile = Profile.for_model(read_manifest(args.onnx_dir).config, **overrides)
    settings = build_engines(
        args.onnx_dir,
        args.out,
        parts=args.parts,
        profile=profile,
        fp16=args.fp16,
        bf16=args.bf16,
        timing_cache=args.timing_cache,
        workspace_gib=args.workspace_gib,
        force=args.force,
        progress=not args.quiet,
    )
    for entry in settings["graphs"].values():
        print(f"wrote {args.out}/{entry['engine']} (built in {entry['build_seconds']:.1f} s)")
    return 0


def _add_export_parsers(sub) -> None:
    from etta_engine.runtime.manifest import DTYPES, GRAPHS

    e = sub.add_parser("export", help="ONNX graphs and TensorRT engines for runtimes without PyTorch")
    kinds = e.add_subparsers(dest="kind", required=True)
    o = kinds.add_parser("onnx", help="export the conditioner, the DiT (plain, CFG, cached) and the VAE decoder")
    o.add_argument("out", help="output directory (graphs, manifest.json, tokenizer)")
    o.add_argument("--model", default="tiny", help="preset name or checkpoint path (default: tiny, random weights)")
    o.add_argument("--text-encoder", default=None, help="local T5 directory for models with a pretrained encoder")
    o.add_argument("--parts", nargs="+", default=list(GRAPHS), metavar="PART", help=f"of {', '.join(GRAPHS)}")
    o.add_argument("--dtype", default="fp32", choices=DTYPES, help="DiT and VAE decoder compute dtype")
    o.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    o.add_argument("--force", action="store_true", help="replace an existing output directory")
    o.add_argument("--no-verify", dest="verify", action="store_false", help="skip the ONNX Runtime vs torch check")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=cmd_export_onnx)

    r = kinds.add_parser("tensorrt", help="build TensorRT engines from an ONNX export (needs TensorRT and a GPU)")
    r.add_argument("onnx_dir", help="directory written by `etta export onnx`")
    r.add_argument("out", help="output directory (engines, engines.json, manifest.json)")
    r.add_argument("--parts", nargs="+", default=None, metavar="PART", help="default: every graph of the export")
    r.add_argument("--fp16", action="store_true", help="allow fp16 kernels (fp32 exports, weakly typed)")
    r.add_argument("--bf16", action="store_true", help="allow bf16 kernels (fp32 exports, weakly typed)")
    size = dict(type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=None)
    r.add_argument("--batch", **size, help="batch sizes of the profile (default 1 1 4)")
    r.add_argument("--frames", **size, help="latent frames of the DiT graphs (default: 1, 10 s, 60 s)")
    r.add_argument("--vae-frames", **size, help="latent frames of one VAE decoding window (default max 512)")
    r.add_argument("--text", **size, help="text tokens (default: 1, max_length, max_length)")
    r.add_argument("--steps", **size, help="solver calls of one generation, cached DiT graphs (default 1 100 512)")
    r.add_argument("--timing-cache", default=None, help="timing cache file, read and updated")
    r.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit")
    r.add_argument("--force", action="store_true", help="replace an existing output directory")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_export_tensorrt)


# ------------------------------------------------------------------ training commands: options from the configs

_TYPES = {"int": int, "float": float, "str": str}


def _add_config_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...]) -> None:
    """One option per field of the frozen config dataclass ``cls`` (``positional`` ones as arguments)."""
    for f in dataclasses.fields(cls):
        if f.name in positional:
            parser.add_argument(f.name)
            continue
        flag = "--" + f.name.replace("_", "-")
        annotation = str(f.type).replace(" ", "")
        shown = "default: %(default)s"
        if annotation == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=shown)
        elif annotation.startswith("tuple["):
            inner = annotation[len("tuple[") : -1].split(",")
            nargs = "+" if inner[-1] == "..." else len(inner)
            parser.add_argument(flag, nargs=nargs, type=_TYPES[inner[0]], default=f.default, help=shown)
        else:
            parser.add_argument(flag, type=_TYPES[annotation.split("|")[0]], default=f.default, help=shown)


def _config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _print_on_rank0(text: str) -> None:
    import os

    if os.environ.get("RANK", "0") == "0":
        print(text)


def cmd_cache(args: argparse.Namespace) -> int:
    from etta_engine.train.cache import CacheConfig, build_cache

    index = build_cache(_config_from_args(CacheConfig, args), progress=not args.quiet)
    print(f"cache ready: {index}")
    return 0


def cmd_train_dit(args: argparse.Namespace) -> int:
    from etta_engine.train.dit import DiTTrainConfig, train_dit

    path = train_dit(_config_from_args(DiTTrainConfig, args), progress=not args.quiet)
    _print_on_rank0(f"trained model: {path}")
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from etta_engine.train.vae import VAETrainConfig, train_vae

    path = train_vae(_config_from_args(VAETrainConfig, args), progress=not args.quiet)
    _print_on_rank0(f"trained VAE: {path}")
    return 0


def _backend_status(name: str, usable) -> str:
    """'<version>, <where it runs>' for an importable backend, or why it is not usable."""
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        return "not installed"
    except Exception as e:  # a broken install: say so rather than crash `etta info`
        return f"installed but fails to import ({type(e).__name__}: {e})"
    return f"{getattr(module, '__version__', '?')}, {usable(module)}"


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import etta_engine

    print(f"etta_engine {etta_engine.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"device cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        print("device: cpu (no CUDA device)")
    try:
        from etta_engine import _C

        print(f"cuda extension: built (runtime {_C.version()}, CUDA kernels compiled: {_C.cuda_compiled()})")
    except ImportError as e:
        print(f"cuda extension: not built ({e})")
    gpu = torch.cuda.is_available()
    checks = {
        "triton": lambda m: "GPU" if gpu else "CPU interpreter only (TRITON_INTERPRET=1)",
        "onnxruntime": lambda m: "providers " + ", ".join(m.get_available_providers()),
        "tensorrt": lambda m: "GPU" if gpu else "no CUDA device",
    }
    for name, usable in checks.items():
        print(f"{name}: {_backend_status(name, usable)}")
    print(f"presets: {', '.join(sorted(etta_engine.PRESETS))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etta", description="ETTA text-to-audio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text in, WAV out")
    add_sampling_args(g)
    g.add_argument(
        "--model",
        default="demo",
        help="trained model name, preset name (random weights) or checkpoint path (default: demo, the small trained "
        "model that ships with the package); with --backend onnx|tensorrt, the directory written by `etta export`",
    )
    g.add_argument(
        "--backend",
        default="torch",
        choices=("torch", *_RUNTIME_BACKENDS),
        help="torch (the Pipeline), onnx (ONNX Runtime) or tensorrt on an exported model",
    )
    g.add_argument("--text-encoder", default=None, help="local T5 directory for models with a pretrained encoder")
    g.add_argument("--init-audio", default=None, help="audio file for a variation, continuation or inpainting")
    g.add_argument("--strength", type=float, default=1.0, help="with --init-audio: start the ODE at t=strength")
    g.add_argument(
        "--keep", type=_region, action="append", metavar="START:END", help="keep this region (s) of --init-audio"
    )
    g.add_argument("--adapter", default=None, help="audio-prompt adapter checkpoint (etta train dit --adapter-stage)")
    g.add_argument("--audio-prompt", default=None, help="with --adapter: an audio file whose sound to follow")
    g.add_argument("--audio-prompt-scale", type=float, default=1.0, help="weight of --audio-prompt (0: ignore it)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add_precision_args(g)
    add_runtime_args(g)
    g.set_defaults(func=cmd_generate)

    ed = sub.add_parser("edit", help="edit an audio file by ODE inversion: invert it, then regenerate with a prompt")
    ed.add_argument("input", help="the audio file to edit")
    ed.add_argument("prompt", help="what the edited clip should be")
    ed.add_argument("-o", "--output", required=True, help="the WAV file to write")
    ed.add_argument("--model", default="demo", help="trained model name, preset or checkpoint (default: demo)")
    ed.add_argument("--source-prompt", default=None, help="describes the input (default: the prompt)")
    ed.add_argument(
        "--strength", type=float, default=0.7, help="invert up to t=strength (1: to noise; lower keeps more)"
    )
    ed.add_argument("--nfe", type=int, default=50, help="velocity calls of the inversion and of the regeneration")
    ed.add_argument("--solver", default="euler", help="euler, heun, midpoint or rk4")
    ed.add_argument("--schedule", default="uniform")
    ed.add_argument("--cfg-scale", type=float, default=3.5)
    ed.add_argument("--inversion-cfg-scale", type=float, default=1.0)
    ed.add_argument("--text-encoder", default=None)
    ed.add_argument("--device", default=None)
    add_precision_args(ed)
    ed.add_argument("--truncate", action="store_true", help="cut over-long prompts (default: refuse them)")
    ed.add_argument("--quiet", action="store_true")
    ed.set_defaults(func=cmd_edit)

    c = sub.add_parser("convert", help="official ETTA checkpoint (or ours) -> etta_engine safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--config", default="etta", help="preset of the official checkpoint (default: etta)")
    c.add_argument("--skip-unknown", action="store_true", help="skip official keys that have no place in our model")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="devices and usable backends")
    i.set_defaults(func=cmd_info)
    _add_export_parsers(sub)

    from etta_engine.train.cache import CacheConfig
    from etta_engine.train.dit import DiTTrainConfig
    from etta_engine.train.vae import VAETrainConfig

    formatter = argparse.HelpFormatter
    k = sub.add_parser("cache", help="encode a manifest to latents and text embeddings", formatter_class=formatter)
    _add_config_args(k, CacheConfig, positional=("manifest", "out"))
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_cache)

    t = sub.add_parser("train", help="train the DiT or the VAE (several GPUs: launch with torchrun)")
    train = t.add_subparsers(dest="what", required=True)
    td = train.add_parser("dit", help="flow-matching DiT on a cache from `etta cache`", formatter_class=formatter)
    _add_config_args(td, DiTTrainConfig, positional=("cache", "out"))
    td.add_argument("--quiet", action="store_true")
    td.set_defaults(func=cmd_train_dit)
    tv = train.add_parser("vae", help="ETTA-VAE on a manifest of audio files", formatter_class=formatter)
    _add_config_args(tv, VAETrainConfig, positional=("manifest", "out"))
    tv.add_argument("--quiet", action="store_true")
    tv.set_defaults(func=cmd_train_vae)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, KeyError, RuntimeError, FloatingPointError, ImportError) as e:
        print(f"etta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
