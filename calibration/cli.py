"""Write a degraded copy of a MOTChallenge sequence, list the presets, time them, or draw the contact sheet.

    vsdmot-degrade --input SEQ_DIR --preset NAME --severity S [--seed N] [--storage png|ffv1] --out DIR
    vsdmot-degrade --input SEQ_DIR --schedule mixed [--seed N] [--storage png|ffv1] --out DIR
    vsdmot-degrade --list
    vsdmot-degrade --contact-sheet docs/contact_sheet.png [--input PETS09-S2L1_DIR]
    vsdmot-degrade --bench [--input SEQ_DIR]      (ms per frame per preset; default TUD-Campus, 640x480)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from vsdmot import __version__
from vsdmot._cli import Parser, add_log_arguments, run_main, sigterm_exits
from vsdmot.paths import data_root

DEFAULT_SHEET_INPUT = data_root() / "PETS09-S2L1"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vsdmot-degrade", description=__doc__.strip().splitlines()[0],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_arguments(p)
    p.add_argument("--input", type=Path, metavar="SEQ_DIR", help="MOTChallenge sequence folder (img1/ or a video, seqinfo.ini)")
    p.add_argument("--preset", metavar="NAME", help="degradation preset (see --list)")
    p.add_argument("--severity", type=int, metavar="S", help="1 (mild) .. 5 (severe)")
    p.add_argument("--schedule", metavar="NAME", help="time-varying schedule instead of one preset: mixed")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output sequence folder (replaced if it is an earlier output)")
    p.add_argument("--storage", default="png", metavar="png|ffv1",
                   help="frames as lossless PNG img1/ (default; fastest to read back) or one FFV1 .mkv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list presets with their parameter per severity")
    p.add_argument("--contact-sheet", type=Path, metavar="PNG", help="render the preset x severity contact sheet")
    p.add_argument("--bench", action="store_true", help="time every preset on --input's first frames (ms/frame)")
    p.set_defaults(func=run)
    return p


def _list() -> int:
    from .degrade import H264_INTRA_QP, TABLE  # noqa: PLC0415

    for p in TABLE.values():
        extra = f"; per frame: intra QP {H264_INTRA_QP}" if p.clip else ""
        print(f"{p.name:15s} {p.unit}: {p.levels}{extra}")
    return 0


def _bench(seq_dir: Path, reps: int = 10) -> int:
    """Median ms per frame (wall and CPU, one OpenCV thread) per preset and severity 1/3/5."""
    import time  # noqa: PLC0415

    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from vsdmot.runtime.sources import open_sequence  # noqa: PLC0415

    from .degrade import PRESETS, TABLE, degrade, degrade_frames  # noqa: PLC0415

    cv2.setNumThreads(1)
    src = open_sequence(seq_dir).frames()
    clip = [f.image for _, f in zip(range(50), src)]
    src.close()
    print(f"{clip[0].shape[1]}x{clip[0].shape[0]}, median of {reps}, 1 OpenCV thread; wall ms / CPU ms (this process)")
    for preset in PRESETS:
        cells = []
        for sev in (1, 3, 5):
            wall, cpu = [], []
            for k in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                degrade(clip[k % len(clip)], preset, sev, np.random.default_rng(k))
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            cells.append(f"s{sev} {np.median(wall) * 1e3:6.1f} / {np.median(cpu) * 1e3:6.1f}")
        if TABLE[preset].clip:
            t0 = time.perf_counter()
            n = sum(1 for _ in degrade_frames(clip, preset, 3, 0))
            cells.append(f"clip s3 {(time.perf_counter() - t0) * 1e3 / n:.1f} ms/frame wall")
        print(f"{preset:15s} " + "   ".join(cells))
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.verbose:  # FFmpeg's own log lines (e.g. "moov atom not found") would double our one-line error
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if args.list:
        return _list()
    if args.bench:
        return _bench(args.input or DEFAULT_SHEET_INPUT.with_name("TUD-Campus"))
    if args.contact_sheet:
        from .contact_sheet import write  # noqa: PLC0415

        print(write(args.contact_sheet, args.input or DEFAULT_SHEET_INPUT, seed=args.seed))
        return 0
    if args.input is None or args.out is None:
        raise ValueError("expected --input SEQ_DIR and --out DIR (with --preset NAME --severity S, or --schedule mixed)")
    from .sequence import write_degraded_sequence  # noqa: PLC0415

    with sigterm_exits("vsdmot-degrade: terminated; nothing written to --out"):  # its temp folder is removed
        out = write_degraded_sequence(args.input, args.out, preset=args.preset, severity=args.severity,
                                      schedule=args.schedule, seed=args.seed, progress=not args.no_progress,
                                      storage=args.storage)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
