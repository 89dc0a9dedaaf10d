"""Step: numeric parity of an exported network against its reference, per output, on real feeds.

For each output: the max absolute error, the max over feeds, and the cosine similarity of the
flattened outputs (minimum over feeds). Thresholds depend on what is compared: torch -> FP32
ONNX must agree to float rounding; FP32 -> INT8 ONNX is looser (the accuracy gate, on tracking,
is what decides). Results and thresholds are written as JSON and go into the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot.runtime.bundle import file_sha256

from .report import cached_step, fingerprint

log = logging.getLogger(__name__)
Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]]


@dataclass(frozen=True)
class ParityConfig:
    min_cosine: float = 0.9999  # per output, minimum over feeds (FP32 export default)
    max_abs: float = 1e-2  # per output, relative to max(1, max|reference|)
    frames: int = 16  # feeds compared (taken evenly from the calibration/held-out frames)
    strict: bool = True  # ValueError when a threshold fails (False: record only)


MASKED = -1e3  # reference entries at or below this are masked-logit sentinels (the tracker's -1e4): left out,
# else they dominate the cosine (match_logits read 1.000 while its valid entries were at 0.69)
FP32 = ParityConfig()
INT8 = ParityConfig(min_cosine=0.95, max_abs=float("inf"), strict=False)  # the accuracy gate decides


def onnx_runner(onnx_path: str | Path, threads: int = 1) -> Runner:
    """A CPU onnxruntime session as a feed -> outputs function."""
    from vsdmot.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"], threads=threads)
    return backend.infer


def compare(ref: Runner, cand: Runner, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per output: max_abs (max over feeds), scale (max |ref|), cosine (min over feeds), over the
    entries whose reference is above MASKED."""
    res: dict[str, dict[str, float]] = {}
    for feed in feeds:
        a, b = ref(feed), cand(feed)
        for name, va in a.items():
            va, vb = _np(va).astype(np.float64).ravel(), _np(b[name]).astype(np.float64).ravel()
            live = va > MASKED
            va, vb = va[live], vb[live]
            r = res.setdefault(name, {"max_abs": 0.0, "scale": 0.0, "cosine": 1.0})
            if not np.all(np.isfinite(vb)):  # min/max skip NaN: a candidate emitting NaN passed at cosine 1
                r["max_abs"], r["cosine"] = float("inf"), 0.0
                continue
            r["max_abs"] = max(r["max_abs"], float(np.max(np.abs(va - vb))) if va.size else 0.0)
            r["scale"] = max(r["scale"], float(np.max(np.abs(va))) if va.size else 0.0)
            r["cosine"] = min(r["cosine"], cosine(va, vb))
    return res


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def failures(res: Mapping[str, Mapping[str, float]], cfg: ParityConfig) -> list[str]:
    out = []
    for name, r in res.items():
        if r["cosine"] < cfg.min_cosine:
            out.append(f"{name}: cosine {r['cosine']:.6f} < {cfg.min_cosine}")
        if r["max_abs"] > cfg.max_abs * max(1.0, r["scale"]):
            out.append(f"{name}: max abs error {r['max_abs']:.3g} > {cfg.max_abs} x max(1, {r['scale']:.3g})")
    return out


def parity(candidate: str | Path, cfg: ParityConfig, out_path: str | Path, reference: Runner, ref_id: str,
           feeds: Sequence[Mapping[str, np.ndarray]]) -> Path:
    """Compare the ONNX `candidate` with `reference` (named `ref_id` in the key) on `feeds`."""
    picked = pick(feeds, cfg.frames)

    def build(out: Path) -> dict[str, Any]:
        res = compare(reference, onnx_runner(candidate), picked)
        bad = failures(res, cfg)
        if bad and cfg.strict:
            raise ValueError(f"parity of {Path(candidate).name} vs {ref_id}: " + "; ".join(bad))
        result = {"reference": ref_id, "frames": len(picked), "thresholds": asdict(cfg), "outputs": res,
                  "passed": not bad, "failures": bad}
        if not cfg.strict:  # FP32 -> INT8: how far the outputs moved, recorded; tracking accuracy decides
            result["note"] = "informational (strict false): the accuracy gate, on tracking, decides"
        out.write_text(json.dumps(result, indent=2))
        verdict = {"passed": not bad} if cfg.strict else {"within_thresholds": not bad, "decides": "accuracy gate"}
        return {**verdict, "min_cosine": min(r["cosine"] for r in res.values())}

    from .sources import feeds_id

    # keyed by the feeds themselves: the reference (demo frames) and a later check (calibration feeds)
    # at the same path must not pass for each other
    return cached_step("parity", out_path, fingerprint(file_sha256(candidate), ref_id, cfg, feeds_id(picked)), build)


def pick(feeds: Sequence[Any], n: int) -> list[Any]:
    """`n` items spread evenly over `feeds` (all when there are fewer)."""
    return [feeds[i] for i in pick_indices(len(feeds), n)]


def pick_indices(length: int, n: int) -> list[int]:
    """The indices `pick` takes from `length` items."""
    if length <= n:
        return list(range(length))
    return [int(i) for i in np.linspace(0, length - 1, n).round().astype(int)]


def latency_ms(onnx_path: str | Path, feed: Mapping[str, np.ndarray], runs: int = 20, threads: int = 1) -> float:
    """Median onnxruntime CPU latency in ms over `runs` (after 3 warm-up runs), `threads` threads."""
    run = onnx_runner(onnx_path, threads)
    for _ in range(3):
        run(feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _np(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
