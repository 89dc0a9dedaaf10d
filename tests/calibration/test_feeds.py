"""Feeds: lazy per-network input dicts, as the runtime prepares frames; recorded pipeline inputs."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.calibration.feeds import DetectorFeeds, ImageList, StudentFeeds, check_feeds, record_feeds


@pytest.fixture
def images():
    g = np.random.default_rng(0)
    return ImageList([g.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(5)])


def test_detector_feeds_match_runtime_letterbox(images):
    from vsdmot.runtime.yolox import letterbox

    feeds = DetectorFeeds(images, 96)
    assert len(feeds) == 5
    want, _ = letterbox(images.image(2), 96)
    np.testing.assert_allclose(feeds[2]["images"], want, atol=1.0)  # same layout, pad and scale
    check_feeds(feeds, {"images": ((1, 3, 96, 96), "float32")})


def test_detector_feeds_rectangular_input(images):
    """(H, W) = (64, 96): the 48x64 frames fill 64x85 of it, padding on the right only."""
    from vsdmot.runtime.yolox import letterbox

    feeds = DetectorFeeds(images, (64, 96))
    want, _ = letterbox(images.image(1), (64, 96))
    np.testing.assert_allclose(feeds[1]["images"], want, atol=1.0)
    check_feeds(feeds, {"images": ((1, 3, 64, 96), "float32")})
    assert (feeds[1]["images"][0, :, :, 86:] == 114).all() and (feeds[1]["images"][0, :, :, :85] != 114).any()


@pytest.mark.parametrize("hw,size", [
    ((768, 1366), 416),  # 768 * 416 / 1366 = 233.9: the runtime keeps 233 rows, round() kept 234
    ((768, 1366), (256, 416)),
    ((1080, 1920), (256, 416)),
    ((481, 641), 416),
    ((500, 333), (416, 320)),
])
def test_detector_feeds_equal_runtime_letterbox_bit_for_bit(hw, size):
    """The calibration frames are the runtime's detector input exactly, on sizes where rounding
    and truncating the scaled side differ (a 1366x768 camera)."""
    from vsdmot.calibration.calibset import letterbox_u8
    from vsdmot.runtime.yolox import letterbox

    img = np.random.default_rng(1).integers(0, 255, (*hw, 3), np.uint8)
    want, scale = letterbox(img, size)
    np.testing.assert_array_equal(DetectorFeeds(ImageList([img]), size)[0]["images"], want)
    _, content = letterbox_u8(img, size)
    assert content == (int(hw[0] * scale), int(hw[1] * scale))


def test_student_feeds_and_slices(images):
    feeds = StudentFeeds(images, 32)
    assert feeds[-1]["image"].shape == (1, 3, 32, 32) and len(feeds[1:3]) == 2
    with pytest.raises(IndexError):
        feeds[5]


def test_check_feeds_names_the_problem(images):
    with pytest.raises(ValueError, match="input image: expected \\(1, 3, 16, 16\\)"):
        check_feeds(StudentFeeds(images, 32), {"image": ((1, 3, 16, 16), "float32")})


class Echo:
    def infer(self, feed):
        return {"y": feed["x"] * 2}


def test_record_feeds_copies_inputs_and_restores(images):
    a, b = Echo(), Echo()
    step = lambda frame: b.infer({"x": a.infer({"x": frame.astype(np.float32)})["y"]})  # noqa: E731
    rec = record_feeds(step, [images.image(i) for i in range(3)], {"det": a, "trk": b})
    assert len(rec["det"]) == 3 and rec["trk"][0]["x"].shape == (48, 64, 3)
    assert "infer" not in vars(a)  # the wrapper is gone
