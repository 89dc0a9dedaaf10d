"""det_recall: people a bundle's detector finds, counted against gt on single frames."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import REPO
from vsdmot.evaluation import det_recall as R
from vsdmot.runtime.mot import MotRows


def gt_rows(boxes, conf=None, cls=None, vis=None) -> MotRows:
    n = len(boxes)
    xyxy = np.array(boxes, np.float64).reshape(n, 4)
    return MotRows(np.ones(n, np.int64), np.arange(1, n + 1), np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]],
                   np.array(conf or [1.0] * n), np.array(cls or [1] * n, np.int64), np.array(vis or [1.0] * n))


def test_a_frame_counts_found_missed_and_false_boxes_and_ignores_what_is_not_counted():
    gt = gt_rows([[0, 0, 10, 30], [50, 0, 60, 30], [100, 0, 110, 30], [200, 0, 210, 30], [300, 0, 310, 30]],
                 conf=[1, 1, 1, 0, 1], cls=[1, 1, 1, 1, 7], vis=[1.0, 1.0, 0.1, 1.0, 1.0])
    boxes = np.array([[0, 0, 10, 30],      # finds person 1
                      [101, 0, 111, 30],   # on a 10 %-visible person: not counted, not false
                      [200, 0, 210, 30],   # on a conf-0 row: ignored
                      [300, 0, 310, 30],   # on a static person (class 7): ignored
                      [400, 0, 410, 30]],  # on nothing: false
                     np.float32)
    c = R.score_frame(boxes, gt, min_vis=0.25)
    assert (c.tp, c.fp, c.fn) == (1, 1, 1)  # person 2 (50..60) was missed
    assert (R.score_frame(boxes, gt, min_vis=0.0).tp, R.score_frame(boxes, gt, min_vis=0.0).fn) == (2, 1)


def test_mot15_rows_without_class_or_visibility_count_by_conf():
    gt = gt_rows([[0, 0, 10, 30], [50, 0, 60, 30]], conf=[1, 0], cls=[-1, -1], vis=[-1.0, -1.0])
    c = R.score_frame(np.zeros((0, 4), np.float32), gt, min_vis=0.25)
    assert (c.tp, c.fp, c.fn) == (0, 0, 1)


def test_the_shipped_detector_on_real_annotated_frames(mot17_dir, capsys, tmp_path):
    seq = mot17_dir  # MOT17-05: 640x480, 6 annotated frames
    res = R.score_bundle(REPO / "runtime" / "assets" / "default", [seq], 0.5, 0.25)
    assert res.input_size == "416x416" and list(res.per_seq) == ["MOT17-05-FRCNN"]
    from vsdmot.runtime.mot import read_rows

    gt = read_rows(seq / "gt" / "gt.txt")
    frames = {int(p.stem) for p in (seq / "img1").glob("*.jpg")}
    people = sum(R.counted(gt.at(f), 0.25).sum() for f in frames)
    c = res.total()
    assert c.tp + c.fn == people and len(c.ms) == len(frames)  # every counted person, once per frame
    assert 0.3 <= c.tp / people <= 0.9 and c.tp >= 5 * c.fp  # YOLOX-nano at 416 on near people: about half
    assert R.main(["--bundles", f"ship={REPO / 'runtime' / 'assets' / 'default'}", "--seq", str(seq),
                   "--json", str(tmp_path / "r.json")]) == 0
    assert "| ship | 416x416 |" in capsys.readouterr().out and (tmp_path / "r.json").is_file()


def test_bad_arguments_exit_2_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        R.main(["--bundles", "nodir"])
    assert e.value.code == 2 and "expected NAME=DIR" in capsys.readouterr().err
    assert R.main(["--bundles", "a=/nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("det_recall: error: bundle /nope") and len(err.splitlines()) == 1
