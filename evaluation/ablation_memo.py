"""Memoised stages for the ablation: the runtime's own components, each expensive stage run once per frame.

`FrameMemo` holds one frame's values keyed by (stage, component id): the detector's Detections
(per detector file), q (per quality.json) and a student's vector (per student file). The wrappers
stand where the runtime expects a gate, a detector and a student, so `runtime.pipeline.step` and
`SemanticPolicy` run unchanged; the real component computes a value the first time any row asks.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vsdmot.runtime.bundle import file_sha256, load_bundle
from vsdmot.runtime.mot import format_result_rows
from vsdmot.runtime.types import Detections, Frame

from . import bench as B

if TYPE_CHECKING:
    from .ablation import AblationConfig, Row

RUN_FILES = ("detector.onnx", "tracker.onnx", "student.onnx", "quality.json")  # what a pipeline reads


def bundle_identity(bundle) -> dict:
    """The sha256 of each file a pipeline runs, and the manifest's tracker choice: a re-export that
    only edits provenance or reports keeps the cached results, any change to a network does not."""
    from vsdmot.runtime.pipeline import resolve_tracker

    return {"files": {n: bundle.entry(n)["sha256"] for n in RUN_FILES if bundle.has(n)},
            "tracker": resolve_tracker(bundle, "default"), "precision": bundle.precision}


# -- memoised stages ------------------------------------------------------------------------------
STAGE_CODE = ("yolox.py", "quality.py", "semantics.py")  # runtime modules: letterbox, decode, NMS; q; student input


def stage_identity() -> str:
    """sha256 (8 hex) over the runtime code that turns a frame into the memoised values besides the
    network files (the detector's letterbox, decode and NMS, the quality features, the student's
    preprocessing): stored values made by other code are never read back."""
    import hashlib

    import vsdmot.runtime as rt

    here = Path(rt.__file__).parent
    return hashlib.sha256(b"".join((here / m).read_bytes() for m in STAGE_CODE)).hexdigest()[:8]


def memo_name(cond: str, seq_key: str, window: tuple[int, int], threads: int, stages: str = "") -> str:
    """File name of one (sequence, condition)'s stored values under `<out>/memo/<sequence>/`;
    `stages` = stage_identity() (older files carry none)."""
    return f"{cond}-{seq_key}-{window[0]}-{window[1]}-t{threads}" + (f"-c{stages}" if stages else "") + ".pkl"


class FrameMemo:
    """Values computed once per frame, keyed by (stage, component id).

    Within a (sequence, condition) the values are also kept per frame and can be stored on disk
    (`open_pair` / `save`): a later run with a retrained tracker reuses the detector's output and
    the student's vectors (their keys name the component file's sha256, and the file name the
    runtime code that computed them, `stage_identity`, so nothing stale is read).
    `calls` counts real computations per stage."""

    def __init__(self):
        self.index, self.calls = 0, {}
        self.stored: dict[tuple, dict[int, object]] = {}  # (stage, key) -> {frame: value}
        self.path: Path | None = None

    def open_pair(self, path: Path | None) -> None:
        """Start a (sequence, condition): values stored at `path` (a pickle this module wrote) or none."""
        self.path, self.stored = path, {}
        if path is not None and path.is_file():
            with open(path, "rb") as f:
                self.stored = pickle.load(f)

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".partial")
            with open(tmp, "wb") as f:
                pickle.dump(self.stored, f, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(self.path)

    def start(self, index: int) -> None:
        self.index = index

    def once(self, key: tuple, compute: Callable):
        frames = self.stored.setdefault(key, {})
        if self.index not in frames:
            frames[self.index] = compute()
            self.calls[key[0]] = self.calls.get(key[0], 0) + 1
        return frames[self.index]


class MemoGate:
    def __init__(self, memo: FrameMemo, key: str, gate):
        self.memo, self.key, self.gate = memo, key, gate

    def assess(self, image: np.ndarray) -> float:
        return self.memo.once(("q", self.key), lambda: self.gate.assess(image))


class MemoDetector:
    def __init__(self, memo: FrameMemo, key: str, detector):
        self.memo, self.key, self.detector, self.backend = memo, key, detector, detector.backend

    def detect(self, image: np.ndarray) -> Detections:
        d = self.memo.once(("detector", self.key), lambda: self.detector.detect(image))
        feat = None if d.feature is None else d.feature.copy()
        return Detections(d.xyxy.copy(), d.score.copy(), feature=feat)  # each row gets its own arrays


class MemoStudent:
    """Callable like runtime.semantics.Student; the real one runs at most once per frame."""

    def __init__(self, memo: FrameMemo, key: str, student):
        self.memo, self.key, self.student = memo, key, student
        self.backend, self.output_name = student.backend, student.output_name

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.memo.once(("student", self.key), lambda: self.student(image)).copy()


class ConstantDswr:
    """DSWR replaced by one weight for every frame (the static-fusion row)."""

    def __init__(self, w: float):
        self.w = float(w)

    def weight(self, q: float) -> float:
        return self.w


# -- components shared by every pair --------------------------------------------------------------
class Components:
    """Bundles, onnxruntime sessions and students, opened once per ablation and shared by rows."""

    def __init__(self, cfg: AblationConfig):
        self.cfg, self.bundles, self.backends, self.students = cfg, {}, {}, {}

    def bundle(self, path: str | Path):
        key = str(Path(path or self.cfg.bundle).resolve())
        if key not in self.bundles:
            self.bundles[key] = load_bundle(key)
        return self.bundles[key]

    def verified_bundle(self, path: str | Path):
        """The bundle, re-verified on disk: its files must still be the ones the result keys name."""
        from vsdmot.runtime.errors import BundleError

        bundle, now = self.bundle(path), load_bundle(Path(path or self.cfg.bundle))
        if bundle_identity(now) != bundle_identity(bundle):
            raise BundleError(f"bundle {bundle.path} changed during the ablation; run it again "
                              "(finished rows are kept, rows made with the old bundle are recomputed)")
        return bundle

    def backend(self, path: Path):
        from vsdmot.runtime.backends import OnnxRuntimeBackend

        key = str(Path(path).resolve())
        if key not in self.backends:
            self.backends[key] = OnnxRuntimeBackend(key, providers=["CPUExecutionProvider"], threads=self.cfg.threads)
        return self.backends[key]

    def student(self, path: str):
        """A runtime Student from a checkpoint (.pt, exported once to ONNX) or an ONNX file."""
        from vsdmot.runtime.semantics import Student

        if path not in self.students:
            self.students[path] = Student(self.backend(student_onnx(Path(path), self.cfg.out / "students")))
        return self.students[path]

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
        self.backends = {}


def student_onnx(path: Path, out_dir: Path) -> Path:
    """An ONNX student for `path`: itself if .onnx, else the checkpoint exported once (keyed by sha)."""
    if path.suffix == ".onnx":
        return path
    out = out_dir / f"{path.stem}-{file_sha256(path)[:12]}.onnx"
    if not out.is_file():
        from vsdmot.models.student import export_onnx, load_student

        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".partial.onnx")
        export_onnx(load_student(path)[0].eval(), tmp)
        tmp.rename(out)
    return out


# -- one row over one (sequence, condition) ---------------------------------------------------------
class RowRun:
    """A row's tracker state over one (sequence, condition): MOT lines, q, w and semantic states."""

    def __init__(self, row: Row, runner):
        self.row, self.runner = row, runner  # runtime Pipeline, or the peer's DetectThenTrack

    def begin(self) -> None:
        """Fresh tracker state, semantic cache and counts, as a new source would get."""
        from vsdmot.runtime.pipeline import Pipeline
        from vsdmot.runtime.semantics import SemanticPolicy

        self.lines, self.q, self.w = [], [], []
        if isinstance(self.runner, Pipeline):
            self.runner.reset()
            self.runner.semantics = SemanticPolicy(self.runner.semantics.cfg, self.runner.semantics.student)
        else:
            self.runner.tracker.reset()

    def step(self, frame: Frame) -> None:
        from vsdmot.runtime.pipeline import Pipeline, step

        if isinstance(self.runner, Pipeline):
            r = step(frame, self.runner)  # the shipped per-frame function
            tracks = r.tracks
            self.q.append(r.q)
            self.w.append(r.w)
        else:
            tracks = self.runner.track(frame)
        self.lines.append(format_result_rows(frame.index, tracks.track_id, tracks.xywh, tracks.score))

    def semantics(self) -> dict:
        """fresh / reused / skipped counts and shares (the policy's own counts); the peer has none."""
        pol = getattr(self.runner, "semantics", None)
        if pol is None:
            return {}
        c = pol.counts.as_dict()
        n = max(sum(c.values()), 1)
        return {**c, **{f"{k}_share": v / n for k, v in c.items()}}

    def close(self) -> None:
        self.runner.close()


def open_row(row: Row, comps: Components, memo: FrameMemo, fps: float, static_w: float) -> RowRun:
    """The row's tracker for a sequence at `fps`, its expensive stages memoised."""
    if row.tracker == "peer":
        peer = B.make_peer(B.BenchEnv(fps, comps.cfg.threads, 416, comps.cfg.yolox_onnx))
        peer.detector = MemoDetector(memo, "yolox-" + _sha(B.yolox_path(B.BenchEnv(fps, yolox_onnx=comps.cfg.yolox_onnx))), peer.detector)
        return RowRun(row, peer)
    return RowRun(row, row_pipeline(row, comps, memo, fps, static_w))


def row_pipeline(row: Row, comps: Components, memo: FrameMemo, fps: float, static_w: float):
    """The runtime's own `build_pipeline` for the row, then the memo wrappers swapped in."""
    from vsdmot.runtime.config import PipelineConfig, RunConfig, SemanticsConfig, TrackerConfig
    from vsdmot.runtime.pipeline import build_pipeline, check_semantic_width
    from vsdmot.runtime.semantics import SemanticPolicy

    bundle = comps.verified_bundle(row.bundle)
    cfg = RunConfig(pipeline=PipelineConfig(bundle=str(bundle.path), backend="onnxruntime", threads=comps.cfg.threads),
                    semantics=SemanticsConfig(policy=row.policy), tracker=TrackerConfig(kind=row.tracker))
    p = build_pipeline(bundle, cfg, fps)
    sha = lambda name: bundle.entry(name)["sha256"]  # noqa: E731
    p.gate = MemoGate(memo, sha("quality.json"), p.gate)
    p.detector = MemoDetector(memo, sha("detector.onnx"), p.detector)
    student, key = p.semantics.student, (sha("student.onnx") if bundle.has("student.onnx") else "")
    if row.student and student is not None:
        student, key = comps.student(row.student), _sha(row.student)
        check_semantic_width(student, p.tracker)
    if row.static_w:
        p.dswr = ConstantDswr(static_w)
    p.semantics = SemanticPolicy(p.semantics.cfg, student and MemoStudent(memo, key, student))
    return p


_SHA: dict[tuple, str] = {}


def _sha(path: str | Path) -> str:
    """file_sha256, remembered per (path, size, mtime)."""
    st = Path(path).stat()
    k = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if k not in _SHA:
        _SHA[k] = file_sha256(path)
    return _SHA[k]
