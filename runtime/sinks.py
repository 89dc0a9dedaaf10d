"""Output sinks: MOTChallenge text, JSON lines, annotated video and the run statistics JSON.

Every sink has `write(result: FrameResult, image: np.ndarray | None = None)` and `close()`, and
is a context manager. Only `VideoSink` needs the image; the others ignore it.

Durability (a device runs for weeks and may be killed or lose power at any time):
- MOT and JSONL sinks write each frame's text with one `os.write` on an unbuffered descriptor,
  so a SIGKILL loses at most the frame in flight; they `fsync` every `fsync_every_s` seconds
  (cheap) and at close, which bounds what a power cut can lose.
- An existing non-empty file is moved aside (`name.<mtime UTC>`, newest 5 kept), never truncated:
  a service restarted by its watchdog must not wipe what it wrote for weeks.
- A failed write (a full disk, ENOSPC) truncates the file back to the last complete frame and
  raises `SinkError` naming the file: what was already written stays intact and parseable.
- The stats file is rewritten periodically and at close through temp file + fsync + rename
  (`atomic_write_text`), so a reader never sees a half-written JSON.
- The video sink cannot promise this (OpenCV's writer buffers and reports no errors); an `.avi`
  (MJPG) stays readable after a kill, an `.mp4` does not (its index is written at close).
  It encodes on its own thread (the only sink with one) so drawing overlaps the pipeline.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .errors import VsdmotError
from .mot import atomic_write_text, format_result_rows
from .types import FrameResult

log = logging.getLogger(__name__)


class SinkError(VsdmotError):
    """An output could not be written (full disk, read-only folder, unsupported container)."""


class Sink(Protocol):
    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None: ...

    def close(self) -> None: ...


class _SinkBase:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    return e.strerror or str(e)


def rotate_previous(path: Path, keep: int) -> Path | None:
    """Move a non-empty `path` aside to `path.YYYYmmddTHHMMSSZ` (its mtime, UTC) so a restart
    (systemd after a watchdog kill) never truncates what an earlier run wrote; keep the newest
    `keep` such files. keep=0 just replaces the file. Returns where the old file went."""
    if keep <= 0 or not path.is_file() or path.stat().st_size == 0:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime))
    target, n = path.with_name(f"{path.name}.{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{stamp}-{n}"), n + 1
    os.replace(path, target)
    log.info("kept the previous %s as %s", path, target.name)
    for old in sorted(path.parent.glob(f"{glob.escape(path.name)}.2*"))[:-keep]:
        old.unlink(missing_ok=True)
    return target


class _DurableAppender(_SinkBase):
    """A text file written frame by frame with one write per frame and periodic fsync."""

    kind = "output"

    def __init__(self, path: str | os.PathLike, fsync_every_s: float = 1.0, keep_previous: int = 5):
        self.path = Path(path)
        self.fsync_every_s = fsync_every_s  # seconds between fsyncs; 0 = after every frame
        self.frames = 0  # frames whose text is completely written
        self._committed = 0  # file size in bytes after the last complete frame
        self._last_sync = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rotate_previous(self.path, keep_previous)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            raise SinkError(f"{self.kind}: cannot create {self.path}: {_describe(e)}") from e

    def _append(self, text: str) -> None:
        if self._fd is None:
            raise ValueError(f"{self.kind}: {self.path} is closed")
        data = text.encode()
        try:
            view = memoryview(data)
            while view:  # a short write (disk nearly full) is retried, then raises ENOSPC
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._rollback()
            raise SinkError(
                f"{self.kind}: cannot write {self.path}: {_describe(e)}; "
                f"the {self.frames} frames already written are intact"
            ) from e
        self._committed += len(data)
        self.frames += 1
        if time.monotonic() - self._last_sync >= self.fsync_every_s:
            self._sync()

    def _rollback(self) -> None:
        """Cut a partial frame off the end so the file ends on a complete line."""
        try:
            os.ftruncate(self._fd, self._committed)
            os.lseek(self._fd, self._committed, os.SEEK_SET)
        except OSError:
            log.warning("%s: could not truncate %s back to %d bytes", self.kind, self.path, self._committed)

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise SinkError(f"{self.kind}: cannot fsync {self.path}: {_describe(e)}") from e
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self._sync()
        finally:
            os.close(self._fd)
            self._fd = None


class MotSink(_DurableAppender):
    """MOTChallenge results: `frame,id,x,y,w,h,conf,-1,-1,-1`, frames from 1, source pixels."""

    kind = "MOT sink"

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        t = result.tracks
        if t.track_id is None:
            raise ValueError(f"MOT sink: frame {result.index} has tracks without track_id")
        self._append(format_result_rows(result.index, t.track_id, t.xywh, t.score))


def _num(v: float, digits: int) -> float | None:
    """Rounded, or None for NaN/inf (JSON has neither)."""
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def result_record(result: FrameResult) -> dict[str, Any]:
    """One frame as a JSON-ready dict (the JSONL schema)."""
    t = result.tracks
    ids = t.track_id if t.track_id is not None else np.full(len(t), -1, np.int64)
    tracks = [
        {"id": int(i), "box": [_num(v, 2) for v in b], "score": _num(s, 4)}
        for i, b, s in zip(ids, t.xyxy, t.score)
    ]
    return {
        "frame": int(result.index),
        "timestamp": _num(result.timestamp, 6),
        "q": _num(result.q, 4),
        "w": _num(result.w, 4),
        "semantic": result.semantic,
        "tracks": tracks,
        "latency_ms": {k: _num(v, 3) for k, v in result.latency_ms.items()},
    }


class JsonlSink(_DurableAppender):
    """One JSON object per line and frame: frame, timestamp, q, w, semantic, tracks, latency_ms.

    Boxes are `[x1, y1, x2, y2]` in source pixels; `semantic` is fresh, reused or skipped.
    """

    kind = "JSONL sink"

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        self._append(json.dumps(result_record(result), separators=(",", ":"), allow_nan=False) + "\n")


# Containers OpenCV can write here (it cannot encode H.264): extension -> fourcc.
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@functools.lru_cache(maxsize=4096)
def track_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-ratio hue steps)."""
    hue = int((track_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def annotate(image: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of `image` with boxes, IDs, a quality bar (q and w) and the semantic state."""
    out = image.copy()
    t = result.tracks
    ids = t.track_id if t.track_id is not None else np.full(len(t), -1, np.int64)
    for tid, box in zip(ids, t.xyxy.round().astype(int)):
        colour = track_colour(int(tid))
        cv2.rectangle(out, tuple(box[:2]), tuple(box[2:]), colour, 2)
        cv2.putText(out, str(int(tid)), (box[0], max(box[1] - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2)
    _quality_bar(out, result)
    return out


def _quality_bar(img: np.ndarray, result: FrameResult) -> None:
    """Two 100-px bars at the top left: q (green) and w (orange), and the semantic state."""
    for row, (name, value, colour) in enumerate((("q", result.q, (0, 200, 0)), ("w", result.w, (0, 140, 255)))):
        y = 6 + row * 14
        cv2.rectangle(img, (30, y), (130, y + 10), (60, 60, 60), -1)
        fill = min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0
        cv2.rectangle(img, (30, y), (30 + int(100 * fill), y + 10), colour, -1)
        cv2.putText(img, name, (8, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    label = f"#{result.index} semantic: {result.semantic}"
    cv2.putText(img, label, (140, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)


class VideoSink(_SinkBase):
    """Annotated video. `.mp4/.m4v/.mov` -> mp4v, `.avi/.mkv` -> MJPG; anything else ValueError.

    Drawing and encoding (~10 ms per 640x480 frame here) run on the sink's own thread, so they
    overlap the pipeline instead of halving its FPS. When `queue_size` frames are waiting (0 =
    as many as fit in QUEUE_BYTES, 2 to 32), a new frame is dropped and counted in `dropped`
    (the tracker outranks its debug video), unless `drop_when_full=False`, which makes `write`
    wait. `frame_size` is (width, height); None takes it from the first image; other sizes are
    resized to it.
    """

    QUEUE_BYTES = 64 << 20  # memory the frames waiting for the encoder may take

    def __init__(self, path: str | os.PathLike, fps: float, frame_size: tuple[int, int] | None = None,
                 queue_size: int = 0, drop_when_full: bool = True):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_CODECS:
            raise ValueError(f"video sink: expected one of {sorted(VIDEO_CODECS)} for {self.path}, got {ext!r} "
                             "(OpenCV here writes mp4v or MJPG, not H.264)")
        if not fps > 0:
            raise ValueError(f"video sink: expected fps > 0, got {fps!r}")
        self.fps, self.frame_size, self.drop_when_full = float(fps), frame_size, drop_when_full
        self.frames = self.dropped = 0  # frames encoded / frames dropped because the queue was full
        self.queue_size = queue_size
        self._queue: queue.Queue | None = None
        self._writer: cv2.VideoWriter | None = None
        self._thread: threading.Thread | None = None
        if frame_size is not None:
            self._open(frame_size)

    def _open(self, size: tuple[int, int]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"video sink: cannot create {self.path}: {_describe(e)}") from e
        fourcc = VIDEO_CODECS[self.path.suffix.lower()]
        self.frame_size = (int(size[0]), int(size[1]))
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.frame_size)
        if not self._writer.isOpened():
            raise SinkError(f"video sink: OpenCV cannot open {self.path} for writing at {size} ({fourcc})")
        per_frame = 3 * self.frame_size[0] * self.frame_size[1]
        n = self.queue_size or min(max(self.QUEUE_BYTES // per_frame, 2), 32)  # 640x480: 32, 1080p: 10
        self._queue = queue.Queue(maxsize=n)
        self._thread = threading.Thread(target=self._encode, name=f"video:{self.path.name}", daemon=True)
        self._thread.start()

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        if image is None:
            raise ValueError(f"video sink: frame {result.index} came without its image (pass write(result, image))")
        if self._writer is None:
            self._open((image.shape[1], image.shape[0]))
        try:
            self._queue.put((result, image), block=not self.drop_when_full)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("video sink: encoding falls behind; dropping frames from %s", self.path)

    def _encode(self) -> None:
        while (item := self._queue.get()) is not None:
            result, image = item
            if (image.shape[1], image.shape[0]) != self.frame_size:
                image = cv2.resize(image, self.frame_size, interpolation=cv2.INTER_AREA)
            self._writer.write(annotate(image, result))
            self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(None)  # after the frames already queued
        self._thread.join()
        self._writer.release()
        self._writer = None
        if self.dropped:
            log.warning("video sink: %d frames dropped from %s", self.dropped, self.path)


# Latency stages (runtime/pipeline.py STAGES) whose sum is the "model-only" time: the networks
# and their bookkeeping, not the quality gate, decoding, sinks or waiting for the source.
MODEL_STAGES = ("semantics", "detector", "tracker")


class LatencyHistogram:
    """Bounded-memory latency distribution for runs of weeks: log-spaced bins, 2 % wide,
    from 1 us to 100 s (~930 int64 counters). Percentiles are within one bin (2 %)."""

    LO_MS, HI_MS, STEP = 1e-3, 1e5, 1.02

    def __init__(self) -> None:
        self._log_step = math.log(self.STEP)
        self.nbins = int(math.ceil(math.log(self.HI_MS / self.LO_MS) / self._log_step)) + 2
        self.counts = np.zeros(self.nbins, np.int64)  # bin 0: <= LO_MS; last bin: > HI_MS
        self.n, self.total_ms, self.max_ms = 0, 0.0, 0.0

    def add(self, ms: float) -> None:
        ms = max(float(ms), 0.0)
        i = 0 if ms <= self.LO_MS else 1 + int(math.log(ms / self.LO_MS) / self._log_step)
        self.counts[min(i, self.nbins - 1)] += 1
        self.n, self.total_ms, self.max_ms = self.n + 1, self.total_ms + ms, max(self.max_ms, ms)

    def percentile(self, p: float) -> float:
        """The p-th percentile in ms (geometric centre of its bin, capped at the maximum seen)."""
        if self.n == 0:
            return float("nan")
        i = int(np.searchsorted(np.cumsum(self.counts), max(1, math.ceil(p / 100 * self.n))))
        centre = self.LO_MS * self.STEP ** (i - 0.5) if i > 0 else self.LO_MS
        return min(centre, self.max_ms)

    def summary(self) -> dict[str, float]:
        mean = self.total_ms / self.n if self.n else float("nan")
        pct = {f"p{p}": self.percentile(p) for p in (50, 90, 99)}
        return {k: _round(v) for k, v in {**pct, "mean": mean, "max": self.max_ms}.items()} | {"n": self.n}


def _round(v: float) -> float | None:
    return None if not math.isfinite(v) else round(v, 3)  # JSON has no NaN


def _as_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    return asdict(stats) if is_dataclass(stats) else dict(stats)


class StatsSink(_SinkBase):
    """Run statistics JSON, rewritten atomically every `every_s` seconds (or `every_frames`)
    and at close. Keys: frames, fps, fps_end_to_end, fps_model, semantic_runs / _reused /
    _skipped, latency_ms {stage: p50 p90 p99 mean max n}, dropped_frames, reconnects, stalls,
    source_stats {...}, elapsed_s, updated_unix, final, plus the `meta` keys. Memory stays bounded (histograms, not lists).

    `source_stats()` returns the live source's `SourceStats` (or a mapping); `meta` is copied in.
    """

    MAX_STAGES = 64  # a bound on distinct stage names, so a buggy caller cannot grow memory

    def __init__(self, path: str | os.PathLike, every_s: float = 5.0, every_frames: int = 0,
                 model_stages: tuple[str, ...] = MODEL_STAGES,
                 source_stats: Callable[[], Any] | None = None, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.every_s, self.every_frames = every_s, every_frames  # write period (0 = that trigger off)
        self.model_stages, self.source_stats, self.meta = tuple(model_stages), source_stats, dict(meta or {})
        self.frames, self.semantic = 0, {"fresh": 0, "reused": 0, "skipped": 0}
        self.latency: dict[str, LatencyHistogram] = {}
        self._model, self._e2e = LatencyHistogram(), LatencyHistogram()
        self._t_first = self._t_last = self._t_flush = time.monotonic()
        self._closed = False

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        now = time.monotonic()
        if self.frames == 0:
            self._t_first = now
        self._t_last, self.frames = now, self.frames + 1
        self.semantic[result.semantic] += 1
        self._add_latency(result.latency_ms)
        due_frames = self.every_frames and self.frames % self.every_frames == 0
        if due_frames or (self.every_s and now - self._t_flush >= self.every_s):
            self.flush()

    def _add_latency(self, stages: Mapping[str, float]) -> None:
        for name, ms in stages.items():
            if name not in self.latency and len(self.latency) >= self.MAX_STAGES:
                continue
            self.latency.setdefault(name, LatencyHistogram()).add(ms)
        model = [ms for name, ms in stages.items() if name in self.model_stages]
        if model:
            self._model.add(sum(model))
        if stages:
            self._e2e.add(stages["total"] if "total" in stages else sum(stages.values()))

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        elapsed = self._t_last - self._t_first
        src = _as_dict(self.source_stats() if self.source_stats else None)
        fps_of = lambda h: _round(1000.0 * h.n / h.total_ms) if h.total_ms > 0 else None  # noqa: E731
        return {**self.meta, **{
            "frames": self.frames,
            "fps": _round((self.frames - 1) / elapsed) if self.frames > 1 and elapsed > 0 else None,
            "fps_end_to_end": fps_of(self._e2e),  # 1000 / mean per-frame processing ms (capacity)
            "fps_model": fps_of(self._model),  # 1000 / mean ms of the model stages alone
            "model_stages": list(self.model_stages),
            "semantic_runs": self.semantic["fresh"],
            "semantic_reused": self.semantic["reused"],
            "semantic_skipped": self.semantic["skipped"],
            "latency_ms": {name: h.summary() for name, h in sorted(self.latency.items())},
            "dropped_frames": int(src.get("dropped", 0)),
            "reconnects": int(src.get("reconnects", 0)),
            "stalls": int(src.get("stalls", 0)),
            "source_stats": src,
            "elapsed_s": round(elapsed, 3),
            "updated_unix": round(time.time(), 3),
            "final": final,
        }}  # the contract keys win over `meta`

    def flush(self, final: bool = False) -> None:
        """Replace the stats file atomically; on failure the previous file stays as it was."""
        self._t_flush = time.monotonic()
        text = json.dumps(self.snapshot(final), indent=1, default=str) + "\n"
        try:
            atomic_write_text(self.path, text)
        except OSError as e:
            raise SinkError(f"stats sink: cannot write {self.path}: {_describe(e)}; "
                            "the previous stats file is intact") from e

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.flush(final=True)


__all__ = ["Sink", "SinkError", "MotSink", "JsonlSink", "VideoSink", "StatsSink", "LatencyHistogram",
           "annotate", "track_colour", "result_record", "VIDEO_CODECS", "MODEL_STAGES", "open_sinks"]


def open_sinks(mot_out: str = "", jsonl_out: str = "", video_out: str = "", stats_out: str = "",
               fps: float = 25.0, source_stats: Callable[[], Any] | None = None,
               meta: Mapping[str, Any] | None = None) -> list[Sink]:
    """The sinks a run asked for (empty paths are skipped), in a fixed order."""
    sinks: list[Sink] = []
    try:
        if mot_out:
            sinks.append(MotSink(mot_out))
        if jsonl_out:
            sinks.append(JsonlSink(jsonl_out))
        if video_out:
            sinks.append(VideoSink(video_out, fps))
        if stats_out:
            sinks.append(StatsSink(stats_out, source_stats=source_stats, meta=meta))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks
