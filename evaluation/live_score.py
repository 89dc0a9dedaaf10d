"""Score a live run (a camera or stream replaying a sequence) against that sequence's ground truth,
on the frames the pipeline processed.

A live source numbers every captured frame and hands frames replaced before the loop's first pull
back as warm-up (edge/sources.py), so live frame i is the stream's frame i + warmup. The
run's `--jsonl-out` lists every processed frame (tracks or none) and its `--stats-out` holds the
warm-up count; the score is taken on those frames only, renumbered 1..N, as drop_study.py does
with drawn drops. Stream the sequence from its first frame, e.g.

    ffmpeg -readrate 30 -i SEQ.avi -c:v mpeg4 -q:v 3 -f mpegts "tcp://127.0.0.1:28611?listen=1" &
    vsdmot-edge run --source tcp://127.0.0.1:28611 --jsonl-out run.jsonl --stats-out run.json
    python -m vsdmot.evaluation.live_score --seq SEQ --jsonl run.jsonl --stats run.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from vsdmot._cli import run_main
from vsdmot.runtime.mot import format_result_rows, read_seqinfo
from vsdmot.runtime.types import Detections

from .drop_study import KEYS, subset_sequence
from .metrics import evaluate


def read_live_run(jsonl: Path, stats: Path) -> tuple[list[int], str]:
    """(the stream frame of each processed frame, MOTChallenge rows numbered 1..N) of one run."""
    warmup = int(json.loads(Path(stats).read_text()).get("source_stats", {}).get("warmup", 0))
    frames, rows = [], []
    for n, line in enumerate(Path(jsonl).read_text().splitlines(), 1):
        rec = json.loads(line)
        frames.append(rec["frame"] + warmup)
        tracks = Detections(np.array([t["box"] for t in rec["tracks"]], np.float32).reshape(-1, 4),  # xyxy
                            np.array([t["score"] for t in rec["tracks"]], np.float32),
                            np.array([t["id"] for t in rec["tracks"]], np.int64))
        rows.append(format_result_rows(n, tracks.track_id, tracks.xywh, tracks.score))
    if frames != sorted(set(frames)):
        raise ValueError(f"{jsonl}: expected rising frame numbers (one live run, no reset), got {frames[:10]}...")
    return frames, "".join(rows)


def score_live_run(seq_dir: Path, jsonl: Path, stats: Path) -> dict:
    """{HOTA, DetA, AssA, IDF1, IDSW (x 100 for scores), frames, mean_gap, first, last}."""
    frames, text = read_live_run(jsonl, stats)
    length = read_seqinfo(seq_dir).length
    if not frames or frames[-1] > length:
        raise ValueError(f"{jsonl}: frames {frames[:1]}..{frames[-1:]} do not fit the sequence's {length} "
                         "(was it streamed from its first frame?)")
    with tempfile.TemporaryDirectory() as tmp:
        seq = subset_sequence(Path(seq_dir), frames, Path(tmp) / "seq")
        (Path(tmp) / "res.txt").write_text(text)
        m = evaluate(seq, Path(tmp) / "res.txt")
    gaps = np.diff(frames) if len(frames) > 1 else np.ones(1)
    return {**{k: round(100 * m[k], 2) if isinstance(m[k], float) else int(m[k]) for k in KEYS},
            "frames": len(frames), "mean_gap": round(float(gaps.mean()), 2), "first": frames[0], "last": frames[-1]}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vsdmot.evaluation.live_score", description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=Path, required=True, help="the sequence folder the stream replayed (gt)")
    ap.add_argument("--jsonl", type=Path, required=True, help="the run's --jsonl-out")
    ap.add_argument("--stats", type=Path, required=True, help="the run's --stats-out (its warm-up count)")
    ap.set_defaults(func=lambda a: _run(ap, a))
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(ap, a) -> int:
    try:
        print(json.dumps(score_live_run(a.seq, a.jsonl, a.stats)))
    except (ValueError, OSError, KeyError) as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
