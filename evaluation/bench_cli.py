"""`vsdmot-bench`: run trackers over sequences x degradations; print one table, write JSON and a plot.

    vsdmot-bench --seq DIR [DIR ...] [--preset NAME ... | --all-presets] [--severity 3]
                 [--schedule mixed ...] [--no-clean] [--tracker peer ...] [--frames A:B]
                 [--threads 1] [--seed 0] [--out runs/bench] [--cache runs/cache] [--detector ONNX]

FPS counts only the tracker's own time per frame (detector + tracker); video decoding and the
writing of degraded sequences are excluded.

    vsdmot-bench ablation [--seq DIR ...] [--rows NAME ...] [--bundle NAME=DIR ...] [--out runs/ablation]

runs the ablation (docs/ablation.md): tracker variants x clean, every preset and the mixed schedule.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from vsdmot import __version__
from vsdmot._cli import Parser, add_log_arguments, run_main
from vsdmot.evaluation.cli import parse_frames
from vsdmot.paths import data_root


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vsdmot-bench", description=__doc__.splitlines()[0],
                                epilog="The ablation is a subcommand: vsdmot-bench ablation --help (docs/ablation.md).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_arguments(p)
    p.add_argument("--seq", nargs="+", default=[], type=Path, metavar="DIR", help="MOTChallenge sequence folders")
    deg = p.add_mutually_exclusive_group()
    deg.add_argument("--preset", nargs="+", default=[], metavar="NAME", help="degradation presets to run")
    deg.add_argument("--all-presets", action="store_true", help="every preset in vsdmot.calibration.degrade.PRESETS")
    p.add_argument("--severity", type=int, default=3, help="severity 1-5 for the presets (default 3)")
    p.add_argument("--schedule", nargs="+", default=[], metavar="NAME", help="time-varying schedules, e.g. mixed")
    p.add_argument("--no-clean", dest="clean", action="store_false", help="skip the clean condition")
    p.add_argument("--tracker", nargs="+", default=["peer"], metavar="NAME", help="registered trackers (default: peer)")
    p.add_argument("--frames", type=parse_frames, metavar="A:B", help="track and score frames A..B only")
    p.add_argument("--threads", type=int, default=1, help="inference threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="(sequence, condition) pairs run in parallel processes (default 1)")
    p.add_argument("--input-size", type=int, default=416, help="detector input side, px")
    p.add_argument("--seed", type=int, default=0, help="degradation seed")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (bench.json, bench.png, results/)")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"), help="degraded-sequence cache")
    p.add_argument("--detector", type=Path, help="YOLOX ONNX for the peer (default: $VSDMOT_YOLOX_ONNX or ../shared/models)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip bench.png")
    p.add_argument("--list-trackers", action="store_true", help="print the registered trackers and exit")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import cv2

    from vsdmot.evaluation import bench as B

    if args.list_trackers:
        for name, desc in B.available_trackers().items():
            print(f"{name:16s} {desc}")
        return 0
    if not args.seq:
        raise ValueError("expected --seq DIR [DIR ...] (MOTChallenge sequence folders)")
    if args.threads < 1 or args.jobs < 1 or not 1 <= args.severity <= 5:
        raise ValueError(f"expected --threads >= 1, --jobs >= 1 and --severity 1-5, "
                         f"got {args.threads}, {args.jobs} and {args.severity}")
    cv2.setNumThreads(args.threads)
    presets = B.known_presets() if args.all_presets else args.preset
    _check_names("preset", presets, B.known_presets)
    _check_names("schedule", args.schedule, B.known_schedules)
    conds = B.conditions(presets, args.severity, args.schedule, args.clean)
    if not conds:
        raise ValueError("no conditions: give --preset, --all-presets or --schedule, or keep the clean run")
    meta, json_path = _meta(args), args.out / "bench.json"
    partial = lambda rs: B.write_json(rs, json_path, {**meta, "complete": False})  # noqa: E731
    results = B.bench(args.seq, conds, args.tracker, args.out, cache_dir=args.cache, threads=args.threads,
                      input_size=args.input_size, frames=args.frames, seed=args.seed, yolox_onnx=args.detector,
                      jobs=args.jobs, on_result=partial)
    print(B.format_table(results))
    B.write_json(results, json_path, {**meta, "complete": True})
    if args.plot:
        from vsdmot.evaluation.plots import plot_bench

        plot_bench(results, args.out / "bench.png")
    print(f"\nFPS: time inside the tracker only (detector + tracker), video decode excluded; "
          f"{args.threads} thread(s), input {args.input_size}. Wrote {args.out / 'bench.json'}", file=sys.stderr)
    return 0


def _check_names(what: str, names: list[str], known) -> None:
    """Fail before any work on a name the degradation library does not know."""
    if not names:
        return
    unknown = sorted(set(names) - set(known()))
    if unknown:
        raise ValueError(f"{what}: expected names from {known()}, got {unknown}")


def _meta(args: argparse.Namespace) -> dict:
    import onnxruntime

    return {
        "command": " ".join(["vsdmot-bench", *args.argv]),
        "vsdmot": __version__, "threads": args.threads, "jobs": args.jobs, "input_size": args.input_size, "seed": args.seed,
        "severity": args.severity, "frames": args.frames, "precision": "fp32",
        "fps_note": "frames / seconds inside track(frame): detector + tracker; video decode excluded",
        "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
    }


SHARED_DATA = data_root()
HELD_OUT = Path("runs/seqs/PETS09-S2L1-601-795")  # PETS09-S2L1 frames 601-795: no training uses them
DEFAULT_ABLATION_SEQS = (HELD_OUT, SHARED_DATA / "TUD-Campus")


def build_ablation_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vsdmot-bench ablation",
                                description="Ablation: tracker variants x sequences x conditions (docs/ablation.md)")
    add_log_arguments(p)
    p.add_argument("--seq", nargs="+", type=Path, default=list(DEFAULT_ABLATION_SEQS), metavar="DIR",
                   help="sequences (default: the held-out PETS09-S2L1 601-795 copy and TUD-Campus)")
    p.add_argument("--preset", nargs="*", metavar="NAME", help="presets (default: every preset; none if given empty)")
    p.add_argument("--severity", type=int, default=3, help="severity 1-5 for the presets (default 3)")
    p.add_argument("--schedule", nargs="*", default=["mixed"], metavar="NAME", help="schedules (default: mixed; none if given empty)")
    p.add_argument("--no-clean", dest="clean", action="store_false", help="skip the clean condition")
    p.add_argument("--rows", nargs="+", metavar="NAME", help="run only these standard rows (default: all; see --list-rows); --bundle rows always run")
    p.add_argument("--bundle", nargs="+", default=[], metavar="NAME=DIR",
                   help="extra rows: another exported bundle (its manifest's tracker, auto policy)")
    p.add_argument("--main-bundle", type=Path, help="the bundle the rows run (default: the shipped default)")
    p.add_argument("--static-w", type=float, help="constant w of the static row (default: w_max / 2 of the bundle's DSWR)")
    p.add_argument("--frames", type=parse_frames, metavar="A:B", help="track and score frames A..B only")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per network (default 1)")
    p.add_argument("--seed", type=int, default=0, help="degradation seed")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="results, cached rows, ablation.json/.md")
    p.add_argument("--cache", type=Path, default=Path("runs/cache"), help="degraded-sequence cache")
    p.add_argument("--detector", type=Path, help="the peer's YOLOX ONNX (default: $VSDMOT_YOLOX_ONNX or ../shared/models)")
    p.add_argument("--plot", type=Path, help="PNG path (default: OUT/ablation.png)")
    p.add_argument("--list-rows", action="store_true", help="print the rows and exit")
    p.set_defaults(func=run_ablation)
    return p


def run_ablation(args: argparse.Namespace) -> int:
    import cv2

    from vsdmot.evaluation import ablation as A
    from vsdmot.evaluation import ablation_report as R
    from vsdmot.evaluation import bench as B

    bundles = tuple(A.bundle_row(spec) for spec in args.bundle)
    if args.list_rows:
        for r in A.default_rows() + bundles:
            print(f"{r.name:16s} {r.note}")
        return 0
    rows = A.select_rows(A.default_rows(), args.rows, bundles)
    cv2.setNumThreads(args.threads)
    if HELD_OUT in args.seq and not (HELD_OUT / "seqinfo.ini").is_file():  # written once, as docs/peer_baseline.md
        A.held_out_copy(SHARED_DATA / "PETS09-S2L1", HELD_OUT, 601, 795)
    presets = B.known_presets() if args.preset is None else args.preset
    _check_names("preset", presets, B.known_presets)
    _check_names("schedule", args.schedule, B.known_schedules)
    if not 1 <= args.severity <= 5:  # before the held-out frames are degraded, as vsdmot-bench does
        raise ValueError(f"expected --severity 1-5, got {args.severity}")
    conds = tuple(B.conditions(presets, args.severity, args.schedule, args.clean))
    cfg = A.AblationConfig(tuple(args.seq), conds, rows, args.out, args.cache, args.main_bundle or A.DEFAULT_BUNDLE,
                           args.frames, args.seed, args.threads, args.static_w, args.detector)
    data = A.run_ablation(cfg)
    data["meta"]["command"] = " ".join(["vsdmot-bench", *args.argv])
    paths = R.write_outputs(data, args.out, args.plot or args.out / "ablation.png")
    print(R.summary_table(data) + "\n" + R.targets_table(data))
    print(f"wrote {', '.join(map(str, paths))}; this run: {data['meta']['seconds_this_run']} s", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ablation"]:  # a subcommand; every other argv keeps the flat vsdmot-bench flags
        parser = build_ablation_parser()
        parser.set_defaults(argv=argv)
        return run_main(parser, argv[1:])
    parser = build_parser()
    parser.set_defaults(argv=argv)
    return run_main(parser, argv)
