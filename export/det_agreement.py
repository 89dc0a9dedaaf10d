"""Step: how far an INT8 detector's *detections* move from its FP32 reference, on calibration feeds.

Output cosines (parity.py) average over every anchor, mostly background; what tracking sees is the
people found. Per feed both detectors are decoded as the runtime decodes them (person score > 0.3,
NMS 0.45): F1 of the INT8 detections against the FP32 ones at IoU 0.5, and the cosine of the INT8
appearance rows with the FP32 ones at the FP32 detections' anchors. With `--min-detection-f1 F`
(`det_rounds.py`, off by default) the chain keeps a detector FP32 when its F1 stays below F after the
quantiser's detection rounds; either way the accuracy gate judges tracking. Measured 2026-11-24 on train-side frames: F1 0.88-0.905 on MOT17-mini's
near people, 0.96-1.0 on PETS09-S2L1 1-600 (docs/export_measurements.md "Unseen degradations").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot.runtime.bundle import file_sha256
from vsdmot.runtime.tracking import box_iou
from vsdmot.runtime.yolox import anchor_grid, decode, nms, size_text

from .parity import onnx_runner, pick, pick_indices
from .report import cached_step, fingerprint


@dataclass(frozen=True)
class AgreementConfig:
    score_thr: float = 0.3  # a detection counts above this person score (the runtime tracks from 0.1; 0.3 = confident)
    nms_thr: float = 0.45  # the runtime's YOLOX NMS
    match_iou: float = 0.5  # an INT8 detection agrees with an FP32 one at this IoU
    frames: int = 64  # calibration feeds used, spread evenly


def detections(out: Mapping[str, np.ndarray], size: int, cfg: AgreementConfig):
    """(xyxy (N, 4) letterbox px, anchor index (N,)) of the kept person detections of one raw output."""
    xyxy, score, anchor = decode(np.asarray(out["output"]), size, class_id=0, score_thr=cfg.score_thr)
    keep = nms(xyxy, score, cfg.nms_thr)
    return xyxy[keep], anchor[keep]


def feed_counts(ref, cand, feed: Mapping[str, np.ndarray], cfg: AgreementConfig) -> tuple[int, int, int, list]:
    """(matched, FP32 detections, INT8 detections, embed cosines at the FP32 detections) on one feed."""
    size = tuple(next(iter(feed.values())).shape[-2:])  # (H, W) of the (1, 3, H, W) input
    o_ref, o_cand = ref(feed), cand(feed)
    b_ref, a_ref = detections(o_ref, size, cfg)
    b_cand, _ = detections(o_cand, size, cfg)
    matched, cos = 0, []
    if len(b_ref) and len(b_cand):
        matched = one_to_one(box_iou(b_ref, b_cand).reshape(len(b_ref), len(b_cand)), cfg.match_iou)
    if "embed" in o_ref and len(a_ref):
        u, v = np.asarray(o_ref["embed"])[0, a_ref], np.asarray(o_cand["embed"])[0, a_ref]  # (N, E) each
        cos = list((u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-12))
    return matched, len(b_ref), len(b_cand), cos


def one_to_one(iou: np.ndarray, thr: float) -> int:
    """Matches between rows and columns of `iou` (N, M) at >= thr, each box in at most one, greedy by IoU.
    Counting every row with some column at >= thr matched two people to the one box between them (F1 4/3)."""
    pairs = np.argwhere(iou >= thr)  # (K, 2)
    rows, cols = set(), set()
    for r, c in pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]:
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
    return len(rows)


def summarize(counts: Sequence[tuple[int, int, int, list]]) -> dict[str, Any]:
    """F1 and mean embed cosine over `feed_counts` results."""
    matched, n_ref, n_cand = (sum(c[i] for c in counts) for i in range(3))
    cos = [x for c in counts for x in c[3]]
    f1 = 2 * matched / (n_ref + n_cand) if n_ref + n_cand else 1.0
    return {"f1": round(f1, 4), "reference_detections": n_ref, "detections": n_cand, "frames": len(counts),
            "embed_cosine_at_people": round(float(np.mean(cos)), 4) if cos else None}


def agreement(ref, cand, feeds: Sequence[Mapping[str, np.ndarray]], cfg: AgreementConfig,
              labels: Sequence[str] | None = None) -> dict[str, Any]:
    """F1 of `cand`'s detections against `ref`'s and the embed cosine at `ref`'s detections; with
    `labels` (one per feed, e.g. its calibration source), the same per label under "by_source"."""
    counts = [feed_counts(ref, cand, feed, cfg) for feed in feeds]
    res = summarize(counts)
    if labels:
        res["by_source"] = {k: summarize([c for c, lab in zip(counts, labels) if lab == k])
                            for k in sorted(set(labels))}
    return res


def source_labels(feeds: Sequence[Any], n: int) -> list[str] | None:
    """The calibration source of each of `parity.pick(feeds, n)`'s feeds (the calibration set's
    manifest, e.g. "MOT17-04-FRCNN"), or None for feeds that carry no manifest."""
    records = getattr(getattr(feeds, "frames", None), "manifest", {}).get("frames")
    if not records or len(records) != len(feeds):
        return None
    return [Path(str(records[i].get("source", "?"))).name for i in pick_indices(len(feeds), n)]


def layout_problem(out: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> str | None:
    """Why `out` is not a YOLOX person head to decode (a test network), or None."""
    size = tuple(next(iter(feed.values())).shape[-2:])  # (H, W)
    raw = np.asarray(out.get("output", np.zeros((1, 0, 0))))
    anchors = len(anchor_grid(size)[0])
    if raw.ndim != 3 or raw.shape[1] != anchors or raw.shape[2] < 6:
        return f"output {raw.shape} is not YOLOX's (1, {anchors}, 5 + classes) at {size_text(size)}"
    return None


def detection_agreement(candidate: str | Path, reference: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
                        out_path: str | Path, cfg: AgreementConfig = AgreementConfig()) -> Path:
    """The step: write the agreement of detector ONNX `candidate` with `reference` as JSON."""
    picked = pick(feeds, cfg.frames)

    def build(out: Path) -> dict[str, Any]:
        ref = onnx_runner(reference)
        odd = layout_problem(ref(picked[0]), picked[0]) if picked else "no feeds"
        res = {"skipped": odd} if odd else {
            **agreement(ref, onnx_runner(candidate), picked, cfg, source_labels(feeds, cfg.frames)),
            "note": "below --min-detection-f1 (when set) the detector stays FP32; the accuracy gate decides on tracking"}
        out.write_text(json.dumps(res, indent=2))
        by_source = ", ".join(f"{k} {v['f1']:.3f}" for k, v in res.get("by_source", {}).items())  # one table cell
        return {k: res[k] for k in ("f1", "embed_cosine_at_people", "frames", "skipped") if k in res} | (
            {"f1_by_source": by_source} if by_source else {})

    key = fingerprint(file_sha256(candidate), file_sha256(reference), cfg, len(picked), "by_source")
    return cached_step("detection_agreement", out_path, key, build)
