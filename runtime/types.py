"""One data type per stage. Each validates its shapes once, at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True, frozen=True)
class Frame:
    """One decoded frame from any source."""

    index: int  # 1-based frame number in the source (MOTChallenge convention)
    image: np.ndarray  # (H, W, 3) uint8 BGR
    timestamp: float  # seconds since the source started, on the source's clock

    def __post_init__(self) -> None:
        img = self.image
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8):
            got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", None)
            raise ValueError(f"Frame.image: expected (H, W, 3) uint8 BGR, got shape/dtype {got}")
        if self.index < 1:
            raise ValueError(f"Frame.index: expected >= 1, got {self.index}")


@dataclass(slots=True)
class Detections:
    """N boxes in source-frame pixels. The struct-of-arrays that flows detector -> tracker -> sinks."""

    xyxy: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in source pixels
    score: np.ndarray  # (N,) float32 in [0, 1]
    track_id: np.ndarray | None = None  # (N,) int64, set by the tracker only
    feature: np.ndarray | None = field(default=None, repr=False)  # (N, D) float32 appearance, optional

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.score = np.asarray(self.score, dtype=np.float32).reshape(-1)
        n = len(self.xyxy)
        if len(self.score) != n:
            raise ValueError(f"Detections: {n} boxes but {len(self.score)} scores")
        if self.track_id is not None:
            self.track_id = np.asarray(self.track_id, dtype=np.int64).reshape(-1)
            if len(self.track_id) != n:
                raise ValueError(f"Detections: {n} boxes but {len(self.track_id)} track ids")
        if self.feature is not None:
            feat = np.asarray(self.feature, dtype=np.float32)
            if feat.ndim != 2 or len(feat) != n:
                raise ValueError(f"Detections: {n} boxes but features of shape {feat.shape}, expected ({n}, D)")
            self.feature = feat

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, with_ids: bool = False) -> Detections:
        ids = np.zeros(0, np.int64) if with_ids else None
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ids)

    def select(self, keep: np.ndarray) -> Detections:
        """Rows where `keep` (bool mask or index array) selects."""
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return Detections(self.xyxy[keep], self.score[keep], pick(self.track_id), pick(self.feature))

    @property
    def xywh(self) -> np.ndarray:
        """(N, 4) float32 x, y, w, h: the MOTChallenge box layout."""
        out = self.xyxy.copy()
        out[:, 2:] -= out[:, :2]
        return out


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """What a backend expects or returns for one named tensor."""

    name: str
    shape: tuple[int, ...]  # static shape; -1 marks a dynamic axis
    dtype: str  # numpy dtype name, e.g. "float32"

    def check(self, value: np.ndarray) -> None:
        """Raise ValueError naming this input, what was expected and what came."""
        shape_ok = len(value.shape) == len(self.shape) and all(
            e in (-1, g) for e, g in zip(self.shape, value.shape)
        )
        if not shape_ok or value.dtype != np.dtype(self.dtype):
            raise ValueError(
                f"input '{self.name}': expected shape {self.shape} {self.dtype}, "
                f"got {tuple(value.shape)} {value.dtype}"
            )


SEMANTIC_STATES = ("fresh", "reused", "skipped")


@dataclass(slots=True)
class Percept:
    """What the per-frame step knows before tracking: the stages that need no tracker state."""

    q: float  # frame quality in [0, 1], 1 = clean
    w: float  # DSWR fusion weight in [0, 1]
    semantic_vector: np.ndarray | None  # (1, D) student vector (fresh or reused), or None when skipped
    semantic: str  # one of SEMANTIC_STATES
    detections: Detections  # proposals in source pixels (+ appearance)
    latency_ms: dict[str, float] = field(default_factory=dict)  # quality, semantics, detector (, motion)
    motion: np.ndarray | None = None  # (2, 3) affine, the previous frame's px -> this frame's; None: none seen


@dataclass(slots=True)
class FrameResult:
    """What the per-frame step produced; every sink reads only this."""

    index: int  # Frame.index
    timestamp: float  # Frame.timestamp, seconds
    q: float  # frame quality in [0, 1], 1 = clean
    w: float  # DSWR fusion weight in [0, 1]
    semantic: str  # one of SEMANTIC_STATES
    tracks: Detections  # with track_id set
    latency_ms: dict[str, float] = field(default_factory=dict)  # stage name -> milliseconds

    def __post_init__(self) -> None:
        if self.semantic not in SEMANTIC_STATES:
            raise ValueError(f"FrameResult.semantic: expected one of {SEMANTIC_STATES}, got {self.semantic!r}")
