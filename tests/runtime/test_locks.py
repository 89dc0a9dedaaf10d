"""File locks between real processes: a claim is refused while held, freed by release or by the
holder's death, and a waiting lock serialises."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from vsdmot.runtime import locks

CTX = multiprocessing.get_context("fork")


def _hold_claim(path, ready, stop):
    locks.claim(path)
    ready.set()
    stop.wait(30)


def test_a_claim_is_refused_while_another_process_holds_it(tmp_path):
    path = tmp_path / ".out.lock"
    ready, stop = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=_hold_claim, args=(path, ready, stop))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(locks.Claimed, match=f"pid {holder.pid}") as e:
            locks.claim(path)
        assert e.value.holder == f"pid {holder.pid}"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a killed holder releases it (the kernel drops its flock)
        holder.join(10)
    fd = locks.claim(path)  # its lock file is still there, unlocked
    assert path.read_text() == f"pid {os.getpid()}"
    locks.release(fd, path)
    assert not path.exists()


def test_release_frees_a_claim_in_this_process(tmp_path):
    path = tmp_path / ".out.lock"
    fd = locks.claim(path)
    with pytest.raises(locks.Claimed):  # a second descriptor is a second claimant, even here
        locks.claim(path)
    locks.release(fd, path)
    locks.release(locks.claim(path), path)


def test_a_claim_does_not_count_a_lock_file_its_holder_removed(tmp_path, monkeypatch):
    """The race `claim` guards against: it opened the lock file just before the holder removed it
    (simulated by removing it between open and the inode check), so its lock is on a dead file."""
    path = tmp_path / ".out.lock"
    real_open, opened = os.open, []

    def open_then_lose(p, *a):
        fd = real_open(p, *a)
        opened.append(os.fstat(fd).st_ino)
        if len(opened) == 1:
            os.unlink(p)  # the holder's release, between this open and the check
        return fd

    monkeypatch.setattr(locks.os, "open", open_then_lose)
    fd = locks.claim(path)
    assert len(opened) == 2 and os.fstat(fd).st_ino == os.stat(path).st_ino == opened[1]
    locks.release(fd, path)


def _hold_waiting(path, log, seconds):
    with locks.waiting_lock(path, "test"):
        with open(log, "a") as f:
            f.write(f"in {time.monotonic()}\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"out {time.monotonic()}\n")


def test_waiting_lock_serialises_processes(tmp_path):
    log = tmp_path / "log"
    procs = [CTX.Process(target=_hold_waiting, args=(tmp_path / "x.lock", log, 0.3)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["in", "out", "in", "out"]  # never both inside


def _lock_as(uid, path, result):
    os.setgid(uid)
    os.setuid(uid)
    try:
        with locks.waiting_lock(path, "reading the engine"):
            result.put("locked")
    except OSError as e:
        result.put(f"{type(e).__name__}: {e}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to make a lock file another user cannot write")
def test_a_lock_file_another_user_made_is_locked_read_only():
    """A service user (here: nobody) takes the lock of an engine cache root filled (vsdmot-export
    --target tensorrt): the file is 0644 root's, and opening it for writing was a PermissionError."""
    folder = Path(tempfile.mkdtemp(prefix="vsdmot-locks-"))  # 0700 pytest folders would hide it from nobody
    try:
        os.chmod(folder, 0o755)
        with locks.waiting_lock(folder / "detector.lock", "building"):
            pass  # root made it, 0644
        result = CTX.Queue()
        p = CTX.Process(target=_lock_as, args=(65534, folder / "detector.lock", result))
        p.start()
        p.join(30)
        assert result.get(timeout=5) == "locked"
    finally:
        shutil.rmtree(folder)
