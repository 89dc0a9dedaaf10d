"""Ablation: tracker variants x sequences x degradation conditions, on the shipped per-frame code.

Every row is the runtime's own `Pipeline` (built by `runtime.pipeline`'s `make_tracker` and
`SemanticPolicy`, networks on onnxruntime) stepped by the runtime's own `step(frame, p)`; the
peer is `bench.make_peer`. Only the expensive stages are memoised per (sequence, condition,
frame), because they do not depend on the row:

- the detector's output (once per detector file, shared by every row that uses it),
- the quality score q (once per quality.json),
- a student's vector (once per student file, computed the first time any row's real
  `SemanticPolicy` asks for it, so `auto`'s hysteresis and reuse are replayed exactly).

These values are also stored per (sequence, condition) under `out/memo/`, keyed by the component
file's sha256 and the runtime code that computes them (decode, quality features, student
preprocessing: `ablation_memo.stage_identity`), so a re-run after a tracker-only retrain does not
run the detectors again.

All rows step in lockstep over one decode of the frames. Each (row, sequence, condition) result
is a JSON file under `out/rows/`, keyed by what it depends on (row, the bundle files it runs,
student file, degraded-sequence key, window, the per-frame code): a killed run resumes, and a
result made with other weights or other tracker code is recomputed, never reused; a change to the
runtime's decode or quality features recomputes the memoised stages too. `ablation_memo.py` holds the memoised stages;
`ablation_report.py` turns the results into tables and a plot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vsdmot import runtime as runtime_pkg
from vsdmot.models import WEIGHTS
from vsdmot.runtime.bundle import DEFAULT_BUNDLE
from vsdmot.runtime.mot import read_seqinfo
from vsdmot.splits import copy_name
from vsdmot.runtime.sources import open_sequence

from . import bench as B
from .ablation_memo import Components, FrameMemo, RowRun, _sha, bundle_identity, memo_name, open_row, stage_identity
from .metrics import evaluate, parse_window

log = logging.getLogger(__name__)

SCHEMA = 1  # bump when a cached row result would mean something else
ABLATION_STUDENTS = WEIGHTS / "ablation"
METRICS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")


@dataclass(frozen=True)
class Row:
    """One variant of the tracker: a line of the ablation table."""

    name: str  # row label
    tracker: str  # e2e / hybrid / bytetrack (on the bundle's detector) / peer (YOLOX-nano + ByteTrack)
    policy: str = "auto"  # semantics policy: auto / always / never
    student: str = ""  # "" = the bundle's student.onnx; else a student checkpoint (.pt) or ONNX file
    static_w: bool = False  # DSWR replaced by one constant w on every frame (AblationConfig.static_w)
    bundle: str = ""  # "" = the main bundle; else another bundle folder (INT8, pruned, ...)
    note: str = ""  # one line for the table


def default_rows(students: Path = ABLATION_STUDENTS) -> tuple[Row, ...]:
    """The issue's variants: e2e and hybrid under each policy, static w, each DCSD constraint, baselines."""
    return (
        Row("e2e-auto", "e2e", "auto", note="full model: DSWR + auto policy"),
        Row("e2e-never", "e2e", "never", note="no semantics"),
        Row("e2e-always", "e2e", "always", note="student on every frame, DSWR w"),
        Row("e2e-static-w", "e2e", "always", static_w=True, note="no DSWR: constant w, student on every frame"),
        Row("e2e-align-only", "e2e", "auto", str(students / "student_alignment.pt"), note="DCSD alignment constraint alone"),
        Row("e2e-rel-only", "e2e", "auto", str(students / "student_relational.pt"), note="DCSD relational constraint alone"),
        Row("hybrid-auto", "hybrid", "auto", note="shipped default: hybrid, auto policy"),
        Row("hybrid-never", "hybrid", "never", note="hybrid, no semantics"),
        Row("hybrid-always", "hybrid", "always", note="hybrid, student on every frame"),
        Row("bytetrack", "bytetrack", "never", note="ByteTrack on the bundle's detector"),
        Row("peer", "peer", "never", note="YOLOX-nano (official ONNX) + ByteTrack"),
    )


@dataclass(frozen=True)
class AblationConfig:
    seqs: tuple[Path, ...]  # MOTChallenge sequence folders
    conditions: tuple[B.Condition, ...]  # clean, presets at a severity, schedules
    rows: tuple[Row, ...] = field(default_factory=default_rows)  # the variants
    out: Path = Path("runs/ablation")  # rows/<row>/<seq>/<cond>.json, results/, ablation.json
    cache: Path = Path("runs/cache")  # the degraded-sequence cache shared with vsdmot-bench
    bundle: Path = DEFAULT_BUNDLE  # the main bundle (the shipped default)
    frames: tuple[int, int] | None = None  # track and score frames A..B only
    seed: int = 0  # degradation seed
    threads: int = 1  # onnxruntime intra-op threads per network
    static_w: float | None = None  # constant w of static rows; None = w_max / 2 of the bundle's DSWR
    yolox_onnx: Path | None = None  # the peer's detector (None = bench's default)
    progress: bool = True  # tqdm bar over frames


def missing_input(row: Row) -> str | None:
    """Why a row cannot run (its student or bundle file is absent), or None."""
    if row.student and not Path(row.student).is_file():
        return f"student checkpoint {row.student} not found (not trained or not committed yet): row skipped"
    if row.bundle and not (Path(row.bundle) / "manifest.json").is_file():
        return f"bundle {row.bundle} has no manifest.json: row skipped"
    return None


def static_weight(cfg: AblationConfig, comps: Components) -> float:
    """The static row's constant w: given, or w_max / 2 = g(q0), read from the bundle's DSWR params."""
    if cfg.static_w is not None:
        return float(cfg.static_w)
    from vsdmot.runtime.dswr import Dswr

    return Dswr.from_params(comps.bundle("").params("quality.json")).w_max / 2


# -- cached results -----------------------------------------------------------------------------------
def row_key(row: Row, comps: Components, seq_key: str, static_w: float) -> str:
    """What a row's result depends on: the row, its networks, the frames it saw."""
    cfg = comps.cfg
    parts: list = [SCHEMA, asdict(row), seq_key, cfg.frames, code_identity()]
    if row.tracker == "peer":
        parts.append(_sha(B.yolox_path(B.BenchEnv(1.0, yolox_onnx=cfg.yolox_onnx))))
    else:
        parts.append(bundle_identity(comps.bundle(row.bundle)))
    if row.student:
        parts.append(_sha(row.student))
    if row.static_w:
        parts.append(static_w)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def code_identity() -> str:
    """sha256 over the code every row runs per frame: the runtime package (pipeline, trackers,
    DSWR, policy) and the peer's bench loop. A tracker-code change reruns the rows; the memoised
    detector / q / student values (keyed by their network files) are reused."""
    return f"{runtime_pkg.code_identity()}-{_sha(B.__file__)[:16]}"


def result_path(out: Path, row: Row, seq: str, cond: str) -> Path:
    return out / "rows" / row.name / seq / f"{cond}.json"


def load_cached(path: Path, key: str) -> dict | None:
    """A stored result whose key matches, else None (absent, unreadable or stale)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key else None


def save_result(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)


# -- the driver -------------------------------------------------------------------------------------
@dataclass
class Pair:
    src: Path  # the clean source sequence
    cond: B.Condition
    name: str  # sequence name (the source's)
    seq_key: str  # the degraded-sequence cache key (clean: over the source files)
    keys: dict[str, str]  # row name -> result key
    todo: list[Row]  # rows without a valid cached result
    window: tuple[int, int]  # frames tracked and scored


def plan(cfg: AblationConfig, comps: Components, rows: Sequence[Row], static_w: float) -> list[Pair]:
    """Every (sequence, condition), with the rows that still need running."""
    pairs = []
    for src in cfg.seqs:
        info = read_seqinfo(src)
        window = parse_window(cfg.frames, info.length)  # bad --frames fails before any work
        for cond in cfg.conditions:
            seq_key = B._cache_key(Path(src), cond, cfg.seed)
            keys = {r.name: row_key(r, comps, seq_key, static_w) for r in rows}
            todo = [r for r in rows if load_cached(result_path(cfg.out, r, info.name, cond.name), keys[r.name]) is None]
            pairs.append(Pair(Path(src), cond, info.name, seq_key, keys, todo, window))
    return pairs


def run_ablation(cfg: AblationConfig) -> dict:
    """Run what is not cached yet; return {"meta", "rows", "results"} with every result."""
    import time

    from tqdm import tqdm

    comps, memo, t0 = Components(cfg), FrameMemo(), time.time()
    static_w = static_weight(cfg, comps)
    missing = {r.name: why for r in cfg.rows if (why := missing_input(r))}
    for name, why in missing.items():
        log.warning("ablation row %s: %s", name, why)
    rows = [r for r in cfg.rows if r.name not in missing]
    pairs = plan(cfg, comps, rows, static_w)
    total = sum(p.window[1] - p.window[0] + 1 for p in pairs if p.todo)
    try:
        with tqdm(total=total, desc="ablation", unit="f", disable=not cfg.progress) as bar:
            for src in cfg.seqs:
                run_sequence(cfg, comps, memo, [p for p in pairs if p.src == Path(src)], static_w, bar)
    finally:
        comps.close()
    results = [load_cached(result_path(cfg.out, r, p.name, p.cond.name), p.keys[r.name]) for p in pairs for r in rows]
    meta = {"static_w": static_w, "seconds_this_run": round(time.time() - t0, 1), "memo_calls": memo.calls,
            "skipped_rows": missing, "recomputed_pairs": sum(bool(p.todo) for p in pairs)}
    return {"meta": meta, "rows": [asdict(r) for r in cfg.rows], "results": [r for r in results if r]}


def run_sequence(cfg: AblationConfig, comps: Components, memo: FrameMemo, pairs: list[Pair], static_w: float, bar) -> None:
    """Every condition of one sequence; each row's tracker is built once and reset per condition."""
    need = {r.name: r for p in pairs for r in p.todo}
    if not need:
        return
    fps = read_seqinfo(pairs[0].src).frame_rate
    runs = {name: open_row(r, comps, memo, fps, static_w) for name, r in need.items()}
    try:
        for p in pairs:
            if p.todo:
                run_pair(cfg, p, [runs[r.name] for r in p.todo], memo, bar)
    finally:
        for r in runs.values():
            r.close()


def run_pair(cfg: AblationConfig, p: Pair, runs: list[RowRun], memo: FrameMemo, bar) -> None:
    """One decode of the frames; every row steps on each frame in turn; then score and store."""
    import time

    seq_dir = B.prepare_sequence(p.src, p.cond, cfg.cache, cfg.seed, progress=cfg.progress, frames=p.window)
    bar.set_postfix_str(f"{p.name} {p.cond.name} ({len(runs)} rows)")
    for r in runs:
        r.begin()
    memo.open_pair(cfg.out / "memo" / p.name
                   / memo_name(p.cond.name, p.seq_key, p.window, cfg.threads, stage_identity()))
    t0, source = time.time(), open_sequence(seq_dir).frames()
    try:
        for frame in source:
            if frame.index > p.window[1]:
                break
            if frame.index >= p.window[0]:
                memo.start(frame.index)
                for r in runs:
                    r.step(frame)
                bar.update()
    finally:
        source.close()
    seconds = time.time() - t0
    memo.save()
    for r in runs:
        save_result(result_path(cfg.out, r.row, p.name, p.cond.name), score_row(cfg, p, seq_dir, r, seconds))


def score_row(cfg: AblationConfig, p: Pair, seq_dir: Path, r: RowRun, seconds: float) -> dict:
    res = cfg.out / "results" / r.row.name / p.cond.name / f"{p.name}.txt"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text("".join(r.lines))
    m = evaluate(seq_dir, res, frames=cfg.frames)
    return {"key": p.keys[r.row.name], "row": r.row.name, "sequence": p.name, "condition": p.cond.name,
            "degraded": p.cond != B.Condition(), "metrics": m, "semantics": r.semantics(),
            "q_mean": float(np.mean(r.q)) if r.q else None, "w_mean": float(np.mean(r.w)) if r.w else None,
            "frames": len(r.lines), "results_file": str(res), "pair_seconds": round(seconds, 2)}


def bundle_row(spec: str) -> Row:
    """`NAME=DIR` -> an extra row running that bundle with its manifest's tracker, auto policy."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--bundle: expected NAME=DIR, got {spec!r}")
    return Row(name, "default", "auto", bundle=path, note=f"bundle {path} (its manifest's tracker), auto")


def select_rows(rows: Sequence[Row], names: Sequence[str] | None, extra: Sequence[Row] = ()) -> tuple[Row, ...]:
    """The rows named (all when None), in table order, then every `extra` row (the `--bundle` rows:
    asked for by name, so `--rows` never drops them); ValueError on an unknown or repeated name."""
    known = [r.name for r in (*rows, *extra)]
    if len(set(known)) != len(known):
        raise ValueError(f"rows: names must be unique, got {known}")
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"rows: expected names from {known}, got {unknown}")
    return tuple(r for r in rows if names is None or r.name in names) + tuple(extra)


def held_out_copy(src: Path, out: Path, first: int, last: int) -> Path:
    """Frames first..last of `src` as a lossless PNG sequence, gt cut to them and renumbered from 1
    (docs/peer_baseline.md: PETS09-S2L1 601-795, the frames no training uses). Written once."""
    import shutil

    import cv2

    from vsdmot.runtime.mot import SeqInfo, read_rows, write_seqinfo

    from .metrics import write_gt

    if (out / "seqinfo.ini").is_file():
        return out
    info, tmp = read_seqinfo(src), out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img1").mkdir(parents=True)
    source = open_sequence(src).frames()
    try:
        for f in source:
            if f.index > last:
                break
            if f.index >= first:
                cv2.imwrite(str(tmp / "img1" / f"{f.index - first + 1:06d}.png"), f.image)
    finally:
        source.close()
    gt = read_rows(src / "gt" / "gt.txt")
    gt = gt.select((gt.frame >= first) & (gt.frame <= last))
    gt.frame -= first - 1
    write_gt(tmp / "gt" / "gt.txt", gt)  # the source's layout: conf kept (0 = not counted), MOT17 classes kept
    write_seqinfo(tmp / "seqinfo.ini", SeqInfo(copy_name(info.name, (first, last), f"{info.name}-{first}-{last}"),
                                               info.frame_rate, last - first + 1,
                                               info.width, info.height, "img1", ".png"))
    tmp.rename(out)
    return out
