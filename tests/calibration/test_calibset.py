"""Calibration set: stratified by quality, reusable, audited, and refusing too few frames."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from helpers import DATA
from vsdmot.calibration.calibset import (
    CalibSetConfig, build_calibset, load_calibset, parse_source, stratify,
)

PETS = DATA / "PETS09-S2L1"


def noisy_blur(image, preset, severity, rng):
    """A real (if simple) degradation: blur then Gaussian noise, stronger with severity."""
    out = cv2.GaussianBlur(image, (0, 0), 0.5 * severity) if preset == "blur" else image
    noise = rng.normal(0, 6 * severity, image.shape) if preset == "noise" else 0
    return np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def small_cfg(**kw):
    base = dict(frames=40, min_frames=40, size=64, bins=5, variants=3, stride=1, presets=("blur", "noise"))
    return CalibSetConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def pets(tmp_path_factory):
    """An image folder of 24 real PETS09 frames (every 8th), at half resolution: fast to read."""
    if not PETS.exists():
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    folder = tmp_path_factory.mktemp("pets")
    cap = cv2.VideoCapture(str(PETS / "PETS09-S2L1.avi"))
    for i in range(24 * 8):
        ok, img = cap.read()
        if ok and i % 8 == 0:
            cv2.imwrite(str(folder / f"{i // 8 + 1:06d}.png"), cv2.resize(img, (384, 288)))
    cap.release()
    return str(folder)


def test_builds_stratified_audited_set(pets, tmp_path):
    cs = build_calibset([pets], small_cfg(), tmp_path / "cs", degrade_fn=noisy_blur)
    assert cs.frames.shape == (40, 64, 64, 3) and cs.frames.dtype == np.uint8
    m = cs.manifest
    assert m["frame_count"] == 40 and sum(m["quality_histogram"]["counts"]) == 40
    assert min(m["quality_histogram"]["counts"]) >= 6  # every quality bin represented
    assert {r["preset"] for r in m["frames"]} >= {"clean", "blur", "noise"}
    assert all(1 <= r["frame"] <= 24 for r in m["frames"])
    h, w = cs.content[0]
    assert (h, w) == (48, 64) and (cs.frames[0, h:] == 114).all()  # 4:3 letterboxed top-left


def test_reused_when_unchanged_and_reproducible(pets, tmp_path, caplog):
    a = build_calibset([pets], small_cfg(), tmp_path / "a", degrade_fn=noisy_blur)
    caplog.set_level("INFO")
    again = build_calibset([pets], small_cfg(), tmp_path / "a", degrade_fn=noisy_blur)
    assert "up to date" in caplog.text and again.manifest["sha256"] == a.manifest["sha256"]
    b = build_calibset([pets], small_cfg(), tmp_path / "b", degrade_fn=noisy_blur)
    assert np.array_equal(np.asarray(a.frames), np.asarray(b.frames))  # seeded: same set twice


def test_a_set_rendered_by_older_code_is_rebuilt(pets, tmp_path, caplog, monkeypatch):
    """Same sources and config, but frames rendered another way (RENDER bumped): not reused."""
    from vsdmot.calibration import calibset

    build_calibset([pets], small_cfg(), tmp_path / "a", degrade_fn=noisy_blur)
    monkeypatch.setattr(calibset, "RENDER", calibset.RENDER + 1)
    caplog.set_level("INFO")
    build_calibset([pets], small_cfg(), tmp_path / "a", degrade_fn=noisy_blur)
    assert "up to date" not in caplog.text


def test_refuses_fewer_than_min_frames():
    with pytest.raises(ValueError, match="at least 500 needed"):
        CalibSetConfig(frames=64)


def test_refuses_when_sources_are_too_short(pets, tmp_path):
    cfg = small_cfg(frames=500, min_frames=500)
    with pytest.raises(ValueError, match=r"only \d+ frames .* at least 500 needed"):
        build_calibset([f"{pets}:1-10"], cfg, tmp_path / "cs", degrade_fn=noisy_blur)


def test_tampered_set_is_refused(pets, tmp_path):
    cs = build_calibset([pets], small_cfg(), tmp_path / "cs", degrade_fn=noisy_blur)
    arr = np.load(cs.path / "frames.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(cs.path / "frames.npy", arr)
    with pytest.raises(ValueError, match="frames.npy expected sha256"):
        load_calibset(cs.path)


def test_a_set_is_held_to_its_own_minimum_when_loaded(pets, tmp_path):
    cs = build_calibset([pets], small_cfg(), tmp_path / "cs", degrade_fn=noisy_blur)  # 40 frames, minimum 40
    manifest = json.loads((cs.path / "manifest.json").read_text())
    manifest["config"]["min_frames"] = 50
    (cs.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="at least 50"):
        load_calibset(cs.path)


def test_quality_gate_scores_when_params_given(pets, tmp_path):
    from vsdmot.runtime.quality import FEATURES

    params = {"features": ["log_lap_fine"], "mean": [2.0], "std": [1.0], "layers": [{"W": [[2.0]], "b": [0.0]}]}
    assert "log_lap_fine" in FEATURES
    cs = build_calibset([pets], small_cfg(bins=2), tmp_path / "cs", quality_params=params, degrade_fn=noisy_blur)
    assert cs.manifest["quality"].startswith("QualityGate")
    assert len({r["q"] for r in cs.manifest["frames"]}) > 10  # real scores, not the 6 proxy levels


@pytest.mark.parametrize("spec,path,rng", [("a/b.avi", "a/b.avi", None), ("seq:1-600", "seq", (1, 600)),
                                           ("C:/x", "C:/x", None)])
def test_parse_source(spec, path, rng):
    p, r = parse_source(spec)
    assert str(p) == path and r == rng


def test_stratify_balances_bins():
    q = np.r_[np.full(100, 0.95), np.full(10, 0.1), np.full(100, 0.5)]
    idx = stratify(q, 60, 5, 0)
    assert len(idx) == 60 and (q[idx] == 0.1).sum() == 10  # the short bin gives all it has
    assert abs((q[idx] == 0.95).sum() - (q[idx] == 0.5).sum()) <= 1


def test_too_short_sources_are_refused_before_any_degrading(pets, tmp_path):
    """24 frames x 3 variants can never reach 500: refused on the count, before rendering a candidate."""
    calls = []

    def counting(image, preset, severity, rng):
        calls.append(preset)
        return image

    with pytest.raises(ValueError, match=r"only 72 frames from 24 source frames .* add sources or longer clips"):
        build_calibset([pets], small_cfg(frames=500, min_frames=500), tmp_path / "cs", degrade_fn=counting)
    assert calls == [] and not (tmp_path / "cs").exists()


def test_a_range_past_the_clip_end_is_reported(pets, tmp_path, caplog):
    from vsdmot.calibration.calibset import read_frames

    with caplog.at_level("WARNING"):
        assert len(read_frames(f"{pets}:20-400", 1)) == 5
    assert "ends at frame 24, before 400" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_frames(f"{pets}:1-24", 1)
    assert "ends at frame" not in caplog.text


def test_no_progress_means_no_bars(pets, tmp_path, capsys):
    """vsdmot-export --no-progress reaches the calibration set's bars (they printed anyway)."""
    build_calibset([pets], small_cfg(), tmp_path / "q", degrade_fn=noisy_blur, progress=False)
    assert "calibration:" not in capsys.readouterr().err
    build_calibset([pets], small_cfg(seed=1), tmp_path / "p", degrade_fn=noisy_blur)
    assert "calibration: scoring candidates" in capsys.readouterr().err


def test_a_long_source_is_streamed_not_held(tmp_path):
    """A user's long clip (--calib site.mp4): source frames are read as needed, never all held at
    once (they were: 150 VGA frames took 143 MB, so a 10-minute 1080p clip needed ~56 GB)."""
    import tracemalloc

    video = tmp_path / "long.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for i in range(150):
        vw.write(np.full((480, 640, 3), i, np.uint8))
    vw.release()
    cfg = small_cfg(variants=1, presets=("blur",))
    tracemalloc.start()
    try:
        cs = build_calibset([str(video)], cfg, tmp_path / "cs", degrade_fn=noisy_blur, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(cs) == 40 and peak < 40e6  # ~43 native frames would already be 40 MB
    rows = [(r["frame"], r["preset"]) for r in cs.manifest["frames"]]
    assert [f for f, _ in rows] == sorted(f for f, _ in rows) and len(set(rows)) == 40
