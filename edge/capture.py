"""OpenCV captures for the live sources: V4L2 cameras (format, size and rate set and read back)
and network streams through FFmpeg (open and read timeouts, per-scheme demuxer options).
`edge/gst.py` builds the CSI (GStreamer) one. `edge/sources.py: LiveSource` re-opens them."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from vsdmot.runtime.errors import SourceError

if TYPE_CHECKING:  # sources.py imports this module
    from .sources import LiveOptions

log = logging.getLogger(__name__)


def _check_readback(cap: cv2.VideoCapture, camera: str, prop: int, name: str, want: float) -> None:
    got = cap.get(prop)
    if want and abs(got - want) > 0.5:
        log.warning("camera %s refused %s=%g; it gives %g", camera, name, want, got)


def _why_not_opened(node: Path) -> str:
    """The likely reason an existing node did not open, for the error line."""
    if not os.access(node, os.R_OK | os.W_OK):
        return "no permission: is the user in the 'video' group?"
    if not Path("/sys/class/video4linux", node.resolve().name).exists():
        return f"{node} is not a V4L2 video device"
    return "busy in another process, or not a capture device (`v4l2-ctl --list-devices`)"


def open_v4l2(camera: str, opts: LiveOptions) -> cv2.VideoCapture:
    """A V4L2 camera (/dev/videoN or an index) with fourcc, size and fps set and read back."""
    dev: str | int = int(camera) if camera.isdigit() else camera
    node = Path(f"/dev/video{dev}" if isinstance(dev, int) else dev)  # V4L2 opens index N as /dev/videoN
    if not node.exists():
        raise SourceError(f"camera {camera}: no such device ({node} does not exist; unplugged? `ls /dev/video*`)")
    # OpenCV's V4L2 backend ignores CAP_PROP_READ_TIMEOUT_MSEC; its select() waits 10 s per read
    # unless this is set, and it reads the variable once per process (the first V4L2 capture).
    os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(max(1, math.ceil(opts.read_timeout_s))))
    cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"camera {camera}: V4L2 cannot open it ({_why_not_opened(node)})")
    if opts.fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*opts.fourcc))
        got = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
        if got != opts.fourcc:
            log.warning("camera %s refused fourcc %s; it gives %s", camera, opts.fourcc, got)
    for prop, name, want in ((cv2.CAP_PROP_FRAME_WIDTH, "width", opts.width),
                             (cv2.CAP_PROP_FRAME_HEIGHT, "height", opts.height), (cv2.CAP_PROP_FPS, "fps", opts.fps)):
        if want:
            cap.set(prop, want)
            _check_readback(cap, camera, prop, name, want)
    log.info("camera %s: %gx%g at %g fps", camera, cap.get(cv2.CAP_PROP_FRAME_WIDTH),
             cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FPS))
    return cap


_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is process-wide; read at open time


def ffmpeg_options(url: str, opts: LiveOptions) -> str:
    """FFmpeg demuxer options for this scheme, in OpenCV's "key;value|key;value" form."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("rtsp", "rtsps"):
        return f"rtsp_transport;{opts.rtsp_transport}"
    if scheme == "udp":
        return "overrun_nonfatal;1|fifo_size;50000"  # a late reader loses packets, not the stream
    return ""  # http(s), tcp, rtmp: FFmpeg's defaults; our own loop re-opens on failure


def open_stream(url: str, opts: LiveOptions) -> cv2.VideoCapture:
    """A network stream through OpenCV's FFmpeg backend, with open and read timeouts."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(opts.open_timeout_s * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(opts.read_timeout_s * 1000)]
    options = ffmpeg_options(url, opts)
    t0 = time.monotonic()
    with _ENV_LOCK:
        user = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
        if options and user is None:  # the user's own setting wins
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = options
        try:
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        finally:
            if options and user is None:
                os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
    if not cap.isOpened():
        cap.release()
        waited = time.monotonic() - t0
        when = f"no answer within {opts.open_timeout_s:g} s" if waited >= 0.9 * opts.open_timeout_s else \
            f"refused or failed after {waited:.1f} s"
        raise SourceError(f"stream {url}: cannot open: {when} (server down, wrong URL, or no video in it)")
    return cap
