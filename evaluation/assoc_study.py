"""Association study: tracker variants (hybrid and e2e) replayed on the ablation's stored per-frame values.

`vsdmot-bench ablation --out OUT` stores, per (sequence, condition), every frame's detector output,
q and the student vectors its rows asked for (`OUT/memo/`, see ablation_memo.py). This module
replays a tracker over those values, with no decode and no detector, through the runtime's own
DSWR and `SemanticPolicy` (the same vectors reach the tracker as in the ablation row), writes
MOTChallenge rows and scores them with `metrics.evaluate` on one or more frame windows. So a
tracker-only change (a cost, a gate, a lifetime) is measured in seconds per condition. The variants
(names -> tracker factories, `--variants`) live in assoc_variants.py.
`--weights CKPT` replays a retrained tracker head (torch) instead of the bundle's tracker.onnx, and
`--start F` tracks from frame F with a fresh tracker (the head's train-side validation window).

`pointer_diag` measures the network's pointer against the ground truth: for each live slot whose
last matched box was a gt person, and a proposal on that same person exists this frame, is the
pointer's (or the predicted-box IoU's) best proposal the right one?

Train-side by default: windows touching the evaluation frames (PETS09-S2L1 601-795, TUD-Campus)
are refused unless `held_out=True` (docs/ablation.md: those frames never choose a design).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsdmot._cli import run_main
from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle
from vsdmot.runtime.e2e import HybridTracker
from vsdmot.runtime.mot import format_result_rows, read_rows
from vsdmot.runtime.tracking import box_iou
from vsdmot.runtime.types import Detections
from vsdmot.splits import touches_held_out

from .ablation_memo import memo_name, stage_identity
from .assoc_variants import variants
from .metrics import counted_gt, evaluate

log = logging.getLogger(__name__)

KEYS = ("HOTA", "DetA", "AssA", "AssRe", "AssPr", "IDF1", "MOTA", "IDSW", "Frag", "IDs", "GT_IDs")


@dataclass(frozen=True)
class Stored:
    """One (sequence, condition)'s stored values, frame -> value."""

    dets: dict[int, Detections]  # the bundle detector's output (boxes, scores, appearance rows)
    q: dict[int, float]  # quality score
    vec: dict[int, np.ndarray]  # (1, D) student vector, on the frames a policy computed one


def memo_file(memo_dir: Path, seq: str, cond: str, window: tuple[int, int]) -> Path:
    """The ablation's memo pickle for (seq, cond) tracked over `window` (any seq key, 1 thread), made
    by today's runtime stage code (`stage_identity`); a file from before the code was in the name is
    taken only when it is the only one (with a warning)."""
    name = re.escape(memo_name(cond, "KEY", window, 1, "CODE")).replace("KEY", "[0-9a-f]{16}")
    pat = re.compile("^" + name.replace(re.escape("-cCODE"), "(-c[0-9a-f]{8})?") + "$")
    hits = sorted(p for p in (Path(memo_dir) / seq).glob("*.pkl") if pat.match(p.name))
    now = [p for p in hits if p.stem.endswith(f"-c{stage_identity()}")]
    legacy = [p for p in hits if not re.search(r"-c[0-9a-f]{8}$", p.stem)]
    if len(now) == 1:
        return now[0]
    if not now and len(legacy) == 1 == len(hits):
        log.warning("memo %s predates the stage-code key: its detector / q values may come from older code", legacy[0])
        return legacy[0]
    raise ValueError(f"memo: expected one file for {seq} {cond} {window} made by today's runtime stage code "
                     f"under {memo_dir} (run the ablation again), got {hits}")


def load_stored(path: Path, bundle) -> Stored:
    """The values stored for the bundle's own detector, quality gate and student."""
    with open(path, "rb") as f:
        stored = pickle.load(f)
    sha = lambda name: bundle.entry(name)["sha256"]  # noqa: E731
    vec = stored.get(("student", sha("student.onnx")), {}) if bundle.has("student.onnx") else {}
    return Stored(stored[("detector", sha("detector.onnx"))], stored[("q", sha("quality.json"))], vec)


class StoredSemantics:
    """The runtime's DSWR + SemanticPolicy over stored q and vectors: the ablation row's (vector, w)."""

    def __init__(self, st: Stored, dswr, policy: str):
        from vsdmot.runtime.config import SemanticsConfig
        from vsdmot.runtime.semantics import SemanticPolicy

        self.st, self.dswr, self.f = st, dswr, 0
        self.policy = SemanticPolicy(SemanticsConfig(policy=policy), self._student if policy != "never" else None)

    def _student(self, image) -> np.ndarray:
        if self.f not in self.st.vec:
            raise ValueError(f"memo: no stored student vector for frame {self.f} (run the ablation with this policy)")
        return self.st.vec[self.f]

    def get(self, f: int) -> tuple[np.ndarray | None, float]:
        self.f = f
        w = self.dswr.weight(self.st.q[f])
        return self.policy.get(None, self.st.q[f], w)[0], w


def replay(st: Stored, tracker, sem: StoredSemantics | None, frames: range, hook: Callable | None = None,
           warm: range = range(0)) -> str:
    """Step `tracker` over stored frames; MOTChallenge rows. `hook(f, tracker)` runs after each step.
    `warm`: frames before `frames` that only step the semantics policy (its vector cache then holds
    what the stored run's did, so it asks for no vector the run did not store)."""
    tracker.reset()
    for f in warm if sem is not None else ():
        sem.get(f)
    rows = []
    for f in frames:
        vec, w = sem.get(f) if sem is not None else (None, 0.0)
        out = tracker.step(st.dets[f], vec, w)
        rows.append(format_result_rows(f, out.track_id, out.xywh, out.score))
        if hook is not None:
            hook(f, tracker)
    return "".join(rows)


def score(seq_dir: Path, text: str, windows: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """{window name: {HOTA, AssA, IDSW, ...}} (scores x 100, counts as counts)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "res.txt"
        res.write_text(text)
        out = {}
        for name, win in windows.items():
            m = evaluate(seq_dir, res, frames=win)
            out[name] = {k: round(100 * m[k], 2) if isinstance(m[k], float) else int(m[k]) for k in KEYS}
    return out


# -- pointer diagnostics ---------------------------------------------------------------------------
class RecordingHybrid(HybridTracker):
    """HybridTracker that keeps, per frame, each live slot's pointer row and predicted-box IoU."""

    def reset(self, keep_ids: bool = False) -> None:
        super().reset(keep_ids)
        self.log: list[dict] = []
        self.last_f = np.zeros(self.S, np.int64)  # (S,) frame of each slot's last match

    def _associate(self, prob, keep, birth, props):
        slots = np.flatnonzero(self.valid)
        _, iou = self._cost(prob, slots, props)
        if iou is None:  # the shipped default reads no IoU (so _cost skips it); the diagnostic compares with it
            iou = self.predicted_iou(slots, props)
        res = super()._associate(prob, keep, birth, props)
        self.log.append({"slots": slots, "box": self.box[slots].copy(), "last_f": self.last_f[slots].copy(),
                         "prob": prob[slots][:, : len(props)], "iou": iou, "props": props.xyxy.copy(), "m": res[0]})
        return res


def _gt_by_frame(seq_dir: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    gt = counted_gt(read_rows(Path(seq_dir) / "gt" / "gt.txt"))
    xyxy = gt.xyxy
    return {int(f): (gt.id[gt.frame == f], xyxy[gt.frame == f]) for f in np.unique(gt.frame)}


def _person(gt, f: int, boxes: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """(K,) gt id each box covers at frame f with IoU >= thr, else -1."""
    ids, gxy = gt.get(f, (np.zeros(0, np.int64), np.zeros((0, 4))))
    if not len(ids) or not len(boxes):
        return np.full(len(boxes), -1, np.int64)
    iou = box_iou(boxes, gxy)
    return np.where(iou.max(1) >= thr, ids[iou.argmax(1)], -1)


def pointer_diag(st: Stored, tracker: RecordingHybrid, sem, frames: range, seq_dir: Path,
                 window: tuple[int, int]) -> dict:
    """Pointer vs IoU top-1 accuracy and the matching's right / wrong / missed shares, on `window`."""
    gt, n = _gt_by_frame(seq_dir), {"cases": 0, "ptr_top1": 0, "iou_top1": 0, "p_right": 0.0, "p_best_wrong": 0.0,
                                    "matched_right": 0, "matched_wrong": 0, "unmatched": 0, "absent": 0,
                                    "absent_matched": 0, "absent_matched_iou0": 0}

    def hook(f, trk):
        rec = trk.log[-1]
        trk.last_f[trk.valid & (trk.miss == 0)] = f  # slots matched this frame
        if not window[0] <= f <= window[1] or not len(rec["slots"]):
            return
        who = np.array([_person(gt, int(lf), b[None])[0] for lf, b in zip(rec["last_f"], rec["box"])])
        prop_who = _person(gt, f, rec["props"])
        matched = dict(zip(rec["m"][:, 0].tolist(), rec["m"][:, 1].tolist()))
        for i, (s, g) in enumerate(zip(rec["slots"], who)):
            right = np.flatnonzero((prop_who == g) & (g >= 0))
            if g >= 0 and not len(right):  # the person is not detected: any match is a wrong one
                got = matched.get(int(s))
                n["absent"] += 1
                n["absent_matched"] += got is not None
                n["absent_matched_iou0"] += got is not None and rec["iou"][i, got] <= 0
                continue
            if not len(right) or rec["prob"].shape[1] == 0:
                continue
            r = right[np.argmax(rec["iou"][i, right])]
            p = rec["prob"][i]
            n["cases"] += 1
            n["ptr_top1"] += int(p.argmax() == r)
            n["iou_top1"] += int(rec["iou"][i].argmax() == r)
            n["p_right"] += float(p[r])
            n["p_best_wrong"] += float(np.delete(p, right).max(initial=0.0))
            got = matched.get(int(s))
            key = "unmatched" if got is None else ("matched_right" if prop_who[got] == g else "matched_wrong")
            n[key] += 1

    replay(st, tracker, sem, frames, hook)
    c, a = max(n["cases"], 1), max(n["absent"], 1)
    shares = {k: round(n[k] / c, 4) for k in n if k not in ("cases", "absent") and not k.startswith("absent_")}
    return {"cases": n["cases"], **shares, "absent": n["absent"],
            **{k: round(n[k] / a, 4) for k in n if k.startswith("absent_")}}


@dataclass(frozen=True)
class StudyConfig:
    memo_dir: Path  # OUT/memo of a `vsdmot-bench ablation --out OUT` run
    seq_dir: Path  # the sequence folder (its gt scores every condition)
    conditions: tuple[str, ...]  # condition names (clean, jpeg-s3, schedule-mixed, ...)
    tracked: tuple[int, int]  # the window the ablation tracked (its --frames)
    windows: dict  # name -> (a, b) frames scored, inside `tracked`
    bundle: Path = DEFAULT_BUNDLE
    policy: str = "auto"  # semantics policy for the network trackers
    held_out: bool = False  # allow evaluation frames (only for the one measurement after choosing)
    start: int | None = None  # replay from this frame (a fresh tracker) instead of tracked[0]
    weights: Path | None = None  # a tracker head checkpoint (torch) to replay instead of the bundle's tracker.onnx
    bundle_dswr: bool = False  # with `weights`: keep the bundle's DSWR (the stored run's w, so its stored vectors
    # cover every frame the policy asks for), not the head's own


def check_train_side(cfg: StudyConfig, seq_name: str) -> None:
    """ValueError when a scored window touches evaluation frames and held_out is not set."""
    if cfg.held_out:
        return
    spans = (*cfg.windows.values(), cfg.tracked)
    if any(touches_held_out(seq_name, span) for span in spans):
        raise ValueError(f"{seq_name} {cfg.tracked}: evaluation frames; "
                         "pass held_out=True only to measure a chosen variant")


def replay_frames(cfg: StudyConfig) -> range:
    """The frames replayed: the tracked window, or from `start` with a fresh tracker (the head's
    train-side validation in docs/training.md tracks PETS 541-600 alone)."""
    if cfg.start is not None and not cfg.tracked[0] <= cfg.start <= cfg.tracked[1]:
        raise ValueError(f"start {cfg.start}: expected a frame inside the tracked window {cfg.tracked}")
    first = cfg.tracked[0] if cfg.start is None else cfg.start
    for name, (a, b) in cfg.windows.items():  # frames never replayed would score as misses
        if not first <= a <= b <= cfg.tracked[1]:
            raise ValueError(f"window {name} {a}:{b}: expected frames inside the replayed {first}:{cfg.tracked[1]}")
    return range(first, cfg.tracked[1] + 1)


def head_backend(weights: Path):
    """(torch Backend, Dswr) of a tracker head checkpoint (`vsdmot-train tracker --ship` layout)."""
    from vsdmot.models.reference import tracker_backend
    from vsdmot.models.train_tracker import load_tracker
    from vsdmot.runtime.dswr import Dswr

    head, meta = load_tracker(weights)
    return tracker_backend(head, threads=1), Dswr.from_params(meta.get("dswr", {}))


def run_study(cfg: StudyConfig, names: list[str], diag: bool = False) -> list[dict]:
    """Every variant on every condition: one record per (variant, condition, window)."""
    from vsdmot.runtime.backends import OnnxRuntimeBackend
    from vsdmot.runtime.dswr import Dswr
    from vsdmot.runtime.mot import read_seqinfo

    info = read_seqinfo(cfg.seq_dir)
    check_train_side(cfg, info.name)
    bundle = load_bundle(cfg.bundle)
    dswr = Dswr.from_params(bundle.params("quality.json"))
    if cfg.weights is None:
        backend = OnnxRuntimeBackend(bundle.path / "tracker.onnx", providers=["CPUExecutionProvider"], threads=1)
    else:  # a retrained head with its own jointly trained DSWR (what its bundle's quality.json would carry)
        backend, head_dswr = head_backend(cfg.weights)
        dswr = dswr if cfg.bundle_dswr else head_dswr
    facts, frames, out = variants(), replay_frames(cfg), []
    try:
        for cond in cfg.conditions:
            st = load_stored(memo_file(cfg.memo_dir, info.name, cond, cfg.tracked), bundle)
            for name in names:
                trk = facts[name](backend, info.frame_rate)
                sem = StoredSemantics(st, dswr, cfg.policy) if name != "bytetrack" else None
                text = replay(st, trk, sem, frames, warm=range(cfg.tracked[0], frames[0]))
                res = score(cfg.seq_dir, text, cfg.windows)
                for win, m in res.items():
                    out.append({"variant": name, "condition": cond, "window": win, **m})
                if diag and name != "bytetrack":
                    rec = RecordingHybrid(backend, trk.cfg)
                    for win, w in cfg.windows.items():
                        d = pointer_diag(st, rec, StoredSemantics(st, dswr, cfg.policy), frames, cfg.seq_dir, w)
                        out.append({"variant": name, "condition": cond, "window": win, "diag": d})
                log.info("%s %s %s", cond, name, {w: (m["HOTA"], m["AssA"], m["IDSW"]) for w, m in res.items()})
    finally:
        backend.close()
    return out


# -- summary and CLI ---------------------------------------------------------------------------------
def summary(records: list[dict]) -> list[dict]:
    """Per (variant, window): clean metrics and the mean over the degraded conditions."""
    out = []
    for v in dict.fromkeys(r["variant"] for r in records if "diag" not in r):
        for win in dict.fromkeys(r["window"] for r in records):
            rs = [r for r in records if r["variant"] == v and r["window"] == win and "diag" not in r]
            for part, sel in (("clean", [r for r in rs if r["condition"] == "clean"]),
                              ("degraded", [r for r in rs if r["condition"] != "clean"])):
                if sel:
                    out.append({"variant": v, "window": win, "part": part, "n": len(sel),
                                **{k: round(float(np.mean([r[k] for r in sel])), 2) for k in KEYS}})
    return out


def markdown(rows: list[dict]) -> str:
    keys = ("variant", "window", "part", "n", *KEYS)
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join("| " + " | ".join(str(r[k]) for k in keys) + " |\n" for r in rows)


def _window(text: str) -> tuple[str, tuple[int, int]]:
    name, _, span = text.partition("=")
    a, _, b = span.partition(":")
    return name, (int(a), int(b))


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.evaluation.assoc_study --memo OUT/memo --seq DIR --tracked 1:600 --window val=541:600 ..."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.assoc_study", description=__doc__.split("\n")[0])
    ap.add_argument("--memo", type=Path, required=True, help="OUT/memo of a vsdmot-bench ablation run")
    ap.add_argument("--seq", type=Path, required=True, help="the sequence folder (gt)")
    ap.add_argument("--tracked", required=True, help="A:B, the ablation's --frames")
    ap.add_argument("--window", nargs="+", required=True, help="NAME=A:B frames scored (inside --tracked)")
    ap.add_argument("--conditions", nargs="+", required=True)
    ap.add_argument("--variants", nargs="+", default=["bytetrack", "hybrid"], help=f"of {list(variants())}")
    ap.add_argument("--policy", default="auto", choices=("auto", "always", "never"))
    ap.add_argument("--diag", action="store_true", help="also the pointer diagnostics")
    ap.add_argument("--held-out", action="store_true", help="allow evaluation frames (after choosing)")
    ap.add_argument("--start", type=int, default=None, help="replay from this frame (default: the first tracked)")
    ap.add_argument("--weights", type=Path, default=None, help="replay this tracker head checkpoint (torch)")
    ap.add_argument("--bundle-dswr", action="store_true", help="with --weights: w from the bundle's DSWR, not the head's")
    ap.add_argument("--json", type=Path, default=None)
    ap.set_defaults(func=lambda a: _run(ap, a))
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # first: run_main's setup then keeps it
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    t = tuple(int(x) for x in a.tracked.split(":"))
    cfg = StudyConfig(a.memo, a.seq, tuple(a.conditions), t, dict(map(_window, a.window)), policy=a.policy,
                      held_out=a.held_out, start=a.start, weights=a.weights,
                      bundle_dswr=a.bundle_dswr)
    recs = run_study(cfg, a.variants, a.diag)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(recs, indent=1))
    print(markdown(summary(recs)))
    for r in recs:
        if "diag" in r:
            print(r["variant"], r["condition"], r["window"], r["diag"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
