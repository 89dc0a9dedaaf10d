"""Benchmark: trackers x sequences x degradation conditions -> TrackEval scores and tracking FPS.

A tracker is registered by name with a factory; the factory gets a `BenchEnv` (frame rate of the
sequence, threads, input size, detector path) and returns a `FrameTracker` for one sequence:
`track(frame) -> Detections with track_id`. `peer` (YOLOX-nano on onnxruntime + ByteTrack) is
registered here; the project's own trackers register themselves the same way.

Degraded sequences are written once by `vsdmot.calibration.sequence.write_degraded_sequence` and
cached under `cache_dir/<sequence>/<condition>-seed<N>/`, stamped with a key (source files,
condition, seed, degradation code) so a stale cache is rebuilt, never silently reused.

FPS counts only the time inside `track(frame)` (detector + tracker, including letterbox and
decode of the network output); reading and decoding the video is excluded.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from vsdmot.paths import yolox_nano_onnx
from vsdmot.runtime.errors import VsdmotError
from vsdmot.runtime.mot import atomic_write_text, format_result_rows, read_seqinfo
from vsdmot.runtime.sources import open_sequence
from vsdmot.runtime.types import Detections, Frame

from .metrics import evaluate, parse_window

log = logging.getLogger(__name__)

DEFAULT_YOLOX = yolox_nano_onnx()
TABLE_KEYS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")


@dataclass(slots=True, frozen=True)
class BenchEnv:
    """What a tracker factory may need to build a tracker for one sequence."""

    frame_rate: float  # true fps of the sequence (seqinfo.ini)
    threads: int = 1  # intra-op threads for inference backends
    input_size: int = 416  # detector letterbox side, px
    yolox_onnx: Path | None = None  # the peer's detector; None = $VSDMOT_YOLOX_ONNX or ../shared/models


class FrameTracker(Protocol):
    def track(self, frame: Frame) -> Detections:
        """One frame -> output tracks with track_id set, in source pixels."""
        ...

    def close(self) -> None: ...


TrackerFactory = Callable[[BenchEnv], FrameTracker]
_REGISTRY: dict[str, tuple[TrackerFactory, str]] = {}


def register_tracker(name: str, factory: TrackerFactory, description: str = "") -> None:
    """Make `name` available to `vsdmot-bench --tracker`. Re-registering replaces the factory."""
    _REGISTRY[name] = (factory, description)


def available_trackers() -> dict[str, str]:
    """name -> one-line description."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def make_tracker(name: str, env: BenchEnv) -> FrameTracker:
    if name not in _REGISTRY:
        raise ValueError(f"tracker: expected one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name][0](env)


# -- the peer: YOLOX-nano + ByteTrack ------------------------------------------------------------
class DetectThenTrack:
    """Any detector (`detect(image) -> Detections`) followed by any runtime Tracker."""

    def __init__(self, detector, tracker):
        self.detector, self.tracker = detector, tracker

    def track(self, frame: Frame) -> Detections:
        return self.tracker.step(self.detector.detect(frame.image))

    def close(self) -> None:
        self.detector.backend.close()


def yolox_path(env: BenchEnv) -> Path:
    path = Path(env.yolox_onnx or os.environ.get("VSDMOT_YOLOX_ONNX") or DEFAULT_YOLOX)
    if not path.is_file():
        raise ValueError(f"peer detector: expected the YOLOX ONNX at {path} (set --detector or $VSDMOT_YOLOX_ONNX)")
    return path


def make_peer(env: BenchEnv) -> DetectThenTrack:
    from vsdmot.runtime.backends import OnnxRuntimeBackend
    from vsdmot.runtime.bytetrack import ByteTrack
    from vsdmot.runtime.yolox import YoloxDetector

    backend = OnnxRuntimeBackend(yolox_path(env), providers=["CPUExecutionProvider"], threads=env.threads)
    return DetectThenTrack(YoloxDetector(backend, input_size=env.input_size), ByteTrack(frame_rate=env.frame_rate))


register_tracker("peer", make_peer, "YOLOX-nano (onnxruntime, FP32) + ByteTrack")


# -- conditions and the degraded-sequence cache ---------------------------------------------------
@dataclass(slots=True, frozen=True)
class Condition:
    """One way to present a sequence: clean, a preset at a severity, or a time-varying schedule."""

    preset: str | None = None
    severity: int | None = None
    schedule: str | None = None

    @property
    def name(self) -> str:
        if self.schedule:
            return f"schedule-{self.schedule}"
        return f"{self.preset}-s{self.severity}" if self.preset else "clean"


def conditions(presets: Iterable[str], severity: int, schedules: Iterable[str], clean: bool = True) -> list[Condition]:
    out = [Condition()] if clean else []
    out += [Condition(preset=p, severity=severity) for p in presets]
    return out + [Condition(schedule=s) for s in schedules]


def known_presets() -> list[str]:
    try:
        from vsdmot.calibration.degrade import PRESETS  # noqa: PLC0415  (lazy: calibration is optional here)
    except ImportError as e:
        raise VsdmotError(f"degradation presets need vsdmot.calibration.degrade, which does not import: {e}") from None
    return list(PRESETS)


def known_schedules() -> list[str]:
    try:
        from vsdmot.calibration.schedule import SCHEDULES  # noqa: PLC0415
    except ImportError as e:
        raise VsdmotError(f"schedules need vsdmot.calibration.schedule, which does not import: {e}") from None
    return list(SCHEDULES)


def prepare_sequence(src: Path, cond: Condition, cache_dir: Path, seed: int = 0,
                     writer: Callable | None = None, progress: bool = True,
                     frames: tuple[int, int] | None = None) -> Path:
    """The sequence folder to run on: `src` when clean, else a cached degraded copy (built if missing or stale).

    `frames` (first, last): a copy of that window only, the same images as the whole copy's (the
    gate scores PETS09-S2L1 601-795: 195 frames written, not 795).
    """
    if cond == Condition():
        return src
    from vsdmot.runtime.locks import waiting_lock

    info = read_seqinfo(src)
    if frames is not None and frames[0] <= 1 and frames[1] >= info.length:
        frames = None  # the whole sequence: one copy, shared with runs that ask for no window
    key = _cache_key(src, cond, seed, frames)
    span = f"-f{frames[0]}-{frames[1]}" if frames else ""
    out = Path(cache_dir) / info.name / f"{cond.name}-seed{seed}{span}"
    stamp = out / ".bench-cache.json"
    # One writer per copy: two exports gating at once both wrote NAME.partial and one rename failed
    # (ENOTEMPTY), leaving ~300 MB behind. The second now waits and finds the first one's copy.
    with waiting_lock(out.with_name(out.name + ".lock"), f"writing the degraded copy {out.name}"):
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            log.info("cache hit %s", out)
            return out
        shutil.rmtree(out, ignore_errors=True)
        name = glob.escape(out.name)  # killed writers' folders (the lock is ours), and the temp folders
        for stale in [*out.parent.glob(f"{name}.partial*"), *out.parent.glob(f".{name}.partial*.tmp-*")]:  # inside
            shutil.rmtree(stale, ignore_errors=True)  # those (write_degraded_sequence's, 139 MB each)
        tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
        try:
            window = {"frames": tuple(frames)} if frames else {}  # a custom writer need not take it
            (writer or _default_writer())(src, tmp, preset=cond.preset, severity=cond.severity, schedule=cond.schedule,
                                          seed=seed, progress=progress, **window)
            (tmp / ".bench-cache.json").write_text(json.dumps({"key": key, "condition": asdict(cond), "seed": seed}))
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _default_writer() -> Callable:
    from vsdmot.calibration.sequence import write_degraded_sequence  # noqa: PLC0415

    return write_degraded_sequence


def _cache_key(src: Path, cond: Condition, seed: int, frames: tuple[int, int] | None = None) -> str:
    """Hash of the source files (size, mtime), the condition, the seed, the window and the degradation modules."""
    h = hashlib.sha256(json.dumps([asdict(cond), seed] + ([list(frames)] if frames else [])).encode())
    for p in sorted(q for q in Path(src).rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(src)}:{st.st_size}:{int(st.st_mtime)}".encode())
    for p in _degradation_sources():
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


_DEGRADATION_MODULES = ("degrade", "schedule", "sequence", "codec", "realesrgan")  # what the writer runs


def _degradation_sources() -> list[Path]:
    from vsdmot.calibration import source_files  # noqa: PLC0415

    return source_files(*_DEGRADATION_MODULES)


# -- running -------------------------------------------------------------------------------------
@dataclass(slots=True)
class RunResult:
    tracker: str
    sequence: str
    condition: str
    metrics: dict  # evaluate()'s dict
    fps: float  # frames / seconds inside track(), decode excluded
    ms_p50: float  # per-frame track() latency, ms
    ms_p90: float
    frames: int
    results_file: str
    extra: dict = field(default_factory=dict)


def run_one(name: str, seq_dir: Path, env: BenchEnv, out_file: Path,
            frames: tuple[int, int] | None = None, progress: bool = True) -> tuple[float, list[float]]:
    """Track one sequence, write MOTChallenge results. Returns (seconds in track(), per-frame ms)."""
    from tqdm import tqdm

    seq = open_sequence(seq_dir)
    first, last = parse_window(frames, seq.info.length)
    tracker = make_tracker(name, env)
    source, lines, times = seq.frames(), [], []
    try:
        bar = tqdm(total=last - first + 1, desc=f"{name} {seq_dir.name}", unit="f", leave=False, disable=not progress)
        for frame in source:
            if frame.index < first:
                continue
            if frame.index > last:
                break
            t0 = time.perf_counter()
            out = tracker.track(frame)
            times.append(time.perf_counter() - t0)
            lines.append(format_result_rows(frame.index, out.track_id, out.xywh, out.score))
            bar.update()
        bar.close()
    finally:
        source.close()
        tracker.close()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("".join(lines))
    return float(np.sum(times)), [1000 * t for t in times]


def bench(seqs: Sequence[Path], conds: Sequence[Condition], trackers: Sequence[str], out_dir: Path, *,
          cache_dir: Path, threads: int = 1, input_size: int = 416, frames: tuple[int, int] | None = None,
          seed: int = 0, yolox_onnx: Path | None = None, progress: bool = True, jobs: int = 1,
          on_result: Callable[[list[RunResult]], None] | None = None) -> list[RunResult]:
    """Every tracker on every sequence under every condition; results under out_dir/results/.

    `jobs` > 1 runs (sequence, condition) pairs in that many processes (FPS then shares the CPU).
    `on_result(results so far)` runs after each pair (the CLI saves partial JSON with it).
    """
    from tqdm import tqdm

    for name in trackers:
        if name not in _REGISTRY:
            raise ValueError(f"tracker: expected one of {sorted(_REGISTRY)}, got {name!r}")
    opts = dict(out_dir=out_dir, cache_dir=cache_dir, threads=threads, input_size=input_size, frames=frames,
                seed=seed, yolox_onnx=yolox_onnx, progress=progress and jobs == 1)
    if any(c != Condition() for c in conds):
        _default_writer()  # import the degradation library once, before any fork: one version per run
    for s in seqs:
        parse_window(frames, read_seqinfo(s).length)  # bad --frames fails before any work
    pairs = [(Path(s), c) for s in seqs for c in conds]
    done: dict[int, list[RunResult]] = {}
    with tqdm(total=len(pairs) * len(trackers), desc="bench", unit="run", disable=not progress) as bar:
        for i, runs in _map_pairs(pairs, trackers, opts, jobs):
            done[i] = runs
            bar.update(len(runs))
            if on_result is not None:
                on_result([r for k in sorted(done) for r in done[k]])
    return [r for k in sorted(done) for r in done[k]]


def _map_pairs(pairs: list, trackers: Sequence[str], opts: dict, jobs: int):
    """Yield (pair index, runs) as pairs finish; in this process or in a pool of `jobs`."""
    if jobs <= 1:
        for i, (src, cond) in enumerate(pairs):
            yield i, run_pair(src, cond, trackers, **opts)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    # fork: children inherit the tracker registry, including trackers registered at run time
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as pool:
        futures = {pool.submit(run_pair, src, cond, list(trackers), **opts): i for i, (src, cond) in enumerate(pairs)}
        for fut in cf.as_completed(futures):
            yield futures[fut], fut.result()


def run_pair(src: Path, cond: Condition, trackers: Sequence[str], *, out_dir: Path, cache_dir: Path, threads: int,
             input_size: int, frames: tuple[int, int] | None, seed: int, yolox_onnx: Path | None,
             progress: bool) -> list[RunResult]:
    """Prepare one (sequence, condition) and run every tracker on it."""
    seq_dir = prepare_sequence(src, cond, cache_dir, seed, progress=progress, frames=frames)
    name_ = read_seqinfo(src).name  # the source's name: a degraded copy's carries a suffix
    env = BenchEnv(read_seqinfo(seq_dir).frame_rate, threads, input_size, yolox_onnx)
    runs = []
    for name in trackers:
        res_file = out_dir / "results" / name / cond.name / f"{name_}.txt"
        seconds, ms = run_one(name, seq_dir, env, res_file, frames, progress)
        metrics = evaluate(seq_dir, res_file, frames=frames)
        runs.append(RunResult(name, name_, cond.name, metrics, len(ms) / max(seconds, 1e-9),
                              float(np.percentile(ms, 50)), float(np.percentile(ms, 90)), len(ms), str(res_file)))
    return runs


def format_table(results: Sequence[RunResult]) -> str:
    """One table: tracker, sequence, condition, HOTA DetA AssA MOTA IDF1 (percent), IDSW, FPS."""
    head = ["tracker", "sequence", "condition", *TABLE_KEYS, "FPS"]
    rows = [[r.tracker, r.sequence, r.condition,
             *(f"{100 * r.metrics[k]:.1f}" if isinstance(r.metrics[k], float) else str(r.metrics[k]) for k in TABLE_KEYS),
             f"{r.fps:.1f}"] for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def write_json(results: Sequence[RunResult], path: Path, meta: dict) -> None:
    payload = {"meta": meta, "runs": [asdict(r) for r in results]}
    atomic_write_text(path, json.dumps(payload, indent=2))  # rewritten after every pair: never half a file
