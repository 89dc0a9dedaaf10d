"""The quantiser's detection rounds (export/det_rounds.py) and the chain's FP32 fallback, on the
shipped detector and real PETS09 frames."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest

from helpers import REPO, frames
from vsdmot.calibration.feeds import DetectorFeeds, ImageList
from vsdmot.export.det_agreement import AgreementConfig, agreement
from vsdmot.export.det_rounds import DetectionRoundsConfig, between, quantised_layers
from vsdmot.export.parity import onnx_runner, pick
from vsdmot.export.quantize import QuantConfig, nodes_to_keep_float, quantize

DETECTOR = REPO / "runtime" / "assets" / "default" / "detector.onnx"  # the FP32 YOLOX-nano student, 416 px


@pytest.fixture(scope="module")
def feeds():
    return DetectorFeeds(ImageList(frames(24, 416)), 416)


def test_selection_feeds_are_disjoint_from_the_reported_ones():
    items = list(range(512))
    assert len(between(items, 64)) == 64 and not set(between(items, 64)) & set(pick(items, 64))
    assert between(items[:100], 64) == items[:100]  # too few to split: every feed


@pytest.mark.parametrize("length", [128, 200, 294, 806, 1000])
def test_selection_feeds_are_disjoint_from_the_reported_ones_at_any_length(length):
    """The midpoints of pick's spacing rounded onto pick's own indices at many lengths (806: a pruned
    detector's 512 calibration frames + 294 near crops, 6 shared): the F1 the report gives was then
    partly measured on the feeds the rounds had chosen their layers on."""
    items = list(range(length))
    sel = between(items, 64)
    assert len(sel) == len(set(sel)) == 64 and not set(sel) & set(pick(items, 64))
    assert max(b - a for a, b in zip(sel, sel[1:])) <= 2 * length / 64  # still spread over the whole set


def details(q) -> dict:
    return json.loads(open(f"{q}.step.json").read())["details"]


def test_rounds_keep_the_first_layers_float_and_leave_the_best_round_written(feeds, tmp_path):
    """min_f1 above 1 forces every round within the weight budget: k = 4, 8, 16, ...; the layers
    kept float beyond the base rules are the first k in graph order, for the round with the best F1,
    and the file on disk is that round's."""
    rounds = DetectionRoundsConfig(min_f1=1.01, frames=8)
    cfg = QuantConfig(stride=6, max_rounds=0, detection=rounds)
    det = details(quantize(DETECTOR, cfg, tmp_path / "q.onnx", feeds, "pets-24"))["detection_rounds"]
    ks, f1s = [k for k, _ in det["trail"]], [f for _, f in det["trail"]]
    assert ks[:3] == [0, 4, 8] and all(b == 2 * a for a, b in zip(ks[1:], ks[2:]))
    assert det["f1"] == max(f1s) and det["frames"] == 8

    model = onnx.load(str(DETECTOR))
    base = nodes_to_keep_float(model, cfg)
    extra = set(details(tmp_path / "q.onnx")["kept_float"]) - base
    assert extra == set(quantised_layers(model, base)[: det["first_layers_float"]])
    cand = onnx_runner(tmp_path / "q.onnx")
    assert agreement(onnx_runner(DETECTOR), cand, between(feeds, 8), AgreementConfig())["f1"] == det["f1"]


def test_the_rounds_are_off_at_min_f1_zero_and_skip_other_networks(det_net, det_feeds, tmp_path):
    from vsdmot.export.simplify import SimplifyConfig, simplify
    from vsdmot.export.to_onnx import OnnxConfig, to_onnx

    fp = simplify(to_onnx(det_net, OnnxConfig(), tmp_path / "a.onnx"), SimplifyConfig(), tmp_path / "b.onnx")
    q = quantize(fp, QuantConfig(stride=5, max_rounds=0), tmp_path / "q.onnx", det_feeds[:10], "tiny")
    assert details(q)["detection_rounds"] == {}  # a 64 px test CNN is not a YOLOX person head


def test_a_detector_that_stays_below_min_f1_stays_fp32_in_the_chain(feeds, tmp_path, caplog, monkeypatch):
    from vsdmot.export import chain
    from vsdmot.export.chain import ExportConfig, int8
    from vsdmot.export.report import Report

    fp32 = tmp_path / "detector.sim.onnx"
    shutil.copy(DETECTOR, fp32)
    cfg = ExportConfig(detection=DetectionRoundsConfig(min_f1=1.01, frames=8, max_float_weights=0.005))
    with caplog.at_level(logging.WARNING, logger="vsdmot.export.chain"):
        assert int8(fp32, cfg, "minmax", feeds, Report(), "detector") == fp32
    agr = json.loads((tmp_path / "detector.int8-minmax.agreement.json").read_text())
    assert agr["f1"] < 1.01 and "stays FP32 in the bundle" in caplog.text
    assert len(details(tmp_path / "detector.int8-minmax.onnx")["detection_rounds"]["trail"]) == 3  # 0, 4, 8: budget

    caplog.clear()  # the default (rounds off): INT8 kept; a hint only when its detections disagree
    with caplog.at_level(logging.WARNING, logger="vsdmot.export.chain"):
        q = int8(fp32, ExportConfig(), "minmax", feeds, Report(), "detector")
    f1 = json.loads((tmp_path / "detector.int8-minmax.agreement.json").read_text())["f1"]
    assert q.name == "detector.int8-minmax.onnx" and "stays FP32" not in caplog.text
    assert ("--min-detection-f1" in caplog.text) == (f1 < chain.NEAR_CAMERA_F1), (f1, caplog.text)
    caplog.clear()
    monkeypatch.setattr(chain, "NEAR_CAMERA_F1", f1 + 1e-3)  # just above this detector's F1 (steps cached)
    with caplog.at_level(logging.WARNING, logger="vsdmot.export.chain"):
        assert int8(fp32, ExportConfig(), "minmax", feeds, Report(), "detector") == q
    assert "near-camera scene" in caplog.text and "--keep-fp32 detector" in caplog.text


def test_a_round_tying_the_best_f1_leaves_the_reported_layers_written(monkeypatch, tmp_path):
    """F1 is a ratio of counts and ties often; when the last round tied an earlier best, the file kept
    the last round's float layers while kept_float and first_layers_float reported the earlier one's."""
    from onnx import helper, numpy_helper

    from vsdmot.export import det_rounds

    inits, nodes, x = [], [], "x"
    for i in range(10):  # ten convs; the last holds most weights, so the budget (10 %) allows the first eight
        shape = (2, 2, 100, 1) if i == 9 else (2, 2, 1, 1)
        inits.append(numpy_helper.from_array(np.zeros(shape, np.float32), f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"y{i}"], name=f"c{i}"))
        x = f"y{i}"
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])],
                                                [helper.make_tensor_value_info(x, 1, None)], inits))
    f1s = iter([0.90, 0.95, 0.95])  # base, k=4, k=8 (a tie; k=16 is past the ten layers)
    monkeypatch.setattr(det_rounds, "onnx_runner", lambda path: lambda feed: {})
    monkeypatch.setattr(det_rounds, "layout_problem", lambda out, feed: None)
    monkeypatch.setattr(det_rounds, "agreement", lambda *a, **k: {"f1": next(f1s)})
    written = []
    kept, det = det_rounds.detection_rounds(model, tmp_path / "fp.onnx", tmp_path / "q.onnx", [{"x": 0}] * 4,
                                            DetectionRoundsConfig(min_f1=0.99, frames=2), set(),
                                            lambda ex: written.append(set(ex)))
    assert [len(w) for w in written[:2]] == [4, 8]
    assert written[-1] == kept and det["first_layers_float"] == len(kept) and det["f1"] == 0.95
