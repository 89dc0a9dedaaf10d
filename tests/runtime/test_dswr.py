"""DSWR: w = w_max * sigmoid(k (q0 - q)) is monotone, bounded, and reads its JSON params."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.runtime.dswr import Dswr


@pytest.mark.parametrize("params", [{}, {"w_max": 0.5, "k": 3.0, "q0": 0.2}, {"w_max": 1.0, "k": 80.0, "q0": 0.9}])
def test_weight_is_monotone_non_increasing_and_bounded(params):
    d = Dswr.from_params(params)
    w = np.array([d.weight(q) for q in np.linspace(-0.2, 1.2, 141)])
    assert np.all(np.diff(w) <= 1e-12) and w.min() >= 0.0 and w.max() <= d.w_max
    assert d.weight(d.q0) == pytest.approx(d.w_max / 2)
    assert d.weight(-0.2) == d.weight(0.0) and d.weight(1.2) == d.weight(1.0)  # q clipped to [0, 1], as in torch


def test_reads_the_dswr_section_of_quality_json_and_round_trips():
    d = Dswr.from_params({"gate": {}, "dswr": {"form": "sigmoid", "w_max": 0.7, "k": 12.0, "q0": 0.55}})
    assert (d.w_max, d.k, d.q0) == (0.7, 12.0, 0.55)
    assert Dswr.from_params(d.params()) == d
    assert Dswr.from_params({"gate": {}}) == Dswr()  # no dswr section yet: defaults


@pytest.mark.parametrize("params, match", [
    ({"w_max": 0.0}, "w_max"), ({"w_max": 1.5}, "w_max"), ({"k": -1.0}, "k"), ({"k": float("inf")}, "k"),
    ({"q0": float("nan")}, "q0"), ({"slope": 1.0}, "unknown keys"), ({"form": "linear"}, "form"),
])
def test_bad_params_raise(params, match):
    with pytest.raises(ValueError, match=match):
        Dswr.from_params(params)


def test_torch_head_matches_runtime():
    torch = pytest.importorskip("torch")
    from vsdmot.models.dswr import DswrConfig, DswrHead

    head = DswrHead(DswrConfig(w_max=0.8, k=7.0, q0=0.4))
    q = torch.linspace(0, 1, 21)
    d = Dswr.from_params(head.to_params())
    np.testing.assert_allclose(head(q).detach().numpy(), [d.weight(float(x)) for x in q], atol=1e-6)
    w = head(q)
    w.sum().backward()  # learnable: every parameter gets a gradient
    assert all(p.grad is not None for p in head.parameters())
    assert np.all(np.diff(w.detach().numpy()) <= 0)
