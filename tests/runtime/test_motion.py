"""Camera motion: the estimator on known warps, its dead zone and auto probing, and the trackers' warp."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fakenets import IouNet
from vsdmot.runtime.bytetrack import ByteTrack
from vsdmot.runtime.e2e import E2EConfig, HybridTracker
from vsdmot.runtime.motion import CameraMotion, MotionConfig, corner_shift
from vsdmot.runtime.tracking import motion_scale, warp_xyxy
from vsdmot.runtime.types import Detections

H, W = 480, 640


def texture(seed: int = 0, size: tuple[int, int] = (H + 200, W + 200)) -> np.ndarray:
    """A blurred-noise scene larger than the frame, so a shifted crop stays textured everywhere."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (*size, 3), np.uint8), (0, 0), 3)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def view(scene: np.ndarray, x: float, y: float) -> np.ndarray:
    """The frame a camera whose top-left corner is at scene (x, y) sees: content moves by (-x, -y)."""
    m = np.float32([[1, 0, -x], [0, 1, -y]])
    return cv2.warpAffine(scene, m, (W, H), flags=cv2.INTER_LINEAR)


def test_a_known_shift_and_rotation_are_recovered():
    scene, cm = texture(), CameraMotion(mode="on")
    assert cm.estimate(view(scene, 100, 100)) is None  # first frame: nothing to compare with
    a = cm.estimate(view(scene, 107, 96))  # the camera moved right 7, up 4: the content moves (-7, +4)
    np.testing.assert_allclose(a[:, 2], [-7, 4], atol=0.5)
    np.testing.assert_allclose(a[:, :2], np.eye(2), atol=0.01)
    rot = cv2.getRotationMatrix2D((W / 2, H / 2), 2.0, 1.03)  # 2 degrees, 3 % zoom about the centre
    cm.reset()
    f1 = view(scene, 100, 100)
    cm.estimate(f1)
    a = cm.estimate(cv2.warpAffine(f1, rot, (W, H)))
    np.testing.assert_allclose(a[:, :2], rot[:, :2], atol=0.01)
    np.testing.assert_allclose(a[:, 2], rot[:, 2], atol=3.0)  # px: about the centre, a small angle error moves it
    assert motion_scale(a) == pytest.approx(1.03, abs=0.01)


def test_a_still_camera_gives_none_even_with_people_walking():
    """A tripod: the same background, a 'person' walking 6 px per frame; RANSAC outvotes them and the
    dead zone leaves the sub-pixel rest, so the trackers are never warped by noise."""
    scene, cm = texture(), CameraMotion(mode="on")
    person = np.full((120, 50, 3), (30, 200, 60), np.uint8)
    for t in range(10):
        frame = view(scene, 100, 100)
        x = 100 + 6 * t
        frame[200:320, x:x + 50] = person
        frame = cv2.GaussianBlur(frame, (3, 3), 0.5 + 0.1 * t)  # a little sensor noise, never the same
        assert cm.estimate(frame) is None


def test_a_crowd_walking_one_way_is_not_the_camera():
    """A still camera where people fill most of the frame, all walking right (MOT17-09's close-up crowd
    made the estimator report 2-3 px of camera motion): their textured boxes outvote the background
    unless this frame's detections mask them out of the corners tracked into the next frame."""
    scene, crowd = texture(0), texture(1, (H, W))
    box = np.array([[40, 40, 600, 440]], np.float64)  # (N, 4) xyxy: 73 % of the frame

    def frame(t: int) -> np.ndarray:
        f = view(scene, 100, 100)
        f[40:440, 40:600] = crowd[:400, 50 - 5 * t:610 - 5 * t]  # the crowd's texture moves right 5 px a frame
        return f

    unmasked, masked = CameraMotion(mode="on"), CameraMotion(mode="on")
    for t in range(3):
        a, b = unmasked.estimate(frame(t)), masked.estimate(frame(t), box)
    assert a is not None and a[0, 2] == pytest.approx(5, abs=1)  # the crowd, taken for the camera
    assert b is None  # the background: still


def test_a_still_background_outweighs_a_larger_moving_region():
    """Three fifths of a still camera's frame move together (a passing tram, a screen, falling snow: no
    detection masks them): the fit locks onto them, but the corners that stayed put are more than
    half its inliers, so "no motion" wins; without that rule the 5 px are reported."""
    scene, moving = texture(0), texture(1, (H, W))
    w = int(W * 0.6)

    def frame(t: int) -> np.ndarray:
        f = view(scene, 100, 100)
        f[:, :w] = moving[:, 50 - 5 * t:50 - 5 * t + w]
        return f

    for share, seen in ((0.5, [None] * 3), (float("inf"), [5] * 3)):
        cm = CameraMotion(MotionConfig(still_share=share), mode="on")
        out = [cm.estimate(frame(t)) for t in range(4)][1:]
        assert [None if a is None else round(float(a[0, 2])) for a in out] == pytest.approx(seen, abs=1)


def test_auto_probes_a_still_camera_and_follows_a_moving_one(monkeypatch):
    """auto looks at one frame pair in `probe_every` while the camera is still (the costly fit runs
    rarely), estimates every frame from the first probe that sees motion, and goes back to probing
    after `still_frames` still estimates."""
    cfg = MotionConfig(probe_every=5, still_frames=4)
    cm, scene, fits = CameraMotion(cfg, mode="auto"), texture(), []
    real_fit = cm._fit
    monkeypatch.setattr(cm, "_fit", lambda prev, cur, mask, scale: fits.append(1) or real_fit(prev, cur, mask, scale))
    xs = [100] * 12 + [100 + 6 * i for i in range(1, 9)] + [148] * 12  # still, panning 6 px/frame, still
    out = [cm.estimate(view(scene, x, 100)) for x in xs]
    # fits: probes at frames 5, 10 (still) and 15 (the pan); every frame 16-24 (the pan ends at 20, and
    # 21-24 are the 4 still ones); probes again at 25 and 30
    assert len(fits) == 3 + 9 + 2
    moved = [i + 1 for i, a in enumerate(out) if a is not None]  # frame numbers
    assert moved == list(range(15, 21))  # frames 13-14 fell between probes; 15-20 are followed
    np.testing.assert_allclose(out[16][:, 2], [-6, 0], atol=0.5)


def test_warp_xyxy_moves_centres_and_scales_sizes():
    a = np.array([[0, -1, 100], [1, 0, 0]], np.float64) * 1.0  # 90 degrees, then +100 px in x
    box = np.array([[10, 20, 30, 60]])  # centre (20, 40), 20 x 40
    np.testing.assert_allclose(warp_xyxy(box, a), [[50, 0, 70, 40]])  # centre (60, 20); size kept (axis-aligned)
    np.testing.assert_allclose(warp_xyxy(box, np.array([[2, 0, 0], [0, 2, 0]])), [[20, 40, 60, 120]])  # x2 about (0, 0)
    assert corner_shift(np.array([[1, 0, 3], [0, 1, -4]]), (H, W)) == 4.0


def shaken_walk(warp: bool, tracker, steps: int = 40, seed: int = 1) -> set[int]:
    """One person walking right 2 px per frame, seen by a camera shaking up to +-25 px per frame:
    the ids the tracker gives them (one, if it follows the camera)."""
    rng = np.random.default_rng(seed)
    cam = np.cumsum(rng.uniform(-25, 25, (steps, 2)), 0)  # camera position, a random walk
    ids: set[int] = set()
    for t in range(steps):
        x, y = 200 + 2 * t - cam[t, 0], 150 - cam[t, 1]
        dets = Detections(np.array([[x, y, x + 30, y + 80]], np.float32), np.array([0.9], np.float32),
                          feature=np.ones((1, getattr(tracker, "E", 1)), np.float32) if hasattr(tracker, "E") else None)
        if warp and t:
            tracker.warp(np.array([[1, 0, cam[t - 1, 0] - cam[t, 0]], [0, 1, cam[t - 1, 1] - cam[t, 1]]]))
        out = tracker.step(dets)
        ids |= set(out.track_id.tolist())
    return ids


def test_bytetrack_keeps_one_id_through_a_shake_only_when_warped():
    assert len(shaken_walk(False, ByteTrack(frame_rate=25))) > 3
    assert shaken_walk(True, ByteTrack(frame_rate=25)) == {1}


def test_the_slot_tracker_keeps_one_id_through_a_shake_only_when_warped():
    """The fake network points a track at the proposal its predicted box overlaps (IoU >= 0.3)."""
    assert len(shaken_walk(False, HybridTracker(IouNet(), E2EConfig()))) > 3
    assert shaken_walk(True, HybridTracker(IouNet(), E2EConfig())) == {1}


def test_slot_warp_turns_velocities_and_leaves_free_slots():
    trk = HybridTracker(IouNet(), E2EConfig())
    trk.step(Detections(np.array([[100, 100, 130, 180]], np.float32), np.array([0.9], np.float32),
                        feature=np.ones((1, trk.E), np.float32)))
    trk.vel[0] = [4, 0, 4, 0]  # moving right
    free = trk.box[1].copy()
    trk.warp(np.array([[0, -1, 0], [1, 0, 0]], np.float64))  # 90 degrees: right becomes down
    np.testing.assert_allclose(trk.vel[0], [0, 4, 0, 4], atol=1e-6)
    np.testing.assert_allclose(trk.box[1], free)  # a free slot is not touched
