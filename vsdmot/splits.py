"""Which real frames are held out for evaluation: the one definition every training, calibration,
study and gate default reads (stdlib only, so `runtime` may import it too).

PETS09-S2L1 frames 601-795 and the whole of TUD-Campus are never trained, calibrated or tuned on;
PETS09-S2L1 1-600 and MOT17-mini are the train side. `PETS09-S2L1-601-795` is the lossless copy of
the held-out PETS frames that `vsdmot-bench ablation` writes.
"""

from __future__ import annotations

HELD_OUT_FRAMES = {"PETS09-S2L1": (601, 795)}  # held-out frames inside a sequence whose start trains
HELD_OUT_SEQUENCES = ("TUD-Campus", "PETS09-S2L1-601-795")  # sequences used for evaluation only
PETS_TRAIN_LAST = HELD_OUT_FRAMES["PETS09-S2L1"][0] - 1  # 600


def touches_held_out(name: str, span: tuple[int, int] | None = None) -> bool:
    """Whether frames `span` (inclusive; None = the whole sequence) of sequence `name` overlap the
    held-out frames. A copy named `<name>-<suffix>` counts as its source (vsdmot-bench's degraded
    copies, `TUD-Campus-jpeg-s3`, keep the source's frame numbers)."""
    if any(name == s or name.startswith(s + "-") for s in HELD_OUT_SEQUENCES):
        return True
    base = next((s for s in HELD_OUT_FRAMES if name == s or name.startswith(s + "-")), None)
    if base is None:
        return False
    lo, hi = HELD_OUT_FRAMES[base]
    return span is None or (span[0] <= hi and span[1] >= lo)
