"""The torch reference tracking loop: runtime/e2e.py slot bookkeeping + the torch tracker head.

The reference is not a second implementation: it is the runtime's own per-frame code with every
network behind `runtime.backends.TorchBackend`. So export parity is a backend swap:
- `tracker_backend(model)`: the torch head behind the Backend protocol, with the export's specs;
- `module_for_onnx(path)`: the torch module an exported file came from (used by
  `vsdmot-edge run --backend torch`, which hands it to `build_pipeline(torch_modules=...)`);
- `torch_pipeline(...)`: a runtime `Pipeline` built from the shipped torch weights (detector,
  student, quality gate + DSWR, tracker) without a bundle; `run_sequence(...)` runs a source
  through it and writes MOTChallenge rows (`vsdmot.runtime.mot.format_result_rows`);
- `track_cached(...)`: e2e / hybrid / ByteTrack on cached detections (the comparison in docs).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from vsdmot._cli import run_main
from vsdmot.models import WEIGHTS
from vsdmot.paths import data_root
from vsdmot.runtime.types import Detections, TensorSpec
from vsdmot.splits import HELD_OUT_FRAMES, PETS_TRAIN_LAST

from .tracker_head import INPUTS, OUTPUTS, TrackerHead

log = logging.getLogger(__name__)



def tracker_specs(cfg) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Input and output specs of tracker.onnx for a TrackerHeadConfig (batch 1, static P and S)."""
    P, S, d, E, D = cfg.proposals, cfg.slots, cfg.d, cfg.embed_dim, cfg.semantic_dim
    shapes_in = [(1, P, 4), (1, P), (1, P, E), (1, P), (1, S, d), (1, S, 4), (1, S, E), (1, S), (1, S), (1, D), (1, 1)]
    shapes_out = [(1, S, P + 1), (1, S), (1, P), (1, S, d), (1, P, d)]
    spec = lambda names, shapes: {n: TensorSpec(n, s, "float32") for n, s in zip(names, shapes)}  # noqa: E731
    return spec(INPUTS, shapes_in), spec(OUTPUTS, shapes_out)


def tracker_backend(model: TrackerHead | None = None, threads: int = 1):
    """The torch tracker head (shipped weights by default) behind the Backend protocol."""
    from vsdmot.runtime.backends import TorchBackend

    from .train_tracker import load_tracker

    model = model if model is not None else load_tracker()[0]
    return TorchBackend(model.eval(), *tracker_specs(model.cfg), threads=threads)


def module_for_onnx(onnx_path: str | os.PathLike):
    """The torch module behind a bundle's ONNX file, by file name: tracker / detector / student."""
    name = Path(onnx_path).stem
    if name.startswith("tracker"):
        from .train_tracker import load_tracker

        return load_tracker()[0]
    if name.startswith("detector"):
        from .detector import load_detector

        return load_detector()[0]
    if name.startswith("student"):
        from .student import load_student

        return load_student()[0]
    raise ValueError(f"torch reference: no torch module for {onnx_path} (expected tracker, detector or student)")


def make_tracker(kind: str, backend=None, cfg=None, fps: float = 30.0):
    """e2e / hybrid over a tracker Backend (the torch head by default), or ByteTrack."""
    if kind == "bytetrack":
        from vsdmot.runtime.bytetrack import ByteTrack

        return ByteTrack(frame_rate=fps)
    from vsdmot.runtime.e2e import E2EConfig, E2ETracker, HybridTracker

    if kind not in ("e2e", "hybrid"):
        raise ValueError(f"tracker: expected e2e, hybrid or bytetrack, got {kind!r}")
    cls = E2ETracker if kind == "e2e" else HybridTracker
    return cls(backend if backend is not None else tracker_backend(), cfg or E2EConfig())


class _ConstantGate:
    """Stand-in quality gate when no quality.json is shipped yet: every frame scores q."""

    def __init__(self, q: float = 1.0):
        self.q = q

    def assess(self, image: np.ndarray) -> float:
        return self.q


def _gate_and_dswr(quality_json: str | os.PathLike | None, tracker_meta: dict):
    """Quality gate and DSWR: quality.json when given or shipped, else DSWR from the tracker's meta."""
    from vsdmot.runtime.dswr import Dswr
    from vsdmot.runtime.quality import QualityGate

    path = Path(quality_json) if quality_json else WEIGHTS / "quality.json"
    if path.is_file():
        params = json.loads(path.read_text())
        gate = QualityGate.from_params(params)
        dswr = Dswr.from_params(params) if "dswr" in params else Dswr.from_params(tracker_meta.get("dswr", {}))
        return gate, dswr
    log.warning("no quality gate parameters at %s: q = 1 on every frame", path)
    return _ConstantGate(), Dswr.from_params(tracker_meta.get("dswr", {}))


def torch_pipeline(tracker: str = "e2e", semantic: str = "auto", quality_json=None, threads: int = 1, fps: float = 30.0):
    """A runtime Pipeline whose networks are the shipped torch modules (no bundle, no ONNX)."""
    from vsdmot.runtime.backends import TorchBackend
    from vsdmot.runtime.config import SemanticsConfig
    from vsdmot.runtime.pipeline import Pipeline
    from vsdmot.runtime.semantics import SemanticPolicy, Student
    from vsdmot.runtime.yolox import YoloxDetector

    from .detector import load_detector
    from .train_tracker import load_tracker

    head, meta = load_tracker()
    gate, dswr = _gate_and_dswr(quality_json, meta)
    det = load_detector()[0]
    s = det.cfg.input_size
    det_backend = TorchBackend(det, {"images": TensorSpec("images", (1, 3, s, s), "float32")},
                               {"output": TensorSpec("output", (1, -1, -1), "float32"),
                                "embed": TensorSpec("embed", (1, -1, -1), "float32")}, threads)
    student = student_backend(threads) if semantic != "never" and tracker != "bytetrack" else None
    policy = SemanticPolicy(SemanticsConfig(policy=semantic if student else "never"), student and Student(student))
    trk = make_tracker(tracker, tracker_backend(head, threads) if tracker != "bytetrack" else None, fps=fps)
    return Pipeline(gate, dswr, policy, YoloxDetector(det_backend, s), trk, tracker, "torch", [det_backend])


def student_backend(threads: int = 1, path: str | os.PathLike | None = None):
    """The student (shipped weights by default) behind the Backend protocol; None if absent."""
    from vsdmot.runtime.backends import TorchBackend

    path = Path(path or WEIGHTS / "student.pt")
    if not path.is_file():
        log.warning("no student weights at %s: semantics off", path)
        return None
    from .student import load_student

    st = load_student(path)[0]
    r = st.cfg.input_size
    return TorchBackend(st, {"image": TensorSpec("image", (1, 3, r, r), "float32")},
                        {"semantic": TensorSpec("semantic", (1, st.cfg.dim), "float32")}, threads)


def run_sequence(source: str | os.PathLike, mot_out: str | os.PathLike, *, tracker: str = "e2e",
                 semantic: str = "auto", max_frames: int | None = None, quality_json=None) -> dict:
    """Run a video / image folder / MOTChallenge sequence through the torch pipeline; write rows."""
    from vsdmot.runtime.mot import atomic_write_text, format_result_rows
    from vsdmot.runtime.pipeline import step
    from vsdmot.runtime.sources import open_file_source

    src = open_file_source(source)
    p = torch_pipeline(tracker, semantic, quality_json, fps=src.fps)
    lines, n = [], 0
    try:
        for frame in src:
            if max_frames is not None and n >= max_frames:
                break
            r = step(frame, p)
            lines.append(format_result_rows(frame.index, r.tracks.track_id, r.tracks.xywh, r.tracks.score))
            n += 1
    finally:
        src.close()
        p.close()
    atomic_write_text(mot_out, "".join(lines))
    return {"frames": n, **p.semantics.counts.as_dict()} if hasattr(p.semantics, "counts") else {"frames": n}


class CachedSemantics:
    """Per-frame q and student vectors from a `noise_model.semantics_sequence` cache, through the
    runtime's own DSWR and SemanticPolicy (auto's hysteresis and reuse included): the tracker sees
    what the pipeline would feed it on those frames."""

    def __init__(self, npz: str | os.PathLike, dswr, policy: str = "auto"):
        from vsdmot.runtime.config import SemanticsConfig
        from vsdmot.runtime.semantics import SemanticPolicy

        d = np.load(npz)
        self.q = dict(zip(d["frame"].tolist(), d["q"].tolist()))
        self.vec = dict(zip(d["frame"].tolist(), d["semantic"]))
        self.dswr, self._f = dswr, None
        self.policy = SemanticPolicy(SemanticsConfig(policy=policy), self._student)
        self.w: list[float] = []  # w of every frame seen

    def _student(self, image) -> np.ndarray:  # the runtime Student's output for the current frame
        return self.vec[self._f].reshape(1, -1)

    def get(self, f: int) -> tuple[np.ndarray | None, float]:
        """(vector or None, w) for frame f."""
        self._f = f
        q = self.q[f]
        w = self.dswr.weight(q)
        self.w.append(w)
        vec, _ = self.policy.get(None, q, w)
        return vec, w

    def skip_share(self) -> float:
        c = self.policy.counts
        return c.skipped / max(c.fresh + c.reused + c.skipped, 1)


def track_cached(npz: str | os.PathLike, tracker, frames: tuple[int, int] | None = None,
                 semantics: CachedSemantics | None = None) -> str:
    """Run a Tracker over cached detections (models/noise_model.py .npz); MOTChallenge rows.
    Without `semantics`, none (w = 0): the comparison isolates association on identical boxes."""
    from vsdmot.runtime.mot import format_result_rows

    d = np.load(npz)
    lo, hi = frames or (int(d["frame"].min(initial=1)), int(d["frame"].max(initial=1)))
    tracker.reset()
    rows = []
    for f in range(lo, hi + 1):
        sel = d["frame"] == f
        n = int(sel.sum())
        dets = Detections(d["xyxy"][sel].reshape(-1, 4), d["score"][sel], feature=d["embed"][sel].reshape(n, -1) if n else None)
        vec, w = semantics.get(f) if semantics is not None else (None, 0.0)
        out = tracker.step(dets, vec, w)
        rows.append(format_result_rows(f, out.track_id, out.xywh, out.score))
    return "".join(rows)


EVAL_SETS = (("PETS09-S2L1", (601, 795), 7.0), ("TUD-Campus", None, 25.0))  # never trained on
VAL_SETS = (("PETS09-S2L1", (541, 600), 7.0),)  # TRAIN side: left out of the real clips by --val-first 541


def compare_trackers(data: str | os.PathLike = str(data_root()), weights: str | os.PathLike | None = None,
                     kinds=("e2e", "hybrid", "bytetrack"), conditions=("clean", "deg"), seed: int = 7,
                     semantic: str = "never", dswr=None, sets=EVAL_SETS) -> list[dict]:
    """HOTA/DetA/AssA/MOTA/IDF1 of each tracker on identical cached detections of the held-out
    frames (PETS09-S2L1 601-795, TUD-Campus), clean and degraded (noise_model.degrade, seeded).
    `semantic` auto / always / never: q from the shipped gate and the shipped student's vectors on
    the same frames, w = dswr(q) (the tracker's learned DSWR by default), the runtime policy.
    `sets=VAL_SETS, seed=0`: the train-side validation (PETS 541-600 of the TRAIN caches)."""
    import tempfile

    from vsdmot.evaluation.metrics import evaluate
    from vsdmot.runtime.dswr import Dswr

    from .noise_model import ShippedSemantics, detect_sequence, project_detector, semantics_sequence
    from .train_tracker import load_tracker

    det = project_detector()
    head, meta = load_tracker(weights or WEIGHTS / "tracker.pt")
    dswr = dswr or Dswr.from_params(meta.get("dswr", {}))
    sem = ShippedSemantics() if semantic != "never" else None
    results = []
    for name, frames, fps in sets:
        seq = Path(data) / name
        train_side = name in HELD_OUT_FRAMES and frames is not None and frames[1] < HELD_OUT_FRAMES[name][0]
        span = (1, PETS_TRAIN_LAST) if train_side else frames  # PETS's train-side windows live in its TRAIN caches
        for cond in conditions:
            npz = detect_sequence(det, seq, span, cond == "deg", seed=seed)
            spath = semantics_sequence(sem, seq, span, cond == "deg", seed=seed) if sem else None
            for kind in kinds:
                cs = CachedSemantics(spath, dswr, semantic) if spath and kind != "bytetrack" else None
                trk = make_tracker(kind, tracker_backend(head) if kind != "bytetrack" else None, fps=fps)
                with tempfile.TemporaryDirectory() as tmp:
                    res = Path(tmp) / "res.txt"
                    res.write_text(track_cached(npz, trk, frames, cs))
                    m = evaluate(seq, res, frames=frames)
                row = {"seq": name, "cond": cond, "tracker": kind, "semantic": semantic if cs else "never",
                       **{k: round(100 * float(m[k]), 1) for k in ("HOTA", "DetA", "AssA", "MOTA", "IDF1")},  # x 100
                       "skip": round(cs.skip_share(), 3) if cs else 1.0,
                       "w_mean": round(float(np.mean(cs.w)), 3) if cs else 0.0}
                log.info("%s", row)
                results.append(row)
    return results


def markdown_table(rows: list[dict]) -> str:
    keys = ("seq", "cond", "tracker", "semantic", "HOTA", "DetA", "AssA", "MOTA", "IDF1", "skip", "w_mean")
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join("| " + " | ".join(str(r[k]) for k in keys) + " |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.models.reference [WEIGHTS] [--semantic never auto always] [--val] [--json F]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.models.reference")
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--semantic", nargs="+", default=["never"], choices=("never", "auto", "always"))
    ap.add_argument("--kinds", nargs="+", default=["e2e", "hybrid", "bytetrack"])
    ap.add_argument("--val", action="store_true", help="train-side validation: PETS 541-600 (TRAIN caches, seed 0)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.set_defaults(func=lambda a: _run(ap, a))
    logging.basicConfig(level=logging.INFO)  # first: run_main's setup then keeps it
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    rows = []
    for pol in a.semantic:
        kinds = a.kinds if pol == "never" else [k for k in a.kinds if k != "bytetrack"]
        rows += compare_trackers(weights=a.weights, kinds=kinds, semantic=pol,
                                 **({"sets": VAL_SETS, "seed": 0} if a.val else {}))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
