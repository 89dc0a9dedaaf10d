"""Decoding through the `ffmpeg` program, for the video OpenCV's FFmpeg backend gets wrong.

Interlaced video (a DVR's MPEG-2 or H.264 export, a broadcast-style camera): OpenCV converts each
decoded frame to BGR with swscale, which refuses frames flagged interlaced ("Cannot convert
interlaced to progressive frames or vice versa"), and `read()` still returns ok with whatever its
buffer held: zeros, or stripes of frames decoded before in the same process (opencv-python 5.0
here; vllm-project/vllm#47853 reports the same on 4.13). The run then tracked nothing, or a frozen
image, and ended with exit 0.

So the stream decides, not the pixels: `ffprobe` reads the file's field order, and an interlaced
file is decoded by `ffmpeg`, which deinterlaces the frames flagged interlaced (`yadif`) and pipes
raw BGR that `FfmpegCapture` reads behind the `cv2.VideoCapture` calls the sources make
(`open_file_source`, so runs, calibration and evaluation alike). A live stream cannot be probed so
cheaply: `blank` is what a live source (edge/sources.py) watches for instead.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import SourceError
from .logs import log_once
from .sources import VideoFileSource

log = logging.getLogger(__name__)

DEINTERLACE = "yadif=deint=interlaced"  # frames flagged interlaced only; progressive ones pass untouched
INTERLACED = ("tt", "bb", "tb", "bt")  # ffprobe's field_order values for interlaced video
BLANK_SHARE = 0.02  # at most this share of nonzero values: blank


def blank(img: np.ndarray) -> bool:
    """Nearly all zero, as OpenCV's refused conversion often leaves its buffer (a dark scene still
    has sensor noise)."""
    sub = img[::4, ::4]
    return np.count_nonzero(sub) <= BLANK_SHARE * sub.size


@dataclass(frozen=True)
class StreamInfo:
    """What ffprobe says about a file's first video stream."""

    size: tuple[int, int]  # (W, H) as displayed: the rotation metadata applied, as ffmpeg and OpenCV decode it
    fps: float  # average frame rate, 0 when unknown
    frames: int  # frame count from the container, 0 when unknown
    field_order: str  # "progressive", "tt", "bb", ... or "" when not stated

    @property
    def interlaced(self) -> bool:
        return self.field_order in INTERLACED


def probe(path: str | Path) -> StreamInfo | None:
    """ffprobe's view of `path`, or None without ffprobe or a video stream it can read. `-show_streams`
    (every field) rather than a list of `-show_entries` sections: a version that does not know one
    fails the whole query (JetPack 6's Ubuntu 22.04 has ffprobe 4.4, this machine 5.1)."""
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", str(path)],
                             capture_output=True, text=True, timeout=30)
        s = (json.loads(out.stdout or "{}").get("streams") or [{}])[0]
        if out.returncode != 0 or not s.get("width"):
            return None
        w, h = int(s["width"]), int(s["height"])
        num, _, den = str(s.get("avg_frame_rate", "0/1")).partition("/")
        fps = float(num) / float(den) if den and float(den) else 0.0
        rotation = _rotation(s)
        frames = int(s.get("nb_frames", 0) or 0)
    except (OSError, subprocess.TimeoutExpired, ValueError, TypeError):  # JSONDecodeError is a ValueError
        return None
    return StreamInfo((h, w) if abs(rotation) % 180 == 90 else (w, h), fps, frames, str(s.get("field_order", "")))


def _rotation(stream: dict) -> int:
    """Degrees of the display matrix (ffprobe 5+: side data) or of the `rotate` tag (ffprobe 4.x)."""
    for d in stream.get("side_data_list", []):
        if "rotation" in d:
            return int(float(d["rotation"]))
    return int(float(stream.get("tags", {}).get("rotate", 0)))


class FfmpegCapture:
    """`read()`, `get()`, `isOpened()` and `release()` of a cv2.VideoCapture over `ffmpeg -i SRC -vf yadif
    -f rawvideo -pix_fmt bgr24 -`: (H, W, 3) uint8 frames of `size` (W, H), one per coded frame
    (`-vsync passthrough`: a variable-rate file is not padded to a constant rate)."""

    def __init__(self, src: str, size: tuple[int, int], fps: float, frame_count: int = 0):
        self.src, self.size, self.fps, self.frame_count, self.index = src, size, fps or 25.0, frame_count, 0
        self._errors = tempfile.TemporaryFile()  # not a pipe: a corrupt file's messages must not block ffmpeg
        try:
            self._proc = subprocess.Popen(
                [shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", src,
                 "-vf", DEINTERLACE, "-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                stdout=subprocess.PIPE, stderr=self._errors)
        except OSError as e:
            self._errors.close()
            raise SourceError(f"video: cannot start ffmpeg to decode {src}: {e}") from None

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoCapture's name)
        return self._proc is not None

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self._proc is None:
            return False, None
        w, h = self.size
        buf = bytearray(w * h * 3)
        view, got = memoryview(buf), 0
        while got < len(buf):  # a pipe hands over at most its buffer at a time
            more = self._proc.stdout.readinto(view[got:])
            if not more:
                break
            got += more
        if got < len(buf):
            self._check_exit()
            return False, None
        self.index += 1
        return True, np.frombuffer(buf, np.uint8).reshape(h, w, 3)

    def get(self, prop: int) -> float:
        """The properties the sources read; a frame's time is its index over the rate (no pts here)."""
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

    def _check_exit(self) -> None:
        """At the end of the pipe: a clean end of file, or ffmpeg's failure as a SourceError (killed,
        or a file it could not read on), so a run does not end as if the video had."""
        code = self._proc.wait(timeout=10)
        if code != 0:
            self._errors.seek(0)
            lines = self._errors.read().decode(errors="replace").strip().splitlines()
            raise SourceError(f"video: ffmpeg stopped with code {code} after {self.index} frames of {self.src}"
                              + (f": {lines[-1]}" if lines else ""))


class FfmpegFileSource(VideoFileSource):
    """A video file decoded through `FfmpegCapture` (see the module doc); otherwise a VideoFileSource."""

    def __init__(self, path: str | Path, info: StreamInfo, fps: float | None = None):
        self._info = info
        super().__init__(path, fps)

    def _capture(self) -> FfmpegCapture:
        return FfmpegCapture(str(self.path), self._info.size, self._info.fps, self._info.frames)


def decodable(path: str | Path, fps: float | None = None) -> VideoFileSource:
    """The video at `path` through OpenCV, or through ffmpeg when ffprobe says it is interlaced.
    Without ffmpeg an interlaced file still opens through OpenCV, with a warning; without ffprobe
    too, the warning comes when the first frame is blank (what OpenCV's refused conversion gives in
    a process that has decoded nothing before; later ones may get stale stripes, unseen)."""
    info = probe(path)
    if info is not None and info.interlaced and shutil.which("ffmpeg") is not None:
        log_once(log.name, logging.WARNING, f"video: {path} is interlaced (field order {info.field_order}), which "
                 f"OpenCV cannot convert; decoding it through ffmpeg with {DEINTERLACE}")  # once: --loop reopens it
        return FfmpegFileSource(path, info, fps)
    src = VideoFileSource(path, fps)
    if info is not None and info.interlaced:  # ffprobe, but no ffmpeg
        log.warning("video: %s is interlaced (%s), which OpenCV decodes as blank or stale frames, and there is no "
                    "ffmpeg program to decode it: %s", path, info.field_order, _install_hint(path))
    elif info is None and shutil.which("ffprobe") is None and blank(src.first_frame):  # nothing can read the field order
        log.warning("video: %s decodes as blank frames; if it is interlaced (a DVR's recording), OpenCV cannot "
                    "convert it: %s", path, _install_hint(path))
    return src


def _install_hint(path: str | Path) -> str:
    """What to do about an interlaced file the kit cannot decode (with ffmpeg installed, it does)."""
    return f"install ffmpeg, or deinterlace it once: ffmpeg -i {path} -vf yadif -c:v libx264 out.mp4"
