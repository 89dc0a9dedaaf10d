"""The bundle loader: verifies schema, version, manifest digest and every file's sha256."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsdmot import __version__
from vsdmot.runtime.bundle import (
    SCHEMA_VERSION, compatible_version, engine_cache_key, file_sha256, load_bundle, manifest_digest,
)
from vsdmot.runtime.errors import BundleError


def make_bundle(root: Path, **overrides) -> Path:
    """A tiny valid bundle: a fake network file and a JSON params file, written by hand."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "detector.onnx").write_bytes(b"\x08\x07onnx-bytes" * 10)
    (root / "quality.json").write_text(json.dumps({"eps": 0.1}))
    files = {n: {"sha256": file_sha256(root / n), "size": (root / n).stat().st_size} for n in ("detector.onnx", "quality.json")}
    manifest = {"schema_version": SCHEMA_VERSION, "vsdmot_version": __version__, "precision": "int8",
                "files": files, "accuracy_gate": {"passed": True, "forced": False}, **overrides}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def test_valid_bundle_loads(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b"))
    assert b.file("detector.onnx").read_bytes().startswith(b"\x08\x07")
    assert b.params("quality.json") == {"eps": 0.1}
    assert b.precision == "int8" and b.names == ["detector.onnx", "quality.json"]
    assert load_bundle(tmp_path / "b" / "manifest.json").path == tmp_path / "b"


def test_unlisted_name_is_refused(tmp_path):
    b = load_bundle(make_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="expected a file named 'tracker.onnx'"):
        b.file("tracker.onnx")


def flip_byte(path: Path, at: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def resign(m: dict) -> None:
    m["manifest_sha256"] = manifest_digest(m)


TAMPER = [
    # (what, mutate(root), message fragment)
    ("byte of the onnx", lambda r: flip_byte(r / "detector.onnx"), "detector.onnx expected sha256"),
    ("truncated onnx", lambda r: (r / "detector.onnx").write_bytes(b"x"), "expected 120 bytes, found 1"),
    ("missing file", lambda r: (r / "quality.json").unlink(), "expected file quality.json"),
    ("manifest edited", lambda r: edit_manifest(r, lambda m: m.update(precision="fp32")), "modified after export"),
    ("manifest hash edited", lambda r: edit_manifest(r, lambda m: m["files"]["quality.json"].update(sha256="0" * 64)),
     "modified after export"),
    ("wrong schema", lambda r: edit_manifest(r, lambda m: (m.update(schema_version=99), resign(m))),
     "expected schema_version 1, found 99"),
    ("other vsdmot", lambda r: edit_manifest(r, lambda m: (m.update(vsdmot_version="7.0.0"), resign(m))),
     "written by vsdmot 7.0.0"),
    ("path escape", lambda r: edit_manifest(r, lambda m: (m["files"].update({"../x": {"sha256": "0"}}), resign(m))),
     "relative file names"),
    ("gate failed", lambda r: edit_manifest(r, lambda m: (m.update(accuracy_gate={"passed": False, "forced": False,
                                                                                 "reason": "HOTA -5"}), resign(m))),
     "accuracy gate failed \\(HOTA -5\\)"),
    ("no manifest", lambda r: (r / "manifest.json").unlink(), "expected manifest.json, found none"),
    ("bad json", lambda r: (r / "manifest.json").write_text("{"), "not valid JSON"),
]


@pytest.mark.parametrize("what,mutate,message", TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_bundle_is_refused(tmp_path, what, mutate, message):
    root = make_bundle(tmp_path / "b")
    mutate(root)
    with pytest.raises(BundleError, match=message):
        load_bundle(root)


def test_forced_gate_loads_with_a_warning_and_extra_files_are_ignored(tmp_path, caplog):
    root = make_bundle(tmp_path / "b", accuracy_gate={"passed": False, "forced": True, "reason": "drop 39.0"})
    (root / "engine.plan").write_bytes(b"cache")
    with caplog.at_level("WARNING"):
        assert load_bundle(root).manifest["accuracy_gate"]["forced"] is True
    assert "failed its accuracy gate and was published with --force (drop 39.0)" in caplog.text
    caplog.clear()
    load_bundle(make_bundle(tmp_path / "ok"))
    assert "accuracy gate" not in caplog.text


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="no such directory"):
        load_bundle(tmp_path / "nope")


@pytest.mark.parametrize("made_by,ok", [(__version__, True), ("0.1.7", True), ("0.2.0", False), ("1.0.0", False), ("junk", False)])
def test_compatible_version(made_by, ok):
    assert compatible_version(made_by, "0.1.0") is ok


def test_engine_cache_key_is_stable_and_discriminating():
    sha = "ab" * 32
    k = engine_cache_key(sha, "10.3.0", "Orin", "int8")
    assert len(k) == 16 and k == engine_cache_key(sha, "10.3.0", "Orin", "int8")
    others = {engine_cache_key("cd" * 32, "10.3.0", "Orin", "int8"), engine_cache_key(sha, "8.5.2", "Orin", "int8"),
              engine_cache_key(sha, "10.3.0", "Xavier", "int8"), engine_cache_key(sha, "10.3.0", "Orin", "fp16")}
    assert k not in others and len(others) == 4


def test_engine_cache_key_is_pinned():
    """Engines and calibration caches already on devices are found under this key: a change to
    how it is computed must be a decision (a new cache), not an accident."""
    from vsdmot.runtime import backends

    sha = "ef" * 32
    assert engine_cache_key(sha, "10.3.0", "Orin", "int8") == "e2f63d32d3f8b50f"
    assert backends.EngineKey(sha, "10.3.0", "Orin", "int8").digest() == "e2f63d32d3f8b50f"


@pytest.mark.parametrize("args,message", [
    (("xyz", "10", "Orin", "int8"), "64-digit"),
    (("ab" * 32, "10", "Orin", "int4"), "precision"),
    (("ab" * 32, "", "Orin", "int8"), "non-empty"),
])
def test_engine_cache_key_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        engine_cache_key(*args)


@pytest.mark.parametrize("drop", ["tensorrt", "gpu", "model_sha256", "calib_id", "cache_sha256"])
def test_a_stamp_missing_a_field_is_refused(tmp_path, drop):
    """The one check behind every stamped cache (TensorRT engines, legacy INT8 calibration caches):
    an old-format stamp that lacks a field, or its sha256, must not pass as this device's."""
    import hashlib

    from vsdmot.runtime.bundle import read_stamped
    from vsdmot.runtime.errors import DeviceError

    data, want = b"calibration-table", {"tensorrt": "8.6.2", "gpu": "Orin", "model_sha256": "ab" * 32, "calib_id": "c1"}
    cache, stamp = tmp_path / "t.calib", tmp_path / "t.calib.stamp.json"
    cache.write_bytes(data)
    full = {**want, "cache_sha256": hashlib.sha256(data).hexdigest()}
    stamp.write_text(json.dumps(full))
    assert read_stamped(cache, stamp, want, "cache_sha256", "cache") == data
    stamp.write_text(json.dumps({k: v for k, v in full.items() if k != drop}))
    with pytest.raises(DeviceError, match="refusing"):
        read_stamped(cache, stamp, want, "cache_sha256", "cache")
