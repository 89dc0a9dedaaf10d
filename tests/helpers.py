"""Paths and small helpers shared by tests (importable: pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from vsdmot.paths import data_root, shared_root, yolox_nano_onnx

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_root()
DATA = data_root()
YOLOX_ONNX = yolox_nano_onnx()


def frames(n=24, size=64):
    """Real PETS09 frames, resized to (size, size) BGR uint8."""
    cap = cv2.VideoCapture(str(DATA / "PETS09-S2L1" / "PETS09-S2L1.avi"))
    out = []
    while len(out) < n:
        ok, img = cap.read()
        if not ok:
            break
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    cap.release()
    if len(out) < n:
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    return out
