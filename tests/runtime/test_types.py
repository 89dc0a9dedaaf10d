"""Detections and Frame validate their shapes once, at construction."""

import numpy as np
import pytest

from vsdmot.runtime.types import Detections, Frame, FrameResult, TensorSpec


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(xyxy=np.zeros((2, 4)), score=np.zeros(2)), None),
        (dict(xyxy=np.zeros((0, 4)), score=np.zeros(0), feature=np.zeros((0, 32))), None),  # empty frame
        (dict(xyxy=np.zeros((2, 4)), score=np.zeros(3)), "2 boxes but 3 scores"),
        (dict(xyxy=np.zeros((2, 4)), score=np.zeros(2), track_id=np.zeros(1)), "2 boxes but 1 track ids"),
        (dict(xyxy=np.zeros((2, 4)), score=np.zeros(2), feature=np.zeros((3, 8))), "expected \\(2, D\\)"),
        (dict(xyxy=np.zeros((2, 4)), score=np.zeros(2), feature=np.zeros(16)), "expected \\(2, D\\)"),
    ],
)
def test_detections_validate(kwargs, error):
    if error is None:
        d = Detections(**kwargs)
        assert d.xyxy.dtype == np.float32 and len(d) == len(kwargs["score"])
        if "feature" in kwargs:
            assert d.feature.shape == kwargs["feature"].shape
    else:
        with pytest.raises(ValueError, match=error):
            Detections(**kwargs)


def test_detections_select_and_xywh():
    d = Detections([[10, 20, 30, 60], [0, 0, 5, 5]], [0.9, 0.2], [7, 8], np.eye(2))
    kept = d.select(d.score > 0.5)
    assert len(kept) == 1 and kept.track_id.tolist() == [7] and kept.feature.shape == (1, 2)
    assert kept.xywh.tolist() == [[10, 20, 20, 40]]


@pytest.mark.parametrize(
    "image, index, error",
    [
        (np.zeros((4, 4, 3), np.uint8), 1, None),
        (np.zeros((4, 4), np.uint8), 1, "expected \\(H, W, 3\\) uint8"),
        (np.zeros((4, 4, 3), np.float32), 1, "expected \\(H, W, 3\\) uint8"),
        (np.zeros((4, 4, 3), np.uint8), 0, "expected >= 1"),
    ],
)
def test_frame_validates(image, index, error):
    if error is None:
        assert Frame(index, image, 0.0).index == index
    else:
        with pytest.raises(ValueError, match=error):
            Frame(index, image, 0.0)


def test_frame_result_rejects_unknown_semantic_state():
    with pytest.raises(ValueError, match="fresh"):
        FrameResult(1, 0.0, 1.0, 0.0, "maybe", Detections.empty(with_ids=True))


def test_tensor_spec_names_input_expected_and_got():
    spec = TensorSpec("images", (1, 3, -1, 416), "float32")
    spec.check(np.zeros((1, 3, 7, 416), np.float32))
    with pytest.raises(ValueError, match=r"input 'images': expected shape \(1, 3, -1, 416\) float32, got \(1, 3, 7, 7\) float32"):
        spec.check(np.zeros((1, 3, 7, 7), np.float32))
