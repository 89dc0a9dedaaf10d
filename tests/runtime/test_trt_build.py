"""TensorRTBackend._build against a stand-in of the TensorRT Python API (no GPU here): which
builder flags an engine gets. TensorRT 8.x refuses a Q/DQ network built without BuilderFlag.INT8
("Int8 precision has been set for a layer or layer output, but int8 is not configured in the
builder"), so an INT8 bundle must get the flag whatever --precision says."""

from __future__ import annotations

import types
from enum import Enum
from pathlib import Path

import pytest

from vsdmot.runtime import backends as B


class LayerType(Enum):
    CONVOLUTION, QUANTIZE, DEQUANTIZE = range(3)


class BuilderFlag(Enum):
    FP16, INT8 = range(2)


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
    """A `tensorrt` module with just what _build calls; `built` records the config used."""
    built = {}

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
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
            return True

    trt = types.SimpleNamespace(
        __version__=version, Builder=Builder, OnnxParser=OnnxParser, LayerType=LayerType, BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
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
