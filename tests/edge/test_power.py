"""Power meters: the parsers on recorded sysfs trees and tegrastats lines (tests/edge/data), meter
choice and its reasons here (no meter on this machine), and the live meters on a Jetson only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vsdmot.edge import power as P

DATA = Path(__file__).parent / "data"
SYSFS = DATA / "sysfs"


@pytest.mark.parametrize(
    "board, rails_w, total_w, total_rail",
    [
        # JetPack 4 iio: in_powerN_input is mW, used directly
        ("jp4_nano", {"POM_5V_IN": 2.132, "POM_5V_GPU": 0.078, "POM_5V_CPU": 0.275}, 2.132, "POM_5V_IN"),
        # JetPack 5 hwmon: mV * mA; NC channels and the in7 sum channel skipped; no VDD_IN on AGX Orin
        ("jp5_agx_orin", {"VDD_GPU_SOC": 19.856 * 0.232, "VDD_CPU_CV": 19.856 * 0.056, "VIN_SYS_5V0": 4.984 * 0.520,
                          "VDDQ_VDD2_1V8AO": 4.984 * 0.112}, None, "sum"),
        # JetPack 6 hwmon, reachable twice (driver path and /sys/class/hwmon symlink): counted once
        ("jp6_orin_nano", {"VDD_IN": 5.072 * 1.024, "VDD_CPU_GPU_CV": 5.072 * 0.104, "VDD_SOC": 5.072 * 0.288},
         5.072 * 1.024, "VDD_IN"),
    ],
)
def test_ina3221_layouts(board, rails_w, total_w, total_rail):
    meter = P.Ina3221Meter(SYSFS / board)
    sample = meter.read()
    assert sample.rails_w == pytest.approx(rails_w)
    assert sample.total_rail == total_rail
    assert sample.total_w == pytest.approx(total_w if total_w is not None else sum(rails_w.values()))
    assert len(meter.rails) == len(rails_w)


def test_ina3221_absent_says_where_it_looked(tmp_path):
    with pytest.raises(OSError, match="no INA3221 rails"):
        P.Ina3221Meter(tmp_path)


@pytest.mark.parametrize(
    "log, line, expected_mw, total_w, total_rail",
    [
        ("nano_jp4.log", 0, {"POM_5V_IN": (2132, 2132), "POM_5V_GPU": (78, 78), "POM_5V_CPU": (275, 275)}, 2.132, "POM_5V_IN"),
        ("nano_jp4.log", 2, {"POM_5V_GPU": (8633, 8742), "POM_5V_IN": (2956, 3086), "POM_5V_CPU": (3148, 3134)}, 2.956, "POM_5V_IN"),
        ("tx2_jp4.log", 0, {"VDD_SYS_GPU": (152, 152), "VDD_SYS_SOC": (687, 687), "VDD_4V0_WIFI": (0, 0),
                            "VDD_IN": (2976, 2976), "VDD_SYS_CPU": (152, 152), "VDD_SYS_DDR": (479, 479)}, 2.976, "VDD_IN"),
        ("xavier_nx_jp5.log", 0, {"VDD_IN": (5079, 5079), "VDD_CPU_GPU_CV": (696, 696), "VDD_SOC": (1104, 1104)}, 5.079, "VDD_IN"),
        ("agx_orin_jp5.log", 0, {"VDD_GPU_SOC": (15000, 14612), "VDD_CPU_CV": (3500, 3388), "VIN_SYS_5V0": (4574, 4556),
                                 "VDDQ_VDD2_1V8AO": (600, 598)}, 23.674, "sum"),
        ("orin_nano_jp6.log", 1, {"VDD_IN": (9876, 7790), "VDD_CPU_GPU_CV": (3412, 2121), "VDD_SOC": (2085, 1854)}, 9.876, "VDD_IN"),
    ],
)
def test_tegrastats_lines(log, line, expected_mw, total_w, total_rail):
    text = (DATA / "tegrastats" / log).read_text().splitlines()[line]
    assert P.parse_tegrastats(text) == {k: (float(a), float(b)) for k, (a, b) in expected_mw.items()}
    sample = P.tegrastats_sample(text, t=1.0)
    assert (sample.total_rail, sample.total_w) == (total_rail, pytest.approx(total_w))


@pytest.mark.parametrize("text", ["RAM 1655/3956MB (lfb 311x4MB) SWAP 0/1978MB (cached 0MB)", "CPU [12%@102,off] GR3D_FREQ 0%@[305]", ""])
def test_tegrastats_without_rails(text):
    assert P.parse_tegrastats(text) == {} and P.tegrastats_sample(text) is None


def test_rapl_watts_from_energy_delta_across_wraparound(tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(SYSFS / "rapl", root)
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    clock = iter([10.0, 12.0])
    meter = P.RaplMeter(root, clock=lambda: next(clock))
    energy.write_text("4671150\n")  # wrapped: (262143328850 - 262143000000) + 4671150 + 1 = 5000001 uJ
    sample = meter.read()
    assert list(sample.rails_w) == ["package-0"]  # sub-zones (intel-rapl:0:0) are inside the package
    assert sample.total_w == pytest.approx(5.000001 / 2.0)


def test_mean_watts_is_time_weighted():
    s = [P.make_sample({"VDD_IN": w}, t) for t, w in ((0.0, 4.0), (1.0, 6.0), (3.0, 6.0))]
    assert P.mean_watts(s) == pytest.approx((5.0 * 1 + 6.0 * 2) / 3)
    assert P.mean_watts(s[:1]) is None


def test_sampler_reads_a_recorded_tree_on_its_thread():
    sampler = P.PowerSampler(P.Ina3221Meter(SYSFS / "jp6_orin_nano"), period_s=0.01).start()
    try:
        import time

        deadline = time.monotonic() + 5
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()
    assert len(sampler.samples) >= 3 and sampler.latest().total_rail == "VDD_IN"


def test_service_sampler_memory_is_bounded():
    sampler = P.PowerSampler(P.Ina3221Meter(SYSFS / "jp4_nano"), period_s=0.001, keep=5).start()
    try:
        import time

        time.sleep(0.2)
    finally:
        sampler.stop()
    assert len(sampler.samples) == 5


class FailingMeter:
    """Reads `good` times, then fails every read with `error` (a rail gone, jtop's service died)."""

    name, scope = "fake", "test"

    def __init__(self, good: int, error: Exception):
        self.good, self.error, self.reads = good, error, 0

    def read(self) -> P.PowerSample:
        self.reads += 1
        if self.reads > self.good:
            raise self.error
        return P.make_sample({"VDD_IN": 5.0})

    def close(self) -> None:
        pass


@pytest.mark.parametrize("error", [OSError("I/O error"), ValueError("invalid literal for int()")])
def test_a_failing_meter_gives_no_watts_and_the_sampler_keeps_trying(error, caplog):
    """A meter that fails after a while left `latest()` returning its last good sample forever, so
    /metrics exported those watts as current for months; an error other than OSError also ended
    the sampler thread for good, and an OSError was logged every period (journal flood)."""
    import time

    meter = FailingMeter(2, error)
    sampler = P.PowerSampler(meter, period_s=0.01).start()
    try:
        deadline = time.monotonic() + 5
        while meter.reads < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sampler._thread.is_alive(), "the sampler thread died on the meter's error"
        assert sampler.latest() is not None  # the last good one, for a profile's samples
        assert sampler.latest(max_age_s=0.1) is None  # too old to report as current
    finally:
        sampler.stop()
    failures = [r for r in caplog.records if "power meter fake failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures][:3]


def test_jtop_meter_fails_once_the_jtop_service_is_lost(monkeypatch):
    """jtop's client thread ends when it loses the jtop service but keeps its last stats, so
    `power` went on answering the last watts with a fresh timestamp: /metrics and a profile showed
    a frozen reading as current. A fake jtop module stands in for jetson-stats here."""
    import sys
    import types

    class FakeJtop:
        power = {"rail": {"VDD_IN": {"power": 5100}}, "tot": {"power": 5100, "name": "VDD_IN"}}  # mW

        def __init__(self):
            self.alive = False

        def start(self):
            self.alive = True

        def is_alive(self):
            return self.alive

        def close(self):
            self.alive = False

    monkeypatch.setitem(sys.modules, "jtop", types.SimpleNamespace(jtop=FakeJtop))
    meter = P.JtopMeter()
    s = meter.read()
    assert (s.total_w, s.total_rail, s.rails_w) == (5.1, "VDD_IN", {"VDD_IN": 5.1})
    meter._jtop.alive = False  # the jtop service stopped: the client thread has ended
    with pytest.raises(OSError, match="jtop"):
        meter.read()


def test_no_meter_here_is_said_with_reasons():
    if Path("/sys/bus/i2c/drivers/ina3221").exists() or Path("/run/jtop.sock").exists():
        pytest.skip("this machine has a power meter")
    probe = P.open_meter()
    assert probe.meter is None
    assert set(probe.tried) == {"jtop", "ina3221", "nvml", "rapl"}
    assert "no power meter" in probe.explain() and "energy is not reported" in probe.explain()
    # the run's log line: which meters, not a 400-character list of why (that is -v, and doctor)
    assert probe.short() == "no power meter (jtop, ina3221, nvml, rapl): energy is not reported"


def test_open_meter_order_and_bad_name():
    probe = P.open_meter(["ina3221", "rapl"], root=SYSFS / "jp5_agx_orin")
    assert probe.meter.name == "ina3221" and probe.tried == {}
    assert P.open_meter(["rapl", "ina3221"], root=SYSFS / "jp4_nano").tried.keys() == {"rapl"}
    with pytest.raises(ValueError, match="expected one of"):
        P.open_meter(["tegra"])


def _on_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


@pytest.mark.jetson
@pytest.mark.skipif(not _on_jetson(), reason="needs a Jetson (no /etc/nv_tegra_release): live INA3221 rails")
def test_live_ina3221_on_jetson():
    sample = P.Ina3221Meter("/").read()
    assert 0.5 < sample.total_w < 100


@pytest.mark.jetson
@pytest.mark.skipif(not os.path.exists("/run/jtop.sock"), reason="needs the jtop service (/run/jtop.sock) on a Jetson")
def test_live_jtop_on_jetson():
    meter = P.JtopMeter()
    try:
        assert meter.read().total_w > 0
    finally:
        meter.close()
