"""export/qdq_graph.py: the graph walks on a small hand-made graph whose answers are known, the Q/DQ
rewrites on a hand-made Q/DQ graph, and the storage rewrites on ORT's own output (bit-identical)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from vsdmot.export.qdq_check import check_model
from vsdmot.export.qdq_graph import (boundary_layers, cone_nodes, drop_dead_qdq, float_inputs, name_nodes,
                                     share_qdq_constants, short_qdq_names, tail_nodes, weight_sizes)
from vsdmot.export.quantize import QuantConfig, quantize

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _init(name, shape):
    return numpy_helper.from_array(np.full(shape, 0.5, np.float32), name)


def _fused():
    """x (1,4) -> mul -> fc1 -> relu -+-> add -> fc2 -> norm, div -> y;  semantic (1,2) -> sem -> fuse (* w) -+
    The tracker's shape in miniature: a raw input scaled before its first layer, a fused semantic branch
    computed from `semantic` and `w` only, a last layer, and an L2-normalising tail."""
    inits = [_init("c", [1]), _init("W1", [3, 4]), _init("b1", [3]), _init("Ws", [3, 2]), _init("W2", [5, 3])]
    nodes = [helper.make_node("Mul", ["x", "c"], ["x2"], name="mul"),
             helper.make_node("Gemm", ["x2", "W1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["semantic", "Ws"], ["s"], name="sem", transB=1),
             helper.make_node("Mul", ["s", "w"], ["sw"], name="fuse"),
             helper.make_node("Add", ["r", "sw"], ["a"], name="add"),
             helper.make_node("Gemm", ["a", "W2"], ["z"], name="fc2", transB=1),
             helper.make_node("ReduceL2", ["z"], ["n"], name="norm", axes=[1], keepdims=1),
             helper.make_node("Div", ["z", "n"], ["y"], name="div")]
    ins = [helper.make_tensor_value_info(n, 1, s) for n, s in (("x", [1, 4]), ("semantic", [1, 2]), ("w", [1, 1]))]
    graph = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", 1, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CONSTS = {"c", "W1", "b1", "Ws", "W2"}


@pytest.mark.parametrize("walk, want", [
    (lambda m: tail_nodes(m), {"norm", "div"}),  # stops at the last weighted layer
    (lambda m: boundary_layers(m, CONSTS), {"fc1", "sem", "fc2"}),  # fc1 through the non-weighted mul
    (lambda m: boundary_layers(m, CONSTS, first=False), {"fc2"}),
    (lambda m: cone_nodes(m, ("semantic", "w"), CONSTS), {"sem", "fuse"}),  # add also reads r: not in the cone
    (lambda m: cone_nodes(m, ("x",), CONSTS), {"mul", "fc1", "relu"}),
    (lambda m: cone_nodes(m, ("not_an_input",), CONSTS), set()),
    (lambda m: weight_sizes(m), ({"fc1": 12, "sem": 6, "fc2": 15}, 33)),  # >= 2-D only: biases and c not counted
])
def test_graph_walks(walk, want):
    assert walk(_fused()) == want


def test_name_nodes_names_only_the_unnamed():
    m = _fused()
    m.graph.node[2].name, m.graph.node[7].name = "", ""
    name_nodes(m)
    assert [n.name for n in m.graph.node][1:8] == ["fc1", "Relu_2", "sem", "fuse", "add", "fc2", "ReduceL2_7"]


def _qdq_pairs(n_pairs=2):
    """x -> (Q, DQ) x n_pairs, each with its own scale / zero-point initializer of the same value
    (ORT's layout), read by a Relu each; plus a float weight holding the scale's bytes, read by a Mul."""
    inits, nodes = [_init("k", [])], []
    for i in range(n_pairs):
        inits += [numpy_helper.from_array(np.array(0.5, np.float32), f"x_scale_{i}"),
                  numpy_helper.from_array(np.array(0, np.int8), f"x_zp_{i}")]
        nodes += [helper.make_node("QuantizeLinear", ["x", f"x_scale_{i}", f"x_zp_{i}"], [f"xq_{i}"], name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"xq_{i}", f"x_scale_{i}", f"x_zp_{i}"], [f"xd_{i}"],
                                   name=f"dq{i}"),
                  helper.make_node("Relu", [f"xd_{i}"], [f"y{i}"], name=f"relu{i}")]
    nodes.append(helper.make_node("Mul", ["x", "k"], ["yk"], name="mul"))
    outs = [helper.make_tensor_value_info(f"y{i}", 1, [1, 4]) for i in range(n_pairs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                              outs + [helper.make_tensor_value_info("yk", 1, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_inputs_rewire_kept_float_readers_and_drop_what_nobody_reads():
    m = _qdq_pairs()
    assert float_inputs(m, {"relu0"}) == 1
    assert m.graph.node[[n.name for n in m.graph.node].index("relu0")].input[0] == "x"
    assert {n.name for n in m.graph.node} == {"q1", "dq1", "relu0", "relu1", "mul"}  # pair 0 had no other reader
    assert {t.name for t in m.graph.initializer} == {"k", "x_scale_1", "x_zp_1"}


def test_drop_dead_qdq_keeps_qdq_feeding_a_graph_output():
    m = _qdq_pairs(1)
    m.graph.output.append(helper.make_tensor_value_info("xd_0", 1, [1, 4]))
    m.graph.node.remove(m.graph.node[2])  # relu0: the DQ's only node reader
    drop_dead_qdq(m)
    assert [n.name for n in m.graph.node] == ["q0", "dq0", "mul"]


def test_share_and_short_names_on_hand_made_qdq():
    m, src = _qdq_pairs(3), _qdq_pairs(3)
    feed = {"x": np.linspace(-2, 2, 4, dtype=np.float32)[None]}
    run = lambda model: ort.InferenceSession(model.SerializeToString()).run(None, feed)  # noqa: E731
    before = run(m)
    assert share_qdq_constants(m) == 4  # 3 scales -> 1, 3 zero-points -> 1; `k` (a float weight) stays
    assert {t.name for t in m.graph.initializer} == {"k", "x_scale_0", "x_zp_0"}
    src.graph.node.remove(src.graph.node[0])  # q0 and its output are what "quantisation added" here
    src.graph.node.remove(src.graph.node[0])
    assert short_qdq_names(m, src) == 1 and "xq_0" not in {o for n in m.graph.node for o in n.output}
    assert all(not n.name for n in m.graph.node if n.op_type in QDQ)
    for a, b in zip(before, run(m)):
        np.testing.assert_array_equal(a, b)


def test_sharing_and_short_names_change_no_output_bit(det_net, det_feeds, tmp_path, monkeypatch):
    """Both rewrites are storage only: applied to ORT's own Q/DQ output they leave every output bit
    equal, the Q/DQ check still passes, and the file shrinks."""
    import vsdmot.export.quantize as qz
    from vsdmot.export.simplify import SimplifyConfig, simplify
    from vsdmot.export.to_onnx import OnnxConfig, to_onnx

    fp = simplify(to_onnx(det_net, OnnxConfig(), tmp_path / "a.onnx"), SimplifyConfig(), tmp_path / "b.onnx")
    monkeypatch.setattr(qz, "share_qdq_constants", lambda m: 0)  # quantize's own call, not the ones below
    monkeypatch.setattr(qz, "short_qdq_names", lambda m, s: 0)
    q = quantize(fp, QuantConfig(stride=5, max_rounds=0), tmp_path / "q.onnx", det_feeds[:10], "det")
    before, after = onnx.load(str(q)), onnx.load(str(q))
    assert share_qdq_constants(after) > 0 and short_qdq_names(after, onnx.load(str(fp))) > 0
    assert check_model(after)[0] == [] and after.ByteSize() < 0.95 * before.ByteSize()
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        ["output", "embed"], det_feeds[0])
    for a, b in zip(run(before), run(after)):
        np.testing.assert_array_equal(a, b)
