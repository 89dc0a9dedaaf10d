"""TrackEval wrapper on real ground truth: perfect results score 1.0, MOT15/MOT17 rules, agreement
with motmetrics on a perturbed result, frame windows, bad input, and the `vsdmot-eval` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vsdmot.evaluation.cli import main as eval_main
from vsdmot.evaluation.metrics import counted_gt, evaluate
from vsdmot.runtime.mot import MotRows, read_rows, write_rows


def _gt(seq_dir) -> MotRows:
    return read_rows(seq_dir / "gt" / "gt.txt")


def _write(tmp_path, rows: MotRows, name="res.txt"):
    write_rows(tmp_path / name, rows)
    return tmp_path / name


@pytest.mark.parametrize(
    "fixture, benchmark, frames",
    [("pets_dir", "MOT15", None), ("pets_dir", "MOT15", (601, 795)), ("tud_dir", "MOT15", None),
     ("mot17_dir", "MOT17", None)],
)
def test_ground_truth_against_itself_is_perfect(request, tmp_path, fixture, benchmark, frames):
    seq = request.getfixturevalue(fixture)
    res = _write(tmp_path, counted_gt(_gt(seq)))
    out = evaluate(seq, res, frames=frames)
    assert out["benchmark"] == benchmark
    for key in ("HOTA", "DetA", "AssA", "MOTA", "IDF1"):
        assert out[key] == pytest.approx(1.0), key
    assert (out["IDSW"], out["FP"], out["FN"]) == (0, 0, 0)
    if frames is not None:
        assert out["frames"] == frames[1] - frames[0] + 1


def test_results_at_another_resolution_are_named(tud_dir, tmp_path, caplog):
    """Results tracked on a 4K re-encode scored HOTA 0.0 against 640x480 gt, with no hint why."""
    import logging

    gt = counted_gt(_gt(tud_dir))
    big = MotRows(gt.frame, gt.id, gt.xywh * 6.0, gt.conf, gt.cls, gt.vis)  # 640x480 -> 3840x2880
    with caplog.at_level(logging.WARNING, logger="vsdmot.evaluation.metrics"):
        evaluate(tud_dir, _write(tmp_path, gt))
        assert not caplog.records
        evaluate(tud_dir, _write(tmp_path, big, "big.txt"))
    assert "centred outside the sequence's 640x480 frame" in caplog.text and "resized copy" in caplog.text


def test_mot15_conf_zero_rows_score_as_false_positives(pets_dir, tmp_path):
    """Data README: TrackEval drops PETS's 174 conf-0 rows from the gt; boxes on them are FPs."""
    out = evaluate(pets_dir, _write(tmp_path, _gt(pets_dir)))
    assert (out["FP"], out["FN"], out["GT_Dets"]) == (174, 0, 4650 - 174)
    assert out["MOTA"] == pytest.approx(1 - 174 / 4476)


def test_mot17_distractors_are_removed_other_classes_count(mot17_dir, tmp_path):
    gt = _gt(mot17_dir)
    distractor = np.isin(gt.cls, [2, 7, 8, 12])
    counted = (gt.conf != 0) & (gt.cls == 1)
    res = gt.select(counted | distractor)
    out = evaluate(mot17_dir, _write(tmp_path, res))
    assert out["FP"] == 0 and out["MOTA"] == pytest.approx(1.0)  # distractor matches removed
    other = gt.select(~counted & ~distractor)
    out = evaluate(mot17_dir, _write(tmp_path, gt, "all.txt"))
    assert out["FP"] == len(other)  # e.g. cars, occluders: not pedestrians, so FPs


def perturb(gt: MotRows, seed: int = 0) -> MotRows:
    """Drop 15% of rows, jitter boxes by ~4 px, swap two identities half-way, add a few FPs."""
    rng = np.random.default_rng(seed)
    res = gt.select(rng.random(len(gt)) > 0.15)
    res.xywh = res.xywh + rng.normal(0, 4, res.xywh.shape)
    ids = np.unique(res.id)
    a, b = ids[0], ids[1]
    late = res.frame > np.median(res.frame)
    swap_a, swap_b = late & (res.id == a), late & (res.id == b)
    res.id[swap_a], res.id[swap_b] = b, a
    fp_frames = rng.choice(np.unique(res.frame), 10)
    fps = MotRows(fp_frames, np.arange(10) + 10_000, np.tile([[5.0, 5.0, 40.0, 80.0]], (10, 1)),
                  np.ones(10), np.full(10, -1), np.full(10, -1.0))
    return MotRows(*(np.concatenate([getattr(res, f), getattr(fps, f)]) for f in MotRows.__dataclass_fields__))


def motmetrics_scores(gt: MotRows, res: MotRows) -> dict:
    if not hasattr(np, "asfarray"):  # motmetrics 1.4 uses np.asfarray, removed in NumPy 2
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for f in range(1, int(max(gt.frame.max(), res.frame.max())) + 1):
        g, h = gt.at(f), res.at(f)
        acc.update(g.id, h.id, mm.distances.iou_matrix(g.xywh, h.xywh, max_iou=0.5))
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name="x")
    return {"MOTA": summary["mota"].iloc[0], "IDF1": summary["idf1"].iloc[0], "IDSW": summary["num_switches"].iloc[0]}


@pytest.mark.parametrize("fixture", ["tud_dir", "pets_dir"])
def test_mota_idf1_agree_with_motmetrics(request, tmp_path, fixture):
    seq = request.getfixturevalue(fixture)
    gt = counted_gt(_gt(seq))
    res = perturb(gt)
    ours = evaluate(seq, _write(tmp_path, res))
    res_back = read_rows(tmp_path / "res.txt")  # the 2-decimal rounding TrackEval saw
    ref = motmetrics_scores(gt, res_back)
    assert 0.3 < ours["MOTA"] < 0.95  # the perturbation did something
    assert ours["MOTA"] == pytest.approx(ref["MOTA"], abs=1e-6)
    assert ours["IDF1"] == pytest.approx(ref["IDF1"], abs=1e-6)
    assert ours["IDSW"] == ref["IDSW"]


def test_frame_window_sees_only_its_frames(pets_dir, tmp_path):
    """Errors confined to frames 1-600 do not touch the held-out window 601-795."""
    gt = counted_gt(_gt(pets_dir))
    early = gt.frame <= 600
    res = MotRows(*(np.concatenate([getattr(gt.select(~early), f), getattr(perturb(gt.select(early)), f)])
                    for f in MotRows.__dataclass_fields__))
    path = _write(tmp_path, res)
    held_out = evaluate(pets_dir, path, frames=(601, 795))
    assert held_out["MOTA"] == pytest.approx(1.0) and held_out["frames"] == 195
    assert held_out["GT_Dets"] == int((~early).sum())
    assert evaluate(pets_dir, path)["MOTA"] < 0.95


def test_results_that_end_early_are_named(tud_dir, tmp_path, caplog):
    """A run of TUD-Campus stopped at frame 40 scored over all 71 frames (HOTA 8.8 vs 12.8), silently."""
    from vsdmot.runtime.mot import read_rows, write_rows

    gt = read_rows(tud_dir / "gt" / "gt.txt")
    write_rows(tmp_path / "res.txt", gt.select(gt.frame <= 40))
    with caplog.at_level("WARNING", logger="vsdmot.evaluation.metrics"):
        evaluate(tud_dir, tmp_path / "res.txt")
        assert "end at frame 40, the ground truth at 71" in caplog.text and "--frames 1:40" in caplog.text
        caplog.clear()
        evaluate(tud_dir, tmp_path / "res.txt", frames=(1, 40))
        evaluate(tud_dir, tud_dir / "gt" / "gt.txt")  # whole results: nothing to say
    assert "end at frame" not in caplog.text


def test_empty_result_scores_zero_and_says_so(tud_dir, tmp_path, caplog):
    (tmp_path / "res.txt").write_text("")
    with caplog.at_level("WARNING", logger="vsdmot.evaluation.metrics"):
        out = evaluate(tud_dir, tmp_path / "res.txt")
    assert out["HOTA"] == 0.0 and out["FN"] == out["GT_Dets"] > 0 and out["FP"] == 0
    assert "res.txt holds no result rows" in caplog.text


@pytest.mark.parametrize(
    "res_text, frames, message",
    [
        ("72,1,1,1,5,5,1,-1,-1,-1\n", None, "frames must be 1..71"),
        ("1,1,1,1,5,5,1,-1,-1,-1\n1,1,9,9,5,5,1,-1,-1,-1\n", None, "TrackEval rejected"),  # id twice
        ("1,1,1,1,5,5,1,-1,-1,-1\n", (5, 2), "expected 1 <= A <= B <= 71"),
        ("1,1,1,1,5,5,1,-1,-1,-1\n", (1, 72), "expected 1 <= A <= B <= 71"),
        ("1,1,x,1,5,5,1,-1,-1,-1\n", None, "comma-separated numbers"),
    ],
)
def test_bad_input_is_one_value_error(tud_dir, tmp_path, res_text, frames, message):
    (tmp_path / "res.txt").write_text(res_text)
    with pytest.raises(ValueError, match=message):
        evaluate(tud_dir, tmp_path / "res.txt", frames=frames)


def test_sequence_without_gt(tmp_path, tud_dir):
    (tmp_path / "seqinfo.ini").write_text((tud_dir / "seqinfo.ini").read_text())
    with pytest.raises(ValueError, match="expected ground truth"):
        evaluate(tmp_path, tud_dir / "gt" / "gt.txt")


def test_cli_json_and_table(tud_dir, tmp_path, capsys):
    res = _write(tmp_path, counted_gt(_gt(tud_dir)))
    assert eval_main(["--gt", str(tud_dir), "--res", str(res), "--json", "--frames", "1:30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["HOTA"] == pytest.approx(1.0) and out["frames"] == 30
    assert eval_main(["--gt", str(tud_dir), "--res", str(res)]) == 0
    header, values = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["HOTA", "DetA", "AssA", "MOTA", "MOTP"] and values.split()[0] == "100.0"


def test_cli_bad_input_is_one_line(tud_dir, tmp_path, capsys):
    assert eval_main(["--gt", str(tud_dir), "--res", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsdmot-eval: error:") and "\n" not in err
