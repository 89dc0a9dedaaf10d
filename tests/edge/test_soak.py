"""Soak: `vsdmot-edge run` over >= 10,000 frames of a looping clip with every sink on; resident
memory must stop growing after warm-up. Slow (minutes to an hour on a loaded 2-core CPU).

    .venv/bin/python -m pytest -m slow tests/edge/test_soak.py -s     # prints the numbers

Set VSDMOT_SOAK_FRAMES (length), VSDMOT_SOAK_SEMANTIC (policy; `always` by default so that every
network runs on every frame) and VSDMOT_SOAK_BUNDLE (default: a small real bundle, see `soak_bundle`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tinybundle import make_bundle
from vsdmot.edge.run_cmd import DEMO_CLIP
from vsdmot.runtime.mot import read_rows

FRAMES = int(os.environ.get("VSDMOT_SOAK_FRAMES", "10000"))
DETECTOR_SIZE = int(os.environ.get("VSDMOT_SOAK_DETECTOR_SIZE", "160"))  # px, the fallback bundle's input
SEMANTIC = os.environ.get("VSDMOT_SOAK_SEMANTIC", "always")  # always: every network on every frame
MAX_GROWTH_MB = 25.0  # RSS after warm-up (10-20 % of the run) vs the last 10 %
CHILD = "import sys; from vsdmot.edge.cli import main; sys.exit(main(sys.argv[1:]))"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak_bundle(tmp_path: Path, yolox: Path) -> Path:
    """VSDMOT_SOAK_BUNDLE, else a small real bundle: YOLOX-nano's own weights converted to a 160 px
    input (models/detector.py), a torch-made student and the tracker head (random weights). The
    memory behaviour under test (sessions, trackers, sinks, the loop) does not depend on the
    detector's input size; the small input lets 10,000 frames finish on a loaded 2-core CPU."""
    if os.environ.get("VSDMOT_SOAK_BUNDLE"):
        return Path(os.environ["VSDMOT_SOAK_BUNDLE"])
    pytest.importorskip("torch")
    detector = pytest.importorskip("vsdmot.models.detector")
    model, _ = detector.from_yolox_onnx(yolox, detector.DetectorConfig(input_size=DETECTOR_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.export_onnx(model, tmp_path / f"detector{DETECTOR_SIZE}.onnx")
    return make_bundle(tmp_path / "bundle", tmp_path / f"detector{DETECTOR_SIZE}.onnx", tracker=True,
                       extra={"tracker": "e2e"})


@pytest.mark.slow
def test_soak_bounded_memory(tmp_path, yolox_onnx):
    bundle = soak_bundle(tmp_path, yolox_onnx)
    out = {k: tmp_path / f for k, f in (("mot", "mot.txt"), ("jsonl", "f.jsonl"), ("stats", "stats.json"), ("video", "a.avi"))}
    cmd = [sys.executable, "-c", CHILD, "run", "--source", str(DEMO_CLIP), "--loop", "--bundle", str(bundle),
           "--semantic", SEMANTIC, "--threads", "1", "--max-frames", str(FRAMES), "--health-listen", "off", "--mot-out", str(out["mot"]),
           "--jsonl-out", str(out["jsonl"]), "--stats-out", str(out["stats"]), "--video-out", str(out["video"])]
    t0, samples = time.time(), []
    with open(tmp_path / "stderr.txt", "w") as log:  # a file, not a pipe: a full pipe would block the run
        proc = subprocess.Popen(cmd, stderr=log)
        while proc.poll() is None:
            samples.append((time.time() - t0, rss_mb(proc.pid)))
            time.sleep(2.0)
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    stats = json.loads(out["stats"].read_text())
    with open(out["jsonl"]) as f:
        last = json.loads(f.readlines()[-1])
    report = summarise(samples, stats, last.get("index", last.get("frame")), bundle)
    report["mot_rows"], report["video_bytes"] = len(read_rows(out["mot"])), out["video"].stat().st_size
    (Path(os.environ.get("VSDMOT_SOAK_REPORT", tmp_path / "soak.json"))).write_text(json.dumps(report, indent=1))
    print("\nsoak:", json.dumps(report, indent=1))
    assert stats["frames"] == FRAMES and report["last_frame"] == FRAMES
    assert report["growth_mb"] < MAX_GROWTH_MB, report


def summarise(samples, stats, last_frame, bundle) -> dict:
    samples = [s for s in samples if s[1] == s[1]]  # drop NaN (process gone)
    total = samples[-1][0]
    window = lambda a, b: [r for t, r in samples if a * total <= t <= b * total] or [samples[-1][1]]  # noqa: E731
    warm, end = statistics.median(window(0.1, 0.2)), statistics.median(window(0.9, 1.0))
    return {"frames": stats["frames"], "last_frame": int(last_frame), "seconds": round(total, 1),
            "fps": stats["fps"], "bundle": str(bundle), "rss_warm_mb": round(warm, 1), "rss_end_mb": round(end, 1),
            "rss_peak_mb": round(max(r for _, r in samples), 1), "growth_mb": round(end - warm, 1),
            "semantic": {k: stats.get(k) for k in ("semantic_runs", "semantic_reused", "semantic_skipped")}}
