"""The run loop: sinks written and closed on every exit path, hooks called, signals stop cleanly."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vsdmot.edge.runner import (ProgressHook, RunSummary, SourceStopEvent, drop_note, low_quality_hint,
                                nothing_tracked_hint, pipeline_note, run_loop, stop_on_signals)
from vsdmot.runtime.semantics import SemanticCounts
from vsdmot.runtime.types import Detections, Frame, FrameResult

IMG = np.zeros((8, 8, 3), np.uint8)


class Source:
    def __init__(self, n, fps=10.0):
        self.n, self.fps, self.name, self.pulled, self.stats = n, fps, "fake", 0, {"dropped": 0}

    def __iter__(self):
        for i in range(1, self.n + 1):
            self.pulled += 1
            yield Frame(i, IMG, (i - 1) / self.fps)

    def close(self):
        pass


class FakePipeline:
    def __init__(self):
        self.semantics = type("S", (), {"counts": SemanticCounts(skipped=0)})()


def fake_step(frame, p, fail_at=None, on_frame=None):
    if frame.index == fail_at:
        raise ValueError(f"input 'images': expected (1, 3, 416, 416), got frame {frame.index}")
    p.semantics.counts.skipped += 1
    if on_frame:
        on_frame(frame)
    return FrameResult(frame.index, frame.timestamp, 1.0, 0.0, "skipped", Detections.empty(True),
                       {"quality": 1.0, "detector": 2.0, "total": 3.0})


class Sink:
    def __init__(self):
        self.written, self.closed = [], False

    def write(self, result, image=None):
        assert image is not None
        self.written.append(result.index)

    def close(self):
        self.closed = True


class Hook:
    def __init__(self):
        self.calls = []

    def on_start(self):
        self.calls.append("start")

    def on_frame(self, result, source_stats):
        self.calls.append((result.index, source_stats["dropped"]))

    def on_stop(self, summary):
        self.calls.append(("stop", summary.stopped_by))


def run(n=5, max_frames=0, stop=None, **step_kw):
    source, sink, hook = Source(n), Sink(), Hook()
    summary = run_loop(source, FakePipeline(), [sink], [hook], stop, max_frames,
                       step_fn=lambda f, p: fake_step(f, p, **step_kw))
    return summary, source, sink, hook


@pytest.mark.parametrize("n,max_frames,frames,stopped_by", [(5, 0, 5, "end"), (5, 3, 3, "max_frames"),
                                                            (0, 0, 0, "end"), (3, 10, 3, "end")])
def test_runs_to_end_or_max_frames(n, max_frames, frames, stopped_by):
    summary, source, sink, hook = run(n, max_frames)
    assert isinstance(summary, RunSummary)
    assert (summary.frames, summary.stopped_by) == (frames, stopped_by)
    assert sink.written == list(range(1, frames + 1)) and sink.closed
    assert source.pulled == frames  # max_frames does not pull one frame too many
    assert hook.calls == ["start", *[(i, 0) for i in range(1, frames + 1)], ("stop", stopped_by)]
    assert summary.semantic == {"fresh": 0, "reused": 0, "skipped": frames}
    if frames:
        assert summary.latency_ms["detector"]["p50"] == 2.0 and summary.fps > 0
        assert summary.source_stats == {"dropped": 0}


def test_a_run_of_low_measured_quality_says_so():
    summary = run(40)[0]
    assert summary.q_mean == 1.0 and low_quality_hint(summary) == ""  # fake_step's q
    dark = dataclasses.replace(summary, q_mean=0.02)
    assert "the frames measured low quality (mean q 0.02 of 1" in low_quality_hint(dark)
    assert low_quality_hint(dataclasses.replace(dark, frames=5)) == ""  # too few frames to say


def test_stop_event_finishes_the_frame_in_flight():
    stop = threading.Event()
    summary, source, sink, _ = run(100, stop=stop, on_frame=lambda f: f.index == 4 and stop.set())
    assert summary.stopped_by == "signal" and summary.frames == 4
    assert sink.written == [1, 2, 3, 4] and sink.closed and source.pulled == 4


def test_error_mid_run_closes_sinks_keeps_what_was_written():
    source, sink, hook = Source(10), Sink(), Hook()
    with pytest.raises(ValueError, match="input 'images'"):
        run_loop(source, FakePipeline(), [sink], [hook], None, 0, step_fn=lambda f, p: fake_step(f, p, fail_at=4))
    assert sink.written == [1, 2, 3] and sink.closed
    assert hook.calls[-1] == ("stop", "error")


def test_a_hook_failing_to_start_still_closes_sinks_and_stops_started_hooks():
    """Hooks were started outside the loop's try: a hook that failed in on_start (the health hook
    on a bad --power-meter name) left every sink unclosed (a video without its index, the stats
    file never written) and the hooks already started (the health server) running."""
    class BadStart(Hook):
        def on_start(self):
            raise ValueError("power meter: expected one of ['jtop', 'ina3221', 'nvml', 'rapl'], got 'tegra'")

    sink, started = Sink(), Hook()
    with pytest.raises(ValueError, match="power meter"):
        run_loop(Source(3), FakePipeline(), [sink], [started, BadStart()], None, 0, step_fn=fake_step)
    assert sink.closed and sink.written == []
    assert started.calls == ["start", ("stop", "error")]


def test_one_failing_sink_close_does_not_stop_the_others():
    class Bad(Sink):
        def close(self):
            super().close()
            raise OSError(28, "No space left on device")

    bad, good, hook = Bad(), Sink(), Hook()
    with pytest.raises(OSError, match="No space"):
        run_loop(Source(2), FakePipeline(), [bad, good], [hook], None, 0, step_fn=fake_step)
    assert bad.closed and good.closed and good.written == [1, 2]
    assert hook.calls[-1] == ("stop", "end")  # the hooks (health server, watchdog) stop all the same
    with pytest.raises(ValueError, match="input 'images'"):  # the run's own error, not the sink's, is reported
        run_loop(Source(5), FakePipeline(), [Bad()], [], None, 0, step_fn=lambda f, p: fake_step(f, p, fail_at=2))


SECOND_SIGNAL = """
import os, signal, sys, threading
from vsdmot.edge.runner import stop_on_signals
from vsdmot.edge.service import install_signal_handlers
stop, signum = threading.Event(), int(sys.argv[2])
with stop_on_signals(stop) if sys.argv[1] == "runner" else open(os.devnull):
    if sys.argv[1] == "service":
        install_signal_handlers(stop)
    os.kill(os.getpid(), signum)
    print("stopping" if stop.is_set() else "not stopping", flush=True)
    os.kill(os.getpid(), signum)
    print("still here", flush=True)
"""


@pytest.mark.parametrize("where, signum", [("runner", signal.SIGTERM), ("runner", signal.SIGINT),
                                           ("service", signal.SIGINT)])
def test_signal_sets_stop_event_then_second_one_exits_130_at_once(where, signum):
    """Not KeyboardInterrupt: unwinding into OpenCV's encoder thread and onnxruntime at exit aborted
    a real run (exit 134, 'terminate called without an active exception')."""
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, where, str(int(signum))], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (130, "stopping\n"), proc.stderr
    assert f"second {signal.Signals(signum).name}: aborting now" in proc.stderr


def test_signal_handlers_are_restored():
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) == before


def test_signal_during_run_exits_cleanly():
    stop = threading.Event()
    with stop_on_signals(stop):
        summary, _, sink, _ = run(50, stop=stop, on_frame=lambda f: f.index == 7 and os.kill(os.getpid(), signal.SIGTERM))
    assert summary.stopped_by == "signal" and sink.written == list(range(1, 8)) and sink.closed


def test_a_run_that_tracked_no_one_says_what_to_check():
    """A sideways camera's clip gave 0 rows in 40 frames and a normal last line."""
    empty = run(40)[0]
    assert empty.track_rows == 0 and "--rotate 90 or 270" in nothing_tracked_hint(empty)
    assert nothing_tracked_hint(run(5)[0]) == ""  # too short to tell
    one = Detections(np.array([[1.0, 1.0, 5.0, 9.0]]), np.array([0.9]), np.array([3]))
    with_tracks = run_loop(Source(40), FakePipeline(), [], step_fn=lambda f, p: FrameResult(
        f.index, f.timestamp, 1.0, 0.0, "skipped", one, {"total": 1.0}))
    assert with_tracks.track_rows == 40 and nothing_tracked_hint(with_tracks) == ""


def test_a_stop_event_can_say_why():
    """profile stops each run at its duration: the log said 'stopped by signal'."""
    stop = threading.Event()
    stop.reason = "duration"
    stop.set()
    assert run(5, stop=stop)[0].stopped_by == "duration"
    plain = threading.Event()
    plain.set()
    assert run(5, stop=plain)[0].stopped_by == "signal"


def test_latency_window_is_bounded():
    from vsdmot.edge import runner

    lat = runner._Latencies(window=4)
    for i in range(10):
        lat.add(FrameResult(i + 1, 0.0, float("nan") if i == 3 else 0.5, 0.0, "skipped", Detections.empty(True),
                            {"total": float(i)}))
    assert lat.buf["total"].shape == (4,) and lat.summary()["total"]["max"] == 9.0
    assert lat.summary()["total"]["p50"] == 7.5  # the last 4 frames: 6, 7, 8, 9
    assert lat.total_ms / lat.n == 4.5  # the run's mean counts every frame, not the window
    assert lat.q_sum / lat.q_n == 0.5  # a NaN q is left out (it printed "mean q nan")


def test_summary_gives_the_pipeline_cost_beside_the_wall_clock_fps():
    summary = run(5)[0]
    assert summary.pipeline_ms == 3.0  # fake_step's `total`
    assert pipeline_note(summary) == " (pipeline 3.0 ms a frame: capacity 333.3 FPS)"
    assert run(0)[0].pipeline_ms is None and pipeline_note(run(0)[0]) == ""
    overlapped = RunSummary(5, 1.0, 5.0, {}, {}, "end", pipeline_ms=14.6, overlap=True)
    assert pipeline_note(overlapped) == " (pipeline 14.6 ms of stages a frame, overlapped)"  # no "capacity" then


class StallingSource(Source):
    """Delivers 2 frames, then waits for frames that never come until stop() (a stalled camera)."""

    def __init__(self):
        super().__init__(2)
        self._stopped = threading.Event()

    def __iter__(self):
        yield from super().__iter__()
        while not self._stopped.wait(0.05):
            pass

    def stop(self):
        self._stopped.set()


def test_stop_during_a_stall_returns_promptly():
    source = StallingSource()
    stop = SourceStopEvent(source)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    t0 = time.monotonic()
    summary = run_loop(source, FakePipeline(), [Sink()], [], stop, 0, step_fn=fake_step)
    assert summary.frames == 2 and summary.stopped_by == "signal" and time.monotonic() - t0 < 2.0


def test_source_stop_event_without_stop_method():
    stop = SourceStopEvent(object())
    stop.set()
    assert stop.is_set()


def test_progress_line_every_period_with_total_and_eta(caplog):
    """A long file used to run silently from the first log line to the summary."""
    now = [0.0]
    hook = ProgressHook(total=100, every_s=10.0, clock=lambda: now[0])
    hook.on_start()
    tracks = Detections(np.zeros((2, 4), np.float32), np.ones(2, np.float32), np.arange(2))
    with caplog.at_level(logging.INFO, logger="vsdmot.edge.runner"):
        for i in range(1, 41):  # 4 frames per second
            now[0] = i * 0.25
            hook.on_frame(FrameResult(i, 0.0, 0.9, 0.0, "skipped" if i % 2 else "fresh", tracks, {}))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
    assert lines == ["progress: frame 40/100 (40%, ETA 15 s), 4.0 FPS, 2 tracks, semantic skipped 50%"]
    hook.total = 30  # a header count the file outran: no percentage, no ETA
    assert hook._of_total(4.0) == "40"



def test_progress_and_summary_say_how_much_a_live_source_dropped(caplog):
    """A camera outpacing the pipeline: the share of its frames the tracker never saw is in the log."""
    from vsdmot.edge.sources import SourceStats

    stats = SourceStats(130, 60, 0, 0, 0, 0, True, False, 0.0, "", warmup=10)
    now = [0.0]
    hook = ProgressHook(every_s=1.0, clock=lambda: now[0])
    hook.on_start()
    with caplog.at_level(logging.INFO, logger="vsdmot.edge.runner"):
        now[0] = 2.0
        hook.on_frame(FrameResult(1, 0.0, 0.9, 0.0, "skipped", Detections(np.zeros((0, 4)), np.zeros(0)), {}), stats)
    assert "source dropped 60 of 120 frames (50%: the pipeline is slower than the source" in caplog.text
    assert drop_note(None) == "" and drop_note(SourceStats(5, 0, 0, 0, 0, 0, True, False, 0.0, "")) == ""
    after_reconnect = SourceStats(449, 13, 0, 0, 0, 1, True, False, 0.0, "")  # FFmpeg's buffer handed over at once
    assert "3%: the burst of buffered frames after 1 reconnect(s) or stall(s)" in drop_note(after_reconnect)


# -- overlap: the next frame perceived while this one is tracked (real pipeline, shipped bundle) -------
@pytest.fixture(scope="module")
def demo_frames():
    import itertools

    from vsdmot.runtime.sources import open_file_source

    src = open_file_source(os.path.join(os.path.dirname(__file__), "..", "..", "runtime", "assets", "demo.mp4"))
    frames = list(itertools.islice(iter(src), 24))
    src.close()
    return frames


def shipped_pipeline(**over):
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle
    from vsdmot.runtime.config import load_config
    from vsdmot.runtime.pipeline import build_pipeline

    cfg = load_config(None, {"pipeline.backend": "onnxruntime", "pipeline.threads": 1, **over})
    return build_pipeline(load_bundle(DEFAULT_BUNDLE), cfg, fps=7.0)


class Rows(Sink):
    def write(self, result, image=None):
        super().write(result, image)
        self.rows = [*getattr(self, "rows", []), (result.index, result.tracks.track_id.tolist(),
                                                  result.tracks.xyxy.round(3).tolist(), result.semantic)]


@pytest.mark.parametrize("policy", ["auto", "always"])
def test_overlap_gives_the_sequential_results(demo_frames, policy):
    out = {}
    for overlap in (False, True):
        p, sink = shipped_pipeline(**{"semantics.policy": policy}), Rows()
        summary = run_loop(iter(demo_frames), p, [sink], overlap=overlap)
        p.close()
        out[overlap] = (sink.rows, summary.semantic, summary.frames, sink.closed)
    assert out[True] == out[False] and out[True][2] == len(demo_frames) and out[True][3]
    assert {"quality", "semantics", "detector", "tracker", "total"} <= set(summary.latency_ms)


def test_overlap_perceives_no_frame_it_does_not_track(demo_frames):
    p = shipped_pipeline(**{"semantics.policy": "always"})
    summary = run_loop(iter(demo_frames), p, [Sink()], max_frames=5, overlap=True)
    p.close()
    assert summary.frames == 5 and summary.stopped_by == "max_frames" and summary.semantic["fresh"] == 5

    stop, seen = threading.Event(), []

    class Stopping(Sink):
        def write(self, result, image=None):
            super().write(result, image)
            if len(self.written) == 3:
                stop.set()  # a SIGTERM: the frame already perceived is still tracked

    def pulled():
        for f in demo_frames:
            seen.append(f.index)
            yield f

    p, sink = shipped_pipeline(**{"semantics.policy": "always"}), Stopping()
    summary = run_loop(pulled(), p, [sink], stop_event=stop, overlap=True)
    p.close()
    assert summary.stopped_by == "signal" and sink.written == seen and summary.semantic["fresh"] == len(seen)


def test_overlap_a_failing_detector_stops_the_run_with_its_error(demo_frames):
    p, sink = shipped_pipeline(), Sink()
    real = p.detector.detect
    calls = []

    def detect(image):
        calls.append(1)
        if len(calls) == 4:
            raise ValueError("input 'images': expected (1, 3, 416, 416)")
        return real(image)

    p.detector.detect = detect
    with pytest.raises(ValueError, match="expected"):
        run_loop(iter(demo_frames), p, [sink], overlap=True)
    p.close()
    assert sink.closed and sink.written == [1, 2, 3]  # as without overlap: what came before the failure is kept
