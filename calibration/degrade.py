"""Seeded, composable image degradations: presets x severities 1..5 (numpy/OpenCV, no torch).

    degrade(image, preset, severity, rng) -> image      one frame, (H, W, 3) uint8 BGR in and out
    degrade_frames(images, preset, severity, seed)       a clip; frame k (1-based) uses
                                                         default_rng([seed, k]), and `h264` runs the
                                                         real codec over the whole clip
    random_degrade(image, rng)                           a random per-frame preset and severity

Spatial parameters (blur lengths, radii, streak lengths) are given for a 480-px short side and
scale with the image, so a severity means the same on a 640x480 crop and a 1920x1080 frame.
Severity 5 is severe, but people stay visible to a person (checked by eye, docs/contact_sheet.png).
Parameters per severity and the reasons for them: docs/degradations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from . import codec

SEVERITIES = (1, 2, 3, 4, 5)


# -- per-frame operations: f(img uint8 (H,W,3), level, rng, s, scene) -> uint8 ----------------------
# s = short side / 480; scene = the generator for what stays put over a clip (fog, wind direction):
# a fresh default_rng(scene_seed) per frame in clips, the frame's own rng for a single image.

def _u8(x: np.ndarray) -> np.ndarray:
    """float -> uint8, rounded and saturated (OpenCV's saturate_cast: 15x faster than numpy)."""
    return cv2.add(np.asarray(x, np.float32), 0.0, dtype=cv2.CV_8U)


def randn(shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """float32 N(0, sigma^2) noise of `shape`, from OpenCV's RNG seeded by `rng` (3x faster than
    numpy's; reproducible for a given rng state)."""
    out = np.empty((int(np.prod(shape)), 1), np.float32)  # one channel: randn's scalar sigma is per channel
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
    cv2.randn(out, 0.0, float(sigma))
    return out.reshape(shape)


def _add_u8(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint8 image + float32 noise -> uint8, rounded and saturated, in one pass."""
    return cv2.add(img, noise, dtype=cv2.CV_8U)


def gaussian_noise(img, sigma: float, rng, s=1.0, scene=None):
    """Additive white Gaussian noise, independent per channel; sigma in 8-bit levels."""
    return _add_u8(img, randn(img.shape, rng, sigma))


def shot_noise(img, peak: float, rng, s=1.0, scene=None):
    """Photon (Poisson) noise with `peak` photons at white: variance = signal / gain.

    Drawn as the Gaussian with Poisson's mean and variance (exact Poisson costs 40x more time and
    differs visibly only below a few photons)."""
    sigma = np.sqrt(np.arange(256, dtype=np.float32) * (255.0 / peak))  # sqrt(photons) in 8-bit levels
    return _add_u8(img, cv2.multiply(cv2.LUT(img, sigma), randn(img.shape, rng)))


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """(k, k) float32 normalised anti-aliased line through the centre, `length` px long."""
    k = int(np.ceil(length)) | 1
    big = np.zeros((k * 4, k * 4), np.uint8)
    c, r = (k * 4 - 1) / 2, length * 2 - 2
    dx, dy = r * np.cos(np.deg2rad(angle_deg)), r * np.sin(np.deg2rad(angle_deg))
    cv2.line(big, (round((c - dx) * 16), round((c - dy) * 16)), (round((c + dx) * 16), round((c + dy) * 16)),
             255, 4, cv2.LINE_AA, shift=4)
    ker = cv2.resize(big.astype(np.float32), (k, k), interpolation=cv2.INTER_AREA)
    return ker / ker.sum()


def motion_blur(img, length: float, rng, s=1.0, scene=None):
    """Linear camera/subject motion over the exposure: a line kernel at a random angle."""
    return cv2.filter2D(img, -1, _line_kernel(max(length * s, 1.0), rng.uniform(0, 180)), borderType=cv2.BORDER_REFLECT)


def disk_kernel(radius: float) -> np.ndarray:
    """(k, k) float32 normalised anti-aliased disk (a lens out of focus), radius in px."""
    k = 2 * int(np.ceil(radius)) + 1
    big = np.zeros((k * 8, k * 8), np.uint8)
    cv2.circle(big, (k * 4 * 16 - 8, k * 4 * 16 - 8), round(radius * 8 * 16), 255, -1, cv2.LINE_AA, shift=4)
    ker = cv2.resize(big.astype(np.float32), (k, k), interpolation=cv2.INTER_AREA)
    return ker / ker.sum()


def defocus_blur(img, radius: float, rng, s=1.0, scene=None):
    """Out-of-focus lens: convolution with a disk (deterministic: the rng is unused)."""
    return cv2.filter2D(img, -1, disk_kernel(max(radius * s, 0.5)), borderType=cv2.BORDER_REFLECT)


def jpeg(img, quality: int, rng, s=1.0, scene=None):
    """Baseline JPEG (4:2:0) at `quality` (OpenCV's libjpeg scale 1..100)."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def h264_frame(img, qp: int, rng, s=1.0, scene=None):
    """One frame as an H.264 intra frame at a fixed QP (ffmpeg/libx264); clips use the real codec
    over time in degrade_frames. Deterministic: the rng is unused."""
    return codec.h264_intra(img, int(qp))


def downscale(img, factor: float, rng, s=1.0, scene=None):
    """A low-resolution camera: area-downscale by `factor`, bilinear upscale back to the same size."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(round(w / factor), 1), max(round(h / factor), 1)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


_GAMMA = 2.2  # sRGB-like display gamma: pixel = linear ** (1 / 2.2)
_FULL_WELL = 1000.0  # photons at white for a well-lit clean frame
_TO_LINEAR = ((np.arange(256) / 255.0) ** _GAMMA).astype(np.float32)  # uint8 -> linear [0, 1]
_TO_PIXEL = np.rint(255.0 * (np.arange(65536) / 65535.0) ** (1 / _GAMMA)).astype(np.uint8)  # 16-bit linear -> uint8


def low_light(img, exposure: float, rng, s=1.0, scene=None):
    """Under-exposure: linear light x `exposure`, shot + read noise at that photon count, then the
    camera's auto-gain recovers only part of it (gain = exposure ** -0.45) before gamma."""
    photons = _TO_LINEAR * np.float32(exposure * _FULL_WELL)
    lin = cv2.LUT(img, photons)  # (H, W, 3) float32 photons
    lin += cv2.LUT(img, np.sqrt(photons + 2.0**2)) * randn(img.shape, rng)  # shot noise + 2 e- read noise
    gain = 65535.0 * exposure**-0.45 / _FULL_WELL  # partial auto-gain: net light x exposure**0.55; 16-bit
    return np.take(_TO_PIXEL, cv2.multiply(lin, gain, dtype=cv2.CV_16U))


def _smooth_field(h: int, w: int, rng, cells: tuple[int, int] = (3, 4)) -> np.ndarray:
    """(h, w) float32 low-frequency random field in [-1, 1] (a few cells, bicubic)."""
    grid = rng.uniform(-1, 1, cells).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), -1, 1)


def haze(img, beta: float, rng, s=1.0, scene=None):
    """Koschmieder fog I = J t + A (1 - t), t = exp(-beta d). Depth d: 1 at the top row (far, a
    camera looking down) to 0.35 at the bottom, +-0.15 patchy; airlight A a pale grey. Both come
    from `scene`, so fog holds still over a clip instead of flickering."""
    h, w = img.shape[:2]
    d = np.linspace(1.0, 0.35, h, dtype=np.float32)[:, None] + 0.15 * _smooth_field(h, w, scene)
    t = np.exp(-beta * d)[..., None]  # (h, w, 1) transmission
    air = 255.0 * (scene.uniform(0.80, 0.92) + scene.uniform(-0.02, 0.02, 3)).astype(np.float32)
    return _u8(img * t + air * (1 - t))


def contrast(img, factor: float, rng, s=1.0, scene=None):
    """Contrast loss about the mean grey level (flat light, a dirty lens); deterministic."""
    mean = float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).mean())
    return _u8(mean + (img.astype(np.float32) - mean) * factor)


def _streaks(h: int, w: int, density: float, length: float, angle: float, rng) -> np.ndarray:
    """(h, w) float32 in [0, 1]: random seeds smeared into anti-aliased streaks."""
    seeds = (rng.random((h, w), dtype=np.float32) < density).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w)).astype(np.float32)
    ker = _line_kernel(length, angle)
    return np.minimum(cv2.filter2D(seeds, -1, ker / ker.max() * 0.7), 1.0)


def rain(img, level: tuple[float, float, float], rng, s=1.0, scene=None):
    """Rain: near-vertical bright streaks (density, length px, opacity) over a slightly darker,
    lower-contrast scene (overcast, wet air)."""
    density, length, alpha = level
    h, w = img.shape[:2]
    layer = _streaks(h, w, density, length * s, 90 + scene.uniform(-20, 20), rng)[..., None]  # wind: per clip
    base = img.astype(np.float32) * (1 - alpha * 0.25) + 90.0 * alpha * 0.25
    return _u8(base * (1 - alpha * layer) + 230.0 * alpha * layer)


def snow(img, level: tuple[float, float, float], rng, s=1.0, scene=None):
    """Snow: soft white flakes of two sizes (px), smeared a little by their fall, over a whitish veil."""
    density, size, veil = level
    h, w = img.shape[:2]
    flakes = np.zeros((h, w), np.float32)
    for frac, sz in ((0.7, size * 0.6 * s), (0.3, size * s)):
        sigma = max(sz / 2, 0.4)
        seeds = (rng.random((h, w), dtype=np.float32) < density * frac).astype(np.float32)
        flakes += cv2.GaussianBlur(seeds, (0, 0), sigma) * (2 * np.pi * sigma**2)  # peak ~1 per flake
    ker = _line_kernel(max(size * s * 1.5, 1.0), 90 + scene.uniform(-30, 30))  # wind: per clip
    flakes = np.minimum(cv2.filter2D(flakes, -1, ker) * 2.0, 1.0)[..., None]
    base = img.astype(np.float32) * (1 - veil) + 235.0 * veil
    return _u8(base * (1 - 0.9 * flakes) + 0.9 * 245.0 * flakes)


def realesrgan_pipeline(img, severity: int, rng, s=1.0, scene=None):
    """Real-ESRGAN's second-order pipeline, drawn fresh per call (calibration/realesrgan.py)."""
    from . import realesrgan  # noqa: PLC0415  (it imports randn from here)

    return realesrgan.degrade(img, int(severity), rng)


# -- the preset table ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    fn: Callable  # f(img, level, rng, s, scene) -> img
    levels: tuple  # the parameter at severity 1..5
    unit: str  # what a level means (docs, --list)
    seeded: bool = True  # False: degrade()'s output does not depend on the rng
    clip: bool = False  # True: degrade_frames codes the clip over time, GOP phase drawn from the seed


_TABLE = (
    Preset("gaussian_noise", gaussian_noise, (8, 15, 24, 36, 52), "sigma, 8-bit levels"),
    Preset("shot_noise", shot_noise, (400, 150, 60, 25, 12), "photons at white"),
    Preset("motion_blur", motion_blur, (4, 7, 11, 16, 22), "line length, px at 480 short side"),
    Preset("defocus_blur", defocus_blur, (1.5, 2.5, 3.5, 5.0, 7.0), "disk radius, px at 480 short side", seeded=False),
    Preset("jpeg", jpeg, (40, 25, 15, 10, 6), "JPEG quality", seeded=False),
    Preset("h264", h264_frame, (0.1, 0.06, 0.035, 0.02, 0.012), "bits per pixel (clip); intra QP per frame", seeded=False, clip=True),
    Preset("downscale", downscale, (1.5, 2.0, 3.0, 4.0, 6.0), "downscale factor", seeded=False),
    Preset("low_light", low_light, (0.2, 0.08, 0.03, 0.012, 0.005), "exposure (fraction of light)"),
    Preset("haze", haze, (0.5, 0.9, 1.3, 1.8, 2.4), "extinction beta (depth 0.35..1)"),
    Preset("contrast", contrast, (0.6, 0.42, 0.3, 0.21, 0.15), "contrast factor", seeded=False),
    Preset("rain", rain, ((0.002, 14, 0.45), (0.004, 18, 0.55), (0.007, 22, 0.65), (0.011, 27, 0.72), (0.016, 32, 0.8)),
           "(seed density, streak px, opacity)"),
    Preset("snow", snow, ((0.0008, 2.5, 0.04), (0.0015, 3, 0.08), (0.0025, 3.5, 0.12), (0.004, 4, 0.17), (0.006, 4.5, 0.22)),
           "(flake density, flake px, veil)"),
    Preset("realesrgan", realesrgan_pipeline, SEVERITIES, "severity (see realesrgan.py ranges)"),
)
TABLE: dict[str, Preset] = {p.name: p for p in _TABLE}
PRESETS: tuple[str, ...] = tuple(TABLE)
FRAME_PRESETS: tuple[str, ...] = tuple(p.name for p in _TABLE if not p.clip)  # no subprocess per frame
H264_INTRA_QP = (34, 40, 43, 48, 51)  # per-frame h264: intra QP whose PSNR matches the clip's (docs)


def check(preset: str, severity: int) -> Preset:
    """The preset's table row; ValueError naming the allowed values otherwise."""
    if preset not in TABLE:
        raise ValueError(f"unknown degradation preset {preset!r}: expected one of {', '.join(PRESETS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity: expected an integer 1..5, got {severity!r}")
    return TABLE[preset]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
        raise ValueError(f"degrade: expected an (H, W, 3) uint8 BGR image, got shape/dtype {got}")
    return np.ascontiguousarray(image)


def degrade(image: np.ndarray, preset: str, severity: int, rng: np.random.Generator, *,
            scene_seed: int | Sequence[int] | None = None) -> np.ndarray:
    """One frame, (H, W, 3) uint8 BGR -> same shape and dtype. Same rng state, same bytes.

    `scene_seed` fixes what stays put over a clip (haze field and airlight, rain/snow direction);
    without it those come from `rng` like the rest."""
    p = check(preset, severity)
    img = _check_image(image)
    level = H264_INTRA_QP[severity - 1] if p.clip else p.levels[severity - 1]
    scene = rng if scene_seed is None else np.random.default_rng(scene_seed)
    return p.fn(img, level, rng, min(img.shape[:2]) / 480.0, scene)


def scene_seed(seed: int, start: int) -> list[int]:
    """The scene seed of a clip (or a schedule stretch) that starts at frame `start`."""
    return [int(seed), int(start), 0x5CE4E]


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for frame `index` (1-based) of a clip degraded with `seed`."""
    return np.random.default_rng([int(seed), int(index)])


def degrade_frames(images: Iterable[np.ndarray], preset: str, severity: int, seed: int, *,
                   fps: float = 25.0, start: int = 1) -> Iterator[np.ndarray]:
    """A clip, frame by frame. Frame k (numbered from `start`) uses frame_rng(seed, k), and the
    whole clip one scene_seed(seed, start) (fog and wind hold still).

    `h264` encodes the whole clip with libx264 at severity's bits per pixel and `fps`, GOP 2 s
    with a phase drawn from (seed, start), then decodes it (codec.h264_clip); it needs Debian's
    ffmpeg (CodecError otherwise)."""
    p = check(preset, severity)
    if p.clip:
        phase_rng = np.random.default_rng([int(seed), int(start), 264])  # GOP phase of this clip
        yield from codec.h264_clip((_check_image(i) for i in images), p.levels[severity - 1], fps, phase_rng)
        return
    scene = scene_seed(seed, start)
    for k, img in enumerate(images, start):
        yield degrade(img, preset, severity, frame_rng(seed, k), scene_seed=scene)


def random_degrade(image: np.ndarray, rng: np.random.Generator, presets: Iterable[str] = FRAME_PRESETS,
                   max_severity: int = 5) -> np.ndarray:
    """A random preset (default: every per-frame preset) at a random severity 1..max_severity."""
    names = tuple(presets)
    return degrade(image, names[int(rng.integers(len(names)))], int(rng.integers(1, max_severity + 1)), rng)
