"""models/noise_model.py: the detection and semantics caches that tracker training and the held-out
comparison read."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.models import noise_model as nm
from vsdmot.runtime.types import Detections


class FakeDetector:
    tag = "detfake"

    def detect(self, image: np.ndarray) -> Detections:
        return Detections(np.array([[1, 2, 30, 60]], np.float32), np.array([0.9], np.float32),
                          feature=np.ones((1, 4), np.float32))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSDMOT_CACHE", str(tmp_path))
    return tmp_path / "dets"


def test_interrupted_cache_write_leaves_no_cache(cache, pets_dir, monkeypatch):
    """The .npz was written in place: a kill mid-write left a truncated file that `is_file()` took
    for a finished cache, and every later run failed on it (or read it) instead of recomputing."""
    real = np.savez_compressed

    def killed(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=False)
    assert not list(cache.glob("*.npz"))
    monkeypatch.setattr(np, "savez_compressed", real)
    path = nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=False)
    assert np.load(path)["frame"].tolist() == [1, 2]


def test_degraded_caches_are_keyed_by_the_degradation_code(cache, pets_dir, tmp_path, monkeypatch):
    """The degraded caches were keyed by detector, sequence, frames and seed only: after a change to
    calibration.degrade, training and the held-out comparison kept reading frames degraded by the
    old code."""
    src = tmp_path / "degrade.py"
    src.write_text("A = 1\n")
    monkeypatch.setattr(nm, "degradation_sources", lambda: [src])
    first = nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=True)
    assert nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=True) == first
    src.write_text("A = 2\n")
    assert nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=True) != first
    clean = nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=False)
    src.write_text("A = 3\n")
    assert nm.detect_sequence(FakeDetector(), pets_dir, (1, 2), degraded=False) == clean
