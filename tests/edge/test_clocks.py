"""Device state for profile reports: a recorded Jetson sysfs tree, an x86 /proc/cpuinfo, and the notes."""

from __future__ import annotations

from helpers import jetson_tree, write
from vsdmot.edge.clocks import Clock, DeviceState, notes, parse_nvpmodel, read_state

NVPMODEL_Q = "NV Fan Mode:quiet\nNV Power Mode: MAXN_SUPER\n2\n"  # `nvpmodel -q` on JetPack 6, Orin Nano


def test_a_recorded_jetson(tmp_path):
    s = read_state(jetson_tree(tmp_path), nvpmodel=NVPMODEL_Q)
    assert s.cpu_model == "ARMv8 Processor rev 1 (v8l)" and s.power_mode == "MAXN_SUPER (2)"
    assert s.governor == "schedutil"
    assert s.cpu == Clock(cur_mhz=1120.0, max_mhz=1728.0)  # the mean over the cores
    assert s.gpu == Clock(cur_mhz=306.0, max_mhz=1020.0)  # the ga10b node, not the VIC's
    assert s.temps_c == {"cpu-thermal": 52.2}  # the disabled sensor is left out


def test_an_x86_vm_knows_only_the_cpu_model_and_mhz(tmp_path):
    write(tmp_path, "proc/cpuinfo", "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.122\n"
                                    "processor\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2400.000\n")
    s = read_state(tmp_path, nvpmodel="")
    assert s == DeviceState(cpu_model="AMD EPYC", cpu=Clock(2498.1, 0.0))
    assert notes(s) == []  # no max clock known: nothing to say about it


def test_nothing_readable_is_left_empty(tmp_path):
    assert read_state(tmp_path, nvpmodel="not a jetson") == DeviceState()
    assert parse_nvpmodel("") == "" and parse_nvpmodel("NV Power Mode: 15W\n1") == "15W (1)"


def test_notes_name_what_held_the_fps_down(tmp_path):
    hot = read_state(jetson_tree(tmp_path, temps=(("gpu-thermal", 91500),)), nvpmodel=NVPMODEL_Q)
    said = notes(hot)
    assert any(n.startswith("CPU at 1120 of 1728 MHz under load (65%)") for n in said)
    assert any(n.startswith("GPU at 306 of 1020 MHz") for n in said)
    assert "hot: gpu-thermal 92 C (throttling is likely)" in said
    assert any("governor 'schedutil'" in n for n in said)
    pinned = DeviceState(governor="performance", cpu=Clock(1728.0, 1728.0), gpu=Clock(1020.0, 1020.0), temps_c={"cpu": 60.0})
    assert notes(pinned) == []
