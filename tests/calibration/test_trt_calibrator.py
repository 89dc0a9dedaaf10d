"""Legacy INT8 calibration cache: stamped with TensorRT version, GPU and model hash; stale ones refused."""

from __future__ import annotations

import pytest

from vsdmot.calibration.trt_calibrator import CacheStamp, check_cache, read_cache_or_none, stamp_path, write_cache
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


@pytest.mark.gpu
def test_entropy_calibrator_builds_an_engine(tmp_path):
    try:
        import pycuda.autoinit  # noqa: F401
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or pycuda failing without libcuda
        pytest.skip(f"needs TensorRT (< 10.1 for the legacy path) and a CUDA GPU with pycuda: {e}")
    pytest.skip("run on a Jetson: vsdmot-export --target tensorrt (docs/export.md, legacy path)")
