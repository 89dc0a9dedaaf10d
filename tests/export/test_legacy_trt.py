"""The legacy INT8 step (TensorRT < 10.1) up to the device boundary: which networks, which
calibration feeds, and the engine cached under the key the runtime's TensorRT backend looks up.
TensorRT itself is a stand-in module here; the real build runs only on a device."""

from __future__ import annotations

import sys
import types

import pytest

from vsdmot.calibration.trt_calibrator import CacheStamp
from vsdmot.export import legacy_trt
from vsdmot.export.legacy_trt import legacy_int8_engines, needs_legacy
from vsdmot.runtime.backends import EngineKey, engine_dir, load_cached_engine
from vsdmot.runtime.bundle import file_sha256, load_bundle


@pytest.mark.parametrize("version,legacy", [("8.5.2.2", True), ("8.6.1", True), ("10.0.1.6", True),
                                            ("10.1.0", False), ("10.3.0.26", False)])
def test_only_tensorrt_before_10_1_takes_the_legacy_path(version, legacy):
    assert needs_legacy(version) is legacy


@pytest.fixture
def int8_bundle(tiny_export, tmp_path):
    out, sources = tiny_export()
    return out, {"detector": tmp_path / "work" / "fp32" / "detector.sim.onnx"}, sources.feeds


def fake_tensorrt(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))


def as_gated(onnx, cache_root):
    """An engine whose outputs are the gated Q/DQ file's (TensorRT is not here to run the real one)."""
    from contextlib import nullcontext

    from vsdmot.export.parity import onnx_runner

    assert cache_root.parts[-2:] == ("legacy-int8", "engines")  # checked from a trial cache in the work dir
    return nullcontext(onnx_runner(onnx))


def test_the_engine_lands_under_the_runtimes_key_for_the_bundles_file(int8_bundle, tmp_path, monkeypatch):
    bundle_dir, fp32, feeds = int8_bundle
    calls = []

    def build(onnx, net_feeds, cache, calib_id):  # build_legacy_int8_engine's signature
        calls.append((onnx, len(net_feeds), cache, calib_id))
        return b"legacy engine", CacheStamp("8.5.2.2", "Orin", file_sha256(onnx), calib_id)

    fake_tensorrt(monkeypatch, "8.5.2.2")
    out = legacy_int8_engines(bundle_dir, fp32, feeds, tmp_path / "work", tmp_path / "engines", build, as_gated)
    assert list(out) == ["detector"]
    (onnx, n, cache, calib_id), = calls
    assert onnx == fp32["detector"] and n == len(feeds["detector"]) and calib_id == "pets-24"  # the FP32 net, same feeds
    assert cache == tmp_path / "work" / "legacy-int8" / "detector.calib"
    b = load_bundle(bundle_dir)
    key = EngineKey(file_sha256(b.file("detector.onnx")), "8.5.2.2", "Orin", "int8")  # what TensorRTBackend computes
    assert load_cached_engine(engine_dir(tmp_path / "engines", b.file("detector.onnx"), key), key) == b"legacy engine"


def test_a_legacy_engine_that_strays_from_fp32_is_not_cached(int8_bundle, tmp_path, monkeypatch, caplog):
    """The legacy engine is calibrated by TensorRT, not the model the gate scored: one whose outputs
    agree with FP32 worse than the gated Q/DQ file's is discarded, and the run builds from Q/DQ."""
    import numpy as np

    bundle_dir, fp32, feeds = int8_bundle
    from contextlib import nullcontext

    from vsdmot.export.parity import onnx_runner

    gated = onnx_runner(load_bundle(bundle_dir).file("detector.onnx"))
    rng = np.random.default_rng(0)

    def strayed(onnx, cache_root):  # right shapes, wrong values: a calibration gone bad
        return nullcontext(lambda feed: {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in gated(feed).items()})

    def build(onnx, net_feeds, cache, calib_id):
        return b"legacy engine", CacheStamp("8.5.2.2", "Orin", file_sha256(onnx), calib_id)

    fake_tensorrt(monkeypatch, "8.5.2.2")
    with caplog.at_level("WARNING"):
        out = legacy_int8_engines(bundle_dir, fp32, feeds, tmp_path / "work", tmp_path / "engines", build, strayed)
    assert out == {} and "is not cached" in caplog.text and "the gated Q/DQ file" in caplog.text
    f = load_bundle(bundle_dir).file("detector.onnx")
    key = EngineKey(file_sha256(f), "8.5.2.2", "Orin", "int8")
    assert load_cached_engine(engine_dir(tmp_path / "engines", f, key), key) is None  # never in the shared cache
    assert not list((tmp_path / "work" / "legacy-int8" / "engines").glob("*/engine.plan"))  # the trial is gone too


def test_tensorrt_10_builds_from_qdq_and_fp32_networks_are_left_alone(int8_bundle, tmp_path, monkeypatch):
    bundle_dir, fp32, feeds = int8_bundle

    def build(*a):
        raise AssertionError("no legacy build expected")

    fake_tensorrt(monkeypatch, "10.3.0")
    assert legacy_int8_engines(bundle_dir, fp32, feeds, tmp_path / "work", tmp_path / "engines", build) == {}
    fake_tensorrt(monkeypatch, "8.5.2.2")
    assert legacy_int8_engines(bundle_dir, {}, feeds, tmp_path / "work", tmp_path / "engines", build) == {}  # no FP32 ONNX


@pytest.mark.parametrize("target,called", [("tensorrt", True), ("onnx", False)])
def test_the_chain_calibrates_legacy_engines_for_target_tensorrt_only(tiny_export, monkeypatch, target, called):
    from vsdmot.export import chain

    seen = []
    monkeypatch.setattr(chain, "legacy_int8_engines", lambda *a: seen.append(a[:4]) or {})
    out, sources = tiny_export(target)
    assert bool(seen) is called
    if called:
        (staged, fp32, net_feeds, work), = seen  # the sealed staging bundle, before publishing
        assert staged == chain.staging_dir(out) and fp32["detector"].name == "detector.sim.onnx"
        assert net_feeds["detector"] is sources.feeds["detector"]  # the feeds the INT8 ONNX was calibrated on


def test_unkeyed_feeds_name_their_content_in_the_calibration_stamp(int8_bundle, tmp_path, monkeypatch):
    """Recorded tracker feeds are a plain list: the cache stamp's calibration id was 'n=<count>', so an
    entropy cache calibrated on other feeds of the same count (the reference detector's input changed,
    the tracker ONNX did not) passed the stamp and was reused."""
    import numpy as np

    bundle_dir, fp32, feeds = int8_bundle
    ids = []

    def build(onnx, net_feeds, cache, calib_id):
        ids.append(calib_id)
        return b"engine", CacheStamp("8.5.2.2", "Orin", file_sha256(onnx), calib_id)

    fake_tensorrt(monkeypatch, "8.5.2.2")
    recorded = [dict(feeds["detector"][i]) for i in range(4)]
    other = [{k: np.ascontiguousarray(v[..., ::-1]) for k, v in f.items()} for f in recorded]  # same count, other values
    for f in (recorded, other, [dict(f) for f in recorded]):
        legacy_int8_engines(bundle_dir, fp32, {"detector": f}, tmp_path / "work", tmp_path / "engines", build, as_gated)
    assert ids[0] != ids[1] and ids[0] == ids[2]


def test_a_failed_legacy_build_publishes_nothing(tiny_export, tmp_path, monkeypatch):
    from vsdmot.export import chain
    from vsdmot.runtime.errors import DeviceError

    def fail(*a):
        raise DeviceError("TensorRT failed to build a legacy INT8 engine")

    monkeypatch.setattr(chain, "legacy_int8_engines", fail)
    with pytest.raises(DeviceError):
        tiny_export("tensorrt")
    assert not (tmp_path / "int8").exists() and not chain.staging_dir(tmp_path / "int8").exists()


def test_through_the_chain_the_engine_is_found_for_the_published_file(tiny_export, tmp_path, monkeypatch):
    """Built on the staged bundle, looked up for the published one: the key must survive publishing."""
    from vsdmot.calibration import trt_calibrator

    fake_tensorrt(monkeypatch, "8.5.2.2")
    monkeypatch.setenv("VSDMOT_ENGINE_CACHE", str(tmp_path / "mine"))  # the exporting user's: --engine-cache wins
    monkeypatch.setattr(trt_calibrator, "build_legacy_int8_engine",
                        lambda onnx, feeds, cache, calib_id: (b"legacy", CacheStamp("8.5.2.2", "Orin", "x", calib_id)))
    monkeypatch.setattr(legacy_trt, "_tensorrt_runner", as_gated)
    out, _ = tiny_export("tensorrt", engine_cache=str(tmp_path / "engines"))  # the service's cache
    f = load_bundle(out).file("detector.onnx")
    key = EngineKey(file_sha256(f), "8.5.2.2", "Orin", "int8")
    assert load_cached_engine(engine_dir(tmp_path / "engines", f, key), key) == b"legacy"
