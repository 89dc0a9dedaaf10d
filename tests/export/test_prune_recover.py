"""Structured pruning keeps the interface and shrinks the net; distillation recovers it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsdmot.export.prune import PruneConfig, count_params, load_module, prune
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


def test_recover_respects_time_budget(det_net, det_feeds, tmp_path):
    pruned = as_net(det_net, load_module(prune(det_net, PruneConfig(ratio=0.5), tmp_path / "p.pt")))
    out = recover(pruned, RecoverConfig(steps=10_000, max_seconds=1.0), tmp_path / "r.pt", det_net, det_feeds)
    assert read_stamp(out)["details"]["seconds"] < 5
