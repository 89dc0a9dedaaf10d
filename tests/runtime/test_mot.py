"""MOTChallenge text I/O on the real sequences: gt layouts, round trips, seqinfo, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.runtime.mot import (
    MotRows, SeqInfo, format_result_rows, read_rows, read_seqinfo, write_rows, write_seqinfo,
)


@pytest.mark.parametrize(
    "fixture, rows, frames, mot17, first_row",
    [
        ("pets_dir", 4650, (1, 795), False, (1, 9, 499, 158, 31.03, 75.17, 1)),
        ("tud_dir", 359, (1, 71), False, (1, 1, 399, 182, 121, 229, 1)),
        ("mot17_dir", 73, (1, 6), True, (1, 1, 17, 150, 77, 191, 1)),
    ],
)
def test_read_real_gt(request, fixture, rows, frames, mot17, first_row):
    gt = read_rows(request.getfixturevalue(fixture) / "gt" / "gt.txt")
    assert len(gt) == rows
    assert (gt.frame.min(), gt.frame.max()) == frames
    got = (gt.frame[0], gt.id[0], *gt.xywh[0], gt.conf[0])
    np.testing.assert_allclose(got, first_row)
    assert (gt.cls != -1).all() if mot17 else (gt.cls == -1).all()
    assert ((gt.vis >= 0) & (gt.vis <= 1)).all() if mot17 else (gt.vis == -1).all()


def test_pets_gt_counts_conf_zero_rows(pets_dir):
    """The data README: 174 of PETS09-S2L1's 4,650 rows have conf 0 (not counted)."""
    gt = read_rows(pets_dir / "gt" / "gt.txt")
    assert int((gt.conf == 0).sum()) == 174


def test_mot17_classes_and_visibility(mot17_dir):
    gt = read_rows(mot17_dir / "gt" / "gt.txt")
    assert set(np.unique(gt.cls)) <= set(range(1, 14))
    assert 1 in gt.cls


def test_det_file_with_seven_columns(mot17_dir):
    det = read_rows(mot17_dir / "det" / "det.txt")
    assert (det.id == -1).all() and len(det) > 100
    assert (det.cls == -1).all() and (det.conf > 0).all()


@pytest.mark.parametrize("fixture", ["pets_dir", "tud_dir", "mot17_dir"])
def test_results_round_trip(request, tmp_path, fixture):
    """read gt -> write as results -> read back: same frames, ids, boxes (2 decimals), conf."""
    gt = read_rows(request.getfixturevalue(fixture) / "gt" / "gt.txt")
    write_rows(tmp_path / "res.txt", gt)
    back = read_rows(tmp_path / "res.txt")
    np.testing.assert_array_equal(back.frame, gt.frame)
    np.testing.assert_array_equal(back.id, gt.id)
    np.testing.assert_allclose(back.xywh, gt.xywh, atol=0.005 + 1e-9)
    np.testing.assert_allclose(back.conf, gt.conf, atol=5e-5)
    assert (back.cls == -1).all()  # results carry no class


def test_result_line_layout():
    line = format_result_rows(3, np.array([7]), np.array([[1.0, 2.5, 30.0, 60.25]]), np.array([0.9]))
    assert line == "3,7,1.00,2.50,30.00,60.25,0.9000,-1,-1,-1\n"


def test_empty_results_file(tmp_path):
    (tmp_path / "res.txt").write_text("")
    rows = read_rows(tmp_path / "res.txt")
    assert len(rows) == 0 and rows.xywh.shape == (0, 4)


def test_rows_at_frame(tud_dir):
    gt = read_rows(tud_dir / "gt" / "gt.txt")
    one = gt.at(1)
    assert len(one) == int((gt.frame == 1).sum()) > 0 and (one.frame == 1).all()


@pytest.mark.parametrize(
    "fixture, name, rate, length, size",
    [
        ("pets_dir", "PETS09-S2L1", 7.0, 795, (768, 576)),  # 7 fps, not the AVI header's 10
        ("tud_dir", "TUD-Campus", 25.0, 71, (640, 480)),
        ("mot17_dir", "MOT17-05-FRCNN", 14.0, 837, (640, 480)),
    ],
)
def test_read_seqinfo(request, fixture, name, rate, length, size):
    info = read_seqinfo(request.getfixturevalue(fixture))
    assert (info.name, info.frame_rate, info.length, (info.width, info.height)) == (name, rate, length, size)


def test_a_video_given_as_the_sequence_names_what_is_expected(tmp_path):
    clip = tmp_path / "site.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)))  # was "'utf-8' codec can't decode byte"
    with pytest.raises(ValueError, match=r"site.mp4: expected a MOTChallenge sequence folder .* got a .mp4 file"):
        read_seqinfo(clip)


def test_seqinfo_round_trip(tmp_path):
    info = SeqInfo("clip", 7.5, 12, 320, 240, "img1", ".png")
    write_seqinfo(tmp_path / "seqinfo.ini", info)
    assert read_seqinfo(tmp_path) == info


BAD_GT = [
    ("1,1,10,10,5,5,1,-1,-1,-1\n2,1,x,10,5,5,1,-1,-1,-1\n", "comma-separated numbers"),
    ("1,1,10,10,5,5,1,-1,-1,-1\n2,1,10,10,5,5,1,-1,-1\n", "expected 10 columns"),
    ("1,1,10,10\n", "expected 6-10 columns"),
    ("0,1,10,10,5,5,1,-1,-1,-1\n", "frame"),
    ("1,1,10,nan,5,5,1,-1,-1,-1\n", "finite"),
]


@pytest.mark.parametrize("text, message", BAD_GT)
def test_malformed_rows_raise_one_clear_error(tmp_path, text, message):
    (tmp_path / "gt.txt").write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        read_rows(tmp_path / "gt.txt")
    assert "gt.txt:" in str(e.value)  # names the file and line


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "expected a file"),
        ("[Sequence]\nname=x\nframeRate=7\n", "expected a \\[Sequence\\] section"),
        ("[Sequence]\nname=x\nframeRate=fast\nseqLength=3\nimWidth=4\nimHeight=4\n", "frameRate"),
        ("no section header\n", "Sequence"),
        # a rate of 0 opened fine, then every frame's timestamp divided by it (ZeroDivisionError mid-run)
        ("[Sequence]\nname=x\nframeRate=0\nseqLength=3\nimWidth=4\nimHeight=4\n", "frameRate: expected > 0"),
        ("[Sequence]\nname=x\nframeRate=nan\nseqLength=3\nimWidth=4\nimHeight=4\n", "frameRate: expected > 0"),
        ("[Sequence]\nname=x\nframeRate=7\nseqLength=-3\nimWidth=4\nimHeight=4\n", "seqLength: expected >= 0"),
    ],
)
def test_bad_seqinfo(tmp_path, text, message):
    if text is not None:
        (tmp_path / "seqinfo.ini").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_seqinfo(tmp_path)


def test_missing_rows_file(tmp_path):
    with pytest.raises(ValueError, match="expected a file"):
        read_rows(tmp_path / "gt.txt")


def test_select_keeps_every_field():
    rows = MotRows(np.arange(1, 4), np.arange(3), np.zeros((3, 4)), np.ones(3), np.full(3, -1), np.full(3, -1.0))
    sub = rows.select(np.array([True, False, True]))
    assert list(sub.frame) == [1, 3] and sub.xywh.shape == (2, 4) and len(sub.vis) == 2


def test_atomic_write_gives_the_umask_mode(tmp_path):
    import os
    import stat

    from vsdmot.runtime import mot

    out = tmp_path / "stats.json"
    mot.atomic_write_text(out, "{}")
    assert out.read_text() == "{}"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~mot._UMASK  # not mkstemp's 0600


def test_rows_give_their_boxes_as_corners(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text("1,1,10,20,30,40,1,1,1\n2,2,0,0,5,6,1,1,0.5\n")
    np.testing.assert_array_equal(read_rows(p).xyxy, [[10, 20, 40, 60], [0, 0, 5, 6]])
