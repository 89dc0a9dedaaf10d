"""Step: check that a Q/DQ ONNX is what TensorRT's explicit INT8 path accepts, without TensorRT.

Rules (each problem is one line naming the node and what was expected and found):
- opset >= 13 (per-channel DequantizeLinear);
- every Q/DQ zero-point is int8 and all zeros (symmetric): a uint8 zero-point is an asymmetric
  quantisation TensorRT refuses; scales positive and finite;
- per-tensor scales are scalars; per-channel scales only on constant weights, with the axis of
  the consumer's output channels (Conv 0, ConvTranspose 1, MatMul last, Gemm by transB) and one
  scale per channel;
- pairs well formed: a QuantizeLinear feeds only DequantizeLinear with the same scale and
  zero-point; a DequantizeLinear reads a QuantizeLinear or an int8 constant (no int32 bias DQ);
- every op is one TensorRT's ONNX parser supports.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot.runtime.bundle import file_sha256

from .report import cached_step, fingerprint

log = logging.getLogger(__name__)
QDQ = ("QuantizeLinear", "DequantizeLinear")
# ONNX ops TensorRT's parser (8.5 .. 10.x) supports, restricted to what exported CNN/attention nets use.
TRT_OPS = frozenset(
    "Abs Add And ArgMax AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv "
    "ConvTranspose Cos CumSum DepthToSpace DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten Floor "
    "Gather GatherElements GatherND Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid "
    "HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul "
    "Max MaxPool Mean Min Mod Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL2 ReduceMax "
    "ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize ScatterElements ScatterND Selu Shape Sigmoid "
    "Sign Sin Slice Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze "
    "Where Xor".split())
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


@dataclass(frozen=True)
class QdqCheckConfig:
    min_opset: int = 13  # per-channel DequantizeLinear needs opset 13
    strict: bool = True  # raise ValueError on any problem (False: record them only)


def qdq_check(onnx_path: str | Path, cfg: QdqCheckConfig, out_path: str | Path) -> Path:
    """Write the check's JSON to `out_path`; ValueError listing the problems when strict."""
    def build(out: Path) -> dict[str, Any]:
        import onnx

        problems, counts = check_model(onnx.load(str(onnx_path)), cfg.min_opset)
        result = {"onnx": Path(onnx_path).name, "ok": not problems, "problems": problems, **counts}
        if problems and cfg.strict:
            raise ValueError(f"{Path(onnx_path).name} is not TensorRT-compatible Q/DQ ({len(problems)} problems): "
                             + "; ".join(problems[:8]))
        out.write_text(json.dumps(result, indent=2))
        return {"ok": not problems, "problems": len(problems), **counts}

    return cached_step("qdq_check", out_path, fingerprint(file_sha256(onnx_path), cfg), build)


def check_model(model, min_opset: int = 13) -> tuple[list[str], dict[str, int]]:
    """(problems, counts) for a Q/DQ model: see the module doc for the rules."""
    g = Graph(model)
    problems = [f"opset {g.opset}: expected >= {min_opset}"] if g.opset < min_opset else []
    problems += [f"node {n.name or n.op_type}: op {n.op_type} is not supported by TensorRT's ONNX parser"
                 for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_OPS]
    for node in model.graph.node:
        if node.op_type in QDQ:
            problems += check_qdq_node(g, node)
    n_q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    n_dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    if n_dq == 0:
        problems.append("no DequantizeLinear nodes: the model is not quantised")
    return problems, {"quantize_nodes": n_q, "dequantize_nodes": n_dq, "nodes": len(model.graph.node)}


class Graph:
    """Constants and producer/consumer maps of an ONNX graph."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)


def check_qdq_node(g: Graph, node) -> list[str]:
    name = node.name or node.output[0]
    scale, zp = g.consts.get(node.input[1]), g.consts.get(node.input[2]) if len(node.input) > 2 else None
    if scale is None:
        return [f"{node.op_type} {name}: expected a constant scale, found a computed one"]
    out = check_scale_zp(name, node.op_type, scale, zp)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    out += check_axis(g, node, name, scale, axis)
    out += check_pairing(g, node, name, scale, zp)
    return out


def check_scale_zp(name: str, op: str, scale: np.ndarray, zp: np.ndarray | None) -> list[str]:
    out = []
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        out.append(f"{op} {name}: expected positive finite scales, found min {float(np.min(scale)):g}")
    if zp is None:
        out.append(f"{op} {name}: expected an explicit int8 zero-point, found none (defaults to uint8)")
    elif zp.dtype != np.int8:
        out.append(f"{op} {name}: expected an int8 zero-point (symmetric), found {zp.dtype} (asymmetric "
                   f"{'activation' if zp.dtype == np.uint8 else 'data'}; TensorRT refuses it)")
    elif np.any(zp != 0):
        out.append(f"{op} {name}: expected zero-point 0 (symmetric), found {np.unique(zp)[:4].tolist()}")
    return out


def check_axis(g: Graph, node, name: str, scale: np.ndarray, axis: int) -> list[str]:
    if scale.size == 1:
        return [] if scale.ndim <= 1 else [f"{node.op_type} {name}: expected a scalar scale, found shape {scale.shape}"]
    data = g.consts.get(node.input[0])
    if node.op_type != "DequantizeLinear" or data is None:
        return [f"{node.op_type} {name}: per-channel scales ({scale.size}) on an activation; TensorRT "
                f"takes per-tensor activation scales"]
    axis = axis % data.ndim
    out = [] if data.shape[axis] == scale.size else [
        f"DequantizeLinear {name}: {scale.size} scales for {data.shape[axis]} channels on axis {axis}"]
    for c in g.consumers.get(node.output[0], []):
        want = weight_axis(c, data.ndim)
        if want is not None and axis != want:
            out.append(f"DequantizeLinear {name}: weight axis {axis} for {c.op_type} {c.name}, expected {want} "
                       f"(output channels)")
    return out


def weight_axis(consumer, ndim: int) -> int | None:
    if consumer.op_type in WEIGHT_AXIS:
        return WEIGHT_AXIS[consumer.op_type]
    if consumer.op_type == "MatMul":
        return ndim - 1
    if consumer.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in consumer.attribute) else 1
    return None


def check_pairing(g: Graph, node, name: str, scale: np.ndarray, zp: np.ndarray | None) -> list[str]:
    if node.op_type == "QuantizeLinear":
        bad = [c for c in g.consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
        return [f"QuantizeLinear {name}: feeds {c.op_type} {c.name}; expected only DequantizeLinear" for c in bad]
    src = node.input[0]
    if src in g.consts:
        dt = g.consts[src].dtype
        return [] if dt == np.int8 else [f"DequantizeLinear {name}: constant input is {dt}, expected int8 "
                                         f"(TensorRT dequantizes int8 only; keep bias in float)"]
    q = g.producer.get(src)
    if q is None or q.op_type != "QuantizeLinear":
        return [f"DequantizeLinear {name}: input {src} comes from {q.op_type if q else 'a graph input'}, "
                f"expected a QuantizeLinear"]
    qs, qz = g.consts.get(q.input[1]), g.consts.get(q.input[2]) if len(q.input) > 2 else None
    same = qs is not None and np.array_equal(qs, scale) and (qz is None) == (zp is None) and (
        zp is None or np.array_equal(qz, zp))
    return [] if same else [f"DequantizeLinear {name}: scale/zero-point differ from its QuantizeLinear {q.name}"]
