"""ONNX export for the project's torch networks: opset 17, static shapes, legacy (TorchScript)
exporter because the dynamo one emits opset 18."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
OPSET = 17


def export(model: nn.Module, inputs: dict[str, tuple[int, ...]], outputs: list[str], path: str | Path) -> Path:
    """Export `model` (eval mode, float32 zeros of the given static shapes) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.zeros(shape, dtype=torch.float32) for shape in inputs.values())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model, args, str(path), input_names=list(inputs), output_names=outputs,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    model.train(was_training)
    log.info("exported %s (opset %d)", path, OPSET)
    return path
