"""Detection-level agreement of a detector with its reference (export/det_agreement.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vsdmot.export.det_agreement import AgreementConfig, agreement, detection_agreement
from vsdmot.runtime.yolox import anchor_grid

S = 64  # input size: anchors of strides 8, 16, 32


def raw(people: list[int], embed_sign: float = 1.0) -> dict[str, np.ndarray]:
    """A YOLOX raw output (1, A, 6) with a confident 10x20 px person at each listed anchor, and embeds."""
    _, strides = anchor_grid(S)  # (A, 1)
    a = len(strides)
    out = np.zeros((1, a, 6), np.float32)  # objectness and class probability 0: no person anywhere
    out[0, :, 2:4] = np.log(np.array([[10.0, 20.0]]) / strides)  # (A, 2) log size in stride units
    emb = np.tile(np.eye(4, dtype=np.float32)[0], (1, a, 1))  # (1, A, 4)
    for i in people:
        out[0, i, 4:6] = 1.0
        emb[0, i] = [1.0, embed_sign, 0.0, 0.0]
    return {"output": out, "embed": emb}


FEED = [{"images": np.zeros((1, 3, S, S), np.float32)}]


def test_identical_detectors_agree_fully():
    same = lambda feed: raw([5, 40])  # noqa: E731  two far-apart anchors on the stride-8 grid
    res = agreement(same, same, FEED, AgreementConfig())
    assert res["f1"] == 1.0 and res["reference_detections"] == 2 and res["embed_cosine_at_people"] == pytest.approx(1)


def test_a_lost_person_and_a_turned_embedding_are_counted():
    ref = lambda feed: raw([5, 40])  # noqa: E731
    cand = lambda feed: raw([5], embed_sign=-1.0)  # noqa: E731  one person lost, embeddings rotated 90 degrees
    res = agreement(ref, cand, FEED, AgreementConfig())
    assert res["f1"] == pytest.approx(2 * 1 / 3, abs=1e-3) and res["detections"] == 1
    # at anchor 5: [1, 1] vs [1, -1] -> 0; at 40 (lost): [1, 1] vs the background row [1, 0] -> 1/sqrt(2)
    assert res["embed_cosine_at_people"] == pytest.approx((0 + 2 ** -0.5) / 2, abs=1e-3)


def test_the_step_on_the_shipped_detector_is_cached(tmp_path):
    from helpers import REPO, frames
    from vsdmot.calibration.feeds import DetectorFeeds, ImageList

    det = REPO / "runtime" / "assets" / "default" / "detector.onnx"
    feeds = DetectorFeeds(ImageList(frames(4, 416)), 416)
    out = detection_agreement(det, det, feeds, tmp_path / "a.json", AgreementConfig(frames=4))
    res = json.loads(out.read_text())
    assert res["f1"] == 1.0 and res["reference_detections"] > 0 and res["embed_cosine_at_people"] == pytest.approx(1)
    mtime = out.stat().st_mtime_ns
    detection_agreement(det, det, feeds, tmp_path / "a.json", AgreementConfig(frames=4))
    assert out.stat().st_mtime_ns == mtime  # same inputs: not recomputed

    labelled = Labelled(list(feeds), ["/d/PETS09-S2L1:1-600"] * 2 + ["/d/MOT17-04-FRCNN"] * 2)
    out = detection_agreement(det, det, labelled, tmp_path / "b.json", AgreementConfig(frames=4))
    step = json.loads(open(f"{out}.step.json").read())["details"]
    assert set(json.loads(out.read_text())["by_source"]) == {"PETS09-S2L1:1-600", "MOT17-04-FRCNN"}
    assert step["f1_by_source"] == "MOT17-04-FRCNN 1.000, PETS09-S2L1:1-600 1.000"  # one report cell


def test_a_network_without_the_yolox_layout_is_skipped_with_the_reason():
    from vsdmot.export.det_agreement import layout_problem

    assert layout_problem(raw([5]), FEED[0]) is None
    assert "not YOLOX's (1, 84" in layout_problem({"output": np.zeros((1, 256, 6))}, FEED[0])


class Labelled(list):
    """Feeds that carry a calibration-set manifest, as DetectorFeeds over a CalibSet do."""

    def __init__(self, feeds, sources):
        super().__init__(feeds)
        self.frames = type("Frames", (), {"manifest": {"frames": [{"source": s} for s in sources]}})


def test_agreement_is_also_given_per_calibration_source():
    from vsdmot.export.det_agreement import source_labels

    far, near = np.zeros((1, 3, S, S), np.float32), np.ones((1, 3, S, S), np.float32)  # near: marked by 1s
    feeds = Labelled([{"images": x} for x in (far, far, near, near)],
                     ["/d/PETS09-S2L1:1-600", "/d/PETS09-S2L1:1-600", "/d/MOT17/MOT17-04", "/d/MOT17/MOT17-04"])
    ref = lambda feed: raw([5, 40])  # noqa: E731
    cand = lambda feed: raw([5] if feed["images"].max() else [5, 40])  # noqa: E731  loses a near person
    labels = source_labels(feeds, 64)
    res = agreement(ref, cand, feeds, AgreementConfig(), labels)
    assert labels == ["PETS09-S2L1:1-600"] * 2 + ["MOT17-04"] * 2
    assert res["by_source"]["PETS09-S2L1:1-600"]["f1"] == 1.0
    assert res["by_source"]["MOT17-04"]["f1"] == pytest.approx(2 * 2 / 6, abs=1e-3)  # 2 of 4 found, 2 found
    assert res["f1"] == pytest.approx(2 * 6 / 14, abs=1e-3) and res["frames"] == 4
    assert source_labels(list(feeds), 64) is None  # plain feeds: no breakdown


def test_one_detection_between_two_people_matches_one_of_them():
    """Two people 8 px apart (both kept by NMS) and the INT8 detector's one box between them, IoU 0.6 with
    each: counting every reference box with a match at IoU >= 0.5 matched both, and F1 came out 4/3."""
    def boxes(offsets: dict[int, float]):
        out = raw([])["output"]
        _, strides = anchor_grid(S)
        out[0, :, 2:4] = np.log(np.array([[16.0, 20.0]]) / strides)  # 16 x 20 px boxes
        for i, dx in offsets.items():
            out[0, i, 0], out[0, i, 4:6] = dx, 1.0  # x offset in strides
        return lambda feed: {"output": out}

    res = agreement(boxes({10: 0.0, 11: 0.0}), boxes({10: 0.5}), FEED, AgreementConfig())
    assert res["reference_detections"] == 2 and res["detections"] == 1
    assert res["f1"] == pytest.approx(2 * 1 / 3, abs=1e-4)  # one match, one person lost
