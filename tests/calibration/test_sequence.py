"""write_degraded_sequence on the real sequences: same frame count, identical gt, lossless storage,
per-frame log, atomic replacement."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vsdmot.calibration import sequence as seqmod
from vsdmot.calibration.degrade import degrade, degrade_frames, frame_rng
from vsdmot.calibration.schedule import CLEAN, FrameState, mixed_schedule
from vsdmot.calibration.sequence import write_degraded_sequence
from vsdmot.runtime.mot import read_seqinfo
from vsdmot.runtime.sources import open_sequence


def _images(seq_dir):
    src = open_sequence(seq_dir).frames()
    try:
        return [(f.index, f.image) for f in src]
    finally:
        src.close()


@pytest.fixture(scope="module")
def tud_frames(tud_dir):
    return _images(tud_dir)


def _log(out):
    return json.loads((out / "degradation.json").read_text())


def test_fixed_preset_on_tud_campus(tud_dir, tud_frames, tmp_path):
    out = write_degraded_sequence(tud_dir, tmp_path / "tud-jpeg", preset="jpeg", severity=4, seed=3, progress=False,
                                  storage="ffv1")
    got = _images(out)
    assert len(got) == len(tud_frames) == 71
    assert (out / "gt" / "gt.txt").read_bytes() == (tud_dir / "gt" / "gt.txt").read_bytes()
    src, new = read_seqinfo(tud_dir), read_seqinfo(out)
    assert (new.frame_rate, new.length, new.width, new.height) == (src.frame_rate, src.length, src.width, src.height)
    assert new.name == "TUD-Campus-jpeg-s4" and open_sequence(out).video.suffix == ".mkv"
    log = _log(out)
    assert [r["index"] for r in log["frames"]] == list(range(1, 72)) and log["storage"] == "ffv1"
    assert {(r["preset"], r["severity"], r["seed"]) for r in log["frames"]} == {("jpeg", 4, 3)}
    for (k, img), (k2, stored) in zip(tud_frames[::10], got[::10]):  # lossless: exactly what degrade made
        assert k == k2 and stored.tobytes() == degrade(img, "jpeg", 4, frame_rng(3, k)).tobytes()


def test_mixed_schedule_on_tud_campus(tud_dir, tud_frames, tmp_path):
    out = write_degraded_sequence(tud_dir, tmp_path / "mixed", schedule="mixed", seed=3, progress=False)  # defocus 2.6 s, then clean
    got, log = _images(out), _log(out)
    assert log["storage"] == "png" and len(list((out / "img1").glob("*.png"))) == 71
    want = mixed_schedule(71, 25.0, 3)
    assert [(r["preset"], r["severity"]) for r in log["frames"]] == [(s.preset, s.severity) for s in want]
    assert log["schedule"] == "mixed" and len(got) == 71 and len({s.kind for s in want}) == 2
    for (_, img), (_, stored), s in zip(tud_frames, got, want):
        assert (stored.tobytes() == img.tobytes()) == (s.preset is None)  # clean frames pass through untouched


def test_h264_sequence_keeps_the_frames(ffmpeg, mot17_dir, tmp_path):
    out = write_degraded_sequence(mot17_dir, tmp_path / "h264", preset="h264", severity=5, progress=False)
    src, got = _images(mot17_dir), _images(out)
    assert [i for i, _ in got] == [i for i, _ in src]
    assert all(a.shape == b.shape and a.tobytes() != b.tobytes() for (_, a), (_, b) in zip(src, got))


def test_a_schedule_codes_its_h264_stretch_as_one_clip(ffmpeg, mot17_dir, tmp_path, monkeypatch):
    plan = [FrameState("h264", 3)] * 3 + [CLEAN] * 2 + [FrameState("h264", 3)]
    monkeypatch.setattr(seqmod, "named_schedule", lambda name, n, fps, seed: (plan * n)[:n])
    out = write_degraded_sequence(mot17_dir, tmp_path / "s", schedule="mixed", seed=0, progress=False)
    src, got = _images(mot17_dir), _images(out)
    assert [i for i, _ in got] == [i for i, _ in src] == [1, 2, 3, 4, 5, 6]
    assert [a.tobytes() == b.tobytes() for (_, a), (_, b) in zip(src, got)] == [False] * 3 + [True] * 2 + [False]
    clip = list(degrade_frames([img for _, img in src[:3]], "h264", 3, 0, fps=read_seqinfo(mot17_dir).frame_rate, start=1))
    assert all(a.tobytes() == b.tobytes() for a, (_, b) in zip(clip, got[:3]))  # one clip, in order


@pytest.mark.parametrize("preset", ["snow", "h264"])  # a per-clip wind direction; one coded clip
def test_a_window_is_the_whole_copys_frames(preset, mot17_dir, tmp_path, request):
    if preset == "h264":
        request.getfixturevalue("ffmpeg")
    whole = write_degraded_sequence(mot17_dir, tmp_path / "whole", preset=preset, severity=3, seed=2, progress=False)
    part = write_degraded_sequence(mot17_dir, tmp_path / "part", preset=preset, severity=3, seed=2, progress=False,
                                   frames=(3, 5))
    want = [(k, img.tobytes()) for k, img in _images(whole) if 3 <= k <= 5]
    assert [(k, img.tobytes()) for k, img in _images(part)] == want and len(want) == 3
    assert [r["index"] for r in _log(part)["frames"]] == [3, 4, 5] and _log(part)["window"] == [3, 5]
    assert (part / "gt" / "gt.txt").read_bytes() == (mot17_dir / "gt" / "gt.txt").read_bytes()


def test_a_window_needs_png_and_a_valid_span(mot17_dir, tmp_path):
    for kw in (dict(frames=(2, 4), storage="ffv1"), dict(frames=(0, 4)), dict(frames=(5, 4))):
        with pytest.raises(ValueError, match="frames must be"):
            write_degraded_sequence(mot17_dir, tmp_path / "o", preset="jpeg", severity=1, progress=False, **kw)
    assert not (tmp_path / "o").exists()


def test_image_sequence_keeps_frame_numbers_as_png(mot17_dir, tmp_path):
    out = write_degraded_sequence(mot17_dir, tmp_path / "m17", preset="haze", severity=2, progress=False)
    src_names = sorted(p.stem for p in (mot17_dir / "img1").iterdir())
    assert sorted(p.name for p in (out / "img1").iterdir()) == [f"{n}.png" for n in src_names]
    assert (out / "gt" / "gt.txt").read_bytes() == (mot17_dir / "gt" / "gt.txt").read_bytes()
    assert [i for i, _ in _images(out)] == [i for i, _ in _images(mot17_dir)]
    assert read_seqinfo(out).im_ext == ".png" and _log(out)["storage"] == "png"


def test_ffv1_needs_frames_numbered_from_one(tmp_path, mot17_dir):
    src = tmp_path / "sparse"
    (src / "img1").mkdir(parents=True)
    (src / "seqinfo.ini").write_text((mot17_dir / "seqinfo.ini").read_text())
    img = _images(mot17_dir)[0][1]
    for k in (1, 3):
        cv2.imwrite(str(src / "img1" / f"{k:06d}.jpg"), img)
    with pytest.raises(ValueError, match="ffv1 storage: frames must be numbered 1..N, got frame 3"):
        write_degraded_sequence(src, tmp_path / "o", preset="jpeg", severity=1, progress=False, storage="ffv1")
    out = write_degraded_sequence(src, tmp_path / "o", preset="jpeg", severity=1, progress=False)
    assert [i for i, _ in _images(out)] == [1, 3]
    with pytest.raises(ValueError, match="storage: expected one of png, ffv1, got 'avi'"):
        write_degraded_sequence(src, tmp_path / "o", preset="jpeg", severity=1, progress=False, storage="avi")


def test_crash_leaves_nothing_and_a_rerun_replaces(mot17_dir, tmp_path, monkeypatch):
    calls = []

    def boom(img, preset, sev, rng, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash on frame 3")
        return img

    monkeypatch.setattr(seqmod, "degrade", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_degraded_sequence(mot17_dir, tmp_path / "out", preset="jpeg", severity=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half sequence, no temp folder
    monkeypatch.undo()
    out = write_degraded_sequence(mot17_dir, tmp_path / "out", preset="jpeg", severity=1, progress=False)
    out = write_degraded_sequence(mot17_dir, out, preset="contrast", severity=5, progress=False)  # replaces
    assert read_seqinfo(out).name.endswith("contrast-s5") and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_a_foreign_folder(mot17_dir, tmp_path, monkeypatch):
    """Refused before any frame is degraded (it was refused only after all of them)."""
    from vsdmot.calibration import sequence

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    monkeypatch.setattr(sequence, "_write_frames", lambda *a, **k: pytest.fail("degraded frames first"))
    with pytest.raises(ValueError, match="exists and is not a degraded sequence"):
        write_degraded_sequence(mot17_dir, tmp_path / "mine", preset="jpeg", severity=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(preset="jpeg"), "expected either --preset NAME --severity S, or --schedule NAME"),
        (dict(preset="jpeg", severity=2, schedule="mixed"), "expected either"),
        (dict(), "expected either"),
        (dict(preset="fog", severity=2), "unknown degradation preset 'fog'"),
        (dict(preset="fog"), "unknown degradation preset 'fog'"),  # before the missing severity
        (dict(schedule="calm"), "unknown schedule 'calm'"),
    ],
)
def test_bad_arguments(kw, match, mot17_dir, tmp_path):
    with pytest.raises(ValueError, match=match):
        write_degraded_sequence(mot17_dir, tmp_path / "o", progress=False, **kw)
    assert not (tmp_path / "o").exists()


def test_stored_frames_are_not_the_source_frames(mot17_dir, tmp_path):
    out = write_degraded_sequence(mot17_dir, tmp_path / "n", preset="gaussian_noise", severity=1, progress=False)
    a, b = _images(mot17_dir)[0][1], _images(out)[0][1]
    assert a.shape == b.shape and 4 < np.abs(a.astype(int) - b).mean() < 12  # sigma 8 noise, clipped
