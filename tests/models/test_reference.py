"""Torch reference loop (runtime/e2e.py + the torch head), export parity on a real clip, and the
tracker training stage (a few steps, resumed from its checkpoint)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from vsdmot.models.checkpoint import load_checkpoint
from vsdmot.models.reference import make_tracker, module_for_onnx, tracker_backend
from vsdmot.models.tracker_head import TrackerHead, TrackerHeadConfig, export_onnx
from vsdmot.models.train_tracker import SHIPPED, TrainConfig, load_tracker, ship, train

SMALL = TrackerHeadConfig(d=32, heads=2, layers=1, pair_dim=16, proposals=16, slots=8)


def test_training_smoke_resumes(tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(batch=2, synth_steps=3, real_steps=0, clip_frames=6, slots=6, proposals=10, head=SMALL,
                      out=str(tmp_path), max_minutes=1e-9, save_every=100)
    last = train(cfg)  # a budget spent by the first step stops there, with a checkpoint (0 would be no budget)
    assert load_checkpoint(last)["step"] == 1
    train(TrainConfig(**{**cfg.__dict__, "max_minutes": 60.0}))  # same run: resumes at step 1
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 3 and ckpt["train_config"]["seed"] == 0 and ckpt["model_config"]["d"] == 32
    assert {"w_max", "k", "q0"} <= set(ckpt["meta"]["dswr"])
    head, meta = load_tracker(ship(last, tmp_path / "tracker.pt"))
    assert isinstance(head, TrackerHead) and meta["step"] == 3
    shipped = load_checkpoint(tmp_path / "tracker.pt")  # the layout's own fields agree with the meta's
    assert shipped["step"] == 3 and shipped["train_config"]["seed"] == 0 and shipped["optimizer"] is None


def test_module_for_onnx_by_name(tmp_path):
    with pytest.raises(ValueError, match="no torch module"):
        module_for_onnx(tmp_path / "other.onnx")


def _clip_detections(pets_dir, n=12):
    from vsdmot.models.noise_model import project_detector
    from vsdmot.runtime.sources import open_sequence

    det = project_detector()
    src = open_sequence(pets_dir).frames()
    try:
        return [det.detect(f.image) for f in islice(src, n)]  # TRAIN frames 1..n
    finally:
        src.close()


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped tracker weights yet (vsdmot-train tracker --ship)")
def test_shipped_head_on_a_real_clip_torch_vs_onnx(pets_dir, tmp_path):
    from vsdmot.runtime.backends import OnnxRuntimeBackend

    dets = _clip_detections(pets_dir)
    head = load_tracker()[0]
    export_onnx(head, tmp_path / "tracker.onnx")
    runs = {}
    for name, backend in (("torch", tracker_backend(head)), ("onnx", OnnxRuntimeBackend(tmp_path / "tracker.onnx"))):
        trk = make_tracker("e2e", backend)
        runs[name] = [trk.step(d) for d in dets]
    for a, b in zip(runs["torch"], runs["onnx"]):
        assert a.track_id.tolist() == b.track_id.tolist()
        np.testing.assert_allclose(a.xyxy, b.xyxy)
    ids = [set(o.track_id.tolist()) for o in runs["torch"]]
    assert max(len(s) for s in ids) >= 3  # PETS frames 1-12 hold 4-6 people
    assert len(ids[-1] & ids[-2]) >= 2  # identities persist between frames
