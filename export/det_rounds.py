"""Quantiser rounds for a YOLOX detector: keep its first weighted layers float until the INT8
detections agree with the FP32 ones.

Why: the generic rounds (quantize.py) watch output cosines, which average over every anchor, mostly
background. What tracking loses is people. Measured on the default detector, 2026-11-24:
- before these rounds, INT8 kept F1 0.922 of the FP32 detections on the calibration feeds, and it
  lost 3.5 HOTA on unseen near-camera video (docs/export_measurements.md "Unseen degradations");
- the FP16-rounded detector (the gate's null) agrees at F1 0.997, so the measure resolves a loss;
- keeping any single layer float moved F1 by -0.008..+0.020 (103 layers scanned). The largest gains
  were the first layers, which hold the fewest weights: rounding noise entered there passes through
  every later layer.
- keeping float the first 4 / 8 / 32 quantised layers (in graph order) gave F1 0.968 / 0.971 / 0.982
  on the reported feeds, for 0.2 / 0.4 / 7 % of the weights. The scan's 8 best layers gave 0.979 for
  1.5 % (graph order: 0.972 for 1.5 %), but the scan takes 14 minutes and graph order's first round
  already passes.

So the rounds keep the first k quantised weighted layers float, k = `first`, 2x`first`, ..., and stop
at the first k whose detections agree at `min_f1` or better. The F1 is measured on `frames`
calibration feeds interleaved with, and disjoint from, the ones the detection_agreement step reports
on.

Where 0.96 comes from. It is fixed from the gate's budget, before these rounds were measured.
Losing a share f of the detections moves DetA by about f (relative). HOTA = sqrt(DetA * AssA) moves
by about f / 2. At HOTA ~50 the gate's 1.0 point is 2 % (relative), so f <= 4 %, and F1 >= 0.96.

Why the rounds are opt-in (`--min-detection-f1 0.96`), not the default. On train-side tracking
(PETS09-S2L1 1-600, 15 cases, `noise_floor run`), the bundle with the rounds lost more HOTA against
FP32 than the one without: a mean of 1.89 against 1.30, and a balanced value of 1.17-2.73 on the
emulated gates against 0.34-0.94. Closer detections did not give closer tracks there, where the
people are far away, nor on the same frames zoomed 2x (`evaluation/zoom.py`, near people, 15 cases):
0.72 against 0.32. Only held out, on TUD-Campus under unseen ffmpeg filters, did the rounds help:
the mean change against FP32 went from -3.1 to +0.2 HOTA (docs/export_measurements.md "Detection rounds").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .det_agreement import AgreementConfig, agreement, layout_problem
from .parity import onnx_runner, pick_indices
from .qdq_graph import WEIGHTED, weight_sizes


NEAR_CAMERA_F1 = 0.96  # the value derived above: `--min-detection-f1` for near-camera scenes


@dataclass(frozen=True)
class DetectionRoundsConfig:
    min_f1: float = 0.0  # INT8 detections vs FP32 on the selection feeds; 0: off (the default, measured below);
    # 0.96 (`--min-detection-f1 0.96`) is the value derived from the gate's budget
    first: int = 4  # layers kept float in the first round; each further round doubles it
    frames: int = 64  # selection feeds, between the detection_agreement step's (parity.pick) ones
    max_float_weights: float = 0.1  # the rounds stop before keeping more than this share of weights float


def between(feeds: Sequence[Any], n: int) -> list[Any]:
    """`n` feeds at the midpoints of `parity.pick(feeds, n)`'s spacing, disjoint from them when there
    are at least 2n feeds (fewer: every feed, shared with the report). A midpoint that rounds onto
    one of pick's indices (6 of 64 at 806 feeds) moves to the nearest free index."""
    if len(feeds) < 2 * n:
        return list(feeds)
    taken, out = set(pick_indices(len(feeds), n)), []
    for i in np.linspace(0, len(feeds) - 1, 2 * n + 1)[1::2].round().astype(int):
        j = min((k for k in range(len(feeds)) if k not in taken), key=lambda k: (abs(k - i), k))
        taken.add(j)
        out.append(j)
    return [feeds[j] for j in out]


def quantised_layers(model, excluded: set[str]) -> list[str]:
    """Weighted nodes not kept float, in graph (topological) order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED and n.name not in excluded]


def detection_rounds(model, src: Path, out: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                     cfg: DetectionRoundsConfig, excluded: set[str],
                     requant: Callable[[set[str]], None]) -> tuple[set[str], dict[str, Any]]:
    """Keep float the first k of `model`'s quantised layers until `out` (re-written by `requant(excluded)`)
    agrees with `src` at `cfg.min_f1`. Returns (nodes kept float, details); a network that is not a
    YOLOX person detector is left as it is."""
    sel = between(feeds, cfg.frames)
    if cfg.min_f1 <= 0 or not sel:
        return excluded, {}
    ref = onnx_runner(src)
    odd = layout_problem(ref(sel[0]), sel[0])
    if odd:
        return excluded, {}

    def f1() -> float:
        return agreement(ref, onnx_runner(out), sel, AgreementConfig())["f1"]

    order, (sizes, total) = quantised_layers(model, excluded), weight_sizes(model)
    trail, k = [(0, f1())], cfg.first
    best = written = (excluded, trail[0][1])
    while trail[-1][1] < cfg.min_f1 and k <= len(order):
        extra = set(order[:k])
        if sum(sizes.get(n, 0) for n in extra) > cfg.max_float_weights * total:
            break  # the size budget: what INT8 is for
        requant(excluded | extra)
        trail.append((k, f1()))
        written = (excluded | extra, trail[-1][1])
        best = max(best, written, key=lambda b: b[1])  # a tie keeps the earlier, smaller round
        k *= 2
    if written[0] != best[0]:  # the last round is not the best (F1 ties often): rebuild the best
        requant(best[0])
    kept = len(best[0]) - len(excluded)
    return best[0], {"min_f1": cfg.min_f1, "frames": len(sel), "trail": trail, "first_layers_float": kept,
                     "f1": best[1]}
