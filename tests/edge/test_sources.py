"""Live-source logic with a fake capture (queue, drops, stalls, backoff, close), CSI without
GStreamer, and `open_source` dispatch. The fake stands in for cv2.VideoCapture to make the
queue and timing logic deterministic; real streams are in test_streams.py."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest

from vsdmot.edge.gst import CsiSpec, csi_pipeline, has_gstreamer, parse_csi
from vsdmot.edge.capture import ffmpeg_options
from vsdmot.edge import sources as S
from vsdmot.edge.sources import FileSource, LiveFrame, LiveOptions, LiveSource, live_options, open_source, rotated
from vsdmot.runtime.config import ServiceConfig, SourceConfig
from vsdmot.runtime.errors import SourceError

FAST = dict(queue_size=16, stall_timeout_s=0.3, reconnect_initial_s=0.02, reconnect_max_s=0.08, read_timeout_s=0.2)


def image(k: int) -> np.ndarray:
    """A distinct 48x64 frame per k."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[k % 48, :, :] = 255
    img[:, k % 64, 1] = 128 + k % 100
    return img


class FakeCapture:
    """Gives `frames` distinct images, then either blocks (a quiet camera), repeats the last one
    with ok=True (a stuck buffer) or fails (an unplug)."""

    def __init__(self, frames: int, then: str = "block", start: int = 0, block_s: float = 0.2, stamps: bool = False,
                 hold: int = 0, size: tuple[int, int] = (0, 0)):
        self.k, self.frames, self.then, self.start, self.block_s = 0, frames, then, start, block_s
        self.stamps, self.reads = stamps, 0  # stamps: POS_MSEC rises per read (a live driver's clock)
        self.hold, self.go = hold, threading.Event()  # hold: after this many frames, wait for go
        self.size = size  # (w, h) the capture reports; (0, 0) = unknown, like the fake's default
        self.released = threading.Event()

    def read(self):
        self.reads += 1
        if self.hold and self.k >= self.hold:
            self.go.wait(5.0)
        if self.k < self.frames:
            self.k += 1
            return True, image(self.start + self.k)
        if self.then == "stuck":
            time.sleep(0.005)
            return True, image(self.start + self.k)
        if self.then == "fail":
            return False, None
        time.sleep(self.block_s)  # a quiet camera: read blocks until FFmpeg's read timeout
        return False, None

    def get(self, prop):
        if prop == cv2.CAP_PROP_POS_MSEC:
            return 40.0 * self.reads if self.stamps else 0.0
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            return float(self.size[prop == cv2.CAP_PROP_FRAME_HEIGHT])
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released.set()


class Opener:
    """Hands out captures from a list; an exception in the list is raised as an open failure."""

    def __init__(self, *caps):
        self.caps, self.calls = list(caps), []

    def __call__(self):
        self.calls.append(time.monotonic())
        cap = self.caps.pop(0) if len(self.caps) > 1 else self.caps[0]
        if isinstance(cap, Exception):
            raise cap
        return cap


def take(src, n: int, timeout: float = 5.0) -> list:
    """n frames from src, or fewer if a watchdog closes it after `timeout` (never hangs)."""
    watchdog = threading.Timer(timeout, src.close)
    watchdog.start()
    try:
        it = iter(src)
        return [f for _, f in zip(range(n), it)]
    finally:
        watchdog.cancel()


def wait_until(cond, timeout=3.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_queue_drops_oldest_and_counts():
    cap = FakeCapture(10, hold=1)
    src = LiveSource("fake", Opener(cap), LiveOptions(queue_size=3, stall_timeout_s=30))
    it = iter(src)
    got = [next(it)]  # the loop is running; then it falls behind by 9 frames
    cap.go.set()
    wait_until(lambda: src.stats().frames_read == 10)
    got += [next(it) for _ in range(3)]
    src.close()
    assert [f.index for f in got] == [1, 8, 9, 10]  # the newest three survive; the gap is the drops
    assert src.stats().dropped == 6 and src.stats().warmup == 0 and src.fps == 30.0
    np.testing.assert_array_equal(got[-1].image, image(10))
    assert all(isinstance(f, LiveFrame) and f.monotonic > 0 and f.wall_time > 1e9 for f in got)


def test_frames_read_before_the_first_pull_are_warmup_not_drops():
    """While the model loads (minutes for a first TensorRT build) the reader keeps the newest
    frames; those it replaced were never due. They counted as drops and the MOT file started at
    frame 17 (tcp stream, 8 s run)."""
    cap = FakeCapture(10, hold=7)
    src = LiveSource("fake", Opener(cap), LiveOptions(queue_size=3, stall_timeout_s=30))
    wait_until(lambda: src.stats().frames_read == 7)  # the pipeline is still being built
    it = iter(src)
    got = [next(it) for _ in range(3)]
    cap.go.set()  # then frames keep coming while the loop keeps up
    got += [next(it) for _ in range(3)]
    s = src.stats()
    src.close()
    assert [f.index for f in got] == [1, 2, 3, 4, 5, 6]  # numbering starts at the oldest frame kept
    for f, k in zip(got, range(5, 11)):  # frames 1-4 were replaced by newer ones before the start
        np.testing.assert_array_equal(f.image, image(k))
    assert s.warmup == 4 and s.dropped == 0 and s.frames_read == 10


def test_stuck_buffer_is_a_stall_then_reconnects():
    opener = Opener(FakeCapture(3, then="stuck"), FakeCapture(5, then="block", start=100))
    with LiveSource("fake", opener, LiveOptions(**FAST)) as src:
        t0 = time.monotonic()
        frames = take(src, 8)
        waited = time.monotonic() - t0
        s = src.stats()
    assert s.stalls == 1 and s.reconnects == 1 and s.duplicates > 10 and len(opener.calls) == 2
    assert [f.index for f in frames] == list(range(1, 9))  # indices keep rising across reconnects
    assert 0.3 <= waited < 2.0


def test_a_frozen_image_is_not_fresh_again_after_each_reopen():
    """The duplicate check forgot the last frame at every re-open, so a source that re-opens fine
    but hands back the same frozen image (no timestamps) delivered it as fresh once per stall
    cycle: stalls ended, and the systemd watchdog was fed a stale frame every few seconds, so
    it never restarted the service."""
    opener = Opener(FakeCapture(1, then="stuck"))  # every re-open gives the same image again
    with LiveSource("fake", opener, LiveOptions(**FAST)) as src:
        wait_until(lambda: src.stats().reconnects >= 3)
        s = src.stats()
    assert s.frames_read == 1 and s.stalled and s.stalls == 1


def test_identical_frames_with_rising_timestamps_are_fresh():
    """A dark, noiseless scene repeats the same pixels, but the driver's timestamps move on."""
    with LiveSource("fake", Opener(FakeCapture(1, then="stuck", stamps=True)), LiveOptions(**FAST)) as src:
        frames = take(src, 20)
        s = src.stats()
    assert len(frames) == 20 and s.duplicates == 0 and s.stalls == 0


def test_unplug_reconnects_with_capped_backoff():
    down = SourceError("unplugged")
    opener = Opener(FakeCapture(2, then="fail"), down, down, down, down, FakeCapture(2, start=50))
    with LiveSource("fake", opener, LiveOptions(**{**FAST, "stall_timeout_s": 5})) as src:
        assert [f.index for f in take(src, 4)] == [1, 2, 3, 4]
        s = src.stats()
    gaps = np.diff(opener.calls)
    assert s.reconnects == 1 and s.read_failures == 1 and s.last_error == "unplugged"
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08 and gaps[3] < 0.2  # 0.02 0.04 0.08 0.08


def test_gives_up_after_max_failures():
    opener = Opener(FakeCapture(1, then="fail"), SourceError("gone"))
    src = LiveSource("fake", opener, LiveOptions(**FAST, max_reconnect_failures=3))
    with pytest.raises(SourceError, match="gave up after 3 failed opens: gone"):
        list(src)


def test_max_failures_counts_failed_opens_only(caplog):
    """The lost read that started the reconnects was counted as a failed open: with
    max_reconnect_failures=3 the source gave up after 2 opens had failed, logging the first one
    as 'open failed (2 in a row)' and ending with 'gave up after 3 failed opens'."""
    opener = Opener(FakeCapture(1, then="fail"), SourceError("gone"))
    src = LiveSource("fake", opener, LiveOptions(**FAST, max_reconnect_failures=3))
    with caplog.at_level("WARNING"), pytest.raises(SourceError, match="gave up after 3 failed opens: gone"):
        list(src)
    assert len(opener.calls) == 1 + 3  # the first open, then three failed re-opens
    said = [r.getMessage() for r in caplog.records if "open failed" in r.getMessage()]
    assert [m.split("(")[1].split(")")[0] for m in said] == ["1 in a row", "2 in a row", "3 in a row"]


def test_first_open_failure_raises_unless_waiting():
    with pytest.raises(SourceError, match="nope"):
        LiveSource("fake", Opener(SourceError("nope")), LiveOptions(**FAST))
    opener = Opener(SourceError("not yet"), FakeCapture(2))
    with LiveSource("fake", opener, LiveOptions(**FAST, wait_for_device=True)) as src:
        assert [f.index for f in take(src, 2)] == [1, 2]
        assert src.stats().reconnects == 0


def test_close_is_prompt_and_ends_iteration():
    cap = FakeCapture(0)
    src = LiveSource("fake", Opener(cap), LiveOptions(stall_timeout_s=30))
    done = []
    consumer = threading.Thread(target=lambda: done.append(list(src)))
    consumer.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    src.close()
    consumer.join(2)
    assert time.monotonic() - t0 < 0.5 and done == [[]] and cap.released.is_set()
    assert not src._thread.is_alive()


@pytest.mark.parametrize("channels", [None, 4])
def test_grey_and_bgra_frames_become_bgr(channels):
    class Odd(FakeCapture):
        def read(self):
            ok, img = super().read()
            if ok:
                img = img[:, :, 0] if channels is None else np.dstack([img, img[:, :, :1]])
            return ok, img

    with LiveSource("fake", Opener(Odd(3)), LiveOptions(**FAST)) as src:
        frames = take(src, 3)
    assert [f.image.shape for f in frames] == [(48, 64, 3)] * 3


def test_stop_ends_iteration_while_waiting_for_frames():
    src = LiveSource("fake", Opener(FakeCapture(2, block_s=1)), LiveOptions(stall_timeout_s=30))
    threading.Timer(0.3, src.stop).start()  # e.g. a SIGTERM handler during an outage
    t0 = time.monotonic()
    assert [f.index for f in src] == [1, 2] and time.monotonic() - t0 < 1.0
    src.close()


def test_stats_report_a_stall_while_read_blocks():
    with LiveSource("fake", Opener(FakeCapture(1, block_s=1)), LiveOptions(stall_timeout_s=0.2)) as src:
        wait_until(lambda: src.stats().stalled, timeout=1.0)
        assert src.stats().stalls == 1 and src.stats().frames_read == 1


@pytest.mark.parametrize(
    "camera, source, exception",
    [
        (None, None, ValueError),
        ("/dev/video0", "x.mp4", ValueError),
        ("webcam", None, ValueError),
        ("csi://front", None, ValueError),
        (None, "ftp://127.0.0.1/x.ts", ValueError),
        ("/dev/video99", None, SourceError),
        (None, "/nonexistent/clip.mp4", SourceError),
    ],
)
def test_open_source_bad_input(camera, source, exception):
    with pytest.raises(exception):
        open_source(camera=camera, source=source, opts=LiveOptions())


def test_a_node_that_is_no_camera_is_named_so():
    """It used to say 'busy, or no permission' for /dev/null."""
    with pytest.raises(SourceError, match="/dev/null is not a V4L2 video device"):
        open_source(camera="/dev/null", opts=LiveOptions())


def test_absent_camera_index_names_its_device_node():
    """Index 99 is /dev/video99: say it is absent, not 'busy, or no permission'."""
    with pytest.raises(SourceError, match=r"no such device \(/dev/video99 does not exist"):
        open_source(camera="99", opts=LiveOptions())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"queue_size": 0}, "queue_size"),
        ({"stall_timeout_s": 0}, "stall_timeout_s"),
        ({"reconnect_initial_s": 2, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"fourcc": "MJPEG"}, "fourcc"),
        ({"rtsp_transport": "http"}, "rtsp_transport"),
        ({"width": -1}, "width"),
    ],
)
def test_live_options_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LiveOptions(**kwargs)


def test_live_options_from_config():
    opts = live_options(SourceConfig(width=640, height=480, fourcc="MJPG", loop=True), ServiceConfig(stall_timeout_s=2))
    assert (opts.width, opts.height, opts.fourcc, opts.loop, opts.stall_timeout_s) == (640, 480, "MJPG", True, 2.0)


def test_csi_without_gstreamer_explains():
    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer; the error path needs one without")
    with pytest.raises(SourceError, match="CSI cameras need OpenCV built with GStreamer.*JetPack"):
        src = open_source(camera="csi://0")
        src.close()


@pytest.mark.parametrize(
    "info, expected",
    [
        ("  Video I/O:\n    GStreamer:                   YES (1.20.3)\n", True),
        ("  Video I/O:\n    GStreamer:                   NO\n", False),
        ("  Video I/O:\n    FFMPEG: YES\n", False),
    ],
)
def test_has_gstreamer_parses_build_info(info, expected):
    assert has_gstreamer(info) is expected


def test_csi_pipeline_text():
    assert parse_csi("csi://1") == 1
    text = csi_pipeline(CsiSpec(1, 1920, 1080, 29.97))
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080")
    assert "framerate=2997/100" in text and "nvvidconv" in text and "format=BGRx" in text
    assert text.endswith("appsink drop=1 max-buffers=1 sync=false")


def test_ffmpeg_options_per_scheme():
    opts = LiveOptions()
    assert ffmpeg_options("rtsp://cam/stream", opts) == "rtsp_transport;tcp"
    assert "overrun_nonfatal;1" in ffmpeg_options("udp://127.0.0.1:5000", opts)
    assert ffmpeg_options("tcp://127.0.0.1:5000", opts) == ffmpeg_options("http://h/x.ts", opts) == ""


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "tiny.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(1, 6):
        writer.write(image(k))
    writer.release()
    return path


def test_file_source_ends_cleanly(tiny_video):
    with open_source(source=str(tiny_video)) as src:
        assert isinstance(src, FileSource) and src.fps == 10 and src.live is False  # outputs wait for it
        assert rotated(src, 90).live is False and LiveSource.live is True
        frames = list(src)
        assert [f.index for f in frames] == [1, 2, 3, 4, 5] and src.stats().frames_read == 5



@pytest.mark.parametrize("degrees, turn", [(90, lambda a: np.rot90(a, -1)), (180, lambda a: np.rot90(a, 2)),
                                           (270, lambda a: np.rot90(a, 1))])
def test_rotated_source_turns_every_frame_clockwise_and_keeps_the_rest(tiny_video, degrees, turn):
    with open_source(source=str(tiny_video)) as plain:
        want = [f.image for f in plain]
    src = rotated(open_source(source=str(tiny_video)), degrees)
    with src:
        frames = list(src)
        assert [f.index for f in frames] == [1, 2, 3, 4, 5] and src.fps == 10 and src.frame_count == 5
        assert src.stats().frames_read == 5  # the inner source's counters, through the wrapper
    for f, w in zip(frames, want):
        np.testing.assert_array_equal(f.image, turn(w))  # (48, 64, 3) -> (64, 48, 3) at 90 / 270


def test_rotation_zero_is_the_source_itself_and_others_are_refused(tiny_video):
    src = open_source(source=str(tiny_video))
    assert rotated(src, 0) is src
    with pytest.raises(ValueError, match="0, 90, 180 or 270"):
        rotated(src, 45)
    src.close()

def test_file_source_loops_with_rising_indices(tiny_video):
    with open_source(source=str(tiny_video), opts=LiveOptions(loop=True)) as src:
        it = iter(src)
        frames = [next(it) for _ in range(12)]
    assert [f.index for f in frames] == list(range(1, 13))
    assert frames[5].timestamp == pytest.approx(0.5)


@pytest.mark.parametrize(
    "camera, source, opts, words",
    [
        (None, "DEMO", LiveOptions(width=320, height=240),
         ["--width, --height: a camera's capture format; a file or stream keeps its own (ignored)"]),
        ("/dev/video99", None, LiveOptions(loop=True), ["--loop: replays files only; ignored for this camera"]),
        (None, "DEMO", LiveOptions(loop=True, fps=7), []),
    ],
)
def test_options_a_source_does_not_use_are_named(caplog, camera, source, opts, words):
    """--width/--height/--fourcc on a file and --loop on a camera used to be ignored silently."""
    from vsdmot.edge.run_cmd import DEMO_CLIP

    with caplog.at_level(logging.WARNING, logger="vsdmot.edge.sources"):
        try:
            open_source(camera=camera, source=str(DEMO_CLIP) if source else None, opts=opts).close()
        except SourceError:  # no camera here: the warning comes first
            pass
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == words


@pytest.mark.parametrize("size, ok", [((16, 16), False), ((640, 24), False), ((32, 32), True), ((0, 0), True)])
def test_live_frames_under_32_px_are_refused_at_open(size, ok):
    """The size the capture reports is checked before the run opens its outputs ((0, 0): not known yet)."""
    cap = FakeCapture(3, size=size)
    if ok:
        LiveSource("fake", Opener(cap), LiveOptions(**FAST)).close()
        return
    with pytest.raises(SourceError, match=f"fake: frames are {size[0]}x{size[1]} px; expected at least 32x32"):
        LiveSource("fake", Opener(cap), LiveOptions(**FAST))
    assert cap.released.is_set()
    later = LiveSource("fake", Opener(FakeCapture(3, size=size)),  # opened by the reader thread
                       LiveOptions(**{**FAST, "wait_for_device": True, "max_reconnect_failures": 2}))
    with pytest.raises(SourceError, match="gave up after 2 failed opens: fake: frames are"):
        take(later, 1)


class BlackCapture:
    def read(self):
        time.sleep(0.001)
        return True, np.zeros((48, 64, 3), np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_a_live_source_of_black_frames_says_so_once(caplog):
    opts = LiveOptions(queue_size=4, stall_timeout_s=5.0, detect_duplicates=False)
    with caplog.at_level(logging.WARNING), LiveSource("rtsp://dvr/1", lambda: BlackCapture(), opts) as src:
        deadline = time.monotonic() + 5
        while src.stats().frames_read < 3 * S.BLANK_WARN and time.monotonic() < deadline:
            time.sleep(0.01)
    warned = [r for r in caplog.records if "all black" in r.getMessage()]
    assert len(warned) == 1 and "interlaced" in warned[0].getMessage()
