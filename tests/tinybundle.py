"""Small real bundles for runtime/edge tests: the shared YOLOX-nano as detector, a tiny torch-made
student, quality params, and a manifest the real loader verifies. Nothing is copied into the repo:
bundles are written under pytest's tmp_path (the detector is symlinked)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from vsdmot import __version__
from vsdmot.runtime.bundle import DIGEST_FIELD, SCHEMA_VERSION, file_sha256, manifest_digest
from vsdmot.runtime.quality import FEATURES

QUALITY = {  # brightness and sharpness drive q; w = 1 / (1 + exp(-10 (0.6 - q)))
    "gate": {"features": ["brightness", "log_lap_fine"], "mean": [0.4, 2.0], "std": [0.2, 0.5],
             "layers": [{"W": [[0.5, 2.0]], "b": [1.0]}]},
    "dswr": {"form": "sigmoid", "w_max": 1.0, "k": 10.0, "q0": 0.6},
}
assert all(f in FEATURES for f in QUALITY["gate"]["features"])


def tiny_student_onnx(path: Path, size: int = 64, dim: int = 16) -> Path:
    """(1, 3, size, size) BGR 0..255 -> (1, dim) L2-normalised: a real, if tiny, encoder."""
    import torch

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, dim, 5, stride=4)

        def forward(self, image):
            v = self.conv(image / 255.0).mean(dim=(2, 3))
            return torch.nn.functional.normalize(v, dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Student(), (torch.zeros(1, 3, size, size),), str(path), input_names=["image"],
                          output_names=["semantic"], opset_version=17, dynamo=False)
    return path


def tiny_tracker_onnx(path: Path, semantic_dim: int = 16, seed: int = 0) -> Path:
    """The real tracker head (models/tracker_head.py), randomly initialised, exported static."""
    import torch

    from vsdmot.models.tracker_head import TrackerHead, TrackerHeadConfig, export_onnx

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(TrackerHead(TrackerHeadConfig(semantic_dim=semantic_dim)), path)
    return path


def write_manifest(root: Path, extra: dict | None = None) -> Path:
    files = {p.name: {"sha256": file_sha256(p), "size": p.stat().st_size}
             for p in sorted(root.iterdir()) if p.name != "manifest.json"}
    manifest = {"schema_version": SCHEMA_VERSION, "vsdmot_version": __version__, "precision": "fp32",
                "files": files, **(extra or {})}
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def make_bundle(root: Path, detector: Path, *, student: bool = True, tracker: Path | bool | None = None,
                extra: dict | None = None) -> Path:
    """`tracker`: a tracker.onnx to link, True for a random-weight one made here, None for none."""
    root.mkdir(parents=True, exist_ok=True)
    os.symlink(detector, root / "detector.onnx")
    if student:
        tiny_student_onnx(root / "student.onnx")
    if tracker is True:
        tiny_tracker_onnx(root / "tracker.onnx")
    elif tracker is not None:
        os.symlink(tracker, root / "tracker.onnx")
    (root / "quality.json").write_text(json.dumps(QUALITY))
    return write_manifest(root, extra)
