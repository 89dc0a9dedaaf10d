"""The run loop: pull frames, step the pipeline, write sinks, tell hooks; stop cleanly on a signal.

    summary = run_loop(source, pipeline, sinks, hooks, stop_event, max_frames)

A stop (SIGTERM / SIGINT through `stop_on_signals`, `max_frames`, or the source ending) finishes
the frame in flight, then closes (flushes) every sink. Sinks are also closed when a frame fails,
so what was written before the error is kept. Hooks (the service's systemd notify, health server,
...) see `on_start()`, `on_frame(result, source_stats)` per frame and `on_stop(summary)`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vsdmot._cli import handling
from vsdmot.runtime.pipeline import perceive, step, track
from vsdmot.runtime.types import Frame, FrameResult

log = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # frames of per-stage latency kept for percentiles (bounded memory)


class Hook(Protocol):
    def on_start(self) -> None: ...

    def on_frame(self, result: FrameResult, source_stats: Any) -> None: ...

    def on_stop(self, summary: RunSummary) -> None: ...


@dataclass(slots=True)
class RunSummary:
    frames: int  # frames stepped
    seconds: float  # wall time from the first pull to the last frame written
    fps: float  # frames / seconds, end to end (decode + pipeline + sinks)
    semantic: dict[str, int]  # fresh / reused / skipped counts
    latency_ms: dict[str, dict[str, float]]  # stage -> p50 / p90 / p99 / mean / max (last LATENCY_WINDOW frames)
    stopped_by: str  # "end" | "max_frames" | "signal" | "error", or the stop event's own `reason` (profile: "duration")
    source_stats: Any = None  # the source's own counters (drops, reconnects, stalls) where it has them
    error: str = ""  # what stopped the run when stopped_by == "error"
    pipeline_ms: float | None = None  # mean per-frame pipeline time over the whole run (the `total` stage)
    overlap: bool = False  # perceive and track ran side by side: pipeline_ms is work, not the time between frames
    track_rows: int = 0  # tracks output over the run (MOT rows)
    q_mean: float | None = None  # mean measured frame quality q in [0, 1] (1 = clean), None without frames


class _Latencies:
    """The run's tally: per-stage ring buffers of the last LATENCY_WINDOW frames, and the counts
    and sums a RunSummary reports."""

    def __init__(self, window: int = LATENCY_WINDOW):
        self.window, self.n, self.buf = window, 0, {}
        self.total_ms = 0.0  # sum of every frame's `total` stage, for the run's mean
        self.rows, self.q_sum, self.q_n = 0, 0.0, 0  # tracks output; measured quality (finite q only)

    def add(self, result: FrameResult) -> None:
        ms, slot = result.latency_ms, self.n % self.window
        self.total_ms += ms.get("total", 0.0)
        for stage, value in ms.items():
            self.buf.setdefault(stage, np.full(self.window, np.nan))[slot] = value
        self.n, self.rows = self.n + 1, self.rows + len(result.tracks)
        if math.isfinite(result.q):
            self.q_sum, self.q_n = self.q_sum + result.q, self.q_n + 1

    def run_summary(self, seconds: float, pipeline: Any, stopped_by: str, stats: Any, error: str,
                    overlap: bool) -> RunSummary:
        return RunSummary(self.n, seconds, self.n / seconds if seconds > 0 else 0.0,
                          pipeline.semantics.counts.as_dict(), self.summary(), stopped_by, stats, error,
                          self.total_ms / self.n if self.n and self.total_ms else None, overlap, self.rows,
                          self.q_sum / self.q_n if self.q_n else None)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for stage, values in self.buf.items():
            v = values[~np.isnan(values)]
            if len(v):
                p50, p90, p99 = np.percentile(v, [50, 90, 99])
                out[stage] = {"p50": p50, "p90": p90, "p99": p99, "mean": v.mean(), "max": v.max()}
        return {s: {k: round(float(x), 3) for k, x in d.items()} for s, d in out.items()}


class ProgressHook:
    """One log line every `every_s` seconds: frames (of `total` when the source knows it), FPS
    since the last line, tracks, the share of frames that skipped semantics, and an ETA."""

    def __init__(self, total: int = 0, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.every_s, self.clock = total, every_s, clock
        self.frames = self.skipped = self._mark_frames = 0
        self._mark_t = 0.0

    def on_start(self) -> None:
        self._mark_t = self.clock()

    def on_frame(self, result: FrameResult, source_stats: Any = None) -> None:
        self.frames += 1
        self.skipped += result.semantic == "skipped"
        now = self.clock()
        if now - self._mark_t < self.every_s:
            return
        fps = (self.frames - self._mark_frames) / (now - self._mark_t)
        log.info("progress: frame %s, %.1f FPS, %d tracks, semantic skipped %.0f%%%s", self._of_total(fps), fps,
                 len(result.tracks), 100 * self.skipped / self.frames, drop_note(source_stats))
        self._mark_t, self._mark_frames = now, self.frames

    def _of_total(self, fps: float) -> str:
        if not 0 < self.frames <= self.total:  # unknown, or a header count that was wrong
            return str(self.frames)
        left = (self.total - self.frames) / fps if fps > 0 else float("inf")
        return f"{self.frames}/{self.total} ({100 * self.frames / self.total:.0f}%, ETA {left:.0f} s)"

    def on_stop(self, summary: RunSummary | None = None) -> None:
        pass


def pipeline_note(summary: RunSummary) -> str:
    """" (pipeline M ms a frame, capacity C FPS)": what the networks and tracker cost per frame, beside
    the wall-clock FPS, which also counts decoding, the sinks and waiting on a live source."""
    if not summary.pipeline_ms:
        return ""
    if summary.overlap:  # the two halves run at once: their sum is CPU work, not the frame interval
        return f" (pipeline {summary.pipeline_ms:.1f} ms of stages a frame, overlapped)"
    return f" (pipeline {summary.pipeline_ms:.1f} ms a frame: capacity {1000.0 / summary.pipeline_ms:.1f} FPS)"


NOTHING_TRACKED_FRAMES = 30  # a run this long that output no track gets `nothing_tracked_hint`


def nothing_tracked_hint(summary: RunSummary) -> str:
    """What to check when a run of NOTHING_TRACKED_FRAMES or more output no track at all, else ""."""
    if summary.frames < NOTHING_TRACKED_FRAMES or summary.track_rows:
        return ""
    return (f"no one was tracked in {summary.frames} frames. If people are in view: a camera mounted sideways "
            "needs --rotate 90 or 270 (the detector knows upright people); people under ~20 px tall need a "
            "larger detector input (vsdmot-export --input-size, docs/export.md); --video-out shows what was seen")


LOW_QUALITY_Q = 0.3  # a run whose mean q is under this gets low_quality_hint (clean video measures 0.9 and more)


def low_quality_hint(summary: RunSummary) -> str:
    """What the measured quality says when a run's frames were mostly poor, else ""."""
    if summary.q_mean is None or summary.frames < NOTHING_TRACKED_FRAMES or summary.q_mean >= LOW_QUALITY_Q:
        return ""
    return (f"the frames measured low quality (mean q {summary.q_mean:.2f} of 1: dark, noisy, blurred or heavily "
            "compressed): expect fewer people found than on clean video; more light, a lower compression or a "
            "shorter exposure help more than any setting here (--jsonl-out gives q per frame)")


def drop_note(stats: Any) -> str:
    """", source dropped D of N frames (...)" when a live source dropped frames (its counters), else ""."""
    dropped = getattr(stats, "dropped", 0)
    if not dropped:
        return ""
    due = stats.frames_read - getattr(stats, "warmup", 0)  # warm-up frames were never due
    bursts = getattr(stats, "reconnects", 0) + getattr(stats, "stalls", 0)  # FFmpeg hands over its buffer at once
    why = (f"the burst of buffered frames after {bursts} reconnect(s) or stall(s), or a pipeline slower than the "
           "source" if bursts else "the pipeline is slower than the source")
    return (f", source dropped {dropped} of {due} frames ({100 * dropped / max(due, 1):.0f}%: {why}; the trackers "
            "predict over the gaps)")


class SourceStopEvent(threading.Event):
    """The run's stop event; setting it also calls `source.stop()` where the source has one, so a
    live source waiting through a stall returns at once instead of when frames resume. Safe in a
    signal handler (both only set flags)."""

    def __init__(self, source: Any):
        super().__init__()
        self._stop_source = getattr(source, "stop", None)
        self.reason = ""  # why, when not a signal (profile: "duration"); run_loop's stopped_by

    def set(self) -> None:
        super().set()
        if self._stop_source is not None:
            self._stop_source()


def source_stats(source: Any) -> Any:
    """A live source's counters (`stats` attribute or method), else None."""
    stats = getattr(source, "stats", None)
    return stats() if callable(stats) else stats


def run_loop(source: Iterable[Frame], pipeline, sinks: Sequence, hooks: Sequence[Hook] = (),
             stop_event: threading.Event | None = None, max_frames: int = 0,
             step_fn: Callable = step, overlap: bool = False) -> RunSummary:
    """Run until the source ends, `max_frames` frames, or `stop_event`. Sinks are closed here.
    `overlap`: perceive the next frame while this one is tracked (`overlapped`, which runs the
    pipeline's own `perceive` and `track`, not `step_fn`)."""
    stop_event = stop_event or threading.Event()
    lat, stopped_by, error = _Latencies(), "end", ""
    started: list[Hook] = []  # only these get on_stop; a hook failing to start still closes the sinks
    t0, steps = time.perf_counter(), None
    try:
        _start_hooks(hooks, started)
        t0 = time.perf_counter()
        pulled = _until(source, stop_event)
        if max_frames:  # never perceive a frame that will not be tracked
            pulled = itertools.islice(pulled, max_frames)
        steps = overlapped(pulled, pipeline) if overlap else ((f, step_fn(f, pipeline)) for f in pulled)
        for frame, result in steps:
            _emit(frame, result, sinks, hooks, source)
            lat.add(result)
            if max_frames and lat.n >= max_frames:
                stopped_by = "max_frames"
                break
        else:
            stopped_by = (getattr(stop_event, "reason", "") or "signal") if stop_event.is_set() else "end"
    except BaseException as e:
        stopped_by, error = "error", f"{type(e).__name__}: {e}"
        raise
    finally:
        seconds = time.perf_counter() - t0
        if steps is not None:
            steps.close()  # overlap: waits for the frame being perceived, so no network runs past this
        summary = lat.run_summary(seconds, pipeline, stopped_by, source_stats(source), error, overlap)
        _finish(sinks, started, summary, error)
    log.info("run: %d frames in %.1f s (%.1f FPS), stopped by %s%s", summary.frames, seconds, summary.fps, stopped_by,
             drop_note(summary.source_stats))
    return summary


def _finish(sinks: Sequence, started: Sequence[Hook], summary: RunSummary, error: str) -> None:
    """Close every sink, then stop the started hooks (the health server, the watchdog) even if a
    sink failed; a sink's failure is raised unless the run already failed (that error is the one
    to report; _close_all logged the sink's)."""
    try:
        _close_all(sinks)
    except Exception:
        if not error:
            raise
    finally:
        _stop_hooks(started, summary)


def _emit(frame: Frame, result: FrameResult, sinks: Sequence, hooks: Sequence[Hook], source: Any) -> None:
    """One frame's result to every sink (with its image), then to every hook (with the source's counters)."""
    for sink in sinks:
        sink.write(result, frame.image)
    stats = source_stats(source)
    for hook in hooks:
        hook.on_frame(result, stats)


def overlapped(frames: Iterable[Frame], pipeline) -> Iterator[tuple[Frame, FrameResult]]:
    """(frame, result) in order, with frame t+1's `perceive` (quality, semantics, detector) running in
    one worker thread while frame t is tracked here. The two halves share no state (the semantic
    cache and the detector are the worker's, the tracker slots and frame gaps this thread's), so the
    results equal `step`'s; the networks are separate sessions. On a 2-core CPU the demo clip ran
    1.33x faster end to end (docs/runtime.md, *Overlap*). A frame waits for at most one `perceive`
    more before it is tracked; a stop tracks the frame already perceived."""
    with ThreadPoolExecutor(1, thread_name_prefix="vsdmot-perceive") as worker:
        ahead = None  # (frame, future of its Percept)
        for frame in frames:
            following = (frame, worker.submit(perceive, frame, pipeline))
            if ahead is not None:
                yield ahead[0], track(ahead[0], ahead[1].result(), pipeline)
            ahead = following
        if ahead is not None:
            yield ahead[0], track(ahead[0], ahead[1].result(), pipeline)


def _until(source: Iterable[Frame], stop_event: threading.Event) -> Iterator[Frame]:
    """Frames from `source` until the stop event is set (checked before each pull)."""
    it = iter(source)
    while not stop_event.is_set():
        try:
            frame = next(it)
        except StopIteration:
            return
        yield frame


def _start_hooks(hooks: Sequence[Hook], started: list[Hook]) -> None:
    """`on_start()` each hook in order, appending each to `started` once it has started."""
    for hook in hooks:
        hook.on_start()
        started.append(hook)


def _close_all(sinks: Sequence) -> None:
    """Close every sink even if one fails; re-raise the first failure after trying them all."""
    first: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as e:  # noqa: BLE001 - the others must still be flushed
            log.error("closing %s failed: %s", type(sink).__name__, e)
            first = first or e
    if first is not None:
        raise first


def _stop_hooks(hooks: Sequence[Hook], summary: RunSummary) -> None:
    for hook in hooks:
        try:
            hook.on_stop(summary)
        except Exception as e:  # noqa: BLE001 - a hook must not hide the run's own outcome
            log.error("hook %s on_stop failed: %s", type(hook).__name__, e)


def abort_now(signum: int) -> None:
    """A second stop signal: exit 130 at once, outputs as they are. MOT and JSONL rows of finished
    frames are on disk already (one os.write per frame); an .mp4 loses its index and the stats file
    keeps its last periodic rewrite. Raising KeyboardInterrupt instead unwound into OpenCV's encoder
    thread and onnxruntime at interpreter exit and aborted the process (exit 134, 'terminate called')."""
    os.write(2, f"vsdmot-edge: second {signal.Signals(signum).name}: aborting now, outputs not flushed\n".encode())
    os._exit(130)


@contextmanager
def stop_on_signals(stop_event: threading.Event, signals=(signal.SIGTERM, signal.SIGINT)):
    """SIGTERM / SIGINT set `stop_event` (finish the frame, flush, exit 0); a second one exits 130 at once."""
    def handler(signum, _frame):
        if stop_event.is_set():
            abort_now(signum)
        log.warning("%s: stopping after this frame", signal.Signals(signum).name)
        stop_event.set()

    with handling(signals, handler):
        yield stop_event
