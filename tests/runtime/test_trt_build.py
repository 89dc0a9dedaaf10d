"""TensorRTBackend._build against a stand-in of the TensorRT Python API (no GPU here): which
builder flags an engine gets. TensorRT 8.x refuses a Q/DQ network built without BuilderFlag.INT8
("Int8 precision has been set for a layer or layer output, but int8 is not configured in the
builder"), so an INT8 bundle must get the flag whatever --precision says. TensorRT 11 removed those
flags (strong typing only): FP16 then comes from rewriting the ONNX with ModelOpt AutoCast."""

from __future__ import annotations

import types
from enum import Enum
from pathlib import Path

import pytest

from vsdmot.runtime import backends as B
from vsdmot.runtime.logs import log_once


class LayerType(Enum):
    CONVOLUTION, QUANTIZE, DEQUANTIZE = range(3)


class BuilderFlag(Enum):
    FP16, INT8 = range(2)


class TypedBuilderFlag(Enum):  # TensorRT 11: the precision flags are gone
    DEBUG = 0


class _Network:
    def __init__(self, kinds):
        self.layers = [types.SimpleNamespace(type=k) for k in kinds]
        self.num_layers = len(self.layers)

    def get_layer(self, i):
        return self.layers[i]


class _Config:
    def __init__(self):
        self.flags: set = set()

    def set_memory_pool_limit(self, pool, size):
        pass

    def set_flag(self, flag):
        self.flags.add(flag)


def fake_trt(layer_kinds, version="8.5.2.2"):
    """A `tensorrt` module with just what _build calls; `built` records the network flags, the bytes
    parsed and the config used. From version 11 on it has no weak-typing flags, as TensorRT 11."""
    built = {}
    typed = int(version.split(".")[0]) >= 11

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            built["network_flags"] = flags
            return _Network(layer_kinds)

        def create_builder_config(self):
            return _Config()

        def build_serialized_network(self, network, config):
            built["flags"] = config.flags
            return b"PLAN"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, data):
            built["parsed"] = data
            return True

    creation = types.SimpleNamespace(STRONGLY_TYPED=1) if typed else types.SimpleNamespace(EXPLICIT_BATCH=0,
                                                                                          STRONGLY_TYPED=1)
    trt = types.SimpleNamespace(
        __version__=version, Builder=Builder, OnnxParser=OnnxParser, LayerType=LayerType,
        BuilderFlag=TypedBuilderFlag if typed else BuilderFlag, NetworkDefinitionCreationFlag=creation,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0))
    return trt, built


def _backend(trt, precision: str, path: Path) -> B.TensorRTBackend:
    be = object.__new__(B.TensorRTBackend)  # no CUDA here: only the build step is exercised
    be._trt, be._logger, be.path = trt, None, path
    be.key = B.EngineKey("ab" * 32, trt.__version__, "Orin", precision)
    return be


QDQ = [LayerType.QUANTIZE, LayerType.DEQUANTIZE, LayerType.CONVOLUTION]
FLOAT = [LayerType.CONVOLUTION]


@pytest.mark.parametrize("version", ["8.5.2.2", "10.3.0"])
@pytest.mark.parametrize("layers,precision,flags", [
    (FLOAT, "fp32", set()),
    (FLOAT, "fp16", {BuilderFlag.FP16}),
    (FLOAT, "int8", {BuilderFlag.FP16, BuilderFlag.INT8}),
    (QDQ, "fp32", {BuilderFlag.INT8}),  # an INT8 bundle with the default precision: was built without INT8
    (QDQ, "fp16", {BuilderFlag.FP16, BuilderFlag.INT8}),
    (QDQ, "int8", {BuilderFlag.FP16, BuilderFlag.INT8}),
])
def test_builder_flags(tmp_path, version, layers, precision, flags):
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    trt, built = fake_trt(layers, version)
    assert _backend(trt, precision, onnx)._build(64) == b"PLAN"
    assert built["flags"] == flags
    assert built["parsed"] == b"onnx"
    assert built["network_flags"] == (1 if version.startswith("8.") else 0)  # EXPLICIT_BATCH before 10


class _Converted:
    def SerializeToString(self):
        return b"onnx-fp16"


@pytest.fixture
def autocast(monkeypatch):
    """ModelOpt AutoCast as installed: records how it was called (modelopt is not installed here)."""
    calls = []

    def convert_to_mixed_precision(**kwargs):
        calls.append(kwargs)
        return _Converted()

    monkeypatch.setattr(B, "fp16_autocast", lambda: convert_to_mixed_precision)
    return calls


@pytest.mark.parametrize("layers", [FLOAT, QDQ])
@pytest.mark.parametrize("precision,parsed", [("fp32", b"onnx"), ("fp16", b"onnx-fp16"), ("int8", b"onnx-fp16")])
def test_strongly_typed_build(tmp_path, autocast, layers, precision, parsed):
    """TensorRT 11: no precision flags (they would raise AttributeError), a STRONGLY_TYPED network, and
    the float layers made FP16 in the ONNX itself, inputs and outputs kept float32 for the feeds."""
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    trt, built = fake_trt(layers, "11.0.0")
    assert B.strongly_typed(trt) and B.typed_precision(trt, precision) == precision
    assert _backend(trt, precision, onnx)._build(64) == b"PLAN"
    assert built["flags"] == set() and built["network_flags"] == 1 << 1
    assert built["parsed"] == parsed
    assert autocast == ([] if precision == "fp32" else
                        [{"onnx_path": str(onnx), "low_precision_type": "fp16", "keep_io_types": True}])


def test_strongly_typed_without_autocast_keys_fp32(monkeypatch, caplog):
    """Without AutoCast a TensorRT 11 engine has FP32 float layers: it is keyed fp32 (so installing
    AutoCast later rebuilds it at fp16) and the run says why it is slower than asked."""
    monkeypatch.setattr(B, "fp16_autocast", lambda: None)
    log_once.cache_clear()
    typed, _ = fake_trt(FLOAT, "11.0.0")
    weak, _ = fake_trt(FLOAT, "10.3.0")
    with caplog.at_level("WARNING", logger=B.log.name):
        assert [B.typed_precision(typed, p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp32", "fp32"]
    assert [B.typed_precision(weak, p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("nvidia-modelopt" in m and "fp32 engines" in m for m in warned)
