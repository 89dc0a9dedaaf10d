"""The INT8 calibration set: real frames through the degradation library, stratified by quality.

    cs = build_calibset(sources, CalibSetConfig(), out_dir)     # or load_calibset(out_dir)
    cs.frames      # (N, S, S, 3) uint8 BGR, letterboxed top-left with pad 114 (the detector's view)
    cs.content     # (N, 2) int: (h, w) of the image inside each letterboxed frame
    cs.manifest    # sources, seeds, per-frame preset/severity/q, quality histogram, sha256

How it is made: every `stride`-th frame of each source (videos, image folders, MOTChallenge
sequences; a `path:A-B` suffix keeps frames A..B) yields `variants` candidates, each clean or
degraded (`calibration.degrade`, a random preset and severity, seeded per candidate) at the
source's native resolution, as a camera would deliver it. Each candidate gets a quality score q
(the bundle's `QualityGate` when params are given, else the documented proxy 1 - severity/5);
the set takes the same number of frames from each of `bins` equal q-bins (a bin short of
candidates gives its share to the others), so INT8 ranges cover clean and badly degraded
frames alike. Fewer than `min_frames` frames is refused (ValueError): the top INT8 complaint is
calibration on a handful of images. Stored as .npy + manifest.json: reusable and auditable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot import __version__
from vsdmot.runtime.yolox import letterbox_image

log = logging.getLogger(__name__)
FRAMES, CONTENT, MANIFEST = "frames.npy", "content.npy", "manifest.json"
RENDER = 2  # how frames are rendered into the set, part of its key: bump it when that changes, or sets
# built by the old code are reused (2: letterbox_u8 truncates the scaled side as the runtime does)
SCHEMA = 1


@dataclass(frozen=True)
class CalibSetConfig:
    frames: int = 512  # frames in the set
    min_frames: int = 500  # refuse a set smaller than this (the INT8 accuracy guard)
    size: int = 416  # S: frames are stored letterboxed into S x S (the detector's input)
    bins: int = 5  # equal-width quality bins over q in [0, 1]
    variants: int = 3  # candidates per source frame (clean or degraded)
    clean_share: float = 0.2  # probability a candidate stays clean
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)  # degradation severities drawn from
    presets: tuple[str, ...] = ()  # degradation presets drawn from; () = every per-frame preset (degrade.FRAME_PRESETS)
    stride: int = 2  # take every stride-th source frame
    seed: int = 0  # one seed for the whole set; candidate k uses (seed, k)

    def __post_init__(self) -> None:
        if self.frames < self.min_frames:
            raise ValueError(f"calibration set: {self.frames} frames requested, at least {self.min_frames} "
                             f"needed (INT8 calibrated on a handful of frames collapses; lower min_frames "
                             f"only for tests)")
        if self.bins < 1 or self.variants < 1 or self.stride < 1 or self.size < 32:
            raise ValueError(f"calibration set config out of range: {self}")


@dataclass
class CalibSet:
    path: Path  # the set's directory
    frames: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    content: np.ndarray  # (N, 2) int32 (h, w) of the image inside each frame
    manifest: dict[str, Any] = field(repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, i: int) -> np.ndarray:
        """Frame i without its letterbox padding: (h, w, 3) uint8 BGR."""
        h, w = self.content[i]
        return np.asarray(self.frames[i, :h, :w])


def parse_source(spec: str | os.PathLike) -> tuple[Path, tuple[int, int] | None]:
    """'path' or 'path:A-B' (1-based inclusive frame range)."""
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail.replace("-", "").isdigit() and tail.count("-") == 1 and head:
        a, b = (int(v) for v in tail.split("-"))
        if a < 1 or b < a:
            raise ValueError(f"calibration source {text!r}: expected A-B with 1 <= A <= B")
        return Path(head), (a, b)
    return Path(text), None


def iter_frames(spec: str | os.PathLike, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    """(1-based index, native BGR frame) for every stride-th frame of a source (within its range),
    decoded one at a time: a long clip is never held in memory."""
    from vsdmot.runtime.sources import open_file_source

    path, rng = parse_source(spec)
    src = open_file_source(path)
    try:
        for f in src:
            if rng and f.index > rng[1]:
                break
            if (not rng or f.index >= rng[0]) and (f.index - (rng[0] if rng else 1)) % stride == 0:
                yield f.index, f.image
    finally:
        src.close()


def count_frames(spec: str | os.PathLike, stride: int) -> int:
    """How many frames iter_frames yields; ValueError for none, a warning when PATH:A-B runs past the clip."""
    n, last = 0, 0
    for last, _ in iter_frames(spec, stride):
        n += 1
    if not n:
        raise ValueError(f"calibration source {spec}: no frames read")
    rng = parse_source(spec)[1]
    if rng and last + stride <= rng[1]:  # the clip ended before B: say so, the range was a request
        log.warning("calibration source %s: the clip ends at frame %d, before %d", spec, last, rng[1])
    return n


def read_frames(spec: str | os.PathLike, stride: int) -> list[tuple[int, np.ndarray]]:
    """iter_frames as a list (after count_frames' checks): for short clips only."""
    count_frames(spec, stride)
    return list(iter_frames(spec, stride))


def too_few(n: int, n_src: int, cfg: CalibSetConfig) -> ValueError:
    return ValueError(f"calibration set: only {n} frames from {n_src} source frames (stride {cfg.stride}) x "
                      f"{cfg.variants} variants; at least {cfg.min_frames} needed: add sources or longer clips "
                      f"(--calib)")


def letterbox_u8(image: np.ndarray, size: int | tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """(h0, w0, 3) -> ((H, W, 3) uint8 top-left letterboxed with pad 114, (h, w) of the content);
    `size` is S (square) or (H, W): runtime.yolox's letterbox, so calibration frames are the
    detector's run-time input pixel for pixel."""
    out, _, hw = letterbox_image(image, size)
    return out, hw


def plan_candidates(n_src: int, cfg: CalibSetConfig, presets: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per candidate: source frame index, preset ('clean' or a degradation) and severity."""
    rng, plan = np.random.default_rng(cfg.seed), []
    for i in range(n_src):
        for _ in range(cfg.variants):
            clean = rng.random() < cfg.clean_share or not presets
            plan.append({"src": i, "preset": "clean" if clean else str(rng.choice(list(presets))),
                         "severity": 0 if clean else int(rng.choice(cfg.severities))})
    return plan


def render(frame: np.ndarray, cand: Mapping[str, Any], k: int, cfg: CalibSetConfig, degrade_fn) -> np.ndarray:
    """Candidate k's frame: the source frame, degraded as planned with the seed (cfg.seed, k)."""
    if cand["preset"] == "clean":
        return frame
    return degrade_fn(frame, cand["preset"], cand["severity"], np.random.default_rng([cfg.seed, k]))


def proxy_quality(cand: Mapping[str, Any]) -> float:
    """Quality proxy when no gate params are given: 1 - severity / 5 (clean = 1)."""
    return 1.0 - cand["severity"] / 5.0


def stratify(q: np.ndarray, n: int, bins: int, seed: int) -> np.ndarray:
    """Indices of n candidates, as equal a number from each q-bin as the bins allow, sorted."""
    which = np.minimum((np.clip(q, 0, 1) * bins).astype(int), bins - 1)
    rng = np.random.default_rng([seed, 1])
    pools = [list(rng.permutation(np.flatnonzero(which == b))) for b in range(bins)]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return np.sort(np.array(chosen, int))


def histogram(q: np.ndarray, bins: int) -> dict[str, list]:
    counts, edges = np.histogram(np.clip(q, 0, 1), bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.astype(int).tolist()}


def default_degrade():
    from vsdmot.calibration import degrade as d

    return d.degrade, tuple(getattr(d, "FRAME_PRESETS", d.PRESETS))  # per-frame presets: no codec subprocess


def build_calibset(sources: Sequence[str | os.PathLike], cfg: CalibSetConfig, out_dir: str | os.PathLike,
                   quality_params: Mapping[str, Any] | None = None,
                   degrade_fn: Callable | None = None, progress: bool = True) -> CalibSet:
    """Build (or reuse, when `out_dir` holds a set made from the same sources and config) the set.
    `progress` shows tqdm bars; it is not part of the set's key."""
    out = Path(out_dir)
    key = set_key(sources, cfg, quality_params)
    if (out / MANIFEST).is_file():
        try:
            cs = load_calibset(out)
            if cs.manifest.get("key") == key:
                log.info("calibration set %s is up to date (%d frames), reused", out, len(cs))
                return cs
        except ValueError as e:
            log.info("calibration set %s rebuilt: %s", out, e)
    fn, presets = (degrade_fn, cfg.presets) if degrade_fn else _degrade_and_presets(cfg)
    return _build(sources, cfg, out, key, quality_params, fn, presets, progress)


def _degrade_and_presets(cfg: CalibSetConfig):
    fn, all_presets = default_degrade()
    return fn, cfg.presets or all_presets


def _build(sources, cfg, out: Path, key: str, quality_params, degrade_fn, presets, progress: bool = True) -> CalibSet:
    """Three passes over the sources, one decoded frame at a time: count (refuse too few before
    any degrading), score every candidate, write the picked ones (re-rendered: seeded per candidate)."""
    from functools import partial

    from tqdm import tqdm

    bar = partial(tqdm, disable=not progress)  # --no-progress
    n_src = sum(count_frames(s, cfg.stride) for s in sources)
    plan = plan_candidates(n_src, cfg, presets)
    if len(plan) < cfg.min_frames:  # before scoring every candidate: the count alone decides
        raise too_few(len(plan), n_src, cfg)
    assess, q = _quality_fn(quality_params), np.zeros(len(plan), np.float32)
    with bar(total=len(plan), desc="calibration: scoring candidates", unit="frame") as b:
        for k, (_, _, img) in _candidates(sources, cfg, plan):
            q[k] = assess(render(img, plan[k], k, cfg, degrade_fn), plan[k])
            b.update()
    picked = stratify(q, cfg.frames, cfg.bins, cfg.seed)
    if len(picked) < cfg.min_frames:
        raise too_few(len(picked), n_src, cfg)
    records = _write_frames(sources, cfg, out, plan, picked, q, degrade_fn, bar)
    write_manifest(out, cfg, key, sources, records, q[picked], quality_params is not None, len(plan))
    return load_calibset(out)


def _candidates(sources, cfg: CalibSetConfig, plan, only=None) -> Iterator[tuple[int, tuple[str, int, np.ndarray]]]:
    """(candidate k, (source, frame index, native frame)) in plan order, for k in `only` (default all)."""
    i = 0
    for s in sources:
        for idx, img in iter_frames(s, cfg.stride):
            for k in range(i * cfg.variants, (i + 1) * cfg.variants):
                if only is None or k in only:
                    yield k, (str(s), idx, img)
            i += 1


def _write_frames(sources, cfg, out: Path, plan, picked: np.ndarray, q: np.ndarray, degrade_fn, bar) -> list[dict]:
    """frames.npy (memory-mapped, letterboxed) and content.npy for the picked candidates; their records."""
    out.mkdir(parents=True, exist_ok=True)
    frames = np.lib.format.open_memmap(out / FRAMES, "w+", np.uint8, (len(picked), cfg.size, cfg.size, 3))
    content, records = np.zeros((len(picked), 2), np.int32), []
    slot = {int(k): j for j, k in enumerate(picked)}  # picked is sorted: slots fill in plan order
    for k, (src, idx, img) in bar(_candidates(sources, cfg, plan, slot), total=len(picked),
                                  desc="calibration: writing frames", unit="frame"):
        c, j = plan[k], slot[k]
        frames[j], content[j] = letterbox_u8(render(img, c, k, cfg, degrade_fn), cfg.size)
        records.append({"source": src, "frame": idx, "preset": c["preset"], "severity": c["severity"],
                        "seed": [cfg.seed, k], "q": round(float(q[k]), 4)})
    frames.flush()
    del frames
    np.save(out / CONTENT, content)
    return records


def _quality_fn(params: Mapping[str, Any] | None) -> Callable[[np.ndarray, Mapping], float]:
    if params is None:
        return lambda image, cand: proxy_quality(cand)
    from vsdmot.runtime.quality import QualityGate

    gate = QualityGate.from_params(params)
    return lambda image, cand: gate.assess(image)


def set_key(sources, cfg: CalibSetConfig, quality_params) -> str:
    srcs = [[str(s), _source_hash(parse_source(s)[0])] for s in sources]
    text = json.dumps([srcs, asdict(cfg), quality_params, __version__, RENDER], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _source_hash(path: Path) -> str:
    """Cheap identity of a source: names, sizes and mtimes of its files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def write_manifest(out: Path, cfg, key, sources, records, q, gated: bool, candidates: int) -> None:
    from vsdmot.runtime.bundle import file_sha256

    manifest = {
        "schema": SCHEMA, "vsdmot_version": __version__, "key": key, "config": asdict(cfg),
        "sources": [str(s) for s in sources], "frame_count": len(records), "candidates": candidates,
        "quality": "QualityGate (bundle params)" if gated else "proxy: 1 - severity/5",
        "quality_histogram": histogram(q, cfg.bins),
        "presets": sorted({r["preset"] for r in records}),
        "sha256": {FRAMES: file_sha256(out / FRAMES), CONTENT: file_sha256(out / CONTENT)}, "frames": records,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))


def load_calibset(path: str | os.PathLike, min_frames: int | None = None) -> CalibSet:
    """Load a set, verifying its files' sha256; ValueError when altered or too small."""
    from vsdmot.runtime.bundle import file_sha256

    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"calibration set {path}: no readable {MANIFEST} ({e})") from None
    for name, want in manifest.get("sha256", {}).items():
        got = file_sha256(path / name) if (path / name).is_file() else "missing"
        if got != want:
            raise ValueError(f"calibration set {path}: {name} expected sha256 {want}, found {got}")
    frames = np.load(path / FRAMES, mmap_mode="r")
    need = manifest["config"]["min_frames"] if min_frames is None else min_frames
    if len(frames) < need:
        raise ValueError(f"calibration set {path}: {len(frames)} frames, at least {need} needed")
    return CalibSet(path, frames, np.load(path / CONTENT), manifest)
