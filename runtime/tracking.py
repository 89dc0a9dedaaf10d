"""The Tracker protocol every tracker implements, and the box matching helpers they share.

A tracker never sees a frame or a model: `Detections -> step() -> Detections with track_id`.
`semantic` is the student's vector for this frame (or None when the gate skipped it) and `w` its
DSWR fusion weight; trackers without semantic fusion (ByteTrack) ignore both. `gap` is the number of
source frames since the previous step: a live source that fell behind drops frames (edge/sources.py),
and a constant-velocity prediction must cover the frames it did not see.
"""

from __future__ import annotations

import functools
import logging
from typing import Protocol, runtime_checkable

import numpy as np

from .types import Detections

log = logging.getLogger(__name__)


@runtime_checkable
class Tracker(Protocol):
    def step(self, dets: Detections, semantic: np.ndarray | None = None, w: float = 0.0, gap: int = 1) -> Detections:
        """One frame's detections -> the confirmed output tracks, `track_id` set (ids >= 1). `gap`: source
        frames since the previous step (> 1 when a live source dropped frames), for the motion model."""
        ...

    def reset(self, keep_ids: bool = False) -> None:
        """Forget every track and restart ids, e.g. at a new sequence. `keep_ids`: new tracks go on
        from the last id (the same run after an outage: one output file must not reuse an id)."""
        ...

    def warp(self, a: np.ndarray) -> None:
        """The camera moved: map every track's box and velocity by the (2, 3) affine `a` (the previous
        frame's pixels -> this frame's, runtime/motion.py), before this frame's `step`."""
        ...


def box_iou(a: np.ndarray, b: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU. offset=1 is the legacy inclusive-pixel convention
    (w = x2 - x1 + 1) of cython_bbox, which the original ByteTrack matches with."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt + offset, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0] + offset) * (x[:, 3] - x[:, 1] + offset)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def warp_xyxy(xyxy: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(N, 4) boxes moved by a (2, 3) rotation + uniform scale + translation: the centre maps through
    `a`, width and height scale by its scale (a box stays axis-aligned)."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2  # (N, 2)
    half = (xyxy[:, 2:] - xyxy[:, :2]) / 2 * motion_scale(a)
    moved = centre @ a[:, :2].T + a[:, 2]
    return np.concatenate([moved - half, moved + half], 1)


def motion_scale(a: np.ndarray) -> float:
    """The uniform scale of a (2, 3) partial affine."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(a, np.float64)[:, :2]))))


def linear_assignment(cost: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min-cost matching where a pair may match only if its cost <= thresh.

    Same optimum as `lap.lapjv(cost, extend_cost=True, cost_limit=thresh)` (ByteTrack's call):
    leaving a row and a column unmatched costs `thresh`, so we solve on min(cost - thresh, 0).
    Returns (matches (K, 2) row/col, unmatched rows, unmatched cols).
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.arange(n), np.arange(m)
    rows, cols = solve_assignment(np.minimum(cost - thresh, 0.0))
    ok = cost[rows, cols] <= thresh
    matches = np.stack([rows[ok], cols[ok]], 1).astype(np.int64)
    return matches, np.setdiff1d(np.arange(n), matches[:, 0]), np.setdiff1d(np.arange(m), matches[:, 1])


def solve_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rectangular min-cost assignment: (row indices, col indices). scipy if installed
    (not a runtime dependency), else a numpy Hungarian."""
    solver = assignment_solver()
    if solver is None:
        return hungarian(cost)
    rows, cols = solver(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


@functools.cache
def assignment_solver():
    """scipy's `linear_sum_assignment`, or None without scipy. Imported on first use, not with this
    module: `scipy.optimize` takes ~0.3 s to import. `runtime.pipeline.warm_up` calls this before
    the first frame; otherwise the first frame with a live track paid it (a 0.2-0.26 s stall on the
    demo's frame 2)."""
    try:
        from scipy.optimize import linear_sum_assignment  # noqa: PLC0415
    except ImportError:
        return None
    return linear_sum_assignment


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shortest-augmenting-path Hungarian, O(n^2 m), numpy inner loop. Exact, any (n, m)."""
    cost = np.asarray(cost, np.float64)
    if cost.shape[0] > cost.shape[1]:
        cols, rows = hungarian(cost.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, np.int64)  # owner[j]: 1-based row assigned to column j (0 = none)
    for i in range(1, n + 1):
        _augment(cost, i, u, v, owner)
    cols = np.flatnonzero(owner[1:]) + 1
    rows = owner[cols] - 1
    order = np.argsort(rows)
    return rows[order], cols[order] - 1


def _augment(cost: np.ndarray, i: int, u: np.ndarray, v: np.ndarray, owner: np.ndarray) -> None:
    """Add row i (1-based) to the matching, keeping the potentials u, v feasible."""
    m = cost.shape[1]
    owner[0], j0 = i, 0
    minv, way, used = np.full(m + 1, np.inf), np.zeros(m + 1, np.int64), np.zeros(m + 1, bool)
    while owner[j0] != 0:
        used[j0] = True
        i0 = owner[j0]
        reduced = cost[i0 - 1] - u[i0] - v[1:]  # (m,)
        better = ~used[1:] & (reduced < minv[1:])
        minv[1:][better], way[1:][better] = reduced[better], j0
        free = np.flatnonzero(~used[1:]) + 1
        j1 = free[np.argmin(minv[free])]
        delta = minv[j1]
        u[owner[used]] += delta
        v[used] -= delta
        minv[~used] -= delta
        j0 = j1
    while j0:
        j1 = way[j0]
        owner[j0] = owner[j1]
        j0 = j1
