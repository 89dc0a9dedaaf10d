"""vsdmot-degrade: write a degraded copy of a MOTChallenge sequence, list presets, or draw the contact sheet.

    vsdmot-degrade --input SEQ_DIR --preset NAME --severity S [--seed N] --out DIR
    vsdmot-degrade --input SEQ_DIR --schedule mixed [--seed N] --out DIR
    vsdmot-degrade --list
    vsdmot-degrade --contact-sheet docs/contact_sheet.png [--input PETS09-S2L1_DIR]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vsdmot import __version__
from vsdmot._cli import run_main

DEFAULT_SHEET_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "PETS09-S2L1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vsdmot-degrade", description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--input", type=Path, metavar="SEQ_DIR", help="MOTChallenge sequence folder (img1/ or a video, seqinfo.ini)")
    p.add_argument("--preset", metavar="NAME", help="degradation preset (see --list)")
    p.add_argument("--severity", type=int, metavar="S", help="1 (mild) .. 5 (severe)")
    p.add_argument("--schedule", metavar="NAME", help="time-varying schedule instead of one preset: mixed")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output sequence folder (replaced if it is an earlier output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list presets with their parameter per severity")
    p.add_argument("--contact-sheet", type=Path, metavar="PNG", help="render the preset x severity contact sheet")
    p.set_defaults(func=run)
    return p


def _list() -> int:
    from .degrade import H264_INTRA_QP, TABLE  # noqa: PLC0415

    for p in TABLE.values():
        extra = f"; per frame: intra QP {H264_INTRA_QP}" if p.clip else ""
        print(f"{p.name:15s} {p.unit}: {p.levels}{extra}")
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.verbose:  # FFmpeg's own log lines (e.g. "moov atom not found") would double our one-line error
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if args.list:
        return _list()
    if args.contact_sheet:
        from .contact_sheet import write  # noqa: PLC0415

        print(write(args.contact_sheet, args.input or DEFAULT_SHEET_INPUT, seed=args.seed))
        return 0
    if args.input is None or args.out is None:
        raise ValueError("expected --input SEQ_DIR and --out DIR (with --preset NAME --severity S, or --schedule mixed)")
    from .sequence import write_degraded_sequence  # noqa: PLC0415

    out = write_degraded_sequence(args.input, args.out, preset=args.preset, severity=args.severity,
                                  schedule=args.schedule, seed=args.seed, progress=not args.no_progress)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
