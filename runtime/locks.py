"""Advisory file locks between processes on one machine (fcntl.flock).

Two things on a device are shared by every process that runs the tracker: the TensorRT engine
cache, and the output files a config names. Two camera services starting at boot, or a service
and a `vsdmot-edge run` started by hand to check it, meet there:
- `waiting_lock` serialises work that must happen once (building an engine): the second process
  waits, then finds the first one's result;
- `claim` refuses work that must not happen twice (two runs writing one output file), saying
  which process holds it.

A flock is released by the kernel when its holder exits or is killed, so a crash never leaves a
stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class Claimed(OSError):
    """`claim` found the lock held by another process; `holder` is what that process wrote in it."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextmanager
def waiting_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent). When another process holds it, log
    that this one waits for `what`, then wait for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_lock_file(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process holds %s (%s); waiting for it", path, what)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # released when f closes


def _open_lock_file(path: Path):
    """The lock file, read-only when another user made it: flock needs no write access, and a
    service reads an engine cache that root filled (`vsdmot-export --target tensorrt`)."""
    try:
        return open(path, "a+")
    except PermissionError:
        if not path.exists():
            raise
        return open(path)


def claim(path: str | os.PathLike) -> int:
    """Take the lock file `path` for this process and write "pid N" in it; the descriptor to hand
    to `release`. Claimed when another process holds it.

    The lock file is removed on release, so a claim checks after locking that `path` is still the
    file it locked: a process that opened it just before the holder removed it must not count a
    lock on the removed file."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise Claimed(path, holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
            return fd
        os.close(fd)  # locked a file its holder had just removed: take the new one


def release(fd: int, path: str | os.PathLike) -> None:
    """Remove the lock file, then drop the lock (in this order: see `claim`)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
