"""evaluation/assoc_study.py: the train-side guard, memo lookup, replay + scoring on a small made-up
sequence (two walkers, gt = the detections, so a tracker that keeps ids has no switch), summaries."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vsdmot.evaluation import assoc_study as A
from vsdmot.runtime.bytetrack import ByteTrack
from vsdmot.runtime.mot import SeqInfo, write_seqinfo
from vsdmot.runtime.types import Detections, TensorSpec


def cfg(seq_dir: Path, tracked=(1, 600), windows=None, held_out=False) -> A.StudyConfig:
    return A.StudyConfig(Path("memo"), seq_dir, ("clean",), tracked, windows or {"val": (541, 600)}, held_out=held_out)


@pytest.mark.parametrize("name, tracked, windows, held_out, refused", [
    ("PETS09-S2L1", (1, 600), {"val": (541, 600), "train": (1, 540)}, False, False),
    ("PETS09-S2L1", (1, 795), {"val": (541, 600)}, False, True),  # tracked into the evaluation frames
    ("PETS09-S2L1", (541, 700), {"x": (601, 700)}, False, True),
    ("PETS09-S2L1-601-795", (1, 195), {"all": (1, 195)}, False, True),
    ("TUD-Campus", (1, 71), {"all": (1, 71)}, False, True),
    ("TUD-Campus", (1, 71), {"all": (1, 71)}, True, False),  # the one measurement after choosing
])
def test_train_side_guard(name, tracked, windows, held_out, refused):
    c = cfg(Path("x"), tracked, windows, held_out)
    if refused:
        with pytest.raises(ValueError, match="evaluation frames"):
            A.check_train_side(c, name)
    else:
        A.check_train_side(c, name)


def test_memo_file_matches_condition_and_window(tmp_path):
    d = tmp_path / "PETS09-S2L1"
    d.mkdir()
    for n in ("jpeg-s3-0123456789abcdef-1-600-t1.pkl", "jpeg-s3-0123456789abcdef-1-60-t1.pkl",
              "clean-0123456789abcdef-1-600-t1.pkl"):
        (d / n).touch()
    assert A.memo_file(tmp_path, "PETS09-S2L1", "jpeg-s3", (1, 600)).name.startswith("jpeg-s3-0123")
    with pytest.raises(ValueError, match="expected one file"):
        A.memo_file(tmp_path, "PETS09-S2L1", "h264-s3", (1, 600))


def test_memo_file_prefers_todays_stage_code(tmp_path):
    d = tmp_path / "PETS09-S2L1"
    d.mkdir()
    key = "0123456789abcdef"
    (d / f"clean-{key}-1-600-t1-c{'0' * 8}.pkl").touch()  # made by other decode / quality code
    with pytest.raises(ValueError, match="today's runtime stage code"):
        A.memo_file(tmp_path, "PETS09-S2L1", "clean", (1, 600))
    (d / f"clean-{key}-1-600-t1-c{A.stage_identity()}.pkl").touch()
    assert A.memo_file(tmp_path, "PETS09-S2L1", "clean", (1, 600)).stem.endswith(A.stage_identity())


def walkers(n=20) -> dict[int, Detections]:
    """Two 40x80 people walking apart 6 px / frame."""
    return {f: Detections(np.array([[100 + 6 * f, 100, 140 + 6 * f, 180], [400 - 6 * f, 300, 440 - 6 * f, 380]]),
                          np.array([0.9, 0.8])) for f in range(1, n + 1)}


def make_seq(tmp_path: Path, dets: dict[int, Detections]) -> Path:
    seq = tmp_path / "SEQ"
    (seq / "gt").mkdir(parents=True)
    write_seqinfo(seq / "seqinfo.ini", SeqInfo("SEQ", 7, len(dets), 768, 576))
    rows = [f"{f},{i + 1},{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,-1,-1,-1\n"
            for f, d in dets.items() for i, b in enumerate(d.xyxy)]
    (seq / "gt" / "gt.txt").write_text("".join(rows))
    return seq


def test_replay_and_score_perfect_on_gt_boxes(tmp_path):
    dets = walkers()
    st = A.Stored(dets, {f: 1.0 for f in dets}, {})
    text = A.replay(st, ByteTrack(frame_rate=7), None, range(1, 21))
    res = A.score(make_seq(tmp_path, dets), text, {"a": (1, 10), "b": (11, 20)})
    for m in res.values():
        assert m["HOTA"] > 95 and (m["IDSW"], m["IDs"], m["GT_IDs"]) == (0, 2, 2)  # boxes: Kalman-smoothed


def test_load_stored_reads_the_bundle_components(tmp_path):
    class B:
        def entry(self, name):
            return {"sha256": name}

        def has(self, name):
            return True

    stored = {("detector", "detector.onnx"): {1: "d"}, ("q", "quality.json"): {1: 0.5}, ("student", "student.onnx"): {}}
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps(stored))
    st = A.load_stored(p, B())
    assert (st.dets, st.q, st.vec) == ({1: "d"}, {1: 0.5}, {})


def test_summary_splits_clean_and_degraded():
    rec = lambda v, c, h: {"variant": v, "condition": c, "window": "val", **{k: h for k in A.KEYS}}  # noqa: E731
    rows = A.summary([rec("x", "clean", 50), rec("x", "jpeg-s3", 40), rec("x", "h264-s3", 20)])
    assert [(r["part"], r["n"], r["HOTA"]) for r in rows] == [("clean", 1, 50), ("degraded", 2, 30)]


@pytest.mark.parametrize("start, want", [(None, (1, 600)), (541, (541, 600)), (700, None)])
def test_replay_frames(start, want):
    c = A.StudyConfig(Path("memo"), Path("x"), ("clean",), (1, 600), {"val": (541, 600)}, start=start)
    if want is None:
        with pytest.raises(ValueError, match="start 700"):
            A.replay_frames(c)
    else:
        r = A.replay_frames(c)
        assert (r[0], r[-1]) == want


@pytest.mark.parametrize("tracked, start, window", [((1, 600), 541, (1, 600)), ((1, 600), None, (541, 650)),
                                                   ((100, 600), None, (50, 600))])
def test_scored_windows_must_lie_in_the_replayed_frames(tracked, start, window):
    """A window reaching frames the replay never tracked (before --start, or outside --tracked) was
    scored anyway: every gt box there counted as a miss, and HOTA / MOTA came out silently low."""
    c = A.StudyConfig(Path("memo"), Path("x"), ("clean",), tracked, {"w": window}, start=start)
    with pytest.raises(ValueError, match="window w"):
        A.replay_frames(c)


class DiagonalNet:
    """A fake tracker network with the real I/O: live slot s points at proposal s (walkers keep their
    row order, so this is the right one), keeps every live slot, and births every proposal."""

    P, S, D = 4, 4, 3
    inputs = {n: TensorSpec(n, sh, "float32") for n, sh in (("prop_box", (1, 4, 4)), ("track_query", (1, 4, 3)),
                                                             ("prop_embed", (1, 4, 2)), ("semantic", (1, 5)))}

    def infer(self, feed):
        live, pm = feed["track_mask"][0] > 0, feed["prop_mask"][0]
        logits = np.full((self.S, self.P + 1), -10.0, np.float32)
        logits[np.arange(self.S), np.where(live & (pm[: self.S] > 0), np.arange(self.S), self.P)] = 10.0
        return {"match_logits": logits[None], "keep": live[None].astype(np.float32), "birth": pm[None],
                "track_query_out": np.zeros((1, self.S, self.D), np.float32),
                "birth_query": np.zeros((1, self.P, self.D), np.float32)}


def test_pointer_diag_runs_on_the_default_hybrid(tmp_path):
    """The default config reads no IoU (HybridTracker._cost returns None for it); the diagnostic
    computes the predicted-box IoU itself (it crashed with a TypeError before)."""
    from vsdmot.runtime.e2e import E2EConfig

    dets = {f: Detections(d.xyxy.astype(np.float32), d.score.astype(np.float32)) for f, d in walkers().items()}
    st = A.Stored(dets, {f: 1.0 for f in dets}, {})
    d = A.pointer_diag(st, A.RecordingHybrid(DiagonalNet(), E2EConfig()), None, range(1, 21), make_seq(tmp_path, dets),
                       (1, 20))
    assert d["cases"] == 2 * 19  # both walkers, every frame after the first (their births)
    assert (d["ptr_top1"], d["iou_top1"], d["matched_right"]) == (1.0, 1.0, 1.0)
