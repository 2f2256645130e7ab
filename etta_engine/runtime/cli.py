"""``etta-runtime``: text to WAV from exported graphs, without PyTorch (``etta generate --backend onnx`` runs the
same code). ``etta-runtime generate "rain on a roof" --model exported/ -o rain.wav``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def output_paths(output: Path, n: int) -> list[Path]:
    """``output`` for one clip; ``stem_0.wav``, ``stem_1.wav``, ... for several."""
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(n)]


def read_prompts(args: argparse.Namespace, command: str) -> list[str]:
    """The prompts of the command line and ``--prompts-file``, each repeated ``--batch`` times."""
    prompts = list(args.prompt)
    if args.prompts_file:
        lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise SystemExit(f"{command}: give a prompt or --prompts-file")
    if args.batch < 1:
        raise SystemExit(f"{command}: --batch {args.batch} must be >= 1")
    return [p for p in prompts for _ in range(args.batch)]


def check_output(output: str, command: str) -> Path:
    path = Path(output)
    if not path.parent.is_dir():
        raise SystemExit(f"{command}: output directory {path.parent} does not exist")
    return path


def generate_from_args(args: argparse.Namespace, backend: str, command: str) -> int:
    """Run a generation from parsed ``generate`` arguments with the runtime (``backend``: onnxruntime, tensorrt)."""
    from etta_engine.runtime.pipeline import RuntimePipeline

    prompts = read_prompts(args, command)
    output = check_output(args.output, command)
    providers = args.providers.split(",") if getattr(args, "providers", None) else None
    options = {name: getattr(args, name, None) for name in ("threads", "cached")}
    pipe = RuntimePipeline(args.model, backend=backend, providers=providers, **options)
    save_clips(pipe.generate(prompts, **sampling_options(args)), output, len(prompts))
    return 0


def sampling_options(args: argparse.Namespace) -> dict:
    """The ``generate`` keyword arguments of the options :func:`add_sampling_args` parsed (both pipelines')."""
    return dict(
        seconds=args.seconds,
        nfe=args.nfe,
        solver=args.solver,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        cfg_rescale=args.cfg_rescale,
        cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        decode_chunk_frames=args.decode_chunk or None,
        truncate=args.truncate,
        padding=args.padding,
        progress=not args.quiet,
    )


def save_clips(audio, output: Path, n: int) -> None:
    """Write clip i of ``audio`` to the i-th of :func:`output_paths` and say so."""
    for i, path in enumerate(output_paths(output, n)):
        audio.save(path, index=i)
        print(f"wrote {path} ({audio.seconds:.2f} s, {audio.sample_rate} Hz, {audio.waveform.shape[1]} ch)")


def add_sampling_args(g: argparse.ArgumentParser) -> None:
    """The generation options shared by ``etta generate`` and ``etta-runtime generate``."""
    from etta_engine.runtime.sampling import SCHEDULES, SOLVERS

    g.add_argument("prompt", nargs="*", help="text prompt(s)")
    g.add_argument("-o", "--output", default="out.wav", help="WAV path; several clips get _0, _1, ... suffixes")
    g.add_argument("--seconds", type=float, default=None, help="clip length (default: the model's default_seconds)")
    g.add_argument("--nfe", type=int, default=100, help="budget of DiT evaluations per clip")
    g.add_argument("--solver", default="euler", help=f"one of {', '.join(sorted(SOLVERS))} (torch also: dopri5)")
    g.add_argument("--schedule", default="uniform", help=f"one of {', '.join(sorted(SCHEDULES))}")
    g.add_argument("--cfg-scale", type=float, default=3.5)
    g.add_argument("--cfg-rescale", type=float, default=0.0, help="CFG rescale phi in [0, 1]")
    g.add_argument("--cfg-interval", type=float, nargs=2, metavar=("T_LO", "T_HI"), help="guide only for t in range")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch", type=int, default=1, help="clips per prompt (seeds seed, seed+1, ...)")
    g.add_argument("--prompts-file", default=None, help="one prompt per line")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--decode-chunk", type=int, default=512, help="decode in windows of this many latents (0: whole)")
    g.add_argument(
        "--padding",
        default="max_length",
        choices=("max_length", "longest"),
        help="pad prompts to the text encoder's length (as the official code) or to the longest prompt rounded up "
        "to 32 tokens (the same audio up to rounding, faster)",
    )
    g.add_argument(
        "--truncate",
        action="store_true",
        help="cut prompts longer than the text encoder's limit (default: refuse them) to their first tokens",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def add_runtime_args(g: argparse.ArgumentParser) -> None:
    """Options of the runtime backends only."""
    g.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    g.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated (default: CUDA, CPU)")
    plain_help = "run the plain dit/dit_cfg graphs, not the cached ones (default: cached where exported)"
    g.add_argument("--plain-dit", dest="cached", action="store_const", const=False, default=None, help=plain_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etta-runtime", description="ETTA text-to-audio from exported graphs")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text in, WAV out")
    add_sampling_args(g)
    g.add_argument("--model", required=True, help="directory written by `etta export onnx` (or `export tensorrt`)")
    g.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    add_runtime_args(g)
    return parser


def main(argv: list[str] | None = None) -> int:
    from etta_engine.runtime.manifest import ManifestError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return generate_from_args(args, args.backend, "etta-runtime generate")
    except (ValueError, TypeError, OSError, KeyError, RuntimeError, ImportError, ManifestError) as e:
        print(f"etta-runtime {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
