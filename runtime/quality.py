"""Quality gate: no-reference quality features (numpy/OpenCV, ~1 ms at 640x480) and a calibrated head
giving q in [0, 1], 1 = clean. No torch here: the head is a tiny MLP (or logistic, one layer) whose
parameters are JSON, fitted by `vsdmot-train quality` (models/train_quality.py).

Features come from two views of the frame:
- global: the frame downscaled (box-halving) to `GLOBAL_WIDTH` px wide, grey and colour
  (brightness, contrast, coarse sharpness, haze/dark channel, saturation, clipping);
- fine: a native-resolution grey crop, 8-px aligned, at most `CROP` px (pixel-level noise,
  fine sharpness, JPEG blockiness), because downscaling averages noise and blocks away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

GLOBAL_WIDTH = 160  # px, width of the downscaled global view
CROP = (192, 256)  # px (h, w), the native-resolution fine view (centre, 8-px aligned)
MIN_SIDE = 32  # px, smallest frame side accepted (the fine view needs several 8-px blocks)
_EPS = 1e-6
FEATURES = (
    "brightness",  # mean grey / 255 (global)
    "contrast",  # std grey / 255 (global)
    "log_lap_global",  # log10 Laplacian variance (global): coarse sharpness
    "log_lap_fine",  # log10 Laplacian variance (fine): pixel-level sharpness and noise
    "log_noise_sigma",  # log10 Immerkaer noise sigma (fine), grey levels
    "sharp_norm",  # log10(Laplacian var / grey variance) (global): contrast-free sharpness
    "fine_coarse",  # log_lap_fine - log_lap_global: blur removes fine detail first
    "blockiness",  # log of mean |diff| across 8-px block borders over elsewhere (fine)
    "dark_channel",  # mean of the 7x7 dark channel / 255 (global): haze raises it
    "dark_channel_p10",  # its 10th percentile / 255: haze lifts even the darkest patches
    "saturation",  # mean HSV saturation / 255 (global)
    "clip_dark",  # share of grey pixels <= 16
    "clip_bright",  # share of grey pixels >= 240
)
_KERNEL7 = np.ones((7, 7), np.uint8)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _views(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(small BGR uint8, small grey float32, fine grey float32 crop)."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
        raise ValueError(f"quality: expected (H, W, 3) uint8 BGR, got shape/dtype {got}")
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"quality: expected a frame of at least {MIN_SIDE}x{MIN_SIDE} px, got {w}x{h}")
    small = _downscale(image)
    ch, cw = min(CROP[0], h) // 8 * 8, min(CROP[1], w) // 8 * 8
    y0, x0 = (h - ch) // 2 // 8 * 8, (w - cw) // 2 // 8 * 8
    fine = cv2.cvtColor(image[y0 : y0 + ch, x0 : x0 + cw], cv2.COLOR_BGR2GRAY).astype(np.float32)
    return small, cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32), fine


def _var(x: np.ndarray) -> float:
    return float(cv2.meanStdDev(x)[1][0, 0]) ** 2


def _downscale(image: np.ndarray) -> np.ndarray:
    """Halve with INTER_LINEAR (an exact 2x2 box at factor 2, 8x faster than INTER_AREA), then to width."""
    while image.shape[1] >= 2 * GLOBAL_WIDTH:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    sw = min(GLOBAL_WIDTH, w)
    return cv2.resize(image, (sw, max(int(round(h * sw / w)), 8)), interpolation=cv2.INTER_LINEAR)


def _noise_sigma(grey: np.ndarray) -> float:
    """Immerkaer (1996) fast noise variance estimate, in grey levels."""
    r = np.abs(cv2.filter2D(grey, cv2.CV_32F, _IMMERKAER)[1:-1, 1:-1])
    return float(np.sqrt(np.pi / 2) / 6 * r.mean())


def _blockiness(grey: np.ndarray) -> float:
    """Mean |step| across 8-px borders over the mean |step| elsewhere, both axes (1 = none)."""
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    bx, by = dx[:, 7::8].mean(), dy[7::8, :].mean()
    ox, oy = (dx.sum() - dx[:, 7::8].sum()) / (dx.size - dx[:, 7::8].size), (dy.sum() - dy[7::8, :].sum()) / (dy.size - dy[7::8, :].size)
    return float((bx + by + _EPS) / (ox + oy + _EPS))


def compute_features(image: np.ndarray) -> np.ndarray:
    """(F,) float32 in the order of FEATURES."""
    small, grey, fine = _views(image)
    mu, sd = (float(v[0, 0]) for v in cv2.meanStdDev(grey))
    var = sd * sd
    lap_g = _var(cv2.Laplacian(grey, cv2.CV_32F))
    lap_f = _var(cv2.Laplacian(fine, cv2.CV_32F))
    b, g, r = cv2.split(small)
    dark = cv2.erode(cv2.min(cv2.min(b, g), r), _KERNEL7).ravel()
    k10 = dark.size // 10
    sat = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)[..., 1]
    lg, lf = np.log10(lap_g + 1.0), np.log10(lap_f + 1.0)
    return np.array([
        mu / 255.0, sd / 255.0, lg, lf,
        np.log10(_noise_sigma(fine) + 0.1), np.log10((lap_g + 1.0) / (var + 1.0)), lf - lg,
        np.log(_blockiness(fine)), dark.mean() / 255.0, np.partition(dark, k10)[k10] / 255.0,
        sat.mean() / 255.0, (grey <= 16).mean(), (grey >= 240).mean(),
    ], dtype=np.float32)


@dataclass(frozen=True)
class QualityGate:
    """Standardise features, then a small MLP (ReLU between layers), then a sigmoid: q in [0, 1]."""

    features_used: tuple[str, ...]  # names, a subset of FEATURES, in head input order
    mean: np.ndarray  # (F,) float32, feature standardisation
    std: np.ndarray  # (F,) float32
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # ((out,in) weight, (out,) bias); last out = 1

    @classmethod
    def from_params(cls, d: Mapping) -> QualityGate:
        """From quality.json (its "gate" section, or the section itself)."""
        d = d.get("gate", d)
        try:
            names = tuple(d["features"])
            layers = tuple((np.asarray(l["W"], np.float32), np.asarray(l["b"], np.float32)) for l in d["layers"])
            gate = cls(names, np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32), layers)
        except (KeyError, TypeError) as e:
            raise ValueError(f"quality params: expected features, mean, std, layers[W, b]; missing or bad {e}") from e
        gate._check()
        return gate

    def _check(self) -> None:
        unknown = [n for n in self.features_used if n not in FEATURES]
        if unknown:
            raise ValueError(f"quality params: unknown features {unknown}; known: {list(FEATURES)}")
        n = len(self.features_used)
        if self.mean.shape != (n,) or self.std.shape != (n,):
            raise ValueError(f"quality params: mean/std expected shape ({n},), got {self.mean.shape}/{self.std.shape}")
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or w.shape[1] != n or b.shape != (w.shape[0],):
                raise ValueError(f"quality params: layer {i} expected W (out, {n}) and b (out,), got {w.shape}, {b.shape}")
            n = w.shape[0]
        if n != 1:
            raise ValueError(f"quality params: last layer must have 1 output, got {n}")

    def features(self, image: np.ndarray) -> np.ndarray:
        """(F,) float32, the features this head uses, in its order."""
        return compute_features(image)[self._columns]

    @cached_property
    def _columns(self) -> np.ndarray:
        """Indices of `features_used` in FEATURES, computed once (features() runs every frame)."""
        return np.array([FEATURES.index(n) for n in self.features_used], np.intp)

    def score(self, feats: np.ndarray) -> np.ndarray:
        """(N, F) or (F,) features -> (N,) or () q."""
        x = (np.asarray(feats, np.float32) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return 1.0 / (1.0 + np.exp(-x[..., 0]))

    def assess(self, image: np.ndarray) -> float:
        """q in [0, 1] for one (H, W, 3) uint8 BGR frame; 1 = clean."""
        return float(self.score(self.features(image)))

    def params(self) -> dict:
        return {
            "features": list(self.features_used), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "layers": [{"W": w.tolist(), "b": b.tolist()} for w, b in self.layers],
        }
