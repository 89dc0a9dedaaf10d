"""Real-ESRGAN's second-order degradation (Wang et al. 2021), in numpy/OpenCV, drawn fresh per call.

Two rounds of blur -> resize -> Gaussian or Poisson noise -> JPEG, then a final resize to
1/scale with an optional sinc filter and a last JPEG in random order. Severity 5 uses the
published `train_realesrgan_x4plus.yml` ranges with the x4 net scale; lower severities shrink every
range toward its mild end (strength f = severity / 5) and the net scale (SCALES). Unlike the
super-resolution setting, the result is resized back to the input size: trackers see full frames.

Deviations from basicsr: the blur is applied with OpenCV's filter2D in float32; Poisson noise is
drawn as a Gaussian with Poisson's variance (256 levels, as basicsr's 8-bit estimate); JPEG is
libjpeg 4:2:0 rather than DiffJPEG.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .degrade import randn

SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)  # net downscale per severity before the resize back up
_INTERP = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)  # basicsr: area, bilinear, bicubic
_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_KIND_P = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


@dataclass(frozen=True, slots=True)
class Round:
    """One degradation round's ranges at full strength (basicsr option names in comments)."""

    sigma: tuple[float, float]  # blur_sigma / blur_sigma2, px
    blur_p: float  # 1.0 / second_blur_prob
    resize_p: tuple[float, float, float]  # resize_prob: up, down, keep
    resize: tuple[float, float]  # resize_range
    noise: tuple[float, float]  # noise_range, 8-bit sigma
    poisson: tuple[float, float]  # poisson_scale_range


ROUND1 = Round((0.2, 3.0), 1.0, (0.2, 0.7, 0.1), (0.15, 1.5), (1.0, 30.0), (0.05, 3.0))
ROUND2 = Round((0.2, 1.5), 0.8, (0.3, 0.4, 0.3), (0.3, 1.2), (1.0, 25.0), (0.05, 2.5))
JPEG = (30, 95)  # jpeg_range, jpeg_range2
SINC_P, FINAL_SINC_P, GAUSS_P, GRAY_P = 0.1, 0.8, 0.5, 0.4


def _shrink(r: tuple[float, float], f: float) -> tuple[float, float]:
    """Keep the mild end r[0], pull the strong end toward it: r[0] + (r[1] - r[0]) f."""
    return r[0], r[0] + (r[1] - r[0]) * f


def _odd_size(rng) -> int:
    return int(rng.choice(np.arange(7, 22, 2)))  # kernel_range 7..21


def _grid(k: int) -> np.ndarray:
    ax = np.arange(k, dtype=np.float64) - k // 2
    return np.stack(np.meshgrid(ax, ax), -1)  # (k, k, 2) x, y offsets


def mixed_kernel(rng, sigma: tuple[float, float], k: int) -> np.ndarray:
    """(k, k) float32 normalised blur kernel of basicsr's random_mixed_kernels family."""
    kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_P)]
    sx = rng.uniform(*sigma)
    sy, theta = (sx, 0.0) if kind.endswith("iso") and not kind.endswith("aniso") else (rng.uniform(*sigma), rng.uniform(-np.pi, np.pi))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    xy = _grid(k)
    q = np.einsum("...i,ij,...j->...", xy, inv, xy)  # (k, k) squared Mahalanobis distance
    if kind.startswith("generalized"):
        ker = np.exp(-0.5 * q ** rng.uniform(0.5, 4.0))
    elif kind.startswith("plateau"):
        ker = 1.0 / (q ** rng.uniform(1.0, 2.0) + 1.0)
    else:
        ker = np.exp(-0.5 * q)
    return _trim(ker / ker.sum()).astype(np.float32)


def _trim(ker: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Drop border rings holding < tol of the mass (a sigma-0.5 Gaussian in a 21x21 support is
    mostly zeros; filtering with the trimmed kernel is 5-10x cheaper and equal to 1e-4)."""
    k = ker.shape[0] // 2
    while k > 0 and np.abs(ker).sum() - np.abs(ker[1:-1, 1:-1]).sum() < tol:
        ker, k = ker[1:-1, 1:-1], k - 1
    return ker / ker.sum()


def sinc_kernel(cutoff: float, k: int, n: int = 256) -> np.ndarray:
    """(k, k) float32 ideal circular low-pass (cutoff in rad/px), sampled by an inverse DFT of a disk."""
    f = np.fft.fftfreq(n) * 2 * np.pi
    disk = (f[:, None] ** 2 + f[None, :] ** 2 <= cutoff**2).astype(np.float64)
    h = np.fft.fftshift(np.real(np.fft.ifft2(disk)))
    c = n // 2
    ker = h[c - k // 2 : c + k // 2 + 1, c - k // 2 : c + k // 2 + 1]
    return (ker / ker.sum()).astype(np.float32)


def _blur(x: np.ndarray, rng, sigma: tuple[float, float], sinc_p: float) -> np.ndarray:
    k = _odd_size(rng)
    if rng.random() < sinc_p:
        ker = sinc_kernel(rng.uniform(np.pi / 3 if k < 13 else np.pi / 5, np.pi), k)
    else:
        ker = mixed_kernel(rng, sigma, k)
    return cv2.filter2D(x, -1, ker, borderType=cv2.BORDER_REFLECT)


def _resize(x: np.ndarray, w: int, h: int, rng) -> np.ndarray:
    return cv2.resize(x, (max(int(w), 1), max(int(h), 1)), interpolation=_INTERP[rng.integers(3)])


def _noise(x: np.ndarray, rng, r: Round, f: float) -> np.ndarray:
    """Gaussian (sigma in 8-bit levels) or Poisson-like noise, colour or grey, on x in [0, 1]."""
    gray = rng.random() < GRAY_P
    shape = (*x.shape[:2], 1) if gray else x.shape
    z = randn(shape, rng)
    if rng.random() < GAUSS_P:
        n = z * (rng.uniform(*_shrink(r.noise, f)) / 255.0)
    else:
        base = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)[..., None] if gray else x
        n = z * np.sqrt(np.clip(base, 0, 1) / 256.0) * rng.uniform(*_shrink(r.poisson, f))
    return np.clip(x + n, 0, 1)


def _jpeg(x: np.ndarray, rng, f: float) -> np.ndarray:
    q = int(round(rng.uniform(JPEG[1] - (JPEG[1] - JPEG[0]) * f, JPEG[1])))
    ok, buf = cv2.imencode(".jpg", np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) / 255.0


def _round(x: np.ndarray, rng, r: Round, f: float, base_wh: tuple[float, float]) -> np.ndarray:
    """blur (prob blur_p) -> resize relative to base_wh -> noise -> JPEG."""
    if rng.random() < r.blur_p:
        x = _blur(x, rng, _shrink(r.sigma, f), SINC_P)
    kind = rng.choice(3, p=r.resize_p)
    lo = 1.0 - (1.0 - r.resize[0]) * f  # the down range shrinks toward 1 at low strength
    s = (rng.uniform(1.0, r.resize[1]), rng.uniform(lo, 1.0), 1.0)[kind]
    x = _resize(x, base_wh[0] * s, base_wh[1] * s, rng)
    return _jpeg(_noise(x, rng, r, f), rng, f)


def _final(x: np.ndarray, rng, wh: tuple[int, int], f: float) -> np.ndarray:
    """Resize to the net size with a sinc (prob 0.8) and JPEG, in random order."""
    def resize_sinc(y):
        y = _resize(y, wh[0], wh[1], rng)
        if rng.random() < FINAL_SINC_P:
            y = cv2.filter2D(y, -1, sinc_kernel(rng.uniform(np.pi / 3, np.pi), _odd_size(rng)), borderType=cv2.BORDER_REFLECT)
        return y
    if rng.random() < 0.5:
        return _jpeg(resize_sinc(x), rng, f)
    return resize_sinc(_jpeg(x, rng, f))


def degrade(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> same, through both rounds and the final step, back at full size."""
    h, w = img.shape[:2]
    f, scale = severity / 5.0, SCALES[severity - 1]
    x = img.astype(np.float32) / 255.0
    x = _round(x, rng, ROUND1, f, (w, h))
    x = _round(x, rng, ROUND2, f, (w / scale, h / scale))
    x = _final(x, rng, (max(round(w / scale), 1), max(round(h / scale), 1)), f)
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
