"""Degradation presets: contract, determinism per seed, and a no-reference quality measure that falls
as severity rises, for every preset, on real PETS09 and TUD-Campus frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vsdmot.calibration import codec, realesrgan
from vsdmot.calibration.degrade import (
    FRAME_PRESETS, PRESETS, TABLE, degrade, degrade_frames, disk_kernel, frame_rng, random_degrade, scene_seed,
)
from vsdmot.runtime.errors import VsdmotError
from vsdmot.runtime.sources import open_sequence

REQUIRED = ("gaussian_noise", "shot_noise", "motion_blur", "defocus_blur", "jpeg", "h264", "downscale",
            "low_light", "haze", "contrast", "rain", "realesrgan")


def _first_frames(seq_dir, indices):
    src, out = open_sequence(seq_dir).frames(), []
    for f in src:
        if f.index in indices:
            out.append(f.image)
        if f.index >= max(indices):
            break
    src.close()
    return out


@pytest.fixture(scope="module")
def frames(pets_dir, tud_dir):
    """Two real frames: PETS09-S2L1 #10 (768x576) and TUD-Campus #1 (640x480)."""
    return _first_frames(pets_dir, {10}) + _first_frames(tud_dir, {1})


def _needs_tool(preset, request):
    if TABLE[preset].clip:
        request.getfixturevalue("ffmpeg")  # skips with the reason when Debian's ffmpeg is absent


# -- no-reference measures, higher = better quality (grey, float64) -------------------------------

def _grey(img):
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)


def neg_noise_sigma(img):
    """Immerkaer (1996) fast noise-sigma estimate from the 3x3 Laplacian-difference mask."""
    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    return -np.sqrt(np.pi / 2) * np.abs(cv2.filter2D(_grey(img), -1, m)[1:-1, 1:-1]).mean() / 6


def laplacian_var(img):
    return cv2.Laplacian(_grey(img), cv2.CV_64F).var()


def neg_blockiness(img):
    """Mean abs step across 8-px block boundaries over that inside blocks (1 = no block edges)."""
    g = _grey(img)
    dh, dv = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    edge = dh[:, 7::8].mean() + dv[7::8].mean()
    inner = np.delete(dh, np.s_[7::8], axis=1).mean() + np.delete(dv, np.s_[7::8], axis=0).mean()
    return -edge / inner


def brightness(img):
    return _grey(img).mean()


def neg_dark_channel(img):
    """He et al.'s dark channel (min over colour, 15x15 min filter): haze and veils lift it."""
    return -cv2.erode(img.min(axis=2), np.ones((15, 15), np.uint8)).mean()


def rms_contrast(img):
    return _grey(img).std()


def neg_streak_residual(img):
    """Mean abs difference to a 5x5 median: thin streaks and flakes stand out of it."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return -np.abs(g.astype(np.float64) - cv2.medianBlur(g, 5)).mean()


NR = {
    "gaussian_noise": neg_noise_sigma, "shot_noise": neg_noise_sigma,
    "motion_blur": laplacian_var, "defocus_blur": laplacian_var, "downscale": laplacian_var,
    "realesrgan": laplacian_var, "h264": laplacian_var, "jpeg": neg_blockiness,
    "low_light": brightness, "haze": neg_dark_channel, "snow": neg_dark_channel,
    "contrast": rms_contrast, "rain": neg_streak_residual,
}


def test_required_presets_are_there_and_every_one_has_a_measure():
    assert set(REQUIRED) <= set(PRESETS)
    assert set(NR) == set(PRESETS)
    assert set(FRAME_PRESETS) == {p for p in PRESETS if not TABLE[p].clip}


@pytest.mark.parametrize("preset", PRESETS)
def test_quality_falls_with_severity(preset, frames, request):
    """Mean measure over 2 real frames x 2 seeds (1 if unseeded): clean > 1 > 2 > 3 > 4 > 5 (realesrgan, drawn
    fresh per frame from wide ranges: clean > 1 > 3 > 5)."""
    _needs_tool(preset, request)
    seeds = (0, 1) if TABLE[preset].seeded else (0,)
    q = [np.mean([NR[preset](f) for f in frames])]
    for sev in (1, 2, 3, 4, 5):
        q.append(np.mean([NR[preset](degrade(f, preset, sev, np.random.default_rng([s, i])))
                          for i, f in enumerate(frames) for s in seeds]))
    checked = [q[0], q[1], q[3], q[5]] if preset == "realesrgan" else q
    assert all(a > b for a, b in zip(checked, checked[1:])), f"{preset}: {NR[preset].__name__} by severity 0..5 = {np.round(q, 3)}"


@pytest.mark.parametrize("preset", PRESETS)
def test_seeded_determinism_shape_and_dtype(preset, frames, request):
    _needs_tool(preset, request)
    img = frames[1][100:301, 50:377]  # odd size (201 x 327), a view: training crops look like this
    a = degrade(img, preset, 3, np.random.default_rng(7))
    b = degrade(img, preset, 3, np.random.default_rng(7))
    c = degrade(img, preset, 3, np.random.default_rng(8))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert (a.tobytes() != c.tobytes()) == TABLE[preset].seeded, "the preset's `seeded` flag must tell the truth"
    assert a.tobytes() != img.tobytes()


@pytest.mark.parametrize(
    "args, match",
    [
        (("fog", 3), "unknown degradation preset 'fog': expected one of gaussian_noise, .*realesrgan"),
        (("jpeg", 0), "severity: expected an integer 1..5, got 0"),
        (("jpeg", 6), "severity: expected an integer 1..5, got 6"),
        (("jpeg", 2.5), "expected an integer 1..5, got 2.5"),
        (("jpeg", True), "expected an integer 1..5, got True"),
    ],
)
def test_bad_preset_or_severity(args, match, frames):
    with pytest.raises(ValueError, match=match):
        degrade(frames[1], *args, np.random.default_rng(0))


@pytest.mark.parametrize("image", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)])
def test_bad_image(image):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 BGR image"):
        degrade(image, "jpeg", 1, np.random.default_rng(0))


def test_degrade_frames_uses_one_generator_per_frame_index(frames):
    clip = [frames[1]] * 3
    out = list(degrade_frames(clip, "gaussian_noise", 2, seed=5, start=10))
    for k, img in enumerate(out, 10):
        assert img.tobytes() == degrade(frames[1], "gaussian_noise", 2, frame_rng(5, k)).tobytes()
    assert out[0].tobytes() != out[1].tobytes()  # fresh noise per frame


def test_fog_holds_still_over_a_clip_while_rain_falls(frames):
    still = [frames[1]] * 3  # a static camera
    fog = list(degrade_frames(still, "haze", 3, seed=1))
    assert fog[0].tobytes() == fog[1].tobytes() == fog[2].tobytes()  # no flicker within a clip
    assert fog[0].tobytes() != next(degrade_frames(still, "haze", 3, seed=2)).tobytes()
    assert fog[0].tobytes() == degrade(frames[1], "haze", 3, frame_rng(1, 1), scene_seed=scene_seed(1, 1)).tobytes()
    rain = list(degrade_frames(still, "rain", 3, seed=1))
    assert rain[0].tobytes() != rain[1].tobytes()  # new drops every frame


def test_random_degrade_is_seeded_and_never_spawns_the_codec(frames, monkeypatch):
    monkeypatch.setattr(codec, "ffmpeg_exe", lambda: pytest.fail("random_degrade must not run ffmpeg"))
    outs = [random_degrade(frames[1], np.random.default_rng(s)) for s in range(20)]
    assert outs[3].tobytes() == random_degrade(frames[1], np.random.default_rng(3)).tobytes()
    assert len({o.tobytes() for o in outs}) >= 12  # a few draws repeat an unseeded preset and severity


def test_kernels_are_normalised():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = realesrgan.mixed_kernel(rng, (0.2, 3.0), 21)
        assert k.shape[0] % 2 == 1 and abs(k.sum() - 1) < 1e-5 and k.min() >= 0
    s = realesrgan.sinc_kernel(np.pi / 4, 21)
    assert abs(s.sum() - 1) < 1e-5 and s.min() < 0  # an ideal low-pass rings: negative lobes
    d = disk_kernel(3.0)
    assert d.shape == (7, 7) and abs(d.sum() - 1) < 1e-5 and d[0, 0] == 0


# -- h264: the real codec ------------------------------------------------------------------------

def test_h264_clip_round_trip(ffmpeg, tud_dir):
    clip = _first_frames(tud_dir, set(range(1, 26)))
    lo = list(degrade_frames(clip, "h264", 1, seed=0, fps=25))
    hi = list(degrade_frames(clip, "h264", 5, seed=0, fps=25))
    again = list(degrade_frames(clip, "h264", 5, seed=0, fps=25))
    assert len(lo) == len(hi) == 25 and all(o.shape == clip[0].shape and o.dtype == np.uint8 for o in hi)
    assert b"".join(o.tobytes() for o in hi) == b"".join(o.tobytes() for o in again)
    err = [np.mean([np.abs(o.astype(int) - c).mean() for o, c in zip(out, clip)]) for out in (lo, hi)]
    assert 0 < err[0] < err[1], f"mean abs error by severity 1, 5: {err}"


def test_h264_odd_size_and_a_different_gop_phase(ffmpeg, tud_dir):
    clip = [f[:99, :101] for f in _first_frames(tud_dir, set(range(1, 61)))]
    a = list(degrade_frames(clip, "h264", 3, seed=0, fps=25))
    b = list(degrade_frames(clip, "h264", 3, seed=1, fps=25))
    assert len(a) == 60 and a[0].shape == (99, 101, 3)
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a, b))  # key frames fall elsewhere


def test_h264_without_ffmpeg_says_how_to_install(frames, monkeypatch):
    monkeypatch.setattr(codec.shutil, "which", lambda name: None)
    with pytest.raises(codec.CodecError, match="apt-get install ffmpeg") as e:
        list(degrade_frames([frames[1]], "h264", 3, seed=0))
    assert isinstance(e.value, VsdmotError)
    with pytest.raises(codec.CodecError, match="apt-get install ffmpeg"):
        degrade(frames[1], "h264", 3, np.random.default_rng(0))


def test_h264_frames_of_different_sizes_are_bad_input(ffmpeg, frames):
    with pytest.raises(ValueError, match="h264: frame 2 is"):
        list(degrade_frames([frames[1], frames[0]], "h264", 3, seed=0))
