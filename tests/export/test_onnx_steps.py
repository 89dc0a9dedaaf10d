"""to_onnx -> simplify -> quantize -> qdq_check -> parity on small real networks and real frames."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from vsdmot.export.parity import FP32, INT8, ParityConfig, parity
from vsdmot.export.qdq_check import QdqCheckConfig, check_model, qdq_check
from vsdmot.export.quantize import QuantConfig, nodes_to_keep_float, quantize
from vsdmot.export.report import read_stamp
from vsdmot.export.simplify import SimplifyConfig, simplify
from vsdmot.export.to_onnx import OnnxConfig, to_onnx


def chain(net, feeds, tmp_path, method="minmax"):
    fp = simplify(to_onnx(net, OnnxConfig(), tmp_path / "a.onnx"), SimplifyConfig(), tmp_path / "b.onnx")
    q = quantize(fp, QuantConfig(method=method, stride=5), tmp_path / "c.onnx", feeds, "test-feeds")
    return fp, q


def test_detector_chain_quantises_symmetric_per_channel(det_net, det_feeds, tmp_path):
    fp, q = chain(det_net, det_feeds, tmp_path)
    assert onnx.load(str(fp)).opset_import[0].version == 17
    problems, counts = check_model(onnx.load(str(q)))
    assert problems == [] and counts["dequantize_nodes"] > 5
    rep = json.loads(qdq_check(q, QdqCheckConfig(), tmp_path / "c.qdq.json").read_text())
    assert rep["ok"]
    ref = lambda feed: det_net.run(feed)  # noqa: E731
    res = json.loads(parity(fp, FP32, tmp_path / "p.json", ref, "torch", det_feeds).read_text())
    assert res["passed"] and set(res["outputs"]) == {"output", "embed"}
    from vsdmot.export.parity import onnx_runner
    res8 = json.loads(parity(q, INT8, tmp_path / "p8.json", onnx_runner(fp), "fp32", det_feeds).read_text())
    assert res8["outputs"]["output"]["cosine"] > 0.95


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods(det_net, det_feeds, tmp_path, method):
    _, q = chain(det_net, det_feeds[:10], tmp_path, method)
    assert check_model(onnx.load(str(q)))[0] == []
    assert read_stamp(q)["details"]["method"] == method


def test_tracker_keeps_attention_softmax_layernorm_and_fusion_float(trk_net, trk_feeds, tmp_path):
    fp, q = chain(trk_net, trk_feeds, tmp_path)
    model = onnx.load(str(fp))
    kept = nodes_to_keep_float(model, QuantConfig())
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {"Softmax", "LayerNormalization"} <= {ops[k] for k in kept}
    sem_gemm = [n.name for n in model.graph.node if "semantic" in n.input]
    assert sem_gemm and set(sem_gemm) <= kept  # the DSWR/fusion path stays float
    qm = onnx.load(str(q))
    assert check_model(qm)[0] == []
    dq_consumers = {c.op_type for n in qm.graph.node if n.op_type == "DequantizeLinear"
                    for c in qm.graph.node if n.output[0] in c.input}
    assert "Softmax" not in dq_consumers and "LayerNormalization" not in dq_consumers


def test_steps_are_idempotent(det_net, det_feeds, tmp_path, caplog):
    chain(det_net, det_feeds[:10], tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")}
    caplog.set_level("INFO")
    chain(det_net, det_feeds[:10], tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")} == mtimes
    assert caplog.text.count("up to date") == 3


def plant_uint8(model):
    """Turn the first activation QuantizeLinear/DequantizeLinear pair asymmetric uint8 (zero-point 128)."""
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zp = inits[q.input[2]]
    zp.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), zp.name))
    return model


def test_qdq_check_catches_planted_asymmetric_uint8(det_net, det_feeds, tmp_path):
    _, q = chain(det_net, det_feeds[:10], tmp_path)
    bad = plant_uint8(onnx.load(str(q)))
    problems, _ = check_model(bad)
    assert any("expected an int8 zero-point (symmetric), found uint8" in p for p in problems)
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(ValueError, match="not TensorRT-compatible.*uint8"):
        qdq_check(tmp_path / "bad.onnx", QdqCheckConfig(), tmp_path / "bad.json")


def _qdq_graph(zp, scale, axis=None, weight_shape=(4, 3, 1, 1), opset=17, consumer="Conv"):
    w = numpy_helper.from_array(np.ones(weight_shape, np.int8), "w_q")
    s = numpy_helper.from_array(np.asarray(scale, np.float32), "s")
    z = numpy_helper.from_array(np.asarray(zp), "z")
    attrs = {"axis": axis} if axis is not None else {}
    dq = helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w"], name="dq_w", **attrs)
    conv = helper.make_node(consumer, ["x", "w"], ["y"], name="conv")
    g = helper.make_graph([dq, conv], "g", [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", 1, None)], [w, s, z])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


CASES = [
    # (what, zero-point, scale, axis, opset, expected problem fragment or None)
    ("ok per-channel", np.zeros(4, np.int8), [0.1] * 4, 0, 17, None),
    ("nonzero zp", np.full(4, 3, np.int8), [0.1] * 4, 0, 17, "expected zero-point 0"),
    ("negative scale", np.zeros(4, np.int8), [0.1, -1, 0.1, 0.1], 0, 17, "positive finite"),
    ("nan scale", np.zeros(4, np.int8), [0.1, np.nan, 0.1, 0.1], 0, 17, "positive finite"),
    ("wrong axis", np.zeros(3, np.int8), [0.1] * 3, 1, 17, "expected 0"),
    ("old opset", np.zeros(4, np.int8), [0.1] * 4, 0, 11, "expected >= 13"),
    ("int32 data", np.zeros(4, np.int32), [0.1] * 4, 0, 17, "expected an int8 zero-point"),
]


@pytest.mark.parametrize("what,zp,scale,axis,opset,problem", CASES, ids=[c[0] for c in CASES])
def test_qdq_rules(what, zp, scale, axis, opset, problem):
    problems, _ = check_model(_qdq_graph(zp, scale, axis, opset=opset))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_parity_refuses_a_wrong_export(det_net, det_feeds, tmp_path):
    fp = to_onnx(det_net, OnnxConfig(), tmp_path / "a.onnx")
    wrong = lambda feed: {k: v * 1.1 for k, v in det_net.run(feed).items()}  # noqa: E731
    with pytest.raises(ValueError, match="max abs error|cosine"):
        parity(fp, ParityConfig(max_abs=1e-4), tmp_path / "p.json", wrong, "torch*1.1", det_feeds)
