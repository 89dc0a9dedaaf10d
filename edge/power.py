"""Power meters: jtop, INA3221 sysfs rails, NVML, RAPL, tried in that order; tegrastats parsing.

A meter answers `read() -> PowerSample` (watts per rail and a board total). `open_meter()`
returns the first meter that works here, or None together with the reason each one failed:
with no meter there are no watts, and callers say so instead of inventing a figure.

Units on the wire: INA3221 hwmon (JetPack 5/6) gives mV and mA; the JetPack 4 iio driver
gives mW, mV and mA; jtop gives mW; NVML gives mW; RAPL gives cumulative microjoules.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vsdmot.runtime.config import POWER_METERS

log = logging.getLogger(__name__)

# Rails that measure the whole module input; jtop picks its total the same way.
TOTAL_RAILS = ("VIN", "POM_5V_IN", "VDD_IN")
METER_ORDER = POWER_METERS  # the config's [service] power_meter names


def meter_list(text: str) -> str:
    """`--power-meter`: names from power.METER_ORDER or 'none', comma-separated; checked while
    parsing, not once the model is loaded and the outputs are open."""
    bad = [m for m in text.split(",") if m and m not in (*METER_ORDER, "none")]
    if bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(METER_ORDER)} "
                                         f"(or none), got {bad[0]!r}")
    return text


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One reading of every rail of a meter."""

    t: float  # time.monotonic() seconds when read
    rails_w: dict[str, float]  # rail name -> watts
    total_w: float  # board input rail if the meter has one, else the sum of its rails
    total_rail: str  # which rail total_w is ("sum" when summed)


def total_of(rails_w: dict[str, float]) -> tuple[float, str]:
    """(watts, rail name): the module input rail when present, else the sum of all rails."""
    for name in TOTAL_RAILS:
        if name in rails_w:
            return rails_w[name], name
    return sum(rails_w.values()), "sum"


def make_sample(rails_w: dict[str, float], t: float | None = None) -> PowerSample:
    total, rail = total_of(rails_w)
    return PowerSample(time.monotonic() if t is None else t, dict(rails_w), total, rail)


class Meter(Protocol):
    name: str  # "jtop", "ina3221", "nvml", "rapl"
    scope: str  # what the total covers, for reports

    def read(self) -> PowerSample: ...

    def close(self) -> None: ...


# ---- tegrastats ------------------------------------------------------------------------------

# "VDD_IN 5000mW/5000mW" (JetPack 5/6) and "POM_5V_IN 2500/2500" (JetPack 4): current/average mW.
# The lookahead refuses "RAM 1655/3956MB" and "SWAP 0/1978MB (cached 0MB)".
_TEGRA_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> dict[str, tuple[float, float]]:
    """Rail name -> (current mW, running average mW) from one tegrastats line."""
    return {m[0]: (float(m[1]), float(m[2])) for m in _TEGRA_RAIL.findall(line)}


def tegrastats_sample(line: str, t: float | None = None) -> PowerSample | None:
    """The current (not averaged) rail readings of one line as watts, or None without rails."""
    rails = parse_tegrastats(line)
    return make_sample({k: cur / 1000.0 for k, (cur, _) in rails.items()}, t) if rails else None


# ---- INA3221 sysfs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rail:
    """Where one INA3221 channel's readings live in sysfs."""

    name: str  # label as the board names it, e.g. VDD_IN
    power: str = ""  # mW file (JetPack 4 iio: in_powerN_input)
    volt: str = ""  # mV file (hwmon inN_input, iio in_voltageN_input)
    curr: str = ""  # mA file (hwmon currN_input, iio in_currentN_input)

    def watts(self) -> float:
        if self.power:
            return _read_int(self.power) / 1000.0
        return _read_int(self.volt) * _read_int(self.curr) / 1e6


def _read_int(path: str) -> int:
    return int(Path(path).read_text().split()[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _iio_rails(dev: Path) -> list[Rail]:
    """JetPack 4 (L4T 32) ina3221x: rail_name_N, in_powerN_input (mW), in_voltageN/in_currentN."""
    rails = []
    for label in sorted(dev.glob("rail_name_*")):
        n, name = label.name.rsplit("_", 1)[1], _read_text(label)
        files = {k: dev / f"in_{k}{n}_input" for k in ("power", "voltage", "current")}
        if name and (files["power"].is_file() or (files["voltage"].is_file() and files["current"].is_file())):
            p = str(files["power"]) if files["power"].is_file() else ""
            rails.append(Rail(name, p, str(files["voltage"]), str(files["current"])))
    return rails


def _hwmon_rails(dev: Path) -> list[Rail]:
    """JetPack 5/6 ina3221 hwmon: inN_label, inN_input (mV), currN_input (mA) for N = 1..3."""
    rails = []
    for label in sorted(dev.glob("in*_label")):
        n, name = label.name[2:].split("_")[0], _read_text(label)
        volt, curr = dev / f"in{n}_input", dev / f"curr{n}_input"
        # "NC" channels are not connected; in7 is the driver's "sum of shunt voltages".
        if not name or name.upper().startswith("NC") or "sum of shunt" in name.lower() or n == "7":
            continue
        if volt.is_file() and curr.is_file():
            rails.append(Rail(name, "", str(volt), str(curr)))
    return rails


def find_ina3221_rails(root: str | os.PathLike = "/") -> list[Rail]:
    """Every INA3221 rail under `root` (a test passes a recorded tree; a device uses "/")."""
    root, seen, rails = Path(root), set(), []
    patterns = [  # (glob, reader, whether the glob alone proves it is an INA3221)
        ("sys/bus/i2c/drivers/ina3221x/*/iio:device*", _iio_rails, True),
        ("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*", _hwmon_rails, True),
        ("sys/class/hwmon/hwmon*", _hwmon_rails, False),  # any sensor: check its name
    ]
    for pattern, reader, known in patterns:
        for dev in sorted(root.glob(pattern)):
            real = dev.resolve()
            if real in seen or not (known or "ina3221" in _read_text(dev / "name")):
                continue
            seen.add(real)
            rails += [r for r in reader(dev) if r.name not in {x.name for x in rails}]
    return rails


class Ina3221Meter:
    """Reads the module's INA3221 channels straight from sysfs (no daemon, no root needed)."""

    name = "ina3221"

    def __init__(self, root: str | os.PathLike = "/"):
        self.rails = find_ina3221_rails(root)
        if not self.rails:
            raise OSError(f"no INA3221 rails under {Path(root) / 'sys/bus/i2c/drivers'} or {Path(root) / 'sys/class/hwmon'}")
        total = total_of({r.name: 0.0 for r in self.rails})[1]
        self.scope = f"INA3221 {total} rail" if total != "sum" else "sum of INA3221 module rails"

    def read(self) -> PowerSample:
        return make_sample({r.name: r.watts() for r in self.rails})

    def close(self) -> None:
        pass


# ---- jtop, NVML, RAPL ------------------------------------------------------------------------


class JtopMeter:
    """jetson-stats' jtop client: needs the jtop service (`sudo jtop --install-service`)."""

    name = "jtop"
    scope = "jtop total (VDD_IN / POM_5V_IN where the board has it, else the sum of rails)"

    def __init__(self):
        import warnings

        with warnings.catch_warnings():  # jetson-stats calls the deprecated distro.linux_distribution()
            warnings.simplefilter("ignore", DeprecationWarning)
            from jtop import jtop  # lazily: jetson-stats is a Jetson extra

            self._jtop = jtop()
            self._jtop.start()  # raises JtopException when the jtop service is absent

    def read(self) -> PowerSample:
        if not self._jtop.is_alive():  # its thread ends when the jtop service goes, keeping the last stats
            raise OSError("jtop lost the jtop service (sudo systemctl restart jtop)")
        power = self._jtop.power  # {"rail": {name: {"power": mW, ...}}, "tot": {"power": mW, "name"?}}
        rails = {k: v["power"] / 1000.0 for k, v in power.get("rail", {}).items() if "power" in v}
        tot = power.get("tot", {})
        name = tot.get("name", "sum")
        return PowerSample(time.monotonic(), rails, tot.get("power", 0) / 1000.0, name)

    def close(self) -> None:
        self._jtop.close()


class NvmlMeter:
    """Desktop / server NVIDIA GPUs through NVML: board power of every GPU (not the host CPU)."""

    name = "nvml"
    scope = "GPU board power (NVML), host CPU not included"

    def __init__(self):
        import pynvml  # lazily: only on machines with an NVIDIA driver

        pynvml.nvmlInit()  # raises NVMLError without a driver
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise OSError("NVML found no GPU")

    def read(self) -> PowerSample:
        get = self._nvml.nvmlDeviceGetPowerUsage  # milliwatts
        return make_sample({f"GPU{i}": get(h) / 1000.0 for i, h in enumerate(self._handles)})

    def close(self) -> None:
        self._nvml.nvmlShutdown()


class RaplMeter:
    """Intel/AMD RAPL package energy counters: watts from the energy delta between reads."""

    name = "rapl"
    scope = "CPU package energy (RAPL), not the whole board"

    def __init__(self, root: str | os.PathLike = "/", clock: Callable[[], float] = time.monotonic):
        zones = sorted(Path(root).glob("sys/class/powercap/intel-rapl:[0-9]"))
        self._zones = [(z, _read_text(z / "name") or z.name, _read_int(str(z / "max_energy_range_uj"))) for z in zones]
        if not self._zones:
            raise OSError(f"no RAPL zones under {Path(root) / 'sys/class/powercap'}")
        self._clock = clock
        self._last = self._energies()

    def _energies(self) -> tuple[float, list[int]]:
        return self._clock(), [_read_int(str(z / "energy_uj")) for z, _, _ in self._zones]

    def read(self) -> PowerSample:
        (t0, e0), (t1, e1) = self._last, self._energies()
        self._last = (t1, e1)
        dt = max(t1 - t0, 1e-6)
        rails = {}
        for (_, name, wrap), a, b in zip(self._zones, e0, e1):
            rails[name] = ((b - a) % (wrap + 1)) / 1e6 / dt  # the counter wraps at max_energy_range_uj
        return make_sample(rails, t1)

    def close(self) -> None:
        pass


# ---- choosing a meter ------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[str], Meter]] = {
    "jtop": lambda root: JtopMeter(),
    "ina3221": lambda root: Ina3221Meter(root),
    "nvml": lambda root: NvmlMeter(),
    "rapl": lambda root: RaplMeter(root),
}


@dataclass
class MeterProbe:
    """The meter chosen (or None) and why each earlier one was passed over."""

    meter: Meter | None
    tried: dict[str, str] = field(default_factory=dict)  # meter name -> why it is not used

    def explain(self) -> str:
        if self.meter is not None:
            return f"power meter: {self.meter.name} ({self.meter.scope})"
        why = "; ".join(f"{k}: {v}" for k, v in self.tried.items())
        return f"no power meter on this machine ({why}): energy is not reported, only time and CPU seconds"

    def short(self) -> str:
        """`explain` in one short line: the meters tried, not why each failed (`-v` logs that)."""
        if self.meter is not None:
            return self.explain()
        return f"no power meter ({', '.join(self.tried) or 'none tried'}): energy is not reported"


def open_meter(order: Iterable[str] = METER_ORDER, root: str | os.PathLike = "/") -> MeterProbe:
    """The first meter in `order` that opens and reads; ValueError for an unknown name."""
    probe = MeterProbe(None)
    for name in order:
        if name not in _FACTORIES:
            raise ValueError(f"power meter: expected one of {list(_FACTORIES)}, got {name!r}")
        try:
            meter = _FACTORIES[name](str(root))
            meter.read()
        except Exception as e:  # noqa: BLE001 - any failure means "not this meter", with the reason kept
            probe.tried[name] = f"{type(e).__name__}: {' '.join(str(e).split()) or 'unavailable'}"
            continue
        probe.meter = meter
        return probe
    return probe


class PowerSampler:
    """Reads a meter on a thread every `period_s` and keeps the samples (for plots and energy)."""

    def __init__(self, meter: Meter, period_s: float = 0.1, keep: int | None = None):
        """`keep`: only the last `keep` samples (a long-running service); None keeps all (a profile)."""
        if period_s <= 0:
            raise ValueError(f"power sampler: period_s must be > 0, got {period_s}")
        self.meter, self.period_s = meter, period_s
        self.samples: collections.deque[PowerSample] = collections.deque(maxlen=keep)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="vsdmot-power", daemon=True)

    def start(self) -> PowerSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        failing = False  # log a failure once, and the recovery, not every period for months
        while not self._stop.is_set():
            try:
                sample = self.meter.read()
            except Exception as e:  # noqa: BLE001 - any meter error (sysfs, jtop, NVML) must not end sampling
                if not failing:
                    log.warning("power meter %s failed: %s (no watts until it reads again)", self.meter.name, e)
                failing = True
            else:
                if failing:
                    log.info("power meter %s reads again", self.meter.name)
                failing = False
                with self._lock:
                    self.samples.append(sample)
            self._stop.wait(self.period_s)

    def latest(self, max_age_s: float | None = None) -> PowerSample | None:
        """The newest sample; None when there is none, or it is older than `max_age_s` (a meter
        that stopped reading gives no watts rather than its last ones)."""
        with self._lock:
            s = self.samples[-1] if self.samples else None
        if s is not None and max_age_s is not None and time.monotonic() - s.t > max_age_s:
            return None
        return s

    def between(self, t0: float, t1: float) -> list[PowerSample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.t <= t1]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.period_s + 1.0)


def mean_watts(samples: list[PowerSample]) -> float | None:
    """Time-weighted mean of total_w (trapezoids); None with fewer than two samples."""
    if len(samples) < 2:
        return None
    area = sum((b.t - a.t) * (a.total_w + b.total_w) / 2 for a, b in zip(samples, samples[1:]))
    span = samples[-1].t - samples[0].t
    return area / span if span > 0 else samples[0].total_w
