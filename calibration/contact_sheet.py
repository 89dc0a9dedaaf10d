"""docs/contact_sheet.png: one row per preset, columns clean and severities 1..5, on a PETS09 crop.

Regenerate with `vsdmot-degrade --contact-sheet docs/contact_sheet.png` (reads
../shared/data/PETS09-S2L1 beside the repository unless --input names another sequence).
Each tile is degraded on the full frame (so the spatial scale is the real one), then cropped and
reduced to TILE px: the PNG must stay small, and noise is shown at about its true scale.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from .degrade import PRESETS, SEVERITIES, degrade, degrade_frames

log = logging.getLogger(__name__)

FRAME = 150  # PETS09-S2L1 frame shown (1-based)
CLIP = 8  # frames up to FRAME fed to the h264 codec, so the frame shown is inter-coded
CROP = (384, 144, 210, 158)  # x, y, w, h in source pixels: a group of walkers, mid scene
TILE = (120, 90)  # w, h of a tile in the sheet
LABEL_W, HEAD_H = 120, 22  # px of the row-label column and the header row


def _frames(src_dir: Path, last: int, n: int = CLIP) -> list[np.ndarray]:
    """Frames last-n+1 .. last of the sequence, (H, W, 3) uint8 BGR."""
    from vsdmot.runtime.sources import open_sequence  # noqa: PLC0415

    src, out = open_sequence(src_dir).frames(), []
    try:
        for f in src:
            if f.index > last:
                break
            if f.index > last - n:
                out.append(f.image)
    finally:
        src.close()
    if len(out) != n:
        raise ValueError(f"contact sheet: {src_dir} has no frames {last - n + 1}..{last}")
    return out


def _tile(img: np.ndarray) -> np.ndarray:
    x, y, w, h = CROP
    return cv2.resize(img[y : y + h, x : x + w], TILE, interpolation=cv2.INTER_AREA)


def _degraded(clip: list[np.ndarray], preset: str, sev: int, seed: int, fps: float) -> np.ndarray:
    """The last frame of `clip`, degraded; h264 codes the whole clip (its last frame is a P frame)."""
    if preset == "h264":
        return list(degrade_frames(clip, preset, sev, seed, fps=fps))[-1]
    return degrade(clip[-1], preset, sev, np.random.default_rng([seed, sev]))


def _text(canvas: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def render(clip: list[np.ndarray], fps: float, presets: tuple[str, ...] = PRESETS, seed: int = 0) -> np.ndarray:
    """(HEAD_H + rows*TILE_h, LABEL_W + 6*TILE_w, 3) uint8 sheet of clip[-1]."""
    tw, th = TILE
    cols = ("clean", *(f"severity {s}" for s in SEVERITIES))
    sheet = np.full((HEAD_H + th * len(presets), LABEL_W + tw * len(cols), 3), 255, np.uint8)
    for c, name in enumerate(cols):
        _text(sheet, name, LABEL_W + c * tw + 6, HEAD_H - 6)
    for r, preset in enumerate(presets):
        y = HEAD_H + r * th
        _text(sheet, preset, 4, y + th // 2)
        tiles = [_tile(clip[-1])] + [_tile(_degraded(clip, preset, s, seed, fps)) for s in SEVERITIES]
        sheet[y : y + th, LABEL_W:] = np.concatenate(tiles, axis=1)
    return sheet


def write(out: str | os.PathLike, src_dir: str | os.PathLike, frame: int = FRAME, seed: int = 0) -> Path:
    """Render from `src_dir`'s frame and write the PNG (maximum compression). Returns the path."""
    out = Path(out)
    from vsdmot.runtime.mot import read_seqinfo  # noqa: PLC0415

    sheet = render(_frames(Path(src_dir), frame), read_seqinfo(src_dir).frame_rate, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"contact sheet: could not write {out}")
    log.info("contact sheet %s: %dx%d, %.2f MB", out, sheet.shape[1], sheet.shape[0], out.stat().st_size / 1e6)
    return out
