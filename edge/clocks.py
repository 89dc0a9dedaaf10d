"""What a device ran at: power mode, CPU and GPU clocks, temperatures. `vsdmot-edge profile` stamps
its report with them, read before, during and after each run, because FPS and watts mean little
without them: a Jetson in a 7 W mode, a governor that parked the CPU, or a board that throttled
when it got hot runs slower than the same board at MAXN with jetson_clocks.

Everything is read from sysfs and procfs under `root` (tests pass a recorded tree), plus
`nvpmodel -q` where it exists (JetPack; no root needed to query). Whatever a machine lacks is left
empty, never guessed: this x86 VM has no cpufreq, devfreq or thermal zones, so only the CPU model
and /proc/cpuinfo's MHz are known here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JETSON_GPUS = ("gv11b", "gp10b", "ga10b", "gb10b", "gpu")  # devfreq device/of_node/name of a Jetson's iGPU
UNDER_CLOCK = 0.9  # under load, a CPU or GPU below this share of its max clock is named in the report
HOT_C = 80.0  # a thermal zone at or above this (deg C) is named: Jetsons start throttling in the 80s-90s


@dataclass(frozen=True)
class Clock:
    cur_mhz: float  # now; for the CPU the mean over online cores
    max_mhz: float  # the highest the hardware allows (cpuinfo_max_freq; devfreq max_freq), 0 = unknown


@dataclass(frozen=True)
class DeviceState:
    cpu_model: str = ""
    power_mode: str = ""  # nvpmodel, e.g. "MAXN (0)"; "" = not a Jetson or not readable
    governor: str = ""  # cpufreq scaling governor of cpu0, "" = unknown
    cpu: Clock | None = None
    gpu: Clock | None = None  # a Jetson's integrated GPU (devfreq)
    temps_c: dict[str, float] = field(default_factory=dict)  # thermal zone type -> deg C

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_state(root: str | Path = "/", nvpmodel: str | None = None) -> DeviceState:
    """The device's state now. `nvpmodel`: that command's `-q` output (None: run it if installed)."""
    root = Path(root)
    if nvpmodel is None:
        nvpmodel = _nvpmodel_query() if root == Path("/") else ""
    return DeviceState(_cpu_model(root), parse_nvpmodel(nvpmodel), _text(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
                       _cpu_clock(root), _gpu_clock(root), _temps(root))


def parse_nvpmodel(text: str) -> str:
    """`nvpmodel -q` ("NV Power Mode: MAXN\\n0") -> "MAXN (0)"; "" when absent."""
    m = re.search(r"NV Power Mode:\s*(\S.*?)\s*\n\s*(\d+)", text or "")
    return f"{m.group(1)} ({m.group(2)})" if m else ""


def _nvpmodel_query() -> str:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return ""
    try:
        return subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _number(path: Path) -> float | None:
    try:
        return float(_text(path))
    except ValueError:
        return None


def _cpu_model(root: Path) -> str:
    info = _text(root / "proc/cpuinfo")
    m = re.search(r"^(model name|Model|Hardware)\s*:\s*(.+)$", info, re.MULTILINE)
    return m.group(2).strip() if m else ""


def _cpu_clock(root: Path) -> Clock | None:
    """cpufreq's scaling_cur_freq (kHz) over the cores, else /proc/cpuinfo's "cpu MHz" (x86)."""
    folders = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    cur = [v / 1e3 for f in folders if (v := _number(f / "scaling_cur_freq")) is not None]
    top = [v / 1e3 for f in folders if (v := _number(f / "cpuinfo_max_freq")) is not None]
    if not cur:
        cur = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", _text(root / "proc/cpuinfo"), re.MULTILINE)]
    return Clock(round(sum(cur) / len(cur), 1), round(max(top, default=0.0), 1)) if cur else None


def _gpu_clock(root: Path) -> Clock | None:
    """A Jetson iGPU's devfreq node (cur_freq / max_freq in Hz), found by its device's of_node name."""
    for node in sorted((root / "sys/class/devfreq").glob("*")):
        if _text(node / "device/of_node/name") in JETSON_GPUS and (cur := _number(node / "cur_freq")) is not None:
            return Clock(round(cur / 1e6, 1), round((_number(node / "max_freq") or 0.0) / 1e6, 1))
    return None


def _temps(root: Path) -> dict[str, float]:
    """Thermal zones (millidegrees C); a zone reading below -40 C is a disabled sensor, skipped."""
    out: dict[str, float] = {}
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        milli = _number(zone / "temp")
        if milli is not None and milli > -40_000:
            out[_text(zone / "type") or zone.name] = round(milli / 1e3, 1)
    return out


def hottest(temps_c: dict[str, float]) -> str:
    """'zone NN C' of the hottest thermal zone, '' without any."""
    return "{} {:.0f} C".format(*max(temps_c.items(), key=lambda kv: kv[1])) if temps_c else ""


def notes(under_load: DeviceState) -> list[str]:
    """What in a state read under load may have held the FPS down: a clock under UNDER_CLOCK of its
    max, a zone at HOT_C or above, a governor that is not "performance"."""
    out = []
    for name, clock in (("CPU", under_load.cpu), ("GPU", under_load.gpu)):
        if clock is not None and clock.max_mhz and clock.cur_mhz < UNDER_CLOCK * clock.max_mhz:
            out.append(f"{name} at {clock.cur_mhz:.0f} of {clock.max_mhz:.0f} MHz under load "
                       f"({clock.cur_mhz / clock.max_mhz:.0%}): a power mode, governor or thermal limit held it down")
    hot = {k: v for k, v in under_load.temps_c.items() if v >= HOT_C}
    if hot:
        out.append("hot: " + ", ".join(f"{k} {v:.0f} C" for k, v in hot.items()) + " (throttling is likely)")
    if under_load.governor and under_load.governor != "performance":
        out.append(f"CPU governor {under_load.governor!r}: clocks follow the load (`sudo jetson_clocks` or the "
                   "performance governor pins them for a benchmark)")
    return out
