"""Benchmark `vsdmot-edge run` end to end against the YOLOX-nano + ByteTrack peer, in one run.

    python -m vsdmot.edge.run_bench --peer-onnx ../shared/models/yolox_nano.onnx \
        [--source runtime/assets/demo.mp4] [--bundle DIR] [--rounds 3] [--threads 0] [--out FILE.json]
        [--bundles NAME=DIR ...] [--ref NAME] [--bundle-semantic auto|always|never]

Every variant is a fresh process doing the same work a user's run does: decode the clip, run
the pipeline, write MOTChallenge rows. Variants are interleaved round by round (so load from
other processes hits them alike). Per variant: the median loop FPS (first frame pulled to last
row written, as `--stats-out` reports it), the median wall FPS including start-up (imports,
model loading) and the process's peak RSS (ru_maxrss). Variants:
    peer            YOLOX-nano (416, ORT, FP32) + ByteTrack: decode, detect, track, MOT rows
    vsdmot-never    vsdmot-edge run --backend onnxruntime --semantic never
    vsdmot-auto     vsdmot-edge run --backend onnxruntime --semantic auto
    vsdmot-always   vsdmot-edge run --backend onnxruntime --semantic always
    bundle:NAME     vsdmot-edge run --bundle DIR --semantic S, one per `--bundles NAME=DIR` (e.g. the
                    exports fp32, fp32-p25, int8, int8-p25); their FPS ratios are given against
                    `--ref` (default the first) and the peer, with each bundle's size (the bytes of
                    the files its manifest lists) and its ratio to the reference's size.
This is a benchmark, not a test: numbers depend on the machine and its load; it states both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vsdmot._cli import run_main
from vsdmot.edge.run_cmd import DEMO_CLIP
from vsdmot.runtime.bundle import DEFAULT_BUNDLE

VARIANTS = ("peer", "vsdmot-never", "vsdmot-auto", "vsdmot-always")

# Child process: run the given main, then report wall time, frames and peak RSS as one JSON line.
_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
rec = {main}
rec.update(wall_seconds=time.perf_counter() - t0, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print("BENCH " + json.dumps(rec), file=sys.stderr)
"""

_PEER = """__import__("vsdmot.edge.run_bench", fromlist=["x"]).peer_main(sys.argv[1:])"""
_RUN = """(__import__("vsdmot.edge.cli", fromlist=["x"]).main(sys.argv[1:]), json.load(open(sys.argv[-1])))[1]"""


def peer_main(argv: list[str]) -> dict:
    """YOLOX-nano + ByteTrack over a file, writing MOT rows: argv = onnx, source, threads, mot_out."""
    from vsdmot.runtime.backends import OnnxRuntimeBackend
    from vsdmot.runtime.bytetrack import ByteTrack
    from vsdmot.runtime.sinks import MotSink
    from vsdmot.runtime.sources import open_file_source
    from vsdmot.runtime.types import FrameResult
    from vsdmot.runtime.yolox import YoloxDetector

    onnx, source, threads, mot_out = argv
    detector = YoloxDetector(OnnxRuntimeBackend(onnx, threads=int(threads)), 416)
    src = open_file_source(source)
    tracker, sink, n = ByteTrack(frame_rate=src.fps), MotSink(mot_out), 0
    t0 = time.perf_counter()  # as vsdmot-edge run's stats: from the first pull to the last write
    for frame in src:
        tracks = tracker.step(detector.detect(frame.image))
        sink.write(FrameResult(frame.index, frame.timestamp, 1.0, 0.0, "skipped", tracks), frame.image)
        n += 1
    sink.close()
    return {"frames": n, "fps": n / (time.perf_counter() - t0)}


def _command(variant: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    if variant == "peer":
        return [sys.executable, "-c", _CHILD.format(main=_PEER), str(args.peer_onnx), str(args.source),
                str(args.threads), str(tmp / "peer.txt")]
    if variant.startswith("bundle:"):
        policy, bundle = args.bundle_semantic, dict(args.bundles)[variant.split(":", 1)[1]]
    else:
        policy, bundle = variant.split("-", 1)[1], args.bundle
    slug = variant.replace(":", "_")
    run = ["run", "--source", str(args.source), "--backend", "onnxruntime", "--semantic", policy,
           "--threads", str(args.threads), "--health-listen", "off", "--mot-out", str(tmp / f"{slug}.txt")]
    run += ["--bundle", str(bundle)] if bundle else []
    return [sys.executable, "-c", _CHILD.format(main=_RUN), *run, "--stats-out", str(tmp / f"{slug}.json")]


def bundle_arg(text: str) -> tuple[str, Path]:
    """`NAME=DIR` -> (NAME, DIR); the directory must hold a manifest.json."""
    name, sep, path = text.partition("=")
    if not sep or not name or not (Path(path) / "manifest.json").is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=DIR with DIR/manifest.json, got {text!r}")
    return name, Path(path)


def bundle_bytes(path: Path) -> int:
    """Size of a bundle: the files its manifest lists that the runtime loads (networks, parameters,
    notice; not the export's reports, whose plot alone is ~65 kB), plus the manifest."""
    manifest = json.loads((path / "manifest.json").read_text())
    files = [f for f in manifest["files"].values() if f.get("role") != "report"]
    return sum(int(f["size"]) for f in files) + (path / "manifest.json").stat().st_size


def bundle_shape(path: Path) -> dict[str, str]:
    """What a bundle row ran: its precision and detector input ('416x320'), from its manifest."""
    manifest = json.loads((path / "manifest.json").read_text())
    det = manifest["files"].get("detector.onnx", {})
    shape = next((i["shape"] for i in det.get("inputs", []) if len(i.get("shape", [])) == 4), None)
    return {"precision": manifest.get("precision", "?"), "detector_input": f"{shape[3]}x{shape[2]}" if shape else "?"}


def _measure(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in out.stderr.splitlines() if ln.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark child failed ({out.returncode}): {out.stderr.strip()[-800:]}")
    rec = json.loads(line[6:])
    rec["wall_fps"] = rec["frames"] / rec["wall_seconds"]  # incl. start-up: imports, model loading
    return rec


def bench(args: argparse.Namespace) -> dict:
    variants = [*args.variants, *(f"bundle:{n}" for n, _ in args.bundles)]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="vsdmot-bench-") as tmp:
        for r in range(args.rounds):
            for v in variants:
                rec = _measure(_command(v, args, Path(tmp)))
                runs[v].append(rec)
                if v == "vsdmot-auto":
                    runs.setdefault("_auto_stats", []).append(rec)
                print(f"round {r + 1} {v:14s} {rec['fps']:6.1f} FPS  peak RSS {rec['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return summarise(runs, args)


def summarise(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    table = {v: {"fps_median": statistics.median(r["fps"] for r in recs),
                 "fps_runs": [round(r["fps"], 2) for r in recs],
                 "wall_fps_median": statistics.median(r["wall_fps"] for r in recs),
                 "peak_rss_mb": max(r["peak_rss_mb"] for r in recs), "frames": recs[0]["frames"]}
             for v, recs in runs.items() if not v.startswith("_")}
    fps = {v: t["fps_median"] for v, t in table.items()}
    ratios = {}
    if "peer" in fps:
        ratios.update({f"{v}/peer": fps[v] / fps["peer"] for v in fps if v != "peer"})
    if "vsdmot-never" in fps and "vsdmot-auto" in fps:
        ratios["auto_cost_vs_never"] = fps["vsdmot-never"] / fps["vsdmot-auto"] - 1.0
    auto = runs.get("_auto_stats", [{}])[-1]
    bundles = bundle_table(fps, args)
    return {"source": str(args.source), "bundle": str(args.bundle or "default"), "rounds": args.rounds,
            "threads": args.threads or "onnxruntime default (all cores)", "cpu_count": os.cpu_count(),
            **bundle_shape(args.bundle or DEFAULT_BUNDLE), "variants": table,  # what the built-in variants ran
            "ratios": {k: round(v, 3) for k, v in ratios.items()}, "bundles": bundles,
            "auto_semantic_counts": {k: auto.get(k) for k in ("semantic_runs", "semantic_reused", "semantic_skipped")}}


def bundle_table(fps: dict[str, float], args: argparse.Namespace) -> dict[str, dict]:
    """Per `--bundles` entry: FPS, FPS ratio vs the reference bundle and vs the peer, bytes and size ratio."""
    if not args.bundles:
        return {}
    ref = args.ref or args.bundles[0][0]  # main() has checked that --ref names one of them
    size = {n: bundle_bytes(p) for n, p in args.bundles}
    out = {}
    for n, p in args.bundles:
        f = fps[f"bundle:{n}"]
        out[n] = {"path": str(p), "fps": round(f, 2), f"fps_vs_{ref}": round(f / fps[f"bundle:{ref}"], 3),
                  "fps_vs_peer": round(f / fps["peer"], 3) if "peer" in fps else None,
                  "bytes": size[n], f"size_vs_{ref}": round(size[n] / size[ref], 3), **bundle_shape(p)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vsdmot.edge.run_bench", description=__doc__.splitlines()[0])
    p.add_argument("--peer-onnx", type=Path, help="YOLOX-nano ONNX (official layout): needed by the peer variant")
    p.add_argument("--source", type=Path, default=DEMO_CLIP, help="clip (640x480 demo by default)")
    p.add_argument("--bundle", type=Path, help="bundle (default: the shipped one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads, same for every variant")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS,
                   help="built-in variants (none: only the --bundles ones)")
    p.add_argument("--bundles", nargs="+", type=bundle_arg, default=[], metavar="NAME=DIR",
                   help="bundles to compare, each run as `vsdmot-edge run --bundle DIR`")
    p.add_argument("--ref", help="the --bundles NAME the others are compared to (default: the first)")
    p.add_argument("--bundle-semantic", default="auto", choices=["auto", "always", "never"],
                   help="--semantic policy of the --bundles runs")
    p.add_argument("--out", type=Path, help="write the result JSON here")
    p.set_defaults(func=lambda args: _run(p, args))
    return run_main(p, argv)  # bad input: one line and exit 2, not a traceback


def _run(p, args) -> int:
    if args.ref and args.ref not in dict(args.bundles):
        p.error(f"--ref: expected one of {[n for n, _ in args.bundles]}, got {args.ref!r}")
    if "peer" in args.variants and args.peer_onnx is None:
        p.error("--peer-onnx: the peer variant needs the YOLOX-nano ONNX (../shared/models/yolox_nano.onnx); "
                "or leave it out: --variants with the others, or none")
    result = bench(args)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
