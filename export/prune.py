"""Step: structured channel pruning with torch-pruning's DepGraph.

Only channels of modules under `TorchNet.prune_roots` are removed (the detector's backbone and
neck, the student's features); layers in `keep_layers` (prediction heads, embedding
projections, the student's output head) and every module outside the roots keep their output
channels, so the ONNX interface never changes. Channel counts can be rounded to multiples of
`round_to` (TensorRT picks faster INT8 kernels for them; default 1, since 8 halves the nano's
16-channel layers). The output is the pruned module,
pickled whole (its shapes differ from the class defaults).

Why not plain weight magnitude: the shipped detector has BatchNorm folded into its convs, so a
channel's scale lives partly in its bias and in its consumers' weights. Its channels carry large,
nearly constant activations (a folded BN shift: e.g. 5.0 +- 0.7 in CSPDarknet dark3) read by
consumers with *small* weights; group magnitude picks exactly those first, and removing one such
channel at ratio 0.01 took the detector's best score on a PETS frame from 0.86 to 0.005. The
dependency graph itself is right (pruning equals zeroing the same channels at their producers,
to 3e-5, for every group at 1 % and 25 %). So by default (`importance="activation"`):
- importance of a channel = sum over the layers reading it of ||W[:, c]||_2 * std(input c),
  the output energy it really carries, measured on `stat_frames` real feeds;
- compensation (`compensate="regress"`, export/channel_stats.py): each removed channel is
  predicted from the kept ones by least squares over the measured activations and folded into
  its consumers' kept weights and bias, so what the next layer relied on (at least the constant,
  `"mean"`) survives the removal.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .report import cached_step, tools_key
from .to_onnx import TorchNet, net_key

log = logging.getLogger(__name__)


# network name -> (prefix, scale of ratio): per-stage pruning. Empty: no measured profile beat uniform
# pruning (docs/export.md, "Where the MACs are"); `profile="auto"` uses an entry once one does.
PROFILES: dict[str, tuple[tuple[str, float], ...]] = {}


@dataclass(frozen=True)
class PruneConfig:
    ratio: float = 0.5  # fraction of prunable channels removed per layer (0 = unpruned copy)
    round_to: int = 1  # keep channel counts multiples of this (8 floors a 16-channel nano layer to 8 at any ratio)
    iterative_steps: int = 1  # torch-pruning steps to reach the ratio
    importance: str = "activation"  # activation (readers' weights x activation std, from feeds) | magnitude
    compensate: str = "regress"  # regress (least squares from kept channels) | mean (bias only) | none
    stat_frames: int = 32  # feeds for the activation statistics (half evenly spaced, half per source; + zoomed)
    profile: str = "auto"  # auto: the network's PROFILES entry (per-stage scales of `ratio`) | uniform

    def scales(self, name: str) -> tuple[tuple[str, float], ...]:
        """(module-name prefix, scale) pairs for network `name`: a layer under a prefix loses
        ratio x scale of its channels (0: none), the longest matching prefix wins."""
        return PROFILES.get(name, ()) if self.profile == "auto" else ()

    def __post_init__(self) -> None:
        if self.compensate not in ("regress", "mean", "none"):
            raise ValueError(f"prune compensate: expected regress, mean or none, got {self.compensate!r}")
        if self.profile not in ("auto", "uniform"):
            raise ValueError(f"prune profile: expected auto or uniform, got {self.profile!r}")
        if self.importance not in ("activation", "magnitude"):
            raise ValueError(f"prune importance: expected activation or magnitude, got {self.importance!r}")
        if not 0.0 <= self.ratio < 0.95:
            raise ValueError(f"prune ratio: expected 0 <= ratio < 0.95, got {self.ratio}")
        if self.round_to < 1 or self.iterative_steps < 1:
            raise ValueError(f"prune: round_to and iterative_steps must be >= 1, got {self.round_to}, "
                             f"{self.iterative_steps}")


def prune(net: TorchNet, cfg: PruneConfig, out_path: str | Path, feeds: Sequence[Mapping[str, Any]] = (),
          feeds_id: str = "") -> Path:
    """Write the pruned copy of `net.module` to `out_path` (torch.save of the module).

    `feeds` (real inputs by name) give the activation statistics; without them the example
    inputs are used, which for an image network means blank frames: pass real ones."""
    def build(out: Path) -> dict[str, Any]:
        module, details = prune_module(net, cfg, feeds)
        torch.save(module, out)
        return details

    key = net_key(net, cfg, cfg.scales(net.name), net.prune_roots, net.keep_layers, feeds_id or len(feeds),
                  tools_key("torch-pruning", "torch"))
    return cached_step("prune", out_path, key, build)  # roots, kept layers, profile: which channels may go


def load_module(path: str | Path) -> nn.Module:
    """A module written by `prune` or `recover` (a pickled module: trust only your own files)."""
    return torch.load(path, map_location="cpu", weights_only=False).eval()


def prune_module(net: TorchNet, cfg: PruneConfig, feeds: Sequence[Mapping[str, Any]] = ()
                 ) -> tuple[nn.Module, dict[str, Any]]:
    module = copy.deepcopy(net.module).eval()
    before = count_params(module)
    if cfg.ratio > 0:
        import torch_pruning as tp

        from .channel_stats import ActivationImportance, compensate, drop_stats, measure_inputs

        if cfg.importance != "magnitude" or cfg.compensate != "none":
            measure_inputs(module, net, feeds, cfg.stat_frames)
        imp = ActivationImportance() if cfg.importance == "activation" else tp.importance.GroupMagnitudeImportance(p=2)
        ignored, inputs = ignored_layers(module, net), tuple(net.inputs.values())
        pruner = tp.pruner.MetaPruner(
            module, inputs, importance=imp, pruning_ratio=cfg.ratio, iterative_steps=cfg.iterative_steps,
            pruning_ratio_dict=stage_ratios(module, inputs, cfg.ratio, cfg.scales(net.name), ignored),
            ignored_layers=ignored, round_to=cfg.round_to)
        with torch.no_grad():
            for _ in range(cfg.iterative_steps):
                for group in pruner.step(interactive=True):
                    compensate(group, cfg.compensate)
                    group.prune()
        drop_stats(module)
    after = count_params(module)
    log.info("prune %s: %d -> %d parameters (ratio %.2f, %s importance, %s compensation)", net.name, before, after,
             cfg.ratio, cfg.importance, cfg.compensate)
    return module, {"ratio": cfg.ratio, "params_before": before, "params_after": after, "importance": cfg.importance,
                    "compensate": cfg.compensate, "profile": [list(p) for p in cfg.scales(net.name)],
                    "stat_frames": min(cfg.stat_frames, len(feeds)) if feeds else 0,
                    "roots": list(net.prune_roots), "kept": list(net.keep_layers)}


def stage_ratios(module: nn.Module, inputs: tuple, ratio: float, scales: Sequence[tuple[str, float]],
                 ignored: list[nn.Module]) -> dict[nn.Module, float]:
    """Layer -> pruning ratio for torch-pruning's `pruning_ratio_dict`; empty without a profile.
    A layer's own ratio is ratio x the scale of its longest matching prefix (1 when none), at most
    0.9. A DepGraph group (layers sharing channels) takes the ratio of its producer, the first of
    its layers in definition order, and every layer of the group is listed with it: torch-pruning
    uses whichever listed layer it meets first, and a depthwise conv ties its input to its output
    (dark2's first conv must follow the stem's ratio, dark5's first conv dark4's)."""
    if not scales:
        return {}
    import torch_pruning as tp

    order = {m: i for i, (_, m) in enumerate(module.named_modules())}
    own = {m: min(0.9, ratio * max([(len(p), s) for p, s in scales if n == p or n.startswith(p + ".")] or [(0, 1.0)])[1])
           for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=inputs)
    out = {}
    for group in graph.get_all_groups(ignored_layers=ignored):
        layers = [d.target.module for d, _ in group if graph.is_out_channel_pruning_fn(d.handler) and d.target.module in own]
        if layers:
            r = own[min(layers, key=order.__getitem__)]
            out.update({m: r for m in layers})
    return out


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
