"""The semantic policy: when the student encoder runs, when its last vector is reused, when skipped.

    never   no semantics: every frame is "skipped"
    always  the student runs on every frame: "fresh"
    auto    off while the DSWR weight w is small, with hysteresis (off below eps_off, on again only
            at eps_on) so that w hovering near the threshold does not flap; while on, the cached
            vector is "reused" as long as quality is stable (|q - q_cached| < delta) and the
            vector is younger than max_age frames, else the student runs ("fresh")

The student sees a small resize of the frame: its ONNX input is (1, 3, R, R) float32 BGR 0..255,
normalisation inside the network, output (1, D) float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .backends import Backend
from .config import SemanticsConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SemanticCounts:
    fresh: int = 0  # frames where the student ran
    reused: int = 0  # frames that used the cached vector
    skipped: int = 0  # frames with no semantics at all

    def as_dict(self) -> dict[str, int]:
        return {"fresh": self.fresh, "reused": self.reused, "skipped": self.skipped}


@dataclass(slots=True)
class _Cache:
    vector: np.ndarray | None = None  # (1, D) float32
    q: float = 0.0  # frame quality when the vector was computed
    age: int = 0  # frames since it was computed
    on: bool = False  # auto's hysteresis state


class Student:
    """The student encoder behind a backend: frame in, (1, D) semantic vector out."""

    def __init__(self, backend: Backend):
        (self.input_name, spec), = backend.inputs.items()
        if len(spec.shape) != 4 or spec.shape[1] != 3 or spec.shape[2] <= 0 or spec.shape[3] <= 0:
            raise ValueError(f"student input '{spec.name}': expected a static (1, 3, R, R), got {spec.shape}")
        self.size = (int(spec.shape[3]), int(spec.shape[2]))  # (width, height) for cv2.resize
        self.output_name = "semantic" if "semantic" in backend.outputs else next(iter(backend.outputs))
        self.backend = backend

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.backend.infer({self.input_name: student_input(image, self.size)})[self.output_name].reshape(1, -1)


def student_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (1, 3, h, w) float32 0..255 for size (w, h): a plain INTER_AREA resize,
    the one preprocessing of the student (runtime, export's feeds and training)."""
    small = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)  # (h, w, 3)
    return np.ascontiguousarray(small.transpose(2, 0, 1)[None], dtype=np.float32)


class SemanticPolicy:
    """`get(image, q, w) -> (vector or None, state)` with state one of fresh / reused / skipped."""

    def __init__(self, cfg: SemanticsConfig, student: Student | None):
        if cfg.policy != "never" and student is None:
            raise ValueError(f"semantics policy {cfg.policy!r} needs a student encoder; the bundle has none")
        self.cfg, self.student = cfg, student
        self.counts = SemanticCounts()
        self._cache = _Cache()

    def get(self, image: np.ndarray, q: float, w: float) -> tuple[np.ndarray | None, str]:
        c = self._cache
        c.age += 1  # frames since the cached vector was computed
        state = self._decide(q, w)
        if state == "fresh":
            c.vector, c.q, c.age = self.student(image), q, 0
        setattr(self.counts, state, getattr(self.counts, state) + 1)
        return (None if state == "skipped" else c.vector), state

    def _decide(self, q: float, w: float) -> str:
        policy = self.cfg.policy
        if policy != "auto":
            return "fresh" if policy == "always" else "skipped"
        c, cfg = self._cache, self.cfg
        c.on = w >= cfg.eps_off if c.on else w >= cfg.eps_on
        if not c.on:
            return "skipped"
        stable = c.vector is not None and abs(q - c.q) < cfg.delta and c.age < cfg.max_age
        return "reused" if stable else "fresh"

    def reset(self) -> None:
        """Forget the cached vector (a new source or a reconnect); counts are kept."""
        self._cache = _Cache()
