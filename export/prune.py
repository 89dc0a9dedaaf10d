"""Step: structured channel pruning with torch-pruning's DepGraph.

Only channels of modules under `TorchNet.prune_roots` are removed (the detector's backbone and
neck, the student's features); layers in `keep_layers` (prediction heads, embedding
projections, the student's output head) and every module outside the roots keep their output
channels, so the ONNX interface never changes. Importance is the group L2 magnitude; channel
counts are rounded to multiples of `round_to` (TensorRT picks faster INT8 kernels for them).
The output is the pruned module, pickled whole (its shapes differ from the class defaults).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .report import cached_step
from .to_onnx import TorchNet, net_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig:
    ratio: float = 0.5  # fraction of prunable channels removed per layer (0 = unpruned copy)
    round_to: int = 8  # keep channel counts multiples of this
    iterative_steps: int = 1  # torch-pruning steps to reach the ratio

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 0.95:
            raise ValueError(f"prune ratio: expected 0 <= ratio < 0.95, got {self.ratio}")
        if self.round_to < 1 or self.iterative_steps < 1:
            raise ValueError(f"prune: round_to and iterative_steps must be >= 1, got {self.round_to}, "
                             f"{self.iterative_steps}")


def prune(net: TorchNet, cfg: PruneConfig, out_path: str | Path) -> Path:
    """Write the pruned copy of `net.module` to `out_path` (torch.save of the module)."""
    def build(out: Path) -> dict[str, Any]:
        module, details = prune_module(net, cfg)
        torch.save(module, out)
        return details

    return cached_step("prune", out_path, net_key(net, cfg), build)


def load_module(path: str | Path) -> nn.Module:
    """A module written by `prune` or `recover` (a pickled module: trust only your own files)."""
    return torch.load(path, map_location="cpu", weights_only=False).eval()


def prune_module(net: TorchNet, cfg: PruneConfig) -> tuple[nn.Module, dict[str, Any]]:
    module = copy.deepcopy(net.module).eval()
    before = count_params(module)
    if cfg.ratio > 0:
        import torch_pruning as tp

        example = tuple(net.inputs.values())
        pruner = tp.pruner.MetaPruner(
            module, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=cfg.ratio,
            iterative_steps=cfg.iterative_steps, ignored_layers=ignored_layers(module, net), round_to=cfg.round_to)
        for _ in range(cfg.iterative_steps):
            pruner.step()
    after = count_params(module)
    log.info("prune %s: %d -> %d parameters (ratio %.2f)", net.name, before, after, cfg.ratio)
    return module, {"ratio": cfg.ratio, "params_before": before, "params_after": after,
                    "roots": list(net.prune_roots), "kept": list(net.keep_layers)}


def ignored_layers(module: nn.Module, net: TorchNet) -> list[nn.Module]:
    """Layers whose output channels must stay: outside every prune root, or in keep_layers."""
    def under(name: str, prefixes) -> bool:
        return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)

    out = []
    for name, m in module.named_modules():
        if not list(m.parameters(recurse=False)) or not isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d,
                                                                       nn.MultiheadAttention)):
            continue
        if not under(name, net.prune_roots) or under(name, net.keep_layers):
            out.append(m)
    return out


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
