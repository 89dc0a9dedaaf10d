"""The slim runtime: numpy, OpenCV and onnxruntime only. Never imports torch."""

import functools
import hashlib
from pathlib import Path


@functools.cache  # once per process: the code a process runs is the code it imported
def code_identity() -> str:
    """sha256 (16 hex) over this package's source: the per-frame code (pipeline, trackers, DSWR,
    policy, decode). Caches of tracking results key on it, so a tracker change is never read
    back as old numbers (the accuracy gate's tracks, the ablation's rows)."""
    files = sorted(Path(__file__).parent.glob("*.py"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
