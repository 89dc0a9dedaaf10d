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


def test_frames_where_nobody_is_detected_count_as_misses(cache, pets_dir):
    """measure() walked only the frames that had detections: a frame where the detector found
    nobody (5 of PETS 1-600 degraded) dropped out, and its people never counted as misses."""
    from types import SimpleNamespace

    gt = nm.load_gt(pets_dir)

    class SecondFrameBlind:
        tag = "detblind"
        backend = SimpleNamespace(outputs={"embed": SimpleNamespace(shape=(1, 1, 4))})

        def __init__(self):
            self.k = 0

        def detect(self, image):
            self.k += 1
            if self.k == 2:
                raise ValueError("no detections")  # how an empty Detections with features refuses
            ids, xyxy = gt[self.k]
            return Detections(xyxy, np.full(len(ids), 0.9, np.float32), feature=np.eye(len(ids), 4, dtype=np.float32))

    stats = nm.measure(nm.detect_sequence(SecondFrameBlind(), pets_dir, (1, 3), degraded=False),
                       {f: gt[f] for f in (1, 2, 3)})
    assert stats["n_gt"] == sum(len(gt[f][0]) for f in (1, 2, 3))
    assert stats["miss_after_hit"] == 1.0  # everyone seen on frame 1 is missed on frame 2


def test_interrupted_detector_export_leaves_no_onnx(cache, monkeypatch):
    """project_detector exported detector.onnx in place into the cache: a kill mid-export left a
    truncated file that every later run took for the export and failed to load."""
    pytest.importorskip("torch")
    from vsdmot.models import detector

    def killed(model, path):
        path.write_bytes(b"\x08\x07 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(detector, "export_onnx", killed)
    with pytest.raises(KeyboardInterrupt):
        nm.project_detector()
    assert not list(cache.parent.glob("*.onnx"))


def test_cached_detections_are_keyed_by_the_footage_not_its_name(tmp_path, mot17_dir):
    """A site folder with a seqinfo.ini copied from MOT17-05 got MOT17-05's cached detections
    paired with its own gt: the cache was keyed by the name inside seqinfo.ini."""
    import shutil

    from vsdmot.models.noise_model import _cache_path
    from vsdmot.runtime.sources import open_sequence

    copy = tmp_path / "site"
    shutil.copytree(mot17_dir, copy)
    (copy / "gt" / "gt.txt").write_text((copy / "gt" / "gt.txt").read_text() + "1,999,1,1,5,5,1,1,1\n")
    a, b = (_cache_path("det", open_sequence(d), 1, 5, False, 0) for d in (mot17_dir, copy))
    assert a != b and a == _cache_path("det", open_sequence(mot17_dir), 1, 5, False, 0)
