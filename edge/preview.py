"""A live view of what the tracker sees, for headless devices: `--preview` serves the annotated
frames on the health server, as MJPEG at /preview (a browser or VLC plays it) and as one JPEG at
/preview.jpg (curl, scripts).

Aiming and focusing a camera, or checking what a service tracks at night, otherwise needs a
screen on the device or a `--video-out` file copied off it.

`Preview` is a sink. `write` keeps a reference to the newest frame and its result: O(1) on the run
loop's thread, whoever watches. Drawing, downscaling and JPEG encoding happen on each client's
HTTP thread, at most `max_fps` times a second, and only while someone watches. A slow client
skips frames instead of queueing them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import cv2
import numpy as np

from vsdmot.runtime.types import FrameResult
from vsdmot.runtime.video_sink import annotate

BOUNDARY = "vsdmot-frame"


@dataclass(frozen=True)
class PreviewConfig:
    max_fps: float = 10.0  # frames per second sent to each client (a browser needs no more to aim a camera)
    max_width: int = 960  # wider frames are downscaled before encoding (a 4K JPEG is ~1 MB)
    quality: int = 80  # JPEG quality
    max_clients: int = 4  # more streams at once are refused (503): each costs an encode per frame sent

    def __post_init__(self) -> None:
        if not self.max_fps > 0 or self.max_width < 32 or not 1 <= self.quality <= 100 or self.max_clients < 1:
            raise ValueError(f"preview: expected max_fps > 0, max_width >= 32, quality 1..100, max_clients >= 1, got {self}")


class Preview:
    """The newest annotated frame, for the health server's /preview and /preview.jpg."""

    def __init__(self, cfg: PreviewConfig = PreviewConfig()):
        self.cfg = cfg
        self._cond = threading.Condition()
        self._latest: tuple[int, FrameResult, np.ndarray] | None = None  # (sequence number, result, image)
        self._closed = False
        self._clients = 0

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        if image is None:
            return
        with self._cond:
            seq = self._latest[0] + 1 if self._latest else 1
            self._latest = (seq, result, image)  # the run never writes into a frame it has handed on
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def jpeg(self, after: int = 0, timeout_s: float = 5.0) -> tuple[int, bytes] | None:
        """(sequence number, JPEG) of the newest frame after number `after`, waiting up to
        `timeout_s` for one; None when none came or the run ended."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._latest is not None and self._latest[0] > after),
                                timeout_s)
            if self._latest is None or self._latest[0] <= after:
                return None
            seq, result, image = self._latest
        return seq, encode(result, image, self.cfg)

    @property
    def closed(self) -> bool:
        return self._closed

    def stream(self, out: BinaryIO) -> None:
        """Write MJPEG parts to `out` until the run ends or the client goes (OSError from `out`)."""
        seq, period = 0, 1.0 / self.cfg.max_fps
        while not self._closed:
            started = time.monotonic()
            got = self.jpeg(seq)
            if got is None:
                continue  # a stalled source: keep the connection, send nothing
            seq, data = got
            out.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                      + data + b"\r\n")
            out.flush()
            time.sleep(max(0.0, period - (time.monotonic() - started)))

    def enter(self) -> bool:
        """Count a new stream client; False when `max_clients` already watch."""
        with self._cond:
            if self._clients >= self.cfg.max_clients:
                return False
            self._clients += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._clients -= 1


def encode(result: FrameResult, image: np.ndarray, cfg: PreviewConfig) -> bytes:
    """The frame as the annotated video draws it, at most `cfg.max_width` wide, as JPEG bytes.
    A wider frame is shrunk first and its boxes with it: no full-size copy of a 4K frame per
    preview frame, and labels drawn at the size they are shown."""
    if image.shape[1] > cfg.max_width:
        s = cfg.max_width / image.shape[1]
        image = cv2.resize(image, (cfg.max_width, max(1, round(image.shape[0] * s))), interpolation=cv2.INTER_AREA)
        result = replace(result, tracks=replace(result.tracks, xyxy=result.tracks.xyxy * s))
    ok, buf = cv2.imencode(".jpg", annotate(image, result), [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
    if not ok:
        raise ValueError(f"preview: OpenCV could not encode a {drawn.shape} frame as JPEG")
    return buf.tobytes()


def serve(handler: Any, preview: Preview | None, path: str) -> bool:
    """Answer /preview or /preview.jpg on a `BaseHTTPRequestHandler`; False for other paths."""
    if path not in ("/preview", "/preview.jpg"):
        return False
    if preview is None:
        handler._send(404, "application/json", '{"error": "no preview: run with --preview"}\n')
    elif path == "/preview.jpg":
        got = preview.jpeg(0, timeout_s=2.0)
        if got is None:
            handler._send(503, "application/json", '{"error": "no frame yet"}\n')
        else:
            handler._send(200, "image/jpeg", got[1])
    elif not preview.enter():
        handler._send(503, "application/json", f'{{"error": "{preview.cfg.max_clients} preview clients already"}}\n')
    else:
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            handler.send_header("Cache-Control", "no-store")
            handler.end_headers()
            preview.stream(handler.wfile)
        except OSError:
            pass  # the client went away
        finally:
            preview.leave()
    return True
