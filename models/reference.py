"""The torch reference tracking loop: runtime/e2e.py slot bookkeeping + the torch tracker head.

The reference is not a second implementation: it is the runtime's own per-frame code with every
network behind `runtime.backends.TorchBackend`. So export parity is a backend swap:
- `tracker_backend(model)`: the torch head behind the Backend protocol, with the export's specs;
- `module_for_onnx(path)`: the torch module an exported file came from (used by
  `open_backend("torch", ...)`, i.e. `vsdmot-edge run --backend torch`);
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

from vsdmot.runtime.types import Detections, TensorSpec

from .tracker_head import INPUTS, OUTPUTS, TrackerHead

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parent / "weights"


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
    student = _student_backend(threads) if semantic != "never" and tracker != "bytetrack" else None
    policy = SemanticPolicy(SemanticsConfig(policy=semantic if student else "never"), student and Student(student))
    trk = make_tracker(tracker, tracker_backend(head, threads) if tracker != "bytetrack" else None, fps=fps)
    return Pipeline(gate, dswr, policy, YoloxDetector(det_backend, s), trk, tracker, "torch", [det_backend])


def _student_backend(threads: int):
    from vsdmot.runtime.backends import TorchBackend

    if not (WEIGHTS / "student.pt").is_file():
        log.warning("no shipped student weights: semantics off")
        return None
    from .student import load_student

    st = load_student()[0]
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


def track_cached(npz: str | os.PathLike, tracker, frames: tuple[int, int] | None = None) -> str:
    """Run a Tracker over cached detections (models/noise_model.py .npz); MOTChallenge rows.
    Semantics: none (w = 0) - the comparison isolates association on identical boxes."""
    from vsdmot.runtime.mot import format_result_rows

    d = np.load(npz)
    lo, hi = frames or (int(d["frame"].min(initial=1)), int(d["frame"].max(initial=1)))
    tracker.reset()
    rows = []
    for f in range(lo, hi + 1):
        sel = d["frame"] == f
        n = int(sel.sum())
        dets = Detections(d["xyxy"][sel].reshape(-1, 4), d["score"][sel], feature=d["embed"][sel].reshape(n, -1) if n else None)
        out = tracker.step(dets, None, 0.0)
        rows.append(format_result_rows(f, out.track_id, out.xywh, out.score))
    return "".join(rows)


EVAL_SETS = (("PETS09-S2L1", (601, 795), 7.0), ("TUD-Campus", None, 25.0))  # never trained on


def compare_trackers(data: str | os.PathLike = "../shared/data", weights: str | os.PathLike | None = None,
                     kinds=("e2e", "hybrid", "bytetrack"), conditions=("clean", "deg"), seed: int = 7) -> list[dict]:
    """HOTA/DetA/AssA/MOTA/IDF1 of each tracker on identical cached detections of the held-out
    frames (PETS09-S2L1 601-795, TUD-Campus), clean and degraded (noise_model.degrade, seeded)."""
    import tempfile

    from vsdmot.evaluation.metrics import evaluate

    from .noise_model import _sha, detect_sequence, project_detector
    from .train_tracker import load_tracker

    det = project_detector()
    det.tag = f"det{_sha(det.backend.path)}"
    head = load_tracker(weights or WEIGHTS / "tracker.pt")[0]
    results = []
    for name, frames, fps in EVAL_SETS:
        seq = Path(data) / name
        for cond in conditions:
            npz = detect_sequence(det, seq, frames, cond == "deg", seed=seed)
            for kind in kinds:
                trk = make_tracker(kind, tracker_backend(head) if kind != "bytetrack" else None, fps=fps)
                with tempfile.TemporaryDirectory() as tmp:
                    res = Path(tmp) / "res.txt"
                    res.write_text(track_cached(npz, trk, frames))
                    m = evaluate(seq, res, frames=frames)
                row = {"seq": name, "cond": cond, "tracker": kind, **{k: round(float(m[k]), 2) for k in ("HOTA", "DetA", "AssA", "MOTA", "IDF1")}}
                log.info("%s", row)
                results.append(row)
    return results


def markdown_table(rows: list[dict]) -> str:
    keys = ("seq", "cond", "tracker", "HOTA", "DetA", "AssA", "MOTA", "IDF1")
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join("| " + " | ".join(str(r[k]) for k in keys) + " |\n" for r in rows)


if __name__ == "__main__":  # python -m vsdmot.models.reference [WEIGHTS]: the held-out comparison
    import sys

    logging.basicConfig(level=logging.INFO)
    print(markdown_table(compare_trackers(weights=sys.argv[1] if len(sys.argv) > 1 else None)))
