"""The moving-camera copy of a sequence (evaluation/camera_motion.py): the paths, the gt, the folder."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import DATA
from vsdmot.evaluation.camera_motion import MotionConfig, motion_sequence, offsets
from vsdmot.runtime.mot import read_rows, read_seqinfo
from vsdmot.runtime.sources import open_sequence


@pytest.mark.parametrize("cfg", [MotionConfig("static"), MotionConfig("shake", 24), MotionConfig("shake", 48, smooth=3),
                                 MotionConfig("pan", 8)])
def test_paths_stay_inside_the_slack(cfg):
    xy = offsets(400, (154, 115), cfg)
    assert xy.shape == (400, 2) and (xy >= 0).all() and (xy <= [154, 115]).all()
    steps = np.abs(np.diff(xy, axis=0))
    if cfg.motion == "static":
        assert (xy == [77, 58]).all()
    elif cfg.motion == "pan":
        assert steps[:, 0].max() == 8 and steps[:, 1].max() == 0 and xy[:, 0].min() == 0 and xy[:, 0].max() > 154 - 8
    else:
        assert np.abs(xy - [77, 57.5]).max() <= cfg.amplitude + 1 and steps.mean() > cfg.amplitude / 8
    np.testing.assert_array_equal(xy, offsets(400, (154, 115), cfg))  # seeded


def test_a_panned_window_moves_the_gt_with_the_camera(tmp_path):
    seq = DATA / "PETS09-S2L1"
    if not seq.is_dir():
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    still = motion_sequence(f"{seq}:11-20", tmp_path / "still", MotionConfig("static"))
    pan = motion_sequence(f"{seq}:11-20", tmp_path / "pan", MotionConfig("pan", 4))
    assert still["frames"] == pan["frames"] == 10 == read_seqinfo(tmp_path / "pan").length
    assert pan["mean_step_px"] == 4.0 and still["mean_step_px"] == 0.0
    assert open_sequence(tmp_path / "pan").video is None and len(list((tmp_path / "pan" / "img1").glob("*.jpg"))) == 10
    a, b = read_rows(tmp_path / "still" / "gt" / "gt.txt"), read_rows(tmp_path / "pan" / "gt" / "gt.txt")
    # the same person on frame 10, away from the window's edges: the pan's window started at x 0 (the
    # still one at 77) and moved 4 px a frame, so its box sits (77 - 36) x 1.25 px further right
    checked = 0
    for i in set(a.at(10).id) & set(b.at(10).id):
        pa, pb = a.select((a.frame == 10) & (a.id == i)), b.select((b.frame == 10) & (b.id == i))
        if 60 < pa.xywh[0, 0] < 600 and np.isclose(pa.xywh[0, 2], pb.xywh[0, 2]):  # not clipped by either window
            assert pb.xywh[0, 0] - pa.xywh[0, 0] == pytest.approx((77 - 36) * 768 / 614, abs=1.0)
            checked += 1
    assert checked >= 3
    with pytest.raises(ValueError, match="held-out"):
        motion_sequence(f"{seq}:590-610", tmp_path / "h")
