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


def test_informational_parity_does_not_read_as_a_failure(det_net, det_feeds, tmp_path):
    """FP32 -> INT8 parity is recorded, not enforced: the report says the accuracy gate decides."""
    fp = to_onnx(det_net, OnnxConfig(), tmp_path / "a.onnx")
    off = lambda feed: {k: -v for k, v in det_net.run(feed).items()}  # noqa: E731  cosine -1: far outside
    out = parity(fp, INT8, tmp_path / "p8.json", off, "negated", det_feeds)
    res, details = json.loads(out.read_text()), read_stamp(out)["details"]
    assert res["failures"] and "accuracy gate" in res["note"]
    assert details["within_thresholds"] is False and details["decides"] == "accuracy gate" and "passed" not in details


def test_report_table_counts_long_details():
    from vsdmot.export.report import _short

    short = _short({"equalized": {f"t{i}": float(i) for i in range(70)}, "latency": {"fp32": 1.0, "int8": 2.0},
                    "kept_float": list(range(9)), "method": "minmax"})
    assert short == {"equalized": "70 entries (in export_report.json)", "latency": {"fp32": 1.0, "int8": 2.0},
                     "method": "minmax"}


# --- INT8 remedies, each on a tiny graph that reproduces the measured failure -------------------------------

def _save(nodes, inputs, outputs, inits, path):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, 1, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, 1, None) for n in outputs], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _masked_logits_graph(path):
    """y (1, 8, 4) = softmax(x @ W + (1 - mask) * -1e4) @ V: tracker_head.py's masked attention/pointer
    logits (the -1e4 Add, then a concat with the null column, then softmax)."""
    g = np.random.default_rng(1)
    inits = [numpy_helper.from_array(g.standard_normal((4, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(g.standard_normal((17, 4)).astype(np.float32), "V"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
             numpy_helper.from_array(np.zeros((1, 8, 1), np.float32), "null")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["l"], name="mm"),
             helper.make_node("Sub", ["one", "mask"], ["inv"], name="inv"),
             helper.make_node("Mul", ["inv", "neg"], ["pen"], name="pen"),
             helper.make_node("Add", ["l", "pen"], ["masked"], name="add"),
             helper.make_node("Concat", ["masked", "null"], ["logit"], name="cat", axis=2),
             helper.make_node("Softmax", ["logit"], ["prob"], name="sm", axis=2),
             helper.make_node("MatMul", ["prob", "V"], ["y"], name="mix")]
    return _save(nodes, [("x", [1, 8, 4]), ("mask", [1, 1, 16])], ["y"], inits, path)


def _mask_feeds(n=20):
    g = np.random.default_rng(2)
    return [{"x": g.standard_normal((1, 8, 4)).astype(np.float32),
             "mask": (g.random((1, 1, 16)) < 0.5).astype(np.float32)} for _ in range(n)]


def _live_cosine(fp, q, feeds):
    from vsdmot.export.parity import compare, onnx_runner
    return compare(onnx_runner(fp), onnx_runner(q), feeds)["y"]["cosine"]


def test_masked_logits_keep_their_values_after_quantisation(tmp_path):
    """The -1e4 mask Add quantised per tensor rounds every real logit to 0 (the tracker's keep/birth
    fell to cosine 0.04 / 0.10 that way); with Q/DQ only on weighted layers' inputs they survive."""
    fp, feeds = _masked_logits_graph(tmp_path / "m.onnx"), _mask_feeds()
    q = quantize(fp, QuantConfig(stride=5, max_rounds=0, keep_boundary=False), tmp_path / "q.onnx", feeds, "mask")
    assert _live_cosine(fp, q, feeds) > 0.9
    assert check_model(onnx.load(str(q)))[0] == []
    every_op = QuantConfig(stride=5, max_rounds=0, op_types=("MatMul", "Add", "Concat"), keep_boundary=False)
    old = quantize(fp, every_op, tmp_path / "o.onnx", feeds, "mask")  # the old placement: Add/Concat too
    assert _live_cosine(fp, old, feeds) < 0.5


def test_parity_leaves_masked_sentinels_out():
    from vsdmot.export.parity import compare
    ref = {"l": np.array([1.0, 2.0, -1e4, -1e4])}
    res = compare(lambda f: ref, lambda f: {"l": np.array([-1.0, -2.0, -1e4, -1e4])}, [{}])
    assert res["l"]["cosine"] == pytest.approx(-1.0)  # with the sentinels it would read ~1.0


def _two_convs(path, spread=100.0):
    """Conv A (1x1, 8 channels whose ranges differ `spread`x) -> Conv B (1x1, dense): the YOLOX
    depthwise -> pointwise pattern that int8 per-tensor activations wreck."""
    g = np.random.default_rng(3)
    wa = g.standard_normal((8, 3, 1, 1)).astype(np.float32) * np.geomspace(1, spread, 8)[:, None, None, None]
    wb = g.standard_normal((4, 8, 1, 1)).astype(np.float32) / np.geomspace(1, spread, 8)[None, :, None, None]
    inits = [numpy_helper.from_array(wa.astype(np.float32), "wa"), numpy_helper.from_array(wb.astype(np.float32), "wb"),
             numpy_helper.from_array(np.zeros(8, np.float32), "ba"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bb")]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
             helper.make_node("Conv", ["a", "wb", "bb"], ["y"], name="B")]
    return _save(nodes, [("x", [1, 3, 8, 8])], ["y", "a"], inits, path)


def test_equalisation_is_exact_in_float_and_rescues_int8(tmp_path):
    import onnxruntime as ort

    from vsdmot.export.equalize import EqualizeConfig, equalize
    fp = _two_convs(tmp_path / "c.onnx")
    g = np.random.default_rng(4)
    feeds = [{"x": g.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(20)]
    m = onnx.load(str(fp))
    m.graph.output.pop()  # y only: `a` must be free to be rewritten
    onnx.save(m, str(fp))
    eq = onnx.load(str(fp))
    assert list(equalize(eq, feeds, EqualizeConfig())) == ["a"]
    run = lambda model: ort.InferenceSession(model.SerializeToString()).run(None, feeds[0])[0]  # noqa: E731
    np.testing.assert_allclose(run(eq), run(m), rtol=1e-4, atol=1e-4)
    cos = {}
    for name, cfg in {"eq": QuantConfig(stride=5, max_rounds=0, keep_boundary=False),
                      "plain": QuantConfig(stride=5, max_rounds=0, keep_boundary=False, equalize=None)}.items():
        q = quantize(fp, cfg, tmp_path / f"{name}.onnx", feeds, "convs")
        assert check_model(onnx.load(str(q)))[0] == []
        from vsdmot.export.parity import compare, onnx_runner
        cos[name] = compare(onnx_runner(fp), onnx_runner(q), feeds)["y"]["cosine"]
    assert 1 - cos["eq"] < (1 - cos["plain"]) / 10, cos  # measured 0.9999 vs 0.972


def test_calibration_clips_padded_slots_into_the_live_range():
    from vsdmot.export.quantize import mask_pairs, masked
    pairs = mask_pairs(["track_miss", "track_mask", "track_box", "prop_box", "prop_mask", "semantic"])
    assert set(pairs) == {("track_miss", "track_mask"), ("track_box", "track_mask"), ("prop_box", "prop_mask")}
    f32 = lambda x: np.array([x], np.float32)  # noqa: E731
    feeds = [{"track_miss": f32([0.0, 3.0, 511.0]), "track_mask": f32([1.0, 1.0, 0.0])},
             {"track_miss": f32([20.0, 40.0, 7.0]), "track_mask": f32([1.0, 0.0, 0.0])}]
    m = masked(feeds, [("track_miss", "track_mask")])
    assert m[0]["track_miss"].tolist() == [[0.0, 3.0, 20.0]]  # the dead slot's 511 -> the live max 20
    assert m[1]["track_miss"].tolist() == [[20.0, 20.0, 7.0]]
    assert masked(feeds, ()) is feeds


def test_boundary_layers_stay_float(det_net, det_feeds, tmp_path):
    fp, q = chain(det_net, det_feeds[:10], tmp_path)
    from vsdmot.export.qdq_graph import boundary_layers
    model = onnx.load(str(fp))
    consts = {t.name for t in model.graph.initializer}
    first_last = boundary_layers(model, consts)
    assert first_last and all(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node if n.name in first_last)
    qm = onnx.load(str(q))
    fed_by_dq = {c.name for n in qm.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in
                 {t.name for t in qm.graph.initializer} for c in qm.graph.node if n.output[0] in c.input}
    assert not (first_last & fed_by_dq)  # their activations are not quantised


class CountingFeeds:
    """Lazy feeds (like calibration.feeds.DetectorFeeds): each access converts a fresh array; `peak` is
    the most converted arrays alive at once."""

    def __init__(self, base, n):
        import weakref

        self.base, self.n, self.alive, self.peak, self.ref = base, n, [], 0, weakref.ref

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        feed = {k: v.copy() for k, v in self.base[i % len(self.base)].items()}
        self.alive = [r for r in self.alive if r() is not None] + [self.ref(v) for v in feed.values()]
        self.peak = max(self.peak, len(self.alive))
        return feed


def test_calibration_converts_feeds_a_chunk_at_a_time(det_net, det_feeds, tmp_path):
    """ORT calibration reads lazy feeds one at a time: slicing them first made a list of every frame
    (the 416 px detector's 500 calibration frames: 1 GB of float32 at once)."""
    fp = simplify(to_onnx(det_net, OnnxConfig(), tmp_path / "a.onnx"), SimplifyConfig(), tmp_path / "b.onnx")
    feeds = CountingFeeds(det_feeds, 200)
    q = quantize(fp, QuantConfig(stride=5, max_rounds=0), tmp_path / "c.onnx", feeds, "counting")
    assert read_stamp(q)["details"]["calib_frames"] == 200
    assert feeds.peak < 100  # equalisation's 34 spread frames and the 6 probes, never all 200


@pytest.mark.parametrize("tool,redone", [("torch", "a.onnx"), ("onnxslim", "b.onnx"), ("onnxruntime", "c.onnx")])
def test_a_tool_upgrade_redoes_the_step_it_writes(det_net, det_feeds, tmp_path, monkeypatch, tool, redone):
    """A step's output depends on the tool that writes it (torch's exporter, onnxslim, ORT's quantizer), and
    the manifest's `tools` claims the installed versions made the files: a cached file made by the old
    version was reused after an upgrade."""
    import importlib.metadata as md

    chain(det_net, det_feeds[:10], tmp_path)
    keys = {p.name: read_stamp(p)["key"] for p in tmp_path.glob("*.onnx")}
    real = md.version
    monkeypatch.setattr(md, "version", lambda dist: "9.9.9" if dist == tool else real(dist))
    chain(det_net, det_feeds[:10], tmp_path)
    assert read_stamp(tmp_path / redone)["key"] != keys[redone]  # (files after it: redone when its bytes moved)


def test_equalisation_stays_exact_when_convs_share_a_weight():
    """The detector's embed_proj is one weight read by three convs (one per FPN level); equalising their
    three inputs scaled that one initializer three times while each input was divided by its own scale
    only: the FP32 detector's `embed` moved by up to 0.31 (of 0.65) before any rounding."""
    import onnxruntime as ort

    from vsdmot.export.equalize import EqualizeConfig, equalize

    g = np.random.default_rng(5)
    spread = [np.array(s, np.float32).reshape(1, 4, 1, 1) for s in ([1, 100, 1, 30], [50, 1, 8, 1])]
    inits = [numpy_helper.from_array(s, f"s{i}") for i, s in enumerate(spread)]
    inits.append(numpy_helper.from_array(g.standard_normal((6, 4, 1, 1)).astype(np.float32), "shared.weight"))
    nodes = [helper.make_node("Mul", ["x", "s0"], ["t0"], name="m0"), helper.make_node("Mul", ["x", "s1"], ["t1"], name="m1"),
             helper.make_node("Conv", ["t0", "shared.weight"], ["y0"], name="c0"),
             helper.make_node("Conv", ["t1", "shared.weight"], ["y1"], name="c1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info(y, 1, None) for y in ("y0", "y1")], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": g.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    eq = onnx.ModelProto()
    eq.CopyFrom(m)
    equalize(eq, feeds, EqualizeConfig())
    run = lambda model: ort.InferenceSession(model.SerializeToString()).run(None, feeds[0])  # noqa: E731
    for a, b in zip(run(eq), run(m)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_a_candidate_emitting_nan_fails_parity():
    """min() and max() skip NaN: a candidate whose outputs were NaN passed at cosine 1.0."""
    from vsdmot.export.parity import compare, failures

    ref = {"y": np.array([1.0, 2.0, 3.0])}
    res = compare(lambda f: ref, lambda f: {"y": np.array([1.0, np.nan, 3.0])}, [{}, {}])
    assert res["y"]["cosine"] == 0.0 and res["y"]["max_abs"] == float("inf")
    assert len(failures(res, FP32)) == 2


def test_parity_is_keyed_by_its_feeds_not_their_count(det_net, det_feeds, tmp_path):
    """The reference export's parity (demo frames) and a later check at the same path (calibration
    feeds, also 8) shared a key: the second was never run, and the shipped manifest recorded a
    stale file's numbers."""
    fp, _ = chain(det_net, det_feeds, tmp_path)
    ref = lambda feed: det_net.run(feed)  # noqa: E731
    first = json.loads(parity(fp, FP32, tmp_path / "p.json", ref, "torch", det_feeds[:4]).read_text())
    other = [{k: v[..., ::-1].copy() for k, v in f.items()} for f in det_feeds[4:8]]  # 4 other feeds
    second = json.loads(parity(fp, FP32, tmp_path / "p.json", ref, "torch", other).read_text())
    assert first["frames"] == second["frames"] == 4 and first["outputs"] != second["outputs"]
