"""Decoding through the `ffmpeg` program, for the video OpenCV's FFmpeg backend gets wrong.

Interlaced video (a DVR's MPEG-2 or H.264 export, a broadcast-style camera): OpenCV converts each
decoded frame to BGR with swscale, which refuses frames flagged interlaced ("Cannot convert
interlaced to progressive frames or vice versa"), and `read()` still returns ok with an all-zero
image (opencv-python 5.0 here; vllm-project/vllm#47853 reports the same on 4.13). The run then
tracked nothing and ended with exit 0. `ffmpeg` decodes the same files, deinterlaces the frames
flagged interlaced (`yadif=deint=interlaced`) and pipes raw BGR: `FfmpegCapture` reads that pipe
behind the `cv2.VideoCapture` calls the sources make.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from vsdmot.runtime.errors import SourceError
from vsdmot.runtime.sources import VideoFileSource

log = logging.getLogger(__name__)

DEINTERLACE = "yadif=deint=interlaced"  # frames flagged interlaced only; progressive ones pass untouched


BLANK_SHARE = 0.02  # at most this share of nonzero values: blank


def blank(img: np.ndarray) -> bool:
    """Nearly all zero, as OpenCV's refused conversion leaves its buffer: zeros with a few stray
    values of whatever the buffer held before (0.07 % nonzero on a DVR clip here, not exactly 0). A
    dark scene still has sensor noise; a black one is black through ffmpeg too (`decodable`)."""
    sub = img[::4, ::4]
    return np.count_nonzero(sub) <= BLANK_SHARE * sub.size


class FfmpegCapture:
    """`read()`, `get()`, `isOpened()` and `release()` of a cv2.VideoCapture over
    `ffmpeg -i SRC -vf yadif -f rawvideo -pix_fmt bgr24 -`: (H, W, 3) uint8 frames of `size` (W, H),
    which is what OpenCV reported (both rotate by the file's display matrix)."""

    def __init__(self, src: str, size: tuple[int, int], fps: float, frame_count: int = 0):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise SourceError(f"video: OpenCV decodes {src} as black frames (interlaced video, which its FFmpeg "
                              f"cannot convert) and there is no ffmpeg program to decode it instead: install ffmpeg, "
                              f"or deinterlace it once: ffmpeg -i {src} -vf yadif -c:v libx264 out.mp4")
        self.src, self.size, self.fps, self.frame_count, self.index = src, size, fps, frame_count, 0
        self._errors = tempfile.TemporaryFile()  # not a pipe: a corrupt file's messages must not block ffmpeg
        self._proc = subprocess.Popen(
            [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", src, "-vf", DEINTERLACE,
             "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], stdout=subprocess.PIPE, stderr=self._errors)

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoCapture's name)
        return self._proc is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        w, h = self.size
        buf = bytearray(w * h * 3)
        got = self._proc.stdout.readinto(buf) if self._proc is not None else 0
        while 0 < got < len(buf):  # a pipe hands over at most its buffer at a time
            more = self._proc.stdout.readinto(memoryview(buf)[got:])
            if not more:
                break
            got += more
        if got < len(buf):
            self._log_errors()
            return False, None
        self.index += 1
        return True, np.frombuffer(buf, np.uint8).reshape(h, w, 3)

    def get(self, prop: int) -> float:
        """The properties the sources read; the time is the frame's index over the rate (no pts)."""
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: float(self.frame_count),
                cv2.CAP_PROP_FRAME_WIDTH: float(self.size[0]), cv2.CAP_PROP_FRAME_HEIGHT: float(self.size[1]),
                cv2.CAP_PROP_POS_MSEC: 1000.0 * max(self.index - 1, 0) / self.fps}.get(prop, 0.0)

    def release(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
        self._errors.close()

    def _log_errors(self) -> None:
        self._errors.seek(0)
        text = self._errors.read().decode(errors="replace").strip()
        if text:
            log.warning("ffmpeg on %s: %s", self.src, text.splitlines()[-1])


class FfmpegFileSource(VideoFileSource):
    """A video file decoded through `FfmpegCapture` (see the module doc); otherwise a VideoFileSource."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float, frame_count: int,
                 true_fps: float | None = None):
        self._size, self._rate, self._count = size, fps, frame_count
        super().__init__(path, true_fps)

    def _capture(self) -> FfmpegCapture:
        return FfmpegCapture(str(self.path), self._size, self._rate, self._count)


def decodable(src: VideoFileSource, fps: float | None = None) -> VideoFileSource:
    """`src`, or the same file through ffmpeg when OpenCV decodes its first frame blank and ffmpeg
    does not (an interlaced video). A file whose first frame is black both ways stays OpenCV's."""
    if not blank(src.first_frame):
        return src
    first = src.first_frame
    alt = FfmpegFileSource(src.path, (first.shape[1], first.shape[0]), src.header_fps, src.frame_count, fps)
    if blank(alt.first_frame):
        alt.close()
        return src
    src.close()
    log.warning("video: OpenCV decodes %s as black frames (interlaced video: its FFmpeg cannot convert them); "
                "decoding it through ffmpeg with %s instead", src.path, DEINTERLACE)
    return alt
