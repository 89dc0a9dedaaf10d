"""File frame sources: video files, image folders and MOTChallenge sequence folders.

Live sources (cameras, network streams) live in `vsdmot.edge.sources`; they yield the same
`Frame`s. A source is an iterable of frames with a true frame rate and a `close()`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .errors import SourceError
from .logs import log_once
from .mot import SeqInfo, read_seqinfo
from .quality import MIN_SIDE
from .types import Frame

log = logging.getLogger(__name__)

VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".ts", ".webm", ".mpg", ".mpeg")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def check_frame_size(width: int, height: int, where: str) -> None:
    """SourceError for frames the quality gate cannot assess (a side under MIN_SIDE px), raised when
    the source opens: at the first frame it failed after the run had moved mot.txt aside."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise SourceError(f"{where}: frames are {width}x{height} px; expected at least {MIN_SIDE}x{MIN_SIDE} "
                          "(the quality gate's smallest); upscale it first, e.g. ffmpeg -vf scale=640:-2")


def _positive(value: float) -> float:
    """A capture property that is a usable count or rate, else 0 (unknown): NaN, inf and negatives are."""
    return float(value) if math.isfinite(value) and value > 0 else 0.0


class FrameSource(Protocol):
    fps: float  # true frames per second (seqinfo.ini beats a video header)
    name: str

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


SHORT_SHARE = 0.9  # fewer decoded frames than this share of the header's count: warned as cut short


class VideoFileSource:
    """Decodes a video file with OpenCV. Ends cleanly at the last frame."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video: no file at {self.path}")
        if self.path.stat().st_size == 0:
            raise SourceError(f"video: {self.path} is empty (0 bytes)")
        self._setup(fps, name or self.path.stem)

    def _setup(self, fps: float | None, name: str) -> None:
        self._cap = self._open()
        try:
            check_frame_size(self._first.shape[1], self._first.shape[0], f"video {self.path}")
        except SourceError:
            self._cap.release()
            raise
        header_fps = _positive(self._cap.get(cv2.CAP_PROP_FPS))
        self.fps = float(fps or header_fps or 25.0)
        self.own_clock = not fps  # no true rate given: timestamps are the file's own (right for variable-rate video)
        self.name = name
        # 0 = unknown: a raw stream (.h264, .mjpeg) has no count and OpenCV reports about -1.9e14 or -9.2e18
        self.frame_count = int(_positive(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        self._started = False
        self._note_sar()
        if rot := int(_positive(self._cap.get(cv2.CAP_PROP_ORIENTATION_META))) % 360:  # OpenCV turned them upright
            log_once(log.name, logging.INFO, f"video {self.path}: turned by its rotation metadata to "
                     f"{self._first.shape[1]}x{self._first.shape[0]} frames (if people now lie on their side, the "
                     f"metadata is wrong: --rotate {(360 - rot) % 360} undoes it)")  # once: --loop reopens the file

    def _note_sar(self) -> None:
        """Warn about non-square pixels (anamorphic DV, a 384x576 file shown 4:3): people reach the
        detector squeezed, and the boxes are in stored pixels (HOTA 54 -> 41 on a 2:1 copy of PETS)."""
        num, den = (_positive(self._cap.get(p)) for p in (cv2.CAP_PROP_SAR_NUM, cv2.CAP_PROP_SAR_DEN))
        if num and den and abs(num / den - 1.0) > 0.02:
            w, h = self._first.shape[1], self._first.shape[0]
            log_once(log.name, logging.WARNING, f"video {self.path}: pixels are not square (sample aspect "
                     f"{num:g}:{den:g}): people look {'squeezed' if num > den else 'stretched'} to the detector and "
                     f"boxes are in the stored {w}x{h} pixels; for better tracking make a square-pixel copy: "
                     "ffmpeg -i IN -vf scale='trunc(iw*sar/2)*2:ih',setsar=1 OUT")

    def _capture(self) -> cv2.VideoCapture:
        """An opened capture of the file (a subclass may read it from elsewhere)."""
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"video: OpenCV cannot open {self.path} (not a video, no video stream, an unsupported "
                              "codec, or cut short: an .mp4 whose recording stopped early has no index)")
        return cap

    def _open(self) -> cv2.VideoCapture:
        """The capture, with its first frame decoded already (`self._first`): a file that opens but
        decodes nothing is refused here, before a run creates its output files."""
        cap = self._capture()
        ok, self._first = cap.read()
        if not ok:
            cap.release()
            raise SourceError(f"video: {self.path} opened but yielded no frames (corrupt or empty)")
        self._first_t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return cap

    @property
    def first_frame(self) -> np.ndarray:
        """The first frame, (H, W, 3) BGR, decoded when the file was opened."""
        return self._first

    def __iter__(self) -> Iterator[Frame]:
        if self._started:  # a second pass starts again from frame 1
            self._cap.release()
            self._cap = self._open()
        self._started = True
        ok, img, index, t = True, self._first, 0, self._first_t
        while ok:
            index += 1
            if self.own_clock and index > 1 and t <= prev:  # no pts (a raw .h264 reports 0 ms throughout)
                t = prev + 1.0 / self.fps  # the header's rate
            prev = t
            yield Frame(index, np.ascontiguousarray(img), t if self.own_clock else (index - 1) / self.fps)
            ok, img = self._cap.read()
            t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # the decoded frame's pts, from 0
        self._note_short(index)

    def _note_short(self, decoded: int) -> None:
        """Warn when decoding stopped well before the header's count: a file cut short (a recording
        whose disk filled, a partial copy) ends like a whole one, with no error from OpenCV."""
        if self.frame_count and decoded < SHORT_SHARE * self.frame_count:
            log_once(log.name, logging.WARNING, f"video {self.path}: decoding stopped after {decoded} frames, but "
                     f"its header states {self.frame_count}: the file is cut short or damaged (or, for variable-rate "
                     "video, the header's count is an estimate)")

    def close(self) -> None:
        self._cap.release()


class ImageFolderSource:
    """Images in a folder, sorted by name. Numeric names (000001.jpg) give the frame index."""

    def __init__(self, folder: str | os.PathLike, fps: float = 25.0, name: str | None = None):
        self.folder = Path(folder)
        listed = self.folder.iterdir() if self.folder.is_dir() else ()
        self.files = sorted(p for p in listed  # not hidden files: macOS leaves a ._000001.jpg beside each frame
                            if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
        if not self.files:
            seqs = sorted(d.name for d in self.folder.iterdir() if is_sequence(d)) if self.folder.is_dir() else []
            more = ", ..." if len(seqs) > 3 else ""
            inside = f"; it holds {len(seqs)} sequence folders ({', '.join(seqs[:3])}{more}): give one" if seqs else ""
            raise SourceError(f"image folder: no images ({', '.join(IMAGE_EXTS)}) in {self.folder}{inside}")
        readable = next((p for p in self.files if cv2.haveImageReader(str(p))), None)
        if readable is None:
            raise SourceError(f"image folder: none of the {len(self.files)} image files in {self.folder} is one "
                              "OpenCV can read (empty or corrupt files)")
        first = cv2.imread(str(readable), cv2.IMREAD_COLOR)  # one decode, to refuse tiny frames now
        if first is not None:
            check_frame_size(first.shape[1], first.shape[0], f"image folder {self.folder}")
        numbered = [p for p in self.files if p.stem.isdigit()]
        numeric = len(numbered) * 2 > len(self.files)  # mostly frame numbers: a stray poster.jpg renumbered them all
        if numeric and len(numbered) < len(self.files):
            others = [p.name for p in self.files if not p.stem.isdigit()]
            log.warning("image folder %s: %d image file(s) not named by frame number are skipped (%s%s); the "
                        "others keep their numbers", self.folder, len(others), ", ".join(others[:3]),
                        ", ..." if len(others) > 3 else "")
            self.files = numbered
        if numeric:  # by number: 2.png before 10.png
            self.files.sort(key=lambda p: int(p.stem))
        shift = 1 if numeric and int(self.files[0].stem) == 0 else 0  # 000000.png (KITTI style) is frame 1
        self.indices = [int(p.stem) + shift if numeric else i + 1 for i, p in enumerate(self.files)]
        self.fps = float(fps)
        self.name = name or self.folder.name
        self.frame_count = len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in zip(self.indices, self.files):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                log.warning("skipping unreadable image %s", path)
                continue
            if _cut_jpeg(path):  # libjpeg decodes what is there, greys the rest, and names no file
                log.warning("image %s is cut short (no JPEG end marker): its lower part is grey", path)
            yield Frame(index, img, (index - 1) / self.fps)

    def close(self) -> None:
        pass


def _cut_jpeg(path: Path) -> bool:
    """Whether a .jpg lacks its end-of-image marker (FF D9; a copy or a write that stopped early)."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return False
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - 32, 0))
        if b"\xff\xd9" in f.read():  # a few encoders pad after the marker
            return False
        f.seek(0)  # phones' motion photos and vendor trailers append more: the marker is earlier
        data = f.read()
    return b"\xff\xd9" not in data[_scan_start(data):]  # after the main image's scan: an EXIF thumbnail has its own


def _scan_start(data: bytes) -> int:
    """Offset of the main image's start-of-scan (FF DA), walking the marker segments by their
    lengths from SOI; 0 when the header does not parse (then the whole file is searched)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        if data[i + 1] == 0xDA:
            return i
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return 0


@dataclass(slots=True, frozen=True)
class Sequence:
    """A MOTChallenge sequence folder: seqinfo.ini, frames (img1/ or a video) and maybe gt/gt.txt."""

    path: Path
    info: SeqInfo
    video: Path | None  # the video file when there is no image folder

    @property
    def gt_path(self) -> Path | None:
        p = self.path / "gt" / "gt.txt"
        return p if p.is_file() else None

    def frames(self) -> ImageFolderSource | VideoFileSource:
        if self.video is None:
            return ImageFolderSource(self.path / self.info.im_dir, self.info.frame_rate, self.info.name)
        return VideoFileSource(self.video, self.info.frame_rate, self.info.name)


def open_sequence(path: str | os.PathLike) -> Sequence:
    """Open a sequence folder. Frames come from `imDir` if it holds images, else from a video inside."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"sequence: expected a folder at {path}")
    info = read_seqinfo(path)
    im_dir = path / info.im_dir
    if im_dir.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in im_dir.iterdir()):
        return Sequence(path, info, None)
    videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    if not videos:
        raise ValueError(f"sequence {path}: no images in {info.im_dir}/ and no video file ({', '.join(VIDEO_EXTS)})")
    named = [v for v in videos if v.stem == info.name]
    return Sequence(path, info, (named or videos)[0])


def is_sequence(path: str | os.PathLike) -> bool:
    return (Path(path) / "seqinfo.ini").is_file()


def open_file_source(path: str | os.PathLike, fps: float | None = None) -> FrameSource:
    """A video file, an image folder, or a MOTChallenge sequence folder."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"source: nothing at {path}")
    if path.is_dir():
        if is_sequence(path):
            return open_sequence(path).frames()
        return ImageFolderSource(path, fps or 25.0)
    from .ffmpeg_capture import decodable  # ffprobe's field order: an interlaced file goes through ffmpeg

    return decodable(path, fps)
