"""The per-frame pipeline: built once from a bundle and a config, then `step(frame, p)` per frame.

    frame -> quality gate -> q -> DSWR w -> semantic policy (None | cached | fresh student vector)
          -> detector [-> camera motion] -> Percept                       (perceive: no tracker state)
          -> [tracker.warp(motion)] tracker.step(dets, semantic, w, frame gap) -> FrameResult
                                                                          (track: tracks + per-stage ms)

Everything with state (backends, tracker slots, the semantic cache) lives in `Pipeline`;
`step` holds no state of its own. No threads here: sources, sinks and the run loop (its overlap of
`perceive` with `track`, edge/runner.py) own those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, engine_precision, open_backend
from .config import RunConfig
from .cpu import warn_int8_on_cpu
from .logs import log_once
from .semantics import SemanticPolicy, Student
from .tracking import Tracker, assignment_solver
from .types import Frame, FrameResult, Percept, TensorSpec

if TYPE_CHECKING:
    from .bundle import Bundle

log = logging.getLogger(__name__)

STAGES = ("quality", "semantics", "detector", "tracker")  # FrameResult.latency_ms keys, plus "total" (and "motion")
TRACKER_KINDS = ("e2e", "hybrid", "bytetrack")


@dataclass
class Pipeline:
    gate: Any  # runtime/quality.py QualityGate: assess(image) -> q in [0, 1]
    dswr: Any  # runtime/dswr.py Dswr: weight(q) -> w in [0, 1]
    semantics: SemanticPolicy  # None | cached | fresh student vector, with counts
    detector: Any  # runtime/yolox.py YoloxDetector: detect(image) -> Detections
    tracker: Tracker  # step(dets, semantic, w, gap) -> Detections with track_id; warp(a); reset(keep_ids)
    tracker_kind: str = "e2e"  # which tracker this is (e2e / hybrid / bytetrack)
    backend_kind: str = "onnxruntime"  # what the networks run on ("onnxruntime+tensorrt" when they differ)
    backends: list[Backend] = field(default_factory=list, repr=False)  # closed by close()
    last_index: int = 0  # Frame.index of the previous step (0: none since the last reset)
    camera: Any = None  # runtime/motion.py CameraMotion, None when [tracker] camera_motion = "off"
    fps: float = 30.0  # the source's frame rate: how many frames a gap in timestamps stands for
    last_timestamp: float = 0.0  # Frame.timestamp of the previous step
    last_size: tuple[int, int] | None = None  # (H, W) of the previous step's frame

    def reset(self) -> None:
        """A new scene (another source, or a reconnect after a long gap): forget tracks and cache."""
        self.tracker.reset()
        self.semantics.reset()
        if self.camera is not None:
            self.camera.reset()
        self.last_index, self.last_size = 0, None

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []


def step(frame: Frame, p: Pipeline) -> FrameResult:
    """One frame through the pipeline. Per-stage latency in ms lands in FrameResult.latency_ms."""
    return track(frame, perceive(frame, p), p)


def perceive(frame: Frame, p: Pipeline) -> Percept:
    """The stages that read no tracker state: quality, semantics, detections. Frames must come in
    order (the semantic cache), but may run one frame ahead of `track` (edge.runner's overlap)."""
    t = _Laps()
    q = p.gate.assess(frame.image)  # ~1 ms, numpy / OpenCV
    w = p.dswr.weight(q)
    t.lap("quality")
    sem, state = p.semantics.get(frame.image, q, w)  # (1, D) or None; fresh / reused / skipped
    t.lap("semantics")
    dets = p.detector.detect(frame.image)  # proposals in source pixels (+ appearance)
    t.lap("detector")
    motion = None
    if p.camera is not None:
        motion = p.camera.estimate(frame.image, dets.xyxy)  # ~1 ms when it looks; None: no motion
        t.lap("motion")
    return Percept(float(q), float(w), sem, state, dets, t.ms, motion)


def track(frame: Frame, seen: Percept, p: Pipeline) -> FrameResult:
    """The tracker on one perceived frame: queries += w * proj(semantic) inside the network."""
    t = _Laps()
    if outage(frame, p) | resized(frame, p):  # `|`: each notes this frame
        p.tracker.reset(keep_ids=True)  # the tracks are stale or in other pixels; ids go on in the same outputs
    if seen.motion is not None:
        p.tracker.warp(seen.motion)  # the tracks' boxes and velocities into this frame's pixels
    tracks = p.tracker.step(seen.detections, seen.semantic_vector, seen.w, frame_gap(frame, p))
    t.lap("tracker")
    ms = {**seen.latency_ms, **t.ms}
    ms["total"] = sum(ms.values())
    return FrameResult(frame.index, frame.timestamp, seen.q, seen.w, seen.semantic, tracks, ms)


OUTAGE_FRAMES = 60  # source frames: longer than every tracker's lifetime (ByteTrack 30 frames, the slot trackers 20)


def outage(frame: Frame, p: Pipeline) -> bool:
    """Whether more than OUTAGE_FRAMES frame periods passed since the previous step: a camera or
    stream back after an outage, or a recording that paused. A live source numbers the frames it
    captures, so its index shows dropped frames but not an outage, and the trackers count a miss
    per step: they would match the tracks from before the outage to whoever is in view now."""
    seconds, p.last_timestamp = frame.timestamp - p.last_timestamp, frame.timestamp
    gone = p.last_index > 0 and seconds * p.fps > OUTAGE_FRAMES
    if gone:
        log.info("tracks ended: %.1f s without frames before frame %d (ids go on)", seconds, frame.index)
    return gone


def resized(frame: Frame, p: Pipeline) -> bool:
    """Whether this frame's size differs from the previous step's (an image folder of mixed
    sizes): the tracks' boxes are in the old size's pixels and would be matched to whoever stands
    at those pixels now."""
    size, before = frame.image.shape[:2], p.last_size
    p.last_size = size
    if before is None or before == size:
        return False
    log_once(log.name, logging.WARNING, f"frame size changed from {before[1]}x{before[0]} to {size[1]}x{size[0]} "
             f"(frame {frame.index}): tracks restarted, ids go on; boxes are in each frame's own pixels")
    return True


def frame_gap(frame: Frame, p: Pipeline) -> int:
    """Source frames since the previous step: 1, or more where a live source dropped frames (its
    indices count every captured frame). An index that does not rise (a renumbered source) counts 1."""
    gap = frame.index - p.last_index if 0 < p.last_index < frame.index else 1
    p.last_index = frame.index
    return gap


class _Laps:
    """Milliseconds per stage since the previous lap."""

    def __init__(self):
        self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage], self.last = (now - self.last) * 1e3, now


def build_pipeline(bundle: Bundle, cfg: RunConfig, fps: float = 30.0, torch_modules=None) -> Pipeline:
    """Open every network of `bundle` on the configured backend and build all per-run state.

    `fps` is the source's true frame rate (ByteTrack scales its lost-track buffer by it).
    `torch_modules(onnx_path) -> nn.Module`: with `[pipeline] backend = "torch"`, the module each
    network was exported from (models/reference.py's `module_for_onnx`; runtime never imports it)."""
    from .dswr import Dswr
    from .quality import QualityGate
    from .yolox import YoloxDetector, size_text

    kind = resolve_tracker(bundle, cfg.tracker.kind)
    backends: list[Backend] = []
    opener = _opener(cfg, backends, torch_modules)
    try:
        params = bundle.params("quality.json")
        gate, dswr = QualityGate.from_params(params), Dswr.from_params(params)
        det_backend = opener(bundle, "detector.onnx")
        detector = YoloxDetector(det_backend, detector_input_size(det_backend), cfg.pipeline.score_thr, cfg.pipeline.nms_thr)
        semantics = _semantics(bundle, cfg, kind, opener)
        tracker = make_tracker(kind, bundle, cfg, opener, fps)
        check_semantic_width(semantics.student, tracker)
        warm_up(backends)
    except BaseException:
        for b in backends:
            b.close()
        raise
    log_once(log.name, logging.INFO, f"pipeline: {kind} tracker, {getattr(det_backend, 'kind', '?')} backend, "
             f"detector input {size_text(detector.config.input_size)}, semantics {semantics.cfg.policy}, "
             f"camera motion {cfg.tracker.camera_motion} ({bundle.path})")
    # what `auto` resolved to, per network: "onnxruntime+tensorrt" when one network's engine did not open
    ran_on = "+".join(sorted({getattr(b, "kind", cfg.pipeline.backend) for b in backends})) or cfg.pipeline.backend
    if cfg.pipeline.precision not in ("auto", "fp32") and "tensorrt" not in ran_on:
        log.warning("precision %s applies to TensorRT engines only; the %s backend runs the bundle's ONNX "
                    "networks as exported (INT8 only from a vsdmot-export --int8 bundle)", cfg.pipeline.precision, ran_on)
    camera = None
    if cfg.tracker.camera_motion != "off":
        from .motion import CameraMotion

        camera = CameraMotion(mode=cfg.tracker.camera_motion)
    return Pipeline(gate, dswr, semantics, detector, tracker, kind, ran_on, backends, camera=camera, fps=fps)


def warm_up(backends: Sequence[Backend]) -> float:
    """Pay the one-time costs before the first frame; returns the ms it took.

    Each network runs twice on zeros (ONNX Runtime settles over its first runs: the demo's first
    frame took 16-18 ms after one run, 13.5-14.4 after two, ~12 later; TensorRT's CUDA kernels
    load lazily on theirs), and the assignment solver is imported
    (tracking.assignment_solver, ~0.3 s). Without this, a camera's first frames stall and a live
    source drops them. The outputs are discarded: no tracker or semantic state is touched."""
    t0 = time.perf_counter()
    for b in backends:
        for _ in range(2):
            b.infer(zero_feed(b.inputs))
    assignment_solver()
    ms = (time.perf_counter() - t0) * 1e3
    log.debug("warm-up: %d networks and the assignment solver in %.0f ms", len(backends), ms)
    return ms


def zero_feed(specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """Zeros of each input's shape (a dynamic axis: 1) and dtype."""
    return {name: np.zeros([max(d, 1) for d in s.shape], s.dtype) for name, s in specs.items()}


def _opener(cfg: RunConfig, backends: list[Backend], torch_modules=None):
    pc = cfg.pipeline

    def open_one(bundle: Bundle, name: str) -> Backend:
        # per network: an --int8 bundle whose gate put the detector back to FP32 must not build that
        # detector's engine in INT8 (no Q/DQ, no ranges) under --precision auto
        file_precision = bundle.entry(name).get("precision") or bundle.precision
        precision = engine_precision(file_precision, pc.precision)
        module = torch_modules(bundle.file(name)) if pc.backend == "torch" and torch_modules else None
        backend = open_backend(pc.backend, bundle.file(name), threads=pc.threads, precision=precision,
                               cache_dir=pc.engine_cache or None, spin=pc.spin, module=module)
        backends.append(backend)
        if getattr(backend, "kind", "") == "onnxruntime" and file_precision == "int8":
            warn_int8_on_cpu()
        if getattr(backend, "kind", "") == "tensorrt" and precision == "int8" and file_precision != "int8":
            log.warning("--precision int8: %s is %s, with no INT8 ranges for TensorRT (no Q/DQ); its engine runs "
                        "in higher precision. An INT8 bundle comes from vsdmot-export --int8", name, file_precision)
        return backend

    return open_one


def detector_input_size(backend: Backend, stride: int = 32) -> tuple[int, int]:
    """(H, W) of the detector's static (1, 3, H, W) input, each a multiple of the head's largest
    stride (the anchor grid must tile it); ValueError for anything else."""
    (spec,) = list(backend.inputs.values())[:1]
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[:2] != (1, 3) or min(shape[2:]) <= 0 or shape[2] % stride or shape[3] % stride:
        raise ValueError(f"detector input '{spec.name}': expected a static (1, 3, H, W) with H and W multiples "
                         f"of {stride}, got {shape}")
    return int(shape[2]), int(shape[3])


def _semantics(bundle: Bundle, cfg: RunConfig, kind: str, opener) -> SemanticPolicy:
    sc = cfg.semantics
    if kind == "bytetrack" and sc.policy != "never":
        log.info("semantics: ByteTrack takes no semantics; policy %r -> 'never'", sc.policy)
        sc = replace(sc, policy="never")
    if sc.policy == "auto" and not bundle.has("student.onnx"):
        log.warning("semantics: bundle %s has no student.onnx; policy 'auto' -> 'never'", bundle.path)
        sc = replace(sc, policy="never")
    student = Student(opener(bundle, "student.onnx")) if sc.policy != "never" else None
    return SemanticPolicy(sc, student)


def check_semantic_width(student: Student | None, tracker: Any) -> None:
    """The student's (1, D) output must be the width the tracker network fuses."""
    want = getattr(tracker, "D", None)
    if student is None or want is None:
        return
    spec = student.backend.outputs[student.output_name]
    if spec.shape[-1] not in (-1, want):
        raise ValueError(f"student.onnx output '{spec.name}' is {spec.shape}, but tracker.onnx input "
                         f"'semantic' expects (1, {want}): the bundle's networks do not belong together")


def resolve_tracker(bundle: Bundle, kind: str) -> str:
    """`default` -> the bundle's recommended tracker (manifest "tracker"), else e2e."""
    if kind != "default":
        return kind
    choice = bundle.manifest.get("tracker", "e2e")
    choice = choice.get("default", "e2e") if isinstance(choice, dict) else choice
    if choice not in TRACKER_KINDS:
        raise ValueError(f"bundle {bundle.path}: manifest tracker {choice!r} is not one of {list(TRACKER_KINDS)}")
    return choice


def make_tracker(kind: str, bundle: Bundle, cfg: RunConfig, opener, fps: float = 30.0):
    """The tracker for `kind`; e2e and hybrid run tracker.onnx, ByteTrack needs no network."""
    unread = cfg.tracker.unread(kind)
    if unread:
        log.warning("[tracker] %s: not read by the %s tracker (%s)", ", ".join(unread), kind,
                    "its thresholds are [tracker.bytetrack]'s" if kind == "bytetrack" else
                    "it starts tracks at [tracker.slots] new_score and matches first above high_score")
    if kind == "bytetrack":
        from .bytetrack import ByteTrack

        return ByteTrack(cfg.tracker.bytetrack, frame_rate=fps)
    from .e2e import E2ETracker, HybridTracker

    cls = E2ETracker if kind == "e2e" else HybridTracker
    return cls(opener(bundle, "tracker.onnx"), cfg.tracker.slot_config())
