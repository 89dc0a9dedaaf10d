"""Load the official YOLOX-nano ONNX (BN-fused) initializers into `models.yolox.YoloxNano`.

Mapping is by graph order: the ONNX Conv nodes appear in the order the official torch forward
ran them, so we record our own Conv2d execution order with hooks and pair them one to one,
checking every weight and bias shape. Person-only (C=1) keeps COCO class 0's cls rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsdmot.models.yolox import YoloxConfig, YoloxNano
from vsdmot.runtime.bundle import file_sha256

log = logging.getLogger(__name__)

SOURCE_NAME = "yolox_nano.onnx"
SOURCE_URL = "https://github.com/Megvii-BaseDetection/YOLOX (release 0.1.1rc0, yolox_nano.onnx)"
LICENSE = "Apache-2.0"


def _onnx_convs(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of every Conv node, in graph order."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return [(inits[n.input[1]], inits[n.input[2]]) for n in g.node if n.op_type == "Conv"]


def _torch_conv_order(model: nn.Module, size: int) -> list[nn.Conv2d]:
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return order


def load_onnx_weights(model: YoloxNano, onnx_path: str | Path, keep_classes: tuple[int, ...] = (0,)) -> None:
    """Copy the ONNX initializers into `model` in place. Raises ValueError on any shape mismatch."""
    src = _onnx_convs(Path(onnx_path))
    dst = _torch_conv_order(model, 64)
    if len(src) != len(dst):
        raise ValueError(f"{onnx_path}: {len(src)} Conv nodes, model has {len(dst)} convs")
    cls_preds = set(model.head.cls_preds)
    for i, ((w, b), conv) in enumerate(zip(src, dst)):
        if conv in cls_preds and conv.out_channels != w.shape[0]:
            w, b = w[list(keep_classes)], b[list(keep_classes)]
        if tuple(conv.weight.shape) != w.shape or tuple(conv.bias.shape) != b.shape:
            raise ValueError(f"conv {i}: ONNX weight {w.shape}, model expects {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(torch.from_numpy(w.copy()))
        conv.bias.data.copy_(torch.from_numpy(b.copy()))
    log.info("loaded %d convs from %s", len(src), onnx_path)


def convert(onnx_path: str | Path, num_classes: int = 1) -> tuple[YoloxNano, dict]:
    """A YoloxNano with the ONNX weights, and its provenance record."""
    model = YoloxNano(YoloxConfig(num_classes=num_classes)).eval()
    load_onnx_weights(model, onnx_path)
    prov = {
        "source": SOURCE_NAME,
        "source_sha256": file_sha256(onnx_path),
        "source_url": SOURCE_URL,
        "license": LICENSE,
        "classes": "COCO class 0 (person) only" if num_classes == 1 else "COCO 80",
    }
    return model, prov
