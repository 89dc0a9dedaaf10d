"""Step: simplify an ONNX graph (constant folding, dead nodes, shape ops) with onnxslim, else onnxsim.

The simplified graph must keep the same input and output names and shapes: the step checks
that and refuses (ValueError) a simplifier that changed the interface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsdmot.runtime.bundle import file_sha256

from .report import cached_step, fingerprint, tools_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimplifyConfig:
    tool: str = "auto"  # auto (onnxslim, else onnxsim) | onnxslim | onnxsim | none (copy)

    def __post_init__(self) -> None:
        if self.tool not in ("auto", "onnxslim", "onnxsim", "none"):
            raise ValueError(f"simplify tool: expected auto|onnxslim|onnxsim|none, got {self.tool!r}")


def simplify(onnx_path: str | Path, cfg: SimplifyConfig, out_path: str | Path) -> Path:
    def build(out: Path) -> dict[str, Any]:
        import onnx

        model = onnx.load(str(onnx_path))
        tool, slim = _simplify(model, cfg.tool)
        check_interface(model, slim)
        onnx.save(slim, str(out))
        return {"tool": tool, "nodes_before": len(model.graph.node), "nodes_after": len(slim.graph.node)}

    key = fingerprint(file_sha256(onnx_path), cfg, tools_key("onnxslim", "onnxsim", "onnx"))
    return cached_step("simplify", out_path, key, build)


def _simplify(model, tool: str):
    if tool in ("auto", "onnxslim"):
        try:
            import onnxslim

            return "onnxslim " + onnxslim.__version__, onnxslim.slim(model)
        except ImportError:
            if tool == "onnxslim":
                raise
    if tool in ("auto", "onnxsim"):
        import onnxsim

        slim, ok = onnxsim.simplify(model)
        if not ok:
            raise ValueError("onnxsim could not validate the simplified model")
        return "onnxsim " + onnxsim.__version__, slim
    return "none", model


def io_signature(model) -> dict[str, list]:
    """{name: [elem_type, dims]} for every graph input and output."""
    def sig(v):
        t = v.type.tensor_type
        return [t.elem_type, [d.dim_value or d.dim_param for d in t.shape.dim]]

    return {f"in:{v.name}": sig(v) for v in model.graph.input} | {f"out:{v.name}": sig(v) for v in model.graph.output}


def check_interface(before, after) -> None:
    a, b = io_signature(before), io_signature(after)
    a = {k: v for k, v in a.items() if not k.startswith("in:") or k[3:] not in _initializers(before)}
    if a != b:
        raise ValueError(f"simplify changed the network's interface: expected {a}, got {b}")


def _initializers(model) -> set[str]:
    return {i.name for i in model.graph.initializer}
