"""Detector-noise model: run YOLOX-nano on real TRAIN frames (clean and degraded), match to gt, measure.

What is measured (per condition, clean / degraded) feeds `models/synth.py`:
- recall as a function of box height, and the chance a miss follows a miss (occlusion runs);
- box jitter: std of (det - gt) centre offsets over gt size, and of log w/h ratios;
- scores of true positives and of false positives (quantiles), false positives per frame;
- appearance: cosine of per-anchor embeddings, same identity across frames vs different identities.

Detections are cached as .npz (one file per sequence and condition) so that tracker fine-tuning and
the e2e / hybrid / ByteTrack comparison run on exactly the same boxes. Only TRAIN frames are
measured (PETS 1-600, MOT17-mini); evaluation frames are detected only for the comparison.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from vsdmot._cli import run_main
from vsdmot.models import WEIGHTS
from vsdmot.paths import data_root
from vsdmot.runtime.mot import atomic_write_text
from vsdmot.runtime.types import Detections
from vsdmot.splits import PETS_TRAIN_LAST

log = logging.getLogger(__name__)

HEIGHT_BINS = (0, 40, 60, 80, 120, 200, 10_000)  # px: recall is measured per gt-height bin


def project_detector(onnx_path: str | os.PathLike | None = None, threads: int = 1,
                     weights: str | os.PathLike | None = None):
    """The runtime's YoloxDetector over the project's detector.onnx (exported from `weights`, a
    detector.pt, default models/weights/detector.pt, into the cache when no path is given): boxes,
    scores and `embed` rows."""
    from vsdmot.runtime.backends import OnnxRuntimeBackend
    from vsdmot.runtime.yolox import YoloxDetector

    if onnx_path is None:
        from vsdmot.models.detector import DEFAULT_WEIGHTS, export_onnx, load_detector

        pt = Path(weights or DEFAULT_WEIGHTS)
        onnx_path = cache_dir().parent / f"detector_{_sha(pt)}.onnx"
        if not onnx_path.is_file():  # exported beside it, then renamed: a killed export leaves no file
            tmp = onnx_path.with_name(f"{onnx_path.stem}.{os.getpid()}.partial.onnx")
            try:
                export_onnx(load_detector(pt)[0], tmp)
                os.replace(tmp, onnx_path)
            finally:
                tmp.unlink(missing_ok=True)
    det = YoloxDetector(OnnxRuntimeBackend(onnx_path, threads=threads))
    det.tag = f"det{_sha(onnx_path)}"  # keys the detection caches (detect_sequence)
    return det


def _sha(path: Path) -> str:
    from vsdmot.runtime.bundle import file_sha256

    return file_sha256(path)[:12]


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mixed degradation drawn per frame: the calibration library's presets when present."""
    try:
        from vsdmot.calibration import degrade as lib  # noqa: PLC0415  (another engineer's module)

        return lib.random_degrade(image, rng)  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        pass
    h, w = image.shape[:2]
    img = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.5))
    if rng.random() < 0.5:
        s = rng.uniform(0.35, 0.7)
        img = cv2.resize(cv2.resize(img, (int(w * s), int(h * s))), (w, h))
    img = img.astype(np.float32) * rng.uniform(0.35, 1.0)  # darken
    img = np.clip(img + rng.normal(0, rng.uniform(3, 18), img.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 60))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# ---------------------------------------------------------------- detection cache

def cache_dir() -> Path:
    return Path(os.environ.get("VSDMOT_CACHE", "~/.cache/vsdmot")).expanduser() / "dets"


_DEGRADATION_MODULES = ("degrade", "codec", "realesrgan")  # what calibration's random_degrade runs


def degradation_sources() -> list[Path]:
    """The calibration modules `degrade` runs."""
    from vsdmot.calibration import source_files  # noqa: PLC0415

    return source_files(*_DEGRADATION_MODULES)


def _cache_path(tag: str, seq, lo: int, hi: int, degraded: bool, seed: int) -> Path:
    """<cache>/<tag>_<sequence>-<where>_<lo>-<hi>_clean<seed>.npz, or _deg<seed>-<code>.npz where <code>
    hashes the degradation code (frames degraded by an older library are recomputed, never reused)
    and <where> the sequence's folder, gt size and seqinfo.ini."""
    import hashlib
    import inspect

    if degraded:
        h = hashlib.sha256(inspect.getsource(degrade).encode())
        for p in degradation_sources():
            h.update(p.read_bytes())
        cond = f"deg{seed}-{h.hexdigest()[:8]}"
    else:
        cond = f"clean{seed}"
    gt = seq.path / "gt" / "gt.txt"  # which footage, not only its name: a copied seqinfo.ini paired another
    where = f"{seq.path.resolve()}:{gt.stat().st_size if gt.is_file() else 0}"  # sequence's detections with this gt
    src = hashlib.sha256(where.encode() + (seq.path / "seqinfo.ini").read_bytes()).hexdigest()[:8]
    return cache_dir() / f"{tag}_{seq.info.name}-{src}_{lo}-{min(hi, seq.info.length)}_{cond}.npz"


def _save_npz(out: Path, **arrays) -> None:
    """np.savez_compressed via a temporary file and a rename: a killed run leaves no truncated cache."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.partial.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def detect_sequence(det, seq_dir: str | os.PathLike, frames: tuple[int, int] | None,
                    degraded: bool, seed: int = 0) -> Path:
    """Detect every frame in `frames` (inclusive, 1-based) of a sequence with `det.detect(image) ->
    Detections` (feature = embed rows); returns the cached .npz path (keyed by `det.tag`, and for
    degraded frames by the degradation code)."""
    from vsdmot.runtime.sources import open_sequence

    seq = open_sequence(seq_dir)
    lo, hi = frames or (1, 10**9)
    out = _cache_path(getattr(det, "tag", "det"), seq, lo, hi, degraded, seed)
    if out.is_file():
        return out
    rows: dict[str, list] = {"frame": [], "xyxy": [], "score": [], "embed": []}
    seen = []  # every frame detected on, with or without detections
    for index, img in _images(seq, lo, hi, degraded, seed):
        xyxy, score, emb = _detect(det, img)
        seen.append(index)
        for k, v in zip(rows, (np.full(len(score), index), xyxy, score, emb)):
            rows[k].append(v)
    _save_npz(out, **{k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()},
              size=np.array([seq.info.width, seq.info.height]), seen=np.array(seen, np.int64))
    log.info("detections cached: %s", out)
    return out


def _images(seq, lo: int, hi: int, degraded: bool, seed: int):
    """(index, BGR image) of frames lo..hi, degraded by a per-sequence stream seeded by `seed`: the
    detection cache and the semantics cache replay the exact same degraded frames."""
    rng = np.random.default_rng(seed)
    src = seq.frames()
    try:
        for f in src:
            if lo <= f.index <= hi:
                yield f.index, (degrade(f.image, rng) if degraded else f.image)
    finally:
        src.close()


def semantics_sequence(sem, seq_dir: str | os.PathLike, frames: tuple[int, int] | None,
                       degraded: bool, seed: int = 0) -> Path:
    """Per frame, what inference feeds the tracker: q from the runtime quality gate and the
    student's vector (runtime Student), on the same (degraded) frames as `detect_sequence`.
    `sem` has .gate (QualityGate), .student (runtime Student) and .tag. Cached .npz: frame (N,),
    q (N,) float32, semantic (N, D) float32."""
    from vsdmot.runtime.sources import open_sequence

    seq = open_sequence(seq_dir)
    lo, hi = frames or (1, 10**9)
    out = _cache_path(sem.tag, seq, lo, hi, degraded, seed)
    if out.is_file():
        return out
    idx, qs, vecs = [], [], []
    for index, img in _images(seq, lo, hi, degraded, seed):
        idx.append(index)
        qs.append(sem.gate.assess(img))
        vecs.append(sem.student(img)[0])
    _save_npz(out, frame=np.array(idx), q=np.array(qs, np.float32), semantic=np.array(vecs, np.float32))
    log.info("semantics cached: %s", out)
    return out


class ShippedSemantics:
    """The shipped quality gate (quality.json) and student (student.pt, runtime Student on the
    torch backend): exactly what the torch reference pipeline feeds. `.tag` keys the cache."""

    def __init__(self, quality_json: str | os.PathLike | None = None, student_pt: str | os.PathLike | None = None,
                 threads: int = 1):
        from vsdmot.runtime.quality import QualityGate
        from vsdmot.runtime.semantics import Student

        from .reference import WEIGHTS, student_backend

        qj = Path(quality_json or WEIGHTS / "quality.json")
        sp = Path(student_pt or WEIGHTS / "student.pt")
        self.gate = QualityGate.from_params(json.loads(qj.read_text()))
        self.student = Student(student_backend(threads, sp))
        gate_sha = _sha_bytes(json.dumps(self.gate.params(), sort_keys=True).encode())  # the gate, not the dswr section
        self.tag = f"sem{gate_sha}{_sha(sp)[:6]}"


def _sha_bytes(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()[:6]


def _detect(det, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        d: Detections = det.detect(img)
    except ValueError:  # runtime.types.Detections refuses an empty (0, E) feature array: an empty frame
        e = det.backend.outputs["embed"].shape[-1] if "embed" in det.backend.outputs else 0
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, max(e, 0)), np.float32)
    return d.xyxy, d.score, d.feature


def load_gt(seq_dir: str | os.PathLike) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frame -> (ids (K,), xyxy (K, 4)) for counted pedestrian rows."""
    from vsdmot.runtime.mot import read_rows

    rows = read_rows(Path(seq_dir) / "gt" / "gt.txt")
    keep = (rows.conf > 0) & ((rows.cls == -1) | (rows.cls == 1))
    rows = rows.select(keep)
    xyxy = rows.xywh.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    return {int(f): (rows.id[rows.frame == f], xyxy[rows.frame == f].astype(np.float32)) for f in np.unique(rows.frame)}


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) xyxy -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match_to_gt(gt_xyxy: np.ndarray, det_xyxy: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """(K,) index of the detection matched to each gt box (Hungarian on IoU >= thr), -1 if none."""
    from scipy.optimize import linear_sum_assignment

    out = np.full(len(gt_xyxy), -1, np.int64)
    if len(gt_xyxy) == 0 or len(det_xyxy) == 0:
        return out
    iou = iou_matrix(gt_xyxy, det_xyxy)
    r, c = linear_sum_assignment(-iou)
    ok = iou[r, c] >= thr
    out[r[ok]] = c[ok]
    return out


# ---------------------------------------------------------------- statistics

QUANTILES = np.linspace(0, 1, 11)


def measure(npz: str | os.PathLike, gt: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Noise statistics of one cached detection run against its gt, over the gt frames the run
    detected on (a frame where the detector found nobody counts its people as misses). Caches from
    before `seen` was stored know only the frames with detections."""
    d = np.load(npz)
    acc: dict[str, list] = {k: [] for k in ("h", "hit", "jit", "tp", "fp", "nfp", "fph", "same", "diff", "mm", "mh")}
    prev: dict[int, tuple[bool, np.ndarray | None]] = {}
    if "seen" in d:
        frames = set(gt) & set(d["seen"].tolist())
    else:
        frames = set(gt) & set(np.unique(d["frame"]).tolist()) | (set(gt) if len(d["frame"]) == 0 else set())
    for f in sorted(frames):
        sel = d["frame"] == f
        _frame_stats(acc, prev, *gt[f], d["xyxy"][sel], d["score"][sel], d["embed"][sel])
    return _summarise(acc)


def _frame_stats(acc, prev, ids, g, xyxy, score, emb) -> None:
    m = match_to_gt(g, xyxy)
    gh = g[:, 3] - g[:, 1]
    acc["h"].append(gh)
    acc["hit"].append(m >= 0)
    tp = m[m >= 0]
    gm = g[m >= 0]
    if len(tp):
        gw, ghh = gm[:, 2] - gm[:, 0], gm[:, 3] - gm[:, 1]
        dc = ((xyxy[tp, :2] + xyxy[tp, 2:]) - (gm[:, :2] + gm[:, 2:])) / 2
        dwh = np.log(np.maximum(xyxy[tp, 2:] - xyxy[tp, :2], 1) / np.maximum(np.stack([gw, ghh], 1), 1))
        acc["jit"].append(np.concatenate([dc / np.stack([gw, ghh], 1), dwh], 1))
        acc["tp"].append(score[tp])
    fp = np.setdiff1d(np.arange(len(score)), tp)
    acc["fp"].append(score[fp])
    acc["nfp"].append(len(fp))
    if len(fp) and len(gh):
        acc["fph"].append((xyxy[fp, 3] - xyxy[fp, 1]) / np.median(gh))
    _appearance_stats(acc, prev, ids, m, emb)


def _appearance_stats(acc, prev, ids, m, emb) -> None:
    cur = {}
    for i, j in zip(ids.tolist(), m.tolist()):
        e = emb[j] if j >= 0 else None
        was_hit, pe = prev.get(i, (None, None))
        if was_hit is not None:
            acc["mm" if not was_hit else "mh"].append(j < 0)
        if e is not None and pe is not None:
            acc["same"].append(float(e @ pe))
        cur[i] = (j >= 0, e if e is not None else pe)
    hit = m[m >= 0]
    if len(hit) > 1:
        c = emb[hit] @ emb[hit].T
        acc["diff"].extend(c[np.triu_indices(len(hit), 1)].tolist())
    prev.clear()
    prev.update(cur)


def _summarise(acc) -> dict:
    cat = lambda k: np.concatenate(acc[k]) if acc[k] else np.zeros(0)  # noqa: E731
    h, hit = cat("h"), cat("hit").astype(bool)
    bins = np.digitize(h, HEIGHT_BINS[1:-1])
    recall = [float(hit[bins == b].mean()) if (bins == b).any() else float(hit.mean() if len(hit) else 0.5)
              for b in range(len(HEIGHT_BINS) - 1)]
    jit = np.concatenate(acc["jit"]) if acc["jit"] else np.zeros((0, 4))
    q = lambda x: np.quantile(x, QUANTILES).tolist() if len(x) else QUANTILES.tolist()  # noqa: E731
    return {
        "recall_by_height": recall,
        "miss_after_miss": float(np.mean(acc["mm"])) if acc["mm"] else 0.5,
        "miss_after_hit": float(np.mean(acc["mh"])) if acc["mh"] else 0.1,
        "jitter_std": (1.4826 * np.median(np.abs(jit - np.median(jit, 0)), 0)).tolist() if len(jit) else [0.05] * 4,
        "tp_score_q": q(cat("tp")),
        "fp_score_q": q(cat("fp")),
        "fp_per_frame": float(np.mean(acc["nfp"])) if acc["nfp"] else 1.0,
        "fp_height_q": q(cat("fph")),
        "app_same_q": q(np.array(acc["same"])),
        "app_diff_q": q(np.array(acc["diff"])),
        "n_gt": int(len(h)),
    }


# ---------------------------------------------------------------- entry point

def train_sequences(data: Path) -> list[tuple[Path, tuple[int, int] | None]]:
    """TRAIN frames only: PETS09-S2L1 1-600 and every MOT17-mini sequence. Never PETS 601+ or TUD."""
    from .trainframes import mot17_train_dirs  # the held-out fence by content, not only by name

    return [(data / "PETS09-S2L1", (1, PETS_TRAIN_LAST)), *((p, None) for p in mot17_train_dirs(data))]


def pool(stats: list[dict]) -> dict:
    """Average per-sequence statistics weighted by gt count."""
    wts = np.array([s["n_gt"] for s in stats], np.float64)
    wts = wts / max(wts.sum(), 1)
    out = {k: np.tensordot(wts, np.array([s[k] for s in stats], np.float64), 1).tolist()
           for k in stats[0] if k != "n_gt"}
    out["n_gt"] = int(sum(s["n_gt"] for s in stats))
    return out


def measure_all(det, data: str | os.PathLike, out_json: str | os.PathLike) -> dict:
    """Measure clean and degraded noise on the TRAIN frames; write {clean: ..., degraded: ...}."""
    result = {}
    for cond in ("clean", "degraded"):
        stats = []
        for seq, frames in train_sequences(Path(data)):
            npz = detect_sequence(det, seq, frames, degraded=cond == "degraded")
            stats.append(measure(npz, load_gt(seq)))
        result[cond] = pool(stats)
    result["source"] = {"detector": det.tag, "frames": "PETS09-S2L1 1-600 + MOT17-mini (TRAIN only)",
                        "embed": "project detector `embed` (models/weights/detector.pt)"}
    atomic_write_text(out_json, json.dumps(result, indent=1))  # a kill mid-write leaves the old file
    return result


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.models.noise_model [--data DIR] [--detector-onnx F] [--out JSON]"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.models.noise_model")
    ap.add_argument("--data", default=str(data_root()))
    ap.add_argument("--detector-onnx", default=None)
    ap.add_argument("--out", default=str(WEIGHTS / "tracker_noise.json"))
    ap.add_argument("--semantics", action="store_true",
                    help="instead: cache the shipped gate's q and student's vectors on the TRAIN frames")
    ap.set_defaults(func=lambda a: _run(ap, a))
    logging.basicConfig(level=logging.INFO)  # first: run_main's setup then keeps it
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    if a.semantics:
        sem = ShippedSemantics()
        for seq, frames in train_sequences(Path(a.data)):
            for deg in (False, True):
                semantics_sequence(sem, seq, frames, deg)
        return 0
    det = project_detector(a.detector_onnx)
    measure_all(det, a.data, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
