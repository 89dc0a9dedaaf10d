"""Tracker head: shapes, masks, no absolute positions, ONNX opset 17 export with onnxruntime parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsdmot.models.tracker_head import INPUTS, NEG, OUTPUTS, TrackerHead, TrackerHeadConfig, example_inputs, export_onnx

CFG = TrackerHeadConfig(proposals=12, slots=6)


@pytest.fixture(scope="module", params=["linear", "norm"])
def head(request):
    torch.manual_seed(0)
    return TrackerHead(TrackerHeadConfig(proposals=12, slots=6, sem_fusion=request.param)).eval()


def run(head, x):
    with torch.no_grad():
        return head(*x)


def test_shapes(head):
    logits, keep, birth, tq, bq = run(head, example_inputs(CFG, batch=2))
    P, S, d = CFG.proposals, CFG.slots, CFG.d
    assert logits.shape == (2, S, P + 1) and keep.shape == (2, S) and birth.shape == (2, P)
    assert tq.shape == (2, S, d) and bq.shape == (2, P, d)
    assert 100_000 <= sum(p.numel() for p in head.parameters()) <= 300_000


def test_masked_slots_never_match_or_give_birth(head):
    x = list(example_inputs(CFG, seed=3))
    logits, keep, birth, _, _ = run(head, x)
    pmask, tmask = x[3][0].bool(), x[8][0].bool()
    prob = torch.softmax(logits[0], -1)[:, :-1]
    assert (prob[:, ~pmask] < 1e-6).all() and (logits[0][:, :-1][:, ~pmask] <= NEG / 2).all()
    assert (birth[0][~pmask] == 0).all() and (keep[0][~tmask] == 0).all()


def test_invalid_slots_do_not_change_valid_outputs(head):
    """Garbage in masked slots must not leak into valid ones."""
    x = list(example_inputs(CFG, seed=4))
    ref = run(head, x)
    y = [t.clone() for t in x]
    inv = ~x[3][0].bool()
    y[0][0, inv] = y[0][0, inv] * 3 + 50  # move invalid proposals
    y[2][0, inv] = -y[2][0, inv]
    out = run(head, y)
    valid_t = x[8][0].bool()
    cols = torch.cat([~inv, torch.ones(1, dtype=torch.bool)])  # valid proposals + "no match"
    torch.testing.assert_close(out[0][0][valid_t][:, cols], ref[0][0][valid_t][:, cols], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2][0][~inv], ref[2][0][~inv], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (500.0, 1.0), (-120.0, 1.0), (0.0, 2.5), (37.0, 0.4)])
def test_no_absolute_positions(head, shift, scale):
    """Translating or scaling every box (proposals and tracks) leaves every output unchanged."""
    x = list(example_inputs(CFG, seed=5))
    ref = run(head, x)
    y = list(x)
    y[0], y[5] = x[0] * scale + shift, x[5] * scale + shift
    for a, b in zip(run(head, y), ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_semantic_fusion_is_gated_by_w(head):
    x = list(example_inputs(CFG, seed=6))
    x[10] = torch.zeros(1, 1)
    a = run(head, x)
    x[9] = -x[9]  # another semantic vector: no effect at w = 0 ...
    b = run(head, x)
    torch.testing.assert_close(a[0], b[0])
    x[10] = torch.ones(1, 1)  # ... an effect at w = 1
    assert not torch.allclose(run(head, x)[0], a[0])


def test_norm_fusion_has_the_scale_of_a_query():
    """"norm": |gain * LayerNorm(Linear(s))| = gain * sqrt(d) whatever the student's scale;
    "linear" keeps the old small projection."""
    torch.manual_seed(0)
    s = example_inputs(CFG, batch=3)[9] * 0.01
    lin, nrm = TrackerHead(CFG), TrackerHead(TrackerHeadConfig(sem_fusion="norm", sem_gain=0.25))
    with torch.no_grad():
        torch.testing.assert_close(nrm.project(s).norm(dim=-1), torch.full((3,), 0.25 * CFG.d ** 0.5), rtol=1e-2, atol=0)  # LayerNorm eps
        assert (lin.project(s).norm(dim=-1) < 1.0).all()


def test_linear_checkpoint_initialises_a_norm_head():
    """--init from a "linear" run: only the new fusion parameters are missing; at w = 0 the two
    heads agree exactly; anything else missing is refused."""
    from vsdmot.models.train_tracker import TrainConfig, TrainModel, head_config, init_from

    small = TrackerHeadConfig(d=32, heads=2, layers=1, pair_dim=16, proposals=12, slots=6)
    old = TrainModel(small).eval()
    new = TrainModel(head_config(TrainConfig(head=small, sem_fusion="norm"))).eval()
    init_from(new, old.state_dict())
    x = list(example_inputs(small, seed=2))
    x[10] = torch.zeros(1, 1)
    for a, b in zip(run(old.head, x), run(new.head, x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("head.sem.")}
    with pytest.raises(ValueError, match="head.sem.weight"):
        init_from(new, state)


def test_onnx_opset17_parity(head, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tracker.onnx"
    export_onnx(head, path)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # no custom ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(INPUTS)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUTS)
    assert all(all(isinstance(d, int) for d in i.shape) for i in sess.get_inputs())  # static
    for seed in (0, 1):
        x = example_inputs(CFG, seed=seed)
        got = sess.run(None, {n: t.numpy() for n, t in zip(INPUTS, x)})
        for g, r in zip(got, run(head, x)):
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=1e-4)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        TrackerHeadConfig.from_dict({"d": 64, "bogus": 1})
    with pytest.raises(ValueError, match="sem_fusion"):
        TrackerHeadConfig.from_dict({"sem_fusion": "film"})
    assert TrackerHeadConfig.from_dict({"d": 64}).sem_fusion == "linear"  # configs saved before the field: old head
