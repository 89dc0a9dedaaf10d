"""Legacy INT8 calibration cache: stamped with TensorRT version, GPU and model hash; stale ones refused."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from vsdmot.calibration.trt_calibrator import (CacheStamp, build_legacy_int8_engine, check_cache,
                                               read_cache_or_none, stamp_path, write_cache)
from vsdmot.runtime.errors import DeviceError

STAMP = CacheStamp("8.5.2.2", "Orin", "ab" * 32, "calib-1")


def test_valid_cache_round_trips(tmp_path):
    cache = write_cache(tmp_path / "det.calib", STAMP, b"TRT-8502-EntropyCalibration2\n")
    assert check_cache(cache, STAMP) == b"TRT-8502-EntropyCalibration2\n"


def test_absent_cache_is_none(tmp_path):
    assert check_cache(tmp_path / "nope.calib", STAMP) is None


STALE = [
    ("tensorrt", CacheStamp("10.3.0", "Orin", "ab" * 32, "calib-1")),
    ("gpu", CacheStamp("8.5.2.2", "Xavier", "ab" * 32, "calib-1")),
    ("model_sha256", CacheStamp("8.5.2.2", "Orin", "cd" * 32, "calib-1")),
    ("calib_id", CacheStamp("8.5.2.2", "Orin", "ab" * 32, "calib-2")),
]


@pytest.mark.parametrize("field,now", STALE, ids=[s[0] for s in STALE])
def test_stale_cache_is_refused(tmp_path, field, now, caplog):
    cache = write_cache(tmp_path / "det.calib", STAMP, b"cache")
    with pytest.raises(DeviceError, match=f"made for {field}=.*expected.*refusing the stale cache"):
        check_cache(cache, now)
    assert read_cache_or_none(cache, now) is None and "recalibrating" in caplog.text


def test_altered_or_unstamped_cache_is_refused(tmp_path):
    cache = write_cache(tmp_path / "det.calib", STAMP, b"cache")
    cache.write_bytes(b"cachf")
    with pytest.raises(DeviceError, match="altered"):
        check_cache(cache, STAMP)
    stamp_path(cache).unlink()
    with pytest.raises(DeviceError, match="unstamped"):
        check_cache(cache, STAMP)


def _stand_ins(monkeypatch, built: dict) -> None:
    """`tensorrt` 8.5 and `pycuda` as far as build_legacy_int8_engine uses them. The Builder pulls
    every batch from the calibrator and hands it the cache, as TensorRT's does."""

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    class Config:
        def __init__(self):
            self.flags, self.int8_calibrator = set(), None

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            self.flags.add(flag)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            built["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            cal, batches = config.int8_calibrator, []
            if cal.read_calibration_cache() is None:
                while (ptrs := cal.get_batch(["images"])) is not None:
                    batches.append(ptrs)
                cal.write_calibration_cache(b"calibration-table")
            built.update(flags=config.flags, batches=len(batches))
            return b"PLAN"

    trt = types.SimpleNamespace(
        __version__="8.5.2.2", IInt8EntropyCalibrator2=IInt8EntropyCalibrator2,
        Builder=Builder, OnnxParser=lambda network, logger: types.SimpleNamespace(parse=lambda data: True),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0), BuilderFlag=types.SimpleNamespace(INT8="INT8", FP16="FP16"))
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    device = types.SimpleNamespace(name=lambda: "Orin", compute_capability=lambda: (8, 7), get_attribute=lambda a: 8)
    stream = types.SimpleNamespace(synchronize=lambda: built.__setitem__("synced", built.get("synced", 0) + 1),
                                   handle=1)
    driver = types.SimpleNamespace(mem_alloc=lambda nbytes: 4096, memcpy_htod_async=lambda dst, src, s: None,
                                   Stream=lambda: stream, Device=lambda i: device, get_driver_version=lambda: 12020,
                                   device_attribute=types.SimpleNamespace(MULTIPROCESSOR_COUNT=16))
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver
    for name, module in {"tensorrt": trt, "pycuda": pycuda, "pycuda.autoinit": types.ModuleType("pycuda.autoinit"),
                         "pycuda.driver": driver}.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("cuda", "cuda.bindings", "cudart"):  # pycuda, as on JetPack: the legacy calibrator's binding
        monkeypatch.setitem(sys.modules, name, None)


def test_legacy_engine_is_int8_with_fp16_fallback_and_stamps_its_cache(tmp_path, monkeypatch):
    """Implicit INT8 with FP16 allowed (as trtexec --int8 --fp16: a layer TensorRT keeps out of INT8
    runs FP16, not FP32); every feed is calibrated once; the cache is stamped for this model and
    device and reused, not recalibrated, by the next build."""
    built: dict = {}
    _stand_ins(monkeypatch, built)
    onnx = tmp_path / "detector.onnx"
    onnx.write_bytes(b"onnx")
    feeds = [{"images": np.zeros((1, 3, 8, 8), np.float32)} for _ in range(3)]
    cache = tmp_path / "legacy-int8" / "detector.calib"
    plan, stamp = build_legacy_int8_engine(onnx, feeds, cache, calib_id="calib-1")
    assert plan == b"PLAN" and built["flags"] == {"INT8", "FP16"} and built["batches"] == 3
    assert built["network_flags"] == 1  # EXPLICIT_BATCH: TensorRT 8.5 parses ONNX only into explicit-batch networks
    assert (stamp.tensorrt, stamp.gpu, stamp.calib_id) == ("8.5.2.2", "Orin (sm_87, 8 SMs, driver 12020)", "calib-1")
    assert check_cache(cache, stamp) == b"calibration-table"
    build_legacy_int8_engine(onnx, feeds, cache, calib_id="calib-1")
    assert built["batches"] == 0  # the stamped cache was read back


def test_the_legacy_calibrator_runs_on_cuda_python_alone(tmp_path, monkeypatch):
    """JetPack's pinned cuda-python without pycuda: the calibrator imported pycuda.autoinit and
    failed there. Its buffers now go through runtime.cuda, and are freed after the build."""
    built: dict = {}
    _stand_ins(monkeypatch, built)
    calls: list = []
    rt = types.SimpleNamespace(
        cudaStreamCreate=lambda: (0, 7), cudaStreamDestroy=lambda st: calls.append("destroy") or (0,),
        cudaStreamSynchronize=lambda st: calls.append("sync") or (0,),
        cudaGetDeviceProperties=lambda i: (0, types.SimpleNamespace(name=b"Orin\0", major=8, minor=7,
                                                                      multiProcessorCount=8)),
        cudaDriverGetVersion=lambda: (0, 12020), cudaMalloc=lambda n: calls.append(("malloc", n)) or (0, 4096),
        cudaMemcpyAsync=lambda dst, src, n, kind, st: calls.append(("copy", n)) or (0,),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1), cudaFree=lambda ptr: calls.append("free") or (0,))
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt, "pycuda": None,
                         "pycuda.autoinit": None, "pycuda.driver": None}.items():
        monkeypatch.setitem(sys.modules, name, module)
    onnx = tmp_path / "tracker.onnx"
    onnx.write_bytes(b"onnx")
    feeds = [{"images": np.zeros((1, 3, 8, 8), np.float32)} for _ in range(2)]
    plan, stamp = build_legacy_int8_engine(onnx, feeds, tmp_path / "c" / "t.calib")
    assert plan == b"PLAN" and built["batches"] == 2 and stamp.gpu == "Orin (sm_87, 8 SMs, driver 12020)"
    assert calls.count(("copy", 768)) == 2 and calls.count("sync") == 2  # 1x3x8x8 float32 each batch
    assert calls[-2:] == ["free", "destroy"]  # nothing left on the device


def _tiny_conv_onnx(path) -> None:
    """1x3x32x32 -> Conv 3x3 (8 channels) -> Relu: enough for TensorRT to calibrate and build."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["out"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 32, 32])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.gpu
def test_entropy_calibrator_builds_an_engine(tmp_path):
    """On a device with TensorRT < 10.1 (JetPack 6.0) and cuda-python or pycuda: a real calibration and build."""
    try:
        import tensorrt as trt

        from vsdmot.runtime.cuda import cuda_device

        cuda_device()
    except Exception as e:  # ImportError, or CUDA failing without a GPU
        pytest.skip(f"needs TensorRT (< 10.1 for the legacy path) and a CUDA GPU with cuda-python or pycuda: {e}")
    if tuple(int(x) for x in trt.__version__.split(".")[:2]) >= (10, 1):
        pytest.skip(f"TensorRT {trt.__version__} uses the Q/DQ path; the legacy calibrator is for < 10.1")
    onnx = tmp_path / "tiny.onnx"
    _tiny_conv_onnx(onnx)
    rng = np.random.default_rng(1)
    feeds = [{"images": rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    plan, stamp = build_legacy_int8_engine(onnx, feeds, tmp_path / "tiny.calib")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    assert engine is not None and engine.num_io_tensors == 2
    assert check_cache(tmp_path / "tiny.calib", stamp)  # the stamped cache TensorRT wrote
