"""One contract over every backend that installs here (onnxruntime, torch); TensorRT's cache logic
is tested without TensorRT, and its engine path is skipped (no GPU here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from vsdmot.runtime import backends as B
from vsdmot.runtime.errors import DeviceError
from vsdmot.runtime.logs import log_once

torch = pytest.importorskip("torch")


class Tiny(torch.nn.Module):
    """Two named inputs, two outputs: y = conv(image) pooled + bias, s = 2 * w."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, image, w):
        return self.conv(image).mean(dim=(2, 3)), w * 2.0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    args = (torch.zeros(1, 3, 8, 8), torch.zeros(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter gives opset 17
        torch.onnx.export(Tiny(), args, str(path), input_names=["image", "w"], output_names=["y", "s"],
                          opset_version=17, dynamo=False)
    return path


def _open(kind, path):
    if kind == "tensorrt":
        usable, reason = B.tensorrt_status()
        if not usable:
            pytest.skip(f"gpu: {reason}")
    return B.open_backend(kind, path, module=Tiny() if kind == "torch" else None)


KINDS = ["onnxruntime", "torch", pytest.param("tensorrt", marks=pytest.mark.gpu)]
FEED = {"image": np.random.default_rng(0).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32),
        "w": np.full((1, 1), 0.25, np.float32)}


@pytest.mark.parametrize("kind", KINDS)
def test_contract_specs_and_outputs(kind, tiny_onnx):
    be = _open(kind, tiny_onnx)
    assert isinstance(be, B.Backend)
    assert list(be.inputs) == ["image", "w"] and list(be.outputs) == ["y", "s"]
    assert be.inputs["image"].shape == (1, 3, 8, 8) and be.inputs["image"].dtype == "float32"
    out = be.infer(FEED)
    assert isinstance(out, dict) and list(out) == ["y", "s"]
    assert out["y"].shape == (1, 4) and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["s"], [[0.5]])
    be.close()


@pytest.mark.parametrize("kind", KINDS)
def test_contract_agrees_with_onnxruntime(kind, tiny_onnx):
    ref = B.open_backend("onnxruntime", tiny_onnx).infer(FEED)
    got = _open(kind, tiny_onnx).infer(FEED)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-3)


BAD_FEEDS = [  # (feed change, words the ValueError must contain)
    ({"image": np.zeros((1, 3, 9, 8), np.float32)}, ["'image'", "(1, 3, 8, 8)", "(1, 3, 9, 8)"]),
    ({"image": np.zeros((1, 3, 8, 8), np.float64)}, ["'image'", "float32", "float64"]),
    ({"image": np.zeros((1, 3, 8), np.float32)}, ["'image'", "(1, 3, 8, 8)", "(1, 3, 8)"]),  # a rank short: a
    ({"image": np.zeros((1, 3, 8, 8, 1), np.float32)}, ["'image'", "(1, 3, 8, 8, 1)"]),  # prefix compare passed it
    ({"extra": np.zeros(1, np.float32)}, ["expected inputs", "extra"]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change,words", BAD_FEEDS)
def test_contract_bad_feed_names_input(kind, change, words, tiny_onnx):
    be = _open(kind, tiny_onnx)
    with pytest.raises(ValueError) as e:
        be.infer({**FEED, **change})
    for word in words:
        assert word in str(e.value)


def test_missing_feed_input_is_named(tiny_onnx):
    with pytest.raises(ValueError, match="expected inputs"):
        B.open_backend("onnxruntime", tiny_onnx).infer({"image": FEED["image"]})


def test_onnxruntime_leaves_its_tensorrt_provider_out_unless_asked(tiny_onnx, monkeypatch):
    """Jetson's onnxruntime-gpu lists TensorRT first: ORT's TensorRT provider would rebuild engines
    at every start (minutes); --backend tensorrt is the cached path. CUDA, then CPU, by default."""
    import onnxruntime as ort

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    asked = []

    class Session(ort.InferenceSession):
        def __init__(self, path, opts, providers):
            asked.append(providers)
            super().__init__(path, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    B.OnnxRuntimeBackend(tiny_onnx)
    B.OnnxRuntimeBackend(tiny_onnx, providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"],
                     ["TensorrtExecutionProvider", "CPUExecutionProvider"]]


def test_unknown_kind_and_missing_file(tiny_onnx, tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        B.open_backend("openvino", tiny_onnx)
    with pytest.raises(ValueError, match="no.*found none|found none"):
        B.open_backend("onnxruntime", tmp_path / "nope.onnx")


def test_auto_says_what_it_chose_once(tiny_onnx, caplog):
    log_once.cache_clear()
    with caplog.at_level("INFO", logger=B.log.name):
        for _ in range(3):  # a pipeline's three networks
            B.open_backend("auto", tiny_onnx).close()
    assert sum("backend auto ->" in r.getMessage() for r in caplog.records) == 1


# ---- TensorRT without TensorRT ---------------------------------------------------------------

KEY = B.EngineKey("ab" * 32, "10.3.0", "Orin", "fp16")


@pytest.mark.parametrize("field", ["onnx_sha256", "tensorrt", "gpu", "precision"])
def test_engine_key_changes_with_every_field(field):
    other = dataclasses.replace(KEY, **{field: "x"})
    assert other.digest() != KEY.digest() and len(KEY.digest()) == 16
    assert B.EngineKey(*dataclasses.astuple(KEY)).digest() == KEY.digest()  # stable


def test_engine_cache_layout(tmp_path, tiny_onnx):
    folder = B.engine_dir(tmp_path, tiny_onnx, KEY)
    assert folder == tmp_path / f"tiny-fp16-{KEY.digest()}"
    B.store_engine(folder, KEY, b"PLAN")
    assert sorted(p.name for p in folder.iterdir()) == ["engine.plan", "stamp.json"]
    stamp = json.loads((folder / "stamp.json").read_text())
    assert stamp["gpu"] == "Orin" and stamp["tensorrt"] == "10.3.0" and len(stamp["engine_sha256"]) == 64
    assert B.load_cached_engine(folder, KEY) == b"PLAN"
    assert B.load_cached_engine(tmp_path / "absent", KEY) is None


@pytest.mark.parametrize("field,value", [("tensorrt", "8.5.2"), ("gpu", "Xavier"), ("precision", "int8"),
                                         ("onnx_sha256", "cd" * 32)])
def test_mismatched_cached_engine_is_refused(tmp_path, field, value):
    B.store_engine(tmp_path, dataclasses.replace(KEY, **{field: value}), b"PLAN")
    with pytest.raises(DeviceError, match=f"built for {field}=.*refusing"):
        B.load_cached_engine(tmp_path, KEY)


def test_altered_or_unstamped_engine_is_refused(tmp_path):
    B.store_engine(tmp_path, KEY, b"PLAN")
    (tmp_path / "engine.plan").write_bytes(b"PLA")
    with pytest.raises(DeviceError, match="sha256"):
        B.load_cached_engine(tmp_path, KEY)
    (tmp_path / "stamp.json").unlink()
    with pytest.raises(DeviceError, match="stamp"):
        B.load_cached_engine(tmp_path, KEY)


def _build_once_in(folder, marker, out, seconds):
    """A process that asks the cache for KEY's engine; its build records itself in `marker`."""
    def build():
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(seconds)  # long enough for the other process to arrive while this one builds
        return f"PLAN {os.getpid()}".encode()
    Path(out).write_bytes(B.cached_or_built(folder, KEY, build, "tiny.onnx"))


def test_two_processes_build_an_engine_once(tmp_path):
    """Two services starting together: one builds, the other waits and loads that engine (before
    the lock both built, and their plan and stamp writes could interleave into a refused cache)."""
    ctx = multiprocessing.get_context("fork")
    folder, marker = tmp_path / "engines" / "tiny-fp16-x", tmp_path / "builds"
    procs = [ctx.Process(target=_build_once_in, args=(folder, marker, tmp_path / f"out{i}", 0.5)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    builders = marker.read_text().split()
    assert len(builders) == 1
    plan = f"PLAN {builders[0]}".encode()
    assert (tmp_path / "out0").read_bytes() == (tmp_path / "out1").read_bytes() == plan
    assert B.load_cached_engine(folder, KEY) == plan
    assert sorted(p.name for p in folder.iterdir()) == ["engine.plan", "stamp.json"]  # no temp files left


def test_a_stale_cached_engine_is_rebuilt(tmp_path, caplog):
    B.store_engine(tmp_path / "e", dataclasses.replace(KEY, tensorrt="8.5.2"), b"OLD")
    with caplog.at_level("WARNING"):
        assert B.cached_or_built(tmp_path / "e", KEY, lambda: b"NEW", "tiny.onnx") == b"NEW"
    assert "built for tensorrt='8.5.2'" in caplog.text and "rebuilding" in caplog.text
    assert B.cached_or_built(tmp_path / "e", KEY, lambda: pytest.fail("rebuilt a valid engine"), "tiny.onnx") == b"NEW"


def test_default_engine_cache_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VSDMOT_ENGINE_CACHE", str(tmp_path))
    assert B.default_engine_cache() == tmp_path
    monkeypatch.delenv("VSDMOT_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert B.default_engine_cache() == tmp_path / "xdg" / "vsdmot" / "engines"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_clear_device_error(tiny_onnx):
    with pytest.raises(DeviceError, match="TensorRT is not installed.*onnxruntime"):
        B.open_backend("tensorrt", tiny_onnx)
    usable, reason = B.tensorrt_status()
    assert not usable and "TensorRT" in reason
    assert isinstance(B.open_backend("auto", tiny_onnx), B.OnnxRuntimeBackend)


@pytest.mark.gpu
def test_tensorrt_engine_is_cached_and_reused(tiny_onnx, tmp_path):
    usable, reason = B.tensorrt_status()
    if not usable:
        pytest.skip(f"gpu: {reason}")
    first = B.TensorRTBackend(tiny_onnx, "fp32", cache_dir=tmp_path)
    folder = B.engine_dir(tmp_path, tiny_onnx, first.key)
    mtime = (folder / "engine.plan").stat().st_mtime
    second = B.TensorRTBackend(tiny_onnx, "fp32", cache_dir=tmp_path)
    assert (folder / "engine.plan").stat().st_mtime == mtime  # loaded, not rebuilt
    np.testing.assert_allclose(second.infer(FEED)["s"], [[0.5]])


@pytest.mark.parametrize("bundle,asked,engine", [("int8", "auto", "int8"), ("fp32", "auto", "fp16"),
                                                 ("fp16", "auto", "fp16"), ("int8", "fp16", "fp16"),
                                                 ("fp32", "fp32", "fp32")])
def test_engine_precision_follows_the_bundle_unless_asked(bundle, asked, engine):
    assert B.engine_precision(bundle, asked) == engine
