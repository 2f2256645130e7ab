"""The ``etta`` command line: ``generate``, ``convert``, ``info``."""

from __future__ import annotations

import argparse
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
    pipe = Pipeline.from_pretrained(args.model, device=args.device, text_encoder_path=args.text_encoder)
    audio = pipe.generate(
        prompts,
        seconds=args.seconds,
        nfe=args.nfe,
        solver=args.solver,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        progress=not args.quiet,
    )
    for i, path in enumerate(_output_paths(output, len(prompts))):
        audio.save(path, index=i)
        print(f"wrote {path} ({audio.seconds:.2f} s, {audio.sample_rate} Hz, {audio.waveform.shape[1]} ch)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import etta_engine

    module = etta_engine.load(args.src, config=args.config, strict=not args.skip_unknown)
    etta_engine.save(args.dst, module)
    n = sum(p.numel() for p in module.parameters())
    print(f"wrote {args.dst}: {type(module).__name__}, {n:,} parameters")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import importlib.util

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
    for name in ("triton", "onnxruntime", "tensorrt"):
        print(f"{name}: {'available' if importlib.util.find_spec(name) else 'not installed'}")
    print(f"presets: {', '.join(sorted(etta_engine.PRESETS))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etta", description="ETTA text-to-audio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text in, WAV out")
    g.add_argument("prompt", nargs="*", help="text prompt(s)")
    g.add_argument("-o", "--output", default="out.wav", help="WAV path; several clips get _0, _1, ... suffixes")
    g.add_argument("--model", default="tiny", help="preset name or checkpoint path (default: tiny, random weights)")
    g.add_argument("--text-encoder", default=None, help="local T5 directory for models with a pretrained encoder")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--nfe", type=int, default=100, help="budget of DiT evaluations per clip")
    g.add_argument("--solver", default="euler")
    g.add_argument("--cfg-scale", type=float, default=3.5)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1, help="clips per prompt (seeds seed, seed+1, ...)")
    g.add_argument("--prompts-file", default=None, help="one prompt per line")
    g.add_argument("--negative-prompt", default=None)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"etta {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
