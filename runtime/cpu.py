"""What this CPU does with INT8. onnxruntime runs Q/DQ (s8s8) convolutions faster than FP32 only
with int8 dot-product instructions; without them an INT8 bundle is smaller but slower (measured on
an AVX2 EPYC: 0.72x the FP32 bundle's FPS end to end, docs/export_measurements.md "--int8 with the defaults")."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# x86: VNNI (AVX-512 or AVX) and AMX; Arm (Jetson's Carmel and Cortex-A78AE): the dot-product extension
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature words of /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    words: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            words.update(value.split())
    return words


def has_int8_dot(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has int8 dot-product instructions; None when it cannot tell (no /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = cpu_flags(cpuinfo)
    return bool(flags & INT8_DOT_FLAGS) if flags else None


@functools.lru_cache(maxsize=1)
def warn_int8_on_cpu() -> bool:
    """Log once per process when INT8 networks will run on a CPU without int8 dot products."""
    if has_int8_dot() is not False:
        return False
    log.warning("INT8 networks on onnxruntime: this CPU has no int8 dot-product instructions (VNNI, AMX or "
                "asimddp), so they run slower than FP32 here (0.72x end to end measured on AVX2); the INT8 "
                "bundle is for TensorRT on the device, or for its size. For speed on this CPU use an FP32 bundle")
    return True
