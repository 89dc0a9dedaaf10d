"""Real-semantics plumbing of tracker fine-tuning: the semantic bank, DSWR's own param group, and
the cached-semantics feed of the reference comparison (the runtime policy over cached q / vectors)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vsdmot.models.realclips import SemanticBank  # noqa: E402
from vsdmot.models.synth import SynthFrame  # noqa: E402


def _clip(q: float, T: int = 5, D: int = 4) -> list[SynthFrame]:
    z = np.zeros((0, 4), np.float32)
    return [SynthFrame(z, np.zeros(0, np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.int64),
                       np.zeros(D, np.float32), 0.0, z, np.zeros(0, np.int64), q) for _ in range(T)]


@pytest.mark.parametrize("clip_q, expect", [(1.0, "clean"), (0.0, "degraded"), (-1.0, "off")])
def test_bank_lends_runs_by_clip_quality(clip_q, expect):
    bank = SemanticBank()
    bank.add(False, np.full(3, 0.99), np.tile([1, 0, 0, 0], (3, 1)))
    bank.add(True, np.full(4, 0.4), np.tile([0, 1, 0, 0], (4, 1)))
    clip = _clip(clip_q)
    bank.lend(clip, np.random.default_rng(0))
    q = np.array([f.q for f in clip])
    sem = np.stack([f.semantic for f in clip])
    want = {"clean": (0.99, [1, 0, 0, 0]), "degraded": (0.4, [0, 1, 0, 0]), "off": (-1.0, [0, 0, 0, 0])}[expect]
    np.testing.assert_allclose(q, want[0], atol=1e-6)  # short runs are read cyclically to T frames
    np.testing.assert_array_equal(sem, np.tile(want[1], (5, 1)))


def test_dswr_and_fusion_have_their_own_param_groups():
    from vsdmot.models.train_tracker import TrainConfig, TrainModel, head_config, make_optimizer
    from vsdmot.models.tracker_head import TrackerHeadConfig

    cfg = TrainConfig(lr=1e-3, dswr_lr=0.02, sem_lr=5e-3, sem_fusion="norm",
                      head=TrackerHeadConfig(d=32, heads=2, layers=1, pair_dim=16))
    model = TrainModel(head_config(cfg))
    head, sem, dswr = make_optimizer(model, cfg).param_groups
    assert (head["lr"], sem["lr"], dswr["lr"], dswr["weight_decay"]) == (1e-3, 5e-3, 0.02, 0.0)
    assert len(sem["params"]) == 7  # sem, sem_norm (weight + bias each), sem_gain, pair_sem
    assert len(dswr["params"]) == 3 and len(head["params"]) + 7 == len(list(model.head.parameters()))


@pytest.mark.parametrize("policy, fed", [("never", 0), ("always", 6), ("auto", 3)])
def test_cached_semantics_follow_the_runtime_policy(tmp_path, policy, fed):
    from vsdmot.models.reference import CachedSemantics
    from vsdmot.runtime.dswr import Dswr

    q = np.array([0.99, 0.99, 0.99, 0.2, 0.2, 0.2], np.float32)  # w ~ 0, then w ~ w_max
    np.savez(tmp_path / "s.npz", frame=np.arange(1, 7), q=q, semantic=np.eye(6, 8, dtype=np.float32))
    cs = CachedSemantics(tmp_path / "s.npz", Dswr(0.9, 10.0, 0.6), policy)
    out = [cs.get(f) for f in range(1, 7)]
    assert sum(v is not None for v, _ in out) == fed
    if policy == "always":  # the vector of that frame, not another one
        np.testing.assert_array_equal(out[4][0], np.eye(6, 8)[4:5])
    assert cs.skip_share() == pytest.approx(1 - fed / 6)
