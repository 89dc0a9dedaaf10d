"""Inference backends behind one typed protocol. Heavy imports happen inside each backend.

Every backend takes a feed `{input name: array}` and returns `{output name: array}`; a feed with
a wrong name, shape or dtype raises ValueError naming the input, what was expected and what came.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .bundle import file_sha256
from .cuda import _CudaRuntime, cuda_device
from .engine_cache import EngineKey, cached_or_built, default_engine_cache, engine_dir  # noqa: F401  (re-exported)
from .engine_cache import load_cached_engine, store_engine  # noqa: F401  (the cache's API, as before the split)
from .errors import DeviceError
from .logs import log_once
from .types import TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int8)": "int8"}


@runtime_checkable
class Backend(Protocol):
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def check_feed(specs: Mapping[str, TensorSpec], feed: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError for a missing, unexpected, mis-shaped or mis-typed input."""
    missing, extra = set(specs) - set(feed), set(feed) - set(specs)
    if missing or extra:
        raise ValueError(f"feed: expected inputs {sorted(specs)}, got {sorted(feed)}")
    for name, spec in specs.items():
        spec.check(np.asarray(feed[name]))


# ONNX Runtime's TensorRT provider (in Jetson's onnxruntime-gpu) builds its engines at every session
# start, minutes each without its own cache options; `--backend tensorrt` builds once and caches.
# So `--backend onnxruntime` means CUDA where installed, else CPU, unless `providers` names it.
NOT_BY_DEFAULT = ("TensorrtExecutionProvider",)


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or the CUDA execution provider where installed (TensorRT: pass it in
    `providers`, or use TensorRTBackend, which caches its engines)."""

    kind = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, providers: list[str] | None = None, threads: int = 0,
                 spin: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0 = ORT's default (all cores)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:  # idle workers sleep: several sessions run one after another each frame
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        default = [p for p in available if p not in NOT_BY_DEFAULT]
        chosen = [p for p in (providers or default) if p in available] or ["CPUExecutionProvider"]
        self.path = Path(onnx_path)
        self._sess = ort.InferenceSession(str(self.path), opts, providers=chosen)
        self.providers = self._sess.get_providers()
        self.inputs = {i.name: _spec(i) for i in self._sess.get_inputs()}
        self.outputs = {o.name: _spec(o) for o in self._sess.get_outputs()}
        log.debug("onnxruntime %s on %s", self.path.name, self.providers)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.inputs, feed)
        values = self._sess.run(list(self.outputs), dict(feed))
        return dict(zip(self.outputs, values))

    def close(self) -> None:
        self._sess = None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorSpec(node.name, shape, _ORT_DTYPES.get(node.type, node.type))


def onnx_io_specs(onnx_path: str | os.PathLike) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """(inputs, outputs) of an ONNX file, read through onnxruntime (a core dependency)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {i.name: _spec(i) for i in sess.get_inputs()}, {o.name: _spec(o) for o in sess.get_outputs()}


class TorchBackend:
    """An `nn.Module` behind the Backend protocol: the reference the exported networks must match.

    The module is called with the inputs in `inputs` order, as CPU tensors; it may return one
    tensor, a tuple in `outputs` order, or a mapping by output name. torch is imported here only.
    """

    kind = "torch"

    def __init__(self, module, inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec],
                 threads: int = 0):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self.module = module.eval()
        self.inputs, self.outputs = dict(inputs), dict(outputs)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.inputs, feed)
        args = [self._torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.inputs]
        with self._torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, Mapping):
            out = [out[n] for n in self.outputs]
        elif not isinstance(out, (tuple, list)):
            out = [out]
        if len(out) != len(self.outputs):
            raise ValueError(f"torch module: expected {len(self.outputs)} outputs {list(self.outputs)}, got {len(out)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self.outputs, out)}

    def close(self) -> None:
        self.module = None


# ---- TensorRT -------------------------------------------------------------------------------
# The engine is built from ONNX on the device (TensorRT 8.6 on JetPack 6.0, 10.x from 6.1) and
# cached under a key of everything that makes an engine non-portable (runtime/engine_cache.py).
# Buffers go through cuda-python when present, else pycuda (runtime/cuda.py). Nothing here
# imports TensorRT at module level.


def engine_precision(bundle_precision: str, asked: str = "auto") -> str:
    """The TensorRT engine precision for a bundle: `asked`, or for "auto" int8 for an INT8 (Q/DQ)
    bundle and fp16 otherwise (FP16 rounding moved the gate's HOTA by 0.01: its control bundle,
    docs/export.md). `vsdmot-export --target tensorrt` prebuilds at the same precision, so a run
    with the default finds those engines."""
    if asked != "auto":
        return asked
    return "int8" if bundle_precision == "int8" else "fp16"


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise DeviceError(f"TensorRT is not installed ({e}); on a Jetson it comes with JetPack, "
                          "elsewhere use --backend onnxruntime") from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "OnnxParser"):
        raise DeviceError(f"TensorRT {getattr(trt, '__version__', '?')} here has no Builder/OnnxParser "
                          "(a lean runtime); it cannot build engines from ONNX: use --backend onnxruntime")
    return trt


def strongly_typed(trt) -> bool:
    """Whether this TensorRT builds strongly typed networks only. TensorRT 11 removed weak typing (the
    precision flags BuilderFlag.FP16/INT8, deprecated since 10.12): a layer runs in the types its
    ONNX tensors have, INT8 between Q/DQ pairs, and FP16 only where the file itself is FP16."""
    return not hasattr(trt.BuilderFlag, "FP16")


def fp16_autocast():
    """ModelOpt's AutoCast (`pip install nvidia-modelopt[onnx]`), NVIDIA's FP32 -> mixed FP16 rewrite of
    an ONNX for strongly typed builds; None when not installed."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        return None
    return convert_to_mixed_precision


def typed_precision(trt, asked: str) -> str:
    """The precision an engine really gets, which is what its cache key records. Weakly typed builds
    (TensorRT < 11) take `asked` as builder flags. Strongly typed ones reach fp16 (and int8's float
    layers) only through AutoCast; without it they are built, keyed and reported as fp32 (the
    bundle's Q/DQ layers still run INT8), and installing it later rebuilds at `asked`."""
    if asked == "fp32" or not strongly_typed(trt) or fp16_autocast() is not None:
        return asked
    log_once(log.name, logging.WARNING, f"TensorRT {trt.__version__} builds strongly typed networks only and has no "
             f"FP16 flag: --precision {asked} needs ModelOpt AutoCast to rewrite the float layers (pip install "
             f"nvidia-modelopt[onnx]); building fp32 engines instead (Q/DQ layers still run INT8)")
    return "fp32"


def _network_flags(trt) -> int:
    """create_network's flags: EXPLICIT_BATCH before TensorRT 10 (implicit otherwise), STRONGLY_TYPED
    where weak typing is gone (TensorRT 11 accepts and ignores it)."""
    flags = trt.NetworkDefinitionCreationFlag
    explicit = getattr(flags, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        return 1 << int(explicit)
    typed = getattr(flags, "STRONGLY_TYPED", None)
    return 1 << int(typed) if strongly_typed(trt) and typed is not None else 0


def _has_qdq(trt, network) -> bool:
    """Whether a parsed network has Q/DQ layers (an explicit-INT8 ONNX, `vsdmot-export --int8`)."""
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


class TensorRTBackend:
    """A TensorRT engine built on this device from ONNX and cached (see EngineKey).

    Uses the named-tensor API (`set_tensor_address` / `execute_async_v3`) that TensorRT 8.5 and
    10.x share. Static shapes only: the bundle's networks are exported with fixed shapes.
    """

    kind = "tensorrt"

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, workspace_mb: int = 1024):
        trt = _import_tensorrt()
        self._trt, self.path, self._cuda = trt, Path(onnx_path), _CudaRuntime()
        try:  # a failure part way releases the stream and the buffers already allocated
            precision = typed_precision(trt, precision)
            self.key = EngineKey(file_sha256(self.path), trt.__version__, self._cuda.device(), precision)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)  # must outlive the engine
            self._engine = self._load_engine(engine_dir(cache_dir or default_engine_cache(), self.path, self.key),
                                             workspace_mb)
            self._context = self._engine.create_execution_context()
            self._bind_buffers()
        except BaseException:
            self.close()
            raise

    def _load_engine(self, folder: Path, workspace_mb: int):
        """The cached engine, else a new one (`cached_or_built`: a cached plan this TensorRT cannot
        deserialise is rebuilt once; a new one that does not deserialise is an error)."""
        engine = cached_or_built(folder, self.key, lambda: self._build(workspace_mb), self.path.name,
                                 self._runtime.deserialize_cuda_engine)
        if engine is None:
            raise DeviceError(f"TensorRT could not deserialise the engine it built for {self.path.name}")
        return engine

    def _build(self, workspace_mb: int) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(self._onnx_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DeviceError(f"TensorRT cannot parse {self.path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        if not strongly_typed(trt):  # else each layer runs in its tensors' types (see _onnx_bytes)
            self._set_precision_flags(config, network)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DeviceError(f"TensorRT failed to build an engine for {self.path.name} ({self.key.precision})")
        return bytes(memoryview(serialized))

    def _set_precision_flags(self, config, network) -> None:
        """Weak typing: the flags say which lower precisions TensorRT may pick per layer."""
        trt = self._trt
        if self.key.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.key.precision == "int8" or _has_qdq(trt, network):
            # explicit Q/DQ in the ONNX carries the scales; TensorRT 8.x refuses a Q/DQ network
            # without this flag, so an INT8 bundle gets it whatever the requested precision
            config.set_flag(trt.BuilderFlag.INT8)

    def _onnx_bytes(self) -> bytes:
        """The file as TensorRT should parse it. Strongly typed at fp16/int8 (typed_precision made sure
        AutoCast imports): float layers rewritten to FP16, inputs and outputs kept float32 (the feeds)."""
        if not strongly_typed(self._trt) or self.key.precision == "fp32":
            return self.path.read_bytes()
        log.info("converting %s's float layers to FP16 (ModelOpt AutoCast) for a strongly typed build", self.path.name)
        model = fp16_autocast()(onnx_path=str(self.path), low_precision_type="fp16", keep_io_types=True)
        return model.SerializeToString()

    def _bind_buffers(self) -> None:
        trt, eng = self._trt, self._engine
        self.inputs, self.outputs, self._host, self._dev = {}, {}, {}, {}
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            shape, dtype = tuple(eng.get_tensor_shape(name)), np.dtype(trt.nptype(eng.get_tensor_dtype(name)))
            if any(d < 0 for d in shape):
                raise DeviceError(f"{self.path.name}: tensor '{name}' has a dynamic shape {shape}; export static shapes")
            spec = TensorSpec(name, shape, dtype.name)
            is_input = eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = spec
            self._host[name] = np.empty(shape, dtype)
            self._dev[name] = self._cuda.alloc(self._host[name].nbytes)
            self._context.set_tensor_address(name, self._dev[name])

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.inputs, feed)
        for name in self.inputs:
            host = self._host[name]
            np.copyto(host, feed[name])
            self._cuda.copy_in(self._dev[name], host)
        if not self._context.execute_async_v3(self._cuda.handle()):
            raise DeviceError(f"TensorRT execution failed for {self.path.name}")
        for name in self.outputs:
            self._cuda.copy_out(self._host[name], self._dev[name])
        self._cuda.sync()
        return {name: self._host[name].copy() for name in self.outputs}

    def close(self) -> None:
        """Buffers, then context, engine and runtime (in that order), then the stream. Idempotent."""
        for ptr in getattr(self, "_dev", {}).values():
            self._cuda.free(ptr)
        self._dev, self._context, self._engine, self._runtime = {}, None, None, None
        self._cuda.close()


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT with a Builder imports and CUDA sees a GPU. Any failure means
    unusable, so `--backend auto` falls back to onnxruntime."""
    try:
        trt = _import_tensorrt()
        name = cuda_device()
    except DeviceError as e:
        return False, str(e)
    except Exception as e:  # noqa: BLE001  a binding's own error types (pycuda's are not RuntimeError)
        return False, f"CUDA: {type(e).__name__}: {e}"
    return True, f"TensorRT {trt.__version__} on {name}"


def open_backend(kind: str, onnx_path: str | os.PathLike, *, threads: int = 0, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, module=None, spin: bool = False) -> Backend:
    """One backend for one network. `auto` = TensorRT when it imports with a GPU, else onnxruntime;
    and onnxruntime, with a warning, when TensorRT is there but its engine does not open (an engine
    cache the user cannot write, a build that fails): a camera keeps running, slower, and says why.

    For `torch`, `module` is the nn.Module the ONNX file was exported from.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f"backend: expected an ONNX file at {onnx_path}, found none")
    if kind == "auto":
        usable, reason = tensorrt_status()
        log_once(log.name, logging.INFO, f"backend auto -> {'tensorrt' if usable else 'onnxruntime'} ({reason})")
        if not usable:
            return OnnxRuntimeBackend(onnx_path, threads=threads, spin=spin)
        try:
            return TensorRTBackend(onnx_path, precision=precision, cache_dir=cache_dir)
        except DeviceError as e:
            log.warning("backend auto: TensorRT could not open %s (%s); running it on onnxruntime", onnx_path.name, e)
            return OnnxRuntimeBackend(onnx_path, threads=threads, spin=spin)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path, threads=threads, spin=spin)
    if kind == "tensorrt":
        return TensorRTBackend(onnx_path, precision=precision, cache_dir=cache_dir)
    if kind == "torch":
        if module is None:  # runtime never imports the training code: the caller (the CLI) brings the module
            raise ValueError(f"backend torch: no torch module given for {onnx_path.name} (vsdmot-edge run "
                             "--backend torch supplies models/reference.py's)")
        inputs, outputs = onnx_io_specs(onnx_path)
        return TorchBackend(module, inputs, outputs, threads)
    raise ValueError(f"backend: expected one of auto, onnxruntime, tensorrt, torch, got {kind!r}")
