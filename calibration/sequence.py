"""Write a degraded copy of a MOTChallenge sequence: frames, gt (byte copy), seqinfo, per-frame log.

    write_degraded_sequence(src_dir, out_dir, preset="jpeg", severity=3, seed=0)
    write_degraded_sequence(src_dir, out_dir, schedule="mixed", seed=0)

Output folder:
    seqinfo.ini         same frame rate, length and size; name "<src>-<preset>-s<severity>" or "<src>-mixed"
    img1/NNNNNN.png     PNG (lossless), the source's frame numbers (storage="png", the default), or
    <name>.mkv          one FFV1 (lossless) video, frames 1..N (storage="ffv1"); open_sequence reads both
PNG is the default because a degraded sequence is written once and read many times (every tracker
of a benchmark): at 640x480 a PNG frame decodes in ~9 ms CPU against ~29 ms for FFV1 through
OpenCV, at the same size (docs/degradations.md).
    gt/gt.txt           the source's, byte for byte
    degradation.json    per frame: index, preset (null = clean), severity, seed; the window, if any
With frames=(first, last) only that window is written (PNG), each frame the same as a whole copy's.
So the only loss is the degradation itself. Frame k gets degrade.frame_rng(seed, k), each stretch
one degrade.scene_seed(seed, first k); an h264 stretch is coded as one clip. The folder appears whole or not at all (written beside, then renamed).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from vsdmot import __version__
from vsdmot.runtime.errors import VsdmotError
from vsdmot.runtime.mot import SeqInfo, write_seqinfo
from vsdmot.runtime.sources import open_sequence
from vsdmot.runtime.types import Frame

from .degrade import TABLE, check, degrade, degrade_frames, frame_rng, scene_seed
from .schedule import FrameState, schedule as named_schedule, stretches

log = logging.getLogger(__name__)

LOG_NAME = "degradation.json"
STORAGES = ("png", "ffv1")


def _states(preset: str | None, severity: int | None, schedule: str | None, n: int, fps: float, seed: int) -> tuple[str, list[FrameState]]:
    """(name suffix, one state per frame) for either a fixed preset or a named schedule."""
    if preset is not None and preset not in TABLE:  # named first: `--preset fog` alone said only "expected either"
        check(preset, 1)
    if (schedule is None) == (preset is None) or (preset is None) != (severity is None):
        raise ValueError("degraded sequence: expected either --preset NAME --severity S, or --schedule NAME "
                         f"(got preset={preset!r}, severity={severity!r}, schedule={schedule!r})")
    if schedule is not None:
        return schedule, named_schedule(schedule, n, fps, seed)
    check(preset, severity)
    return f"{preset}-s{severity}", [FrameState(preset, int(severity))] * n


def _degraded(frames: Iterator[Frame], states: list[FrameState], seed: int, fps: float,
              window: tuple[int, int] | None = None) -> Iterator[tuple[Frame, FrameState]]:
    """Each source frame degraded as its state says (streamed: a stretch is never held in memory).

    With a window (first, last frame index), only its frames come out, each the same image as in
    the whole sequence's copy: frames before it are still read, since they set a stretch's scene
    seed and feed an h264 stretch's codec (coded whole: the codec looks ahead), but a per-frame
    preset skips their degradation, the costly part; reading stops after the window.
    """
    first_k, last_k = window or (1, 1 << 62)
    for first, stop, state in stretches(states):
        run = itertools.islice(frames, stop - first)
        if state.preset is not None and TABLE[state.preset].clip:
            yield from ((f, state) for f in _coded(run, state, seed, fps) if first_k <= f.index <= last_k)
            continue
        scene = None
        for f in run:
            if f.index > last_k:
                return  # no later frame is in the window
            scene = scene or scene_seed(seed, f.index)  # from the stretch's first frame
            if f.index < first_k:
                continue
            if state.preset is None:
                yield f, state
            else:
                img = degrade(f.image, state.preset, state.severity, frame_rng(seed, f.index), scene_seed=scene)
                yield Frame(f.index, img, f.timestamp), state


def _coded(run: Iterator[Frame], state: FrameState, seed: int, fps: float) -> Iterator[Frame]:
    """A clip preset (h264) over one stretch: images stream into the codec, indices wait here."""
    first = next(run, None)
    if first is None:
        return
    meta: list[tuple[int, float]] = []

    def images() -> Iterator[np.ndarray]:
        for f in itertools.chain([first], run):
            meta.append((f.index, f.timestamp))
            yield f.image

    coded = degrade_frames(images(), state.preset, state.severity, seed, fps=fps, start=first.index)
    for k, img in enumerate(coded):  # the codec has read the whole stretch before its first output
        yield Frame(meta[k][0], img, meta[k][1])


class _FrameWriter:
    """FFV1 video (frames numbered 1..N in order) or PNG files named by frame number."""

    def __init__(self, folder: Path, info: SeqInfo, as_video: bool):
        self.folder, self.info, self.as_video, self.count = folder, info, as_video, 0
        self.path = folder / f"{info.name}.mkv" if as_video else folder / info.im_dir
        self._vw = None
        if not as_video:
            self.path.mkdir(parents=True)

    def write(self, frame: Frame) -> None:
        if self.as_video and frame.index != self.count + 1:
            raise ValueError(f"ffv1 storage: frames must be numbered 1..N, got frame {frame.index} "
                             f"after {self.count} frames (use storage png to keep the numbers)")
        if self.as_video:
            self._video(frame.image).write(frame.image)
        elif not cv2.imwrite(str(self.path / f"{frame.index:06d}.png"), frame.image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise VsdmotError(f"degraded sequence: could not write frame {frame.index} to {self.path}")
        self.count += 1

    def _video(self, img: np.ndarray) -> cv2.VideoWriter:
        if self._vw is None:
            h, w = img.shape[:2]
            self._vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"FFV1"), self.info.frame_rate, (w, h))
            if not self._vw.isOpened():
                raise VsdmotError(f"degraded sequence: OpenCV cannot write FFV1 video to {self.path}")
        return self._vw

    def close(self) -> None:
        if self._vw is not None:
            self._vw.release()


def _frame_estimate(source, info: SeqInfo) -> int:
    return int(getattr(source, "frame_count", 0) or info.length)


def _write_frames(src_dir: Path, tmp: Path, out_info: SeqInfo, states_for, seed: int, progress: bool,
                  as_video: bool, window: tuple[int, int] | None = None) -> list[dict]:
    """Degrade and store every frame (or the window's); the per-frame log rows."""
    from tqdm import tqdm  # noqa: PLC0415

    seq = open_sequence(src_dir)
    source = seq.frames()
    n_est = _frame_estimate(source, seq.info)
    states = states_for(n_est * 2 + 1)  # room for a video whose header undercounts
    writer, rows = _FrameWriter(tmp, out_info, as_video), []
    try:
        total = n_est if window is None else max(0, min(window[1], n_est) - window[0] + 1)
        bar = tqdm(total=total, desc=out_info.name, unit="frame", file=sys.stderr, disable=not progress, leave=False)
        for frame, state in _degraded(iter(source), states, seed, seq.info.frame_rate, window):
            writer.write(frame)
            rows.append({"index": frame.index, "preset": state.preset, "severity": state.severity, "seed": seed})
            bar.update()
        bar.close()
    finally:
        writer.close()
        source.close()
    return rows


def _check_replaceable(out: Path) -> None:
    """ValueError unless `out` is absent, empty, or an earlier output of write_degraded_sequence."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / LOG_NAME).is_file())):
        raise ValueError(f"degraded sequence: {out} exists and is not a degraded sequence; refusing to replace it")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move tmp to out; an existing out must be an earlier output of this function (or empty)."""
    if out.exists():
        _check_replaceable(out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_degraded_sequence(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *, preset: str | None = None,
                            severity: int | None = None, schedule: str | None = None, seed: int = 0,
                            progress: bool = True, storage: str = "png", frames: tuple[int, int] | None = None) -> Path:
    """Write the degraded sequence to out_dir (replacing an earlier one) and return out_dir.

    `frames` (first, last), both included: only those frames are written, each the same image as in
    a copy of the whole sequence (PNG storage only: they keep their numbers).
    """
    if storage not in STORAGES:
        raise ValueError(f"storage: expected one of {', '.join(STORAGES)}, got {storage!r}")
    if frames is not None and (storage != "png" or not 1 <= frames[0] <= frames[1]):
        raise ValueError(f"degraded sequence: frames must be (first, last) with 1 <= first <= last and PNG storage, "
                         f"got {frames} with {storage}")
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    info = open_sequence(src_dir).info  # ValueError early: missing seqinfo, no frames
    _check_replaceable(out_dir)  # before the frames are degraded, not after (checked again at the swap)
    suffix, _ = _states(preset, severity, schedule, 0, info.frame_rate, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the sequence is an ordinary folder
    try:
        out_info = SeqInfo(f"{info.name}-{suffix}", info.frame_rate, info.length, info.width, info.height, "img1", ".png")
        states_for = lambda n: _states(preset, severity, schedule, n, info.frame_rate, seed)[1]  # noqa: E731
        rows = _write_frames(src_dir, tmp, out_info, states_for, seed, progress, storage == "ffv1", frames)
        how = dict(preset=preset, severity=severity, schedule=schedule, seed=seed, storage=storage,
                   window=list(frames) if frames else None)
        _finish(src_dir, tmp, out_info, rows, how)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    expected = info.length if frames is None else min(frames[1], info.length) - frames[0] + 1
    if len(rows) != expected:
        log.warning("%s: %d frames written, seqinfo.ini states %d%s", src_dir, len(rows), info.length,
                    f" (frames {frames[0]}-{frames[1]} asked)" if frames else "")
    log.info("wrote %s: %d frames (%s)", out_dir, len(rows), suffix)
    return out_dir


def _finish(src_dir: Path, tmp: Path, out_info: SeqInfo, rows: list[dict], how: dict) -> None:
    """gt (byte copy), seqinfo.ini, degradation.json."""
    if not rows:
        raise VsdmotError(f"degraded sequence: {src_dir} yielded no frames")
    gt = src_dir / "gt" / "gt.txt"
    if gt.is_file():
        (tmp / "gt").mkdir()
        shutil.copyfile(gt, tmp / "gt" / "gt.txt")
    write_seqinfo(tmp / "seqinfo.ini", out_info)
    (tmp / "seqinfo.ini").chmod(0o644)
    doc = {"vsdmot": __version__, "source": str(src_dir.resolve()), "name": out_info.name, **how,
           "rng": "frame k: default_rng([seed, k]); scene (fog, wind) per stretch: default_rng(scene_seed(seed, first k)); "
                  "h264 stretches coded as one clip (GOP phase from [seed, first k, 264])",
           "frames": rows}
    (tmp / LOG_NAME).write_text(json.dumps(doc, indent=1))
