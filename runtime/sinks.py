"""Output sinks: MOTChallenge text, JSON lines, annotated video and the run statistics JSON.

Every sink has `write(result: FrameResult, image: np.ndarray | None = None)` and `close()`, and
is a context manager. Only `VideoSink` needs the image; the others ignore it.

Durability (a device runs for weeks and may be killed or lose power at any time):
- MOT and JSONL sinks write each frame's text with one `os.write` on an unbuffered descriptor,
  so a SIGKILL loses at most the frame in flight; they `fsync` every `fsync_every_s` seconds
  (cheap) and at close, which bounds what a power cut can lose.
- An existing non-empty file is moved aside (`name.<mtime UTC>`, newest 5 kept), never truncated:
  a service restarted by its watchdog must not wipe what it wrote for weeks.
- With `rotate_bytes`, a file that reaches that size is closed at a frame boundary and moved aside
  the same way, and a new one begun: a service's outputs take at most (keep + 1) x that size on
  disk, instead of growing until the disk is full.
- A failed write (a full disk, ENOSPC) truncates the file back to the last complete frame and
  raises `SinkError` naming the file: what was already written stays intact and parseable.
- One writer per file: each sink claims its path (`claim_output`: a lock file `.NAME.lock`
  beside it), so a second run given the same path is refused before it moves anything.
- The stats file is rewritten periodically and at close through temp file + fsync + rename
  (`atomic_write_text`), so a reader never sees a half-written JSON.
- The video sink cannot promise this (`runtime/video_sink.py`); it encodes on its own thread.

This module holds the sink protocol and base, the two text sinks and `open_sinks`; the video and
stats sinks live in `video_sink.py` and `stats_sink.py` (both build on the base here).
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import locks
from .errors import VsdmotError
from .mot import format_result_rows
from .types import FrameResult

log = logging.getLogger(__name__)


class SinkError(VsdmotError):
    """An output could not be written (full disk, read-only folder, unsupported container)."""


class Sink(Protocol):
    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None: ...

    def close(self) -> None: ...


class _SinkBase:
    """Context manager, and the claim on the sink's output path (`claim_output`)."""

    _claim: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take_claim(self, path: Path, kind: str) -> None:
        self._claim = claim_output(path, kind)

    def _drop_claim(self) -> None:
        if self._claim is not None:
            locks.release(self._claim, claim_path(self.path))
            self._claim = None


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full (ENOSPC)"
    return e.strerror or str(e)


def check_writable(path: Path, kind: str, stream_ok: bool = True) -> None:
    """Create `path`'s folder and prove a file can be made in it, without touching `path` itself:
    sinks that write late (stats at its first flush, video at its first frame) fail at open
    instead of after a whole run. An existing pipe or device (/dev/stdout) is written in place:
    it must be writable, and `stream_ok=False` refuses it (a file replaced atomically cannot be
    one). SinkError names the path and the reason."""
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if path.exists() and not path.is_file():
            if not stream_ok:
                raise ValueError(f"{kind}: {path} is a pipe or device; expected a regular file (it is "
                                 "rewritten atomically: temp file + rename)")
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SinkError(f"{kind}: cannot write {path}: {_describe(e)}") from e


def claim_path(path: Path) -> Path:
    """The lock file beside an output while a run writes it: `.NAME.lock` (removed at close)."""
    return path.with_name(f".{path.name}.lock")


def claim_output(path: Path, kind: str) -> int | None:
    """Claim `path` for this process until `_drop_claim` (None for a pipe or device, written in
    place). SinkError when another process writes it. Why: two runs given one output path (a
    service and the same config run by hand, or a copied camera config) each moved the other's
    file aside and wrote on into it, and a rotation's cleanup could delete a file still being
    written."""
    if path.exists() and not path.is_file():
        return None
    try:
        return locks.claim(claim_path(path))
    except locks.Claimed as e:
        who = "this process" if e.holder == f"pid {os.getpid()}" else f"another run ({e.holder or 'pid ?'})"
        raise SinkError(f"{kind}: {path} is being written by {who}; give each run its own output paths") from None
    except OSError as e:
        raise SinkError(f"{kind}: cannot write {path}: {_describe(e)}") from e  # its folder refused the lock file


def check_unclaimed(path: Path, kind: str) -> None:
    """SinkError now, before any file is moved aside, if `claim_output` would refuse `path`."""
    fd = claim_output(path, kind)
    if fd is not None:
        locks.release(fd, claim_path(path))


def rotate_previous(path: Path, keep: int) -> Path | None:
    """Move a non-empty `path` aside to `path.YYYYmmddTHHMMSSZ` (its mtime, UTC; or the newest kept
    file's stamp with -n when that is not later, so the order is the order of moving) so a restart
    (systemd after a watchdog kill) never truncates what an earlier run wrote; keep the newest
    `keep` such files. keep=0 just replaces the file. Returns where the old file went."""
    if keep <= 0 or not path.is_file() or path.stat().st_size == 0:
        return None
    stamp, kept = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(path.stat().st_mtime)), kept_files(path)
    target = path.with_name(f"{path.name}.{stamp}")
    if kept and _age(kept[-1], path) >= (stamp, 0):  # several in one second (rotation by size), or a clock that
        newest, n = _age(kept[-1], path)  # went back (a Jetson without RTC battery, booted offline): the file moved
        target = path.with_name(f"{path.name}.{newest}-{n + 1}")  # last sorts last, so pruning keeps it
    os.rename(path, target)  # the name is new: nothing is overwritten
    log.info("kept the previous %s as %s", path, target.name)
    for old in kept_files(path)[:-keep]:
        old.unlink(missing_ok=True)
    return target


_KEPT_SUFFIX = re.compile(r"\.(\d{8}T\d{6}Z)(?:-(\d+))?")  # .YYYYmmddTHHMMSSZ[-n], what rotate_previous adds


def kept_files(path: Path) -> list[Path]:
    """The files `rotate_previous` moved `path` to, oldest first (NAME.STAMP, then NAME.STAMP-1, -2, ...;
    -10 after -9, which a plain name sort gets wrong). Only names of exactly that form: a user's
    `mot.txt.2025-backup` or `mot.txt.2nd-camera` beside `mot.txt` is neither counted nor deleted."""
    kept = [p for p in path.parent.glob(f"{glob.escape(path.name)}.[0-9]*")  # 1970 too: a clock never set
            if _KEPT_SUFFIX.fullmatch(p.name[len(path.name):])]
    return sorted(kept, key=lambda p: _age(p, path))


def _age(kept: Path, path: Path) -> tuple[str, int]:
    """(UTC stamp, n) of a kept file NAME.STAMP[-n]; n = 0 without a suffix."""
    stamp, n = _KEPT_SUFFIX.fullmatch(kept.name[len(path.name):]).groups()
    return stamp, int(n or 0)


class _DurableAppender(_SinkBase):
    """A text file written frame by frame with one write per frame and periodic fsync."""

    kind = "output"

    def __init__(self, path: str | os.PathLike, fsync_every_s: float = 1.0, keep_previous: int = 5,
                 rotate_bytes: int = 0):
        self.path = Path(path)
        self.fsync_every_s = fsync_every_s  # seconds between fsyncs; 0 = after every frame
        self.keep_previous = keep_previous  # earlier files kept beside the current one
        self.rotate_bytes = rotate_bytes  # start a new file once the current one holds this much (0 = never)
        self.frames = 0  # frames whose text is completely written (over every file of this sink)
        self._last_sync = time.monotonic()
        self._fd: int | None = None
        self._take_claim(self.path, self.kind)
        try:
            self._open()
        except BaseException:
            self._drop_claim()
            raise

    def _open(self) -> None:
        """Move an earlier file aside and start an empty one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rotate_previous(self.path, self.keep_previous)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)  # False: a pipe or tty, no fsync/truncate
        except OSError as e:
            raise SinkError(f"{self.kind}: cannot create {self.path}: {_describe(e)}") from e
        self._committed, self._file_frames = 0, 0  # this file's bytes and frames

    def _append(self, text: str) -> None:
        if self._fd is None:
            raise ValueError(f"{self.kind}: {self.path} is closed")
        data = text.encode()
        try:
            view = memoryview(data)
            while view:  # a short write (disk nearly full) is retried, then raises ENOSPC
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._rollback()
            raise SinkError(
                f"{self.kind}: cannot write {self.path}: {_describe(e)}; "
                f"the {self._file_frames} frames already written to it are intact"
            ) from e
        self._committed += len(data)  # bytes after this file's last complete frame
        self.frames, self._file_frames = self.frames + 1, self._file_frames + 1
        if self.rotate_bytes and self._regular and self._committed >= self.rotate_bytes:
            self._rotate()
        elif time.monotonic() - self._last_sync >= self.fsync_every_s:
            self._sync()

    def _rotate(self) -> None:
        """Close the full file (synced: it is complete) and go on in a new one."""
        self._close_file()
        self._open()

    def _rollback(self) -> None:
        """Cut a partial frame off the end so the file ends on a complete line."""
        if not self._regular:
            return
        try:
            os.ftruncate(self._fd, self._committed)
            os.lseek(self._fd, self._committed, os.SEEK_SET)
        except OSError:
            log.warning("%s: could not truncate %s back to %d bytes", self.kind, self.path, self._committed)

    def _sync(self) -> None:
        if not self._regular:  # a pipe or tty (--mot-out /dev/stdout): fsync fails with EINVAL
            return
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise SinkError(f"{self.kind}: cannot fsync {self.path}: {_describe(e)}") from e
        self._last_sync = time.monotonic()

    def close(self) -> None:
        try:
            self._close_file()
        finally:
            self._drop_claim()

    def _close_file(self) -> None:
        if self._fd is None:
            return
        try:
            self._sync()
        finally:
            os.close(self._fd)
            self._fd = None


class MotSink(_DurableAppender):
    """MOTChallenge results: `frame,id,x,y,w,h,conf,-1,-1,-1`, frames from 1, source pixels."""

    kind = "MOT sink"

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        t = result.tracks
        if t.track_id is None:
            raise ValueError(f"MOT sink: frame {result.index} has tracks without track_id")
        self._append(format_result_rows(result.index, t.track_id, t.xywh, t.score))


def _num(v: float, digits: int) -> float | None:
    """Rounded, or None for NaN/inf (JSON has neither)."""
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def result_record(result: FrameResult) -> dict[str, Any]:
    """One frame as a JSON-ready dict (the JSONL schema)."""
    t = result.tracks
    ids = t.track_id if t.track_id is not None else np.full(len(t), -1, np.int64)
    tracks = [
        {"id": int(i), "box": [_num(v, 2) for v in b], "score": _num(s, 4)}
        for i, b, s in zip(ids, t.xyxy, t.score)
    ]
    return {
        "frame": int(result.index),
        "timestamp": _num(result.timestamp, 6),
        "q": _num(result.q, 4),
        "w": _num(result.w, 4),
        "semantic": result.semantic,
        "tracks": tracks,
        "latency_ms": {k: _num(v, 3) for k, v in result.latency_ms.items()},
    }


class JsonlSink(_DurableAppender):
    """One JSON object per line and frame: frame, timestamp, q, w, semantic, tracks, latency_ms, unix_time.

    Boxes are `[x1, y1, x2, y2]` in source pixels; `semantic` is fresh, reused or skipped.
    """

    kind = "JSONL sink"

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        record = {**result_record(result), "unix_time": round(time.time(), 3)}  # the wall clock as the line is
        self._append(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")  # written (months of files)


def open_sinks(mot_out: str = "", jsonl_out: str = "", video_out: str = "", stats_out: str = "",
               rotate_mb: float = 0.0, keep_files: int = 5,
               fps: float = 25.0, source_stats: Callable[[], Any] | None = None,
               meta: Mapping[str, Any] | None = None, live: bool = False) -> list[Sink]:
    """The sinks a run asked for (empty paths are skipped), in a fixed order. Every path is checked
    before the MOT and JSONL sinks move an earlier file aside, so a bad `video_out` or `stats_out`
    leaves the previous results where they were. `rotate_mb` > 0 starts a new MOT, JSONL or video
    file whenever one reaches that size; `keep_files` earlier files are kept per output. `live`: a
    camera or stream, whose annotated video drops frames its encoder cannot keep up with (the
    tracker outranks its debug video); a file source's video waits and keeps every frame."""
    from .stats_sink import StatsSink  # these two import this module's base: import here, not at the top
    from .video_sink import VideoSink

    for path, kind in ((mot_out, MotSink.kind), (jsonl_out, JsonlSink.kind)):
        if path:
            check_writable(Path(path), kind)
            check_unclaimed(Path(path), kind)
    files = {"keep_previous": keep_files, "rotate_bytes": int(rotate_mb * 1e6)}
    late: list = []  # claimed, nothing written yet
    sinks: list[Sink] = []
    try:
        late.append(VideoSink(video_out, fps, drop_when_full=live, **files) if video_out else None)
        late.append(StatsSink(stats_out, source_stats=source_stats, meta=meta, keep_previous=keep_files,
                              video=late[0]) if stats_out else None)  # it counts what a live source's video dropped
        if mot_out:
            sinks.append(MotSink(mot_out, **files))
        if jsonl_out:
            sinks.append(JsonlSink(jsonl_out, **files))
    except BaseException:
        for s in sinks:
            s.close()
        for s in late:  # nothing written yet: free their paths without writing (a stats close would)
            if s is not None:
                s._drop_claim()
        raise
    late = [s for s in late if s is not None]
    try:
        for s in late:  # every output opened: the previous run's video and stats go aside now too
            s.start()
    except BaseException:
        for s in sinks:
            s.close()
        for s in late:  # a stats close would write a `final: true` file of a run that never ran
            s._drop_claim()
        raise
    return sinks + late
