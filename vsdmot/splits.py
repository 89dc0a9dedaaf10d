"""Which real frames are held out for evaluation: the one definition every training, calibration,
study and gate default reads (stdlib only, so `runtime` may import it too).

PETS09-S2L1 frames 601-795 and the whole of TUD-Campus are never trained, calibrated or tuned on;
PETS09-S2L1 1-600 and MOT17-mini are the train side. `PETS09-S2L1-601-795` is the lossless copy of
the held-out PETS frames that `vsdmot-bench ablation` writes.
"""

from __future__ import annotations

HELD_OUT_FRAMES = {"PETS09-S2L1": (601, 795)}  # held-out frames inside a sequence whose start trains
HELD_OUT_SEQUENCES = ("TUD-Campus", "PETS09-S2L1-601-795")  # sequences used for evaluation only
HELD_OUT_MARK = "-heldout"  # in a copy's name: made from held-out frames, renumbered (evaluation/zoom.py)
PETS_TRAIN_LAST = HELD_OUT_FRAMES["PETS09-S2L1"][0] - 1  # 600


def held_out_text() -> str:
    """The held-out frames in words, for messages: "PETS09-S2L1 601-795, TUD-Campus" (a copy's name,
    PETS09-S2L1-601-795, says nothing more)."""
    sequences = [s for s in HELD_OUT_SEQUENCES if not any(s.startswith(b + "-") for b in HELD_OUT_FRAMES)]
    return ", ".join([*(f"{n} {a}-{b}" for n, (a, b) in HELD_OUT_FRAMES.items()), *sequences])


def held_out_by_name(name: str) -> bool:
    """Every frame of `name` is held out: a held-out sequence, a copy of one, or a marked copy."""
    return HELD_OUT_MARK in name or any(name == s or name.startswith(s + "-") for s in HELD_OUT_SEQUENCES)


def frames_base(name: str) -> str | None:
    """The sequence of `HELD_OUT_FRAMES` that `name` is, or a copy of (`PETS09-S2L1-jpeg-s3`), else None."""
    return next((s for s in HELD_OUT_FRAMES if name == s or name.startswith(s + "-")), None)


def touches_held_out(name: str, span: tuple[int, int] | None = None) -> bool:
    """Whether frames `span` (inclusive; None = the whole sequence) of sequence `name` overlap the
    held-out frames. A copy named `<name>-<suffix>` counts as its source (vsdmot-bench's degraded
    copies, `TUD-Campus-jpeg-s3`, keep the source's frame numbers). A copy that renumbers its frames
    from 1 carries `HELD_OUT_MARK` in its name instead, whatever its folder is called."""
    if held_out_by_name(name):
        return True
    base = frames_base(name)
    if base is None:
        return False
    lo, hi = HELD_OUT_FRAMES[base]
    return span is None or (span[0] <= hi and span[1] >= lo)


def copy_name(source: str, span: tuple[int, int], name: str) -> str:
    """The sequence name for a copy of frames `span` of `source` renumbered from 1: `name`, marked
    held-out (`HELD_OUT_MARK`) when the span touches held-out frames and `name` alone would not
    say so. Neither the span nor a new name tells any more (a zoom of PETS 601-795 written to
    PETS09-S2L1-zoom2 passed every train-side check as frames 1-195)."""
    if not touches_held_out(source, span) or held_out_by_name(name):
        return name
    return name + HELD_OUT_MARK
