"""Tracker variants for the association study (`assoc_study.py` replays them): name -> factory.

`variants()` maps a name to `factory(backend, fps) -> tracker`: ByteTrack, the hybrid and e2e slot
trackers of `runtime/e2e.py` with single `E2EConfig` fields changed (the names docs/networks.md
reports), `KalmanHybrid`, a study-only hybrid whose slot box state is ByteTrack's Kalman filter
(measured and not shipped: docs/networks.md), and `DecayHybrid`, whose state update trusts a
prediction less the more frames it spans (measured and not shipped: docs/evaluation.md, *Dropped
frames*). Nothing here reads stored values or scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from vsdmot.runtime.e2e import E2EConfig, E2ETracker, HybridTracker


def variants() -> dict[str, Callable]:
    """name -> factory(backend, fps) of a Tracker. `hybrid` is the E2EConfig default."""
    from vsdmot.runtime.bytetrack import ByteTrack

    base = E2EConfig()
    hyb = lambda **kw: (lambda b, fps: HybridTracker(b, replace(base, **kw)))  # noqa: E731
    e2e = lambda **kw: (lambda b, fps: E2ETracker(b, replace(base, **kw)))  # noqa: E731
    return {
        "bytetrack": lambda b, fps: ByteTrack(frame_rate=fps),
        "hybrid": hyb(),  # box_smooth 0.5 since the study; "old" is the hybrid before it
        "old": hyb(iou_weight=0.0, min_iou=0.0, low_stage="pointer", box_smooth=0.0, tentative_hits=0),
        "fuse.25": hyb(iou_weight=0.25),
        "fuse.5": hyb(iou_weight=0.5),
        "fuse.75": hyb(iou_weight=0.75),
        "gate.1": hyb(min_iou=0.1),
        "gate.2": hyb(min_iou=0.2),
        "gate.3": hyb(min_iou=0.3),
        "lowiou": hyb(low_stage="iou"),
        "miss7": hyb(miss_tolerance=7),
        "miss10": hyb(miss_tolerance=10),
        "miss30": hyb(miss_tolerance=30),
        "fuse.5+gate.1": hyb(iou_weight=0.5, min_iou=0.1),
        "fuse.5+lowiou": hyb(iou_weight=0.5, low_stage="iou"),
        "tent1": hyb(tentative_hits=1),
        "mp.3": hyb(match_prob=0.3),
        "mp.5": hyb(match_prob=0.5),
        "emb.9": hyb(embed_momentum=0.9),
        "emb.5": hyb(embed_momentum=0.5),
        "gap2": hyb(max_predict_gap=2),
        "gap10": hyb(max_predict_gap=10),
        "gap20": hyb(max_predict_gap=20),
        "emb.5+gap10": hyb(embed_momentum=0.5, max_predict_gap=10),
        "emb.5+gate.1": hyb(embed_momentum=0.5, min_iou=0.1),
        "smooth.3": hyb(box_smooth=0.3),
        "smooth.5": hyb(box_smooth=0.5),
        "kalman": lambda b, fps: KalmanHybrid(b, base),
        "decay": lambda b, fps: DecayHybrid(b, base),
        "mom.5": hyb(momentum=0.5),
        "mom.9": hyb(momentum=0.9),
        "e2e": e2e(),  # the default (birth 0.5); "e2e.old" spells the same settings out (named so in docs runs)
        "e2e.old": e2e(birth=0.5, e2e_box_smooth=0.0),
        "e2e.smooth.3": e2e(e2e_box_smooth=0.3),
        "e2e.smooth.5": e2e(e2e_box_smooth=0.5),
        "e2e.smooth.7": e2e(e2e_box_smooth=0.7),
        "e2e.keep.4": e2e(keep=0.4),
        "e2e.keep.3": e2e(keep=0.3),
        "e2e.birth.4": e2e(birth=0.4),
        "e2e.birth.3": e2e(birth=0.3),
        "e2e.birth.4+out.5": e2e(birth=0.4, output_score=0.5),
        "e2e.birth.4+smooth.3": e2e(birth=0.4, e2e_box_smooth=0.3),
        "e2e.out.5": e2e(output_score=0.5),
        "e2e.out.4": e2e(output_score=0.4),
        "e2e.miss10": e2e(miss_tolerance=10),
        "e2e.miss30": e2e(miss_tolerance=30),
    }


class DecayHybrid(HybridTracker):
    """HybridTracker whose predicted box weighs box_smooth ** frames in a matched slot's state, frames
    = source frames the prediction spans (1 for a track matched on consecutive frames: the shipped
    weight). The further a prediction extrapolates (misses, dropped frames), the less it is trusted, as
    a Kalman gain grows with the prior's variance; no new parameter."""

    def _smooth_weight(self, frames: np.ndarray) -> np.ndarray:
        return (self.cfg.box_smooth ** np.maximum(frames, 1))[:, None].astype(np.float32)


# -- a Kalman box state (study only) --------------------------------------------------------------------
class KalmanHybrid(HybridTracker):
    """HybridTracker whose slot box state is ByteTrack's constant-velocity Kalman filter (xyah), not the
    partial update: the network's `track_box` is the filter's one-frame prediction, a match is a filter
    update (its gain grows with the state's uncertainty), a miss keeps the prediction. It predicts one frame
    per step whatever `step`'s `gap` (the study replays consecutive frames; drop_study.py does not list it)."""

    def reset(self, keep_ids: bool = False) -> None:
        from vsdmot.runtime.bytetrack import KalmanXYAH

        super().reset(keep_ids)
        self.kf = KalmanXYAH()
        self.mean = np.zeros((self.S, 8))  # (S, 8) prior for the coming frame
        self.cov = np.tile(np.eye(8), (self.S, 1, 1))  # (S, 8, 8)

    def _feed(self, props, semantic, w):
        feed = super()._feed(props, semantic, w)
        feed["track_box"] = np.where(self.valid[:, None], _xyxy(self.mean[:, :4]), 0).astype(np.float32)[None]
        return feed

    def _update(self, props, m, born, out) -> None:
        super()._update(props, m, born, out)
        for s, p in m.tolist():  # posterior of the matched slots (unmatched keep their prior)
            self.mean[s], self.cov[s] = self.kf.update(self.mean[s], self.cov[s], _xyah(props.xyxy[p]))
        for s, p in zip(self._born_slots.tolist(), born[: len(self._born_slots)].tolist()):
            self.mean[s], self.cov[s] = self.kf.initiate(_xyah(props.xyxy[p]))
        live = np.flatnonzero(self.valid)
        if len(live):
            mean = self.mean[live].copy()
            mean[self.miss[live] > 0, 7] = 0  # a missed track stops growing (ByteTrack)
            self.mean[live], self.cov[live] = self.kf.multi_predict(mean, self.cov[live])
        self.box[live] = _xyxy(self.mean[live, :4])  # the predicted box, for the IoU options
        self.vel[live] = 0


def _xyah(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([b[0] + w / 2, b[1] + h / 2, w / max(h, 1e-6), h])


def _xyxy(m: np.ndarray) -> np.ndarray:
    """(K, 4) cx, cy, a, h -> (K, 4) x1, y1, x2, y2."""
    w = m[:, 2] * m[:, 3]
    return np.stack([m[:, 0] - w / 2, m[:, 1] - m[:, 3] / 2, m[:, 0] + w / 2, m[:, 1] + m[:, 3] / 2], 1)
