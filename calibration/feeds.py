"""Calibration and evaluation feeds: sequences of `{input name: ndarray}`, one per network.

A feed sequence is lazy (`len` and indexing, converting one frame at a time), so 500 detector
frames never sit in memory as float32. The same feeds drive ONNX Runtime calibration, parity
checks, distillation and the legacy TensorRT calibrator.

- `DetectorFeeds(frames, size)`: `images` (1, 3, H, W) float32 BGR 0..255 (size S or (H, W)),
  letterboxed top-left with pad 114, exactly as `runtime/yolox.py` prepares frames.
- `StudentFeeds(frames, size)`: `image` (1, 3, R, R) float32 BGR 0..255, plain INTER_AREA resize.
- `record_feeds(pipeline_step, frames, backends)`: inputs of every network as the real pipeline
  feeds them (the tracker's proposals and carried track state included), recorded by wrapping
  each backend's `infer`. This is how the tracker gets real calibration data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import cv2
import numpy as np

from vsdmot.runtime.yolox import input_hw

from .calibset import letterbox_u8

Feed = dict[str, np.ndarray]


class Images(Protocol):
    """Anything with len() and image(i) -> (h, w, 3) uint8 BGR (a CalibSet, or ImageList)."""

    def __len__(self) -> int: ...

    def image(self, i: int) -> np.ndarray: ...


class ImageList:
    """A list of BGR frames with the `Images` interface."""

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]


class _Feeds(Sequence):
    name = ""

    def __init__(self, frames: Images, size: int | tuple[int, int]):
        if min(np.atleast_1d(size)) < 8:
            raise ValueError(f"{type(self).__name__}: size expected >= 8, got {size}")
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return {self.name: self.convert(self.frames.image(i % len(self)))}

    def convert(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DetectorFeeds(_Feeds):
    name = "images"

    def convert(self, image: np.ndarray) -> np.ndarray:
        hw = input_hw(self.size)
        boxed = image if image.shape[:2] == hw else letterbox_u8(image, hw)[0]
        return np.ascontiguousarray(boxed.transpose(2, 0, 1)[None], dtype=np.float32)


class StudentFeeds(_Feeds):
    name = "image"

    def convert(self, image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)


def with_name(feeds: _Feeds, name: str) -> _Feeds:
    """The same feeds under another input name (a network whose input is not the default)."""
    feeds.name = name
    return feeds


def record_feeds(step: Callable[[np.ndarray], Any], frames: Iterable[np.ndarray],
                 backends: Mapping[str, Any]) -> dict[str, list[Feed]]:
    """Run `step(frame)` per frame with each named backend's `infer` wrapped to copy its inputs.

    `backends` maps a network name to a backend object (its `infer` is patched for the run and
    restored after). Returns {network name: [feed, ...]} in call order."""
    recorded: dict[str, list[Feed]] = {name: [] for name in backends}
    originals = {name: b.infer for name, b in backends.items()}
    own = {name: "infer" in vars(b) for name, b in backends.items()}  # patched before us?

    def wrap(name: str, infer):
        def recording(feed):
            recorded[name].append({k: np.array(v, copy=True) for k, v in feed.items()})
            return infer(feed)
        return recording

    try:
        for name, b in backends.items():
            b.infer = wrap(name, originals[name])
        for frame in frames:
            step(frame)
    finally:
        for name, b in backends.items():
            if own[name]:
                b.infer = originals[name]
            else:
                del b.infer
    return recorded


def check_feeds(feeds: Sequence[Feed], specs: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """ValueError unless every feed has exactly `specs`' names, shapes and dtypes."""
    for i, feed in enumerate(feeds):
        if set(feed) != set(specs):
            raise ValueError(f"feed {i}: expected inputs {sorted(specs)}, got {sorted(feed)}")
        for k, (shape, dtype) in specs.items():
            if tuple(feed[k].shape) != tuple(shape) or str(feed[k].dtype) != dtype:
                raise ValueError(f"feed {i} input {k}: expected {shape} {dtype}, got {feed[k].shape} {feed[k].dtype}")


__all__ = ["DetectorFeeds", "StudentFeeds", "ImageList", "record_feeds", "with_name", "check_feeds"]
