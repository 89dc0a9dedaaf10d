"""Inference backends behind one typed protocol. Heavy imports happen inside each backend.

Every backend takes a feed `{input name: array}` and returns `{output name: array}`; a feed with
a wrong name, shape or dtype raises ValueError naming the input, what was expected and what came.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .types import TensorSpec

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int8)": "int8"}


@runtime_checkable
class Backend(Protocol):
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def check_feed(specs: Mapping[str, TensorSpec], feed: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError for a missing, unexpected, mis-shaped or mis-typed input."""
    missing, extra = set(specs) - set(feed), set(feed) - set(specs)
    if missing or extra:
        raise ValueError(f"feed: expected inputs {sorted(specs)}, got {sorted(feed)}")
    for name, spec in specs.items():
        spec.check(np.asarray(feed[name]))


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU, or the CUDA / TensorRT execution providers where installed."""

    def __init__(self, onnx_path: str | os.PathLike, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0 = ORT's default (all cores)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        chosen = [p for p in (providers or available) if p in available] or ["CPUExecutionProvider"]
        self.path = Path(onnx_path)
        self._sess = ort.InferenceSession(str(self.path), opts, providers=chosen)
        self.providers = self._sess.get_providers()
        self.inputs = {i.name: _spec(i) for i in self._sess.get_inputs()}
        self.outputs = {o.name: _spec(o) for o in self._sess.get_outputs()}
        log.debug("onnxruntime %s on %s", self.path.name, self.providers)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.inputs, feed)
        values = self._sess.run(list(self.outputs), dict(feed))
        return dict(zip(self.outputs, values))

    def close(self) -> None:
        self._sess = None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorSpec(node.name, shape, _ORT_DTYPES.get(node.type, node.type))
