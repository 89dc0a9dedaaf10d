"""ONNX graph walks and Q/DQ storage rewrites for `quantize.py`; no configs, no calibration, no ORT sessions.

Walks (read-only; `model` is an `onnx.ModelProto`, its nodes in topological order, as ONNX requires):
which nodes assemble the outputs after the last weighted layer (`tail_nodes`), which weighted layers sit
first or last (`boundary_layers`), which nodes derive only from given inputs (`cone_nodes`), and how many
weights each node holds (`weight_sizes`). `quantize.nodes_to_keep_float` turns a `QuantConfig` into a
node set with them.

Rewrites (in place, on the model ORT's `quantize_static` wrote): kept-float nodes read the float tensor
(`float_inputs`), Q/DQ nobody reads are dropped (`drop_dead_qdq`), Q/DQ scales and zero-points are shared by
value and the names quantisation added are short (`share_qdq_constants`, `short_qdq_names`; storage only:
bit-identical outputs, 0.22 MB over the three networks). `name_nodes` names nodes before quantisation,
so exclusion lists can refer to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def name_nodes(model) -> None:
    """Give every unnamed node a stable name (exclusion lists refer to nodes by name)."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


# -- walks -----------------------------------------------------------------------------------------
def tail_nodes(model) -> set[str]:
    """Nodes that assemble the outputs after the last weighted layer (concat of raw boxes with
    sigmoid scores, reshapes, L2 normalisation): one int8 scale over mixed ranges wrecks them."""
    prod = {o: n for n in model.graph.node for o in n.output}
    todo, seen = [o.name for o in model.graph.output], set()
    while todo:
        node = prod.get(todo.pop())
        if node is None or node.name in seen or node.op_type in WEIGHTED:
            continue
        seen.add(node.name)
        todo.extend(node.input)
    return seen


def boundary_layers(model, consts: set[str], first: bool = True) -> set[str]:
    """Weighted nodes whose live inputs all come from graph inputs through non-weighted nodes only
    (the tracker's pair-feature MLP, the detector's stem; left out when not `first`), and those whose
    output reaches a graph output through non-weighted nodes only (heads' prediction convs, the last
    Linear layers)."""
    raw = {i.name for i in model.graph.input}
    first_layers = set()
    for node in model.graph.node:  # topological order
        live = [i for i in node.input if i and i not in consts]
        if live and all(i in raw for i in live):
            if node.op_type in WEIGHTED:
                first_layers.add(node.name)
            else:
                raw.update(node.output)
    prod = {o: n for n in model.graph.node for o in n.output}
    todo, seen, last = [o.name for o in model.graph.output], set(), set()
    while todo:
        node = prod.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHTED:
            last.add(node.name)
        else:
            todo.extend(node.input)
    return (first_layers if first else set()) | last


def cone_nodes(model, inputs: Sequence[str], consts: set[str]) -> set[str]:
    """Nodes whose non-constant inputs all derive from `inputs` only (graph is topologically sorted)."""
    derived, names = set(inputs) & {i.name for i in model.graph.input}, set()
    for node in model.graph.node:
        live = [i for i in node.input if i and i not in consts]
        if live and all(i in derived for i in live):
            derived.update(node.output)
            names.add(node.name)
    return names


def weight_sizes(model) -> tuple[dict[str, int], int]:
    """({node: elements of its constant weight tensors (>= 2-D)}, total over the graph)."""
    dims = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if len(t.dims) >= 2}
    sizes = {n.name: sum(dims.get(i, 0) for i in n.input) for n in model.graph.node}
    return {k: v for k, v in sizes.items() if v}, sum(dims.values())


# -- storage rewrites ------------------------------------------------------------------------------
def float_inputs(model, names: set[str]) -> int:
    """Kept-float nodes read the float tensor, not DQ(Q(x)) of it; drop Q/DQ left without consumers."""
    prod = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dq = prod.get(name)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k], rewired = q.input[0], rewired + 1
    drop_dead_qdq(model)
    return rewired


def drop_dead_qdq(model) -> None:
    """Remove Q/DQ nodes nobody reads any more, then the scales and zero-points they held."""
    outputs = {o.name for o in model.graph.output}
    for _ in range(2):  # DQ first, then the Q that fed it
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def share_qdq_constants(model) -> int:
    """One initializer per distinct Q/DQ scale or zero-point value (ORT writes one per tensor: the
    detector's 193 all-zero int8 zero-points were 21 kB); float/int8 weights are left alone.
    Returns how many initializers were merged away."""
    from onnx import numpy_helper

    params = {n.input[k] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
              for k in (1, 2) if len(n.input) > k}
    other = {i for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") for i in n.input}
    first, alias = {}, {}
    for t in model.graph.initializer:
        if t.name in params and t.name not in other:
            key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
            alias[t.name] = first.setdefault(key, t.name)
    for node in model.graph.node:
        node.input[:] = [alias.get(i, i) for i in node.input]
    dup = [t for t in model.graph.initializer if alias.get(t.name, t.name) != t.name]
    for t in dup:
        model.graph.initializer.remove(t)
    return len(dup)


def short_qdq_names(model, source) -> int:
    """Short names for what quantisation added (Q/DQ nodes, their tensors, scales, zero-points, int8
    weights): ORT derives them from the float names ("<w>_quantized", "<x>_DequantizeLinear_Output"),
    225 kB over the three networks. Names `source` (the float model) has, and graph inputs/outputs, stay."""
    keep = {i.name for i in list(source.graph.input) + list(source.graph.output) + list(source.graph.initializer)}
    keep |= {x for n in source.graph.node for x in list(n.input) + list(n.output)}
    new: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep or name in new:
            return new.get(name, name)
        new[name] = next(n for k in range(len(new), len(new) + len(keep) + 1) if (n := f"q{k:x}") not in keep)
        return new[name]

    for t in model.graph.initializer:
        t.name = short(t.name)
    for node in model.graph.node:
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""  # optional in ONNX; checks name a Q/DQ node by its output
    return len(new)
