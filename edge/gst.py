"""CSI cameras on Jetson through GStreamer: pipeline text, the OpenCV capability check, open.

`csi://N` means `nvarguscamerasrc sensor-id=N`. The frames leave NVMM memory through
`nvvidconv` as BGRx and `videoconvert` makes the BGR that OpenCV's appsink hands over. The
appsink drops old buffers (`drop=1 max-buffers=1`) so a slow loop always sees the newest frame.

This needs an OpenCV built with GStreamer, as JetPack's is. pip's `opencv-python(-headless)`
wheels are built without it and, installed on a Jetson, they shadow JetPack's build.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import cv2

from vsdmot.runtime.errors import SourceError

log = logging.getLogger(__name__)

CSI_DEFAULT = (1280, 720, 30.0)  # width, height, fps when the options leave them at 0


@dataclass(frozen=True)
class CsiSpec:
    sensor_id: int  # nvarguscamerasrc sensor-id (the N of csi://N)
    width: int  # capture and output width in pixels
    height: int  # capture and output height in pixels
    fps: float  # frames per second requested from the sensor
    flip_method: int = 0  # nvvidconv flip-method (0 none, 2 rotate 180, ...)


def parse_csi(camera: str) -> int:
    """`csi://N` -> N; anything else raises ValueError."""
    m = re.fullmatch(r"csi://(\d+)", camera.strip())
    if not m:
        raise ValueError(f"camera: expected csi://N (N = sensor id, e.g. csi://0), got {camera!r}")
    return int(m.group(1))


def csi_pipeline(spec: CsiSpec) -> str:
    """The GStreamer pipeline OpenCV opens with CAP_GSTREAMER."""
    num, den = _fraction(spec.fps)
    return (
        f"nvarguscamerasrc sensor-id={spec.sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={spec.width},height={spec.height},framerate={num}/{den},format=NV12 ! "
        f"nvvidconv flip-method={spec.flip_method} ! "
        f"video/x-raw,width={spec.width},height={spec.height},format=BGRx ! "
        "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false"
    )


def _fraction(fps: float) -> tuple[int, int]:
    """29.97 -> (2997, 100); GStreamer caps want a fraction."""
    if abs(fps - round(fps)) < 1e-6:
        return int(round(fps)), 1
    return int(round(fps * 100)), 100


def has_gstreamer(build_info: str | None = None) -> bool:
    """Whether this OpenCV was built with the GStreamer video I/O backend."""
    info = cv2.getBuildInformation() if build_info is None else build_info
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return bool(m) and m.group(1).upper() not in ("NO", "OFF")


def require_gstreamer(camera: str, build_info: str | None = None) -> None:
    """Raise SourceError explaining what to install when OpenCV lacks GStreamer."""
    if has_gstreamer(build_info):
        return
    raise SourceError(
        f"camera {camera}: CSI cameras need OpenCV built with GStreamer, and this OpenCV "
        f"({cv2.__version__}, {cv2.__file__}) has none. On a Jetson, use JetPack's OpenCV "
        "(apt install nvidia-opencv) and uninstall pip's opencv-python(-headless), "
        "which shadows it; or use a V4L2 camera (--camera /dev/videoN)."
    )


def open_csi(spec: CsiSpec) -> cv2.VideoCapture:
    """Open the CSI pipeline; SourceError when it does not start."""
    camera = f"csi://{spec.sensor_id}"
    require_gstreamer(camera)
    pipeline = csi_pipeline(spec)
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"camera {camera}: the GStreamer pipeline did not start (is the sensor connected and "
            f"nvargus-daemon running? `systemctl status nvargus-daemon`): {pipeline}"
        )
    log.info("camera %s: %s", camera, pipeline)
    return cap
