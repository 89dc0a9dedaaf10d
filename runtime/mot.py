"""MOTChallenge text I/O: seqinfo.ini, ground truth (MOT15 / MOT17), results.

Row layouts (frames are 1-based, boxes are x, y, w, h in source pixels):
    MOT15 gt   frame,id,x,y,w,h,conf,wx,wy,wz      (10 columns; conf 0 = not counted)
    MOT17 gt   frame,id,x,y,w,h,conf,class,vis     (9 columns; conf 0 = ignore)
    results    frame,id,x,y,w,h,conf,-1,-1,-1
"""

from __future__ import annotations

import configparser
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SEQINFO_KEYS = {"name": str, "frameRate": float, "seqLength": int, "imWidth": int, "imHeight": int}


@dataclass(slots=True, frozen=True)
class SeqInfo:
    name: str
    frame_rate: float  # true frames per second (trust this over a video header)
    length: int  # frame count the sequence states
    width: int
    height: int
    im_dir: str = "img1"
    im_ext: str = ".jpg"


@dataclass(slots=True)
class MotRows:
    """M rows of a MOTChallenge file as arrays."""

    frame: np.ndarray  # (M,) int64, 1-based
    id: np.ndarray  # (M,) int64; -1 for detections
    xywh: np.ndarray  # (M, 4) float64
    conf: np.ndarray  # (M,) float64; gt: 1 counted, 0 not counted
    cls: np.ndarray  # (M,) int64; MOT17 class (1 pedestrian), -1 where absent
    vis: np.ndarray  # (M,) float64; MOT17 visibility, -1 where absent

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def xyxy(self) -> np.ndarray:
        """(M, 4) float64 x1, y1, x2, y2."""
        return np.c_[self.xywh[:, :2], self.xywh[:, :2] + self.xywh[:, 2:]]

    def at(self, frame: int) -> MotRows:
        return self.select(self.frame == frame)

    def select(self, keep: np.ndarray) -> MotRows:
        return MotRows(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def read_seqinfo(path: str | os.PathLike) -> SeqInfo:
    """Parse seqinfo.ini (a file, or the sequence folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "seqinfo.ini"
    if not path.is_file():
        raise ValueError(f"seqinfo.ini: expected a file at {path}, found none")
    if path.suffix.lower() != ".ini":  # a video or a result file given where a sequence folder belongs
        raise ValueError(f"{path}: expected a MOTChallenge sequence folder (seqinfo.ini, gt/gt.txt and the frames) "
                         f"or its seqinfo.ini, got a {path.suffix or 'plain'} file")
    cp = configparser.ConfigParser()
    cp.optionxform = str  # keys are camelCase
    try:
        cp.read(path)
        sec = cp["Sequence"]
        vals = {k: conv(sec[k]) for k, conv in _SEQINFO_KEYS.items()}
    except (KeyError, ValueError, configparser.Error) as e:
        raise ValueError(f"{path}: expected a [Sequence] section with {list(_SEQINFO_KEYS)}: {e}") from None
    _check_seqinfo(path, vals)
    return SeqInfo(
        vals["name"], vals["frameRate"], vals["seqLength"], vals["imWidth"], vals["imHeight"],
        sec.get("imDir", "img1"), sec.get("imExt", ".jpg"),
    )


def _check_seqinfo(path: Path, vals: dict) -> None:
    """A rate every frame's timestamp divides by, and counts and sizes that are not negative."""
    if not (math.isfinite(vals["frameRate"]) and vals["frameRate"] > 0):
        raise ValueError(f"{path}: frameRate: expected > 0 frames per second, got {vals['frameRate']}")
    for key in ("seqLength", "imWidth", "imHeight"):
        if vals[key] < 0:
            raise ValueError(f"{path}: {key}: expected >= 0, got {vals[key]}")


def write_seqinfo(path: str | os.PathLike, info: SeqInfo) -> None:
    text = (
        f"[Sequence]\nname={info.name}\nimDir={info.im_dir}\nframeRate={info.frame_rate:g}\n"
        f"seqLength={info.length}\nimWidth={info.width}\nimHeight={info.height}\nimExt={info.im_ext}\n"
    )
    atomic_write_text(path, text)


def read_rows(path: str | os.PathLike) -> MotRows:
    """Read gt, det or result rows. Accepts 6 to 10 columns; a malformed row raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"MOT file: expected a file at {path}, found none")
    rows: list[list[float]] = []
    ncols = None
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.replace(" ", "").split(",")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected comma-separated numbers, got {line!r}") from None
        if not 6 <= len(vals) <= 10 or (ncols is not None and len(vals) != ncols):
            want = ncols or "6-10"
            raise ValueError(f"{path}:{lineno}: expected {want} columns, got {len(vals)}: {line!r}")
        _check_row(vals, f"{path}:{lineno}", line)
        ncols = len(vals)
        rows.append(vals)
    return _rows_to_arrays(np.array(rows, dtype=np.float64).reshape(-1, ncols or 10))


def _check_row(vals: list[float], where: str, line: str) -> None:
    if not all(np.isfinite(vals)):
        raise ValueError(f"{where}: expected finite numbers, got {line!r}")
    if vals[0] < 1 or vals[0] != int(vals[0]):
        raise ValueError(f"{where}: expected an integer frame >= 1 (frames are 1-based), got {line!r}")


def _rows_to_arrays(a: np.ndarray) -> MotRows:
    m, n = a.shape
    col = lambda i, fill: a[:, i] if n > i else np.full(m, fill, np.float64)  # noqa: E731
    # A 9-column file is MOT17 gt (class, visibility); 10 columns carry world coords (MOT15, det).
    mot17 = n == 9
    return MotRows(
        frame=a[:, 0].astype(np.int64),
        id=a[:, 1].astype(np.int64),
        xywh=a[:, 2:6].copy(),
        conf=col(6, 1.0),
        cls=col(7, -1).astype(np.int64) if mot17 else np.full(m, -1, np.int64),
        vis=col(8, -1) if mot17 else np.full(m, -1.0),
    )


def format_result_rows(frame: int, ids: np.ndarray, xywh: np.ndarray, conf: np.ndarray) -> str:
    """MOTChallenge result lines for one frame: frame,id,x,y,w,h,conf,-1,-1,-1."""
    return "".join(
        f"{frame},{int(i)},{b[0]:.2f},{b[1]:.2f},{b[2]:.2f},{b[3]:.2f},{c:.4f},-1,-1,-1\n"
        for i, b, c in zip(ids, xywh, conf)
    )


def write_rows(path: str | os.PathLike, rows: MotRows) -> None:
    """Write rows as a results file (atomically)."""
    lines = [format_result_rows(int(f), [i], b[None], [c]) for f, i, b, c in zip(rows.frame, rows.id, rows.xywh, rows.conf)]
    atomic_write_text(path, "".join(lines))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of the text, UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`: a reader, a kill or a
    power cut leaves the old file or the new one, never part of one. The file gets the mode a plain
    open() would give (mkstemp's 0600 would hide stats from a monitoring user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
