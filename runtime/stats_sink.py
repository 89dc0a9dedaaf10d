"""The run-statistics sink: frame counts, FPS, semantic runs and per-stage latency percentiles,
rewritten atomically (temp file + fsync + rename) so a reader never sees half a JSON.
Memory stays bounded for runs of weeks: latency goes into fixed log-spaced histograms."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .mot import atomic_write_text
from .sinks import SinkError, _describe, _SinkBase, check_writable, rotate_previous
from .types import FrameResult


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


def _placeholder(path: Path) -> bool:
    """Whether `path` is a stats file of a run that stepped no frame and did not finish (start()'s
    `frames: 0`, killed): a finished run's, even of no frame (a camera that never came), is kept."""
    try:
        doc = json.loads(path.read_text())
        return doc.get("frames") == 0 and doc.get("final") is False
    except (OSError, ValueError, AttributeError):
        return False


class StatsSink(_SinkBase):
    """Run statistics JSON, rewritten atomically every `every_s` seconds (or `every_frames`)
    and at close. Keys: frames, fps, fps_pipeline, fps_model, semantic_runs / _reused /
    _skipped, q_mean / q_min / w_mean, latency_ms {stage: p50 p90 p99 mean max n}, dropped_frames, video_frames_dropped
    (with a video sink), reconnects, stalls,
    source_stats {...}, elapsed_s, updated_unix, final, plus the `meta` keys. Memory stays bounded (histograms, not lists).

    `source_stats()` returns the live source's `SourceStats` (or a mapping); `meta` is copied in.
    """

    MAX_STAGES = 64  # a bound on distinct stage names, so a buggy caller cannot grow memory

    def __init__(self, path: str | os.PathLike, every_s: float = 5.0, every_frames: int = 0,
                 model_stages: tuple[str, ...] = MODEL_STAGES,
                 source_stats: Callable[[], Any] | None = None, meta: Mapping[str, Any] | None = None,
                 keep_previous: int = 5, video: Any = None):
        self.path = Path(path)
        self.keep_previous = keep_previous  # an earlier run's file goes aside at start() (0: replaced)
        self._fresh = True  # nothing written by this sink yet
        check_writable(self.path, "stats sink", stream_ok=False)  # its first write comes after every sink opened
        self._take_claim(self.path, "stats sink")
        self.every_s, self.every_frames = every_s, every_frames  # write period (0 = that trigger off)
        self.model_stages, self.source_stats, self.meta = tuple(model_stages), source_stats, dict(meta or {})
        self.frames, self.semantic = 0, {"fresh": 0, "reused": 0, "skipped": 0}
        self._q_n, self._q_sum, self._q_min, self._w_sum = 0, 0.0, math.inf, 0.0  # measured quality q, DSWR weight w
        self.latency: dict[str, LatencyHistogram] = {}
        self._model, self._pipeline = LatencyHistogram(), LatencyHistogram()
        self._t_first = self._t_last = self._t_flush = time.monotonic()
        self._closed = False
        self.video = video  # the run's VideoSink, whose dropped frames the file counts

    def start(self) -> None:
        """Move the previous run's file aside and write this run's first snapshot (frames 0): once
        every output has opened (open_sinks), not at the first periodic write, after which a run
        killed in its first seconds left the previous run's file looking like this one's."""
        self.flush()

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        now = time.monotonic()
        if self.frames == 0:
            self._t_first = now
        self._t_last, self.frames = now, self.frames + 1
        self.semantic[result.semantic] += 1
        if math.isfinite(result.q):
            self._q_n, self._q_sum, self._w_sum = self._q_n + 1, self._q_sum + result.q, self._w_sum + result.w
            self._q_min = min(self._q_min, result.q)
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
            self._pipeline.add(stages["total"] if "total" in stages else sum(stages.values()))

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        elapsed = self._t_last - self._t_first
        src = _as_dict(self.source_stats() if self.source_stats else None)
        fps_of = lambda h: _round(1000.0 * h.n / h.total_ms) if h.total_ms > 0 else None  # noqa: E731
        return {**self.meta, **{
            "frames": self.frames,
            "fps": _round((self.frames - 1) / elapsed) if self.frames > 1 and elapsed > 0 else None,
            "fps_pipeline": fps_of(self._pipeline),  # 1000 / mean per-frame pipeline ms (capacity; no decode, no sinks)
            "fps_model": fps_of(self._model),  # 1000 / mean ms of the model stages alone
            "model_stages": list(self.model_stages),
            "semantic_runs": self.semantic["fresh"],
            "semantic_reused": self.semantic["reused"],
            "semantic_skipped": self.semantic["skipped"],
            "q_mean": _round(self._q_sum / self._q_n) if self._q_n else None,  # frame quality, 1 = clean
            "q_min": _round(self._q_min) if self._q_n else None,
            "w_mean": _round(self._w_sum / self._q_n) if self._q_n else None,  # DSWR's semantic weight
            "latency_ms": {name: h.summary() for name, h in sorted(self.latency.items())},
            "dropped_frames": int(src.get("dropped", 0)),
            **({"video_frames_dropped": self.video.dropped} if self.video is not None else {}),  # live: encoder behind
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
            if self._fresh:
                if not _placeholder(self.path):  # a run killed before its first frame is replaced, as an
                    rotate_previous(self.path, self.keep_previous)  # empty MOT file is: a crash loop would
                self._fresh = False  # else push the last real run's stats out of keep_files
            atomic_write_text(self.path, text)
        except OSError as e:
            raise SinkError(f"stats sink: cannot write {self.path}: {_describe(e)}; "
                            "the previous stats file is intact") from e

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.flush(final=True)
            finally:
                self._drop_claim()
