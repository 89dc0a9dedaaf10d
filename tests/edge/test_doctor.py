"""`vsdmot-edge doctor`: honest about this machine (no GPU, TensorRT, jtop or meter), and right about
a Jetson-shaped file tree (L4T release file, device nodes, recorded INA3221 rails)."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from vsdmot.edge import doctor_cmd as D
from vsdmot.edge.cli import main

SYSFS = Path(__file__).parent / "data" / "sysfs"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025",
         ("36.4.3", "6.1/6.2")),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023",
         ("35.4.1", "5.1.2")),
        ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022",
         ("32.7.1", "4.6.x")),
        ("# R38 (release), REVISION: 2.0", ("38.2.0", "unknown (newer than this table)")),
        ("garbage", None),
    ],
)
def test_parse_l4t_release(text, expected):
    assert D.parse_l4t_release(text) == expected


def test_doctor_here_is_honest(capsys):
    """This machine has no GPU, no TensorRT, no jtop service and no power meter; doctor says so."""
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("running on a Jetson")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    checks = {c.name: c for c in D.diagnose()}
    assert checks["Jetson / L4T"].status == "--" and "not a Jetson" in checks["Jetson / L4T"].found
    assert checks["TensorRT"].status in ("--", "!!")  # absent, or a lean wheel without a Builder
    assert checks["GPU"].status == "--" and "no GPU" in checks["GPU"].meaning
    assert checks["jtop"].status == "--" and "no /run/jtop.sock" in checks["jtop"].found
    assert checks["power"].status == "--" and "no power meter" in checks["power"].meaning
    assert "CPUExecutionProvider" in checks["onnxruntime"].found
    assert "GStreamer" in checks["OpenCV"].found
    for c in checks.values():
        assert c.meaning and f"{c.name}: " in out  # every line says what it means


def test_doctor_json(capsys):
    assert main(["doctor", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"TensorRT", "CUDA", "cameras", "power", "jtop", "OpenCV"}
    assert all(r["status"] in ("ok", "--", "!!") for r in rows)


@pytest.fixture
def orin_tree(tmp_path) -> Path:
    """A Jetson Orin Nano's files as doctor reads them (device nodes as plain files)."""
    root = tmp_path / "orin"
    shutil.copytree(SYSFS / "jp6_orin_nano", root, symlinks=True)
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0")
    (root / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                                       "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\n")
    (root / "dev").mkdir()
    for node in ("video0", "nvhost-gpu", "nvmap"):
        (root / "dev" / node).write_text("")
    (root / "sys/class/video4linux/video0").mkdir(parents=True)
    (root / "sys/class/video4linux/video0/name").write_text("vi-output, imx219 9-0010\n")
    (root / "run").mkdir()
    (root / "run/jtop.sock").write_text("")
    return root


def test_doctor_on_a_jetson_tree(orin_tree):
    checks = {c.name: c for c in D.diagnose(orin_tree)}
    l4t = checks["Jetson / L4T"]
    assert l4t.status == "ok" and "L4T 36.4.3" in l4t.found and "JetPack 6.1/6.2" in l4t.found and "Orin Nano" in l4t.found
    assert checks["GPU"].status == "ok" and "nvhost-gpu" in checks["GPU"].found
    assert "video0 (vi-output, imx219 9-0010)" in checks["cameras"].found
    assert checks["power"].found == "VDD_IN, VDD_CPU_GPU_CV, VDD_SOC" and checks["power"].status == "ok"
    assert "socket /run/jtop.sock" in checks["jtop"].found or checks["jtop"].status == "--"  # needs jetson-stats too
    assert "not installed" in checks["service"].found
    assert checks["clocks"].found == "no clocks exposed" and checks["clocks"].status == "--"  # not recorded here


def test_doctor_reads_clocks_from_a_recorded_jetson(tmp_path):
    from helpers import jetson_tree

    clocks = {c.name: c for c in D.diagnose(jetson_tree(tmp_path))}["clocks"]
    assert clocks.status == "ok"
    assert clocks.found == "governor schedutil, CPU 1120 of 1728 MHz, GPU 306 of 1020 MHz, hottest cpu-thermal 52 C"


def test_doctor_sees_every_installed_unit(orin_tree):
    """One unit per camera (--name cam2): doctor looked for vsdmot-edge.service only."""
    for name in ("vsdmot-edge", "cam2"):
        assert main(["service", "install", "--root", str(orin_tree), "--name", name, "--exec", shutil.which("true")]) == 0
    (orin_tree / "usr/lib/systemd/system/other.service").write_text("[Service]\nExecStart=/bin/true\n")
    service = {c.name: c for c in D.diagnose(orin_tree)}["service"]
    assert "units cam2.service, vsdmot-edge.service," in service.found


PROC_DEVICES = """Character devices:
  1 mem
 10 misc
 81 video4linux
226 drm
232 nvhost
233 nvhost-ctrl-gpu
234 nvhost-gpu
239 media
500 nvgpu-ctrl
501 mystery-dev

Block devices:
  7 loop
 81 notachar
"""


def test_char_groups():
    groups = D.char_groups(PROC_DEVICES)
    assert groups[81] == "video4linux" and groups[10] == "misc" and groups[501] == "mystery-dev"
    assert 7 not in groups  # block devices are not char groups


@pytest.mark.parametrize(
    "nodes, refused",
    [
        ({"/dev/nvhost-gpu": "nvhost-gpu", "/dev/nvhost-ctrl-gpu": "nvhost-ctrl-gpu", "/dev/nvmap": "misc",
          "/dev/video0": "video4linux", "/dev/dri/renderD128": "drm", "/dev/media0": "media",
          "/dev/nvgpu/igpu0/ctrl": "nvgpu-ctrl", "/dev/nvidia0": "nvidia-frontend"}, []),
        ({"/dev/nvhost-vic": "nvhost"}, []),  # one group for all channels on some L4T kernels
        ({"/dev/nvhost-vic": "misc"}, ["/dev/nvhost-vic (misc)"]),  # a misc nvhost node is not covered by its group
        ({"/dev/weird": "mystery-dev"}, ["/dev/weird (mystery-dev)"]),
    ],
)
def test_refused_by_unit(nodes, refused):
    assert D.refused_by_unit(nodes) == refused


def test_device_policy_on_real_device_nodes(tmp_path):
    """Real character-device nodes made with mknod (root only) in a scratch tree."""
    import os

    (tmp_path / "dev").mkdir()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/devices").write_text(PROC_DEVICES)
    try:
        os.mknod(tmp_path / "dev/video0", 0o600 | 0o020000, os.makedev(81, 0))
        os.mknod(tmp_path / "dev/nvhost-gpu", 0o600 | 0o020000, os.makedev(234, 0))
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")
    check = D.check_device_policy(tmp_path)
    assert check.status == "ok" and check.found.startswith("2 GPU/camera nodes")
    os.mknod(tmp_path / "dev/nvidia-odd", 0o600 | 0o020000, os.makedev(501, 0))
    check = D.check_device_policy(tmp_path)
    assert check.status == "!!" and "/dev/nvidia-odd (mystery-dev)" in check.found


@pytest.mark.parametrize("autocast,status,says", [(None, "!!", "nvidia-modelopt"), (object(), "ok", "AutoCast installed")])
def test_doctor_on_strongly_typed_tensorrt(monkeypatch, autocast, status, says):
    """TensorRT 11 has no FP16 builder flag: without ModelOpt AutoCast its engines are FP32, and
    doctor says so before a run is slower than the user expects."""
    from vsdmot.runtime import backends

    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.Builder, trt.BuilderFlag = "11.0.0", object, types.SimpleNamespace(DEBUG=0)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(D, "_version", lambda name: trt.__version__ if name == "tensorrt" else None)
    monkeypatch.setattr(backends, "fp16_autocast", lambda: autocast)
    check = D.check_tensorrt()
    assert check.status == status and says in check.found + check.meaning


def test_doctor_names_a_tensorrt_that_is_installed_but_does_not_import(monkeypatch, tmp_path):
    """A tensorrt wheel whose libnvinfer is missing was reported 'not installed': the one case
    doctor is there to explain."""
    pkg = tmp_path / "tensorrt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    check = D.check_tensorrt()
    assert check.status == "!!" and "does not import" in check.found and "libnvinfer.so.10" in check.found
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)  # absent: as before
    assert D.check_tensorrt().found == "not installed"


def test_doctor_names_a_missing_ffmpeg(monkeypatch):
    """Interlaced files decode through ffmpeg (yadif); without it they open with frozen or black frames."""
    monkeypatch.setattr(D.shutil, "which", lambda name: None if name == "ffprobe" else "/usr/bin/" + name)
    check = D.check_ffmpeg()
    assert check.status == "--" and check.found == "ffprobe not on PATH" and "apt install ffmpeg" in check.meaning
