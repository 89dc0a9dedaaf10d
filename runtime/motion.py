"""Camera motion between consecutive frames, so the trackers' motion models survive a moving camera.

The trackers predict boxes in image pixels (ByteTrack's Kalman filter, the slot trackers' constant
velocity). A camera that pans or shakes moves every person at once, and those predictions miss:
on PETS09-S2L1 1-600 seen through a hand-held shake (`evaluation/camera_motion.py`, 13.6 px per
frame) ByteTrack fell from 45.2 to 32.2 HOTA, and through a pan of 8 px per frame from 45.2 to 23.8.

`CameraMotion.estimate(image, people)` returns the 2x3 affine (rotation, uniform scale,
translation) that maps the previous frame's pixels to this frame's, from sparse optical flow on a
small gray copy (corners of the previous frame outside its detections, tracked by pyramidal
Lucas-Kanade, and a RANSAC fit that outvotes whatever else moves on its own), as BoT-SORT's camera
motion compensation does; or None when there is nothing to apply: the first frame, a frame of
another size, too few corners or inliers, a motion inside the dead zone (a camera on a tripod), or
a fit that explains the corners no better than no motion (falling snow, a passing tram). The
trackers move their state by it (`Tracker.warp`) before they predict.

Modes (`[tracker] camera_motion`): `on` estimates every frame (~1 ms); `auto`, the default, probes
one pair of consecutive frames in every `probe_every` (a still camera pays 0.004 ms a frame,
median) and estimates every frame from the first probe that sees the camera move until
`still_frames` estimates in a row saw none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .config import CAMERA_MOTION
from .logs import log_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionConfig:
    width: int = 160  # the gray copy's width, px (the estimate is scaled back to source pixels)
    max_corners: int = 100  # corners tracked from the previous frame
    quality: float = 0.01  # goodFeaturesToTrack quality level
    min_distance: int = 3  # px between corners (in the small copy)
    min_inliers: int = 12  # fewer RANSAC inliers: no estimate (identity)
    ransac_px: float = 0.5  # RANSAC reprojection threshold, px in the small copy (1.5 let walkers in:
    # on a tripod, 95 % of estimates within 0.34 px of none instead of 1.6)
    dead_zone_px: float = 1.5  # no frame corner moves more than this (source px): no motion, so a camera
    # on a tripod adds no jitter (0.5 warped 114 of 600 PETS frames by noise); a slower drift is left to
    # the trackers' own velocity
    still_share: float = 0.5  # corners that moved less than the dead zone, against the fit's inliers, at or
    # above which the camera is still: falling snow (the snow preset) on a still camera fitted a 1-2 px motion
    # on 27-40 of 195 frames, where 70 % of the corners stayed put
    probe_every: int = 15  # auto: one frame pair in this many is checked while the camera seems still
    still_frames: int = 60  # auto: this many estimates in a row without motion go back to probing


class CameraMotion:
    """Stateful estimator: call `estimate` on every frame, in order; `reset` at a new scene."""

    def __init__(self, cfg: MotionConfig = MotionConfig(), mode: str = "auto"):
        if mode not in CAMERA_MOTION[1:]:  # "off" builds no estimator
            raise ValueError(f"camera motion: expected mode 'auto' or 'on', got {mode!r}")
        self.cfg, self.mode = cfg, mode
        self.reset()

    def reset(self) -> None:
        self._prev: np.ndarray | None = None  # (h, w) uint8 small gray copy of the previous frame
        self._mask: np.ndarray | None = None  # (h, w) uint8, 0 on the previous frame's people, or None
        self._shape: tuple[int, ...] = ()
        self._active = self.mode == "on"  # estimating every frame
        self._seen = self._still = 0  # frames since the last reset; estimates in a row without motion

    def estimate(self, image: np.ndarray, people: np.ndarray | None = None) -> np.ndarray | None:
        """(2, 3) float32 affine from the previous frame's pixels to this frame's (source pixels), or
        None: no motion seen, or (auto, probing) this frame not looked at. `people`: (N, 4) xyxy boxes
        of this frame's detections, whose corners are not tracked into the next frame (a crowd
        walking one way is not the camera)."""
        self._seen += 1
        probe = self._seen % self.cfg.probe_every
        if not self._active and probe not in (0, self.cfg.probe_every - 1):
            self._prev = None  # skipped: the next pair is not consecutive
            return None
        a = self._step(image, people)
        if self.mode == "auto":
            self._follow(a)
        return a

    def _step(self, image: np.ndarray, people: np.ndarray | None) -> np.ndarray | None:
        small, scale = self._small(image)
        prev, prev_mask, same = self._prev, self._mask, image.shape[:2] == self._shape
        self._prev, self._shape, self._mask = small, image.shape[:2], _background(small.shape, people, scale)
        if prev is None or not same or (a := self._fit(prev, small, prev_mask, scale)) is None:
            return None
        a[:, 2] *= scale  # translation back to source pixels; rotation and scale are size-free
        return a.astype(np.float32) if corner_shift(a, image.shape[:2]) >= self.cfg.dead_zone_px else None

    def _follow(self, a: np.ndarray | None) -> None:
        """auto: start estimating every frame when the camera moves, go back to probing when still."""
        if a is not None and not self._active:
            self._active, self._still = True, 0
            log_once(log.name, logging.INFO, "camera motion: the camera moves; the tracks follow it "
                     "(--camera-motion off to stop estimating, on to estimate every frame)")
        elif self._active:
            self._still = 0 if a is not None else self._still + 1
            self._active = self._still < self.cfg.still_frames

    def _small(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """(h, width) uint8 gray copy, and source px per copy px (shrunk first: a third of the colour work)."""
        scale = max(image.shape[1] / self.cfg.width, 1.0)
        if scale > 1.0:
            size = (self.cfg.width, max(int(round(image.shape[0] / scale)), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image), scale

    def _fit(self, prev: np.ndarray, cur: np.ndarray, mask: np.ndarray | None, scale: float) -> np.ndarray | None:
        """The affine between two small copies (their px), or None; `scale`: source px per copy px."""
        c = self.cfg
        pts = cv2.goodFeaturesToTrack(prev, c.max_corners, c.quality, c.min_distance, mask=mask)
        if pts is None or len(pts) < c.min_inliers:
            return None
        nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None)
        ok = ok.reshape(-1).astype(bool)
        if ok.sum() < c.min_inliers:
            return None
        a, inliers = cv2.estimateAffinePartial2D(pts[ok], nxt[ok], method=cv2.RANSAC,
                                                 ransacReprojThreshold=c.ransac_px)
        if a is None or inliers is None or int(inliers.sum()) < c.min_inliers:
            return None
        moved = np.linalg.norm((nxt - pts).reshape(-1, 2)[ok], axis=1) * scale  # (K,) source px
        if int((moved < c.dead_zone_px).sum()) >= c.still_share * int(inliers.sum()):
            return None  # "no motion" explains the corners about as well as the fit does
        return a


def _background(shape: tuple[int, ...], people: np.ndarray | None, scale: float) -> np.ndarray | None:
    """(h, w) uint8 mask of the small copy, 0 inside the people's boxes (source px / scale), else 255;
    None without boxes, or when they cover nearly all of it (no background left to fit)."""
    if people is None or len(people) == 0:
        return None
    mask = np.full(shape[:2], 255, np.uint8)
    for x1, y1, x2, y2 in np.round(np.asarray(people, np.float64) / scale).astype(int):
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 0
    return mask if mask.mean() > 255 * 0.1 else None


def corner_shift(a: np.ndarray, hw: tuple[int, int]) -> float:
    """How far (px) the affine `a` moves the farthest of the frame's four corners."""
    h, w = hw
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    return float(np.abs(corners @ np.asarray(a, np.float64)[:, :2].T + a[:, 2] - corners).max())
