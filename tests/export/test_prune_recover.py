"""Structured pruning keeps the interface and shrinks the net; distillation recovers it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsdmot.export.prune import PruneConfig, count_params, load_module, prune, prune_module
from vsdmot.export.recover import RecoverConfig, recover
from vsdmot.export.report import read_stamp
from vsdmot.export.to_onnx import TorchNet


def as_net(template: TorchNet, module) -> TorchNet:
    return TorchNet(template.name, module, template.inputs, template.outputs, template.prune_roots, template.keep_layers)


def test_prune_keeps_outputs_and_head_channels(det_net, tmp_path):
    out = prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")
    m = load_module(out)
    assert count_params(m) < 0.6 * count_params(det_net.module)
    assert m.head.out_channels == 6 and m.embed.out_channels == 8  # kept layers keep their outputs
    assert m.backbone[0][0].out_channels < 16
    ref, got = det_net.run(), as_net(det_net, m).run()
    assert {k: v.shape for k, v in ref.items()} == {k: v.shape for k, v in got.items()}
    assert read_stamp(out)["details"]["params_after"] == count_params(m)


def test_prune_ratio_zero_is_an_unchanged_copy(det_net, tmp_path):
    m = load_module(prune(det_net, PruneConfig(ratio=0.0), tmp_path / "p.pt"))
    assert count_params(m) == count_params(det_net.module)


@pytest.mark.parametrize("ratio", [-0.1, 0.95, 1.0])
def test_prune_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="prune ratio"):
        PruneConfig(ratio=ratio)


def test_recover_lowers_distillation_loss(det_net, det_feeds, tmp_path):
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")))
    out = recover(pruned, RecoverConfig(steps=15, max_seconds=30, lr=1e-3), tmp_path / "r.pt", det_net, det_feeds)
    d = read_stamp(out)["details"]
    assert d["steps"] == 15 and d["loss_after"] < d["loss_before"]
    assert isinstance(load_module(out), torch.nn.Module)


def test_recover_never_returns_a_worse_network(det_net, det_feeds, tmp_path):
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt", det_feeds)))
    out = recover(pruned, RecoverConfig(steps=5, max_seconds=30, lr=50.0), tmp_path / "r.pt", det_net, det_feeds)
    d = read_stamp(out)["details"]
    assert not d["loss_after"] <= d["loss_before"] and d["kept"] == "pruned"  # lr 50 wrecks it (or NaN); pruned stays
    m = load_module(out)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), pruned.module.state_dict().values()))


def test_recover_respects_time_budget(det_net, det_feeds, tmp_path):
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")))
    out = recover(pruned, RecoverConfig(steps=10_000, max_seconds=1.0), tmp_path / "r.pt", det_net, det_feeds)
    assert read_stamp(out)["details"]["seconds"] < 5


class ConstChannel(torch.nn.Module):
    """conv(3->8) -> SiLU -> conv(8->4): channel 0 of the middle activation is a constant (zero
    weights, bias 4): what a folded BatchNorm shift looks like to the next layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.a.weight[0], self.a.bias[0] = 0.0, 4.0
            self.a.weight[1:] *= 5.0  # the other channels have larger weights but are not constant

    def forward(self, x):
        return self.b(torch.nn.functional.silu(self.a(x)))


@pytest.mark.parametrize("importance, compensate, max_err", [
    ("magnitude", "regress", 1e-4),  # magnitude removes channel 0 (smallest weights) ...
    ("magnitude", "mean", 1e-4),  # ... and its constant moves into the next layer's bias
    ("magnitude", "none", None),  # the old behaviour: the next layer loses the constant
    ("activation", "regress", 1e-4),  # zero variance: channel 0 carries no information, it goes first
])
def test_prune_compensates_the_constant_a_removed_channel_carried(importance, compensate, max_err):
    x = torch.randn(6, 3, 8, 8)
    net = TorchNet("toy", ConstChannel().eval(), {"x": x[:1]}, ("y",), prune_roots=("a",))
    feeds = [{"x": x[i:i + 1].numpy()} for i in range(6)]
    m, d = prune_module(net, PruneConfig(ratio=0.125, importance=importance, compensate=compensate), feeds)
    assert m.a.out_channels == 7 and d["compensate"] == compensate  # 1/8: one channel
    assert not torch.isclose(m.a.bias, torch.tensor(4.0)).any()  # the constant channel was the one removed
    with torch.no_grad():
        err = float((m(x) - net.module(x)).abs().max())
    assert err > 0.1 if max_err is None else err < max_err


def test_pruned_shipped_detector_keeps_its_detections_on_a_real_frame():
    """Regression: DepGraph magnitude pruning of the BN-folded YOLOX-nano removed channels with
    large constant activations and zeroed every score even at ratio 0.01. At 0.05 the pruned
    detector must keep the unpruned one's detections on a held-out PETS frame."""
    from vsdmot.models.detector import DEFAULT_WEIGHTS, load_detector
    from helpers import DATA
    import cv2

    if not DEFAULT_WEIGHTS.is_file() or not (DATA / "PETS09-S2L1" / "PETS09-S2L1.avi").is_file():
        pytest.skip("needs models/weights/detector.pt and ../shared/data/PETS09-S2L1")
    det, _ = load_detector(DEFAULT_WEIGHTS)
    frames = pets_letterboxed([100, 300, 500, 650], cv2)
    net = TorchNet("detector", det.eval(), {"images": torch.zeros(1, 3, 416, 416)}, ("output", "embed"),
                   prune_roots=("yolox.backbone",), keep_layers=("yolox.head", "embed_proj"))
    m, d = prune_module(net, PruneConfig(ratio=0.05, stat_frames=3), [{"images": f} for f in frames[:3]])
    assert d["params_after"] < d["params_before"]
    x = torch.as_tensor(frames[3])
    with torch.no_grad():
        ref, got = (mod(x)[0][0] for mod in (det, m))
    s_ref, s_got = ref[:, 4] * ref[:, 5], got[:, 4] * got[:, 5]  # obj x person score per anchor
    assert float(s_ref.max()) > 0.5
    assert abs(float(s_got.max() - s_ref.max())) < 0.1
    assert int((s_got > 0.3).sum()) >= 0.7 * int((s_ref > 0.3).sum())
    assert float(torch.nn.functional.cosine_similarity(s_got, s_ref, dim=0)) > 0.9


def pets_letterboxed(indices, cv2) -> list[np.ndarray]:
    """PETS09-S2L1 frames letterboxed like runtime/yolox.py: (1,3,416,416) float32, top-left, pad 114."""
    from helpers import DATA

    cap, out = cv2.VideoCapture(str(DATA / "PETS09-S2L1" / "PETS09-S2L1.avi")), []
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        img = cap.read()[1]
        s = 416 / max(img.shape[:2])
        h, w = int(img.shape[0] * s), int(img.shape[1] * s)
        box = np.full((416, 416, 3), 114, np.uint8)
        box[:h, :w] = cv2.resize(img, (w, h))
        out.append(box.transpose(2, 0, 1)[None].astype(np.float32))
    cap.release()
    return out


class SourcedFeeds(list):
    """Feeds whose frames know their calibration source, as DetectorFeeds over a CalibSet do."""

    def __init__(self, sources):
        from types import SimpleNamespace

        super().__init__(range(len(sources)))
        self.frames = SimpleNamespace(manifest={"frames": [{"source": s} for s in sources]})


@pytest.mark.parametrize("sources, n, expect", [
    (None, 4, [0, 3, 6, 9]),  # no per-frame sources: evenly spaced over 10
    (["a"] * 9 + ["b"] * 2 + ["a"] * 9, 4, {"a": 3, "b": 1}),  # half evenly (a, a), half per source (a, b)
    (["a"] * 9 + ["b"] * 2 + ["a"] * 9, 8, {"a": 6, "b": 2}),  # b: 10 % of the frames, 25 % of the picks
])
def test_pruning_statistics_take_an_equal_share_per_calibration_source(sources, n, expect):
    from vsdmot.export.channel_stats import pick_indices

    got = pick_indices(list(range(10)) if sources is None else SourcedFeeds(sources), n)  # (sources: 20 frames)
    assert len(got) == len(set(got)) == n
    if isinstance(expect, list):
        assert got == expect
    else:
        assert {k: sum(sources[i] == k for i in got) for k in expect} == expect


def test_zoom_crops_stay_inside_the_letterboxed_content():
    """A wide frame letterboxed top-left leaves the bottom 60 % as padding (114); the old zoom cropped
    anywhere in the square, so most zoom-ins were mostly padding instead of larger people."""
    from vsdmot.export.recover import zoomed

    x = torch.full((6, 3, 100, 100), 114.0)
    x[:, :, :40, :] = torch.rand(6, 3, 40, 100) * 100  # content: rows 0-39, values 0..100 (never 114)
    (z,) = zoomed([x], 1.0, np.random.default_rng(0), 0.25)
    assert not (z == 114.0).all(1).any()  # no padding pixel left in any zoomed frame


@pytest.mark.parametrize("hw", [(64, 128), (80, 80)])
def test_zoom_crops_keep_the_inputs_aspect(hw):
    """Channel 0 holds the column index, channel 1 the row index: after a zoom-in the spans they
    cover are the crop's width and height, whose ratio must be the input's (people not stretched).
    Before, a non-square input was never zoomed at all."""
    from vsdmot.export.recover import zoomed

    H, W = hw
    x = torch.zeros(6, 3, H, W)
    x[:, 0] = torch.arange(W, dtype=torch.float32)[None, None, :]
    x[:, 1] = torch.arange(H, dtype=torch.float32)[None, :, None]
    (z,) = zoomed([x], 1.0, np.random.default_rng(3), 0.25)
    cols = z[:, 0, 0, -1] - z[:, 0, 0, 0] + 1  # (6,) ~ crop width
    rows = z[:, 1, -1, 0] - z[:, 1, 0, 0] + 1  # (6,) ~ crop height
    assert (cols < W).all()  # every frame zoomed in
    torch.testing.assert_close(cols / rows, torch.full((6,), W / H), atol=0.1, rtol=0.05)


def test_score_weighted_distillation_counts_the_few_anchors_with_people():
    """(B, A, 6) YOLOX layout: the same error on the one anchor holding a person costs far more
    than on a background anchor once the rows are weighted by the teacher's obj x cls."""
    from vsdmot.export.recover import score_weights, weighted_nmse

    t = torch.zeros(1, 100, 6)
    t[..., :4] = torch.randn(1, 100, 4)
    t[0, 7, 4:] = 0.9  # anchor 7: a person (obj 0.9, cls 0.9); the rest background
    w = score_weights((t,))
    assert w.shape == (1, 100) and float(w[0, 7]) == pytest.approx(0.01 + 0.81)
    on_person, on_background = t.clone(), t.clone()
    on_person[0, 7, :4] += 1.0
    on_background[0, 8, :4] += 1.0
    assert float(weighted_nmse(on_person, t, w)) > 20 * float(weighted_nmse(on_background, t, w))
    assert score_weights((torch.zeros(2, 8),)) is None  # a (B, D) output (the student): no rows to weight


def test_prune_profile_scales_the_ratio_per_stage(det_net, det_feeds, monkeypatch):
    """A profile gives a stage its own share of the ratio: scale 0 keeps its channels (neck.0),
    0.5 halves its ratio (backbone.0), the rest takes the ratio; `uniform` ignores the profile."""
    from vsdmot.export import prune as prune_mod

    monkeypatch.setitem(prune_mod.PROFILES, "detector", (("neck.0", 0.0), ("backbone.0", 0.5)))
    m, d = prune_module(det_net, PruneConfig(ratio=0.5), det_feeds)
    assert m.neck[0][0].out_channels == 48 and d["profile"] == [["neck.0", 0.0], ["backbone.0", 0.5]]
    assert m.backbone[0][0].out_channels == 12 and m.backbone[1][0].out_channels == 16  # 16 x 0.75, 32 x 0.5
    u, _ = prune_module(det_net, PruneConfig(ratio=0.5, profile="uniform"), det_feeds)
    assert u.neck[0][0].out_channels == 24 and u.backbone[0][0].out_channels == 8


def test_pruning_feeds_append_near_pedestrian_crops_as_one_more_source():
    """The pruned detector's feeds are the calibration frames then the near-pedestrian crops
    (uint8, served as float32), which the statistics' per-source share sees as one source."""
    from vsdmot.export.channel_stats import pick_indices
    from vsdmot.export.sources import NearFeeds

    base = SourcedFeeds(["pets"] * 18 + ["mot"] * 2)
    base[:] = [{"images": np.zeros((1, 3, 8, 8), np.float32)} for _ in range(20)]
    near = np.full((4, 1, 3, 8, 8), 200, np.uint8)
    feeds = NearFeeds(base, near)
    assert len(feeds) == 24 and feeds[3] is base[3]
    assert feeds[-1]["images"].dtype == np.float32 and float(feeds[-1]["images"].max()) == 200.0
    assert sum(i >= 20 for i in pick_indices(feeds, 6)) >= 1  # 4 of 24 frames, a third of the per-source half
    assert feeds.key != NearFeeds(base, near[:2]).key


def test_recover_restarts_at_a_lower_rate_when_the_probe_loss_rose(det_net, det_feeds, tmp_path):
    """lr 50 wrecks the network within the probe (first 20 % of the steps); the run restarts from
    the pruned network at lr x backoff and still lowers the loss (before: the whole budget was lost)."""
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")))
    cfg = RecoverConfig(steps=20, max_seconds=60, lr=50.0, backoff=2e-5)
    d = read_stamp(recover(pruned, cfg, tmp_path / "r.pt", det_net, det_feeds))["details"]
    assert not d["loss_probe"] <= d["loss_before"] and d["lr"] == pytest.approx(1e-3)
    assert d["loss_after"] < d["loss_before"] and d["kept"] == "recovered" and d["steps"] == 20


@pytest.mark.parametrize("change", ["keep_layers", "prune_roots", "profile"])
def test_prune_is_redone_when_what_it_may_prune_changes(det_net, tmp_path, monkeypatch, change):
    """The step's key covers what decides which channels go: the network's prune roots and kept
    layers and its PROFILES entry (a cached copy pruned under the old rules was reused)."""
    from dataclasses import replace

    from vsdmot.export import prune as prune_mod

    out = prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")
    first = read_stamp(out)["key"]
    net = det_net
    if change == "keep_layers":
        net = replace(det_net, keep_layers=(*det_net.keep_layers, "neck"))
    elif change == "prune_roots":
        net = replace(det_net, prune_roots=("backbone",))
    else:
        monkeypatch.setitem(prune_mod.PROFILES, "detector", (("neck", 0.0),))
    m = load_module(prune(net, PruneConfig(ratio=0.5), out))
    assert read_stamp(out)["key"] != first
    assert m.neck[0][0].out_channels == 48  # the neck kept its channels this time


def test_a_zero_recovery_budget_keeps_the_pruned_network(det_net, det_feeds, tmp_path):
    """The chain splits --recover-seconds by MACs in whole seconds: `--recover-seconds 3` gives the
    128 px student round(0.37) = 0 s, and the budget clock divided by it (ZeroDivisionError after the
    pruning had run)."""
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")))
    out = recover(pruned, RecoverConfig(max_seconds=0.0), tmp_path / "r.pt", det_net, det_feeds)
    assert read_stamp(out)["details"]["steps"] == 0
    with pytest.raises(ValueError, match="recover"):
        RecoverConfig(max_seconds=-1.0)


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -1.0])
def test_recover_budget_must_be_a_finite_number(seconds):
    """inf and NaN were accepted, then crashed the budget split after the reference export."""
    with pytest.raises(ValueError, match="recover config out of range"):
        RecoverConfig(max_seconds=seconds)
