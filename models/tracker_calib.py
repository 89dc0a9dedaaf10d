"""Score calibration of the tracker head on TRAIN frames, so MOTRv2's fixed thresholds fit it.

The runtime keeps MOTRv2's thresholds (birth / keep 0.5, output 0.6). Instead of moving them, we
shift the biases of the head's `keep` and `birth` logits (a per-head logit offset, folded into the
weights: the exported graph is unchanged) and pick the pair of offsets with the best mean HOTA of
the end-to-end tracker on PETS09-S2L1 frames 1-600, clean and degraded detections. Evaluation
frames (PETS 601-795, TUD-Campus) are never used here.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import torch

from vsdmot._cli import run_main
from vsdmot.paths import data_root
from vsdmot.splits import PETS_TRAIN_LAST

from .tracker_head import TrackerHead

log = logging.getLogger(__name__)

OFFSETS = ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 2.0), (1.0, 2.0))  # (keep, birth) logit offsets tried


def shifted(head: TrackerHead, keep: float, birth: float) -> TrackerHead:
    """A copy of `head` whose keep / birth logits are raised by the given offsets."""
    h = copy.deepcopy(head)
    with torch.no_grad():
        h.keep.bias += keep
        h.birth.bias += birth
    return h


def train_runs(data: str | Path = str(data_root()), frames: tuple[int, int] = (1, PETS_TRAIN_LAST),
               semantic: bool = False):
    """(cached detections, sequence folder, frames, fps, semantics cache or None) for
    PETS09-S2L1 `frames` (within 1-600), clean and degraded."""
    from .noise_model import ShippedSemantics, detect_sequence, project_detector, semantics_sequence

    if not 1 <= frames[0] <= frames[1] <= PETS_TRAIN_LAST:
        raise ValueError(f"tracker_calib: expected TRAIN frames within 1-{PETS_TRAIN_LAST}, got {frames}")
    det = project_detector()
    sem = ShippedSemantics() if semantic else None
    seq = Path(data) / "PETS09-S2L1"
    train = (1, PETS_TRAIN_LAST)  # the TRAIN caches: every window of them is cut from the same detections
    return [(detect_sequence(det, seq, train, deg), seq, frames, 7.0,
             semantics_sequence(sem, seq, train, deg) if sem else None) for deg in (False, True)]


def score(head: TrackerHead, runs, kind: str = "e2e", policy: str = "auto", dswr=None) -> float:
    """Mean HOTA of `kind` over the runs, the head on onnxruntime (fast) via a temporary export.
    Runs with a semantics cache feed q, w = dswr(q) and the student's vectors under `policy`."""
    from vsdmot.evaluation.metrics import evaluate
    from vsdmot.runtime.backends import OnnxRuntimeBackend

    from .reference import CachedSemantics, make_tracker, track_cached
    from .tracker_head import export_onnx

    hotas = []
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(head, Path(tmp) / "t.onnx")
        backend = OnnxRuntimeBackend(Path(tmp) / "t.onnx", threads=1)
        for npz, seq, frames, fps, sem in runs:
            cs = CachedSemantics(sem, dswr, policy) if sem is not None else None
            res = Path(tmp) / "res.txt"
            res.write_text(track_cached(npz, make_tracker(kind, backend, fps=fps), frames, cs))
            hotas.append(float(evaluate(seq, res, frames=frames)["HOTA"]))
    return sum(hotas) / len(hotas)


def calibrate(head: TrackerHead, runs, offsets=OFFSETS, **kw) -> tuple[TrackerHead, dict]:
    """Grid over (keep, birth) logit offsets; returns the best shifted head and the table."""
    table = {}
    for k, b in offsets:
        table[(k, b)] = score(shifted(head, k, b), runs, **kw)
        log.info("keep %+.1f birth %+.1f: HOTA %.3f", k, b, table[(k, b)])
    best = max(table, key=table.get)
    return shifted(head, *best), {"keep_offset": best[0], "birth_offset": best[1], "train_hota": table[best],
                                  "grid": {f"{k:+.1f},{b:+.1f}": round(v, 4) for (k, b), v in table.items()}}


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.models.tracker_calib IN.pt OUT.pt [--frames 541 600] [--semantic auto]:
    calibrate and write shipped-layout weights."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.models.tracker_calib")
    ap.add_argument("weights")
    ap.add_argument("out")
    ap.add_argument("--frames", nargs=2, type=int, default=(1, PETS_TRAIN_LAST), help="PETS09-S2L1 TRAIN frames (within 1-600)")
    ap.add_argument("--semantic", default="never", choices=("never", "auto", "always"),
                    help="feed the shipped gate's q and student's vectors (w from the head's learned DSWR)")
    ap.set_defaults(func=lambda a: _run(ap, a))
    logging.basicConfig(level=logging.INFO)  # first: run_main's setup then keeps it
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    from vsdmot.runtime.dswr import Dswr

    from .checkpoint import save_checkpoint
    from .train_tracker import load_tracker

    head, meta = load_tracker(a.weights)
    runs = train_runs(frames=tuple(a.frames), semantic=a.semantic != "never")
    best, info = calibrate(head, runs, policy=a.semantic, dswr=Dswr.from_params(meta.get("dswr", {})))
    info.update(frames=list(a.frames), semantic=a.semantic)
    save_checkpoint(a.out, best, best.cfg, meta={**meta, "calibration": info})
    log.info("calibrated: %s", {k: v for k, v in info.items() if k != "grid"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
