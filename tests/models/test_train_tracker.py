"""models/train_tracker.py: the teacher-forced box state follows the runtime's partial update when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsdmot.models.train_tracker import Slots, TrainConfig, advance, clip_smooth

B, S, P, E, D = 2, 3, 4, 2, 5


def step_once(smooth):
    """One live slot per clip at x = 100 moving +10 px/frame; its proposal (slot 0 -> proposal 0) is at x = 120.
    -> the slot's box state after the teacher-forced update."""
    st = Slots.empty(B, S, E, D, smooth)
    st.valid[:, 0], st.gid[:, 0] = True, 7
    st.box[:, 0] = [100, 100, 140, 180]
    st.vel[:, 0] = [10, 0, 10, 0]
    pb = np.tile(np.array([0, 0, 1, 1], np.float32), (B, P, 1))
    pb[:, 0] = [120, 100, 160, 180]
    pg = np.full((B, P), -2)
    pg[:, 0] = 7
    ptr = np.full((B, S), P)
    ptr[:, 0] = 0
    out = (None, None, None, torch.zeros(B, S, D), torch.zeros(B, P, D))
    cfg = TrainConfig(drop_track=0.0, inject_fp=0.0)
    advance(st, out, ptr, np.zeros((B, P), np.float32), pg, pb, np.ones((B, P, E), np.float32), cfg,
            np.random.default_rng(0))
    return st.box[:, 0, 0]


def test_default_state_is_the_detection():
    assert step_once(None).tolist() == [120.0, 120.0]


def test_box_smooth_moves_half_way_from_the_prediction():
    """Prediction 110 (box + velocity), detection 120: 0.5 gives 115 (runtime E2EConfig.box_smooth)."""
    assert step_once(np.array([0.5, 0.0])).tolist() == pytest.approx([115.0, 120.0])


@pytest.mark.parametrize("smooth, share, want", [(0.0, 1.0, {0.0}), (0.5, 1.0, {0.5}), (0.5, 0.0, {0.0}),
                                                 (0.5, 0.5, {0.0, 0.5})])
def test_clip_smooth(smooth, share, want):
    got = clip_smooth(TrainConfig(box_smooth=smooth, box_smooth_share=share), 64, np.random.default_rng(1))
    assert set(got.tolist()) == want


def test_clip_smooth_draws_nothing_unless_mixed():
    """The settings without a mix leave the data stream of a seed as it was (the shipped run's)."""
    for cfg in (TrainConfig(), TrainConfig(box_smooth=0.5)):
        rng = np.random.default_rng(3)
        clip_smooth(cfg, 4, rng)
        assert rng.random() == np.random.default_rng(3).random()


def test_motr_targets_keep_identities_and_birth_only_the_new():
    """MOTR-style assignment: a live slot points at the proposal of its own identity (or at P, no
    match); a proposal is a birth only when no live slot holds its identity; proposals of false
    positives (gid -1) are neither; dead slots and FP-born slots (gid -1) point nowhere."""
    from vsdmot.models.train_tracker import targets

    st = Slots.empty(1, 4, 2, 3)
    st.valid[0] = [True, True, True, False]
    st.gid[0] = [7, 9, -1, 5]  # 7 and 9 live, an FP-born slot, a dead slot that held 5
    pg = np.array([[9, 5, -1, 11, 7]])  # proposals: 9 (live), 5 (its slot is dead), a FP, 11 (new), 7 (live)
    ptr, birth = targets(st, pg)
    assert ptr.tolist() == [[4, 0, 5, 5]]  # slot 7 -> proposal 4, slot 9 -> 0, the rest no match (P = 5)
    assert birth.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]]  # 5 comes back as a new track, 11 is new
    st.valid[0] = False
    assert targets(st, pg)[1].tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0]]  # nothing live: every real identity is a birth


def test_the_real_clips_can_be_read_with_a_users_own_networks(tmp_path, monkeypatch):
    """The tracker stage read its real clips with the shipped detector, student and quality gate
    whatever the user had trained: it learned beside networks it would not be deployed with."""
    from vsdmot.models import noise_model, train_tracker

    assert train_tracker.reading_models("") == (None, None)  # the shipped ones
    with pytest.raises(ValueError, match="missing student.pt, quality.json"):
        (tmp_path / "detector.pt").write_bytes(b"x")
        train_tracker.reading_models(str(tmp_path))
    (tmp_path / "student.pt").write_bytes(b"x")
    (tmp_path / "quality.json").write_text("{}")
    monkeypatch.setattr(noise_model, "project_detector", lambda weights: ("det", weights))
    monkeypatch.setattr(noise_model, "ShippedSemantics", lambda q, s: ("sem", q, s))
    det, sem = train_tracker.reading_models(str(tmp_path))
    assert det == ("det", tmp_path / "detector.pt") and sem == ("sem", tmp_path / "quality.json", tmp_path / "student.pt")
