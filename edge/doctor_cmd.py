"""Say what this device has and what that means: `vsdmot-edge doctor [--json]`.

Each line is a check: a status mark, what was found, and what it means for running the tracker.
    ok  present and usable       --  absent; the kit works without it (with the stated cost)
    !!  absent or broken in a way the user should fix for their setup
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

# L4T major.minor -> JetPack (NVIDIA's release table); the L4T release file gives R<major>, REVISION <minor>.
JETPACK = {"32.7": "4.6.x", "32.6": "4.6", "32.5": "4.5", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1",
           "35.4": "5.1.2", "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2"}


@dataclass(frozen=True)
class Check:
    """One finding."""

    name: str  # what was checked, e.g. "TensorRT"
    status: str  # "ok", "--" (absent, fine) or "!!" (needs attention)
    found: str  # what is there
    meaning: str  # what that means for the user

    def line(self) -> str:
        return f"[{self.status}] {self.name}: {self.found}\n       -> {self.meaning}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return ""


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is as good as absent here
        return None
    return str(getattr(mod, "__version__", "") or "installed")


def _import_error(module: str) -> str | None:
    """Why an installed `module` fails to import (a missing libnvinfer.so behind the tensorrt
    wheel), else None: not installed, or it imports."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the import raised is the finding
        return f"{type(e).__name__}: {e}"
    return None


def parse_l4t_release(text: str) -> tuple[str, str] | None:
    """'# R35 (release), REVISION: 4.1, ...' -> ("35.4.1", JetPack guess)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None
    l4t = f"{m[1]}.{m[2]}"
    return l4t, JETPACK.get(".".join(l4t.split(".")[:2]), "unknown (newer than this table)")


def check_l4t(root: Path) -> Check:
    model = _read(root / "proc/device-tree/model")
    release = parse_l4t_release(_read(root / "etc/nv_tegra_release"))
    pkg = _dpkg_version("nvidia-l4t-core") if root == Path("/") else None
    if release is None and pkg is None:
        return Check("Jetson / L4T", "--", f"not a Jetson ({platform.machine()}, {model or 'no device-tree model'})",
                     "no JetPack here: TensorRT engines, INA3221 power rails and CSI cameras are Jetson-only; "
                     "the tracker runs on onnxruntime CPU")
    l4t, jp = release or (pkg, JETPACK.get(".".join((pkg or "").split(".")[:2]), "unknown"))
    return Check("Jetson / L4T", "ok", f"{model or 'Jetson'}, L4T {l4t} (nvidia-l4t-core {pkg or '?'}), JetPack {jp}",
                 "use JetPack's TensorRT, torch and OpenCV; build engines on this device (docs/jetson.md)")


def _dpkg_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_tensorrt() -> Check:
    v = _version("tensorrt")
    builder = v is not None and hasattr(importlib.import_module("tensorrt"), "Builder")
    if v and builder:
        return _typed_tensorrt(importlib.import_module("tensorrt"), v) or Check(
            "TensorRT", "ok", f"tensorrt {v}", "--backend tensorrt builds engines here and caches them")
    if v:
        return Check("TensorRT", "!!", f"tensorrt {v} without a Builder (a lean/stub wheel)",
                     "cannot build engines: install JetPack's python3-libnvinfer (or the full TensorRT)")
    if err := _import_error("tensorrt"):
        return Check("TensorRT", "!!", f"tensorrt installed but does not import ({err})",
                     "backend auto falls back to onnxruntime: check that JetPack's libnvinfer matches the wheel "
                     "(dpkg -l | grep nvinfer) and that its folder is on the loader path")
    return Check("TensorRT", "--", "not installed", "backend auto falls back to onnxruntime; no INT8/FP16 engines")


def _typed_tensorrt(trt, version: str) -> Check | None:
    """TensorRT 11 (strong typing only) builds FP16 engines only from an FP16-rewritten ONNX: say
    whether ModelOpt AutoCast is there to do it (runtime.backends.typed_precision)."""
    from vsdmot.runtime.backends import fp16_autocast, strongly_typed

    if not strongly_typed(trt):
        return None
    if fp16_autocast() is not None:
        return Check("TensorRT", "ok", f"tensorrt {version}, strongly typed; ModelOpt AutoCast installed",
                     "--backend tensorrt builds FP16/INT8 engines here (float layers rewritten to FP16 by AutoCast)")
    return Check("TensorRT", "!!", f"tensorrt {version}, strongly typed; ModelOpt AutoCast not installed",
                 "engines build FP32 (Q/DQ layers INT8): pip install nvidia-modelopt[onnx] for FP16")


def check_cuda(root: Path) -> Check:
    ver = _read(root / "usr/local/cuda/version.txt") or _cuda_json(root)
    lib = ctypes.util.find_library("cudart")
    py = [n for n, m in (("cuda-python", "cuda"), ("pycuda", "pycuda")) if _version(m)]
    found = f"toolkit {ver or 'absent'}, libcudart {'found' if lib else 'absent'}, python: {', '.join(py) or 'none'}"
    if not (ver or lib) or not _gpu_nodes(root):
        return Check("CUDA", "--", found, "no CUDA GPU to use: CPU inference only (expected on a build or CI machine)")
    status = "ok" if py else "!!"
    meaning = "TensorRT inference can allocate device buffers" if py else \
        "install cuda-python (pip install cuda-python) or pycuda: the TensorRT backend needs one of them"
    return Check("CUDA", status, found, meaning)


def _cuda_json(root: Path) -> str:
    text = _read(root / "usr/local/cuda/version.json")
    m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', text)
    return m[1] if m else ""


def _gpu_nodes(root: Path) -> list[str]:
    nodes = [p.name for p in sorted((root / "dev").glob("nvhost-gpu")) + sorted((root / "dev").glob("nvidia[0-9]*"))]
    return nodes + (["nvgpu/"] if (root / "dev/nvgpu").is_dir() else [])


def check_gpu(root: Path) -> Check:
    nodes = _gpu_nodes(root)
    if not nodes:
        return Check("GPU", "--", "no NVIDIA GPU device nodes (/dev/nvhost-gpu, /dev/nvgpu, /dev/nvidia*)",
                     "no GPU: inference runs on the CPU; FPS will be far below a Jetson's")
    return Check("GPU", "ok", ", ".join(nodes), "the service needs the 'render'/'video' groups to open these")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime as ort
    except ImportError:
        return Check("onnxruntime", "!!", "not installed", "install it (on a Jetson: NVIDIA's Jetson Zoo wheel)")
    providers = ort.get_available_providers()
    gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    meaning = (f"GPU execution through {', '.join(gpu)}" if gpu else "CPU execution only (CPUExecutionProvider): "
               "use an FP32 bundle, INT8 bundles run slower than FP32 there (runtime/cpu.py)")
    return Check("onnxruntime", "ok", f"{ort.__version__}: {', '.join(providers)}", meaning)


def check_opencv() -> Check:
    try:
        import cv2
    except ImportError:
        return Check("OpenCV", "!!", "not installed", "no video decoding: install opencv (JetPack's on a Jetson)")
    info = cv2.getBuildInformation()
    gst = re.search(r"GStreamer:\s*(\w+)", info)
    has = bool(gst and gst[1].upper() == "YES")
    meaning = ("CSI cameras (csi://N via nvarguscamerasrc) work; RTSP still decodes through FFmpeg on the CPU"
               if has else "no GStreamer: USB cameras, files and RTSP (FFmpeg) work; CSI cameras need JetPack's "
               "OpenCV (apt install nvidia-opencv, then a venv with --system-site-packages)")
    return Check("OpenCV", "ok" if has else "--", f"{cv2.__version__}, GStreamer {'yes' if has else 'no'}", meaning)


def check_ffmpeg() -> Check:
    """The ffmpeg and ffprobe programs: interlaced files (a DVR's .ts) are probed by ffprobe and
    decoded by ffmpeg with yadif (runtime/ffmpeg_capture.py); OpenCV alone gave frozen or black frames."""
    have = [name for name in ("ffmpeg", "ffprobe") if shutil.which(name)]
    if len(have) == 2:
        return Check("ffmpeg", "ok", "ffmpeg and ffprobe on PATH", "interlaced video is deinterlaced on decode")
    missing = sorted({"ffmpeg", "ffprobe"} - set(have))
    return Check("ffmpeg", "--", f"{' and '.join(missing)} not on PATH",
                 "interlaced files open through OpenCV with a warning (frozen or black frames): apt install ffmpeg")


def check_cameras(root: Path) -> Check:
    devs = sorted((root / "dev").glob("video*"))
    if not devs:
        return Check("cameras", "--", "no /dev/video*",
                     "no V4L2 camera: use --source FILE or an RTSP URL (or plug a camera, check `dmesg`)")
    names = [f"{d.name} ({_read(root / 'sys/class/video4linux' / d.name / 'name') or '?'})" for d in devs]
    access = os.access(devs[0], os.R_OK | os.W_OK)
    meaning = "readable by you" if access else "not readable by you: add yourself to 'video' (the service user is)"
    return Check("cameras", "ok" if access else "!!", ", ".join(names), meaning)


def check_jtop(root: Path) -> Check:
    v = _version("jtop")
    sock = (root / "run/jtop.sock").exists()
    if sock and v:
        return Check("jtop", "ok", f"jetson-stats {v}, service socket /run/jtop.sock", "power via jtop in profile and /metrics")
    found = f"jetson-stats {v or 'not installed'}, {'socket present' if sock else 'no /run/jtop.sock (service not running)'}"
    return Check("jtop", "--", found, "no jtop power: the INA3221 rails are read from sysfs directly if present")


def check_power(root: Path) -> Check:
    from .power import find_ina3221_rails, open_meter

    rails = find_ina3221_rails(root)
    if root == Path("/"):
        probe = open_meter()
        meaning = probe.explain()
    else:
        meaning = "power meter: ina3221" if rails else "no power meter: energy is not reported"
    found = ", ".join(r.name for r in rails) or "no INA3221 rails in sysfs"
    metered = "no power meter" not in meaning
    return Check("power", "ok" if metered else "--", found, meaning)


def check_clocks(root: Path) -> Check:
    """Power mode, governor, clocks and the hottest zone now (idle: the clocks are the governor's
    idle choice, so only a benchmark's reading under load says whether they held; profile does)."""
    from .clocks import hottest, read_state

    s = read_state(root)
    parts = [f"power mode {s.power_mode}" if s.power_mode else "", f"governor {s.governor}" if s.governor else ""]
    for name, c in (("CPU", s.cpu), ("GPU", s.gpu)):
        if c is not None:
            parts.append(f"{name} {c.cur_mhz:.0f}" + (f" of {c.max_mhz:.0f}" if c.max_mhz else "") + " MHz")
    if s.temps_c:
        parts.append(f"hottest {hottest(s.temps_c)}")
    found = ", ".join(p for p in parts if p) or "no clocks exposed"
    if s.power_mode:
        meaning = "profile records these with its figures; `sudo nvpmodel -m 0` (MAXN) and `sudo jetson_clocks` for a benchmark"
    else:
        meaning = "profile records the clocks and temperatures this machine exposes with its figures"
    return Check("clocks", "ok" if s.cpu is not None else "--", found, meaning)


def check_systemd() -> Check:
    running = Path("/run/systemd/system").is_dir()
    found = "running (PID 1)" if running else "not running here"
    meaning = "`vsdmot-edge service install` can install and start the service" if running else \
        "the service cannot run here; `service unit` and `service install --root DIR` still work"
    return Check("systemd", "ok" if running else "--", found, meaning)


def check_service(root: Path) -> Check:
    """Is the service installed, and do its user and device groups exist?"""
    import grp
    import pwd

    units = sorted({u.name for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
                    for u in (root / d).glob("*.service") if _ours(u)})  # one per camera: --name cam1, cam2
    missing = [g for g in ("video", "render") if not _exists(grp.getgrnam, g)]
    user = _exists(pwd.getpwnam, "vsdmot")
    found = f"units {', '.join(units) if units else 'not installed'}, user vsdmot {'exists' if user else 'absent'}, " \
            f"groups missing: {', '.join(missing) or 'none'}"
    if not units:
        meaning = "install with `sudo vsdmot-edge service install` (docs/jetson.md, section 4)"
    elif not user or missing:
        meaning = "run `sudo systemd-sysusers` (the install's sysusers.d entry creates the user and groups)"
    else:
        meaning = "installed; `vsdmot-edge service status` shows its state"
    return Check("service", "ok" if units and user and not missing else "--", found, meaning)


def _ours(unit: Path) -> bool:
    """A unit `vsdmot-edge service unit` made (its header says so), whatever --name it was given."""
    try:
        return "Generated by `vsdmot-edge service unit`" in unit.read_text(errors="replace")[:400]
    except OSError:
        return False


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


DEVICE_GLOBS = ("dev/nvhost-*", "dev/nvmap", "dev/nvgpu/*/*", "dev/nvidia*", "dev/dri/renderD*", "dev/video*", "dev/media*")


def char_groups(proc_devices: str) -> dict[int, str]:
    """/proc/devices' "Character devices:" table -> {major: group name}."""
    out, in_char = {}, False
    for line in proc_devices.splitlines():
        if line.strip().endswith("devices:"):
            in_char = line.startswith("Character")
            continue
        parts = line.split()
        if in_char and len(parts) == 2 and parts[0].isdigit():
            out.setdefault(int(parts[0]), parts[1])
    return out


def refused_by_unit(nodes: dict[str, str]) -> list[str]:
    """Device nodes {"/dev/x": char group} that the unit's DevicePolicy=closed + DeviceAllow= refuse."""
    import fnmatch

    from .unit import DEVICE_RULES

    def allowed(path: str, group: str) -> bool:
        return any(spec == path or (spec.startswith("char-") and fnmatch.fnmatchcase(group, spec[5:]))
                   for spec, _ in DEVICE_RULES)

    return sorted(f"{p} ({g})" for p, g in nodes.items() if not allowed(p, g))


def check_device_policy(root: Path) -> Check:
    """Would the generated unit let the service open this device's GPU and camera nodes?"""
    import stat

    groups = char_groups(_read(root / "proc/devices"))
    nodes = {}
    for pattern in DEVICE_GLOBS:
        for node in sorted(root.glob(pattern)):
            st = node.stat()
            if stat.S_ISCHR(st.st_mode):
                nodes["/" + str(node.relative_to(root))] = groups.get(os.major(st.st_rdev), "?")
    if not nodes:
        return Check("unit devices", "--", "no GPU or camera device nodes here", "nothing to check against the unit")
    refused = refused_by_unit(nodes)
    if refused:
        return Check("unit devices", "!!", f"refused by the unit: {', '.join(refused)}",
                     "add them with `systemctl edit vsdmot-edge` ([Service] DeviceAllow=/dev/NODE rw) and report it")
    return Check("unit devices", "ok", f"{len(nodes)} GPU/camera nodes, all allowed by the unit's DeviceAllow=",
                 "the hardened service can open the GPU and cameras")


PROBES: tuple[Callable[..., Check], ...] = (check_l4t, check_tensorrt, check_cuda, check_gpu, check_onnxruntime,
                                            check_opencv, check_ffmpeg, check_cameras, check_jtop, check_power, check_clocks,
                                            check_systemd, check_service, check_device_policy)


def diagnose(root: Path = Path("/")) -> list[Check]:
    """Every probe, in order. `root` lets tests point the file-system probes at a recorded tree."""
    needs_root = {"check_l4t", "check_cuda", "check_gpu", "check_cameras", "check_jtop",
                  "check_power", "check_clocks", "check_service", "check_device_policy"}
    return [p(root) if p.__name__ in needs_root else p() for p in PROBES]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)  # a recorded tree, for tests


def run(args: argparse.Namespace) -> int:
    checks = diagnose(Path(args.root))
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 0
    print(f"vsdmot-edge doctor: {platform.node()} {platform.machine()}, Python {sys.version.split()[0]}")
    for c in checks:
        print(c.line())
    return 0
