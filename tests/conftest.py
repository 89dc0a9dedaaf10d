"""Shared fixtures: the real clips in ../shared/data, read in place (never copied)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Before numpy and torch load: their OpenMP pools default to every core, and on CI's two shared cores
# the tests (and the subprocesses they start, which inherit this) oversubscribed the CPU. Measured on
# the same commit: the whole suite took 858 s that way and 617 s at one thread. A caller's value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from helpers import DATA, YOLOX_ONNX


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def pets_dir() -> Path:
    return _need(DATA / "PETS09-S2L1")


@pytest.fixture(scope="session")
def tud_dir() -> Path:
    return _need(DATA / "TUD-Campus")


@pytest.fixture(scope="session")
def mot17_dir() -> Path:
    """MOT17-05: 640x480 image sequence with 9-column gt."""
    return _need(DATA / "MOT17-mini" / "train" / "MOT17-05-FRCNN")


@pytest.fixture(scope="session")
def yolox_onnx() -> Path:
    return _need(YOLOX_ONNX)


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.skip("needs Debian's ffmpeg (install.sh installs it as root: apt-get install ffmpeg)")
    return exe
