"""Measurement resolution: how far one tracking number moves when only the encoding changes.

    python -m vsdmot.evaluation.reencode --seq DIR[:A-B] [DIR[:A-B] ...] [--crf 12 15 18 21 24]
        [--tracker hybrid bytetrack e2e] [--diff hybrid bytetrack] [--no-original] [--bundle DIR]
        [--threads 1] [--out runs/reencode]

Each sequence's video (or its image folder) is re-encoded with ffmpeg's libx264 at every CRF
(`-crf N -pix_fmt yuv420p`, visually lossless to mild), every tracker runs on every encode through
`vsdmot-edge run --source ENCODE --tracker T` (a fresh process, as a user runs it; it stops after
the window's last frame: tracking is causal, so the window's rows are those of a full run), and the
rows are scored by `evaluation.metrics.evaluate` against the sequence's gt on the window (`:A-B`,
default the whole sequence). The unencoded sequence is scored beside the encodes ("original").
Output in OUT: cells.jsonl (one line per (sequence, crf, tracker) cell: a re-run skips finished
cells of the same runtime code, bundle and input frames, i.e. sequence files and encode settings), reencode.md and reencode.json (HOTA, DetA, AssA, IDF1
per cell, and the per-CRF HOTA difference of the two `--diff` trackers with its range).
Measurement only: nothing should be chosen on what it prints (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vsdmot._cli import add_log_arguments
from vsdmot.runtime import code_identity as runtime_code_id
from vsdmot.runtime.bundle import DEFAULT_BUNDLE, MANIFEST, file_sha256
from vsdmot.runtime.errors import VsdmotError
from vsdmot.runtime.mot import atomic_write_text
from vsdmot.runtime.mot import read_seqinfo
from vsdmot.runtime.pipeline import TRACKER_KINDS

from .metrics import evaluate, parse_window

log = logging.getLogger(__name__)
KEYS = ("HOTA", "DetA", "AssA", "IDF1")  # the table's metrics (MOTA is kept in the JSON)
ORIGINAL = "original"  # the crf label of the unencoded sequence
# (source, tracker, res_file, cfg, last frame) -> None: writes MOT rows; the default runs vsdmot-edge
TrackFn = Callable[[Path, str, Path, "ReencodeConfig", int], None]


@dataclass(frozen=True)
class ReencodeConfig:
    sequences: tuple[str, ...]  # MOTChallenge sequence folders, each DIR or DIR:A-B (the scored window)
    crfs: tuple[int, ...] = (12, 15, 18, 21, 24)  # libx264 CRFs (0..51; 18 ~ visually lossless)
    trackers: tuple[str, ...] = ("hybrid", "bytetrack", "e2e")  # vsdmot-edge run --tracker names
    diff: tuple[str, ...] = ("hybrid", "bytetrack")  # HOTA of diff[0] minus diff[1] per CRF; () = none
    original: bool = True  # also score the unencoded sequence
    bundle: str = ""  # model bundle ("" = runtime/assets/default)
    threads: int = 1  # onnxruntime threads per network in each run
    out_dir: str = "runs/reencode"  # encodes/, results/, cells.jsonl, reencode.md, reencode.json
    filters: tuple[str, ...] = ()  # NAME=VF: also an encode through ffmpeg's -vf VF at filter_crf, labelled NAME
    # (degradations the library does not have: "dark=eq=brightness=-0.25,noise=alls=25:allf=t"); rows of a
    # filter that changes the frame size are mapped back to the sequence's pixels before scoring
    filter_crf: int = 18

    def __post_init__(self) -> None:
        if not self.sequences or not (self.crfs or self.filters) or not self.trackers:
            raise ValueError("expected at least one sequence, one CRF or filter, and one tracker")
        for c in (*self.crfs, self.filter_crf):
            if not 0 <= c <= 51:
                raise ValueError(f"crf: expected 0..51 (libx264), got {c}")
        unknown = sorted(set(self.trackers) - set(TRACKER_KINDS))
        if unknown:
            raise ValueError(f"tracker: expected names from {list(TRACKER_KINDS)}, got {unknown}")
        if self.diff and (len(self.diff) != 2 or not set(self.diff) <= set(self.trackers)):
            raise ValueError(f"diff: expected two of the trackers {list(self.trackers)}, got {list(self.diff)}")
        if self.threads < 1:
            raise ValueError(f"threads: expected >= 1, got {self.threads}")
        for s in self.sequences:
            split_spec(s)
        names = list(self.filter_map)
        if len(names) != len(self.filters) or any(n.isdigit() or n == ORIGINAL for n in names):
            raise ValueError(f"filters: expected NAME=VF with unique names that are not numbers or {ORIGINAL!r}, "
                             f"got {list(self.filters)}")

    @property
    def filter_map(self) -> dict[str, str]:
        """NAME -> ffmpeg -vf chain."""
        pairs = [f.partition("=") for f in self.filters]
        if any(not n or not sep or not vf for n, sep, vf in pairs):
            raise ValueError(f"filters: expected NAME=VF, got {list(self.filters)}")
        return {n: vf for n, _, vf in pairs}

    @property
    def bundle_dir(self) -> Path:
        return Path(self.bundle) if self.bundle else DEFAULT_BUNDLE


SPEC = re.compile(r"(.+):(\d+)-(\d+)")  # DIR:A-B


def split_spec(spec: str) -> tuple[Path, tuple[int, int]]:
    """'DIR' or 'DIR:A-B' -> (folder, (first, last)); the folder needs seqinfo.ini and gt/gt.txt."""
    m = SPEC.fullmatch(spec)
    seq = Path(m[1] if m else spec)
    if not (seq / "seqinfo.ini").is_file() or not (seq / "gt" / "gt.txt").is_file():
        raise ValueError(f"sequence {spec}: expected a MOTChallenge folder with seqinfo.ini and gt/gt.txt at {seq}")
    return seq, parse_window((int(m[2]), int(m[3])) if m else None, read_seqinfo(seq).length)


# -- encoding ---------------------------------------------------------------------------------------
def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise VsdmotError("the re-encode study needs ffmpeg with libx264 on PATH, and there is none "
                          "(Debian: apt-get install ffmpeg)")
    return exe


def ffmpeg_input(seq: Path) -> list[str]:
    """ffmpeg input arguments for a sequence: its video, else its images in name order at its frame rate."""
    from vsdmot.runtime.sources import open_sequence

    s = open_sequence(seq)
    if s.video is not None:
        return ["-i", str(s.video)]
    pattern = str(seq / s.info.im_dir / f"*{s.info.im_ext}")
    return ["-framerate", f"{s.info.frame_rate:g}", "-pattern_type", "glob", "-i", pattern]


def encode(seq: Path, crf: int, out: Path, vf: str = "") -> Path:
    """`out` (.mp4): the sequence through `vf` (an ffmpeg filter chain, optional) and libx264 at `crf`;
    kept when it exists (written via .partial)."""
    if out.is_file():
        return out
    info = read_seqinfo(seq)
    even = "pad=ceil(iw/2)*2:ceil(ih/2)*2"  # yuv420p needs even sizes
    pad = ["-vf", f"{vf},{even}"] if vf else ["-vf", even] if (info.width | info.height) % 2 else []
    tmp = out.with_name(out.stem + ".partial.mp4")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", *ffmpeg_input(seq), *pad, "-c:v", "libx264", "-crf", str(crf),
           "-pix_fmt", "yuv420p", str(tmp)]
    _check_run(cmd, f"ffmpeg (libx264 crf {crf}) on {seq}")
    tmp.replace(out)
    return out


def _check_run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise VsdmotError(f"{what} failed (exit {proc.returncode}): {tail}")


# -- tracking and scoring -----------------------------------------------------------------------------
def edge_run(source: Path, tracker: str, res_file: Path, cfg: ReencodeConfig, last: int) -> None:
    """`vsdmot-edge run` in a fresh process over frames 1..last of `source`; MOT rows into `res_file`."""
    res_file.parent.mkdir(parents=True, exist_ok=True)
    main = "import sys; from vsdmot.edge.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", main, "run", "--source", str(source), "--tracker", tracker,
           "--bundle", str(cfg.bundle_dir), "--threads", str(cfg.threads), "--max-frames", str(last),
           "--mot-out", str(res_file), "--health-listen", "off"]
    _check_run(cmd, f"vsdmot-edge run --tracker {tracker} on {source}")


def video_size(path: Path) -> tuple[int, int]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def to_sequence_pixels(res: Path, size: tuple[int, int], info) -> None:
    """Rows tracked on a rescaled encode, mapped back to the sequence's pixels (in place; no-op at the
    sequence's size). MOT rows: frame, id, x, y, w, h, score, ... in the encode's pixels."""
    sx, sy = info.width / size[0], info.height / size[1]
    if abs(sx - 1) < 1e-6 and abs(sy - 1) < 1e-6:
        return
    rows = [line.split(",") for line in res.read_text().splitlines() if line.strip()]
    scaled = [r[:2] + [f"{float(r[2]) * sx:.2f}", f"{float(r[3]) * sy:.2f}", f"{float(r[4]) * sx:.2f}",
                       f"{float(r[5]) * sy:.2f}"] + r[6:] for r in rows]
    res.write_text("".join(",".join(r) + "\n" for r in scaled))


def cell_key(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    return rec["sequence"], str(rec["crf"]), rec["tracker"]


def plan(cfg: ReencodeConfig) -> list[tuple[str, str, str]]:
    """Every (sequence spec, crf label, tracker) cell, encodes in CRF order, the original first."""
    crfs = [ORIGINAL] * cfg.original + [str(c) for c in cfg.crfs] + list(cfg.filter_map)
    return [(s, c, t) for s in cfg.sequences for c in crfs for t in cfg.trackers]


def input_key(cfg: ReencodeConfig, seq: Path, crf: str) -> str:
    """What a cell's input frames depend on: the sequence's files (path, size, mtime) and the encode
    (libx264 CRF, or the filter's -vf chain and --filter-crf); keys its encode and its cached cell."""
    import hashlib

    if crf == ORIGINAL:
        how = ORIGINAL
    elif crf in cfg.filter_map:
        how = f"vf={cfg.filter_map[crf]};crf={cfg.filter_crf}"
    else:
        how = f"crf={int(crf)}"
    h = hashlib.sha256(how.encode())
    for p in sorted(q for q in seq.rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(seq)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def run_cell(cfg: ReencodeConfig, spec: str, crf: str, tracker: str, track: TrackFn) -> dict[str, Any]:
    seq, (first, last) = split_spec(spec)
    name, out, key = read_seqinfo(seq).name, Path(cfg.out_dir), input_key(cfg, seq, crf)
    if crf == ORIGINAL:
        source = seq
    elif crf in cfg.filter_map:
        source = encode(seq, cfg.filter_crf, out / "encodes" / f"{name}.{crf}.{key[:8]}.mp4", vf=cfg.filter_map[crf])
    else:
        source = encode(seq, int(crf), out / "encodes" / f"{name}.crf{crf}.{key[:8]}.mp4")
    res = out / "results" / f"{name}.{crf}.{tracker}.txt"  # frames 1..last; any window of them scores
    t0 = time.time()
    track(source, tracker, res, cfg, last)
    if source.is_file():
        to_sequence_pixels(res, video_size(source), read_seqinfo(seq))
    m = evaluate(seq, res, frames=(first, last))
    return {"sequence": spec, "crf": crf, "tracker": tracker, "window": [first, last], "input": key,
            **{k: float(m[k]) for k in (*KEYS, "MOTA")}, "seconds": round(time.time() - t0, 1)}


def run_study(cfg: ReencodeConfig, track: TrackFn | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Every cell not yet in OUT/cells.jsonl (same runtime code, bundle and input frames: sequence
    files and encode settings); returns all cells of the plan."""
    from tqdm import tqdm

    if track is None:
        ffmpeg_exe()  # say so before any work
        track = edge_run
    cells = Path(cfg.out_dir) / "cells.jsonl"
    cells.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"runtime": runtime_code_id(), "bundle_id": file_sha256(cfg.bundle_dir / MANIFEST)[:16]}
    keys = {c: input_key(cfg, split_spec(c[0])[0], c[1]) for c in plan(cfg)}
    done = {cell_key(r): r for r in read_cells(cells)
            if all(r.get(k) == v for k, v in stamp.items()) and r.get("input") == keys.get(cell_key(r))}
    todo = [c for c in plan(cfg) if c not in done]
    log.info("re-encode: %d cells done, %d to run", len(plan(cfg)) - len(todo), len(todo))
    for spec, crf, tracker in tqdm(todo, desc="re-encode", unit="cell", disable=not progress):
        rec = {**run_cell(cfg, spec, crf, tracker, track), **stamp}
        with cells.open("a") as f:  # one line per cell: a kill loses at most the running cell
            f.write(json.dumps(rec) + "\n")
        done[cell_key(rec)] = rec
    return [done[c] for c in plan(cfg)]


def read_cells(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


# -- tables -------------------------------------------------------------------------------------------------
def differences(cells: Sequence[Mapping[str, Any]], a: str, b: str) -> dict[str, dict[str, Any]]:
    """Per sequence: HOTA(a) - HOTA(b) in points per crf label, and their min, max and range."""
    hota = {(c["sequence"], str(c["crf"]), c["tracker"]): 100 * c["HOTA"] for c in cells}
    out: dict[str, dict[str, Any]] = {}
    for seq, crf, _ in hota:
        if (seq, crf, a) in hota and (seq, crf, b) in hota:
            out.setdefault(seq, {"per_crf": {}})["per_crf"][crf] = round(hota[(seq, crf, a)] - hota[(seq, crf, b)], 2)
    for d in out.values():
        v = list(d["per_crf"].values())
        d.update(min=min(v), max=max(v), range=round(max(v) - min(v), 2))
    return out


def cells_markdown(cells: Sequence[Mapping[str, Any]]) -> str:
    rows = [f"| sequence | window | crf | tracker | {' | '.join(KEYS)} |", "|---|---|---|---|" + "---|" * len(KEYS)]
    for c in cells:
        w = f"{c['window'][0]}-{c['window'][1]}"
        rows.append(f"| {_name(c['sequence']).split(':')[0]} | {w} | {c['crf']} | {c['tracker']} | "
                    + " | ".join(f"{100 * c[k]:.1f}" for k in KEYS) + " |")
    return "\n".join(rows)


def _name(spec: str) -> str:
    """'../data/TUD-Campus:1-30' -> 'TUD-Campus:1-30': the folder's name and the window."""
    m = SPEC.fullmatch(spec)
    return f"{Path(m[1]).name}:{m[2]}-{m[3]}" if m else Path(spec).name


def diff_markdown(diffs: Mapping[str, Mapping[str, Any]], a: str, b: str) -> str:
    crfs = list(dict.fromkeys(c for d in diffs.values() for c in d["per_crf"]))
    rows = [f"| HOTA {a} - {b} | {' | '.join(crfs)} | min | max | range |", "|---|" + "---|" * (len(crfs) + 3)]
    for seq, d in diffs.items():
        vals = [f"{d['per_crf'][c]:+.1f}" if c in d["per_crf"] else "" for c in crfs]
        rows.append(f"| {_name(seq)} | {' | '.join(vals)} | {d['min']:+.1f} | {d['max']:+.1f} | {d['range']:.1f} |")
    return "\n".join(rows)


def write_tables(cfg: ReencodeConfig, cells: list[dict[str, Any]]) -> str:
    """reencode.md and reencode.json in OUT; returns the markdown."""
    md = f"HOTA, DetA, AssA, IDF1 (percent) per cell:\n\n{cells_markdown(cells)}\n"
    diffs = differences(cells, *cfg.diff) if cfg.diff else {}
    if diffs:
        md += f"\nHOTA difference (points) per encode:\n\n{diff_markdown(diffs, *cfg.diff)}\n"
    out = Path(cfg.out_dir)
    atomic_write_text(out / "reencode.md", md)  # a kill mid-write leaves the previous run's tables
    atomic_write_text(out / "reencode.json", json.dumps({"config": asdict(cfg), "cells": cells, "diff": diffs}, indent=2))
    return md


# -- the command ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.reencode", description=__doc__.splitlines()[0])
    add_log_arguments(p)
    p.add_argument("--seq", nargs="+", required=True, metavar="DIR[:A-B]", help="sequence folders, scored window")
    p.add_argument("--crf", nargs="*", type=int, default=list(ReencodeConfig.crfs),
                   help="libx264 CRFs (none: only the --filter encodes)")
    p.add_argument("--tracker", nargs="+", default=list(ReencodeConfig.trackers), choices=TRACKER_KINDS)
    p.add_argument("--diff", nargs=2, metavar=("A", "B"), help="HOTA of A minus B per CRF (default: the first two "
                   "trackers, when there are two)")
    p.add_argument("--no-original", dest="original", action="store_false", help="skip the unencoded sequence")
    p.add_argument("--filter", nargs="+", default=[], metavar="NAME=VF", help="also encode through ffmpeg -vf VF "
                   "(e.g. small=scale=320:240); rescaled rows are mapped back to the sequence's pixels")
    p.add_argument("--filter-crf", type=int, default=ReencodeConfig.filter_crf, help="libx264 CRF of the --filter encodes")
    p.add_argument("--bundle", default="", help="model bundle (default runtime/assets/default)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per network")
    p.add_argument("--out", default=ReencodeConfig.out_dir, help="encodes/, results/, cells.jsonl, tables")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(a: argparse.Namespace) -> int:
    diff = tuple(a.diff) if a.diff else tuple(a.tracker[:2]) if len(a.tracker) >= 2 else ()
    cfg = ReencodeConfig(sequences=tuple(a.seq), crfs=tuple(a.crf), trackers=tuple(a.tracker), diff=diff,
                         original=a.original, bundle=a.bundle, threads=a.threads, out_dir=a.out,
                         filters=tuple(a.filter), filter_crf=a.filter_crf)
    cells = run_study(cfg, progress=a.progress)
    print(write_tables(cfg, cells) + f"\nWrote {Path(cfg.out_dir) / 'reencode.md'} and reencode.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from vsdmot._cli import run_main

    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
