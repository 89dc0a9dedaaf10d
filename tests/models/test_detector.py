"""Converted YOLOX-nano matches the official ONNX in onnxruntime; detector.onnx exports and matches."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from vsdmot.models.convert_yolox import convert  # noqa: E402
from vsdmot.models.detector import Detector, export_onnx, from_yolox_onnx  # noqa: E402


def _letterbox(img: np.ndarray, s: int = 416) -> np.ndarray:
    r = min(s / img.shape[0], s / img.shape[1])
    h, w = int(img.shape[0] * r), int(img.shape[1] * r)
    pad = np.full((s, s, 3), 114, np.uint8)
    pad[:h, :w] = cv2.resize(img, (w, h))
    return pad.transpose(2, 0, 1)[None].astype(np.float32)  # (1,3,S,S) BGR 0..255


@pytest.fixture(scope="module")
def pets_frame(pets_dir) -> np.ndarray:
    cap = cv2.VideoCapture(str(pets_dir / "PETS09-S2L1.avi"))
    ok, img = cap.read()
    cap.release()
    assert ok
    return _letterbox(img)


@pytest.mark.parametrize("num_classes", [80, 1])
def test_converter_parity_with_onnxruntime(yolox_onnx, pets_frame, num_classes):
    ref = ort.InferenceSession(str(yolox_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": pets_frame})[0]
    model, prov = convert(yolox_onnx, num_classes)
    with torch.no_grad():
        out, _ = model(torch.from_numpy(pets_frame))
    assert out.shape == (1, 3549, 5 + num_classes)
    np.testing.assert_allclose(out.numpy(), ref[..., : 5 + num_classes], atol=1e-3, rtol=1e-4)
    assert len(prov["source_sha256"]) == 64 and prov["license"] == "Apache-2.0"
    assert (ref[0, :, 4] * ref[0, :, 5]).max() > 0.5  # a real frame with people in it


def test_converter_rejects_mismatched_architecture(yolox_onnx):
    from vsdmot.models.convert_yolox import load_onnx_weights
    from vsdmot.models.yolox import YoloxConfig, YoloxNano

    with pytest.raises(ValueError, match="conv"):
        load_onnx_weights(YoloxNano(YoloxConfig(width=0.5)), yolox_onnx)


def test_detector_onnx_export_static_opset17(tmp_path, yolox_onnx, pets_frame):
    import onnx

    det, _ = from_yolox_onnx(yolox_onnx)
    path = export_onnx(det, tmp_path / "detector.onnx")
    m = onnx.load(str(path))
    assert m.opset_import[0].version == 17
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*m.graph.input, *m.graph.output]}
    assert dims == {"images": [1, 3, 416, 416], "output": [1, 3549, 6], "embed": [1, 3549, 32]}
    out, emb = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": pets_frame})
    with torch.no_grad():
        tout, temb = det(torch.from_numpy(pets_frame))
    np.testing.assert_allclose(out, tout.numpy(), atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(emb, temb.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)


def test_shipped_detector_loads_with_provenance():
    from vsdmot.models.detector import DEFAULT_WEIGHTS, load_detector

    det, meta = load_detector(DEFAULT_WEIGHTS)
    assert isinstance(det, Detector) and det.cfg.num_classes == 1
    assert meta["provenance"]["license"] == "Apache-2.0"
    assert (DEFAULT_WEIGHTS.parent / "NOTICE").read_text().count("Apache License, Version 2.0") >= 1
