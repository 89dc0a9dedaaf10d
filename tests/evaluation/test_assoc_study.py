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


def test_e2e_variants_are_end_to_end_trackers():
    from vsdmot.runtime.e2e import E2ETracker, HybridTracker

    class Spec:  # the tracker's input shapes are all a slot tracker reads at construction
        inputs = {n: TensorSpec(n, s, "float32") for n, s in
                  (("prop_box", (1, 6, 4)), ("track_query", (1, 4, 3)), ("prop_embed", (1, 6, 2)), ("semantic", (1, 5)))}

    v = A.variants()
    t = v["e2e.smooth.5"](Spec(), 7.0)
    assert type(t) is E2ETracker and t.cfg.e2e_box_smooth == 0.5
    assert type(v["e2e"](Spec(), 7.0)) is E2ETracker and type(v["hybrid"](Spec(), 7.0)) is HybridTracker


@pytest.mark.parametrize("start, want", [(None, (1, 600)), (541, (541, 600)), (700, None)])
def test_replay_frames(start, want):
    c = A.StudyConfig(Path("memo"), Path("x"), ("clean",), (1, 600), {"val": (541, 600)}, start=start)
    if want is None:
        with pytest.raises(ValueError, match="start 700"):
            A.replay_frames(c)
    else:
        r = A.replay_frames(c)
        assert (r[0], r[-1]) == want


class IouNet:
    """A fake tracker network with the real I/O: each live slot points at the proposal its fed
    track_box overlaps most (IoU >= 0.3); keep and birth are the proposal's score."""

    P, S, D = 6, 4, 3
    inputs = {n: TensorSpec(n, sh, "float32") for n, sh in (("prop_box", (1, 6, 4)), ("track_query", (1, 4, 3)),
                                                             ("prop_embed", (1, 6, 2)), ("semantic", (1, 5)))}

    def __init__(self):
        self.feeds = []

    def infer(self, feed):
        from vsdmot.runtime.tracking import box_iou

        self.feeds.append(feed)
        P, S = self.P, self.S
        pm, tm, score = feed["prop_mask"][0] > 0, feed["track_mask"][0] > 0, feed["prop_score"][0]
        iou = box_iou(feed["track_box"][0], feed["prop_box"][0]) * pm[None]  # (S, P)
        hit = (iou.max(1) >= 0.3) & tm
        logits = np.full((S, P + 1), -10.0, np.float32)
        logits[np.arange(S), np.where(hit, iou.argmax(1), P)] = 10.0
        return {"match_logits": logits[None], "keep": (hit * score[iou.argmax(1)])[None].astype(np.float32),
                "birth": (score * pm)[None].astype(np.float32), "track_query_out": np.zeros((1, S, self.D), np.float32),
                "birth_query": np.zeros((1, P, self.D), np.float32)}


def test_kalman_hybrid_feeds_the_filter_prediction_through_a_gap():
    """Two walkers, then two empty frames: the Kalman state keeps moving, so the walker found again
    where constant velocity puts it keeps its id, and the fed track box is the filter's prediction."""
    from vsdmot.runtime.e2e import E2EConfig

    box = lambda x: [x, 100, x + 40, 180]  # noqa: E731
    walk = [Detections(np.array([box(100 + 5 * i), box(300 - 5 * i)], np.float32), np.array([0.9, 0.8], np.float32))
            for i in range(10)]
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    back = Detections(np.array([box(160)], np.float32), np.array([0.9], np.float32))
    net = IouNet()
    trk = A.KalmanHybrid(net, E2EConfig())
    out = [trk.step(d) for d in walk + [empty, empty, back]]
    assert [o.track_id.tolist() for o in out[-3:]] == [[], [], [1]]
    assert net.feeds[-1]["track_box"][0, 0, 0] == pytest.approx(160, abs=3)  # 100 + 5 px x 12 frames
