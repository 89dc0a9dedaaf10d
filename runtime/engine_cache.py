"""The TensorRT engine cache: one folder per engine under a key of everything that makes an engine
non-portable (`EngineKey`), written atomically and stamped, built under a lock so that two
processes starting together build once (`cached_or_built`). Nothing here imports TensorRT."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bundle import read_stamped
from .errors import DeviceError
from .locks import waiting_lock
from .mot import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What makes a serialised engine valid: the same ONNX, TensorRT, GPU and precision."""

    onnx_sha256: str
    tensorrt: str  # tensorrt.__version__
    gpu: str  # the CUDA device, `_CudaRuntime.device()`: "Orin (sm_87, 8 SMs, driver 12020)"
    precision: str  # fp32 | fp16 | int8

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_engine_cache() -> Path:
    """$VSDMOT_ENGINE_CACHE, else $XDG_CACHE_HOME/vsdmot/engines, else ~/.cache/vsdmot/engines."""
    if os.environ.get("VSDMOT_ENGINE_CACHE"):
        return Path(os.environ["VSDMOT_ENGINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vsdmot" / "engines"


def engine_dir(cache_root: str | os.PathLike, onnx_path: str | os.PathLike, key: EngineKey) -> Path:
    """<cache>/<onnx stem>-<precision>-<key digest>/ holding engine.plan and stamp.json."""
    return Path(cache_root) / f"{Path(onnx_path).stem}-{key.precision}-{key.digest()}"


def load_cached_engine(folder: str | os.PathLike, key: EngineKey) -> bytes | None:
    """The cached engine bytes, None when absent; DeviceError when stamped for another key or altered."""
    folder = Path(folder)
    return read_stamped(folder / "engine.plan", folder / "stamp.json", asdict(key), "engine_sha256",
                        "cached engine", verb="built")


def store_engine(folder: str | os.PathLike, key: EngineKey, data: bytes) -> Path:
    """Write engine.plan, then its stamp, each atomically and synced (a crash or a power cut leaves
    no half engine behind, so no minutes-long rebuild at the next start)."""
    folder = Path(folder)
    stamp = {**asdict(key), "engine_sha256": hashlib.sha256(data).hexdigest(), "created": time.time()}
    atomic_write_bytes(folder / "engine.plan", data)
    atomic_write_bytes(folder / "stamp.json", json.dumps(stamp, indent=1).encode())
    return folder / "engine.plan"


def cached_or_built(folder: str | os.PathLike, key: EngineKey, build: Callable[[], bytes], what: str,
                    open_fn: Callable[[bytes], Any] | None = None) -> Any:
    """The engine cached in `folder` for `key`, else `build()` stored there; `open_fn(bytes)` (TensorRT's
    deserialisation) when given, else the bytes. The check and the build run under a lock on the
    folder: of two processes that start together (two camera services at boot, or a service and a
    `vsdmot-edge run` by hand), one builds and the other waits and loads its engine, instead of both
    building (minutes of GPU memory twice) and writing over each other's plan and stamp. A stale or
    altered cache is rebuilt, with a warning; so is a cached plan `open_fn` gives None for (a cache
    copied from another board). A fresh build's None is the caller's to report: it is not built twice."""
    folder = Path(folder)
    try:
        with waiting_lock(folder.with_name(folder.name + ".lock"), f"building the engine for {what}"):
            data = _cached_or_none(folder, key)
            opened = open_fn(data) if open_fn is not None and data is not None else data
            if data is not None and opened is None:
                log.warning("%s: the cached engine in %s does not load on this TensorRT and device; rebuilding",
                            what, folder)
            if opened is None:
                log.info("building TensorRT %s engine for %s (once per device; cached in %s)", key.precision, what,
                         folder)
                try:
                    data = build()
                except OSError as e:
                    e.vsdmot_build = True  # the build's own (an unreadable ONNX file): reported as it is
                    raise
                store_engine(folder, key, data)
                opened = open_fn(data) if open_fn is not None else data
    except OSError as e:  # the cache's: not writable by this user, a full or read-only disk
        if getattr(e, "vsdmot_build", False):
            raise
        hint = f"; make it the user's that runs (the service: sudo chown -R vsdmot: {folder.parent})" \
            if isinstance(e, PermissionError) else ""
        raise DeviceError(f"engine cache {folder.parent}: {e.strerror or e} ({e.filename}){hint}") from None
    return opened


def _cached_or_none(folder: Path, key: EngineKey) -> bytes | None:
    try:
        return load_cached_engine(folder, key)
    except DeviceError as e:
        log.warning("%s; rebuilding", e)
        return None
