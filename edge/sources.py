"""Live frame sources (V4L2 and CSI cameras, network streams) and `open_source`, the one entry
`vsdmot-edge run` calls. Files, image folders and MOTChallenge sequences come from
`vsdmot.runtime.sources` and end cleanly.

A live source reads on its own thread into a bounded queue that drops the OLDEST frame when
the loop falls behind (counted). A frame counts as fresh only when it differs from the one
before: a stuck camera whose `read()` keeps reporting success with the same buffer is caught
by comparing a small subsample of each frame. No fresh frame within `stall_timeout_s` is a
stall, and the capture is re-opened with exponential backoff (capped). Frame indices keep
rising across reconnects; a gap in them is a dropped frame. Frames read before the loop's first
pull (while the model loads: minutes for a first TensorRT build) are warm-up, not drops: the
queue keeps the newest, and numbering starts at 1 with the oldest still queued. `stats()` gives
a `SourceStats` snapshot for the loop, the stats file and the systemd watchdog (fed only on
fresh frames).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from vsdmot.runtime.errors import SourceError
from vsdmot.runtime.ffmpeg_capture import blank
from vsdmot.runtime.sources import FrameSource, VideoFileSource, check_frame_size, open_file_source
from vsdmot.runtime.types import Frame

from .capture import open_stream, open_v4l2
from .gst import CSI_DEFAULT, CsiSpec, open_csi, parse_csi

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "tcp", "udp")
BLANK_WARN = 30  # all-black frames in a row before a live source says so


@dataclass(frozen=True)
class LiveOptions:
    width: int = 0  # camera capture width in pixels (0 = the device's default; CSI: 1280)
    height: int = 0  # camera capture height in pixels (0 = the device's default; CSI: 720)
    fps: float = 0.0  # camera rate to request; a file's true rate (0 = device default / header)
    fourcc: str = ""  # V4L2 pixel format, e.g. "MJPG" or "YUYV" ("" = the device's default)
    queue_size: int = 4  # frames buffered between the reader thread and the loop; oldest dropped
    stall_timeout_s: float = 5.0  # no fresh frame for this long is a stall: reconnect
    reconnect_initial_s: float = 0.5  # first wait before re-opening; doubles per failure
    reconnect_max_s: float = 10.0  # cap on that wait
    max_reconnect_failures: int = 0  # give up after this many failed opens in a row (0 = never)
    open_timeout_s: float = 10.0  # streams: FFmpeg connect/probe timeout
    read_timeout_s: float = 3.0  # streams: FFmpeg per-read timeout (bounds a blocked read)
    rtsp_transport: str = "tcp"  # rtsp: "tcp" (robust through NAT/loss) or "udp"
    wait_for_device: bool = False  # keep retrying a first open that fails, instead of raising
    detect_duplicates: bool = True  # a frame identical to the previous one (same timestamp) is not fresh
    loop: bool = False  # files only: restart at the end (soak runs)

    def __post_init__(self) -> None:
        for name in ("width", "height", "fps", "max_reconnect_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"LiveOptions.{name}: expected >= 0, got {getattr(self, name)!r}")
        for name in ("queue_size", "stall_timeout_s", "reconnect_initial_s", "open_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LiveOptions.{name}: expected > 0, got {getattr(self, name)!r}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(f"LiveOptions.reconnect_max_s: expected >= reconnect_initial_s "
                             f"({self.reconnect_initial_s}), got {self.reconnect_max_s}")
        if self.fourcc and len(self.fourcc) != 4:
            raise ValueError(f"LiveOptions.fourcc: expected 4 characters, got {self.fourcc!r}")
        if self.rtsp_transport not in ("tcp", "udp"):
            raise ValueError(f"LiveOptions.rtsp_transport: expected 'tcp' or 'udp', got {self.rtsp_transport!r}")


def live_options(source_cfg: Any, service_cfg: Any = None, **overrides: Any) -> LiveOptions:
    """LiveOptions from the run config's [source] (and [service] for the stall timeout)."""
    kw = {k: getattr(source_cfg, k) for k in ("width", "height", "fps", "fourcc", "loop")}
    if service_cfg is not None:
        kw["stall_timeout_s"] = service_cfg.stall_timeout_s
    return LiveOptions(**{**kw, **overrides})


@dataclass(frozen=True)
class SourceStats:
    frames_read: int  # fresh frames captured (delivered, dropped or warm-up)
    dropped: int  # fresh frames dropped because the queue was full (oldest first) once the loop pulls
    duplicates: int  # frames identical to the one before (stuck buffer), not delivered
    read_failures: int  # read() calls that returned no frame
    stalls: int  # episodes of no fresh frame for longer than stall_timeout_s
    reconnects: int  # successful re-opens after the first open
    connected: bool  # a capture is open now
    stalled: bool  # no fresh frame for longer than stall_timeout_s now
    last_fresh_monotonic: float  # time.monotonic() of the last fresh frame (0.0 = none yet)
    last_error: str  # the last open or read problem ("" = none)
    warmup: int = 0  # fresh frames replaced by newer ones before the loop's first pull (not drops)


@dataclass(slots=True, frozen=True)
class LiveFrame(Frame):
    """A Frame with capture clocks. `timestamp` is monotonic seconds since the source opened."""

    wall_time: float = 0.0  # time.time() at capture, seconds since the epoch
    monotonic: float = 0.0  # time.monotonic() at capture


class Capture(Protocol):
    """What cv2.VideoCapture offers and the reader uses (tests pass a fake)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...

    def get(self, prop: int) -> float: ...


def signature(img: np.ndarray) -> np.ndarray:
    """A ~64x48 subsample of the frame; equal signatures = the same buffer (cheap: ~10 kB)."""
    step = max(1, min(img.shape[0] // 48, img.shape[1] // 64))
    return img[::step, ::step].copy()


class _Counters:
    """Mutable counters behind SourceStats; guarded by LiveSource._lock."""

    def __init__(self, now: float):
        self.frames_read = self.dropped = self.duplicates = self.read_failures = self.warmup = 0
        self.stalls = self.reconnects = 0
        self.connected, self.in_stall = False, False
        self.last_fresh, self.opened_at, self.last_error = 0.0, now, ""


class LiveSource:
    """Frames from a capture that `opener()` makes, read on a thread; see the module doc."""

    live = True  # paced by the camera or stream: what cannot keep up is dropped, not waited for

    def __init__(self, name: str, opener: Callable[[], Capture], opts: LiveOptions, fps: float = 0.0):
        self.name, self.opts, self._opener = name, opts, opener
        self._lock = threading.Condition()
        self._queue: deque[LiveFrame] = deque(maxlen=opts.queue_size)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._c = _Counters(self._t0)
        self._failures, self._index, self._last_sig, self._last_stamp, self._fatal = 0, 0, None, 0.0, ""
        self._blank_run = 0  # all-black frames in a row (BLANK_WARN of them: logged once per episode)
        self._open_failures = 0  # failed opens in a row (max_reconnect_failures); _failures drives the backoff
        self._opened_once, self._started = False, False  # _started: the loop has pulled (guarded by _lock)
        self._cap: Capture | None = None
        if not opts.wait_for_device:
            self._cap = self._open_or_raise()
        cap_fps = self._cap.get(cv2.CAP_PROP_FPS) if self._cap is not None else 0.0
        self.fps = float(opts.fps or (cap_fps if 0 < cap_fps <= 240 else 0) or fps or 25.0)
        self._thread = threading.Thread(target=self._run, name=f"source:{name}", daemon=True)
        self._thread.start()

    def _open_or_raise(self) -> Capture:
        cap = self._opener()  # raises SourceError with the reason
        self._check_size(cap)
        with self._lock:
            self._c.connected, self._c.opened_at = True, time.monotonic()
            self._c.reconnects += self._opened_once
        self._opened_once = True
        return cap

    def _check_size(self, cap: Capture) -> None:
        """Refuse frames too small for the quality gate at open (the size the capture reports; 0 =
        not known yet): the first open raises before a run creates its outputs; a re-open (or a
        first open with wait_for_device) counts as a failed open."""
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if w > 0 and h > 0:
            try:
                check_frame_size(w, h, self.name)
            except SourceError:
                cap.release()
                raise

    # -- reader thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._cap is None and not self._reconnect():
                    continue
                self._read_one()
                self._check_stall(time.monotonic())
        except Exception as e:  # a bug or a driver crash must end iteration, not hang it
            log.exception("%s: reader thread failed", self.name)
            self._fail(f"{self.name}: reader failed: {e}")
        finally:
            self._release()

    def _read_one(self) -> None:
        ok, img = self._cap.read()
        now = time.monotonic()
        if not ok or img is None or img.size == 0:
            with self._lock:
                self._c.read_failures += 1
            self._drop_capture("read() returned no frame (unplugged, stream ended or timed out)")
            return
        if self.opts.detect_duplicates and self._is_repeat(img):
            with self._lock:
                self._c.duplicates += 1
            return
        self._note_blank(img)
        self._push(img, now)

    def _note_blank(self, img: np.ndarray) -> None:
        """Warn once when BLANK_WARN frames in a row are all zero: a capped lens, or an interlaced
        stream OpenCV cannot convert (runtime/ffmpeg_capture.py: files are decoded through ffmpeg then)."""
        self._blank_run = self._blank_run + 1 if blank(img) else 0
        if self._blank_run == BLANK_WARN:
            log.warning("%s: %d frames in a row are all black: a covered lens, or an interlaced stream OpenCV "
                        "cannot convert (its log says 'Cannot convert interlaced'); relay it deinterlaced, e.g. "
                        "ffmpeg -i URL -vf yadif -c:v libx264 -f mpegts udp://127.0.0.1:5000, then --source "
                        "udp://127.0.0.1:5000", self.name, BLANK_WARN)

    def _is_repeat(self, img: np.ndarray) -> bool:
        """The same buffer again: identical subsample and no newer capture timestamp. Where the
        backend gives timestamps (V4L2 buffers, GStreamer and FFmpeg pts), an identical frame with
        a newer one is fresh (a dark, noiseless scene); without them, content alone decides."""
        sig, stamp = signature(img), self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0
        prev_sig, prev_stamp = self._last_sig, self._last_stamp
        self._last_sig, self._last_stamp = sig, stamp
        same = prev_sig is not None and np.array_equal(sig, prev_sig)
        return same and not (stamp > 0 and stamp > prev_stamp)

    def _push(self, img: np.ndarray, now: float) -> None:
        if img.ndim == 2 or img.shape[2] != 3:  # a grey camera, or BGRA from some backends
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_BGRA2BGR)
        img, wall = np.ascontiguousarray(img), time.time()
        with self._lock:  # the index too: _start() renumbers under the lock
            c = self._c
            c.frames_read, c.last_fresh, c.in_stall = c.frames_read + 1, now, False
            if len(self._queue) == self._queue.maxlen:  # deque(maxlen) drops the oldest on append
                if self._started:
                    c.dropped += 1
                else:
                    c.warmup += 1
            self._index += 1
            self._queue.append(LiveFrame(self._index, img, now - self._t0, wall, now))
            self._lock.notify()
        self._failures = 0

    def _note_stall(self, now: float) -> bool:
        """Whether no fresh frame came for stall_timeout_s; counts each episode once. Holds _lock."""
        c = self._c
        quiet = now - (c.last_fresh or self._t0)
        if quiet > self.opts.stall_timeout_s and not c.in_stall:
            c.in_stall, c.stalls = True, c.stalls + 1
            log.warning("%s: stall: no fresh frame for %.1f s", self.name, quiet)
        return quiet > self.opts.stall_timeout_s

    def _check_stall(self, now: float) -> None:
        """Count a stall episode, and re-open a capture that gave nothing fresh for the timeout."""
        with self._lock:
            self._note_stall(now)
            since = now - max(self._c.last_fresh, self._c.opened_at)
        if self._cap is not None and since > self.opts.stall_timeout_s:
            self._drop_capture(f"no fresh frame for {since:.1f} s")

    def _drop_capture(self, reason: str) -> None:
        log.warning("%s: %s; reconnecting", self.name, reason)
        self._release()
        self._last_stamp = 0.0  # the next capture's clock starts afresh; the last image is kept, so a
        # re-open that hands back the same frozen image is no fresh frame (nor food for the watchdog)
        with self._lock:
            self._c.connected, self._c.last_error = False, reason
        self._failures += 1

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _reconnect(self) -> bool:
        """Wait the backoff, then try one open. False when it failed (or we are closing)."""
        if self._failures:
            delay = min(self.opts.reconnect_initial_s * 2 ** min(self._failures - 1, 30), self.opts.reconnect_max_s)
            if self._stop.wait(delay):
                return False
        try:
            cap = self._open_or_raise()
        except SourceError as e:
            return self._open_failed(str(e))
        self._cap, self._open_failures = cap, 0
        log.info("%s: connected", self.name)
        return True

    def _open_failed(self, reason: str) -> bool:
        self._failures, self._open_failures = self._failures + 1, self._open_failures + 1
        log.warning("%s: open failed (%d in a row): %s", self.name, self._open_failures, reason)
        with self._lock:
            self._c.last_error = reason
        self._check_stall(time.monotonic())
        limit = self.opts.max_reconnect_failures
        if limit and self._open_failures >= limit:
            self._fail(f"{self.name}: gave up after {self._open_failures} failed opens: {reason}")
        return False

    def _fail(self, message: str) -> None:
        with self._lock:
            self._fatal = message
            self._lock.notify_all()
        self._stop.set()

    # -- consumer side ---------------------------------------------------------------------
    def _start(self) -> None:
        """The loop's first pull. Frames replaced in the queue before it were read while the model
        loaded, when no frame was due: warm-up, not drops, and their numbers are given back so the
        oldest frame still queued is frame 1 (a MOT file starts at 1). Holds _lock."""
        self._started = True
        base = self._queue[0].index - 1 if self._queue else self._index
        if base:
            self._queue = deque((dataclasses.replace(f, index=f.index - base) for f in self._queue),
                                maxlen=self._queue.maxlen)
            self._index -= base
            log.info("%s: %d frames read while the pipeline started were skipped (warm-up, not drops)",
                     self.name, base)

    def __iter__(self) -> Iterator[LiveFrame]:
        """Yield frames until close(); raise SourceError if the reader gave up."""
        with self._lock:
            if not self._started:
                self._start()
        while True:
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._lock.wait(0.25)
                    self._note_stall(time.monotonic())
                if self._queue:
                    frame = self._queue.popleft()
                elif self._fatal:
                    raise SourceError(self._fatal)
                else:
                    return
            yield frame

    def stats(self) -> SourceStats:
        now = time.monotonic()
        with self._lock:
            c, stalled = self._c, self._note_stall(now)
            return SourceStats(c.frames_read, c.dropped, c.duplicates, c.read_failures, c.stalls,
                               c.reconnects, c.connected, stalled, c.last_fresh, c.last_error, c.warmup)

    def stop(self) -> None:
        """End iteration promptly (within 0.25 s) without waiting for the reader: safe to call
        from a signal handler or another thread while the loop waits on a stalled source."""
        self._stop.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop the reader; waits at most one read timeout (a blocked FFmpeg read) plus a second."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(self.opts.read_timeout_s + 1.0 if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("%s: reader thread still blocked in read(); leaving it (daemon)", self.name)
                _BLOCKED.append(self.name)

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_BLOCKED: list[str] = []  # sources whose reader thread close() left blocked in a read


def readers_left_blocked() -> list[str]:
    """Names of the live sources whose reader was left blocked in FFmpeg: the process must not
    tear its interpreter down under them (edge/cli.py console_main)."""
    return list(_BLOCKED)


# -- files ----------------------------------------------------------------------------------------
class RemoteVideoSource(VideoFileSource):
    """A finite video behind an http(s) URL (FFmpeg knows its frame count): every frame in order,
    ending at the last one, like a local file. As a live stream it lost most frames (decoding
    outruns the tracker) and replayed forever (each end of file was a reconnect)."""

    def __init__(self, url: str, opts: LiveOptions, cap: cv2.VideoCapture | None = None):
        self.path, self.opts, self._pending = url, opts, cap  # path: the URL, for messages
        self._setup(opts.fps or None, url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or url)

    def _capture(self) -> cv2.VideoCapture:
        cap, self._pending = self._pending, None  # the probe's capture first, then fresh opens
        return cap if cap is not None else open_stream(self.path, self.opts)

    def _open(self) -> cv2.VideoCapture:
        try:
            return super()._open()
        except SourceError as e:  # the file is often fine: the server cannot seek to an index at its end
            mp4 = self.path.split("?", 1)[0].lower().endswith((".mp4", ".mov", ".m4v"))
            if not (mp4 and "yielded no frames" in str(e)):
                raise
            raise SourceError(f"{e}. Over HTTP an .mp4 whose index (moov) is at its end needs a server that answers "
                              "range requests; or serve a copy made with `ffmpeg -i IN -c copy -movflags +faststart "
                              "OUT`") from None


class FileSource:
    """A file source with the live sources' `stats()`, optionally looping (indices keep rising).
    `opener` makes the inner source (default: `open_file_source(path)`, which sends an interlaced file
    through ffmpeg), again for each loop."""

    live = False  # a file waits for the slowest consumer: every frame reaches every output

    def __init__(self, path: str, opts: LiveOptions, opener: Callable[[], FrameSource] | None = None):
        self.path, self.opts = path, opts
        self._make = opener or (lambda: open_file_source(path, opts.fps or None))
        self._inner = self._make()
        self.fps, self.name = self._inner.fps, self._inner.name
        self.frame_count = 0 if opts.loop else getattr(self._inner, "frame_count", 0)  # 0 = unknown or endless
        self._read, self._last, self._stopped = 0, 0.0, False

    def __iter__(self) -> Iterator[Frame]:
        offset, dt = 0, 1.0 / self.fps
        while True:
            last = 0
            for f in self._inner:
                if self._stopped:
                    return
                last = f.index
                self._read, self._last = self._read + 1, time.monotonic()
                yield Frame(f.index + offset, f.image, f.timestamp + offset * dt) if offset else f
            if not self.opts.loop or last == 0:
                return
            offset += last
            self._inner.close()
            self._inner = self._make()

    def stats(self) -> SourceStats:
        return SourceStats(self._read, 0, 0, 0, 0, 0, True, False, self._last, "")

    def stop(self) -> None:
        """End iteration before the next frame (signal-safe)."""
        self._stopped = True

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the entry -------------------------------------------------------------------------------------
def is_stream_url(text: str) -> bool:
    return "://" in text and text.split("://", 1)[0].lower() in STREAM_SCHEMES


def open_camera(camera: str, opts: LiveOptions) -> LiveSource:
    """`/dev/videoN`, a V4L2 index (`0`) or `csi://N` on a Jetson."""
    if camera.startswith("csi://"):
        w, h, fps = CSI_DEFAULT
        spec = CsiSpec(parse_csi(camera), opts.width or w, opts.height or h, opts.fps or fps)
        return LiveSource(camera, lambda: open_csi(spec), opts, spec.fps)
    if not (camera.isdigit() or camera.startswith("/dev/")):
        raise ValueError(f"camera: expected /dev/videoN, a V4L2 index or csi://N, got {camera!r}")
    return LiveSource(camera, lambda: open_v4l2(camera, opts), opts)


def _warn_ignored(opts: LiveOptions, kind: str) -> None:
    """Name the options this kind of source (camera, stream, file) does not use, instead of
    ignoring them silently."""
    unused = [f"--{n}" for n in ("width", "height", "fourcc") if getattr(opts, n)]
    if unused and kind != "camera":
        log.warning("%s: a camera's capture format; a file or stream keeps its own (ignored)", ", ".join(unused))
    if opts.loop and kind != "file":
        log.warning("--loop: replays files only; ignored for this %s", kind)


def open_stream_source(url: str, opts: LiveOptions) -> FrameSource:
    """A live stream (LiveSource), or a finite video file when an http(s) URL has a frame count
    (an .mp4 or .mkv on a web server; live MPEG-TS, MJPEG and HLS report none)."""
    if opts.wait_for_device:  # no probe: the first open may fail and is retried in the background
        return LiveSource(url, lambda: open_stream(url, opts), opts)
    first = [open_stream(url, opts)]  # raises SourceError with the reason
    count = first[0].get(cv2.CAP_PROP_FRAME_COUNT)
    if url.split("://", 1)[0].lower() in ("http", "https") and count > 0:
        log.info("%s: a video file (%d frames), read to its end like a local one", url, count)
        return FileSource(url, opts, lambda: RemoteVideoSource(url, opts, first.pop() if first else None))
    return LiveSource(url, lambda: first.pop() if first else open_stream(url, opts), opts)


ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class RotatedSource:
    """Every frame of `inner` turned `degrees` clockwise (`[source] rotate`): a camera mounted sideways
    or upside down shows the detector upright people. Index and timestamp are the inner frame's."""

    def __init__(self, inner: Any, degrees: int):
        self.inner, self.code = inner, ROTATIONS[degrees]

    def __iter__(self) -> Iterator[Frame]:
        for f in self.inner:
            yield dataclasses.replace(f, image=cv2.rotate(f.image, self.code))  # (H, W, 3) -> (W, H, 3) at 90 / 270

    def __getattr__(self, name: str) -> Any:  # fps, name, frame_count, stats, stop, close: the inner source's,
        return getattr(self.inner, name)  # absent where it has none (the runner tests with getattr)

    def __enter__(self) -> RotatedSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.close()


def rotated(source: Any, degrees: int) -> Any:
    """`source` itself at 0 degrees, else a RotatedSource."""
    if degrees not in (0, *ROTATIONS):
        raise ValueError(f"rotate: expected 0, 90, 180 or 270 (degrees clockwise), got {degrees!r}")
    return RotatedSource(source, degrees) if degrees else source


def open_source(camera: str | None = None, source: str | None = None,
                opts: LiveOptions = LiveOptions()) -> FrameSource:
    """Exactly one of `camera` (device) or `source` (file, folder, sequence or stream URL)."""
    if bool(camera) == bool(source):
        raise ValueError(f"expected exactly one of camera or source, got camera={camera!r} source={source!r}")
    if camera:
        _warn_ignored(opts, "camera")
        return open_camera(str(camera), opts)
    source = str(source)
    if is_stream_url(source):
        src = open_stream_source(source, opts)
        _warn_ignored(opts, "file" if isinstance(src, FileSource) else "stream")
        return src
    if "://" in source:
        raise ValueError(f"source: unsupported scheme in {source!r}; expected one of {list(STREAM_SCHEMES)} "
                         "or a file, image folder or MOTChallenge sequence")
    _warn_ignored(opts, "file")
    return FileSource(source, opts)
