"""The `lalm` command. Thin: each subcommand parses its arguments, calls one library function
and formats the result. Subcommands register themselves in `_COMMANDS` below, one entry each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lalm import __version__
from lalm.errors import LalmError

# name -> (help, add_arguments(parser), run(args) -> exit code)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register `run(args) -> int` as the subcommand `name`."""
    def register(run: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lalm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lalm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_arguments, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `lalm` command line; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except LalmError as e:
        print(f"lalm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created; reruns resume)")
    p.add_argument("--size", default="small", help="tiny, small, medium or large")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed, same bytes)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


@command("synth", "generate the lalm-synth dataset (exact answers, deterministic)",
         _synth_arguments)
def _synth(args: argparse.Namespace) -> int:
    from lalm.synth import generate

    tasks = args.tasks.split(",") if args.tasks else None
    report = generate(args.out, args.size, args.seed, tasks, args.workers)
    sizes = ", ".join(f"{k} {v}" for k, v in report.per_split.items())
    print(f"lalm-synth in {args.out}: {report.made} items made, {report.skipped} already there; "
          f"{sizes}; {report.airbench} AIR-Bench items")
    return 0


def _from_whisper_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("whisper", help="Whisper checkpoint: CTranslate2 folder, transformers folder "
                                   "or openai-whisper .pt")
    p.add_argument("out", help="output folder (a Qwen2-Audio checkpoint)")
    p.add_argument("--decoder-preset", default="tiny-random",
                   help="model preset whose decoder section sizes the new decoder")
    p.add_argument("--decoder", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one decoder field, e.g. --decoder n_layer=4 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights")


@command("from-whisper", "build a new model: a real Whisper encoder + a fresh random decoder",
         _from_whisper_arguments)
def _from_whisper(args: argparse.Namespace) -> int:
    import json

    from lalm.checkpoint.whisper import build_from_whisper
    from lalm.config import ModelConfig

    overrides = {}
    for item in args.decoder:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"lalm from-whisper: --decoder expects FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(value)  # numbers and booleans
        except json.JSONDecodeError:
            overrides[field] = value
    try:
        decoder = ModelConfig.from_name(args.decoder_preset, decoder=overrides).decoder
    except (KeyError, ValueError, TypeError) as e:
        raise SystemExit(f"lalm from-whisper: {e}") from e
    files = build_from_whisper(args.whisper, decoder, args.out, seed=args.seed)
    print(f"wrote {len(files)} files to {args.out}")
    return 0
