"""A copy of a sequence window seen by a moving camera: a hand-held shake or a slow pan.

    python -m vsdmot.evaluation.camera_motion --seq ../shared/data/PETS09-S2L1:1-600 --motion shake \\
        --amplitude 24 --out runs/motion/PETS09-S2L1-shake

Why: every clip in ../shared is filmed by a camera on a tripod, and the trackers' motion models
(ByteTrack's Kalman filter, the slot trackers' constant velocity) live in image pixels, where a
moving camera moves everybody at once. This measures what that costs, on any sequence with gt.

Each frame is a window of 1/factor of the frame's width and height, scaled back up to full size
(as `zoom.py`, so people come out `factor` times taller), whose position follows the motion:
- `shake`: a hand-held camera, a smooth random wander (seeded; its steps' correlation time
  `smooth` frames) plus a per-frame jitter of a quarter of it, `amplitude` px at most, in source pixels;
- `pan`: a sweep left to right and back, `amplitude` px per frame.
A `static` window (centred, no motion) is the control: same crop and scale, no motion. The gt is
clipped to each frame's window and kept where at least half of a box is inside (`zoom.zoom_rows`).
A window that touches held-out frames is refused unless `--held-out`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsdmot._cli import add_log_arguments, run_main
from vsdmot.runtime.mot import MotRows, SeqInfo, write_seqinfo
from vsdmot.splits import copy_name

from .metrics import counted_gt, write_gt
from .zoom import ZoomConfig, open_window, write_frames, zoom_rows

log = logging.getLogger(__name__)

MOTIONS = ("static", "shake", "pan")


@dataclass(frozen=True)
class MotionConfig:
    motion: str = "shake"  # static | shake | pan
    amplitude: float = 24.0  # shake: largest offset from the centre, px; pan: px per frame (source pixels)
    factor: float = 1.25  # the window is 1/factor of the frame; its slack bounds the motion
    smooth: float = 8.0  # shake: frames over which the wander's steps stay correlated
    seed: int = 0
    quality: int = 95  # JPEG quality of the written frames

    def __post_init__(self) -> None:
        if self.motion not in MOTIONS:
            raise ValueError(f"camera motion: expected one of {MOTIONS}, got {self.motion!r}")
        if not self.factor > 1.0 or self.amplitude < 0 or self.smooth < 1:
            raise ValueError(f"camera motion: expected factor > 1, amplitude >= 0, smooth >= 1, got {self}")


def offsets(n: int, slack: tuple[int, int], cfg: MotionConfig) -> np.ndarray:
    """(n, 2) window top-left corners (x, y), each within [0, slack]."""
    centre = np.array(slack, np.float64) / 2
    if cfg.motion == "static" or n == 0:
        return np.tile(np.round(centre), (n, 1)).astype(int)
    if cfg.motion == "pan":
        span = max(slack[0], 1)
        x = np.arange(n) * cfg.amplitude % (2 * span)
        x = np.where(x > span, 2 * span - x, x)  # left to right, then back
        return np.stack([x, np.full(n, centre[1])], 1).round().astype(int)
    rng = np.random.default_rng(cfg.seed)
    kernel = np.exp(-0.5 * (np.arange(-3 * cfg.smooth, 3 * cfg.smooth + 1) / cfg.smooth) ** 2)
    wander = np.stack([np.convolve(rng.standard_normal(n + len(kernel)), kernel, "same")[:n] for _ in range(2)], 1)
    wander /= max(np.abs(wander).max(), 1e-9)  # (n, 2) in [-1, 1]
    jitter = rng.uniform(-1, 1, (n, 2))
    move = cfg.amplitude * (0.8 * wander + 0.2 * jitter)
    return np.clip(np.round(centre + move), 0, slack).astype(int)


def motion_sequence(spec: str, out: str | Path, cfg: MotionConfig = MotionConfig(), held_out: bool = False) -> dict:
    """Write the moving-camera copy of `spec` ('SEQ_DIR[:A-B]') into `out`; returns what was written."""
    seq, (a, b), gt = open_window(spec, held_out, "camera motion")
    size = (seq.info.width, seq.info.height)
    win = (int(round(size[0] / cfg.factor)), int(round(size[1] / cfg.factor)))
    corners = offsets(b - a + 1, (size[0] - win[0], size[1] - win[1]), cfg)
    out = Path(out)
    (out / "img1").mkdir(parents=True, exist_ok=True)
    n, rows = write_frames(seq, (a, b), lambda i: (*corners[i], *win), size, out / "img1", cfg.quality), []
    keep = ZoomConfig(factor=cfg.factor)
    for i in range(n):
        crop = (*corners[i], *win)
        frame_rows = zoom_rows(gt.select(gt.frame == a + i), crop, (size[0] / win[0], size[1] / win[1]), keep)
        frame_rows.frame = np.full(len(frame_rows), i + 1, frame_rows.frame.dtype)
        rows.append(frame_rows)
    moved = MotRows(*(np.concatenate([getattr(r, f) for r in rows]) for f in MotRows.__dataclass_fields__))
    write_gt(out / "gt" / "gt.txt", moved)
    name = copy_name(seq.info.name, (a, b), out.name)  # renumbered from 1: held-out frames keep the mark
    write_seqinfo(out / "seqinfo.ini", SeqInfo(name, seq.info.frame_rate, n, *size))
    steps = np.abs(np.diff(corners, axis=0)).sum(1) if n > 1 else np.zeros(1)
    info = {"source": spec, "motion": cfg.motion, "frames": n, "window": list(win),
            "mean_step_px": round(float(steps.mean()), 2), "max_step_px": int(steps.max()),
            "gt_boxes": len(counted_gt(moved)), "gt_boxes_before": len(counted_gt(gt))}
    log.info("camera motion: wrote %s: %s", out, info)
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.camera_motion", description=__doc__.split("\n\n")[0])
    add_log_arguments(p)
    p.add_argument("--seq", required=True, metavar="DIR[:A-B]", help="MOTChallenge sequence (window)")
    p.add_argument("--motion", choices=MOTIONS, default=MotionConfig.motion)
    p.add_argument("--amplitude", type=float, default=MotionConfig.amplitude,
                   help="shake: largest offset, px; pan: px per frame (default %(default)s)")
    p.add_argument("--factor", type=float, default=MotionConfig.factor, help="window = 1/factor of the frame")
    p.add_argument("--smooth", type=float, default=MotionConfig.smooth,
                   help="shake: frames over which the wander stays correlated (smaller: a jerkier hand)")
    p.add_argument("--seed", type=int, default=MotionConfig.seed)
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="sequence folder to write")
    p.add_argument("--held-out", action="store_true", help="allow evaluation frames (an evaluation copy)")
    p.set_defaults(func=lambda a: print(motion_sequence(
        a.seq, a.out, MotionConfig(a.motion, a.amplitude, a.factor, a.smooth, a.seed), a.held_out)))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
