"""Synthetic clips: determinism per seed, and noise statistics that follow the measured model."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.models.noise_model import match_to_gt
from vsdmot.models.synth import SynthConfig, load_noise, make_clip

CFG = SynthConfig(frames=30)


@pytest.fixture(scope="module")
def noise():
    return load_noise()


def test_same_seed_same_clip_other_seed_other_clip(noise):
    a, b = (make_clip(CFG, noise, np.random.default_rng(11)) for _ in range(2))
    c = make_clip(CFG, noise, np.random.default_rng(12))
    assert all(np.array_equal(x.xyxy, y.xyxy) and np.array_equal(x.embed, y.embed) for x, y in zip(a, b))
    assert not all(len(x.xyxy) == len(y.xyxy) and np.allclose(x.xyxy, y.xyxy) for x, y in zip(a, c))


def test_frame_layout(noise):
    for f in make_clip(CFG, noise, np.random.default_rng(0)):
        n = len(f.score)
        assert f.xyxy.shape == (n, 4) and f.embed.shape == (n, CFG.embed_dim) and f.gid.shape == (n,)
        assert f.semantic.shape == (CFG.semantic_dim,) and (f.q == -1 or 0 <= f.q <= 1)
        np.testing.assert_allclose(np.linalg.norm(f.embed, axis=1), 1, atol=1e-5)
        assert set(f.gid[f.gid >= 0]) <= set(f.gt_id)  # a detection's identity is a person in view
        assert len(set(f.gid[f.gid >= 0])) == int((f.gid >= 0).sum())  # at most one true box per person


def _stats(noise, randomise: float, n: int = 30):
    cfg = SynthConfig(frames=30, randomise=randomise)
    hit = tot = fp = frames = 0
    same, diff, jit = [], [], []
    for s in range(n):
        clip = make_clip(cfg, noise, np.random.default_rng(s))
        for f0, f1 in zip(clip, clip[1:]):
            tot, hit, fp, frames = tot + len(f1.gt_id), hit + int((f1.gid >= 0).sum()), fp + int((f1.gid < 0).sum()), frames + 1
            e = {g: f0.embed[i] for i, g in enumerate(f0.gid) if g >= 0}
            same += [float(f1.embed[i] @ e[g]) for i, g in enumerate(f1.gid) if g in e]
            m = f1.embed[f1.gid >= 0]
            diff += (m @ m.T)[np.triu_indices(len(m), 1)].tolist()
            t = match_to_gt(f1.gt_xyxy, f1.xyxy, 0.0)
            gw = f1.gt_xyxy[t >= 0, 2] - f1.gt_xyxy[t >= 0, 0]
            jit += (((f1.xyxy[t[t >= 0], 0] + f1.xyxy[t[t >= 0], 2]) - (f1.gt_xyxy[t >= 0, 0] + f1.gt_xyxy[t >= 0, 2])) / 2 / gw).tolist()
    return hit / tot, fp / frames, np.median(same), np.median(diff), 1.4826 * np.median(np.abs(jit))


def test_noise_statistics_follow_the_measured_model(noise):
    """Without per-clip randomisation, recall, appearance cosines and jitter land near the
    measured clean/degraded range (clips draw a quality between the two)."""
    recall, fp, same, diff, jit_x = _stats(noise, randomise=0.0)
    c, d = noise["clean"], noise["degraded"]
    lo = min(np.mean(c["recall_by_height"]), np.mean(d["recall_by_height"])) - 0.12
    assert lo < recall < max(np.mean(c["recall_by_height"]), np.mean(d["recall_by_height"])) + 0.08
    assert 0.3 * min(c["fp_per_frame"], d["fp_per_frame"]) < fp < 3 * max(c["fp_per_frame"], d["fp_per_frame"])
    assert abs(same - c["app_same_q"][5]) < 0.05 and abs(diff - c["app_diff_q"][5]) < 0.08
    assert 0.5 * c["jitter_std"][0] < jit_x < 1.6 * c["jitter_std"][0]


def test_randomisation_widens_but_keeps_sane_ranges(noise):
    recall, fp, *_ = _stats(noise, randomise=1.0, n=20)
    assert 0.4 < recall < 0.99 and 0.3 < fp < 20
