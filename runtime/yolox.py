"""YOLOX on any backend: letterbox, grid/stride decode of the official ONNX layout, NMS.

The official export (`decode_in_inference=False`) gives `output` (1, A, 5 + C): per anchor
`dx, dy, log w, log h` in stride units, then objectness and class probabilities (sigmoids already
applied). A = sum over strides s of (H / s) * (W / s), 3549 for 416x416 and strides 8/16/32.
The input `images` is (1, 3, H, W) float32 BGR 0..255, letterboxed top-left with pad 114, no
mean/std. H = W = 416 by default; a bundle exported with `--input-size WxH` matching the camera's
aspect (416x320 for 4:3, 416x256 for 16:9) spends no convolutions on padding rows.
This is the per-frame hot path: vectorised numpy, grids built once per (size, strides).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .backends import Backend
from .logs import log_once
from .types import Detections

log = logging.getLogger(__name__)

PAD_VALUE = 114  # letterbox fill, as YOLOX's preproc
STRIDES = (8, 16, 32)
Size = int | tuple[int, int]  # a detector input: S (square) or (H, W), px


def input_hw(size: Size) -> tuple[int, int]:
    """(H, W) of a detector input given as S or (H, W)."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    return int(h), int(w)


def size_text(size: Size) -> str:
    """'WxH', as cameras and `--input-size` spell it: (320, 416) -> '416x320'."""
    h, w = input_hw(size)
    return f"{w}x{h}"


def export_advice(size: Size, precision: str = "fp32") -> str:
    """The command that makes a bundle with this detector input, for a hint: an `--fp32` export takes
    seconds (7 s here for 832x480), an `--int8` one minutes (calibration and the accuracy gate), and
    INT8 pays off on TensorRT only (docs/export.md)."""
    return f"`vsdmot-export --{precision} --input-size {size_text(size)} --out DIR` (then --bundle DIR)"


def letterbox(image: np.ndarray, size: Size) -> tuple[np.ndarray, float]:
    """(h, w, 3) uint8 BGR -> ((1, 3, H, W) float32 BGR 0..255, scale); source px = letterbox px / scale."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"letterbox: expected an (H, W, 3) image, got shape {image.shape}")
    canvas, scale, _ = letterbox_image(image, size)
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, H, W)
    return np.ascontiguousarray(tensor), scale


def letterbox_image(image: np.ndarray, size: Size) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(h, w, 3) uint8 -> ((H, W, 3) uint8, the image scaled into its top left and padded with
    PAD_VALUE; scale; (h, w) of the scaled image). The one letterbox: the runtime's, the calibration
    set's and training's, so each sees the detector's input pixel for pixel."""
    (H, W), (h, w) = input_hw(size), image.shape[:2]
    scale = min(H / h, W / w)
    nh, nw = max(1, int(h * scale)), max(1, int(w * scale))  # truncated, as YOLOX's preproc
    canvas = np.full((H, W, 3), PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, (nh, nw)


@functools.lru_cache(maxsize=8)
def anchor_grid(size: Size, strides: tuple[int, ...] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(A, 2) float32 cell x, y and (A, 1) float32 stride, in the head's output order (row-major per level)."""
    (H, W), cells, steps = input_hw(size), [], []
    for s in strides:
        nh, nw = H // s, W // s
        yv, xv = np.meshgrid(np.arange(nh), np.arange(nw), indexing="ij")
        cells.append(np.stack([xv, yv], -1).reshape(-1, 2))
        steps.append(np.full((nh * nw, 1), s))
    grid, stride = np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)
    grid.setflags(write=False)
    stride.setflags(write=False)
    return grid, stride


def decode(raw: np.ndarray, size: Size, strides: tuple[int, ...] = STRIDES, *, class_id: int = 0,
           score_thr: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw head output (1, A, 5 + C) -> (xyxy (K, 4) letterbox px, score (K,), anchor index (K,)).

    score = objectness * P(class_id). Only anchors with score > score_thr are decoded (all by
    default), so the common case touches a few dozen rows instead of A.
    """
    out = raw[0] if raw.ndim == 3 else raw  # (A, 5 + C)
    grid, stride = anchor_grid(size, tuple(strides))
    if out.shape[0] != len(grid) or out.shape[1] <= 5 + class_id:
        raise ValueError(f"decode: expected ({len(grid)}, >{5 + class_id}) for input {size_text(size)} strides {strides}, "
                         f"got {out.shape}")
    score = out[:, 4] * out[:, 5 + class_id]  # (A,)
    idx = np.flatnonzero(score > score_thr)
    rows, s = out[idx], stride[idx]
    cxcy = (rows[:, :2] + grid[idx]) * s  # (K, 2) letterbox px
    half = np.exp(rows[:, 2:4]) * s / 2  # (K, 2) half width/height
    xyxy = np.concatenate([cxcy - half, cxcy + half], 1).astype(np.float32)
    return xyxy, score[idx].astype(np.float32), idx


def nms(xyxy: np.ndarray, score: np.ndarray, iou_thr: float) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first (OpenCV's NMSBoxes)."""
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(), 0.0, float(iou_thr))
    return np.asarray(keep, np.int64).reshape(-1)


def fitted_size(frame_hw: tuple[int, int], size: Size, stride: int = 32) -> tuple[int, int]:
    """The (H, W) input of the same longer side as `size` whose aspect is the frame's, each side
    rounded up to `stride`: 1920x1080 frames with a 416x416 input -> (256, 416)."""
    (fh, fw), side = frame_hw, max(input_hw(size))
    short = -(-side * min(fh, fw) // max(fh, fw) // stride) * stride  # ceil to the stride
    return (short, side) if fw >= fh else (side, short)


def padding_hint(frame_hw: tuple[int, int], size: Size, worth: float = 0.2, precision: str = "fp32") -> str | None:
    """A one-line suggestion when at least `worth` of each detector input is letterbox padding
    (convolutions spent on nothing), else None."""
    (H, W), (fh, fw) = input_hw(size), frame_hw
    scale = min(H / fh, W / fw)
    padded = 1.0 - int(fh * scale) * int(fw * scale) / (H * W)
    better = fitted_size(frame_hw, size)
    if padded < worth or better[0] * better[1] >= H * W:
        return None
    return (f"detector input {size_text(size)} on {fw}x{fh} frames: {padded:.0%} of each input is padding; a bundle "
            f"made by {export_advice(better, precision)} skips most of it (docs/export.md 'Input size')")


def shrink_warning(frame_hw: tuple[int, int], size: Size, worst: float = 0.9, precision: str = "fp32") -> str | None:
    """A one-line warning when a camera-shaped input shows these frames at under `worst` of the
    scale a square input of the same longer side would (a 16:9 bundle on 4:3 video: 0.82x,
    people smaller than the detector saw them in the gate), else None."""
    (H, W), (fh, fw) = input_hw(size), frame_hw
    scale, square = min(H / fh, W / fw), max(H, W) / max(fh, fw)
    if scale >= worst * square or scale >= 1.0:  # at full size or larger, a square input shows nothing more
        return None
    side = max(H, W)
    return (f"detector input {size_text(size)} is shaped for other frames: {fw}x{fh} frames are scaled to "
            f"{int(fw * scale)}x{int(fh * scale)}, {1 - scale / square:.0%} smaller than in a {side}x{side} input, "
            f"and small people are missed; use a bundle made by {export_advice(fitted_size(frame_hw, size), precision)}")


def detail_hint(frame_hw: tuple[int, int], size: Size, worst: float = 0.35, precision: str = "fp32") -> str | None:
    """A one-line suggestion when the detector sees the frames at under `worst` of their size
    (1920x1080 into a 416 input: 0.22x, a person 100 px tall becomes 22 px), else None. A larger
    input, twice the longer side in the frame's aspect (never past the frame's own size), finds
    more of the small people for more detector work: on MOT17's 1080p frames 832x480 found 2.1x
    as many pedestrians as 416x416 (docs/export.md 'Input size'). `worst` is a judgement: about a
    third, below the 0.54-0.65x of the 768x576 and 640x480 clips the kit is measured on."""
    (H, W), (fh, fw) = input_hw(size), frame_hw
    scale = min(H / fh, W / fw)
    bigger = detail_input(frame_hw, size, worst)
    if bigger is None:
        return None
    gain, work = min(bigger[0] / fh, bigger[1] / fw) / scale, bigger[0] * bigger[1] / (H * W)
    return (f"detector input {size_text(size)} shows {fw}x{fh} frames at {scale:.2f}x their size, so small people are "
            f"missed; a bundle made by {export_advice(bigger, precision)} shows them {gain:.1f}x larger for "
            f"{work:.1f}x the detector's work (docs/export.md 'Input size')")


def detail_input(frame_hw: tuple[int, int], size: Size, worst: float = 0.35) -> tuple[int, int] | None:
    """detail_hint's larger input (H, W), or None when the frames are shown at `worst` of their
    size or more, or the larger input would not show them at least 1.2x larger."""
    (H, W), (fh, fw) = input_hw(size), frame_hw
    scale = min(H / fh, W / fw)
    side = min(2 * max(H, W), -(-max(fh, fw) // 32) * 32)
    bigger = fitted_size(frame_hw, side)  # on a panorama (3072x576 into 416x416) also less work: 832x160
    if scale >= worst or min(bigger[0] / fh, bigger[1] / fw) < 1.2 * scale:
        return None
    return bigger


@dataclass(slots=True, frozen=True)
class YoloxConfig:
    input_size: tuple[int, int] = (416, 416)  # (H, W) letterbox, px
    score_thr: float = 0.1  # keep boxes with obj * cls above this (ByteTrack needs its 0.1 low band)
    nms_thr: float = 0.45  # IoU above which a lower-scored box is suppressed
    class_id: int = 0  # COCO person
    strides: tuple[int, ...] = STRIDES  # head strides, px


class YoloxDetector:
    """Image -> person Detections in source pixels, on any Backend with the official YOLOX layout.

    If the backend also gives `embed` (1, A, E), the kept anchors' rows become Detections.feature.
    """

    def __init__(self, backend: Backend, input_size: Size = 416, score_thr: float = 0.1,
                 nms_thr: float = 0.45, class_id: int = 0, strides: tuple[int, ...] = STRIDES):
        self.backend = backend
        self.config = YoloxConfig(input_hw(input_size), score_thr, nms_thr, class_id, tuple(strides))
        self.input_name = next(iter(backend.inputs))
        self.output_name = "output" if "output" in backend.outputs else next(iter(backend.outputs))
        self.has_embed = "embed" in backend.outputs
        anchor_grid(self.config.input_size, self.config.strides)  # build once, here
        self._frame_hw: tuple[int, ...] = ()  # last frame size seen: the padding hint is logged once per size

    def detect(self, image: np.ndarray) -> Detections:
        c = self.config
        if self._frame_hw != image.shape[:2]:  # first frame, or the source changed size
            self._advise(image.shape[:2])
        tensor, scale = letterbox(image, c.input_size)
        out = self.backend.infer({self.input_name: tensor})
        xyxy, score, anchor = decode(out[self.output_name], c.input_size, c.strides,
                                     class_id=c.class_id, score_thr=c.score_thr)
        keep = nms(xyxy, score, c.nms_thr)
        h, w = image.shape[:2]
        boxes = np.clip(xyxy[keep] / scale, 0, [w, h, w, h]).astype(np.float32)  # (N, 4) source px
        feature = out["embed"][0, anchor[keep]] if self.has_embed else None  # (N, E)
        return Detections(boxes, score[keep], feature=feature)

    def _advise(self, frame_hw: tuple[int, ...]) -> None:
        """Per new frame size: warn when this input shrinks the frames, else hint when it is mostly padding;
        and hint when it shows the frames at a fraction of their size."""
        self._frame_hw, size = frame_hw, self.config.input_size
        precision = "int8" if getattr(self.backend, "kind", "") == "tensorrt" else "fp32"  # INT8 is slower on a CPU
        bigger = detail_input(frame_hw, size)
        cheaper = bigger is not None and bigger[0] * bigger[1] <= size[0] * size[1]  # larger people for less work
        if warning := shrink_warning(frame_hw, size, precision=precision):
            log_once(log.name, logging.WARNING, warning)
        elif not cheaper and (hint := padding_hint(frame_hw, size, precision=precision)):  # a cut keeping people tiny
            log_once(log.name, logging.INFO, hint)
        if hint := detail_hint(frame_hw, size, precision=precision):
            log_once(log.name, logging.INFO, hint)

