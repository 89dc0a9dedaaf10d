"""export.bundle: putting a staged bundle in place."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from vsdmot.export import bundle

OLD, NEW = '{"files": {}, "v": "old"}', '{"files": {}, "v": "new"}'  # bundle manifests, nothing else


def _published_and_staged(tmp_path):
    """(--out holding the OLD bundle, a staging folder holding the NEW one)."""
    out, stage = tmp_path / "b", tmp_path / ".b.staging-1"
    for d, text in ((out, OLD), (stage, NEW)):
        d.mkdir()
        (d / "manifest.json").write_text(text)
    return out, stage


def test_a_failed_swap_puts_the_previous_bundle_back(tmp_path, monkeypatch):
    """publish moves the previous bundle aside, then the new one in: when the second rename fails
    (another export published there in between: ENOTEMPTY), --out was left empty and the previous
    bundle hidden in .out.old-PID, where docs/export.md promises it stays."""
    out, stage = _published_and_staged(tmp_path)
    real = os.replace

    def fail_into_out(src, dst):
        if str(src) == str(stage):
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_out)
    with pytest.raises(OSError, match="not empty"):
        bundle.publish(stage, out, {"passed": True})
    assert (out / "manifest.json").read_text() == OLD and not list(tmp_path.glob(".b.old-*"))


def test_the_previous_bundle_is_never_deleted_while_out_is_empty(tmp_path, monkeypatch):
    out, stage = _published_and_staged(tmp_path)
    real = os.replace

    def only_the_first(src, dst):  # moving the old bundle aside works; nothing else does
        if str(dst) != str(out):
            return real(src, dst)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", only_the_first)
    with pytest.raises(OSError):
        bundle.publish(stage, out, {"passed": True})
    (old,) = tmp_path.glob(".b.old-*")
    assert (old / "manifest.json").read_text() == OLD


def test_a_sigterm_between_the_two_renames_waits_until_out_is_whole(tmp_path, monkeypatch):
    """SIGTERM (vsdmot-export turns it into exit 143) just after the previous bundle was moved
    aside: --out was missing, the previous bundle hidden in .b.old-PID."""
    import signal

    from vsdmot.export.cli import terminate_as_exit

    out, stage = _published_and_staged(tmp_path)
    real = os.replace

    def terminated_after_the_first(src, dst):
        real(src, dst)
        if str(src) == str(out):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", terminated_after_the_first)
    done = threading.Event()  # another thread, as an export has (tqdm's monitor): the kernel may hand it
    threading.Thread(target=done.wait, daemon=True).start()  # the signal, which a signal mask did not hold
    try:
        with pytest.raises(SystemExit), terminate_as_exit():
            bundle.publish(stage, out, {"passed": True})
    finally:
        done.set()
    assert (out / "manifest.json").exists() and not list(tmp_path.glob(".b.old-*"))  # whole, and nothing hidden


def test_what_a_killed_export_left_is_swept_at_the_next_start(tmp_path):
    """A SIGKILL left `.OUT.staging-PID` (a sealed, loadable bundle) forever, and one between the
    two renames left --out missing with the previous bundle hidden in `.OUT.old-PID`."""
    import subprocess
    import sys

    from vsdmot.export.chain import sweep_killed

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "b"
    for name, text in ((f".b.staging-{dead}", NEW), (f".b.old-{dead}", OLD), (f".b.staging-{os.getpid()}", NEW)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(text)
    sweep_killed(out)
    assert (out / "manifest.json").read_text() == OLD  # the previous bundle is back
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.staging-{os.getpid()}", "b"]  # a live export's kept
