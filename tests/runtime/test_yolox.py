"""YOLOX letterbox, decode and detector: synthetic head outputs with known answers, and the real
yolox_nano.onnx on real frames against the ground truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vsdmot.runtime.backends import OnnxRuntimeBackend
from vsdmot.runtime.mot import read_rows
from vsdmot.runtime.sources import open_sequence
from vsdmot.runtime.logs import log_once
from vsdmot.runtime.tracking import box_iou
from vsdmot.runtime.types import TensorSpec
from vsdmot.runtime.yolox import (PAD_VALUE, YoloxDetector, anchor_grid, decode, fitted_size, input_hw, letterbox, nms,
                                  detail_hint, padding_hint, shrink_warning, size_text)


@pytest.mark.parametrize(
    "hw, size, scale, content",
    [
        ((576, 768), 416, 416 / 768, (312, 416)),  # PETS: landscape, pad at the bottom
        ((480, 640), 416, 0.65, (312, 416)),
        ((600, 300), 416, 416 / 600, (416, 208)),  # portrait, pad on the right
        ((1080, 1920), 640, 1 / 3, (360, 640)),
    ],
)
def test_letterbox(hw, size, scale, content):
    img = np.zeros((*hw, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    tensor, got_scale = letterbox(img, size)
    assert tensor.shape == (1, 3, size, size) and tensor.dtype == np.float32
    assert got_scale == pytest.approx(scale)
    h, w = content
    np.testing.assert_array_equal(tensor[0, :, 0, 0], [10, 20, 30])  # BGR kept, 0..255, no mean/std
    assert (tensor[0, :, h:, :] == PAD_VALUE).all() and (tensor[0, :, :, w:] == PAD_VALUE).all()
    assert (tensor[0, :, :h, :w] != PAD_VALUE).all()


@pytest.mark.parametrize("hw, size, scale, content", [
    ((480, 640), (320, 416), 0.65, (312, 416)),  # 4:3 into 416x320: 8 padding rows instead of 104
    ((1080, 1920), (256, 416), 416 / 1920, (234, 416)),  # 16:9 into 416x256
    ((1080, 1920), (320, 416), 416 / 1920, (234, 416)),  # 16:9 into a 4:3 input: the width binds
    ((480, 640), (256, 416), 256 / 480, (256, 341)),  # 4:3 into a 16:9 input: the height binds, pad right
])
def test_letterbox_rectangular(hw, size, scale, content):
    tensor, got_scale = letterbox(np.full((*hw, 3), 7, np.uint8), size)
    assert tensor.shape == (1, 3, *size) and got_scale == pytest.approx(scale)
    h, w = content
    assert (tensor[0, :, :h, :w] == 7).all()
    assert (tensor[0, :, h:, :] == PAD_VALUE).all() and (tensor[0, :, :, w:] == PAD_VALUE).all()


def test_input_sizes_spelled_both_ways():
    assert input_hw(416) == (416, 416) and input_hw((256, 416)) == (256, 416) and input_hw(np.int64(320)) == (320, 320)
    assert size_text((256, 416)) == "416x256" and size_text(416) == "416x416"  # W x H, as cameras say it


@pytest.mark.parametrize("frame, size, fitted", [
    ((1080, 1920), 416, (256, 416)), ((480, 640), 416, (320, 416)), ((576, 768), (416, 416), (320, 416)),
    ((1920, 1080), 416, (416, 256)),  # portrait camera
    ((480, 640), (320, 416), (320, 416)), ((500, 500), 416, (416, 416)),
])
def test_fitted_size_keeps_the_longer_side_and_the_frames_aspect(frame, size, fitted):
    assert fitted_size(frame, size) == fitted


def test_padding_hint_only_when_a_fitted_input_saves_work():
    hint = padding_hint((1080, 1920), 416)
    assert "detector input 416x416 on 1920x1080 frames: 44% of each input is padding" in hint
    assert "--input-size 416x256" in hint
    assert padding_hint((480, 640), (320, 416)) is None  # 2.5 % padding: already fitted
    assert padding_hint((500, 500), 416) is None and padding_hint((400, 416), 416) is None  # < 20 %


def test_shrink_warning_when_a_camera_shaped_input_meets_other_frames():
    warn = shrink_warning((480, 640), (256, 416))  # a 16:9 bundle on 4:3 video
    assert "640x480 frames are scaled to 341x256, 18% smaller than in a 416x416 input" in warn
    assert "a bundle made by `vsdmot-export --fp32 --input-size 416x320 --out DIR`" in warn
    assert shrink_warning((1080, 1920), (320, 416)) is None  # 4:3 bundle on 16:9: same scale, only padding
    assert shrink_warning((480, 640), 416) is None and shrink_warning((1080, 1920), (256, 416)) is None


def test_shrink_warning_not_for_frames_shown_at_full_size():
    # 640x480 frames fill 640x480 of an 832x480 input: a larger square input would only upsample them
    assert shrink_warning((480, 640), (480, 832)) is None


def test_detail_hint_when_the_input_shows_frames_at_a_fraction_of_their_size():
    hint = detail_hint((1080, 1920), 416)
    assert "416x416 shows 1920x1080 frames at 0.22x their size" in hint
    assert "`vsdmot-export --fp32 --input-size 832x480 --out DIR` (then --bundle DIR) shows them 2.0x larger for 2.3x " \
           "the detector's work" in hint  # a command to copy: --fp32, seconds; the default --int8 takes minutes
    assert "`vsdmot-export --int8 --input-size 832x480 --out DIR`" in detail_hint((1080, 1920), 416, precision="int8")
    assert "--input-size 480x832 " in detail_hint((1920, 1080), 416)  # portrait
    assert "3.8x the detector's work" in detail_hint((1080, 1920), (256, 416))  # from a 16:9 bundle
    for frame in ((480, 640), (576, 768)):  # the kit's clips: 0.65x, 0.54x
        assert detail_hint(frame, 416) is None
    assert detail_hint((1080, 1920), (480, 832)) is None  # already 0.43x
    assert "--input-size 128x96" in detail_hint((300, 400), 64)  # small inputs double too
    pano = detail_hint((576, 3072), 416)  # 0.14x: was silent because 832x160 is also less work, and the padding
    assert "--input-size 832x160" in pano and "2.0x larger for 0.8x the detector's work" in pano  # hint cut to 416x96


def test_a_panorama_gets_the_detail_hint_not_a_padding_cut(caplog):
    class Backend:
        kind = "onnxruntime"

    det = object.__new__(YoloxDetector)
    det.config, det.backend = type("C", (), {"input_size": (416, 416)})(), Backend()
    log_once.cache_clear()
    with caplog.at_level("INFO", logger="vsdmot.runtime.yolox"):
        det._advise((576, 3072))
    assert "--input-size 832x160" in caplog.text and "416x96" not in caplog.text


def test_letterbox_rejects_gray():
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) image"):
        letterbox(np.zeros((10, 10), np.uint8), 416)


@pytest.mark.parametrize("size, anchors", [(416, 3549), (640, 8400), (320, 2100)])
def test_anchor_grid_order(size, anchors):
    grid, stride = anchor_grid(size)
    n8 = (size // 8) ** 2
    assert len(grid) == anchors and stride[0, 0] == 8 and stride[n8, 0] == 16 and stride[-1, 0] == 32
    np.testing.assert_array_equal(grid[1], [1, 0])  # x runs fastest
    np.testing.assert_array_equal(grid[size // 8], [0, 1])


def test_anchor_grid_rectangular_is_row_major_per_level():
    grid, stride = anchor_grid((256, 416))  # 32 x 52 cells at stride 8
    assert len(grid) == 32 * 52 + 16 * 26 + 8 * 13
    np.testing.assert_array_equal(grid[1], [1, 0])
    np.testing.assert_array_equal(grid[52], [0, 1])  # a row is W / 8 cells long, not H / 8
    np.testing.assert_array_equal(grid[32 * 52 - 1], [51, 31])
    assert stride[32 * 52, 0] == 16 and stride[-1, 0] == 32


def _raw(size=416, classes=80):
    return np.zeros((1, len(anchor_grid(size)[0]), 5 + classes), np.float32)


def test_decode_one_anchor():
    raw = _raw()
    k = 52 * 52 + 5 * 26 + 3  # stride 16, cell x=3, y=5
    raw[0, k, :5] = [0.5, 0.5, np.log(2), np.log(4), 0.8]
    raw[0, k, 5], raw[0, k, 6] = 0.5, 0.9  # person, bicycle
    xyxy, score, idx = decode(raw, 416, score_thr=0.1)
    assert idx.tolist() == [k]
    np.testing.assert_allclose(xyxy[0], [40, 56, 72, 120], atol=1e-4)  # centre (56, 88), 32 x 64
    assert score[0] == pytest.approx(0.4)
    _, score1, _ = decode(raw, 416, class_id=1, score_thr=0.1)
    assert score1[0] == pytest.approx(0.72)


def test_decode_all_anchors_by_default():
    xyxy, score, idx = decode(_raw(), 416)
    assert len(xyxy) == 0  # every score is 0, not > 0
    raw = _raw()
    raw[0, :, 4:6] = 0.5
    xyxy, score, idx = decode(raw, 416)
    assert xyxy.shape == (3549, 4) and (idx == np.arange(3549)).all() and np.allclose(score, 0.25)


@pytest.mark.parametrize("shape", [(1, 3548, 85), (1, 3549, 5)])
def test_decode_wrong_layout(shape):
    with pytest.raises(ValueError, match="decode: expected"):
        decode(np.zeros(shape, np.float32), 416)


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 20], [1, 0, 11, 20], [50, 50, 60, 70]], np.float32)
    keep = nms(boxes, np.array([0.6, 0.9, 0.5], np.float32), 0.45)
    assert keep.tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45).shape == (0,)


@pytest.fixture(scope="module")
def detector(yolox_onnx):
    return YoloxDetector(OnnxRuntimeBackend(yolox_onnx, threads=1))


@pytest.mark.parametrize("fixture, frames", [("tud_dir", (1, 40)), ("pets_dir", (1, 300)), ("mot17_dir", (1, 4))])
def test_detector_finds_the_annotated_people(request, detector, fixture, frames):
    seq = open_sequence(request.getfixturevalue(fixture))
    gt = read_rows(seq.gt_path)
    for frame in itertools.islice(seq.frames(), frames[1] - 1, frames[1]):
        dets = detector.detect(frame.image)
        g = gt.at(frame.index).select(gt.at(frame.index).conf != 0)
        g_xyxy = np.c_[g.xywh[:, :2], g.xywh[:, :2] + g.xywh[:, 2:]]
        h, w = frame.image.shape[:2]
        assert (dets.xyxy >= 0).all() and (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all()
        assert (dets.score > 0.1).all() and dets.feature is None
        hit = box_iou(g_xyxy, dets.xyxy[dets.score > 0.3]).max(axis=1, initial=0) >= 0.5
        assert hit.mean() >= 0.6, (frame.index, hit)  # YOLOX-nano recall on annotated people


def test_detector_logs_the_padding_hint_once_per_frame_size(yolox_onnx, caplog):
    """Once per frame size and process: the export's gate builds a detector per case, and logged
    the same hint for each of them."""
    from vsdmot.runtime.logs import log_once

    caplog.set_level("INFO", logger="vsdmot.runtime.yolox")
    log_once.cache_clear()  # what earlier tests in this process logged
    for _ in range(2):  # a second detector on the same frames says nothing new
        detector = YoloxDetector(OnnxRuntimeBackend(yolox_onnx, threads=1))  # fresh: no frame seen yet
        for shape in ((480, 640, 3), (480, 640, 3), (1080, 1920, 3), (416, 416, 3)):
            detector.detect(np.zeros(shape, np.uint8))
    hints = [r.getMessage() for r in caplog.records if "is padding" in r.getMessage()]
    assert len(hints) == 2 and "--input-size 416x320" in hints[0] and "--input-size 416x256" in hints[1]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # a square input never shrinks frames
    detail = [r.getMessage() for r in caplog.records if "their size" in r.getMessage()]
    assert len(detail) == 1 and "1920x1080 frames at 0.22x" in detail[0]  # the 1080p frames only


class EmbedBackend:
    """The real detector plus an `embed` output whose rows are (anchor index, 2 * index)."""

    def __init__(self, inner):
        self.inner, self.inputs = inner, inner.inputs
        self.outputs = {**inner.outputs, "embed": TensorSpec("embed", (1, 3549, 2), "float32")}

    def infer(self, feed):
        out = self.inner.infer(feed)
        idx = np.arange(3549, dtype=np.float32)
        return {**out, "embed": np.stack([idx, 2 * idx], 1)[None]}

    def close(self):
        self.inner.close()


def test_embed_rows_follow_the_kept_anchors(yolox_onnx, tud_dir):
    inner = OnnxRuntimeBackend(yolox_onnx, threads=1)
    frame = next(iter(open_sequence(tud_dir).frames()))
    dets = YoloxDetector(EmbedBackend(inner)).detect(frame.image)
    assert dets.feature.shape == (len(dets), 2) and len(dets) > 3
    tensor, scale = letterbox(frame.image, 416)
    xyxy, _, idx = decode(inner.infer({"images": tensor})["output"], 416)
    anchors = dets.feature[:, 0].astype(int)
    np.testing.assert_allclose(dets.feature[:, 1], 2 * anchors)
    expected = np.clip(xyxy[np.searchsorted(idx, anchors)] / scale, 0, [640, 480, 640, 480])
    np.testing.assert_allclose(dets.xyxy, expected, atol=1e-3)


@pytest.fixture(scope="module")
def rect_yolox(yolox_onnx, tmp_path_factory):
    """YOLOX-nano's own weights (our converted detector) exported at 416x416 and at 416x320."""
    torch = pytest.importorskip("torch")
    from vsdmot.models.detector import from_yolox_onnx

    model = from_yolox_onnx(yolox_onnx)[0]
    out = {}
    for hw in ((416, 416), (320, 416)):
        path = tmp_path_factory.mktemp("rect") / f"det_{hw[1]}x{hw[0]}.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, *hw),), str(path), input_names=["images"],
                          output_names=["output", "embed"], opset_version=17, dynamo=False)
        out[hw] = YoloxDetector(OnnxRuntimeBackend(path, threads=1), hw)
    return out


def test_rectangular_input_finds_the_square_inputs_people(rect_yolox, tud_dir):
    """4:3 frames: a 416x320 input holds the same 416x312 content as 416x416 (only the padding
    rows differ), so the boxes must agree; it is what `--input-size 416x320` buys speed with."""
    seq = open_sequence(tud_dir)
    for frame in itertools.islice(seq.frames(), 0, 60, 20):
        square, rect = (rect_yolox[hw].detect(frame.image) for hw in ((416, 416), (320, 416)))
        keep_s, keep_r = square.score > 0.3, rect.score > 0.3
        assert keep_s.sum() >= 3
        iou = box_iou(square.xyxy[keep_s], rect.xyxy[keep_r]).reshape(keep_s.sum(), keep_r.sum())
        assert (iou.max(1, initial=0) >= 0.9).mean() >= 0.9, frame.index
        assert abs(int(keep_s.sum()) - int(keep_r.sum())) <= 1
