"""evaluation/assoc_variants.py: every name builds the tracker it says; the Kalman hybrid's filter state
through a detection gap, on a fake network with the tracker's real I/O."""

from __future__ import annotations

import numpy as np
import pytest

from fakenets import IouNet
from vsdmot.evaluation import assoc_variants as V
from vsdmot.runtime.types import Detections, TensorSpec


class Spec:  # the tracker's input shapes are all a slot tracker reads at construction
    inputs = {n: TensorSpec(n, s, "float32") for n, s in
              (("prop_box", (1, 6, 4)), ("track_query", (1, 4, 3)), ("prop_embed", (1, 6, 2)), ("semantic", (1, 5)))}


def test_e2e_variants_are_end_to_end_trackers():
    from vsdmot.runtime.e2e import E2ETracker, HybridTracker

    v = V.variants()
    t = v["e2e.smooth.5"](Spec(), 7.0)
    assert type(t) is E2ETracker and t.cfg.e2e_box_smooth == 0.5
    assert type(v["e2e"](Spec(), 7.0)) is E2ETracker and type(v["hybrid"](Spec(), 7.0)) is HybridTracker



def test_every_variant_builds_its_tracker_with_its_setting():
    """Every name builds (the CLI offers them all); a name's setting reaches the tracker's config."""
    from vsdmot.runtime.bytetrack import ByteTrack
    from vsdmot.runtime.e2e import E2EConfig, E2ETracker, HybridTracker

    built = {name: make(Spec(), 7.0) for name, make in V.variants().items()}
    assert type(built["bytetrack"]) is ByteTrack and type(built["kalman"]) is V.KalmanHybrid
    assert built["kalman"].cfg == built["hybrid"].cfg == E2EConfig()
    assert type(built["decay"]) is V.DecayHybrid and built["decay"].cfg == E2EConfig()
    kinds = {type(t) for n, t in built.items() if n not in ("bytetrack", "kalman", "decay")}
    assert kinds == {HybridTracker, E2ETracker}
    assert (built["fuse.5+gate.1"].cfg.iou_weight, built["fuse.5+gate.1"].cfg.min_iou) == (0.5, 0.1)
    assert (built["e2e.miss30"].cfg.miss_tolerance, type(built["e2e.miss30"])) == (30, E2ETracker)


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
    trk = V.KalmanHybrid(net, E2EConfig())
    out = [trk.step(d) for d in walk + [empty, empty, back]]
    assert [o.track_id.tolist() for o in out[-3:]] == [[], [], [1]]
    assert net.feeds[-1]["track_box"][0, 0, 0] == pytest.approx(160, abs=3)  # 100 + 5 px x 12 frames


def test_decay_hybrid_trusts_a_prediction_less_the_further_it_reaches():
    """A walker at 5 px/frame, one missed frame, then found again at x=150: the shipped hybrid's state
    moves half way from its 2-frame prediction to the detection, the decay variant weighs the
    prediction 0.5 ** 2. On consecutive frames the two keep the same state."""
    from vsdmot.runtime.e2e import E2EConfig, HybridTracker

    box = lambda x: [x, 100, x + 40, 180]  # noqa: E731
    det = lambda x: Detections(np.array([box(x)], np.float32), np.array([0.9], np.float32))  # noqa: E731
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    frames = [det(100 + 5 * i) for i in range(8)] + [empty, det(150)]
    shipped, decay = HybridTracker(IouNet(), E2EConfig()), V.DecayHybrid(IouNet(), E2EConfig())
    for d in frames[:8]:
        shipped.step(d), decay.step(d)
    np.testing.assert_array_equal(shipped.box, decay.box)
    np.testing.assert_array_equal(shipped.vel, decay.vel)
    pred = float(shipped.box[0, 0] + 2 * shipped.vel[0, 0])  # where the state expects it 2 frames on
    for d in frames[8:]:
        shipped.step(d), decay.step(d)
    assert shipped.box[0, 0] == pytest.approx(0.5 * pred + 0.5 * 150, abs=1e-3)
    assert decay.box[0, 0] == pytest.approx(0.25 * pred + 0.75 * 150, abs=1e-3)
