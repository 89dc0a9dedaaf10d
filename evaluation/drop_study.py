"""Frame-drop study: tracking on the frames a live source that falls behind delivers, with and
without telling the tracker how many frames it did not see.

A camera delivers frames at its own rate. A pipeline slower than that gets only the newest ones
(edge/sources.py drops the oldest and numbers every captured frame), so the tracker steps over
frames 1, 3, 4, 7, ... This module replays tracker variants on the detections, q and student
vectors that `vsdmot-bench ablation` stored (as assoc_study.py does) over such a subset, twice:
- `told`: `step(..., gap=index difference)`, what `runtime.pipeline.step` does;
- `untold`: every step as one frame, the runtime before the gap was passed.
Both are scored on the kept frames only, renumbered 1..N (frames never shown to the tracker are no
one's misses).

Patterns: `everyK` (every K-th frame) and `jitA-B` (gaps drawn uniformly from A..B, one draw per
seed). Train-side by default, as assoc_study.py: evaluation frames need `held_out`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vsdmot._cli import run_main
from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from vsdmot.runtime.mot import format_result_rows, read_rows, read_seqinfo, write_seqinfo
from vsdmot.runtime.tracking import box_iou
from vsdmot.splits import copy_name, touches_held_out

from .assoc_study import StoredSemantics, load_stored, memo_file
from .assoc_variants import variants
from .metrics import evaluate, write_gt

log = logging.getLogger(__name__)

KEYS = ("HOTA", "DetA", "AssA", "IDF1", "IDSW")


def kept_frames(pattern: str, first: int, last: int, seed: int = 0) -> list[int]:
    """The frames a source dropping by `pattern` delivers from first..last (first always kept)."""
    if pattern.startswith("every") and pattern[5:].isdigit() and int(pattern[5:]) >= 1:
        gaps = [int(pattern[5:])]
    elif pattern.startswith("jit") and "-" in pattern:
        a, _, b = pattern[3:].partition("-")
        if not (a.isdigit() and b.isdigit() and 1 <= int(a) <= int(b)):
            raise ValueError(f"drop pattern {pattern!r}: expected jitA-B with 1 <= A <= B")
        gaps = list(range(int(a), int(b) + 1))
    else:
        raise ValueError(f"drop pattern {pattern!r}: expected everyK or jitA-B (e.g. every2, jit1-3)")
    rng, out, f = np.random.default_rng(seed), [], first
    while f <= last:
        out.append(f)
        f += int(rng.choice(gaps))
    return out


def subset_sequence(seq_dir: Path, keep: list[int], out_dir: Path) -> Path:
    """A sequence folder holding only the gt of `keep`, renumbered 1..len(keep)."""
    info = read_seqinfo(seq_dir)
    gt = read_rows(Path(seq_dir) / "gt" / "gt.txt")
    new = {f: i + 1 for i, f in enumerate(keep)}
    gt = gt.select(np.isin(gt.frame, keep))
    gt = replace(gt, frame=np.array([new[int(f)] for f in gt.frame], np.int64))
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    write_gt(out_dir / "gt" / "gt.txt", gt)
    name = copy_name(info.name, (min(keep), max(keep)), info.name) if keep else info.name  # renumbered
    write_seqinfo(out_dir / "seqinfo.ini", replace(info, name=name, length=len(keep)))
    return out_dir


def probe_predictions(tracker) -> list[float] | None:
    """For a slot tracker (hybrid, e2e): a list that collects, per matched slot and step, the IoU
    between the box the tracker predicted and fed the network (`track_box`) and the detection it
    matched: how well the motion model bridged the step. None for other trackers (ByteTrack)."""
    if not hasattr(tracker, "_feed"):
        return None
    ious: list[float] = []
    feed, update = tracker._feed, tracker._update

    def fed(props, semantic, w):
        out = feed(props, semantic, w)
        tracker.probe_box = out["track_box"][0]  # (S, 4)
        return out

    def updated(props, m, born, out):
        if len(m):
            ious.extend(np.diag(box_iou(tracker.probe_box[m[:, 0]], props.xyxy[m[:, 1]])).tolist())
        update(props, m, born, out)

    tracker._feed, tracker._update = fed, updated
    return ious


def replay_kept(st, tracker, sem, keep: list[int], told: bool) -> str:
    """MOTChallenge rows of `tracker` stepped over the kept frames, numbered 1..len(keep)."""
    tracker.reset()
    rows, prev = [], None
    for i, f in enumerate(keep, 1):
        vec, w = sem.get(f) if sem is not None else (None, 0.0)
        gap = f - prev if told and prev is not None else 1
        out = tracker.step(st.dets[f], vec, w, gap=gap)
        rows.append(format_result_rows(i, out.track_id, out.xywh, out.score))
        prev = f
    return "".join(rows)


@dataclass(frozen=True)
class DropConfig:
    memo_dir: Path  # OUT/memo of a `vsdmot-bench ablation --out OUT` run
    seq_dir: Path  # the sequence folder (gt)
    condition: str  # clean, jpeg-s3, ...
    tracked: tuple[int, int]  # the window the ablation tracked (its --frames)
    patterns: tuple[str, ...] = ("jit1-3",)
    seeds: int = 10  # draws per jit pattern (every-K patterns have one)
    policy: str = "auto"
    bundle: Path = DEFAULT_BUNDLE
    held_out: bool = False


def run_drops(cfg: DropConfig, names: list[str]) -> list[dict]:
    """One record per (pattern, seed, variant, told/untold)."""
    from vsdmot.runtime.backends import OnnxRuntimeBackend
    from vsdmot.runtime.dswr import Dswr

    info = read_seqinfo(cfg.seq_dir)
    if not cfg.held_out and touches_held_out(info.name, cfg.tracked):
        raise ValueError(f"{info.name} {cfg.tracked}: evaluation frames; pass held_out only to measure a choice")
    bundle = load_bundle(cfg.bundle)
    dswr = Dswr.from_params(bundle.params("quality.json"))
    st = load_stored(memo_file(cfg.memo_dir, info.name, cfg.condition, cfg.tracked), bundle)
    backend = OnnxRuntimeBackend(bundle.path / "tracker.onnx", providers=["CPUExecutionProvider"], threads=1)
    out = []
    try:
        for pattern in cfg.patterns:
            for seed in range(cfg.seeds if pattern.startswith("jit") else 1):
                keep = kept_frames(pattern, *cfg.tracked, seed)
                out += _score_subset(cfg, info, st, backend, dswr, names, keep, {"pattern": pattern, "seed": seed})
    finally:
        backend.close()
    return out


def _score_subset(cfg, info, st, backend, dswr, names, keep, tag) -> list[dict]:
    out, factories = [], variants()
    with tempfile.TemporaryDirectory() as tmp:
        seq = subset_sequence(cfg.seq_dir, keep, Path(tmp) / "seq")
        for name in names:
            for told in (True, False):
                trk = factories[name](backend, info.frame_rate)
                ious = probe_predictions(trk)
                sem = StoredSemantics(st, dswr, cfg.policy) if name != "bytetrack" else None
                res = Path(tmp) / "res.txt"
                res.write_text(replay_kept(st, trk, sem, keep, told))
                m = evaluate(seq, res)
                out.append({**tag, "variant": name, "told": told, "frames": len(keep),
                            **{k: round(100 * m[k], 2) if isinstance(m[k], float) else int(m[k]) for k in KEYS},
                            "pred_iou": round(float(np.mean(ious)), 4) if ious else None})
        log.info("%s seed %d: %s", tag["pattern"], tag["seed"], [(r["variant"], r["told"], r["HOTA"]) for r in out])
    return out


def summary(records: list[dict]) -> str:
    """Markdown: per (pattern, variant), mean HOTA / AssA told and untold, and how often told won."""
    lines = ["| pattern | variant | draws | HOTA told | HOTA untold | told - untold | told won | AssA told | AssA untold "
             "| prediction IoU told / untold |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for pattern in dict.fromkeys(r["pattern"] for r in records):
        for name in dict.fromkeys(r["variant"] for r in records):
            pick = lambda told, k: np.array([r[k] for r in records if r["pattern"] == pattern  # noqa: E731
                                             and r["variant"] == name and r["told"] == told])
            t, u = pick(True, "HOTA"), pick(False, "HOTA")
            iou = [[r.get("pred_iou") for r in records if r["pattern"] == pattern and r["variant"] == name
                    and r["told"] == told and r.get("pred_iou") is not None] for told in (True, False)]
            pred = f"{np.mean(iou[0]):.3f} / {np.mean(iou[1]):.3f}" if all(iou) else "-"
            lines.append(f"| {pattern} | {name} | {len(t)} | {t.mean():.1f} | {u.mean():.1f} | {(t - u).mean():+.2f} "
                         f"| {(t > u).sum()}/{len(t)} | {pick(True, 'AssA').mean():.1f} | {pick(False, 'AssA').mean():.1f} "
                         f"| {pred} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.evaluation.drop_study --memo OUT/memo --seq DIR --tracked 1:600 --patterns jit1-3 ..."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.drop_study", description=__doc__.split("\n")[0])
    ap.add_argument("--memo", type=Path, required=True, help="OUT/memo of a vsdmot-bench ablation run")
    ap.add_argument("--seq", type=Path, required=True, help="the sequence folder (gt)")
    ap.add_argument("--tracked", required=True, help="A:B, the ablation's --frames")
    ap.add_argument("--condition", default="clean")
    ap.add_argument("--patterns", nargs="+", default=["jit1-3"], help="everyK or jitA-B")
    ap.add_argument("--seeds", type=int, default=10, help="draws per jit pattern")
    ap.add_argument("--variants", nargs="+", default=["hybrid", "bytetrack", "e2e"],
                    help=f"of {[v for v in variants() if v != 'kalman']}")
    ap.add_argument("--policy", default="auto", choices=("auto", "always", "never"))
    ap.add_argument("--held-out", action="store_true", help="allow evaluation frames (after choosing)")
    ap.add_argument("--json", type=Path, default=None)
    ap.set_defaults(func=lambda a: _run(ap, a))
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # first: run_main's setup then keeps it
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    if "kalman" in a.variants or set(a.variants) - set(variants()):
        ap.error(f"--variants: expected names from {[v for v in variants() if v != 'kalman']} "
                 "(kalman ignores the gap)")
    try:
        for p in a.patterns:
            kept_frames(p, 1, 2)  # a bad pattern fails before any replay
        first, sep, last = a.tracked.partition(":")
        if not (sep and first.isdigit() and last.isdigit()):
            raise ValueError(f"--tracked: expected A:B (frame numbers), got {a.tracked!r}")
        cfg = DropConfig(a.memo, a.seq, a.condition, (int(first), int(last)), tuple(a.patterns),
                         a.seeds, a.policy, held_out=a.held_out)
        recs = run_drops(cfg, a.variants)
    except ValueError as e:  # a bad pattern or window, a missing memo, evaluation frames without --held-out
        ap.error(str(e))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(recs, indent=1))
    print(summary(recs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
