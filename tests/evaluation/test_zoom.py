"""The zoomed train-side sequence (evaluation/zoom.py): crop choice, gt transform, the written folder."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import DATA
from vsdmot.evaluation.zoom import ZoomConfig, best_crop, zoom_rows, zoom_sequence
from vsdmot.runtime.mot import MotRows, read_rows, read_seqinfo
from vsdmot.runtime.sources import open_sequence


def rows(xywh) -> MotRows:
    n = len(xywh)
    return MotRows(np.ones(n, np.int64), np.arange(1, n + 1), np.asarray(xywh, float), np.ones(n),
                   -np.ones(n, np.int64), -np.ones(n))


def test_the_crop_goes_where_the_people_are():
    gt = rows([[300, 200, 20, 40], [320, 220, 20, 40], [10, 10, 20, 40]])  # two near (310, 220), one far
    x, y, w, h = best_crop(gt, (400, 300), ZoomConfig(factor=2.0, grid=8))
    assert (w, h) == (200, 150) and x <= 310 < x + w and y <= 240 < y + h


def test_boxes_are_clipped_scaled_and_dropped_when_mostly_outside():
    gt = rows([[10, 10, 20, 40],    # inside
               [90, 10, 20, 40],    # half inside on the right: kept, clipped to 90..100
               [95, 10, 20, 40]])   # a quarter inside: dropped
    out = zoom_rows(gt, (0, 0, 100, 100), (2.0, 2.0), ZoomConfig(min_visible=0.5))
    assert out.id.tolist() == [1, 2]
    np.testing.assert_allclose(out.xywh, [[20, 20, 40, 80], [180, 20, 20, 80]])


def test_a_zoomed_window_is_a_sequence_the_evaluation_reads(tmp_path):
    seq = DATA / "PETS09-S2L1"
    if not seq.is_dir():
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    info = zoom_sequence(f"{seq}:11-20", tmp_path / "z", ZoomConfig(factor=2.0))
    z = open_sequence(tmp_path / "z")
    gt = read_rows(z.gt_path)
    assert info["frames"] == 10 == read_seqinfo(tmp_path / "z").length and z.video is None
    assert gt.frame.min() >= 1 and gt.frame.max() <= 10 and 0 < info["gt_boxes"] <= info["gt_boxes_before"]
    assert (gt.xywh[:, :2] >= 0).all() and (gt.xywh[:, 0] + gt.xywh[:, 2] <= 768 + 1e-6).all()
    src = read_rows(seq / "gt" / "gt.txt")
    src = src.select((src.frame >= 11) & (src.frame <= 20))
    h = {(f - 10, i): hh for f, i, hh in zip(src.frame, src.id, src.xywh[:, 3])}  # source height by (frame, id)
    ratio = np.array([hh / h[f, i] for f, i, hh in zip(gt.frame, gt.id, gt.xywh[:, 3])])
    assert (ratio <= 2 + 1e-3).all() and np.mean(np.isclose(ratio, 2.0, atol=1e-3)) > 0.5  # twice as tall, or clipped
    with pytest.raises(ValueError, match="held-out"):
        zoom_sequence(f"{seq}:590-610", tmp_path / "h")


def test_a_mot17_window_keeps_its_classes(tmp_path, mot17_dir):
    """The zoomed gt was written in the 10-column MOT15 layout with conf-0 rows dropped: a MOT17
    window lost its classes, so `evaluate` applied the MOT15 rules, and result boxes on distractors
    (MOT17-05: class 8, conf 0) counted as false positives instead of being removed."""
    from vsdmot.evaluation.metrics import evaluate
    from vsdmot.runtime.mot import write_rows

    zoom_sequence(f"{mot17_dir}:1-3", tmp_path / "z", ZoomConfig(factor=1.25, min_visible=0.01))
    gt = read_rows(tmp_path / "z" / "gt" / "gt.txt")
    assert 8 in gt.cls.tolist() and 1 in gt.cls.tolist()
    people_and_distractors = gt.select(np.isin(gt.cls, (1, 8)))  # a tracker that also boxes the distractors
    write_rows(tmp_path / "res.txt", people_and_distractors)
    m = evaluate(tmp_path / "z", tmp_path / "res.txt")
    assert m["benchmark"] == "MOT17" and m["FP"] == 0 and m["HOTA"] == pytest.approx(1.0)


def test_the_held_out_copy_keeps_a_mot17_layout(tmp_path, mot17_dir):
    """ablation.held_out_copy wrote its gt with the results writer (10 columns): classes were lost."""
    from vsdmot.evaluation.ablation import held_out_copy

    out = held_out_copy(mot17_dir, tmp_path / "copy", 2, 3)
    src, gt = read_rows(mot17_dir / "gt" / "gt.txt"), read_rows(out / "gt" / "gt.txt")
    src = src.select((src.frame >= 2) & (src.frame <= 3))
    assert sorted(zip(gt.frame, gt.id, gt.cls)) == sorted(zip(src.frame - 1, src.id, src.cls))


@pytest.mark.parametrize("name, span, held_out", [
    ("TUD-Campus-jpeg-s3", (1, 10), True),  # vsdmot-bench's degraded copy of a held-out sequence
    ("PETS09-S2L1-schedule-mixed", (590, 610), True),  # same frame numbers as its source
    ("PETS09-S2L1-jpeg-s3", (1, 600), False),
    ("PETS09-S2L1-601-795-jpeg-s3", (1, 10), True),
    ("TUD-Campusx", None, False),
    ("MOT17-04-FRCNN-jpeg-s3", None, False),
])
def test_degraded_copies_of_held_out_frames_are_held_out(name, span, held_out):
    """touches_held_out knew the source names only, so zoom (and assoc_study, noise_floor) took a
    degraded copy of TUD-Campus or of PETS 601-795 from the bench cache for train-side data."""
    from vsdmot.splits import touches_held_out

    assert touches_held_out(name, span) is held_out


def test_zoom_refuses_a_degraded_copy_of_held_out_frames(tmp_path, tud_dir):
    import shutil

    copy = tmp_path / "TUD-Campus-jpeg-s3"
    shutil.copytree(tud_dir / "gt", copy / "gt")
    info = (tud_dir / "seqinfo.ini").read_text().replace("name=TUD-Campus", "name=TUD-Campus-jpeg-s3")
    (copy / "seqinfo.ini").write_text(info)
    (copy / "TUD-Campus-jpeg-s3.mp4").symlink_to(tud_dir / "TUD-Campus.mp4")  # frames as the cache's (read in place)
    with pytest.raises(ValueError, match="held-out"):
        zoom_sequence(f"{copy}:1-5", tmp_path / "z")


def test_a_zoom_of_held_out_frames_stays_held_out(tmp_path):
    """The copy numbers its frames from 1 under its folder's name: a zoom of PETS 601-605 written to
    PETS09-S2L1-zoom2 passed every train-side check as frames 1-5 (open_window, assoc_study)."""
    from vsdmot.evaluation.zoom import open_window
    from vsdmot.splits import touches_held_out

    seq = DATA / "PETS09-S2L1"
    if not seq.is_dir():
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    zoom_sequence(f"{seq}:601-605", tmp_path / "PETS09-S2L1-zoom2", ZoomConfig(factor=2.0), held_out=True)
    name = read_seqinfo(tmp_path / "PETS09-S2L1-zoom2").name
    assert name == "PETS09-S2L1-zoom2-heldout" and touches_held_out(name, (1, 5))
    with pytest.raises(ValueError, match="held-out"):
        open_window(f"{tmp_path / 'PETS09-S2L1-zoom2'}:1-5", False, "train-side study")
    zoom_sequence(f"{seq}:11-15", tmp_path / "train", ZoomConfig(factor=2.0))  # train-side frames keep their name
    assert read_seqinfo(tmp_path / "train").name == "train"
