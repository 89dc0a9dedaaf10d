"""torch (the reference) vs onnxruntime (what ships) through the runtime pipeline on real frames.

Both backends run the same architectures: the shipped detector weights (models/weights/), the
student and the tracker head (shipped weights where they exist, else seeded random init of the
real architecture), each exported to ONNX here by the models' own exporters.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinybundle import QUALITY  # noqa: E402
from vsdmot.runtime.backends import open_backend  # noqa: E402
from vsdmot.runtime.config import SemanticsConfig  # noqa: E402
from vsdmot.runtime.dswr import Dswr  # noqa: E402
from vsdmot.runtime.e2e import E2EConfig, E2ETracker  # noqa: E402
from vsdmot.runtime.pipeline import Pipeline, step  # noqa: E402
from vsdmot.runtime.quality import QualityGate  # noqa: E402
from vsdmot.runtime.semantics import SemanticPolicy, Student  # noqa: E402
from vsdmot.runtime.sources import open_sequence  # noqa: E402
from vsdmot.runtime.yolox import YoloxDetector  # noqa: E402


def _modules():
    from vsdmot.models import detector, student, tracker_head

    torch.manual_seed(0)
    det = detector.load_detector()[0] if detector.DEFAULT_WEIGHTS.is_file() else detector.Detector()
    stu = student.load_student()[0] if student.DEFAULT_WEIGHTS.is_file() else student.StudentEncoder()
    from vsdmot.models import train_tracker

    if train_tracker.SHIPPED.is_file() and train_tracker.load_tracker()[0].cfg.semantic_dim == stu.cfg.dim:
        trk = train_tracker.load_tracker()[0]
    else:
        trk = tracker_head.TrackerHead(tracker_head.TrackerHeadConfig(semantic_dim=stu.cfg.dim))
    return {"detector": (det, detector.export_onnx), "student": (stu, student.export_onnx),
            "tracker": (trk, tracker_head.export_onnx)}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    pytest.importorskip("vsdmot.models.tracker_head")
    root = tmp_path_factory.mktemp("parity")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (module, export) in _modules().items():
            export(module.eval(), root / f"{name}.onnx")
            out[name] = (module, root / f"{name}.onnx")
    return out


@pytest.fixture(scope="module")
def frames(pets_dir):
    src = open_sequence(pets_dir).frames()
    picked = list(itertools.islice(iter(src), 500, 512))  # 12 consecutive frames mid-sequence
    src.close()
    return picked


# Low thresholds so that untrained (random-init) tracker weights still report tracks to compare.
LOOSE = E2EConfig(birth=0.0, keep=0.0, output_score=0.0, min_area=0.0)


def pipeline(nets, kind: str) -> Pipeline:
    be = {n: open_backend(kind, path, threads=1, module=m if kind == "torch" else None) for n, (m, path) in nets.items()}
    gate, dswr = QualityGate.from_params(QUALITY), Dswr.from_params(QUALITY)
    semantics = SemanticPolicy(SemanticsConfig(policy="always"), Student(be["student"]))
    return Pipeline(gate, dswr, semantics, YoloxDetector(be["detector"], 416), E2ETracker(be["tracker"], LOOSE),
                    "e2e", kind, list(be.values()))


def test_each_network_matches_on_real_frames(nets, frames):
    from vsdmot.runtime.yolox import letterbox

    det = {k: open_backend(k, nets["detector"][1], module=nets["detector"][0] if k == "torch" else None)
           for k in ("onnxruntime", "torch")}
    for f in frames[:4]:
        feed = {"images": letterbox(f.image, 416)[0]}
        a, b = det["onnxruntime"].infer(feed), det["torch"].infer(feed)
        np.testing.assert_allclose(a["output"], b["output"], rtol=1e-3, atol=2e-3)
        np.testing.assert_allclose(a["embed"], b["embed"], rtol=1e-3, atol=2e-3)


def test_pipeline_tracks_match_on_real_frames(nets, frames):
    ref, ort = pipeline(nets, "torch"), pipeline(nets, "onnxruntime")
    worst_px, worst_sem = 0.0, 0.0
    for f in frames:
        r, o = step(f, ref), step(f, ort)
        assert (r.q, r.w, r.semantic) == (o.q, o.w, o.semantic)
        np.testing.assert_array_equal(r.tracks.track_id, o.tracks.track_id)  # same identities, same order
        worst_px = max(worst_px, float(np.abs(r.tracks.xyxy - o.tracks.xyxy).max(initial=0.0)))
        worst_sem = max(worst_sem, float(np.abs(ref.semantics._cache.vector - ort.semantics._cache.vector).max()))
    assert worst_px < 0.5, f"boxes differ by {worst_px:.3f} px"
    assert worst_sem < 1e-3, f"semantic vectors differ by {worst_sem:.2e}"
    assert len(o.tracks) >= 3  # PETS has walkers: the comparison is not vacuous
