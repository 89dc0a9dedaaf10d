"""The pipeline: built once from a (tiny, real) bundle, one step per frame on real PETS frames."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from tinybundle import make_bundle
from vsdmot.runtime import pipeline as P
from vsdmot.runtime.bundle import load_bundle
from vsdmot.runtime.config import load_config
from vsdmot.runtime.logs import log_once
from vsdmot.runtime.sources import open_sequence
from vsdmot.runtime.types import Detections, FrameResult, TensorSpec

pytest.importorskip("torch")  # the tiny student is made with torch


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, yolox_onnx):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("b") / "bundle", yolox_onnx, extra={"tracker": "bytetrack"}))


@pytest.fixture(scope="module")
def frames(pets_dir):
    src = open_sequence(pets_dir).frames()
    out = list(itertools.islice(iter(src), 12))
    src.close()
    return out


def cfg(**over):
    return load_config(None, {"pipeline.backend": "onnxruntime", "pipeline.threads": 1, **over})


def test_bytetrack_pipeline_on_real_frames(bundle, frames):
    p = P.build_pipeline(bundle, cfg(), fps=7.0)
    assert p.tracker_kind == "bytetrack" and p.semantics.cfg.policy == "never"  # ByteTrack takes none
    assert p.backend_kind == "onnxruntime"
    results = [P.step(f, p) for f in frames]
    p.close()
    assert all(isinstance(r, FrameResult) for r in results)
    assert set(results[-1].latency_ms) == {*P.STAGES, "motion", "total"}  # camera motion: auto by default
    assert all(0.0 <= r.q <= 1.0 and 0.0 <= r.w <= 1.0 for r in results)
    last = results[-1].tracks
    assert len(last) >= 3 and last.track_id is not None  # PETS has several walkers from frame 1
    assert np.all(last.xyxy[:, 2] <= 768) and np.all(last.xyxy[:, 3] <= 576)  # source pixels
    assert p.semantics.counts.skipped == len(frames)


@pytest.mark.parametrize("pause_s, carried", [(1.0, True), (20.0, False)])
def test_an_outage_ends_the_tracks_and_ids_go_on(bundle, frames, pause_s, carried, caplog):
    """A live source numbers the frames it captures, so a camera back after an outage gives the next
    index, and the trackers count one miss: before, ByteTrack matched the tracks from before a 20 s
    outage to whoever stood there now. The same six PETS frames come again after the pause: a 1 s
    pause (7 frames at 7 fps) keeps the ids, a 20 s one (140 frames) ends every track, and the new
    ids go on from the old ones (one MOT file must not reuse an id)."""
    p = P.build_pipeline(bundle, cfg(**{"tracker.camera_motion": "off"}), fps=7.0)
    before = [P.step(f, p).tracks.track_id for f in frames[:6]]
    with caplog.at_level("INFO", logger="vsdmot.runtime.pipeline"):
        after = [P.step(replace(f, index=f.index + 6, timestamp=f.timestamp + 5 / 7 + pause_s), p).tracks.track_id
                 for f in frames[:6]]
    p.close()
    old, new = set(np.concatenate(before)), set(np.concatenate(after))
    assert len(old) >= 3 and len(new) >= 3
    if carried:
        assert new & old
    else:
        assert min(new) > max(old) and "tracks ended: 20.0 s without frames before frame 7" in caplog.text


def test_a_frame_of_another_size_restarts_the_tracks_and_ids_go_on(bundle, frames, caplog):
    """An image folder of mixed sizes: a track at (359, 194) in a 768x576 frame was matched to
    whoever stood at (363, 139) in the next, half-size one, another person."""
    import cv2

    log_once.cache_clear()
    p = P.build_pipeline(bundle, cfg(**{"tracker.camera_motion": "off"}), fps=7.0)
    before = [P.step(f, p).tracks.track_id for f in frames[:6]]
    with caplog.at_level("WARNING", logger="vsdmot.runtime.pipeline"):
        half = [replace(f, index=f.index + 6, timestamp=f.timestamp + 6 / 7, image=cv2.resize(f.image, (384, 288)))
                for f in frames[:6]]
        after = [P.step(f, p).tracks.track_id for f in half]
    p.close()
    old, new = set(np.concatenate(before)), set(np.concatenate(after))
    assert len(old) >= 3 and len(new) >= 1 and min(new) > max(old)
    assert caplog.text.count("frame size changed from 768x576 to 384x288 (frame 7)") == 1


@pytest.mark.parametrize("precision, warned", [("fp32", False), ("int8", True)])
def test_tensorrt_precision_on_onnxruntime_is_named_not_silently_ignored(bundle, caplog, precision, warned):
    P.build_pipeline(bundle, cfg(**{"pipeline.precision": precision}), fps=7.0).close()
    assert any("applies to TensorRT engines only" in r.message for r in caplog.records) == warned


def test_the_setup_line_is_logged_once_per_bundle_and_setup(bundle, caplog):
    """An export's gate builds ~20 pipelines on two bundles: one line each, not one per case."""
    log_once.cache_clear()
    caplog.set_level("INFO", logger=P.log.name)
    for _ in range(3):
        P.build_pipeline(bundle, cfg(), fps=7.0).close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline: ")]
    assert lines == [f"pipeline: bytetrack tracker, onnxruntime backend, detector input 416x416, semantics never, "
                     f"camera motion auto ({bundle.path})"]


def test_int8_engines_of_an_fp32_network_are_named(bundle, caplog, monkeypatch):
    """TensorRT (stood in by onnxruntime here) has no INT8 ranges for a network without Q/DQ."""
    real = P.open_backend

    def as_tensorrt(kind, path, **kw):
        backend = real("onnxruntime", path, threads=1)
        backend.kind = "tensorrt"
        return backend

    monkeypatch.setattr(P, "open_backend", as_tensorrt)
    P.build_pipeline(bundle, cfg(**{"pipeline.precision": "int8", "pipeline.backend": "tensorrt"}), fps=7.0).close()
    assert "--precision int8: detector.onnx is fp32, with no INT8 ranges" in caplog.text


class Recorder:
    """A tracker stand-in: remembers what the pipeline handed it."""

    def __init__(self):
        self.calls, self.gaps, self.warps = [], [], []

    def warp(self, a):
        self.warps.append((len(self.gaps), a))  # (steps before it, the affine)

    def step(self, dets, semantic=None, w=0.0, gap=1):
        self.calls.append((len(dets), None if semantic is None else semantic.shape, w))
        self.gaps.append(gap)
        return Detections(dets.xyxy, dets.score, np.arange(len(dets)))

    def reset(self, keep_ids=False):
        self.calls.clear()
        self.gaps.clear()


class FixedGate:
    def __init__(self, q):
        self.q = q

    def assess(self, image):
        return self.q


@pytest.mark.parametrize("policy,q,state,shape", [
    ("always", 0.9, "fresh", (1, 16)), ("never", 0.1, "skipped", None),
    ("auto", 0.95, "skipped", None), ("auto", 0.2, "fresh", (1, 16)),
])
def test_step_feeds_semantics_and_weight_to_tracker(bundle, frames, policy, q, state, shape, monkeypatch):
    monkeypatch.setattr(P, "make_tracker", lambda *a, **k: Recorder())
    c = cfg(**{"semantics.policy": policy, "tracker.kind": "e2e"})
    p = P.build_pipeline(bundle, c)
    p.gate = FixedGate(q)
    r = P.step(frames[0], p)
    assert r.semantic == state and r.q == q and r.w == pytest.approx(p.dswr.weight(q))
    assert p.tracker.calls == [(len(r.tracks), shape, r.w)]
    p.close()



def test_a_reset_forgets_the_cached_semantic_vector(bundle, frames, monkeypatch):
    """A new source or a reconnect: the previous scene's vector must not be reused for the next."""
    monkeypatch.setattr(P, "make_tracker", lambda *a, **k: Recorder())
    p = P.build_pipeline(bundle, cfg(**{"semantics.policy": "auto", "tracker.kind": "e2e"}))
    p.gate = FixedGate(0.2)  # low quality: semantics wanted
    assert [P.step(f, p).semantic for f in frames[:2]] == ["fresh", "reused"]
    p.reset()
    assert P.step(frames[2], p).semantic == "fresh" and p.semantics.counts.fresh == 2
    p.close()


def test_step_hands_the_tracker_the_frames_a_live_source_dropped(bundle, frames, monkeypatch):
    """Live sources number every captured frame, so an index jump is frames dropped: the tracker's motion
    model must cover them. The first frame, an index that does not rise, and a reset count 1."""
    monkeypatch.setattr(P, "make_tracker", lambda *a, **k: Recorder())
    p = P.build_pipeline(bundle, cfg(**{"semantics.policy": "never", "tracker.kind": "e2e"}))
    for index in (5, 6, 9, 10, 14, 3):
        P.step(replace(frames[0], index=index), p)
    assert p.tracker.gaps == [1, 1, 3, 1, 4, 1]
    p.reset()
    P.step(replace(frames[0], index=20), p)
    assert p.tracker.gaps == [1]
    p.close()

@pytest.mark.parametrize("mode", ["off", "auto", "on"])
def test_a_panning_camera_moves_the_tracks_before_they_are_matched(bundle, frames, monkeypatch, mode):
    """Real PETS frames seen by a camera panning 9 px per frame to the right (a crop that slides): the
    tracker is warped by about (-9, 0) before each step from the first frame the estimator looks at
    (on: frame 2; auto: its first probe, frame 15 of 15 in the default probing); off: never."""
    monkeypatch.setattr(P, "make_tracker", lambda *a, **k: Recorder())
    p = P.build_pipeline(bundle, cfg(**{"tracker.camera_motion": mode}))
    image = frames[0].image
    for i in range(16):
        P.step(replace(frames[0], index=i + 1, image=np.ascontiguousarray(image[:, 9 * i:9 * i + 600])), p)
    warps = p.tracker.warps
    p.close()
    if mode == "off":
        assert p.camera is None and warps == []
        return
    assert [when for when, _ in warps] == (list(range(1, 16)) if mode == "on" else [14, 15])
    for _, a in warps:
        np.testing.assert_allclose(a[:, 2], [-9, 0], atol=0.6)


def test_build_failure_closes_opened_backends(bundle, monkeypatch):
    closed = []
    real_open = P.open_backend

    def tracking_open(*a, **k):
        b = real_open(*a, **k)
        b.close = lambda: closed.append(b)
        return b

    def boom(*a, **k):
        raise ValueError("tracker.onnx: expected input 'slots' (1, 32, 64), got (1, 16, 64)")

    monkeypatch.setattr(P, "open_backend", tracking_open)
    monkeypatch.setattr(P, "make_tracker", boom)
    with pytest.raises(ValueError, match="expected input 'slots'"):
        P.build_pipeline(bundle, cfg(**{"semantics.policy": "always", "tracker.kind": "e2e"}))
    assert len(closed) == 2  # detector and student


class SpecOnly:
    def __init__(self, shape):
        self.inputs = {"images": TensorSpec("images", shape, "float32")}


@pytest.mark.parametrize("shape,size", [((1, 3, 416, 416), (416, 416)), ((1, 3, 320, 320), (320, 320)),
                                        ((1, 3, 320, 416), (320, 416)), ((1, 3, 256, 416), (256, 416)),
                                        ((1, 3, 300, 416), None), ((1, 3, -1, -1), None), ((3, 416, 416), None)])
def test_detector_input_size(shape, size):
    if size is None:
        with pytest.raises(ValueError, match="detector input 'images': expected a static"):
            P.detector_input_size(SpecOnly(shape))
    else:
        assert P.detector_input_size(SpecOnly(shape)) == size


@pytest.mark.parametrize("kind,manifest,expected", [
    ("hybrid", {"tracker": "e2e"}, "hybrid"), ("default", {"tracker": "hybrid"}, "hybrid"),
    ("default", {"tracker": {"default": "bytetrack"}}, "bytetrack"), ("default", {}, "e2e"),
    ("default", {"tracker": "sort"}, ValueError),
])
def test_resolve_tracker(bundle, kind, manifest, expected):
    b = replace(bundle, manifest={**bundle.manifest, **manifest})
    if "tracker" not in manifest:
        b = replace(bundle, manifest={k: v for k, v in bundle.manifest.items() if k != "tracker"})
    if expected is ValueError:
        with pytest.raises(ValueError, match="'sort'"):
            P.resolve_tracker(b, kind)
    else:
        assert P.resolve_tracker(b, kind) == expected


@pytest.fixture(scope="module")
def e2e_bundle(tmp_path_factory, yolox_onnx):
    pytest.importorskip("vsdmot.models.tracker_head")
    return load_bundle(make_bundle(tmp_path_factory.mktemp("e") / "bundle", yolox_onnx, tracker=True))


@pytest.mark.parametrize("kind", ["e2e", "hybrid"])
@pytest.mark.parametrize("policy", ["auto", "always", "never"])
def test_network_trackers_run_on_real_frames(e2e_bundle, frames, kind, policy):
    # random tracker weights: this checks plumbing (feeds, slots, ids), not accuracy
    p = P.build_pipeline(e2e_bundle, cfg(**{"tracker.kind": kind, "semantics.policy": policy}), fps=7.0)
    results = [P.step(f, p) for f in frames[:6]]
    p.close()
    assert p.tracker_kind == kind and all(r.tracks.track_id is not None for r in results)
    counts = p.semantics.counts.as_dict()
    assert sum(counts.values()) == 6
    if policy == "always":
        assert counts["fresh"] == 6
    if policy == "never":
        assert counts["skipped"] == 6


def test_tracker_tables_reach_the_built_tracker(bundle, e2e_bundle, caplog):
    p = P.build_pipeline(bundle, cfg(**{"tracker.bytetrack.track_buffer": 60, "tracker.output_score": 0.7}), fps=15.0)
    p.close()
    assert p.tracker.config.track_buffer == 60 and p.tracker.max_time_lost == 30  # 60 steps at 30 fps, here 15
    assert "[tracker] output_score: not read by the bytetrack tracker" in caplog.text
    caplog.clear()
    p = P.build_pipeline(e2e_bundle, cfg(**{"tracker.kind": "hybrid", "tracker.slots.new_score": 0.8,
                                            "tracker.min_area": 50.0}), fps=7.0)
    p.close()
    assert (p.tracker.cfg.new_score, p.tracker.cfg.min_area) == (0.8, 50.0) and "not read" not in caplog.text


def test_student_and_tracker_widths_must_agree(tmp_path, yolox_onnx):
    pytest.importorskip("vsdmot.models.tracker_head")
    from tinybundle import tiny_tracker_onnx

    root = make_bundle(tmp_path / "b", yolox_onnx)
    tiny_tracker_onnx(root / "tracker.onnx", semantic_dim=24)
    from tinybundle import write_manifest

    write_manifest(root)
    with pytest.raises(ValueError, match=r"student.onnx output 'semantic' is \(1, 16\).*expects \(1, 24\)"):
        P.build_pipeline(load_bundle(root), cfg(**{"tracker.kind": "e2e"}))


def test_bundle_without_student(tmp_path, yolox_onnx, monkeypatch):
    b = load_bundle(make_bundle(tmp_path / "b", yolox_onnx, student=False, extra={"tracker": "bytetrack"}))
    p = P.build_pipeline(b, cfg(**{"tracker.kind": "bytetrack"}))
    assert p.semantics.cfg.policy == "never"
    monkey = replace(b, manifest={**b.manifest, "tracker": "e2e"})
    with pytest.raises(Exception, match="student.onnx"):  # always needs it: BundleError names the file
        P.build_pipeline(monkey, cfg(**{"semantics.policy": "always", "tracker.kind": "e2e"}))
    monkeypatch.setattr(P, "make_tracker", lambda *a, **k: Recorder())
    p2 = P.build_pipeline(b, cfg(**{"semantics.policy": "auto", "tracker.kind": "e2e"}))
    assert p2.semantics.cfg.policy == "never" and p2.semantics.student is None  # auto degrades, logged


def test_build_runs_each_network_and_loads_the_solver_before_the_first_frame(e2e_bundle, frames, monkeypatch):
    # the first matched frame used to import scipy.optimize mid-stream: a 0.2-0.26 s stall on the demo's frame 2
    from vsdmot.runtime.tracking import assignment_solver

    runs = []
    real_open = P.open_backend

    def counting_open(*a, **k):
        b = real_open(*a, **k)
        infer = b.infer
        b.infer = lambda feed: (runs.append((b.path.name, {n: (v.shape, v.dtype) for n, v in feed.items()})), infer(feed))[1]
        return b

    monkeypatch.setattr(P, "open_backend", counting_open)
    assignment_solver.cache_clear()
    setup = cfg(**{"tracker.kind": "hybrid", "semantics.policy": "always"})
    p = P.build_pipeline(e2e_bundle, setup, fps=7.0)
    assert sorted(name for name, _ in runs) == ["detector.onnx"] * 2 + ["student.onnx"] * 2 + ["tracker.onnx"] * 2
    for b in p.backends:  # zeros of each input's own shape and dtype
        assert all(feed == {n: (s.shape, np.dtype(s.dtype)) for n, s in b.inputs.items()}
                   for name, feed in runs if name == b.path.name)
    assert assignment_solver.cache_info().currsize == 1
    warm = [P.step(f, p).tracks for f in frames[:6]]
    p.close()
    monkeypatch.setattr(P, "warm_up", lambda backends: 0.0)
    cold_p = P.build_pipeline(e2e_bundle, setup, fps=7.0)
    cold = [P.step(f, cold_p).tracks for f in frames[:6]]
    cold_p.close()
    for a, b in zip(warm, cold):  # the warm-up touched no tracker or semantic state
        np.testing.assert_array_equal(a.track_id, b.track_id)
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
