"""TrackEval wrapper: HOTA, CLEAR (MOTA) and Identity (IDF1) for one sequence and one result file.

The ground truth and the results are re-written into a temporary folder in TrackEval's MOTChallenge
layout (optionally cut to a frame window and renumbered from 1), then TrackEval's own
`MotChallenge2DBox` loader, preprocessing and metric classes run on it, so the numbers are
TrackEval's, including its dataset rules:

- MOT15 gt (10 columns): no class preprocessing; rows with conf 0 are dropped from the gt, and
  boxes on them count as false positives.
- MOT17 gt (9 columns): result boxes matched (IoU >= 0.5) to distractor classes (person on
  vehicle, static person, distractor, reflection) are removed; only class-1 rows with conf != 0
  count. Visibility is not used (TrackEval does not use it either).

The sequence needs only `seqinfo.ini` and `gt/gt.txt`: no images, so video sequences work.
Scores are fractions in [0, 1]; HOTA, DetA, AssA and their parts are averaged over TrackEval's 19
IoU thresholds (0.05 .. 0.95).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from vsdmot.runtime.mot import MotRows, atomic_write_text, read_rows, read_seqinfo

log = logging.getLogger(__name__)

# Keys of the dict `evaluate` returns, in table order.
SCORE_KEYS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA",
              "MOTA", "MOTP", "IDF1", "IDP", "IDR")
COUNT_KEYS = ("IDSW", "FP", "FN", "TP", "Frag", "MT", "PT", "ML", "GT_IDs", "IDs", "GT_Dets", "Dets", "frames")
_RENAME = {"CLR_FP": "FP", "CLR_FN": "FN", "CLR_TP": "TP"}


def evaluate(gt_dir: str | os.PathLike, res_file: str | os.PathLike, *,
             frames: tuple[int, int] | None = None) -> dict:
    """Score `res_file` (MOTChallenge results) against the sequence folder `gt_dir`.

    `frames=(a, b)` keeps only frames a..b inclusive of both gt and results. Returns
    {HOTA, DetA, AssA, MOTA, IDF1, IDSW, ...}: see SCORE_KEYS and COUNT_KEYS, plus `benchmark`.
    """
    gt_dir = Path(gt_dir)
    info = read_seqinfo(gt_dir)
    gt_path = gt_dir / "gt" / "gt.txt"
    if not gt_path.is_file():
        raise ValueError(f"evaluate: expected ground truth at {gt_path}, found none")
    gt, res = read_rows(gt_path), _read_results(res_file)
    first, last = parse_window(frames, info.length)
    _check_frames(gt, info.length, gt_path)
    _check_frames(res, info.length, Path(res_file))
    _warn_outside(res, (info.width, info.height), Path(res_file))
    _warn_coverage(gt, res, (first, last), Path(res_file))
    gt, res = _cut(gt, first, last), _cut(res, first, last)
    benchmark = "MOT17" if np.any(gt.cls != -1) else "MOT15"
    out = _run_trackeval(gt, res, last - first + 1, benchmark, info.name)
    out["benchmark"] = benchmark
    out["frames"] = last - first + 1
    return out


def counted_gt(gt: MotRows) -> MotRows:
    """The gt rows a perfect tracker outputs: conf != 0, and class 1 (pedestrian) where classes exist."""
    return gt.select(counted_mask(gt))


def counted_mask(gt: MotRows) -> np.ndarray:
    """(M,) bool: the rows `counted_gt` keeps."""
    return (gt.conf != 0) & ((gt.cls == -1) | (gt.cls == 1))


def parse_window(frames: tuple[int, int] | None, length: int) -> tuple[int, int]:
    """(first, last) 1-based inclusive; the whole sequence when `frames` is None."""
    if frames is None:
        return 1, length
    a, b = (int(v) for v in frames)
    if not 1 <= a <= b <= length:
        raise ValueError(f"frames: expected 1 <= A <= B <= {length} (sequence length), got {a}:{b}")
    return a, b


def _read_results(path: str | os.PathLike) -> MotRows:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results: expected a MOTChallenge file at {path}, found none")
    return read_rows(path)


def _check_frames(rows: MotRows, length: int, path: Path) -> None:
    bad = (rows.frame < 1) | (rows.frame > length)
    if bad.any():
        raise ValueError(f"{path}: frames must be 1..{length} (seqinfo.ini seqLength), "
                         f"got {int(rows.frame[bad][0])}")


OUTSIDE_SHARE = 0.2  # results whose box centres lie outside the frame: more than this share is a warning


def _warn_outside(rows: MotRows, size: tuple[int, int], path: Path) -> None:
    """Warn when many result boxes are centred outside the sequence's frame: results made on a
    resized copy (a 4K re-encode scored against 768x576 ground truth scored HOTA 0.0, silently)."""
    w, h = size
    if not (w and h and len(rows)):
        return
    cx, cy = rows.xywh[:, 0] + rows.xywh[:, 2] / 2, rows.xywh[:, 1] + rows.xywh[:, 3] / 2
    outside = float(np.mean((cx < 0) | (cx > w) | (cy < 0) | (cy > h)))
    if outside > OUTSIDE_SHARE:
        reach = max(float((rows.xywh[:, 0] + rows.xywh[:, 2]).max()) / w, float((rows.xywh[:, 1] + rows.xywh[:, 3]).max()) / h)
        log.warning("evaluate: %.0f%% of the boxes in %s are centred outside the sequence's %dx%d frame (they "
                    "reach %.1fx its size): were the results made on a resized copy? Scale them to %dx%d first",
                    100 * outside, path, w, h, reach, w, h)


def _warn_coverage(gt: MotRows, res: MotRows, window: tuple[int, int], path: Path) -> None:
    """Warn when the results hold no rows, or end well before the ground truth in the window (a run
    stopped early, or --max-frames): scored as given, the missing frames count as misses."""
    first, last = window
    if not len(res):  # scored all the same (0 HOTA), but rarely what was meant
        log.warning("evaluate: %s holds no result rows (a run that tracked no one, or the wrong file)", path)
        return
    in_gt, in_res = gt.frame[(gt.frame >= first) & (gt.frame <= last)], res.frame[res.frame <= last]
    if not (len(in_gt) and len(in_res)):
        return
    gt_end, res_end = int(in_gt.max()), int(in_res.max())
    if gt_end - res_end > max(2, (last - first + 1) // 20):
        log.warning("evaluate: the results in %s end at frame %d, the ground truth at %d: the frames after count "
                    "as misses (a run stopped early?); --frames %d:%d scores only what was run",
                    path, res_end, gt_end, first, res_end)


def _cut(rows: MotRows, first: int, last: int) -> MotRows:
    """Rows of frames first..last, renumbered so `first` becomes frame 1."""
    kept = rows.select((rows.frame >= first) & (rows.frame <= last))
    kept.frame = kept.frame - (first - 1)
    return kept


def write_gt(path: str | os.PathLike, gt: MotRows) -> None:
    """gt rows in their own layout (atomically): 9 columns (class, visibility) when they carry
    classes, so `evaluate` keeps the MOT17 rules; else 10 columns (MOT15). Conf-0 rows are kept."""
    atomic_write_text(path, _gt_text(gt, "MOT17" if np.any(gt.cls != -1) else "MOT15"))


def _gt_text(gt: MotRows, benchmark: str) -> str:
    if benchmark == "MOT17":
        tail = lambda i: f"{gt.cls[i]},{gt.vis[i]:g}"  # noqa: E731
    else:
        tail = lambda i: "-1,-1,-1"  # noqa: E731  (MOT15: world coords are not used)
    return "".join(
        f"{gt.frame[i]},{gt.id[i]},{b[0]:.3f},{b[1]:.3f},{b[2]:.3f},{b[3]:.3f},{gt.conf[i]:g},{tail(i)}\n"
        for i, b in enumerate(gt.xywh)
    )


def _res_text(res: MotRows) -> str:
    return "".join(
        f"{res.frame[i]},{res.id[i]},{b[0]:.3f},{b[1]:.3f},{b[2]:.3f},{b[3]:.3f},{res.conf[i]:g},-1,-1,-1\n"
        for i, b in enumerate(res.xywh)
    )


def _run_trackeval(gt: MotRows, res: MotRows, n_frames: int, benchmark: str, name: str) -> dict:
    """Write TrackEval's layout in a temp dir and run its loader + metrics. TrackEval prints: silenced."""
    with tempfile.TemporaryDirectory(prefix="vsdmot-eval-") as tmp:
        root = Path(tmp)
        atomic_write_text(root / "gt" / name / "gt" / "gt.txt", _gt_text(gt, benchmark))
        atomic_write_text(root / "trackers" / "res" / "data" / f"{name}.txt", _res_text(res))
        with contextlib.redirect_stdout(io.StringIO()) as noise:
            try:
                raw = _trackeval_metrics(root, name, n_frames, benchmark)
            except Exception as e:  # TrackEvalException and friends: bad input in our terms
                if type(e).__name__ != "TrackEvalException":
                    raise
                raise ValueError(f"TrackEval rejected the input: {e}") from None
        if noise.getvalue().strip():
            log.debug("trackeval: %s", noise.getvalue().strip())
    return _summarise(raw)


def _trackeval_metrics(root: Path, name: str, n_frames: int, benchmark: str) -> dict:
    import trackeval  # noqa: PLC0415  (scipy-heavy, prints on import)

    config = {
        "GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"),
        "TRACKERS_TO_EVAL": ["res"], "SEQ_INFO": {name: n_frames}, "SKIP_SPLIT_FOL": True,
        "BENCHMARK": benchmark, "PRINT_CONFIG": False, "DO_PREPROC": True,
    }
    dataset = trackeval.datasets.MotChallenge2DBox(config)
    raw = dataset.get_raw_seq_data("res", name)
    data = dataset.get_preprocessed_seq_data(raw, "pedestrian")
    quiet = {"PRINT_CONFIG": False}
    out: dict = {}
    for metric in (trackeval.metrics.HOTA(quiet), trackeval.metrics.CLEAR(quiet),
                   trackeval.metrics.Identity(quiet), trackeval.metrics.Count(quiet)):
        out.update(metric.eval_sequence(data))
    return out


def _summarise(raw: dict) -> dict:
    """Floats for scores (HOTA family averaged over IoU thresholds), ints for counts."""
    out: dict = {}
    for key in SCORE_KEYS:
        out[key] = float(np.mean(raw[key]))
    for key, value in raw.items():
        key = _RENAME.get(key, key)
        if key in COUNT_KEYS:
            out[key] = int(value)
    return out
