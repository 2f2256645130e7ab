"""The ``etta`` command line: ``generate``, ``convert``, ``info``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path


def _output_paths(output: Path, n: int) -> list[Path]:
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(n)]


def cmd_generate(args: argparse.Namespace) -> int:
    from etta_engine.pipeline import Pipeline

    prompts = list(args.prompt)
    if args.prompts_file:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise SystemExit("etta generate: give a prompt or --prompts-file")
    prompts = [p for p in prompts for _ in range(args.batch)]
    output = Path(args.output)
    if not output.parent.is_dir():
        raise SystemExit(f"etta generate: output directory {output.parent} does not exist")
    init_audio = init_rate = None
    if args.init_audio:
        import soundfile as sf

        data, init_rate = sf.read(args.init_audio, dtype="float32", always_2d=True)  # (samples, channels)
        init_audio = data.T
    pipe = Pipeline.from_pretrained(args.model, device=args.device, text_encoder_path=args.text_encoder)
    audio = pipe.generate(
        prompts,
        seconds=args.seconds,
        nfe=args.nfe,
        solver=args.solver,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        cfg_rescale=args.cfg_rescale,
        cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        init_audio=init_audio,
        init_sample_rate=init_rate,
        strength=args.strength,
        keep=args.keep or None,
        decode_chunk_frames=args.decode_chunk or None,
        progress=not args.quiet,
    )
    for i, path in enumerate(_output_paths(output, len(prompts))):
        audio.save(path, index=i)
        print(f"wrote {path} ({audio.seconds:.2f} s, {audio.sample_rate} Hz, {audio.waveform.shape[1]} ch)")
    return 0


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
    from etta_engine.sampling import SCHEDULES, SOLVERS

    parser = argparse.ArgumentParser(prog="etta", description="ETTA text-to-audio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text in, WAV out")
    g.add_argument("prompt", nargs="*", help="text prompt(s)")
    g.add_argument("-o", "--output", default="out.wav", help="WAV path; several clips get _0, _1, ... suffixes")
    g.add_argument("--model", default="tiny", help="preset name or checkpoint path (default: tiny, random weights)")
    g.add_argument("--text-encoder", default=None, help="local T5 directory for models with a pretrained encoder")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--nfe", type=int, default=100, help="budget of DiT evaluations per clip")
    g.add_argument("--solver", default="euler", help=f"one of {', '.join(sorted(SOLVERS))}")
    g.add_argument("--schedule", default="uniform", help=f"one of {', '.join(sorted(SCHEDULES))}")
    g.add_argument("--cfg-scale", type=float, default=3.5)
    g.add_argument("--cfg-rescale", type=float, default=0.0, help="CFG rescale phi in [0, 1]")
    g.add_argument("--cfg-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"), help="guide only for t in range")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1, help="clips per prompt (seeds seed, seed+1, ...)")
    g.add_argument("--prompts-file", default=None, help="one prompt per line")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--init-audio", default=None, help="audio file for a variation, continuation or inpainting")
    g.add_argument("--strength", type=float, default=1.0, help="with --init-audio: start the ODE at t=strength")
    g.add_argument(
        "--keep", type=_region, action="append", metavar="START:END", help="keep this region (s) of --init-audio"
    )
    g.add_argument("--decode-chunk", type=int, default=512, help="decode in windows of this many latents (0: whole)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="official ETTA checkpoint (or ours) -> etta_engine safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--config", default="etta", help="preset of the official checkpoint (default: etta)")
    c.add_argument("--skip-unknown", action="store_true", help="skip official keys that have no place in our model")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="devices and usable backends")
    i.set_defaults(func=cmd_info)

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
    except (ValueError, TypeError, OSError, KeyError, RuntimeError, FloatingPointError) as e:
        print(f"etta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
