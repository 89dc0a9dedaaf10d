"""Step (`--int8 --target tensorrt`, TensorRT < 10.1: JetPack 6.0): legacy INT8 engines, built for
the staged bundle once its gate passed (or was forced), before it is published (a failure leaves --out as it was).

TensorRT 10.1 deprecated the implicit INT8 calibrators for explicit Q/DQ ONNX, which is what the
bundle ships and what TensorRT 10 builds. On an older TensorRT this step builds each INT8
network's engine the legacy way instead: the network's FP32 ONNX (the chain's reference export,
the same weights the Q/DQ file quantises) with an `IInt8EntropyCalibrator2` over the export's own
calibration feeds (`calibration/trt_calibrator.py`). Its calibration cache is stamped with the
TensorRT version, GPU, FP32 model hash and the feeds' identity, and a stale one is refused and
recalibrated, never reused. The engine goes into the runtime's engine cache under the key
`vsdmot-edge run --backend tensorrt` looks up for the bundle's file (`runtime.engine_cache.EngineKey`:
that file's sha256, TensorRT, GPU, "int8": the default `--precision auto` of an INT8 bundle), so
the run loads it instead of building from the Q/DQ file. That engine is not the model the accuracy
gate scored, so it is cached only when it agrees with FP32 about as well as the gated Q/DQ file does
(`agreement`). Without that cache entry the run builds from Q/DQ, which TensorRT 8.5 and later also accept.

Needs TensorRT and a CUDA GPU (imported lazily). Here only the plumbing around the build is tested.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .sources import feeds_id  # the feeds' key, else a hash of their contents

log = logging.getLogger(__name__)
EXPLICIT_SINCE = (10, 1)  # TensorRT from which implicit INT8 calibrators are deprecated


def needs_legacy(tensorrt_version: str) -> bool:
    """Whether this TensorRT predates explicit-only INT8: '8.5.2.2' -> True, '10.3.0' -> False."""
    parts = [int(p) for p in tensorrt_version.split(".")[:2] if p.isdigit()]
    return tuple(parts) < EXPLICIT_SINCE


def legacy_int8_engines(bundle_dir: str | os.PathLike, fp32_files: Mapping[str, Path],
                        feeds: Mapping[str, Sequence[Mapping]], work: Path,
                        cache_root: str | os.PathLike | None = None,
                        build: Callable | None = None, engine_runner: Callable | None = None) -> dict[str, str]:
    """Per INT8 network of the (staged) bundle: build its legacy engine and cache it for the
    bundle's file, unless it agrees with FP32 worse than the gated Q/DQ file does (`agreement`).
    Returns {network: engine path}; {} on TensorRT >= 10.1 (explicit Q/DQ there).
    `build` is `calibration.trt_calibrator.build_legacy_int8_engine` and `engine_runner(onnx, cache)`
    a context giving the engine cached there as a feed -> outputs function (`TensorRTBackend`, closed
    after); stand-ins in tests."""
    import tensorrt as trt

    from vsdmot.runtime.engine_cache import EngineKey, default_engine_cache, engine_dir, store_engine
    from vsdmot.runtime.bundle import file_sha256, load_bundle
    from vsdmot.runtime.locks import waiting_lock

    if not needs_legacy(trt.__version__):
        log.info("TensorRT %s builds INT8 from the bundle's Q/DQ ONNX; no legacy calibration", trt.__version__)
        return {}
    if build is None:
        from vsdmot.calibration.trt_calibrator import build_legacy_int8_engine as build
    bundle, out = load_bundle(bundle_dir), {}
    for name in int8_networks(bundle, fp32_files, feeds):
        cache = work / "legacy-int8" / f"{name}.calib"
        data, stamp = build(fp32_files[name], feeds[name], cache, feeds_id(feeds[name]))
        key = EngineKey(file_sha256(bundle.file(f"{name}.onnx")), trt.__version__, stamp.gpu, "int8")  # as the run's
        ok, why = checked(data, key, name, bundle.file(f"{name}.onnx"), fp32_files[name], feeds[name],
                          work / "legacy-int8" / "engines", engine_runner or _tensorrt_runner)
        if not ok:
            log.warning("TensorRT %s: the legacy INT8 engine for %s.onnx is not cached: %s; the run builds %s from "
                        "the gated Q/DQ file instead", trt.__version__, name, why, name)
            continue
        folder = engine_dir(cache_root or default_engine_cache(), f"{name}.onnx", key)
        with waiting_lock(folder.with_name(folder.name + ".lock"), f"storing the legacy engine for {name}"):
            out[name] = str(store_engine(folder, key, data))  # not while a run builds or reads this engine
        log.info("TensorRT %s: legacy INT8 engine for %s.onnx (entropy calibrator, %d feeds, cache %s; %s) "
                 "cached for vsdmot-edge run --backend tensorrt", trt.__version__, name, len(feeds[name]), cache, why)
    return out


def checked(data: bytes, key, name: str, qdq: Path, fp32: Path, feeds, trial_root: Path,
            runner: Callable) -> tuple[bool, str]:
    """`agreement` of the engine `data`, opened from a trial cache in the work dir: the cache a
    service reads never holds an engine that was not checked, even when the check fails part way."""
    from vsdmot.runtime.engine_cache import engine_dir, store_engine

    folder = engine_dir(trial_root, f"{name}.onnx", key)
    store_engine(folder, key, data)
    try:
        with runner(qdq, trial_root) as run:
            return agreement(run, fp32, qdq, feeds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


LEGACY_MARGIN = 0.02  # cosine the legacy engine may lose against FP32 beyond what the gated Q/DQ file loses
AGREEMENT_FEEDS = 8


def agreement(engine: Callable, fp32_onnx: Path, qdq_onnx: Path, feeds: Sequence[Mapping]) -> tuple[bool, str]:
    """(ok, why): the legacy engine is built from the FP32 file with its own entropy ranges, so it is
    not the model the accuracy gate scored. It is kept only when, per output, its outputs agree with
    FP32's (minimum cosine over AGREEMENT_FEEDS calibration feeds) within LEGACY_MARGIN of the gated
    Q/DQ file's agreement on the same feeds."""
    from .parity import compare, onnx_runner, pick

    picked, ref = pick(feeds, AGREEMENT_FEEDS), onnx_runner(fp32_onnx)
    legacy, gated = compare(ref, engine, picked), compare(ref, onnx_runner(qdq_onnx), picked)
    rows = {o: (legacy[o]["cosine"], gated[o]["cosine"]) for o in gated}
    bad = {o: c for o, c in rows.items() if not c[0] >= c[1] - LEGACY_MARGIN}  # NaN fails too
    text = ", ".join(f"{o} cosine {a:.3f} vs FP32 (the gated Q/DQ file: {b:.3f})" for o, (a, b) in (bad or rows).items())
    return not bad, text


@contextmanager
def _tensorrt_runner(onnx: Path, cache_root: Path) -> Iterator[Callable]:
    """The engine cached for `onnx` under `cache_root`, as `vsdmot-edge run --backend tensorrt` opens
    it; closed after (its stream and buffers: the next network's build needs the memory)."""
    from vsdmot.runtime.backends import TensorRTBackend

    backend = TensorRTBackend(onnx, precision="int8", cache_dir=cache_root)
    try:
        yield backend.infer
    finally:
        backend.close()


def int8_networks(bundle, fp32_files: Mapping[str, Path], feeds: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """Networks the bundle ships in INT8 that have an FP32 ONNX and calibration feeds to calibrate."""
    names = [n.removesuffix(".onnx") for n in bundle.names
             if n.endswith(".onnx") and bundle.entry(n).get("precision") == "int8"]
    missing = [n for n in names if n not in fp32_files or n not in feeds]
    if missing:
        log.warning("legacy INT8: no FP32 ONNX or calibration feeds for %s; their engines build from Q/DQ", missing)
    return [n for n in names if n not in missing]
