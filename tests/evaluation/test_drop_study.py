"""evaluation/drop_study.py: the drop patterns, the renumbered gt subset, and a replay where telling
ByteTrack the gaps keeps a fast walker's identity that stepping blind loses (scored by TrackEval)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import SHARED
from vsdmot.evaluation import drop_study as D
from vsdmot.evaluation.assoc_study import Stored
from vsdmot.evaluation.metrics import evaluate
from vsdmot.runtime.bytetrack import ByteTrack
from vsdmot.runtime.mot import SeqInfo, read_rows, read_seqinfo, write_seqinfo
from vsdmot.runtime.types import Detections


def test_every_k_keeps_every_kth_frame_from_the_first():
    assert D.kept_frames("every2", 3, 11) == [3, 5, 7, 9, 11]
    assert D.kept_frames("every1", 1, 4) == [1, 2, 3, 4]


def test_jitter_draws_gaps_in_range_per_seed():
    a, b = D.kept_frames("jit1-3", 1, 300, seed=0), D.kept_frames("jit1-3", 1, 300, seed=1)
    gaps = np.diff(a)
    assert a[0] == 1 and a[-1] <= 300 and set(gaps) == {1, 2, 3}
    assert a == D.kept_frames("jit1-3", 1, 300, seed=0) and a != b


@pytest.mark.parametrize("pattern", ["every0", "everyx", "jit3-1", "jit0-2", "jit2", "drop2"])
def test_bad_patterns_are_refused(pattern):
    with pytest.raises(ValueError, match="drop pattern"):
        D.kept_frames(pattern, 1, 10)


def walker(n: int, speed: float = 10.0) -> dict[int, Detections]:
    """One 40x100 person walking `speed` px per frame."""
    return {f: Detections(np.array([[100 + speed * f, 100, 140 + speed * f, 200]]), np.array([0.9]))
            for f in range(1, n + 1)}


def make_seq(tmp_path: Path, dets: dict[int, Detections]) -> Path:
    seq = tmp_path / "SEQ"
    (seq / "gt").mkdir(parents=True)
    write_seqinfo(seq / "seqinfo.ini", SeqInfo("SEQ", 30, len(dets), 1920, 1080))
    rows = [f"{f},1,{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,-1,-1,-1\n" for f, d in dets.items() for b in d.xyxy]
    (seq / "gt" / "gt.txt").write_text("".join(rows))
    return seq


def test_subset_sequence_renumbers_the_kept_gt(tmp_path):
    seq = make_seq(tmp_path, walker(10))
    sub = D.subset_sequence(seq, [2, 5, 9], tmp_path / "sub")
    gt = read_rows(sub / "gt" / "gt.txt")
    assert gt.frame.tolist() == [1, 2, 3] and gt.xywh[:, 0].tolist() == [120, 150, 190]
    assert read_seqinfo(sub).length == 3


def test_told_gaps_keep_a_fast_walker_that_blind_steps_lose(tmp_path):
    dets = walker(120)
    keep = list(range(1, 12))  # 11 frames at full rate, then steps of 1 and 4 frames
    while keep[-1] + 5 <= 120:
        keep += [keep[-1] + 1, keep[-1] + 5]
    st = Stored(dets, {f: 1.0 for f in dets}, {})
    sub = D.subset_sequence(make_seq(tmp_path, dets), keep, tmp_path / "sub")
    scores = {}
    for told in (True, False):
        res = tmp_path / f"res-{told}.txt"
        res.write_text(D.replay_kept(st, ByteTrack(frame_rate=30), None, keep, told))
        scores[told] = evaluate(sub, res)
    assert scores[True]["IDSW"] == 0 and scores[True]["HOTA"] > 0.9
    assert scores[False]["HOTA"] < scores[True]["HOTA"] - 0.2


def test_evaluation_frames_need_held_out(tmp_path):
    seq = tmp_path / "TUD-Campus"
    seq.mkdir()
    write_seqinfo(seq / "seqinfo.ini", SeqInfo("TUD-Campus", 25, 71, 640, 480))
    with pytest.raises(ValueError, match="evaluation frames"):
        D.run_drops(D.DropConfig(tmp_path / "memo", seq, "clean", (1, 71)), ["bytetrack"])


def test_summary_compares_told_with_untold():
    recs = [{"pattern": "jit1-3", "seed": s, "variant": v, "told": t, "HOTA": h, "AssA": h,
             "pred_iou": (None if v == "bytetrack" else h / 100)}
            for v in ("bytetrack", "hybrid") for s, (a, b) in enumerate([(50.0, 40.0), (44.0, 46.0)])
            for t, h in ((True, a), (False, b))]
    lines = D.summary(recs).splitlines()
    assert lines[2] == "| jit1-3 | bytetrack | 2 | 47.0 | 43.0 | +4.00 | 1/2 | 47.0 | 43.0 | - |"
    assert lines[3] == "| jit1-3 | hybrid | 2 | 47.0 | 43.0 | +4.00 | 1/2 | 47.0 | 43.0 | 0.470 / 0.430 |"


def test_the_prediction_probe_sees_a_told_tracker_bridge_the_gap_better():
    """A walker at 4 px/frame, seen at full rate, then in steps of 1 and 5 frames: told, the slot
    tracker's prediction lands on it; blind, a step of 5 frames predicted as 1 falls short."""
    from fakenets import IouNet
    from vsdmot.runtime.e2e import E2EConfig, HybridTracker

    dets, keep = walker(120, speed=4.0), list(range(1, 12))
    while keep[-1] + 6 <= 120:
        keep += [keep[-1] + 1, keep[-1] + 6]
    st = Stored(dets, {f: 1.0 for f in dets}, {})
    mean = {}
    for told in (True, False):
        trk = HybridTracker(IouNet(), E2EConfig(box_smooth=0.0))
        ious = D.probe_predictions(trk)
        D.replay_kept(st, trk, None, keep, told)
        mean[told] = float(np.mean(ious))
    assert mean[True] > 0.95 and mean[False] < mean[True] - 0.1
    assert D.probe_predictions(ByteTrack(frame_rate=30)) is None


@pytest.mark.parametrize("args, words", [
    (["--patterns", "drop2"], "drop pattern"),
    (["--variants", "kalman"], "kalman ignores the gap"),
    (["--tracked", "x"], "--tracked: expected A:B"),
    ([], "evaluation frames"),  # TUD-Campus is held out
])
def test_cli_bad_input_is_one_line_exit_2(args, words, capsys):
    with pytest.raises(SystemExit) as e:
        D.main(["--memo", "m", "--seq", str(SHARED / "data" / "TUD-Campus"), *(args if "--tracked" in args else ["--tracked", "1:71", *args])])
    assert e.value.code == 2 and words in capsys.readouterr().err
