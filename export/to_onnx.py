"""Step: torch network -> ONNX, opset 17, static shapes, named I/O (tracker state explicit).

The torch artifact every torch-side step passes on is a `TorchNet`: the module, example inputs
of the exported shapes (names in order), output names, and what pruning must leave alone.
Uses the legacy (TorchScript) exporter: the dynamo one emits opset 18, and TensorRT 8.x
(JetPack 6.0's 8.6) wants <= 17.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .report import cached_step, fingerprint, tools_key

log = logging.getLogger(__name__)


@dataclass
class TorchNet:
    """A torch network on its way to a bundle (the artifact of prune/recover/to_onnx)."""

    name: str  # bundle role: detector | student | tracker (the ONNX file is <name>.onnx)
    module: nn.Module  # eval-mode network
    inputs: dict[str, torch.Tensor]  # example inputs in forward() order, static export shapes
    outputs: tuple[str, ...]  # output names in forward() order
    prune_roots: tuple[str, ...] = ()  # dotted submodule names whose channels may be pruned ("" = all)
    keep_layers: tuple[str, ...] = ()  # dotted names of layers whose OUTPUT channels must stay (heads)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance carried to the manifest

    def run(self, feed: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """Forward on `feed` (numpy or torch, by input name; default the example inputs)."""
        args = [torch.as_tensor((feed or self.inputs)[k]) for k in self.inputs]
        with torch.no_grad():
            out = self.module.eval()(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(self.outputs, out))


@dataclass(frozen=True)
class OnnxConfig:
    opset: int = 17  # TensorRT 8.x (JetPack 6.0's 8.6) parses <= 17; 10.x takes it too
    constant_folding: bool = True  # fold constants at export (simplify does the rest)


def module_sha256(module: nn.Module) -> str:
    """Hash of the architecture (repr) and every parameter and buffer (name, shape, bytes)."""
    h = hashlib.sha256(repr(module).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def net_key(net: TorchNet, *parts: Any) -> str:
    shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in net.inputs.items()}
    return fingerprint(net.name, module_sha256(net.module), shapes, net.outputs, *parts)


def to_onnx(net: TorchNet, cfg: OnnxConfig, out_path: str | Path) -> Path:
    """Export `net` to `out_path` (skipped when it is up to date for this network and config)."""
    def build(out: Path) -> dict[str, Any]:
        net.module.eval()
        with torch.no_grad():
            torch.onnx.export(net.module, tuple(net.inputs.values()), str(out), input_names=list(net.inputs),
                              output_names=list(net.outputs), opset_version=cfg.opset,
                              do_constant_folding=cfg.constant_folding, dynamo=False)
        params = sum(p.numel() for p in net.module.parameters())
        return {"opset": cfg.opset, "params": params, "inputs": {k: list(v.shape) for k, v in net.inputs.items()},
                "outputs": list(net.outputs)}

    return cached_step("to_onnx", out_path, net_key(net, cfg, tools_key("torch", "onnx")), build)
