"""evaluation/live_score.py: a live run's JSON lines mapped back to the stream's frames (warm-up
given back) and scored on the processed frames only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsdmot.evaluation import live_score as L
from vsdmot.runtime.mot import SeqInfo, write_seqinfo


def make_seq(tmp_path: Path, n: int = 30) -> Path:
    """One 40x100 person walking 10 px per frame."""
    seq = tmp_path / "SEQ"
    (seq / "gt").mkdir(parents=True)
    write_seqinfo(seq / "seqinfo.ini", SeqInfo("SEQ", 25, n, 1920, 1080))
    (seq / "gt" / "gt.txt").write_text("".join(f"{f},1,{100 + 10 * f},100,40,100,1,-1,-1,-1\n" for f in range(1, n + 1)))
    return seq


def live_run(tmp_path: Path, stream_frames: list[int], warmup: int, shift: float = 0.0) -> tuple[Path, Path]:
    """The files `vsdmot-edge run` writes for a run that processed `stream_frames` (live index = frame - warmup)."""
    lines = [json.dumps({"frame": f - warmup, "tracks": [{"id": 7, "box": [100 + 10 * f + shift, 100, 140 + 10 * f + shift, 200],
                                                           "score": 0.9}]}) for f in stream_frames]
    (tmp_path / "run.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "run.json").write_text(json.dumps({"frames": len(lines), "source_stats": {"warmup": warmup}}))
    return tmp_path / "run.jsonl", tmp_path / "run.json"


def test_the_warmup_is_given_back_and_only_processed_frames_count(tmp_path):
    seq, kept = make_seq(tmp_path), [5, 6, 9, 13, 14, 20, 27]
    m = L.score_live_run(seq, *live_run(tmp_path, kept, warmup=4))
    assert m["HOTA"] > 99 and m["IDSW"] == 0 and (m["frames"], m["first"], m["last"]) == (7, 5, 27)
    assert m["mean_gap"] == pytest.approx((27 - 5) / 6, abs=0.01)
    jsonl, _ = live_run(tmp_path, kept, warmup=4)
    (tmp_path / "no-warmup.json").write_text(json.dumps({"source_stats": {"warmup": 0}}))
    off = L.score_live_run(seq, jsonl, tmp_path / "no-warmup.json")
    assert off["HOTA"] < 50  # read without the warm-up, every box sits 4 frames (40 px) off its person


def test_frames_past_the_sequence_are_refused(tmp_path):
    seq = make_seq(tmp_path, n=10)
    with pytest.raises(ValueError, match="streamed from its first frame"):
        L.score_live_run(seq, *live_run(tmp_path, [3, 8, 12], warmup=0))
