"""Paths and small helpers shared by tests (importable: pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
YOLOX_ONNX = SHARED / "models" / "yolox_nano.onnx"
