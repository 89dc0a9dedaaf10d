"""Paths and small helpers shared by tests (importable: pyproject puts tests/ on pythonpath)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import pytest

from vsdmot.paths import data_root, shared_root, yolox_nano_onnx

REPO = Path(__file__).resolve().parents[1]
SHARED = shared_root()
DATA = data_root()
YOLOX_ONNX = yolox_nano_onnx()
# `vsdmot-edge` in a child process of this Python (the console script may not be on PATH)
EDGE_CLI = [sys.executable, "-c", "import sys; from vsdmot.edge.cli import main; sys.exit(main(sys.argv[1:]))"]


def frames(n=24, size=64):
    """Real PETS09 frames, resized to (size, size) BGR uint8."""
    cap = cv2.VideoCapture(str(DATA / "PETS09-S2L1" / "PETS09-S2L1.avi"))
    out = []
    while len(out) < n:
        ok, img = cap.read()
        if not ok:
            break
        out.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
    cap.release()
    if len(out) < n:
        pytest.skip("needs ../shared/data/PETS09-S2L1")
    return out


# ---- recorded sysfs trees (edge/clocks.py, edge/doctor_cmd.py) ----


def write(root: Path, rel: str, text: str) -> None:
    """`text` and a newline into root/rel, as sysfs files end."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def jetson_tree(root: Path, cpu_khz=(1510400, 729600), gpu_hz=306000000, temps=(("cpu-thermal", 52250),)) -> Path:
    """An Orin Nano's clock and thermal files (two cores, the ga10b GPU and a VIC, one disabled sensor)."""
    write(root, "proc/cpuinfo", "processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n")
    for i, khz in enumerate(cpu_khz):
        base = f"sys/devices/system/cpu/cpu{i}/cpufreq"
        write(root, f"{base}/scaling_cur_freq", str(khz))
        write(root, f"{base}/cpuinfo_max_freq", "1728000")
        write(root, f"{base}/scaling_governor", "schedutil")
    write(root, "sys/class/devfreq/17000000.ga10b/device/of_node/name", "ga10b")
    write(root, "sys/class/devfreq/17000000.ga10b/cur_freq", str(gpu_hz))
    write(root, "sys/class/devfreq/17000000.ga10b/max_freq", "1020000000")
    write(root, "sys/class/devfreq/15340000.vic/device/of_node/name", "vic")  # not the GPU
    write(root, "sys/class/devfreq/15340000.vic/cur_freq", "115200000")
    for i, (kind, milli) in enumerate(temps):
        write(root, f"sys/class/thermal/thermal_zone{i}/type", kind)
        write(root, f"sys/class/thermal/thermal_zone{i}/temp", str(milli))
    write(root, f"sys/class/thermal/thermal_zone{len(temps)}/type", "PMIC-Die")
    write(root, f"sys/class/thermal/thermal_zone{len(temps)}/temp", "-256000")  # a disabled sensor
    return root
