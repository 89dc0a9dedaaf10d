"""CUDA for the TensorRT backend: device memory and one stream through cuda-python (cudart) or
pycuda, whichever imports, and the device text engines are keyed by (`cuda_device`). Imported
lazily: nothing here loads CUDA until a TensorRT backend or `tensorrt_status` asks."""

from __future__ import annotations

import logging

import numpy as np

from .errors import DeviceError

log = logging.getLogger(__name__)


class _CudaRuntime:
    """Device memory and one stream through cuda-python (cudart) or pycuda, whichever imports.
    `stream=False`: only to read the device (`device()`), nothing to release."""

    def __init__(self, stream: bool = True):
        self._cudart = self._pycuda = self.stream = None
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
        except ImportError:
            self._pycuda = _import_pycuda()
            try:
                self.stream = self._pycuda.Stream() if stream else None
            except Exception as e:  # noqa: BLE001  pycuda's errors are not RuntimeError (see _import_pycuda)
                raise DeviceError(f"CUDA stream (pycuda): {type(e).__name__}: {e}") from None
            return
        self._cudart = cudart
        self.stream = self._check(cudart.cudaStreamCreate()) if stream else None

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise DeviceError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> str:
        """What an engine is specific to, e.g. "Orin (sm_87, 8 SMs, driver 12020)": every Orin module
        reports the name "Orin", and a JetPack update changes the driver under the same TensorRT.
        The same text through either binding, so engines built under one load under the other."""
        if self._pycuda:
            dev, attr = self._pycuda.Device(0), self._pycuda.device_attribute
            name, (major, minor) = dev.name(), dev.compute_capability()
            sms, driver = dev.get_attribute(attr.MULTIPROCESSOR_COUNT), self._pycuda.get_driver_version()
        else:
            props = self._check(self._cudart.cudaGetDeviceProperties(0))
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            major, minor, sms = props.major, props.minor, props.multiProcessorCount
            driver = self._check(self._cudart.cudaDriverGetVersion())
        return f"{name.rstrip(chr(0))} (sm_{major}{minor}, {sms} SMs, driver {int(driver)})"

    def alloc(self, nbytes: int) -> int:
        if self._pycuda:
            mem = self._pycuda.mem_alloc(max(nbytes, 1))
            self._keep = [*getattr(self, "_keep", []), mem]
            return int(mem)
        return int(self._check(self._cudart.cudaMalloc(max(nbytes, 1))))

    def copy_in(self, dptr: int, host: np.ndarray) -> None:
        if self._pycuda:
            self._pycuda.memcpy_htod_async(dptr, host, self.stream)
        else:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self._cudart.cudaMemcpyAsync(dptr, host.ctypes.data, host.nbytes, kind, self.stream))

    def copy_out(self, host: np.ndarray, dptr: int) -> None:
        if self._pycuda:
            self._pycuda.memcpy_dtoh_async(host, dptr, self.stream)
        else:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self._cudart.cudaMemcpyAsync(host.ctypes.data, dptr, host.nbytes, kind, self.stream))

    def handle(self) -> int:
        return self.stream.handle if self._pycuda else int(self.stream)

    def sync(self) -> None:
        if self._pycuda:
            self.stream.synchronize()
        else:
            self._check(self._cudart.cudaStreamSynchronize(self.stream))

    def free(self, dptr: int) -> None:
        if self._cudart:
            err = self._cudart.cudaFree(dptr)[0]
            if int(err) != 0:
                log.warning("CUDA: freeing a TensorRT buffer failed (%s)", err)
        else:
            self._keep = []  # pycuda frees DeviceAllocations when released

    def close(self) -> None:
        """Release the stream (buffers go through `free`)."""
        if self._cudart and self.stream is not None:
            self._cudart.cudaStreamDestroy(self.stream)
        self.stream = None  # pycuda's Stream is destroyed when released


def _import_pycuda():
    """pycuda.driver with a context on device 0. pycuda's own errors (cuInit failing for a user
    without access to the GPU's device nodes) do not derive from RuntimeError: each is a
    DeviceError here, so `--backend auto` falls back to onnxruntime instead of crashing."""
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context on device 0)
        import pycuda.driver as drv
    except ImportError as e:
        raise DeviceError(f"TensorRT needs cuda-python or pycuda for its buffers: {e}") from None
    except Exception as e:  # noqa: BLE001  pycuda._driver.Error and its subclasses
        raise DeviceError(f"CUDA did not start (pycuda: {type(e).__name__}: {e}); is this user in the "
                          f"video/render groups?") from None
    return drv


def cuda_device() -> str:
    """The CUDA device engines and calibration caches are keyed by (`_CudaRuntime.device`)."""
    return _CudaRuntime(stream=False).device()
