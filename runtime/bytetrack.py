"""ByteTrack (Zhang et al., ECCV 2022) in numpy: the peer baseline and the switchable comparison tracker.

Follows the original `BYTETracker.update` step by step, with its thresholds: high-score
detections are matched first (IoU fused with the score), then low-score ones against the tracks
left over, then unconfirmed tracks; new tracks start above track_thresh + 0.1; lost tracks are kept
for track_buffer frames at 30 fps (scaled by the true frame rate). Output tracks are filtered as
the original demo does (area > 10 px^2, w / h <= 1.6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from .tracking import box_iou, linear_assignment, motion_scale, warp_xyxy
from .types import Detections

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class ByteTrackConfig:
    track_thresh: float = 0.5  # high/low split: detections above it are matched first
    low_thresh: float = 0.1  # detections at or below it are discarded
    new_track_margin: float = 0.1  # a new track needs score >= track_thresh + this
    match_thresh: float = 0.8  # max (1 - IoU * score) cost in the first association
    second_match_thresh: float = 0.5  # max (1 - IoU) cost for low-score detections
    unconfirmed_thresh: float = 0.7  # max cost to confirm a one-frame-old track
    track_buffer: int = 30  # steps (frames seen) a lost track survives at 30 fps (scaled by frame rate / 30)
    fuse_score: bool = True  # multiply IoU by detection score (the original's non-MOT20 default)
    min_box_area: float = 10.0  # output filter: w * h above this, px^2
    max_aspect_ratio: float = 1.6  # output filter: w / h at most this (people are upright)
    duplicate_iou: float = 0.85  # tracked and lost tracks overlapping more than this are duplicates
    iou_offset: float = 1.0  # +1 px inclusive box size in IoU, as the original's cython_bbox

    def __post_init__(self) -> None:  # a TOML [tracker.bytetrack] table reaches here
        for name in ("track_thresh", "low_thresh", "new_track_margin", "match_thresh", "second_match_thresh",
                     "unconfirmed_thresh", "duplicate_iou"):  # scores, costs and IoUs
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN fails too
                raise ValueError(f"[tracker.bytetrack] {name}: expected a value in [0, 1], got {getattr(self, name)!r}")
        for name in ("track_buffer", "min_box_area", "max_aspect_ratio", "iou_offset"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"[tracker.bytetrack] {name}: expected >= 0, got {getattr(self, name)!r}")


MAX_PREDICT_FRAMES = 30  # a longer gap (a stalled stream) predicts no further: the guess is worthless by then


class KalmanXYAH:
    """Constant-velocity Kalman filter on (cx, cy, aspect w/h, h) and velocities; 8-d state."""

    std_pos = 1.0 / 20  # position noise, relative to box height
    std_vel = 1.0 / 160  # velocity noise, relative to box height

    def __init__(self) -> None:
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)  # x += v, dt = 1 frame
        self.H = np.eye(4, 8)

    def initiate(self, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = xyah[3]
        p, v = self.std_pos * h, self.std_vel * h
        std = [2 * p, 2 * p, 1e-2, 2 * p, 10 * v, 10 * v, 1e-5, 10 * v]
        return np.r_[xyah, np.zeros(4)], np.diag(np.square(std))

    def multi_predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K, 8), (K, 8, 8) -> one frame ahead."""
        h = mean[:, 3]
        p, v = self.std_pos * h, self.std_vel * h
        std = np.stack([p, p, np.full_like(h, 1e-2), p, v, v, np.full_like(h, 1e-5), v], 1)  # (K, 8)
        q = np.einsum("ki,ij->kij", np.square(std), np.eye(8))  # (K, 8, 8) diagonal
        return mean @ self.F.T, self.F @ cov @ self.F.T + q

    def update(self, mean: np.ndarray, cov: np.ndarray, xyah: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        r = np.diag(np.square([self.std_pos * h, self.std_pos * h, 1e-1, self.std_pos * h]))
        s = self.H @ cov @ self.H.T + r  # (4, 4) innovation covariance
        gain = np.linalg.solve(s, (cov @ self.H.T).T).T  # (8, 4)
        mean = mean + gain @ (xyah - self.H @ mean)
        return mean, cov - gain @ s @ gain.T


class State(IntEnum):
    NEW = 0
    TRACKED = 1
    LOST = 2
    REMOVED = 3


@dataclass(slots=True, eq=False)
class Track:
    tlwh: np.ndarray  # (4,) x, y, w, h source px: the detection until the filter starts
    score: float
    track_id: int = 0
    mean: np.ndarray | None = None  # (8,) Kalman state
    cov: np.ndarray | None = field(default=None, repr=False)  # (8, 8)
    state: State = State.NEW
    activated: bool = False  # confirmed: matched on two frames (or born on frame 1)
    frame_id: int = 0  # last frame it was matched
    start_frame: int = 0

    def box(self) -> np.ndarray:
        """(4,) xyxy from the filter (or the detection before it starts)."""
        if self.mean is None:
            x, y, w, h = self.tlwh
        else:
            cx, cy, a, h = self.mean[:4]
            w = a * h
            x, y = cx - w / 2, cy - h / 2
        return np.array([x, y, x + w, y + h])


def _xyah(tlwh: np.ndarray) -> np.ndarray:
    x, y, w, h = tlwh
    return np.array([x + w / 2, y + h / 2, w / h, h])


def _tlwh(xyxy: np.ndarray) -> np.ndarray:
    return np.r_[xyxy[:2], xyxy[2:] - xyxy[:2]]


def _boxes(tracks: list[Track]) -> np.ndarray:
    return np.array([t.box() for t in tracks]).reshape(-1, 4)


class ByteTrack:
    """Tracker protocol: `step(dets) -> confirmed tracks with track_id`; ignores semantic and w."""

    def __init__(self, config: ByteTrackConfig | None = None, frame_rate: float = 30.0):
        self.config = config or ByteTrackConfig()
        self.max_time_lost = int(frame_rate / 30.0 * self.config.track_buffer)  # frames
        self.kf = KalmanXYAH()
        self.reset()

    def reset(self, keep_ids: bool = False) -> None:
        self.tracked: list[Track] = []
        self.lost: list[Track] = []
        self.frame_id = 0
        self._next_id = self._next_id if keep_ids else 0  # the last id given (ids start at 1)

    def warp(self, a: np.ndarray) -> None:
        """Move every live track's filter state by the camera's (2, 3) affine (BoT-SORT's camera
        motion compensation on this filter's xyah state): the centre through `a`, the centre velocity
        through its linear part, height and its velocity by its scale; the covariance alike."""
        a = np.asarray(a, np.float64)
        lin, s = a[:, :2], motion_scale(a)
        m = np.eye(8)
        m[0:2, 0:2] = m[4:6, 4:6] = lin
        m[3, 3] = m[7, 7] = s
        for t in self.tracked + self.lost:
            if t.mean is None:
                t.tlwh = _tlwh(warp_xyxy(t.box(), a)[0])
                continue
            t.mean = m @ t.mean
            t.mean[:2] += a[:, 2]
            t.cov = m @ t.cov @ m.T

    def step(self, dets: Detections, semantic: np.ndarray | None = None, w: float = 0.0, gap: int = 1) -> Detections:
        """`gap`: source frames since the previous step (> 1 when a live source dropped frames): the
        filter predicts that many frames ahead (at most MAX_PREDICT_FRAMES); lifetimes count steps."""
        gap = min(max(int(gap), 1), MAX_PREDICT_FRAMES)
        self.frame_id += 1
        c = self.config
        high = self._new_tracks(dets, dets.score > c.track_thresh)
        low = self._new_tracks(dets, (dets.score > c.low_thresh) & (dets.score < c.track_thresh))
        unconfirmed = [t for t in self.tracked if not t.activated]
        pool = _joint([t for t in self.tracked if t.activated], self.lost)
        self._predict(pool, gap)
        left, left_high = self._associate(pool, high, low)
        new = self._confirm(unconfirmed, [high[i] for i in left_high])
        self._start(new)
        self._finish(left)
        return self._output()

    # -- the steps of the original update() ------------------------------------------------
    def _new_tracks(self, dets: Detections, keep: np.ndarray) -> list[Track]:
        xywh = dets.xywh.astype(np.float64)
        keep = keep & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)  # a zero-size box has no aspect ratio
        xywh = xywh[keep]
        return [Track(b, float(s)) for b, s in zip(xywh, dets.score[keep])]

    def _predict(self, tracks: list[Track], gap: int = 1) -> None:
        if not tracks:
            return
        mean, cov = np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks])
        mean[[t.state != State.TRACKED for t in tracks], 7] = 0  # a lost track stops growing
        for _ in range(gap):  # one frame at a time: the process noise grows as it would over those frames
            mean, cov = self.kf.multi_predict(mean, cov)
        for t, m, p in zip(tracks, mean, cov):
            t.mean, t.cov = m, p

    def _cost(self, tracks: list[Track], dets: list[Track], fuse: bool) -> np.ndarray:
        """(T, D) 1 - IoU, or 1 - IoU * score when fused."""
        iou = box_iou(_boxes(tracks), _boxes(dets), self.config.iou_offset)
        if fuse and dets:
            iou = iou * np.array([d.score for d in dets])[None, :]
        return 1.0 - iou

    def _associate(self, pool: list[Track], high: list[Track], low: list[Track]) -> tuple[list[Track], np.ndarray]:
        """First high-score, then low-score detections. Returns tracks left over and unmatched high dets."""
        c = self.config
        matches, left_tracks, left_high = linear_assignment(self._cost(pool, high, c.fuse_score), c.match_thresh)
        for it, idet in matches:
            self._update(pool[it], high[idet])
        remaining = [pool[i] for i in left_tracks if pool[i].state == State.TRACKED]
        matches, left2, _ = linear_assignment(self._cost(remaining, low, False), c.second_match_thresh)
        for it, idet in matches:
            self._update(remaining[it], low[idet])
        return [remaining[i] for i in left2], left_high

    def _update(self, track: Track, det: Track) -> None:
        """Matched: filter update; a lost track is re-found with its old id."""
        track.mean, track.cov = self.kf.update(track.mean, track.cov, _xyah(det.tlwh))
        track.state, track.activated = State.TRACKED, True
        track.score, track.frame_id = det.score, self.frame_id
        if track not in self.tracked:
            self.tracked.append(track)
        if track in self.lost:
            self.lost.remove(track)

    def _confirm(self, unconfirmed: list[Track], dets: list[Track]) -> list[Track]:
        """Match one-frame-old tracks; unmatched ones are dropped. Returns detections still unmatched."""
        c = self.config
        matches, left_tracks, left_dets = linear_assignment(
            self._cost(unconfirmed, dets, c.fuse_score), c.unconfirmed_thresh)
        for it, idet in matches:
            self._update(unconfirmed[it], dets[idet])
        for i in left_tracks:
            unconfirmed[i].state = State.REMOVED
        return [dets[i] for i in left_dets]

    def _start(self, dets: list[Track]) -> None:
        for t in dets:
            if t.score < self.config.track_thresh + self.config.new_track_margin:
                continue
            self._next_id += 1
            t.track_id, t.frame_id, t.start_frame = self._next_id, self.frame_id, self.frame_id
            t.mean, t.cov = self.kf.initiate(_xyah(t.tlwh))
            t.state, t.activated = State.TRACKED, self.frame_id == 1
            self.tracked.append(t)

    def _finish(self, missed: list[Track]) -> None:
        """Mark missed tracks lost, expire old lost tracks, drop removed and duplicate tracks."""
        for t in missed:
            t.state = State.LOST
        for t in self.lost:
            if self.frame_id - t.frame_id > self.max_time_lost:
                t.state = State.REMOVED
        self.lost = _joint([t for t in self.lost if t.state == State.LOST],
                           [t for t in self.tracked if t.state == State.LOST])
        self.tracked = [t for t in self.tracked if t.state == State.TRACKED]
        self._drop_duplicates()

    def _drop_duplicates(self) -> None:
        """A tracked and a lost track on the same box: keep the longer-lived one (original rule)."""
        if not self.tracked or not self.lost:
            return
        iou = box_iou(_boxes(self.tracked), _boxes(self.lost), self.config.iou_offset)
        close = np.argwhere(iou > self.config.duplicate_iou)
        drop_t, drop_l = set(), set()
        for p, q in close:
            age_p = self.tracked[p].frame_id - self.tracked[p].start_frame
            age_q = self.lost[q].frame_id - self.lost[q].start_frame
            (drop_l if age_p > age_q else drop_t).add(q if age_p > age_q else p)
        self.tracked = [t for i, t in enumerate(self.tracked) if i not in drop_t]
        self.lost = [t for i, t in enumerate(self.lost) if i not in drop_l]

    def _output(self) -> Detections:
        out = [t for t in self.tracked if t.activated]
        boxes = _boxes(out)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (w * h > self.config.min_box_area) & (w <= self.config.max_aspect_ratio * h)
        ids = np.array([t.track_id for t in out], np.int64)
        score = np.array([t.score for t in out], np.float32)
        return Detections(boxes[keep], score[keep], ids[keep])


def _joint(a: list[Track], b: list[Track]) -> list[Track]:
    seen = {t.track_id for t in a}
    return a + [t for t in b if t.track_id not in seen]
