"""Quality gate: features, params round trip, bad input; the shipped head's q falls with severity on
real frames of a scene it never saw (TUD-Campus) and clean q barely depends on the scene."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsdmot.runtime.quality import FEATURES, QualityGate, compute_features

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "quality.json"


def _frames(video: Path, indices: range) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(str(video)), []
    for k in range(1, max(indices) + 1):
        ok, img = cap.read()
        assert ok
        if k in indices:
            out.append(img)
    return out


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate.from_params(json.loads(SHIPPED.read_text()))


@pytest.fixture(scope="module")
def tud(tud_dir) -> list[np.ndarray]:
    return _frames(tud_dir / "TUD-Campus.mp4", range(1, 71, 14))  # 5 frames, never trained on


@pytest.mark.parametrize("shape", [(480, 640, 3), (1080, 1920, 3), (120, 90, 3), (32, 32, 3)])
def test_features_finite_for_any_size(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    f = compute_features(img)
    assert f.shape == (len(FEATURES),) and f.dtype == np.float32 and np.isfinite(f).all()


@pytest.mark.parametrize("image", [np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.float32), [[1, 2, 3]]])
def test_bad_image_raises(image):
    with pytest.raises(ValueError, match="uint8 BGR"):
        compute_features(image)


def test_too_small_image_raises():
    with pytest.raises(ValueError, match="at least 32x32"):
        compute_features(np.zeros((9, 40, 3), np.uint8))


def test_params_round_trip(gate):
    img = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    again = QualityGate.from_params(json.loads(json.dumps(gate.params())))
    assert again.assess(img) == pytest.approx(gate.assess(img), abs=1e-6)
    assert 0.0 <= gate.assess(img) <= 1.0


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(features=["nope"] + d["features"][1:]), "unknown features"),
    (lambda d: d.update(mean=d["mean"][:-1]), "mean/std"),
    (lambda d: d["layers"][0].update(b=[0.0]), "layer 0"),
    (lambda d: d.pop("layers"), "missing"),
])
def test_bad_params_raise(gate, edit, match):
    d = json.loads(json.dumps(gate.params()))
    edit(d)
    with pytest.raises(ValueError, match=match):
        QualityGate.from_params(d)


@pytest.mark.parametrize("preset", ["gaussian_noise", "motion_blur", "defocus_blur", "low_light", "rain", "realesrgan"])
def test_q_falls_with_severity_on_an_unseen_scene(gate, tud, preset):
    degrade = pytest.importorskip("vsdmot.calibration.degrade").degrade
    rng = np.random.default_rng(0)
    q = [np.mean([gate.assess(f) for f in tud])]
    q += [np.mean([gate.assess(degrade(f, preset, s, rng)) for f in tud]) for s in (1, 3, 5)]
    assert q[0] >= q[2] + 0.05 and q[2] >= q[3] + 0.05, f"{preset}: q clean, s1, s3, s5 = {np.round(q, 3)}"


def test_clean_q_is_high_on_training_and_unseen_scenes(gate, tud, pets_dir):
    pets = _frames(pets_dir / "PETS09-S2L1.avi", range(1, 200, 40))
    q_tud, q_pets = np.mean([gate.assess(f) for f in tud]), np.mean([gate.assess(f) for f in pets])
    assert q_tud > 0.85 and q_pets > 0.85 and abs(q_tud - q_pets) < 0.1
