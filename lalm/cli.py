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
