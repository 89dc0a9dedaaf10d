"""Legacy TensorRT INT8 calibration (TensorRT < 10.1: JetPack 6.0's 8.6) over the same feeds, with a stamped cache.

TensorRT 10.1 deprecated implicit INT8 calibrators in favour of explicit Q/DQ ONNX (what
`vsdmot-export --int8` writes). An older TensorRT (JetPack 6.0's 8.6) can still want the legacy path: an
`IInt8EntropyCalibrator2` that pulls the calibration feeds (calibration/feeds.py) onto the GPU
and builds an implicit-INT8 engine from the FP32 ONNX.

A calibration cache is only valid for the TensorRT version, GPU and model (and calibration data)
it was computed for. The cache is written with a stamp beside it (`<cache>.stamp.json`: TensorRT
version, GPU name, model sha256, calibration id, the cache's own sha256), and a cache whose
stamp differs in any field is refused: the calibrator recalibrates instead of silently reusing
ranges from another model or device. The stamping is plain Python and tested here; the
calibrator class needs TensorRT and a CUDA device (imported lazily, tests skip with the reason).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vsdmot.runtime.bundle import read_stamped
from vsdmot.runtime.errors import DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStamp:
    """What a calibration cache is valid for."""

    tensorrt: str  # tensorrt.__version__
    gpu: str  # the CUDA device (runtime.cuda.cuda_device: name, compute capability, SMs, driver)
    model_sha256: str  # sha256 of the FP32 ONNX the engine is built from
    calib_id: str  # the calibration set's identity (its manifest sha256s), "" when unknown


def stamp_path(cache: str | os.PathLike) -> Path:
    return Path(str(cache) + ".stamp.json")


def write_cache(cache: str | os.PathLike, stamp: CacheStamp, data: bytes) -> Path:
    """Write the cache bytes and their stamp (atomically, stamp last)."""
    cache = Path(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, cache)
    body = {**asdict(stamp), "cache_sha256": hashlib.sha256(bytes(data)).hexdigest()}
    tmp = stamp_path(cache).with_name(stamp_path(cache).name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, stamp_path(cache))  # a cut-short stamp would refuse a good cache, never accept a bad one
    return cache


def check_cache(cache: str | os.PathLike, stamp: CacheStamp) -> bytes | None:
    """The cache bytes when valid for `stamp`; None when absent; DeviceError saying what differs."""
    cache = Path(cache)
    return read_stamped(cache, stamp_path(cache), asdict(stamp), "cache_sha256", "INT8 calibration cache")


def read_cache_or_none(cache: str | os.PathLike, stamp: CacheStamp) -> bytes | None:
    """What the calibrator hands TensorRT: a valid cache, or None (recalibrate) with a warning."""
    try:
        return check_cache(cache, stamp)
    except DeviceError as e:
        log.warning("%s; recalibrating", e)
        return None


def make_entropy_calibrator(feeds: Sequence[Mapping[str, np.ndarray]], cache: str | os.PathLike, stamp: CacheStamp):
    """A `tensorrt.IInt8EntropyCalibrator2` over `feeds` (batch 1), its cache stamped with `stamp`.
    Device buffers through runtime.cuda (cuda-python or pycuda, whichever the device has; it was
    pycuda only); each input keeps its feed's dtype. `close()` frees them."""
    import tensorrt as trt

    from vsdmot.runtime.cuda import _CudaRuntime

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.i, self.cuda = 0, _CudaRuntime()
            self.buffers = {k: self.cuda.alloc(np.ascontiguousarray(v).nbytes) for k, v in feeds[0].items()}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            if self.i >= len(feeds):
                return None
            feed, self.i = feeds[self.i], self.i + 1
            host = {k: np.ascontiguousarray(feed[k]) for k in names}  # alive until the copies finish
            for k in names:
                self.cuda.copy_in(self.buffers[k], host[k])
            self.cuda.sync()
            return [int(self.buffers[k]) for k in names]

        def read_calibration_cache(self):
            return read_cache_or_none(cache, stamp)

        def write_calibration_cache(self, data) -> None:
            write_cache(cache, stamp, bytes(data))

        def close(self) -> None:
            for ptr in self.buffers.values():
                self.cuda.free(ptr)
            self.buffers = {}
            self.cuda.close()

    return EntropyCalibrator()


def build_legacy_int8_engine(onnx_path: str | os.PathLike, feeds: Sequence[Mapping[str, np.ndarray]],
                             cache: str | os.PathLike, calib_id: str = "",
                             workspace_mb: int = 1024) -> tuple[bytes, CacheStamp]:
    """(serialized implicit-INT8 engine, the stamp its calibration cache carries) from an FP32 ONNX
    (TensorRT 8.5-10.0), calibrated on `feeds`; a valid stamped `cache` is reused instead."""
    import tensorrt as trt

    from vsdmot.runtime.cuda import cuda_device
    from vsdmot.runtime.bundle import file_sha256

    stamp = CacheStamp(trt.__version__, cuda_device(), file_sha256(onnx_path), calib_id)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeviceError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)  # layers without an INT8 kernel (or slower in INT8) run FP16, not FP32,
    calibrator = make_entropy_calibrator(feeds, cache, stamp)  # held here: TensorRT keeps no Python
    config.int8_calibrator = calibrator  # reference, and a collected calibrator crashes the build
    try:
        engine = builder.build_serialized_network(network, config)
    finally:
        calibrator.close()  # its device buffers
    if engine is None:
        raise DeviceError(f"TensorRT failed to build a legacy INT8 engine for {onnx_path}")
    return bytes(engine), stamp
