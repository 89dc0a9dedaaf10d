"""Unlimited synthetic tracking clips: box-level motion seen through a measured detector-noise model.

A clip is a list of `SynthFrame`s in the same layout as real training data after matching the
detector to ground truth: detector boxes, scores, appearance vectors, and the gt identity behind
each box (-1 for false positives and duplicates). Noise (recall by box height, miss runs, jitter,
TP/FP score distributions, FP rate and size, appearance cosines) comes from
`models/weights/tracker_noise.json` (see `models/noise_model.py`), interpolated between the clean
and degraded measurements by the clip's quality and widened by per-clip domain randomisation.
Everything is drawn from one `numpy.random.Generator`: a seed fixes the clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsdmot.models import WEIGHTS

from .noise_model import HEIGHT_BINS, QUANTILES

NOISE_JSON = WEIGHTS / "tracker_noise.json"


@dataclass(frozen=True)
class SynthConfig:
    frames: int = 40  # clip length (frames)
    objects: tuple[int, int] = (1, 20)  # people per clip (min, max), drawn uniformly
    width: tuple[int, int] = (480, 1920)  # image width range (px)
    person_height: tuple[float, float] = (30.0, 320.0)  # median person height range (px), log-uniform
    speed: tuple[float, float] = (0.0, 0.12)  # walking speed range, person heights per frame
    turn: float = 0.15  # std of the per-frame velocity change, in units of the clip's speed
    duplicate: float = 0.02  # chance a detected person also gets a second, looser box
    static_fp: float = 0.5  # share of false positives that come from a few fixed clutter spots
    randomise: float = 1.0  # 0 = measured noise as is; 1 = per-clip multipliers on rates and jitter
    embed_dim: int = 32  # E: appearance vector width
    semantic_dim: int = 128  # D: semantic vector width


@dataclass(slots=True)
class SynthFrame:
    xyxy: np.ndarray  # (N, 4) float32 detector boxes, px
    score: np.ndarray  # (N,) float32
    embed: np.ndarray  # (N, E) float32 unit rows
    gid: np.ndarray  # (N,) int64 gt identity, -1 for FP / duplicate
    semantic: np.ndarray  # (D,) float32 unit vector
    w: float  # fusion weight (training replaces it with DSWR's g(q))
    gt_xyxy: np.ndarray  # (K, 4) float32 true boxes of people in view
    gt_id: np.ndarray  # (K,) int64
    q: float = 1.0  # frame quality in [0, 1]; -1 = semantics off (policy `never`: w = 0)


def load_noise(path: str | Path = NOISE_JSON) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"noise model: expected {path} (run python -m vsdmot.models.noise_model)")
    return json.loads(path.read_text())


def _lerp(clean: dict, deg: dict, a: float) -> dict:
    return {k: (np.asarray(clean[k]) * (1 - a) + np.asarray(deg[k]) * a) for k in clean if k != "n_gt"}


def _draw_q(qs: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n samples from a distribution given by its quantiles at QUANTILES (piecewise-linear CDF)."""
    return np.interp(rng.random(n), QUANTILES, qs).astype(np.float32)


class _Semantics:
    """A stand-in for the student's vector: a fixed base plus a degradation direction, noisy."""

    def __init__(self, dim: int):
        g = np.random.default_rng(12345)  # fixed directions, independent of the clip seed
        self.base, self.deg = (v / np.linalg.norm(v) for v in g.normal(size=(2, dim)))

    def __call__(self, q: float, rng: np.random.Generator) -> np.ndarray:
        v = self.base + 2.0 * (1 - q) * self.deg + 0.3 * rng.normal(size=self.base.shape) / np.sqrt(len(self.base))
        return (v / np.linalg.norm(v)).astype(np.float32)


def make_clip(cfg: SynthConfig, noise: dict, rng: np.random.Generator) -> list[SynthFrame]:
    """One synthetic clip of cfg.frames frames."""
    q = float(rng.beta(0.8, 0.8))  # clip quality: 1 clean, 0 degraded as measured
    nz = _randomise(_lerp(noise["clean"], noise["degraded"], 1 - q), cfg.randomise, rng)
    off = rng.random() < 0.15  # semantics off: the runtime feeds zeros and w = 0
    w = 0.0 if off else float(np.clip(1 - q + rng.normal(0, 0.1), 0, 1))
    sem = _Semantics(cfg.semantic_dim)
    W = int(rng.integers(*cfg.width))
    H = int(W * rng.uniform(0.55, 0.8))
    boxes, alive = _trajectories(cfg, W, H, rng)  # (T,K,4), (T,K)
    app = _appearance(boxes.shape[1], cfg.embed_dim, nz, rng)
    fps = _fp_sources(nz, boxes, W, H, rng)
    state = np.zeros(boxes.shape[1], bool)  # missed in the previous frame
    frames = []
    for t in range(cfg.frames):
        frames.append(_observe(t, boxes[t], alive[t], state, app, fps, nz, cfg, (W, H), rng))
        frames[-1].semantic, frames[-1].w, frames[-1].q = sem(q, rng) * (not off), w, -1.0 if off else q
    return frames


def _randomise(nz: dict, amount: float, rng: np.random.Generator) -> dict:
    m = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi)) * amount))  # noqa: E731
    nz["recall_by_height"] = np.clip(1 - (1 - nz["recall_by_height"]) * m(0.5, 2.0), 0.02, 0.99)
    nz["jitter_std"] = nz["jitter_std"] * m(0.6, 1.8)
    nz["fp_per_frame"] = float(nz["fp_per_frame"]) * m(0.2, 4.0)
    nz["miss_after_miss"] = float(np.clip(nz["miss_after_miss"] * m(0.8, 1.2), 0.05, 0.95))
    nz["app_noise"] = m(0.7, 1.5)
    return nz


def _trajectories(cfg: SynthConfig, W: int, H: int, rng: np.random.Generator):
    """(T, K, 4) true boxes and (T, K) alive flags: walkers entering, turning, stopping, leaving."""
    T, K = cfg.frames, int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    h0 = float(np.exp(rng.uniform(*np.log(cfg.person_height))))
    speed = rng.uniform(*cfg.speed) * h0
    h = h0 * np.exp(rng.normal(0, 0.25, K))
    asp = rng.uniform(0.3, 0.5, K)
    pos = np.stack([rng.uniform(-0.1, 1.1, K) * W, rng.uniform(0.0, 1.0, K) * H], 1)
    ang = rng.uniform(0, 2 * np.pi, K)
    vel = np.stack([np.cos(ang), np.sin(ang) * 0.5], 1) * speed * rng.uniform(0.2, 1.3, (K, 1))
    start = np.where(rng.random(K) < 0.6, 0, rng.integers(0, T, K))
    life = rng.integers(T // 3, 3 * T, K)
    out, alive = np.zeros((T, K, 4), np.float32), np.zeros((T, K), bool)
    for t in range(T):
        vel += rng.normal(0, cfg.turn * speed + 1e-3, vel.shape)
        vel *= np.where(rng.random((K, 1)) < 0.01, 0.0, 1.0)  # someone stops
        pos += vel
        h *= np.exp(vel[:, 1] / H * 0.5)  # weak perspective: walking down grows the box
        out[t] = np.concatenate([pos - np.stack([asp * h, h], 1) / 2, pos + np.stack([asp * h, h], 1) / 2], 1)
        alive[t] = (t >= start) & (t < start + life)
    inside = _visible_fraction(out, W, H) > 0.5
    return out, alive & inside


def _visible_fraction(b: np.ndarray, W: int, H: int) -> np.ndarray:
    cw = np.clip(b[..., 2], 0, W) - np.clip(b[..., 0], 0, W)
    ch = np.clip(b[..., 3], 0, H) - np.clip(b[..., 1], 0, H)
    return cw * ch / np.maximum((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 1e-6)


def _appearance(K: int, E: int, nz: dict, rng: np.random.Generator) -> dict:
    """Identity vectors whose observed cosines match the measured same-id / different-id medians."""
    m_same = float(np.clip(nz["app_same_q"][5], 0.05, 0.99))
    m_diff = float(np.clip(nz["app_diff_q"][5], -0.5, m_same - 0.02))
    sigma2 = (1 / m_same - 1) * nz["app_noise"]
    c2 = max(min(m_diff * (1 + sigma2), 0.98), 0.0)
    common = rng.normal(size=E) / np.sqrt(E)
    base = np.sqrt(c2) * common / np.linalg.norm(common) + np.sqrt(1 - c2) * _unit(rng.normal(size=(K, E)))
    return {"base": _unit(base), "sigma": float(np.sqrt(sigma2)), "common": _unit(common)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _fp_sources(nz: dict, boxes: np.ndarray, W: int, H: int, rng: np.random.Generator) -> np.ndarray:
    """A few fixed clutter boxes (static false positives): (F, 4)."""
    med = float(np.median(boxes[..., 3] - boxes[..., 1]))
    n = int(rng.poisson(1.5))
    hh = _draw_q(np.asarray(nz["fp_height_q"]), rng, n) * med
    xy = rng.uniform(0, 1, (n, 2)) * [W, H]
    return np.concatenate([xy, xy + np.stack([hh * rng.uniform(0.3, 1.0, n), hh], 1)], 1).astype(np.float32)


def _observe(t, boxes, alive, missed, app, fps, nz, cfg, size, rng) -> SynthFrame:
    """Detector output for frame t. `missed` (K,) carries miss runs between frames (updated)."""
    W, H = size
    h = boxes[:, 3] - boxes[:, 1]
    pi = 1 - nz["recall_by_height"][np.digitize(h, HEIGHT_BINS[1:-1])]  # stationary miss rate
    b = nz["miss_after_miss"]
    a = np.clip(pi * (1 - b) / np.maximum(1 - pi, 1e-3), 0, 1)  # P(miss | hit) giving that rate
    miss = rng.random(len(h)) < np.where(missed, np.maximum(b, pi), a)
    missed[:] = miss | ~alive
    det = np.flatnonzero(alive & ~miss)
    xyxy = _jitter(boxes[det], nz["jitter_std"], rng)
    score = _draw_q(np.asarray(nz["tp_score_q"]), rng, len(det))
    gid = det.astype(np.int64)
    dup = det[rng.random(len(det)) < cfg.duplicate]
    fxy, fsc = _false_positives(nz, fps, boxes[alive], W, H, rng)
    xyxy = np.concatenate([xyxy, _jitter(boxes[dup], nz["jitter_std"] * 3, rng), fxy])
    score = np.concatenate([score, score[np.isin(det, dup)] * rng.uniform(0.2, 0.8, len(dup)), fsc])
    gid = np.concatenate([gid, np.full(len(dup) + len(fxy), -1)])
    emb = _observe_embed(app, np.concatenate([det, dup]), len(fxy), rng)
    order = rng.permutation(len(score))
    sem = np.zeros(cfg.semantic_dim, np.float32)
    return SynthFrame(xyxy[order].astype(np.float32), score[order].astype(np.float32), emb[order], gid[order],
                      sem, 0.0, boxes[alive].astype(np.float32), np.flatnonzero(alive).astype(np.int64))


def _jitter(b: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    wh = b[:, 2:] - b[:, :2]
    c = (b[:, :2] + b[:, 2:]) / 2 + rng.normal(0, 1, (len(b), 2)) * std[:2] * wh
    wh = wh * np.exp(rng.normal(0, 1, (len(b), 2)) * std[2:])
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


def _false_positives(nz, fps, people, W, H, rng):
    """Random and static-clutter false positives: (F, 4) boxes and (F,) scores."""
    n = int(rng.poisson(nz["fp_per_frame"]))
    med = float(np.median(people[:, 3] - people[:, 1])) if len(people) else H * 0.2
    hh = _draw_q(np.asarray(nz["fp_height_q"]), rng, n) * med
    xy = rng.uniform(0, 1, (n, 2)) * [W, H]
    rand = np.concatenate([xy, xy + np.stack([hh * rng.uniform(0.3, 0.8, n), hh], 1)], 1)
    static = fps[rng.random(len(fps)) < 0.5]
    boxes = np.concatenate([rand, _jitter(static, np.array([0.03, 0.03, 0.05, 0.05]), rng)]).reshape(-1, 4)
    return boxes, _draw_q(np.asarray(nz["fp_score_q"]), rng, len(boxes))


def _observe_embed(app: dict, ids: np.ndarray, n_fp: int, rng: np.random.Generator) -> np.ndarray:
    E = app["base"].shape[1]
    base = np.concatenate([app["base"][ids], _unit(app["common"] + rng.normal(size=(n_fp, E)) / np.sqrt(E) * 1.5)])
    obs = base + rng.normal(size=base.shape) * app["sigma"] / np.sqrt(E)
    return _unit(obs).astype(np.float32).reshape(-1, E)
