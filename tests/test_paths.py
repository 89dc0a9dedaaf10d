"""vsdmot.paths: one resolution of the shared data, overridable by environment."""

from __future__ import annotations

from pathlib import Path

from vsdmot import paths


def test_default_is_shared_beside_the_repository(monkeypatch):
    monkeypatch.delenv("VSDMOT_SHARED", raising=False)
    monkeypatch.delenv("VSDMOT_DATA", raising=False)
    assert paths.data_root() == paths.REPO.parent / "shared" / "data"
    assert paths.yolox_nano_onnx() == paths.REPO.parent / "shared" / "models" / "yolox_nano.onnx"
    assert (paths.REPO / "pyproject.toml").is_file()  # REPO really is the repository root


def test_shared_override_moves_data_and_models(monkeypatch, tmp_path):
    monkeypatch.delenv("VSDMOT_DATA", raising=False)
    monkeypatch.setenv("VSDMOT_SHARED", str(tmp_path))
    assert paths.data_root() == tmp_path / "data"
    assert paths.yolox_nano_onnx() == tmp_path / "models" / "yolox_nano.onnx"


def test_data_override_wins_over_shared(monkeypatch, tmp_path):
    monkeypatch.setenv("VSDMOT_SHARED", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VSDMOT_DATA", str(tmp_path / "clips"))
    assert paths.data_root() == Path(tmp_path / "clips")
