"""Shared CLI plumbing: lazy subcommands, logging, and the one place broad errors become one line.

Every console script builds an argparse parser whose subcommands live in their own modules. A
subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, and imports nothing
heavy (never torch) at module level, so that `--help` and the slim runtime stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Mapping, Sequence

from vsdmot import __version__


def build_parser(prog: str, description: str, commands: Mapping[str, tuple[str, str]]) -> argparse.ArgumentParser:
    """`commands` maps a subcommand name to (module path, one-line help)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run. Bad input and device errors become one line and exit 2 / 1."""
    from vsdmot.runtime.errors import VsdmotError

    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(getattr(args, "verbose", 0) + 1, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run = getattr(args, "_run", None) or args.func
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (VsdmotError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
