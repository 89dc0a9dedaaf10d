"""runtime/e2e.py slot bookkeeping on a hand-built fake tracker network (numpy, no torch).

The fake network is an IoU tracker with the real I/O: each live slot points at the proposal
overlapping its predicted box most (IoU >= 0.3) with keep = that proposal's score, and a proposal
overlapping no live track gets birth = its score. So scores in the tables drive every decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.runtime.e2e import E2EConfig, E2ETracker, HybridTracker, predict_boxes
from vsdmot.runtime.tracking import box_iou
from vsdmot.runtime.types import Detections, TensorSpec

P, S, D_Q, E, D_SEM = 6, 4, 3, 2, 5


class FakeTrackerNet:
    def __init__(self, both: float | None = None):
        f = lambda n, s: TensorSpec(n, s, "float32")  # noqa: E731
        shapes = {"prop_box": (1, P, 4), "prop_score": (1, P), "prop_embed": (1, P, E), "prop_mask": (1, P),
                  "track_query": (1, S, D_Q), "track_box": (1, S, 4), "track_embed": (1, S, E), "track_miss": (1, S),
                  "track_mask": (1, S), "semantic": (1, D_SEM), "w": (1, 1)}
        self.inputs = {n: f(n, s) for n, s in shapes.items()}
        outs = {"match_logits": (1, S, P + 1), "keep": (1, S), "birth": (1, P), "track_query_out": (1, S, D_Q),
                "birth_query": (1, P, D_Q)}
        self.outputs = {n: f(n, s) for n, s in outs.items()}
        self.feeds: list[dict] = []
        self.both = both  # if set: every live track points at proposal 0 with this logit margin

    def infer(self, feed):
        self.feeds.append(feed)
        pm, tm, score = feed["prop_mask"][0] > 0, feed["track_mask"][0] > 0, feed["prop_score"][0]
        iou = box_iou(feed["track_box"][0], feed["prop_box"][0]) * pm[None]  # (S, P)
        logits = np.full((S, P + 1), -10.0, np.float32)
        best = iou.argmax(1)
        hit = (iou.max(1) >= 0.3) & tm
        logits[np.arange(S), np.where(hit, best, P)] = 10.0
        if self.both is not None:
            logits[:] = -10.0
            logits[:, 0] = 10.0 + self.both * np.arange(S)  # later slots more confident
            hit, best = tm, np.zeros(S, np.int64)
        keep = np.where(hit, score[best], 0.0) * tm
        birth = np.where((iou[tm].max(0, initial=0) < 0.3) & pm, score, 0.0)
        q = np.arange(S * D_Q, dtype=np.float32).reshape(1, S, D_Q)
        return {"match_logits": logits[None], "keep": keep[None].astype(np.float32), "birth": birth[None].astype(np.float32),
                "track_query_out": q, "birth_query": np.zeros((1, P, D_Q), np.float32)}

    def close(self):
        pass


def box(x, y=100, w=40, h=80):
    return [x, y, x + w, y + h]


def dets(*rows):
    """rows of (x, score) -> Detections (40x80 boxes at y=100) with a 2-d feature."""
    xyxy = np.array([box(x) for x, _ in rows], np.float32).reshape(-1, 4)
    return Detections(xyxy, np.array([s for _, s in rows], np.float32), feature=np.ones((len(rows), E), np.float32) if rows else None)


def run(tracker, frames):
    return [tracker.step(d, None, 0.0) for d in frames]


# (name, frames of detections, expected reported ids per frame)
CASES = [
    ("birth and keep", [dets((100, 0.9)), dets((102, 0.9)), dets((104, 0.9))], [[1], [1], [1]]),
    ("two tracks", [dets((100, 0.9), (300, 0.8)), dets((101, 0.9), (301, 0.8))], [[1, 2], [1, 2]]),
    ("below birth: no track", [dets((100, 0.25)), dets((100, 0.25))], [[], []]),
    ("born but under the output filter", [dets((100, 0.55)), dets((100, 0.7))], [[], [1]]),
    ("low keep is a miss, not reported", [dets((100, 0.9)), dets((100, 0.3)), dets((100, 0.9))], [[1], [], [1]]),
    ("miss up to tolerance keeps the id", [dets((100, 0.9))] + [dets()] * 20 + [dets((100, 0.9))], [[1]] + [[]] * 20 + [[1]]),
    ("one miss too many: a new id", [dets((100, 0.9))] + [dets()] * 21 + [dets((100, 0.9))], [[1]] + [[]] * 21 + [[2]]),
    ("proposals below min_det_score are not fed", [dets((100, 0.05))], [[]]),
]


@pytest.mark.parametrize("name,frames,want", CASES, ids=[c[0] for c in CASES])
def test_bookkeeping(name, frames, want):
    got = run(E2ETracker(FakeTrackerNet()), frames)
    assert [sorted(o.track_id.tolist()) for o in got] == want


def test_min_area_filters_output_only():
    small = Detections(np.array([[10, 10, 18, 18]], np.float32), np.array([0.9], np.float32))  # 64 px^2
    trk = E2ETracker(FakeTrackerNet())
    assert len(trk.step(small)) == 0 and trk.valid.sum() == 1  # tracked, not reported


def test_output_boxes_are_the_detector_boxes_and_ids_stable():
    trk = E2ETracker(FakeTrackerNet())
    d = dets((100, 0.9), (300, 0.8))
    out = trk.step(d)
    np.testing.assert_array_equal(out.xyxy, d.xyxy)
    assert out.feature is not None and out.feature.shape == (2, E)


def test_two_tracks_one_proposal_the_likelier_wins():
    net = FakeTrackerNet()
    trk = E2ETracker(net)
    run(trk, [dets((100, 0.9), (300, 0.9))])
    net.both = 1.0  # now both slots point at proposal 0, slot 1 (id 2) more confident
    out = trk.step(dets((100, 0.9)))
    assert out.track_id.tolist() == [2]
    assert trk.miss[trk.ids == 1].tolist() == [1]


def test_slots_full_drops_births_and_says_so_once(caplog):
    from vsdmot.runtime.logs import log_once

    log_once.cache_clear()
    trk = E2ETracker(FakeTrackerNet())
    with caplog.at_level("WARNING", logger="vsdmot.runtime.e2e"):
        out = trk.step(dets(*[(i * 100, 0.9) for i in range(P)]))
        trk.step(dets(*[(i * 100, 0.9) for i in range(P)]))
    assert len(out) == S and trk.valid.all()
    assert caplog.text.count(f"more people than its {S} track slots") == 1  # was a debug line per frame


def test_feed_is_static_and_semantic_gated():
    net = FakeTrackerNet()
    trk = E2ETracker(net)
    trk.step(dets((100, 0.9)), np.ones((1, D_SEM), np.float32), 0.7)
    trk.step(dets((100, 0.9)), None, 0.7)
    assert net.feeds[0]["w"][0, 0] == pytest.approx(0.7) and net.feeds[1]["w"][0, 0] == 0.0
    assert all(f[k].shape == net.inputs[k].shape for f in net.feeds for k in f)
    assert net.feeds[1]["track_query"][0, 0].tolist() == [0, 0, 0]  # the born slot's birth_query


def test_reset_restarts_ids_unless_told_to_keep_them():
    trk = E2ETracker(FakeTrackerNet())
    trk.step(dets((100, 0.9)))
    trk.reset()
    assert trk.step(dets((500, 0.9))).track_id.tolist() == [1]
    trk.reset(keep_ids=True)  # after an outage: the track at 500 ends, the same place gets a new id
    assert trk.step(dets((500, 0.9))).track_id.tolist() == [2]


def test_wrong_feature_width_raises():
    d = Detections(np.array([box(100)], np.float32), np.array([0.9], np.float32), feature=np.ones((1, 7), np.float32))
    with pytest.raises(ValueError, match="width 2"):
        E2ETracker(FakeTrackerNet()).step(d)


def test_constant_velocity_prediction():
    b, v = np.array([[0, 0, 10, 10]], np.float32), np.array([[2, 0, 2, 0]], np.float32)
    np.testing.assert_allclose(predict_boxes(b, v, np.array([3.0])), [[6, 0, 16, 10]])
    np.testing.assert_allclose(predict_boxes(b, v, np.array([30.0]), max_gap=5), [[10, 0, 20, 10]])


# (name, frames, expected ids) for the hybrid: two stages on pointer probabilities
HYBRID = [
    ("new track needs new_score", [dets((100, 0.55)), dets((100, 0.65))], [[], [1]]),
    ("0.55 (above high_score 0.5) starts no track", [dets((100, 0.55)), dets((400, 0.65))], [[], [1]]),  # else id 2
    ("low-score detection continues a track", [dets((100, 0.9)), dets((101, 0.3))], [[1], [1]]),
    ("low-score detection starts nothing", [dets((100, 0.3))], [[]]),
]


@pytest.mark.parametrize("name,frames,want", HYBRID, ids=[c[0] for c in HYBRID])
def test_hybrid(name, frames, want):
    got = run(HybridTracker(FakeTrackerNet(), E2EConfig()), frames)
    assert [sorted(o.track_id.tolist()) for o in got] == want


def test_hybrid_reports_the_detection_score_and_still_every_match():
    """A track continued by a low-score detection (0.3 < output_score 0.6) is still reported, and it
    carries that detection's score: the MOT conf column said 1.0 for every match before."""
    got = run(HybridTracker(FakeTrackerNet(), E2EConfig()), [dets((100, 0.9)), dets((101, 0.3)), dets((102, 0.75))])
    assert [o.track_id.tolist() for o in got] == [[1], [1], [1]]
    np.testing.assert_allclose([float(o.score[0]) for o in got], [0.9, 0.3, 0.75], rtol=1e-6)


def pointer_everywhere(cfg: E2EConfig, frames):
    """Frame 1 through the IoU fake net; then every live track points at proposal 0, however far."""
    net = FakeTrackerNet()
    trk = HybridTracker(net, cfg)
    out = [trk.step(frames[0])]
    net.both = 0.0
    return out + run(trk, frames[1:]), trk


# (name, config, frames, expected ids): the optional IoU terms and the tentative lifetime; defaults = pointer only
HYBRID_OPTIONS = [
    ("pointer alone follows a far jump", E2EConfig(), [dets((100, 0.9)), dets((500, 0.9))], [[1], [1]]),
    ("IoU gate refuses it: a new track", E2EConfig(min_iou=0.1), [dets((100, 0.9)), dets((500, 0.9))], [[1], [2]]),
    ("IoU fusion refuses it", E2EConfig(iou_weight=0.95), [dets((100, 0.9)), dets((500, 0.9))], [[1], [2]]),
    ("pointer alone takes a far low-score box", E2EConfig(), [dets((100, 0.9)), dets((500, 0.3))], [[1], [1]]),
    ("IoU second stage does not", E2EConfig(low_stage="iou"), [dets((100, 0.9)), dets((500, 0.3))], [[1], []]),
]


@pytest.mark.parametrize("name,cfg,frames,want", HYBRID_OPTIONS, ids=[c[0] for c in HYBRID_OPTIONS])
def test_hybrid_options(name, cfg, frames, want):
    got, _ = pointer_everywhere(cfg, frames)
    assert [sorted(o.track_id.tolist()) for o in got] == want


@pytest.mark.parametrize("hits, want", [(0, [[1], [], [1]]), (1, [[1], [], [2]])])
def test_tentative_track_dies_at_its_first_miss(hits, want):
    trk = HybridTracker(FakeTrackerNet(), E2EConfig(tentative_hits=hits))
    got = run(trk, [dets((100, 0.9)), dets(), dets((100, 0.9))])
    assert [sorted(o.track_id.tolist()) for o in got] == want


@pytest.mark.parametrize("cls, cfg, x", [
    (HybridTracker, E2EConfig(), 105.0),  # the default: half way between prediction (100) and detection (110)
    (HybridTracker, E2EConfig(box_smooth=0.0), 110.0),  # the hybrid before the association study
    (E2ETracker, E2EConfig(), 110.0),  # the end-to-end tracker keeps the detection's box
    (E2ETracker, E2EConfig(e2e_box_smooth=0.5), 105.0),  # ... unless given its own weight
    (HybridTracker, E2EConfig(e2e_box_smooth=0.3), 105.0),  # the hybrid reads box_smooth only
])
def test_box_state_update(cls, cfg, x):
    trk = cls(FakeTrackerNet(), cfg)
    run(trk, [dets((100, 0.9)), dets((110, 0.9))])
    assert trk.box[trk.valid][0, 0] == pytest.approx(x)


def test_hybrid_default_pulls_back_after_one_wrong_match():
    """One frame on a neighbour 60 px away: the old hybrid's state jumps there, so the next frame's
    prediction points at the neighbour; with the default partial update it stays between the two."""
    for cfg, jumped in ((E2EConfig(box_smooth=0.0), True), (E2EConfig(), False)):
        got, trk = pointer_everywhere(cfg, [dets((100, 0.9)), dets((160, 0.9))])
        pred = predict_boxes(trk.box, trk.vel, trk.miss + 1)[trk.valid][0, 0]
        assert (pred >= 160) == jumped, (cfg.box_smooth, pred)


@pytest.mark.parametrize("kw", [{"low_stage": "hungarian"}, {"box_smooth": 1.0}, {"box_smooth": -0.1},
                                {"e2e_box_smooth": 1.0}, {"iou_weight": 1.5}, {"min_iou": -1.0}])
def test_config_refuses_bad_values(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        E2EConfig(**kw)


@pytest.mark.parametrize("cfg, live", [(E2EConfig(birth=0.3), 1), (E2EConfig(), 0)])
def test_e2e_birth_threshold(cfg, live):
    """A 0.4 proposal starts a track only below the birth threshold (MOTRv2's 0.5 by default); a weak
    newborn is live but not reported until its score reaches output_score."""
    trk = E2ETracker(FakeTrackerNet(), cfg)
    got = run(trk, [dets((100, 0.4))])
    assert int(trk.valid.sum()) == live and len(got[0]) == 0


def test_e2e_birth_default_is_the_pipelines():
    """The reference, calibration and studies use E2EConfig(); the pipeline passes RunConfig's value."""
    from vsdmot.runtime.config import RunConfig
    assert E2EConfig().birth == RunConfig().tracker.birth_score


@pytest.mark.parametrize("cls", [E2ETracker, HybridTracker])
def test_free_slots_miss_count_stays_bounded_on_long_runs(cls):
    """A slot that is free (never used, or its track died) fed track_miss = frames since start:
    unbounded on a device running for days. Masking (-1e4) in the network only holds while that
    number is small: on the shipped tracker.onnx, free slots at miss 1e7 (3.9 days at 30 fps) moved a
    live track's match logits by 2516 and a birth score by 0.72; an FP16 engine overflows at 65504
    (36 min). Every miss fed must stay within what a live track can have (miss_tolerance + 1)."""
    net = FakeTrackerNet()
    cfg = E2EConfig()
    trk = cls(net, cfg)
    for frame in [dets((100, 0.9))] * 3 + [dets()] * 60 + [dets((300, 0.9))] * 3:
        trk.step(frame)
    fed = np.stack([f["track_miss"][0] for f in net.feeds])  # (frames, S)
    assert fed.max() <= cfg.miss_tolerance + 1
    assert trk.valid.sum() == 1 and trk.miss[trk.valid].tolist() == [0]


@pytest.mark.parametrize("cls", [E2ETracker, HybridTracker])
def test_dropped_frames_move_the_prediction_not_the_miss_count(cls):
    """A person walking 10 px per frame, seen on frames 1 and 2; the source drops 3 and 4 (the step to
    frame 5 has gap 3) and frame 5 has no detection; frame 6 follows (gap 1). The predicted box runs over
    the 4 frames since the last match, while the network's miss count (and the lifetime) count steps."""
    net = FakeTrackerNet()
    trk = cls(net, E2EConfig(box_smooth=0.0, momentum=0.0))
    for x, gap in ((100, 1), (110, 1)):
        trk.step(dets((x, 0.9)), None, 0.0, gap=gap)
    trk.step(dets(), None, 0.0, gap=3)
    trk.step(dets((150, 0.9)), None, 0.0, gap=1)
    assert net.feeds[2]["track_box"][0, 0, 0] == 140  # 110 + 3 frames x 10 px
    assert net.feeds[3]["track_box"][0, 0, 0] == 150 and net.feeds[3]["track_miss"][0, 0] == 1
    assert trk.vel[0, 0] == 10  # the match after the gap: 40 px over 4 frames

