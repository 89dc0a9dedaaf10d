"""`vsdmot-eval`: score a MOTChallenge result file against a sequence's ground truth with TrackEval.

    vsdmot-eval --gt SEQ_DIR --res FILE [--frames A:B] [--json]

Prints HOTA, DetA, AssA, MOTA, IDF1 (percent), IDSW and counts as a table, or every number as
JSON (fractions in [0, 1]).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from vsdmot import __version__
from vsdmot._cli import Parser, add_log_arguments, run_main

TABLE_KEYS = ("HOTA", "DetA", "AssA", "MOTA", "MOTP", "IDF1", "IDSW", "FP", "FN", "GT_IDs", "IDs", "frames")


def parse_frames(text: str) -> tuple[int, int]:
    """'A:B' -> (A, B), 1-based inclusive."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (two frame numbers), got {text!r}") from None
    return a, b


def format_value(key: str, value) -> str:
    """Scores as percent with one decimal, counts as integers."""
    return f"{100 * value:.1f}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vsdmot-eval", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_arguments(p)
    p.add_argument("--gt", required=True, metavar="SEQ_DIR", help="sequence folder (seqinfo.ini + gt/gt.txt)")
    p.add_argument("--res", required=True, metavar="FILE", help="MOTChallenge result file")
    p.add_argument("--frames", type=parse_frames, metavar="A:B", help="evaluate frames A..B only (inclusive)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from vsdmot.evaluation.metrics import evaluate

    result = evaluate(args.gt, args.res, frames=args.frames)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cells = [(k, format_value(k, result[k])) for k in TABLE_KEYS]
    widths = [max(len(k), len(v)) for k, v in cells]
    print("  ".join(k.rjust(w) for (k, _), w in zip(cells, widths)))
    print("  ".join(v.rjust(w) for (_, v), w in zip(cells, widths)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)
