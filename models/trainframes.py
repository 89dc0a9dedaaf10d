"""Training frames for the networks of this package, with the evaluation frames fenced off.

Training may use PETS09-S2L1 frames 1-600 and the MOT17-mini train frames only. PETS 601-795 and
TUD-Campus are evaluation data: `load_pets` refuses any frame above `PETS_TRAIN_LAST`.
Frames are read in place from ../shared/data (never copied) and kept in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vsdmot.paths import data_root
from vsdmot.runtime.mot import read_rows
from vsdmot.runtime.yolox import letterbox_image
from vsdmot.splits import HELD_OUT_FRAMES, HELD_OUT_SEQUENCES, PETS_TRAIN_LAST, held_out_text

log = logging.getLogger(__name__)

DEFAULT_DATA = data_root()
MOT17_MAX_WIDTH = 960  # MOT17's 1920x1080 frames are halved on load (memory)


@dataclass
class TrainFrame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    source: str  # "PETS09-S2L1:17", "MOT17-04-FRCNN:3"
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (N, 4) xyxy, image px
    ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (N,) gt identity


def _gt(path: Path, scale: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frame -> (xyxy (N,4), ids (N,)) from a MOTChallenge gt.txt, rows with conf 0 dropped."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    rows = rows[rows[:, 6] != 0]
    out = {}
    for f in np.unique(rows[:, 0]).astype(int):
        r = rows[rows[:, 0] == f]
        xyxy = np.c_[r[:, 2:4], r[:, 2:4] + r[:, 4:6]] * scale
        out[f] = (xyxy.astype(np.float32), r[:, 1].astype(np.int64))
    return out


def load_pets(data: Path = DEFAULT_DATA, first: int = 1, last: int = PETS_TRAIN_LAST, every: int = 1) -> list[TrainFrame]:
    """PETS09-S2L1 frames first..last (1-based, last <= 600) with gt boxes and ids."""
    if not 1 <= first <= last <= PETS_TRAIN_LAST or every < 1:
        raise ValueError(f"PETS training frames: expected 1 <= first <= last <= {PETS_TRAIN_LAST} and every >= 1, "
                         f"got {first}..{last} every {every}")
    seq = Path(data) / "PETS09-S2L1"
    if not ((seq / "gt" / "gt.txt").is_file() and (seq / "PETS09-S2L1.avi").is_file()):
        raise ValueError(f"--data {data}: expected the training data's layout, PETS09-S2L1/PETS09-S2L1.avi and "
                         "PETS09-S2L1/gt/gt.txt (plus MOT17-mini/train/MOT17-*/img1/*.jpg with gt/gt.txt), as in "
                         "../shared/data; the stages train on those sequences only (docs/training.md)")
    gt = _gt(seq / "gt" / "gt.txt", 1.0)
    cap, out = cv2.VideoCapture(str(seq / "PETS09-S2L1.avi")), []
    for k in range(1, last + 1):
        ok, img = cap.read()
        if not ok:
            raise ValueError(f"{seq}: could not decode frame {k}")
        if k >= first and (k - first) % every == 0:
            boxes, ids = gt.get(k, (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)))
            out.append(TrainFrame(img, f"PETS09-S2L1:{k}", boxes, ids))
    cap.release()
    return out


def mot17_train_dirs(data: Path = DEFAULT_DATA) -> list[Path]:
    """The MOT17-mini/train/MOT17-* folders training reads. Others there are named in a warning; one
    whose gt boxes are a held-out sequence's (TUD-Campus, PETS09-S2L1 601-795, renamed, renumbered
    or re-saved) is refused: the name fence alone let a renamed copy into training."""
    root = Path(data) / "MOT17-mini" / "train"
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("MOT17-")) \
        if root.is_dir() else []
    if others:  # a user's own sequence put here was dropped in silence
        log.warning("%s: %s not read (only MOT17-* folders with img1/*.jpg are)", root, ", ".join(others))
    held = {s: _gt_boxes(Path(data) / s / "gt" / "gt.txt", HELD_OUT_FRAMES.get(s))
            for s in (*HELD_OUT_FRAMES, *HELD_OUT_SEQUENCES)}
    dirs = sorted(root.glob("MOT17-*"))
    for seq in dirs:
        boxes = _gt_boxes(seq / "gt" / "gt.txt")
        for name, theirs in held.items():
            shared = len(boxes & theirs)
            if shared >= 50 or (boxes and shared >= 0.3 * len(boxes)):
                raise ValueError(f"{seq}: {shared} of its {len(boxes)} gt boxes are {name}'s held-out ones "
                                 f"({held_out_text()} are held out for evaluation): refusing to train on it")
    return dirs


def _gt_boxes(path: Path, frames: tuple[int, int] | None = None) -> set[tuple[float, ...]]:
    """A gt file's boxes (x, y, w, h to 0.1 px), whatever their frame numbers, ids or file layout;
    only frames a..b when given. Empty when there is no file."""
    if not path.is_file():
        return set()
    rows = read_rows(path)  # the kit's MOT reader: any of its layouts
    if frames is not None:
        rows = rows.select((rows.frame >= frames[0]) & (rows.frame <= frames[1]))
    return {tuple(b) for b in np.round(rows.xywh, 1).tolist()}


def load_mot17(data: Path = DEFAULT_DATA) -> list[TrainFrame]:
    """Every MOT17-mini train frame present, halved if wider than MOT17_MAX_WIDTH, with gt."""
    out = []
    for seq in mot17_train_dirs(data):
        gt_path = seq / "gt" / "gt.txt"
        if not any((seq / "img1").glob("*.jpg")):
            log.warning("%s: no img1/*.jpg frames, not read", seq)
        for p in sorted((seq / "img1").glob("*.jpg")):
            img = cv2.imread(str(p))
            s = min(1.0, MOT17_MAX_WIDTH / img.shape[1])
            if s < 1.0:
                img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            gt = _gt(gt_path, s) if gt_path.exists() else {}
            boxes, ids = gt.get(int(p.stem), (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)))
            out.append(TrainFrame(img, f"{seq.name}:{int(p.stem)}", boxes, ids))
    return out


def load_train_frames(data: Path = DEFAULT_DATA, pets_every: int = 2, last: int = PETS_TRAIN_LAST, mot17: bool = True) -> list[TrainFrame]:
    frames = load_pets(data, last=last, every=pets_every) + (load_mot17(data) if mot17 else [])
    log.info("training frames: %d (PETS 1-%d every %d, MOT17-mini train: %s)", len(frames), last, pets_every, mot17)
    return frames


VAL_FIRST = 541  # PETS frames VAL_FIRST..600 validate inside the training range (student, quality, tracker)


def data_note(pets_last: int, mot17: bool, every: int = 1, validation: bool = True) -> str:
    """The frames a run trained on, for its meta["data"] (bundle provenance copies it): PETS 1..last
    (every n-th), the validation frames split off when `validation`, MOT17-mini when used."""
    train_last = min(pets_last, VAL_FIRST - 1) if validation else pets_last
    note = f"PETS09-S2L1 1-{train_last}" + (f" every {every}" if every > 1 else "")
    if validation and pets_last >= VAL_FIRST:
        note += f" ({VAL_FIRST}-{pets_last} validation)"
    return note + (", MOT17-mini train" if mot17 else "")


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """(S,S,3) uint8, pad 114 bottom/right, and the scale r (letterbox px = source px * r)."""
    out, r, _ = letterbox_image(img, size)  # the runtime's
    return out, r


def degrade_fn():
    """calibration.degrade's (degrade, per-frame preset names), as the calibration set takes them;
    imported lazily (it may not be installed yet)."""
    try:
        from vsdmot.calibration.calibset import default_degrade
    except ImportError as e:
        raise ValueError("vsdmot.calibration.degrade is needed for degraded training frames") from e
    return default_degrade()


def random_degrade(img: np.ndarray, rng: np.random.Generator, p: float, severity_max: int, deg) -> np.ndarray:
    """With probability `p`, `img` under a random preset at a random severity 1..severity_max (the
    training stages' augmentation); `deg` is `degrade_fn()`'s pair, None for clean frames only."""
    if deg is None or rng.random() >= p:
        return img
    fn, presets = deg  # calibration.degrade's random_degrade draws the same way, but for its degrade() only
    return fn(np.ascontiguousarray(img), presets[rng.integers(len(presets))], int(rng.integers(1, severity_max + 1)), rng)
