"""Step: FP32 ONNX -> explicit INT8 Q/DQ ONNX (ONNX Runtime `quantize_static`), for ORT and TensorRT.

Symmetric int8 activations (zero-point 0, per tensor) and per-channel symmetric int8 weights;
bias left in float (TensorRT's DequantizeLinear takes int8 only). Q/DQ sit only on the inputs of
weighted layers (`op_types`: Conv, Gemm, MatMul): one int8 scale over an Add of a -1e4 mask and
real logits, or over pixel box areas, zeroed the tracker's scores (docs/export_measurements.md "INT8 on this
detector"). Before calibration, Conv inputs' per-channel ranges move into the Conv weights
(`equalize.py`), and padded slots are clipped into the live range (`masked`). Kept at higher precision:
- op types in `keep_op_types` (Softmax, LayerNormalization, ...);
- attention: MatMuls of two activations (Q.K^T and attn.V) when `keep_attention`;
- the DSWR/fusion path: every node computed only from `keep_inputs` (`semantic`, `w`);
- the output tail and the first/last weighted layers (`keep_output_tail`, `keep_boundary`);
- sensitivity rounds: readers of the worst-rounded activations, within `max_float_weights`;
- with `detection.min_f1` > 0 (opt-in), a YOLOX detector's first weighted layers, until its detections
  agree with FP32's (`det_rounds.py`).
Last layers with >= `trial_weights` weights (the student's head, the tracker's state heads) are tried
in int8 first and stay float only when that costs more than `trial_max_drop` output cosine on the
probe frames. Storage: after ORT writes the Q/DQ model, `qdq_graph.py` rewires kept-float nodes to
the float tensor, shares Q/DQ constants by value and shortens the names quantisation added (bit-identical
outputs); its graph walks (output tail, first/last weighted layers, input cones) serve the rules above.
Calibration runs in chunks of `stride` frames (ORT's CalibStridedMinMax) so 500 detector
frames never sit in memory as intermediate activations at once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot.runtime.bundle import file_sha256

from .det_rounds import DetectionRoundsConfig, detection_rounds
from .equalize import EqualizeConfig, equalize, tapped_session
from .parity import latency_ms
from .qdq_graph import (boundary_layers, cone_nodes, float_inputs, name_nodes, share_qdq_constants,
                        short_qdq_names, tail_nodes, weight_sizes)
from .report import cached_step, fingerprint, tools_key

log = logging.getLogger(__name__)
METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    method: str = "minmax"  # minmax | entropy | percentile (see `--method auto` in the chain)
    per_channel: bool = True  # per-output-channel weight scales (TensorRT's explicit INT8 layout)
    keep_op_types: tuple[str, ...] = ("Softmax", "LayerNormalization", "Sigmoid", "Erf", "Exp", "Log",
                                      "Pow", "Sqrt", "ReduceMean", "Div")  # stay float
    keep_attention: bool = True  # MatMul of two activations (attention scores / mixing) stays float
    keep_inputs: tuple[str, ...] = ("semantic", "w")  # graph inputs whose cone (DSWR/fusion) stays float
    keep_output_tail: bool = True  # nodes between the last weighted layer and each graph output stay float
    keep_boundary: bool = True  # the first weighted layers (fed by graph inputs through no weighted layer) and the
    # last ones (feeding an output through none) stay float: raw mixed-unit features in, the outputs' precision out
    exclude_nodes: tuple[str, ...] = ()  # further node names to keep float (from a sensitivity scan)
    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")  # only weighted layers' inputs get Q/DQ (TensorRT's
    # placement); element-wise maths on raw inputs (pixel areas, -1e4 mask logits) stays float. () = all ORT ops
    equalize: EqualizeConfig | None = EqualizeConfig()  # per-channel range migration into Conv weights (equalize.py)
    mask_calibration: bool = True  # calibration: "<p>_*" inputs where "<p>_mask" is 0 clipped into the live range
    percentile: float = 99.999  # percentile method: the clipped range's percentile
    num_bins: int = 0  # histogram bins for entropy/percentile; 0 = ORT's default (128 / 2048)
    stride: int = 25  # calibration frames per collection chunk (memory bound)
    min_cosine: float = 0.98  # per output, FP32 vs INT8 on probe frames; below it sensitive activations go float
    max_float_share: float = 0.5  # at most this share of quantised activations put back to float
    probe_frames: int = 6  # calibration frames (spread evenly) used to measure cosine and sensitivity
    max_rounds: int = 4  # sensitivity rounds at most (each re-inserts Q/DQ with the cached ranges)
    max_float_weights: float = 0.1  # the rounds keep at most this share of the weights float (a kept-float layer's
    # weights stay float: on the detector 67 such layers took it from 1.36 to 3.08 MB for +0.02 output cosine)
    trial_weights: int = 8192  # last weighted layers holding at least this many weights are tried in int8, one
    # at a time: the student's 128x160 head (61 kB float), the tracker's 64x128 state heads update.2 / born.2
    # (their error feeds back every frame; replayed closed-loop on PETS 1-600, 5 train-side conditions: HOTA
    # 47.70 vs 47.92 all-float-heads, agreement with the FP32 tracker 94.56 vs 94.80, inside the +-2 per-condition
    # swing between INT8 calibrations); the detector's are smaller (embed_proj 4096) and stay float
    trial_max_drop: float = 0.001  # a tried layer stays int8 when no output's probe cosine (vs FP32) drops more
    detection: DetectionRoundsConfig = DetectionRoundsConfig()  # a YOLOX detector: first layers float until its
    # detections agree with FP32 (det_rounds.py; off by default); other networks skip it

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quantize method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.stride < 1:
            raise ValueError(f"quantize stride: expected >= 1, got {self.stride}")


class FeedReader:
    """ORT CalibrationDataReader over a sequence of feeds, with the ranges strided collection needs."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]):
        self.feeds, self.names = feeds, list(names)
        self.start, self.end, self.i = 0, len(feeds), 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.i = start_index, end_index, start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        feed = self.feeds[self.i]
        self.i += 1
        return {k: np.ascontiguousarray(feed[k]) for k in self.names}

    def rewind(self) -> None:
        self.i = self.start


class Prefix(Sequence):
    """The first `n` of `feeds`, converted one at a time on access: a slice of lazy feeds is a list of
    them all (the 416 px detector's 500 calibration frames: 1 GB of float32 at once)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], n: int):
        self.feeds, self.n = feeds, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.feeds[i % self.n]


def quantize(onnx_path: str | Path, cfg: QuantConfig, out_path: str | Path,
             feeds: Sequence[Mapping[str, np.ndarray]], feeds_id: str = "") -> Path:
    """Quantise `onnx_path` calibrated on `feeds` (`feeds_id` names them in the idempotence key)."""
    if len(feeds) == 0:
        raise ValueError("quantize: no calibration feeds")

    def build(out: Path) -> dict[str, Any]:
        return _quantize(Path(onnx_path), cfg, out, feeds)

    key = fingerprint(file_sha256(onnx_path), cfg, feeds_id or len(feeds), tools_key("onnxruntime", "onnx"))
    return cached_step(f"quantize[{cfg.method}]", out_path, key, build)


def _quantize(src: Path, cfg: QuantConfig, out: Path, feeds) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(src))
    name_nodes(model)
    pairs = mask_pairs([i.name for i in model.graph.input]) if cfg.mask_calibration else ()
    calib = masked(feeds, pairs)  # ranges and equalisation; the probe sees the real feeds
    equalized = equalize(model, calib, cfg.equalize) if cfg.equalize else {}
    excluded = set(nodes_to_keep_float(model, cfg))
    n = len(feeds) - len(feeds) % min(cfg.stride, len(feeds))  # strided collection needs a multiple
    probe = [feeds[int(i)] for i in np.linspace(0, len(feeds) - 1, min(cfg.probe_frames, len(feeds))).astype(int)]
    with tempfile.TemporaryDirectory(prefix="vsdmot-quant-") as tmp:
        named, ranges = Path(tmp) / "named.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, str(named))
        run_ort_quant(named, out, cfg, Prefix(calib, n), excluded, ranges)  # calibrates once, caches the ranges
        excluded, tried = trial_int8(model, src, named, out, probe, cfg, excluded, ranges)
        cos = min_cosine(src, out, probe)
        trail, best, last = [(0, round(cos, 5))], (cos, set()), set()
        for last in sensitivity_schedule(model, out, named, probe, cfg, cos):  # ranks on the rewritten graph
            run_ort_quant(named, out, cfg, None, excluded | last, ranges)  # cached ranges: no recalibration
            cos = min_cosine(src, out, probe)
            trail.append((len(last), round(cos, 5)))
            best = max(best, (cos, last), key=lambda b: b[0])
            if cos >= cfg.min_cosine:
                break
        if last != best[1]:  # the last round written is not the best seen (the base model included): rebuild it
            run_ort_quant(named, out, cfg, None, excluded | best[1], ranges)
        cos, excluded = best[0], excluded | best[1]
        excluded, det = detection_rounds(model, src, out, feeds, cfg.detection, excluded,
                                         lambda ex: run_ort_quant(named, out, cfg, None, ex, ranges))
        cos = min_cosine(src, out, probe) if det.get("first_layers_float") else cos
    latency = {"fp32": latency_ms(src, feeds[0], runs=10), "int8": latency_ms(out, feeds[0], runs=10)}
    return {"method": cfg.method, "calib_frames": n, "equalized": equalized, "kept_float": sorted(excluded),
            "per_channel": cfg.per_channel, "min_output_cosine": cos, "sensitivity_trail": trail, "int8_trials": tried,
            "detection_rounds": det,
            "latency_ms_1thread": latency}


def nodes_to_keep_float(model, cfg: QuantConfig) -> set[str]:
    """Names of nodes to leave unquantised: kept op types, attention MatMuls, the fusion cone."""
    consts = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    keep = {n.name for n in model.graph.node if n.op_type in cfg.keep_op_types} | set(cfg.exclude_nodes)
    if cfg.keep_attention:
        keep |= {n.name for n in model.graph.node if n.op_type == "MatMul" and not (set(n.input) & consts)}
    keep |= tail_nodes(model) if cfg.keep_output_tail else set()
    keep |= boundary_layers(model, consts) if cfg.keep_boundary else set()
    return keep | cone_nodes(model, cfg.keep_inputs, consts)


def run_ort_quant(named: Path, out: Path, cfg: QuantConfig, feeds, excluded: set[str], ranges: Path) -> None:
    """ORT quantize_static (QDQ, symmetric int8) then float inputs for kept-float nodes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(named))
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    reader = FeedReader(feeds, inputs) if feeds is not None else None
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    with _without_preprocess_advice():
        quantize_static(str(named), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                        op_types_to_quantize=list(cfg.op_types) or None, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=sorted(excluded), calibrate_method=method,
                        extra_options=extra_options(cfg, len(feeds) if feeds else cfg.stride),
                        calibration_cache_path=str(ranges))
    qmodel = onnx.load(str(out))
    float_inputs(qmodel, excluded)
    del qmodel.graph.value_info[:]  # intermediate shape annotations: re-inferred by ORT/TensorRT, 5 % of the file
    share_qdq_constants(qmodel)
    short_qdq_names(qmodel, model)
    onnx.save(qmodel, str(out))


class _PreprocessAdvice(logging.Filter):
    """ORT's quantizer warns "Please consider (to run) pre-processing before quantization" on the root
    logger, twice per call. The simplify step already ran onnxslim and shape inference, and one
    export calls the quantizer dozens of times (trials, sensitivity rounds): noise, not advice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_advice():
    root, f = logging.getLogger(), _PreprocessAdvice()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def min_cosine(src: Path, quantized: Path, probe) -> float:
    """Smallest per-output cosine (FP32 vs INT8) over the probe feeds."""
    return min(output_cosines(src, quantized, probe).values())


def output_cosines(src: Path, quantized: Path, probe) -> dict[str, float]:
    """{output: cosine FP32 vs INT8, minimum over the probe feeds}."""
    from .parity import compare, onnx_runner

    return {k: r["cosine"] for k, r in compare(onnx_runner(src), onnx_runner(quantized), probe).items()}


def trial_int8(model, src: Path, named: Path, out: Path, probe, cfg: QuantConfig, excluded: set[str],
               ranges: Path) -> tuple[set[str], dict[str, float]]:
    """Try each large kept-float last layer (`trial_candidates`) in int8 on its own, with the cached ranges;
    it stays int8 when no output's probe cosine drops more than `trial_max_drop` below all-float.
    Leaves `out` quantised with the result; returns (nodes still float, {tried node: worst drop})."""
    todo = trial_candidates(model, excluded, cfg)
    if not todo:
        return excluded, {}
    base = output_cosines(src, out, probe)
    trial, drops = named.with_name("trial.onnx"), {}
    for node in todo:
        run_ort_quant(named, trial, cfg, None, excluded - {node}, ranges)
        cos = output_cosines(src, trial, probe)
        drops[node] = round(max(base[k] - cos[k] for k in base), 6)
    keep = excluded - {n for n, d in drops.items() if d <= cfg.trial_max_drop}
    if keep != excluded:
        run_ort_quant(named, out, cfg, None, keep, ranges)
    log.info("int8 trials of kept-float last layers (worst output cosine drop): %s", drops)
    return keep, drops


def trial_candidates(model, excluded: set[str], cfg: QuantConfig) -> list[str]:
    """Kept-float last weighted layers (`boundary_layers`, not in another keep-float rule) with at least
    `cfg.trial_weights` weights: the ones whose float weights cost most bytes."""
    if not cfg.keep_boundary or cfg.trial_weights <= 0:
        return []
    consts = {t.name for t in model.graph.initializer}
    last = boundary_layers(model, consts, first=False)
    others = nodes_to_keep_float(model, replace(cfg, keep_boundary=False))
    sizes = weight_sizes(model)[0]
    return sorted(n for n in last & excluded - others if sizes.get(n, 0) >= cfg.trial_weights)


def sensitivity_schedule(model, quantized: Path, src: Path, probe, cfg: QuantConfig, cos: float):
    """Growing sets of nodes to keep float, most sensitive first: the consumers of the activation
    tensors whose int8 rounding (with the calibrated scale) loses most, measured on FP32 values."""
    if cos >= cfg.min_cosine or cfg.max_float_share <= 0:
        return
    ranked = rank_activations(model, quantized, src, probe)
    consumers = {t: {n.name for n in model.graph.node if t in n.input} for t in ranked}
    limit = max(2, int(len(ranked) * cfg.max_float_share))
    sizes, total = weight_sizes(model)
    for k in np.unique(np.geomspace(max(2, limit // 2 ** (cfg.max_rounds - 1)), limit, cfg.max_rounds).astype(int)):
        extra = set().union(*(consumers[t] for t in ranked[:k]))
        if sum(sizes.get(n, 0) for n in extra) > cfg.max_float_weights * total:
            return  # the size budget: what INT8 is for
        yield extra


def rank_activations(model, quantized: Path, src: Path, probe) -> list[str]:
    """Activation tensors quantised in `quantized`, worst int8 rounding error (1 - cosine) first."""
    import onnx
    from onnx import numpy_helper

    q = onnx.load(str(quantized))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    scales = {n.input[0]: float(inits[n.input[1]]) for n in q.graph.node
              if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1}
    names = [t for t in scales if t not in inits]
    sess = tapped_session(onnx.load(str(src)), names)
    err = dict.fromkeys(names, 0.0)
    for feed in probe:
        vals = dict(zip(names, sess.run(names, dict(feed))))
        for t in names:
            x = vals[t].astype(np.float64).ravel()
            xq = np.clip(np.round(x / scales[t]), -127, 127) * scales[t]
            err[t] += 1.0 - float(x @ xq / (np.linalg.norm(x) * np.linalg.norm(xq) + 1e-12))
    return sorted(names, key=lambda t: -err[t])


def extra_options(cfg: QuantConfig, n: int) -> dict[str, Any]:
    opts: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                            "CalibStridedMinMax": min(cfg.stride, n), "CalibTensorRangeSymmetric": True,
                            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                            "DedicatedQDQPair": True,  # float consumers read the float tensor
                            "OpTypesToExcludeOutputQuantization": list(cfg.op_types)}  # Q/DQ on inputs only
    if cfg.method == "percentile":
        opts["CalibPercentile"] = cfg.percentile
    if cfg.num_bins and cfg.method != "minmax":
        opts["CalibNumBins"] = cfg.num_bins
    return opts


def mask_pairs(inputs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(input, mask) pairs by name: "track_miss" is masked by "track_mask" (same prefix)."""
    masks = [n for n in inputs if n.endswith("_mask")]
    return tuple((n, m) for m in masks for n in inputs if n != m and n.startswith(m[: -len("mask")]))


class masked(Sequence):
    """`feeds` with each (input, mask) pair's masked entries clipped into the range the input's live
    entries take over all feeds. Padded slots carry stale values (a dead track slot's miss count grows
    with the clip: 511 against <= 20 live) that would otherwise set the int8 range of everything they
    feed; clipped, they stay in distribution, and the network ignores them anyway."""

    def __new__(cls, feeds, pairs):
        return feeds if not pairs else super().__new__(cls)

    def __init__(self, feeds, pairs):
        self.feeds, self.pairs = feeds, tuple(pairs)
        self.bounds = {name: live_range(feeds, name, mask) for name, mask in self.pairs}

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        feed = dict(self.feeds[i])
        for name, mask in self.pairs:
            if name in feed and mask in feed:
                live = expand(feed[mask], feed[name]) > 0
                clipped = np.clip(feed[name], *self.bounds[name])
                feed[name] = np.where(live, feed[name], clipped).astype(feed[name].dtype)
        return feed


def expand(mask: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(B, N) mask -> broadcastable against x (B, N, ...)."""
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def live_range(feeds, name: str, mask: str) -> tuple[float, float]:
    """(min, max) of `name` over the entries whose `mask` is set, over all feeds ((0, 0) if none)."""
    lo, hi = np.inf, -np.inf
    for feed in feeds:
        x = feed[name][np.broadcast_to(expand(feed[mask], feed[name]) > 0, feed[name].shape)]
        if x.size:
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)
