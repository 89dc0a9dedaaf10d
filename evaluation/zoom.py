"""A zoomed-in copy of a sequence window: near people from a far-field sequence, train side.

    python -m vsdmot.evaluation.zoom --seq ../shared/data/PETS09-S2L1:1-600 --factor 2 \\
        --out runs/zoom/PETS09-S2L1-zoom

Why: choices that matter for near-camera video (e.g. `vsdmot-export --min-detection-f1`) had no
train-side tracking set with near people. MOT17-mini has 4-8 frames per sequence, and TUD-Campus
is held out. This crops a window of a far-field sequence (PETS09-S2L1 1-600: people ~80 px tall)
to 1/factor of its width and height and scales it back up, so the people are `factor` times taller.
It writes a MOTChallenge sequence (img1/ JPEG q95, gt/gt.txt, seqinfo.ini) that every
sequence-reading command takes: `vsdmot-eval`, `vsdmot-bench`, `noise_floor run --data-root`.

The crop is placed where the window's counted ground truth has the most box centres (the first such
position on a grid of 1/16 of the frame). A gt box is clipped to the crop and kept when at least
`min_visible` of its area is inside. Frames are renumbered from 1. The gt keeps its layout: conf-0
rows stay, and a MOT17 window keeps its classes, so `vsdmot-eval` applies the same rules as on the source. A window that touches held-out frames is refused
unless `--held-out`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vsdmot._cli import add_log_arguments, run_main
from vsdmot.runtime.mot import MotRows, SeqInfo, read_rows, write_seqinfo
from vsdmot.runtime.sources import open_sequence
from vsdmot.splits import copy_name, touches_held_out

from .metrics import counted_gt, write_gt
from .reencode import split_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZoomConfig:
    factor: float = 2.0  # people come out this many times taller
    min_visible: float = 0.5  # a gt box stays when at least this share of its area is inside the crop
    grid: int = 16  # crop positions tried: every 1/grid of the frame
    quality: int = 95  # JPEG quality of the written frames

    def __post_init__(self) -> None:
        if not self.factor > 1.0 or not 0.0 < self.min_visible <= 1.0 or self.grid < 1:
            raise ValueError(f"zoom: expected factor > 1, 0 < min_visible <= 1, grid >= 1, got {self}")


def best_crop(gt: MotRows, size: tuple[int, int], cfg: ZoomConfig) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the crop (1/factor of `size` = (W, H)) holding the most gt box centres."""
    (W, H), (w, h) = size, (int(round(size[0] / cfg.factor)), int(round(size[1] / cfg.factor)))
    cx, cy = gt.xywh[:, 0] + gt.xywh[:, 2] / 2, gt.xywh[:, 1] + gt.xywh[:, 3] / 2  # (M,) each
    best, where = -1, (0, 0)
    for x in np.linspace(0, W - w, cfg.grid + 1).astype(int):
        for y in np.linspace(0, H - h, cfg.grid + 1).astype(int):
            n = int(((cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)).sum())
            if n > best:
                best, where = n, (int(x), int(y))
    return (*where, w, h)


def zoom_rows(gt: MotRows, crop: tuple[int, int, int, int], scale: tuple[float, float], cfg: ZoomConfig) -> MotRows:
    """`gt` clipped to `crop`, kept where >= min_visible of a box is inside, in the zoomed frame's pixels."""
    x, y, w, h = crop
    x1, y1 = np.maximum(gt.xywh[:, 0], x), np.maximum(gt.xywh[:, 1], y)
    x2 = np.minimum(gt.xywh[:, 0] + gt.xywh[:, 2], x + w)
    y2 = np.minimum(gt.xywh[:, 1] + gt.xywh[:, 3], y + h)
    inside = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep = inside >= cfg.min_visible * gt.xywh[:, 2] * gt.xywh[:, 3]
    out = gt.select(keep)
    sx, sy = scale
    out.xywh = np.stack([(x1[keep] - x) * sx, (y1[keep] - y) * sy, (x2 - x1)[keep] * sx, (y2 - y1)[keep] * sy], 1)
    return out


def open_window(spec: str, held_out: bool, what: str):
    """(sequence, (first, last), its gt rows in that window) of 'SEQ_DIR[:A-B]'; ValueError for a window
    touching held-out frames unless `held_out`, or a sequence without gt. `what` names the caller."""
    path, (a, b) = split_spec(spec)
    seq = open_sequence(path)
    if touches_held_out(seq.info.name, (a, b)) and not held_out:
        raise ValueError(f"{what}: {seq.info.name} frames {a}-{b} touch held-out frames; pass --held-out to "
                         "write an evaluation copy on purpose")
    if not seq.gt_path:
        raise ValueError(f"{what}: {path} has no gt/gt.txt to move with the frames")
    gt = read_rows(seq.gt_path)
    return seq, (a, b), gt.select((gt.frame >= a) & (gt.frame <= b))


def zoom_sequence(spec: str, out: str | Path, cfg: ZoomConfig = ZoomConfig(), held_out: bool = False) -> dict:
    """Write the zoomed copy of `spec` ('SEQ_DIR[:A-B]') into `out`; returns what was written."""
    seq, (a, b), gt = open_window(spec, held_out, "zoom")
    size = (seq.info.width, seq.info.height)
    crop = best_crop(counted_gt(gt), size, cfg)
    scale = (size[0] / crop[2], size[1] / crop[3])
    out = Path(out)
    (out / "img1").mkdir(parents=True, exist_ok=True)
    n = write_frames(seq, (a, b), lambda i: crop, size, out / "img1", cfg.quality)
    rows = zoom_rows(gt, crop, scale, cfg)
    rows.frame = rows.frame - (a - 1)
    write_gt(out / "gt" / "gt.txt", rows)  # the source's layout (MOT17: class, visibility)
    name = copy_name(seq.info.name, (a, b), out.name)  # renumbered from 1: held-out frames keep the mark
    write_seqinfo(out / "seqinfo.ini", SeqInfo(name, seq.info.frame_rate, n, *size))
    info = {"source": spec, "frames": n, "crop_xywh": list(crop), "scale": round(scale[0], 4),
            "gt_boxes": len(counted_gt(rows)), "gt_boxes_before": len(counted_gt(gt))}
    log.info("zoom: wrote %s: %s", out, info)
    return info


def write_frames(seq, span: tuple[int, int], crop_of, size: tuple[int, int], folder: Path, quality: int) -> int:
    """Frames span[0]..span[1] of `seq`, frame i (from 0) cropped to `crop_of(i)` = (x, y, w, h) and
    scaled to `size`, as 000001.jpg ...; returns the count."""
    src, n = seq.frames(), 0
    try:
        for frame in src:
            if frame.index < span[0]:
                continue
            if frame.index > span[1]:
                break
            x, y, w, h = crop_of(n)
            n += 1
            img = cv2.resize(frame.image[y:y + h, x:x + w], size, interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(folder / f"{n:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    finally:
        src.close()
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.zoom", description=__doc__.split("\n\n")[0])
    add_log_arguments(p)
    p.add_argument("--seq", required=True, metavar="DIR[:A-B]", help="MOTChallenge sequence (window) to zoom")
    p.add_argument("--factor", type=float, default=ZoomConfig.factor, help="how many times taller people come out")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="sequence folder to write")
    p.add_argument("--held-out", action="store_true", help="allow evaluation frames (an evaluation copy)")
    p.set_defaults(func=lambda a: print(zoom_sequence(a.seq, a.out, ZoomConfig(factor=a.factor), a.held_out)))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
