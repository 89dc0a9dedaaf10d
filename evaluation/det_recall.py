"""How many annotated people a bundle's detector finds: recall and precision against gt, per bundle.

    python -m vsdmot.evaluation.det_recall --bundles 416=runtime/assets/default 832x480=OUT/fp32-832x480 \
        [--seq SEQ ...] [--score 0.5] [--min-vis 0.25] [--json OUT.json]

Why: tracking can only follow the people the detector reports, and a detector input that shows
1920x1080 frames at 0.22x loses most small people before any tracker runs. This counts that
directly, on single frames, so it also works on MOT17-mini (4-8 annotated frames per sequence,
too few to track). `--seq` defaults to the MOT17-mini sequences beside the repository.

Per frame with gt rows: the bundle's `detector.onnx` through the runtime's YoloxDetector (letterbox, network,
decode, NMS; onnxruntime, 1 thread), boxes at `--score` or above, matched one to one to counted
gt people (conf 1, MOT17 class 1 where given, visibility >= `--min-vis` where given) at IoU 0.5.
An unmatched box on any other gt row (occluded, static, non-pedestrian) is not a false positive.
Time is `detect` per frame, median.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vsdmot._cli import run_main
from vsdmot.paths import data_root
from vsdmot.runtime.backends import open_backend
from vsdmot.runtime.bundle import load_bundle
from vsdmot.runtime.errors import BundleError
from vsdmot.runtime.mot import MotRows, read_rows
from vsdmot.runtime.pipeline import detector_input_size, warm_up
from vsdmot.runtime.sources import open_sequence
from vsdmot.runtime.tracking import box_iou, linear_assignment
from vsdmot.runtime.yolox import YoloxDetector, size_text

from .metrics import counted_mask


@dataclass
class Counts:
    """Matched (tp), unmatched boxes off any gt row (fp), missed people (fn); detect times in ms."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    ms: list[float] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn
        self.ms += other.ms

    def row(self) -> dict[str, float]:
        recall, precision = self.tp / max(self.tp + self.fn, 1), self.tp / max(self.tp + self.fp, 1)
        return {"recall": round(recall, 3), "precision": round(precision, 3), "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "detect_ms": round(float(np.median(self.ms)), 1) if self.ms else None}


def counted(gt: MotRows, min_vis: float) -> np.ndarray:
    """(M,) bool: the gt rows a detector is expected to find: those the metrics count, at least
    `min_vis` visible where the file gives visibility."""
    return counted_mask(gt) & ((gt.vis < 0) | (gt.vis >= min_vis))


def score_frame(boxes: np.ndarray, gt: MotRows, min_vis: float) -> Counts:
    """One frame's (K, 4) boxes against its gt rows."""
    keep = counted(gt, min_vis)
    people, other = gt.select(keep).xyxy, gt.select(~keep).xyxy
    iou = box_iou(boxes, people).reshape(len(boxes), len(people))
    matches, free_boxes, missed = linear_assignment(1.0 - iou, 0.5)
    left = boxes[free_boxes]
    if len(left) and len(other):  # a box on an ignored row is neither right nor wrong
        left = left[box_iou(left, other).reshape(len(left), len(other)).max(1) < 0.5]
    return Counts(len(matches), len(left), len(missed))


@dataclass
class BundleScore:
    input_size: str  # the detector's input, WxH
    per_seq: dict[str, Counts]  # sequence name -> Counts over its annotated frames

    def total(self) -> Counts:
        out = Counts()
        for c in self.per_seq.values():
            out.add(c)
        return out


def score_bundle(bundle_dir: Path, seqs: Sequence[Path], score: float, min_vis: float) -> BundleScore:
    backend = open_backend("onnxruntime", load_bundle(bundle_dir).file("detector.onnx"), threads=1)
    try:
        size = detector_input_size(backend)
        detector, result = YoloxDetector(backend, size), BundleScore(size_text(size), {})
        warm_up([backend])
        for path in seqs:
            result.per_seq[open_sequence(path).info.name] = score_sequence(detector, Path(path), score, min_vis)
    finally:
        backend.close()
    return result


def score_sequence(detector: YoloxDetector, path: Path, score: float, min_vis: float) -> Counts:
    """Counts over the frames that have gt rows (MOT17-mini's gt covers only the frames it ships)."""
    seq, counts = open_sequence(path), Counts()
    if seq.gt_path is None:
        raise ValueError(f"sequence {path}: no gt/gt.txt to score against")
    gt, source = read_rows(seq.gt_path), seq.frames()
    try:
        for frame in source:
            rows = gt.at(frame.index)
            if not len(rows):
                continue
            t = time.perf_counter()
            dets = detector.detect(frame.image)
            c = score_frame(dets.xyxy[dets.score >= score], rows, min_vis)
            c.ms.append((time.perf_counter() - t) * 1e3)
            counts.add(c)
    finally:
        source.close()
    return counts


def table(results: dict[str, BundleScore]) -> str:
    lines = ["| bundle | detector input | recall | precision | tp | fp | fn | detect (ms, median) | recall per sequence |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, res in results.items():
        r = res.total().row()
        seq = " ".join(f"{k}: {c.row()['recall']:.2f}" for k, c in res.per_seq.items())
        lines.append(f"| {name} | {res.input_size} | {r['recall']:.3f} | {r['precision']:.3f} | {r['tp']} | {r['fp']} "
                     f"| {r['fn']} | {r['detect_ms']} | {seq} |")
    return "\n".join(lines)


def default_seqs() -> list[Path]:
    root = data_root() / "MOT17-mini" / "train"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.det_recall", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="+", required=True, metavar="NAME=DIR", help="bundles whose detectors to score")
    ap.add_argument("--seq", nargs="+", type=Path, default=None, help="MOTChallenge folders (default: MOT17-mini)")
    ap.add_argument("--score", type=float, default=0.5, help="least box score counted")
    ap.add_argument("--min-vis", type=float, default=0.25, help="least MOT17 visibility of a counted person")
    ap.add_argument("--json", type=Path, default=None)
    ap.set_defaults(func=lambda a: _run(ap, a))
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    pairs = [b.split("=", 1) for b in a.bundles]
    if any(len(p) != 2 or not p[0] for p in pairs):
        ap.error(f"--bundles: expected NAME=DIR, got {a.bundles}")
    seqs = a.seq or default_seqs()
    if not seqs:
        ap.error("--seq: none given and no MOT17-mini beside the repository (set VSDMOT_DATA)")
    try:
        results = {name: score_bundle(Path(d), seqs, a.score, a.min_vis) for name, d in pairs}
    except (ValueError, OSError, BundleError) as e:
        print(f"det_recall: error: {e}", file=sys.stderr)
        return 2
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps({n: {"input": r.input_size, "total": r.total().row(),
                                          "per_sequence": {k: c.row() for k, c in r.per_seq.items()}}
                                      for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
