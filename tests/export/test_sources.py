"""export.sources: where the calibration set lives and who may build it."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vsdmot.export.chain import ExportConfig
from vsdmot.export.sources import Sources, calibration_feeds


class FakeSet:
    path = Path("set")
    manifest = {"sources": [], "frame_count": 0, "quality": "proxy", "quality_histogram": [], "presets": [],
                "sha256": {}}

    def __len__(self) -> int:
        return 0


@pytest.fixture
def built(monkeypatch):
    """Replace build_calibset: record the folder each call builds into."""
    from vsdmot.calibration import calibset

    dirs: list[Path] = []

    def fake_build(srcs, ccfg, out_dir, params=None, degrade_fn=None, progress=True):
        dirs.append(Path(out_dir))
        return FakeSet()

    monkeypatch.setattr(calibset, "build_calibset", fake_build)
    return dirs


@pytest.fixture
def sources(tmp_path):
    (tmp_path / "quality.json").write_text(json.dumps({"features": ["brightness"]}))
    return Sources({}, {"quality.json": tmp_path / "quality.json"})


def feeds_in(tmp_path, sources, work: str, quality: str = "auto") -> None:
    (tmp_path / work).mkdir(exist_ok=True)
    calibration_feeds(sources, [], ExportConfig(calib=("clip.mp4",), calib_quality=quality), tmp_path / work, tmp_path)


def test_gate_and_proxy_sets_live_in_different_folders(tmp_path, sources, built):
    """Work dirs under one parent share the set's folder: one named by sources and config only had a
    --calib-quality proxy export rebuild a gate-stratified set in place, under a running export."""
    feeds_in(tmp_path, sources, "w1", "gate")
    feeds_in(tmp_path, sources, "w2", "proxy")
    feeds_in(tmp_path, sources, "w3", "gate")
    assert built[0] != built[1] and built[0] == built[2] and built[0].parent == tmp_path


def test_a_set_being_built_by_another_export_is_waited_for(tmp_path, sources, built):
    feeds_in(tmp_path, sources, "w1")
    lock = built[0].with_name(built[0].name + ".lock")
    with open(lock, "a+") as held:  # another export building that set
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=feeds_in, args=(tmp_path, sources, "w2"))
        t.start()
        time.sleep(0.5)
        assert len(built) == 1  # not building over the other one's frames.npy
    t.join(10)
    assert len(built) == 2 and built[1] == built[0]


def test_tracker_feeds_are_recorded_on_onnxruntime(tmp_path, monkeypatch):
    """The FP32 reference pipeline that records the tracker's calibration feeds ran with the runtime's
    default backend, `auto`: on a device (--target tensorrt runs there) it built three TensorRT engines
    for a throwaway reference bundle first, and recorded TF32 values; the gate tracks on onnxruntime."""
    from types import SimpleNamespace

    from vsdmot.calibration import feeds as cfeeds
    from vsdmot.export.sources import record_tracker_feeds
    from vsdmot.runtime import bundle as rb
    from vsdmot.runtime import pipeline

    seen = []
    trk = SimpleNamespace(path="tracker.onnx")
    monkeypatch.setattr(rb, "load_bundle", lambda path: None)
    monkeypatch.setattr(pipeline, "build_pipeline", lambda b, cfg, fps: seen.append(cfg) or SimpleNamespace(
        backends=[trk], close=lambda: None))
    monkeypatch.setattr(cfeeds, "record_feeds", lambda step, frames, backends: {"tracker": []})
    record_tracker_feeds(tmp_path, [])
    assert seen[0].pipeline.backend == "onnxruntime"


def test_near_crops_are_keyed_without_copying_them_eightfold():
    """NearFeeds named its crops (294 x 416 x 416 x 3 uint8: 153 MB with pruning's default) by fingerprint()
    of their bytes: str() of a bytes object, JSON-escaped and encoded, peaked at ~8x the array (1.2 GB)."""
    import tracemalloc

    import numpy as np

    from vsdmot.export.sources import NearFeeds

    near = np.random.default_rng(0).integers(0, 255, (20, 1, 3, 128, 128)).astype(np.uint8)  # 1 MB
    other = near.copy()
    other[3, 0, 1, 5, 7] ^= 1
    tracemalloc.start()
    try:
        key = NearFeeds([], near).key
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < near.nbytes / 2
    assert key != NearFeeds([], other).key and key == NearFeeds([], near.copy()).key


@pytest.mark.parametrize("hw,stored", [((384, 640), 640), ((320, 416), 416), ((256, 256), 416)])
def test_calibration_frames_are_stored_at_least_as_large_as_the_detector_input(hw, stored):
    """A 640x384 detector calibrated on 416-px frames would see upscaled, blurrier content."""
    import torch

    from vsdmot.calibration.calibset import CalibSetConfig
    from vsdmot.export.sources import stored_size
    from vsdmot.export.to_onnx import TorchNet

    det = TorchNet("detector", torch.nn.Identity(), {"images": torch.zeros(1, 3, *hw)}, ("output",))
    assert stored_size(CalibSetConfig(), Sources({"detector": det})).size == stored
    assert stored_size(CalibSetConfig(), Sources({})).size == 416


@pytest.mark.parametrize("over, near", [({}, False), ({"near_calibration": True}, True), ({"prune": 0.25}, True),
                                        ({"near_calibration": True, "calib": ("clip.mp4",)}, False)])
def test_near_pedestrian_crops_join_the_detector_feeds_when_pruning_or_asked(tmp_path, sources, built, monkeypatch,
                                                                             over, near):
    import numpy as np
    import torch

    from vsdmot.calibration import feeds as F
    from vsdmot.export import sources as S
    from vsdmot.export.to_onnx import TorchNet

    class OneFeed(list):  # a stored set's feeds: one frame, with the size its key names
        size = 1

    monkeypatch.setattr(F, "DetectorFeeds", lambda cs, hw: OneFeed([{"images": np.zeros((1, 3, *hw), np.float32)}]))
    monkeypatch.setattr(S, "near_pedestrian_frames", lambda hw: np.zeros((2, 1, 3, *hw), np.uint8))
    det = TorchNet("detector", torch.nn.Identity(), {"images": torch.zeros(1, 3, 64, 96)}, ("output",))
    src = Sources({"detector": det}, sources.files)
    (tmp_path / "w").mkdir()
    out = calibration_feeds(src, ["detector"], ExportConfig(**over), tmp_path / "w", tmp_path)
    assert isinstance(out["detector"], S.NearFeeds) == near
    assert len(out["detector"]) == (3 if near else 1)


def test_fp32_parity_runs_on_real_frames_prepared_as_the_runtime_does():
    """The FP32 reference's torch -> ONNX parity compared one all-zero input, which agrees trivially."""
    import torch

    from vsdmot.export.sources import parity_feeds, parity_frames
    from vsdmot.export.to_onnx import TorchNet
    from vsdmot.runtime.yolox import letterbox

    frames = parity_frames(4)
    assert len(frames) == 4 and frames[0].shape == (480, 640, 3) and not np.array_equal(frames[0], frames[-1])
    det = TorchNet("detector", None, {"images": torch.zeros(1, 3, 320, 416)}, ("output",))
    feeds = parity_feeds(det, frames)
    assert [f["images"].shape for f in feeds] == [(1, 3, 320, 416)] * 4
    np.testing.assert_array_equal(feeds[1]["images"], letterbox(frames[1], (320, 416))[0])
    stu = parity_feeds(TorchNet("student", None, {"image": torch.zeros(1, 3, 128, 128)}, ("semantic",)), frames)
    assert stu[0]["image"].dtype == np.float32 and stu[0]["image"].shape == (1, 3, 128, 128) and stu[0]["image"].std() > 10
    assert parity_feeds(TorchNet("tracker", None, {"a": torch.zeros(1), "b": torch.zeros(1)}, ("x",)), frames) is None


def test_a_checkpoint_without_notice_still_carries_yolox_nanos(tmp_path):
    """A user's weights folder without NOTICE made a bundle without the Apache-2.0 notice its
    YOLOX-nano-derived detector must carry."""
    import shutil

    from vsdmot.export.sources import load_sources
    from vsdmot.models.detector import WEIGHTS_DIR

    for name in ("detector.pt", "quality.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path)
    src = load_sources(tmp_path)
    assert src.files["NOTICE"].read_text() == (WEIGHTS_DIR / "NOTICE").read_text()
    assert "Apache-2.0" in src.provenance["notice"]


def test_a_student_of_another_width_than_the_tracker_fuses_is_refused(tmp_path):
    """`vsdmot-train student --dim 64` beside the shipped tracker (128): exported, then refused by
    the runtime at every start."""
    import torch

    from vsdmot.export.sources import check_together
    from vsdmot.export.to_onnx import TorchNet

    student = TorchNet("student", torch.nn.Linear(3, 64).eval(), {"image": torch.zeros(1, 3)}, ("semantic",))
    tracker = TorchNet("tracker", torch.nn.Identity(), {"semantic": torch.zeros(1, 128)}, ("match_logits",))
    with pytest.raises(ValueError, match="64-wide semantic vector, but tracker.pt fuses 128.*--dim 128"):
        check_together({"student": student, "tracker": tracker}, tmp_path)
    check_together({"student": student}, tmp_path)  # no tracker: nothing to match


def test_a_quality_json_whose_dswr_is_not_the_trackers_is_named(tmp_path, caplog):
    """quality.json made before the tracker (the docs' old order) carried another g(q) than the
    tracker learned with, and runs apply quality.json's: nothing said so."""
    import json

    from vsdmot.export.sources import note_dswr

    learned = {"form": "sigmoid", "w_max": 0.9, "k": 10.0, "q0": 0.6}
    q = tmp_path / "quality.json"
    q.write_text(json.dumps({"dswr": learned}))
    with caplog.at_level("WARNING", logger="vsdmot.export.sources"):
        note_dswr(q, {"dswr": learned})
        assert caplog.text == ""
        q.write_text(json.dumps({"dswr": {**learned, "q0": 0.688}}))
        note_dswr(q, {"dswr": learned})
    assert "is not the one tracker.pt learned (w_max 0.9, k 10, q0 0.6)" in caplog.text
