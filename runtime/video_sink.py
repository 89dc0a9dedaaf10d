"""The annotated-video sink: boxes, IDs, a q bar and a w bar, drawn and encoded on its own thread.

It cannot promise the text sinks' durability (OpenCV's writer buffers and reports no errors): an
`.avi` (MJPG) stays readable after a kill, an `.mp4` does not (its index is written at close).
With `rotate_bytes`, each file that reaches that size is finished (an `.mp4` gets its index) and
moved aside like the text sinks' (`sinks.rotate_previous`), so a kill loses at most the last one.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
from pathlib import Path

import cv2
import numpy as np

from .sinks import SinkError, _SinkBase, check_writable, rotate_previous
from .types import FrameResult

log = logging.getLogger(__name__)


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
    """A copy of `image` with boxes, IDs, a quality bar (q and w) and the semantic state, drawn at a
    size that grows with the frame (`k`: 1 up to 720 rows, 3 at 2160), so 4K stays readable."""
    out, k = image.copy(), max(1.0, image.shape[0] / 720)
    t = result.tracks
    ids = t.track_id if t.track_id is not None else np.full(len(t), -1, np.int64)
    for tid, box in zip(ids, t.xyxy.round().astype(int)):
        colour = track_colour(int(tid))
        cv2.rectangle(out, tuple(box[:2]), tuple(box[2:]), colour, round(2 * k))
        cv2.putText(out, str(int(tid)), (box[0], max(box[1] - round(4 * k), round(12 * k))), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * k, colour, round(2 * k))
    _quality_bar(out, result, k)
    return out


def _quality_bar(img: np.ndarray, result: FrameResult, k: float = 1.0) -> None:
    """Two 100-px bars (times `k`) at the top left: q (green) and w (orange), and the semantic state."""
    px = lambda v: round(v * k)  # noqa: E731
    for row, (name, value, colour) in enumerate((("q", result.q, (0, 200, 0)), ("w", result.w, (0, 140, 255)))):
        y = px(6 + row * 14)
        cv2.rectangle(img, (px(30), y), (px(130), y + px(10)), (60, 60, 60), -1)
        fill = min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0
        cv2.rectangle(img, (px(30), y), (px(30) + int(px(100) * fill), y + px(10)), colour, -1)
        cv2.putText(img, name, (px(8), y + px(10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * k, (255, 255, 255), px(1))
    label = f"#{result.index} semantic: {result.semantic}"
    cv2.putText(img, label, (px(140), px(26)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * k, (255, 255, 255), px(1))


class VideoSink(_SinkBase):
    """Annotated video. `.mp4/.m4v/.mov` -> mp4v, `.avi/.mkv` -> MJPG; anything else ValueError.

    Drawing and encoding (~10 ms per 640x480 frame here) run on the sink's own thread, so they
    overlap the pipeline instead of halving its FPS. When `queue_size` frames are waiting (0 =
    as many as fit in QUEUE_BYTES, 2 to 32), a new frame is dropped and counted in `dropped`
    (the tracker outranks its debug video), unless `drop_when_full=False`, which makes `write`
    wait. `frame_size` is (width, height); None takes it from the first image; other sizes are
    resized to it. An earlier file is moved aside when the first frame comes (`keep_previous`
    kept; 0 replaces it), as the text sinks do. `rotate_bytes` > 0: a file that reaches that size
    is finished, and the next frame moves it aside and begins a new one (so no empty file is left
    after the last frame). An error on the encoding thread is raised by the next `write` or by `close`.
    """

    QUEUE_BYTES = 64 << 20  # memory the frames waiting for the encoder may take

    def __init__(self, path: str | os.PathLike, fps: float, frame_size: tuple[int, int] | None = None,
                 queue_size: int = 0, drop_when_full: bool = True, rotate_bytes: int = 0, keep_previous: int = 5):
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
        self.rotate_bytes, self.keep_previous = rotate_bytes, keep_previous
        self.error: BaseException | None = None  # what stopped the encoding thread
        self._queue: queue.Queue | None = None
        self._writer: cv2.VideoWriter | None = None
        self._thread: threading.Thread | None = None
        check_writable(self.path, "video sink")  # the writer opens at the first frame, after the other sinks
        self._take_claim(self.path, "video sink")
        if frame_size is not None:
            try:
                self._open(frame_size)
            except BaseException:
                self._drop_claim()
                raise

    def start(self) -> None:
        """Move the previous run's video aside once every output has opened (open_sinks), as the text
        sinks do: the encoder itself opens at the first frame, whose size it takes."""
        if self._writer is None:
            rotate_previous(self.path, self.keep_previous)

    def _open(self, size: tuple[int, int]) -> None:
        self.frame_size = (int(size[0]), int(size[1]))
        self._writer = self._new_writer()
        per_frame = 3 * self.frame_size[0] * self.frame_size[1]
        n = self.queue_size or min(max(self.QUEUE_BYTES // per_frame, 2), 32)  # 640x480: 32, 1080p: 10
        self._queue = queue.Queue(maxsize=n)
        self._thread = threading.Thread(target=self._encode, name=f"video:{self.path.name}", daemon=True)
        self._thread.start()

    def _new_writer(self) -> cv2.VideoWriter:
        rotate_previous(self.path, self.keep_previous)  # an earlier run's video, or this run's full file
        fourcc = VIDEO_CODECS[self.path.suffix.lower()]
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.frame_size)
        if not writer.isOpened():
            raise SinkError(f"video sink: OpenCV cannot open {self.path} for writing at {self.frame_size} ({fourcc})")
        return writer

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        self._raise_error()
        if image is None:
            raise ValueError(f"video sink: frame {result.index} came without its image (pass write(result, image))")
        if self._thread is None:
            self._open((image.shape[1], image.shape[0]))
        try:
            self._queue.put((result, image), block=not self.drop_when_full)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("video sink: encoding falls behind; dropping frames from %s", self.path)

    def _encode(self) -> None:
        """The encoding thread: until close's None. After an error it only drains the queue, so a
        waiting `write` (drop_when_full=False) is released and raises it."""
        while (item := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._encode_one(*item)
                except BaseException as e:  # noqa: BLE001 - handed to the loop's thread by write/close
                    self.error = e

    def _encode_one(self, result: FrameResult, image: np.ndarray) -> None:
        drawn = annotate(image, result)  # in the frame's own pixels, as the boxes are: then scaled together
        if (drawn.shape[1], drawn.shape[0]) != self.frame_size:  # an odd size, or an image folder of mixed sizes
            drawn = cv2.resize(drawn, self.frame_size, interpolation=cv2.INTER_AREA)
        if self._writer is None:  # the previous file reached rotate_bytes
            self._writer = self._new_writer()
        self._writer.write(drawn)
        self.frames += 1
        if self.rotate_bytes and os.path.getsize(self.path) >= self.rotate_bytes:
            self._writer.release()  # an .mp4 gets its index here
            self._writer = None

    def _raise_error(self) -> None:
        if self.error is not None:
            raise SinkError(f"video sink: encoding {self.path} failed: {self.error!r}") from self.error

    def close(self) -> None:
        try:
            self._finish()
        finally:
            self._drop_claim()

    def _finish(self) -> None:
        if self._thread is None:  # no frame came: no file was made
            return
        self._queue.put(None)  # after the frames already queued
        self._thread.join()
        self._thread = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self.dropped:
            log.warning("video sink: %d frames dropped from %s", self.dropped, self.path)
        self._raise_error()
