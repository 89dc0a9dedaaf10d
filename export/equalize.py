"""Per-input-channel activation equalisation before INT8 (SmoothQuant's migration, for Conv inputs).

Why (measured on the YOLOX-nano detector, docs/export_measurements.md "INT8 on this detector"): a pointwise
conv reads channels whose ranges differ ~100x (after depthwise conv + BN + SiLU). One per-tensor
int8 scale covers the widest channel, so the narrow ones round to a few levels, although the
conv's weights on them are large. The first 1x1 conv (dark2.0.pconv) fell to cosine 0.78 with
its input at 0.99; all-int8 the detector found 3 boxes where FP32 found 762.

Remedy, exact in float: for an activation X (B, C, H, W) read by Convs as their data input, insert
`X' = X * (1 / s)` (a Mul by a (1, C, 1, 1) constant), let those Convs read X' and scale their
weights on input channel c by s_c, so W' X' = W X (other readers, e.g. a residual Add, keep X).
The int8 scale then applies to X', whose channels span similar ranges, and the per-output-channel
weight scales absorb s. s_c = a_c^alpha / w_c^(1 - alpha) (a_c: max |X_c| over the feeds, w_c:
max |W[:, c]| over the consumers); when every consumer is depthwise (output channel c reads only
input channel c, and has its own weight scale) alpha is 1: the whole range moves into the weights
at no cost. The Mul stays float (a per-channel scale a TensorRT builder can fuse with its
producer; not verifiable here); only Conv inputs get Q/DQ, so it never sits inside a Q/DQ pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EqualizeConfig:
    alpha: float = 0.5  # migration strength for dense consumers (SmoothQuant's 0.5); depthwise use 1
    frames: int = 32  # calibration feeds (spread evenly) measuring the per-channel maxima
    min_ratio: float = 4.0  # equalise only tensors whose widest/narrowest channel ratio exceeds this
    clip: float = 1e3  # s_c limited to [1/clip, clip] (dead channels would otherwise blow up)


def equalize(model, feeds: Sequence[Mapping[str, np.ndarray]], cfg: EqualizeConfig) -> dict[str, Any]:
    """Rewrite `model` (onnx ModelProto, in place); returns {tensor: channel range ratio before}."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    targets = conv_inputs(model, inits)
    if not targets:
        return {}
    amax = channel_absmax(model, list(targets), feeds[:: max(1, len(feeds) // cfg.frames)][: cfg.frames])
    done, shared = {}, shared_initializers(model, inits)
    for name, convs in targets.items():
        if any(c.input[1] in shared for c in convs):
            continue  # a weight other nodes read too cannot absorb this tensor's scales (embed_proj: 3 FPN levels)
        a = amax[name]
        ratio = float(a.max() / max(np.percentile(a, 5), 1e-12))
        if a.max() <= 0 or ratio < cfg.min_ratio:
            continue
        weights = [numpy_helper.to_array(inits[c.input[1]]) for c in convs]
        s = migration_scale(a, weights, [kind(c, inits) for c in convs], cfg)
        for conv, w in zip(convs, weights):
            inits[conv.input[1]].CopyFrom(numpy_helper.from_array(scale_input_channels(w, conv, s), conv.input[1]))
        insert_scale(model, name, convs, (1.0 / s).astype(np.float32))
        done[name] = round(ratio, 1)
    return done


def conv_inputs(model, inits) -> dict[str, list]:
    """Activation tensors read as data input 0 by Convs with a constant weight, dense (group 1) or
    depthwise; -> {tensor: [those convs]}. Other readers (a residual Add, a Concat) keep the tensor."""
    outputs = {o.name for o in model.graph.output}
    out: dict[str, list] = {}
    for node in model.graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type == "Conv" and x and x not in inits and x not in outputs and node.input[1] in inits \
                and kind(node, inits):
            out.setdefault(x, []).append(node)
    return out


def shared_initializers(model, inits) -> set[str]:
    """Initializers read by more than one node input (a weight shared by convs on several levels)."""
    reads: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            if i in inits:
                reads[i] = reads.get(i, 0) + 1
    return {i for i, n in reads.items() if n > 1}


def kind(conv, inits) -> str:
    """'dense' (group 1), 'depthwise' (one input channel per group), else '' (not handled)."""
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    shape = inits[conv.input[1]].dims  # (O, C/group, kh, kw)
    return "dense" if group == 1 else "depthwise" if shape[1] == 1 and shape[0] == group else ""


def tapped_session(model, names, threads: int = 0):
    """A CPU onnxruntime session of `model` (ModelProto, not modified) that also outputs the
    intermediate tensors `names`: run it with `sess.run(names, feed)`. threads 0 = ORT's default."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names if t not in have)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def channel_absmax(model, names: list[str], feeds) -> dict[str, np.ndarray]:
    """Per channel (axis 1) max |x| of each tensor in `names` over `feeds` (FP32 onnxruntime)."""
    sess = tapped_session(model, names, threads=1)
    inputs = [i.name for i in sess.get_inputs()]
    amax = {t: 0.0 for t in names}
    for feed in feeds:
        for t, v in zip(names, sess.run(names, {k: feed[k] for k in inputs})):
            axes = tuple(i for i in range(v.ndim) if i != 1)
            amax[t] = np.maximum(amax[t], np.abs(v).max(axis=axes))
    return amax


def migration_scale(a: np.ndarray, weights: list[np.ndarray], kinds: list[str], cfg: EqualizeConfig) -> np.ndarray:
    """(C,) s_c from the activation maxima a (C,) and the consumers' weights (O, C/g, kh, kw):
    all depthwise -> a_c (alpha 1); else a_c^alpha / w_c^(1 - alpha); geometric mean 1 either way."""
    a = np.maximum(a.astype(np.float64), a.max() / cfg.clip)  # dead channels: no 1e6 scales
    if all(k == "depthwise" for k in kinds):
        s = a
    else:
        w = np.max([np.abs(wt).max(axis=(0, 2, 3)) if k == "dense" else np.abs(wt).max(axis=(1, 2, 3))
                    for wt, k in zip(weights, kinds)], axis=0)  # (C,) largest weight reading channel c
        w = np.maximum(w.astype(np.float64), w.max() / cfg.clip)
        s = a ** cfg.alpha / w ** (1 - cfg.alpha)
    s = s / np.exp(np.log(s).mean())  # overall magnitudes unchanged
    return np.clip(s, 1 / cfg.clip, cfg.clip)


def scale_input_channels(w: np.ndarray, conv, s: np.ndarray) -> np.ndarray:
    """W (O, C/g, kh, kw) with input channel c scaled by s_c (depthwise: input c is output c)."""
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    if group > 1:
        return (w * s[:, None, None, None]).astype(w.dtype)
    return (w * s[None, :, None, None]).astype(w.dtype)


def insert_scale(model, name: str, convs, inv_s: np.ndarray) -> None:
    """name -> Mul(name, inv_s (1, C, 1, 1)) -> name + '_eq', read by `convs` (inserted before the first)."""
    import onnx
    from onnx import numpy_helper

    const, out = f"{name}_eq_inv_s", f"{name}_eq"  # not "<out>_scale": ORT names its Q scales so
    model.graph.initializer.append(numpy_helper.from_array(inv_s.reshape(1, -1, 1, 1), const))
    mul = onnx.helper.make_node("Mul", [name, const], [out], name=f"{name}_eq_Mul")
    first = min(list(model.graph.node).index(c) for c in convs)
    model.graph.node.insert(first, mul)
    for c in convs:
        c.input[0] = out
