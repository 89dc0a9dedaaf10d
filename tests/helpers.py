"""Paths and small helpers shared by tests (importable: pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

from pathlib import Path

from vsdmot.paths import data_root, shared_root, yolox_nano_onnx

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_root()
DATA = data_root()
YOLOX_ONNX = yolox_nano_onnx()
