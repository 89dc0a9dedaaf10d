"""TensorRTBackend._build against a stand-in of the TensorRT Python API (no GPU here): which
builder flags an engine gets. TensorRT 8.x refuses a Q/DQ network built without BuilderFlag.INT8
("Int8 precision has been set for a layer or layer output, but int8 is not configured in the
builder"), so an INT8 bundle must get the flag whatever --precision says. TensorRT 11 removed those
flags (strong typing only): FP16 then comes from rewriting the ONNX with ModelOpt AutoCast."""

from __future__ import annotations

import sys
import types
from enum import Enum
from pathlib import Path

import pytest

from vsdmot.runtime import backends as B
from vsdmot.runtime import engine_cache
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


# ---- CUDA resources and failure paths, against stand-ins of cuda-python and pycuda --------------

DEVICE = "Orin (sm_87, 8 SMs, driver 12020)"


@pytest.fixture
def cudart(monkeypatch):
    """cuda-python's runtime as far as _CudaRuntime uses it; returns the list of streams destroyed
    and buffers freed."""
    released: list = []
    rt = types.SimpleNamespace(
        cudaStreamCreate=lambda: (0, 7), cudaStreamDestroy=lambda s: released.append(("stream", s)) or (0,),
        cudaGetDeviceProperties=lambda i: (0, types.SimpleNamespace(name=b"Orin\0", major=8, minor=7,
                                                                      multiProcessorCount=8)),
        cudaDriverGetVersion=lambda: (0, 12020), cudaMalloc=lambda n: (0, 4096),
        cudaFree=lambda p: released.append(("buffer", p)) or (0,))
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return released


def _pycuda_package(root: Path, autoinit: str = "") -> Path:
    """An importable `pycuda` under `root`: driver as far as device() reads it; `autoinit` its body."""
    (root / "pycuda").mkdir(parents=True)
    (root / "pycuda" / "__init__.py").write_text("class Error(Exception):\n    pass\n")  # as pycuda's: not RuntimeError
    (root / "pycuda" / "autoinit.py").write_text(autoinit)
    (root / "pycuda" / "driver.py").write_text(
        "import types\n"
        "device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT=16)\n"
        "class Device:\n"
        "    def __init__(self, i): pass\n"
        "    def name(self): return 'Orin'\n"
        "    def compute_capability(self): return (8, 7)\n"
        "    def get_attribute(self, a): return 8 if a == 16 else None\n"
        "def get_driver_version(): return 12020\n")
    return root


PYCUDA = ("pycuda", "pycuda.autoinit", "pycuda.driver")


@pytest.fixture
def without_cuda_python(monkeypatch):
    """Only pycuda importable (the stand-in a test puts on sys.path); its modules are dropped after,
    so a later test does not find a stand-in GPU."""
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: that import raises ImportError
    for name in PYCUDA:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in PYCUDA:
        sys.modules.pop(name, None)


def test_both_cuda_bindings_name_the_device_alike(cudart, tmp_path, monkeypatch, request):
    """Engines are keyed by this text; the legacy calibrator reaches it through pycuda and a run may
    have cuda-python, so they must agree (or the legacy engine is never found)."""
    assert B.cuda_device() == DEVICE
    request.getfixturevalue("without_cuda_python")
    monkeypatch.syspath_prepend(str(_pycuda_package(tmp_path)))
    assert B.cuda_device() == DEVICE and cudart == []  # reading the device created no stream


def test_a_pycuda_init_failure_falls_back_to_onnxruntime(tmp_path, monkeypatch, without_cuda_python):
    """pycuda's errors are not RuntimeError: cuInit failing (a service user without the GPU's device
    nodes) crashed `--backend auto` instead of falling back."""
    monkeypatch.syspath_prepend(str(_pycuda_package(tmp_path, "from pycuda import Error\n"
                                                              "raise Error('cuInit failed: unknown error')\n")))
    trt, _ = fake_trt(FLOAT)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    usable, reason = B.tensorrt_status()
    assert not usable and "CUDA did not start" in reason and "cuInit failed" in reason


class _Engine:
    num_io_tensors = 0

    def create_execution_context(self):
        return object()


def _runtime_reading(plans: dict):
    """A trt.Runtime whose deserialize_cuda_engine gives an engine only for the plans marked True."""
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            plans.setdefault("read", []).append(bytes(data))
            return _Engine() if plans.get(bytes(data)) else None
    return Runtime


def _trt_with_runtime(plans: dict):
    trt, built = fake_trt(FLOAT)
    trt.Runtime = _runtime_reading(plans)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    return trt, built


def test_a_cached_plan_tensorrt_cannot_read_is_rebuilt_once(cudart, tmp_path, monkeypatch):
    """A cache copied from another board (or a driver update) holds a plan this TensorRT returns None
    for: it is discarded and built again, instead of every start failing until someone deletes it."""
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    plans = {b"PLAN": True}
    trt, built = _trt_with_runtime(plans)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    key = B.EngineKey(B.file_sha256(onnx), trt.__version__, DEVICE, "fp32")
    B.store_engine(B.engine_dir(tmp_path / "cache", onnx, key), key, b"FOREIGN")
    be = B.TensorRTBackend(onnx, "fp32", cache_dir=tmp_path / "cache")
    assert plans["read"] == [b"FOREIGN", b"PLAN"] and be.key == key
    assert B.load_cached_engine(B.engine_dir(tmp_path / "cache", onnx, key), key) == b"PLAN"
    be.close()
    assert cudart == [("stream", 7)]


def test_a_failed_start_releases_the_stream(cudart, tmp_path, monkeypatch):
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    plans: dict = {}  # nothing deserialises, not even a fresh build
    trt, _ = _trt_with_runtime(plans)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(B.DeviceError, match="could not deserialise the engine it built"):
        B.TensorRTBackend(onnx, "fp32", cache_dir=tmp_path)
    assert plans["read"] == [b"PLAN"]  # a fresh build that does not load is not built again (minutes on a device)
    assert cudart == [("stream", 7)]


def test_an_engine_cache_the_user_cannot_write_is_a_device_error(cudart, tmp_path, monkeypatch):
    """A root-made cache: a new key (a JetPack driver update) needs a new folder there; PermissionError
    is no DeviceError, so `--backend auto` did not fall back and the message said nothing useful."""
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    trt, _ = _trt_with_runtime({b"PLAN": True})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "cache"))

    monkeypatch.setattr(engine_cache, "store_engine", refused)
    with pytest.raises(B.DeviceError, match="engine cache .*Permission denied.*sudo chown -R vsdmot:"):
        B.TensorRTBackend(onnx, "fp32", cache_dir=tmp_path / "cache")
    assert cudart == [("stream", 7)]  # released




def test_auto_runs_a_network_on_onnxruntime_when_its_engine_does_not_open(cudart, tmp_path, monkeypatch, caplog):
    """TensorRT imports and sees the GPU, but this engine does not open (here: nothing deserialises):
    `--backend auto` keeps the camera running on onnxruntime and says why, instead of failing the start."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "detector.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    trt, _ = _trt_with_runtime({})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with caplog.at_level("WARNING", logger=B.log.name):
        be = B.open_backend("auto", path, cache_dir=tmp_path / "cache")
    assert isinstance(be, B.OnnxRuntimeBackend) and "running it on onnxruntime" in caplog.text
    assert be.infer({"x": np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)})["y"].tolist() == [[0.0, 2.0, 0.0, 4.0]]
    assert cudart == [("stream", 7)]  # the TensorRT attempt released its stream
    with pytest.raises(B.DeviceError, match="could not deserialise"):  # asked for by name: no fallback
        B.open_backend("tensorrt", path, cache_dir=tmp_path / "cache")


def test_a_full_cache_disk_is_a_device_error_but_the_build_s_own_error_is_not(cudart, tmp_path, monkeypatch):
    import errno

    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    trt, _ = _trt_with_runtime({b"PLAN": True})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache"))

    with monkeypatch.context() as m, pytest.raises(B.DeviceError, match="No space left on device") as e:
        m.setattr(engine_cache, "store_engine", full)
        B.TensorRTBackend(onnx, "fp32", cache_dir=tmp_path / "cache")
    assert "chown" not in str(e.value)  # not a permission problem

    def unreadable(self):
        raise PermissionError(13, "Permission denied", str(onnx))

    monkeypatch.setattr(B.TensorRTBackend, "_onnx_bytes", unreadable)
    with pytest.raises(PermissionError):  # the ONNX file's, not the cache's: not "chown the cache"
        B.TensorRTBackend(onnx, "fp32", cache_dir=tmp_path / "cache2")
