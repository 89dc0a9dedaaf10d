"""Per-input-channel activation statistics for pruning: importance and bias compensation.

`measure_inputs` runs real feeds (and a zoomed-in copy of each image feed) through the network
and attaches to every dense Conv2d/Linear the mean and covariance of its input channels
(`_vs_in_mean` (C_in,), `_vs_in_cov` (C_in, C_in)).
`ActivationImportance` scores a DepGraph group by what its channels carry into the layers that
read them (||W[:, c]|| x std c). `compensate` rewrites each reader before the channels go:
- "mean": the removed channels' mean x their weights moves into the bias;
- "regress": the removed channels are predicted from the kept ones by least squares over the
  measured activations (x_R ~ m_R + B (x_K - m_K), B = S_RK S_KK^-1, ridge 1e-3), and their
  weights are folded into the kept channels' weights and the bias (a closed-form, per-layer
  reconstruction of what the next layer saw; the mean is its special case with B = 0).
Both keep the statistics aligned with the shrinking layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

MEAN, COV = "_vs_in_mean", "_vs_in_cov"
RIDGE = 1e-3  # relative to the mean variance of the kept channels


def dense(layer: nn.Module) -> bool:
    """A layer whose input channels mix into every output (no grouped/depthwise conv)."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def channels_last(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """(B,C,H,W) or (..., C) -> (N, C) float64."""
    x = x.detach().double()
    return x.transpose(0, 1).reshape(x.shape[1], -1).T if conv else x.reshape(-1, x.shape[-1])


def measure_inputs(module: nn.Module, net: Any, feeds: Sequence[Mapping[str, Any]], n: int) -> None:
    """Attach input-channel mean and covariance to every dense layer of `module`, over <= n feeds
    (`pick_indices`) and a zoomed-in copy of each."""
    from .recover import zoomed

    picks = [feeds[i] for i in pick_indices(feeds, n)] if feeds else [{k: v for k, v in net.inputs.items()}]
    rng = np.random.default_rng(0)  # each pick also zoomed in (image inputs): large objects count too
    picks += [dict(zip(net.inputs, zoomed([torch.as_tensor(np.asarray(f[k])) for k in net.inputs], 1.0, rng)))
              for f in picks]
    acc: dict[nn.Module, list] = {}

    def hook(layer, inp):
        x = channels_last(inp[0], isinstance(layer, nn.Conv2d))
        s = acc.setdefault(layer, [0.0, 0.0, 0])
        s[0], s[1], s[2] = s[0] + x.sum(0), s[1] + x.T @ x, s[2] + x.shape[0]

    hooks = [m.register_forward_pre_hook(hook) for m in module.modules() if dense(m)]
    try:
        with torch.no_grad():
            for feed in picks:
                module(*[torch.as_tensor(np.asarray(feed[k])) for k in net.inputs])
    finally:
        for h in hooks:
            h.remove()
    for layer, (s1, s2, cnt) in acc.items():
        mean = s1 / cnt
        setattr(layer, MEAN, mean)
        setattr(layer, COV, s2 / cnt - torch.outer(mean, mean))


def pick_indices(feeds: Sequence, n: int) -> list[int]:
    """<= n feed indices: half evenly spaced over the frames, half an equal share per calibration
    source when the feeds know their frames' sources (a CalibSet behind them). PETS09 is ~90 % of
    the set and its people are small; MOT17-mini's few frames with large people then still count."""
    n = min(n, len(feeds))
    even = [int(i) for i in np.linspace(0, len(feeds) - 1, n).round()]
    records = getattr(getattr(feeds, "frames", None), "manifest", {}).get("frames") if n else None
    if not records or len(records) != len(feeds):
        return even
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_source.setdefault(str(r.get("source")), []).append(i)
    out = set(int(i) for i in np.linspace(0, len(feeds) - 1, n - n // 2).round())
    queues = [list(v) for v in by_source.values()]
    while len(out) < n:  # round-robin over sources, from the middle of each outwards
        for q in queues:
            if q and len(out) < n:
                out.add(q.pop(len(q) // 2))
    return sorted(out)


def readers(group) -> list[tuple[nn.Module, list[int], list[int]]]:
    """(layer, its input-channel idxs, the root idxs) for every dense layer reading the group's channels."""
    import torch_pruning as tp

    fns = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    out = []
    for i, (dep, idxs) in enumerate(group):
        layer = dep.target.module
        if dep.handler in fns and dense(layer) and hasattr(layer, MEAN):
            out.append((layer, list(idxs), list(group[i].root_idxs)))
    return out


def in_columns(layer: nn.Module, idxs: list[int]) -> torch.Tensor:
    """The weights reading input channels `idxs`: (len(idxs), O, k*k) for a conv, (len(idxs), O, 1) linear."""
    w = layer.weight.detach()
    w = w.transpose(0, 1)[idxs]
    return w.reshape(len(idxs), w.shape[1], -1)


class ActivationImportance:
    """Group importance: sum over readers of ||W[:, c]||_2 * std(input c); magnitude when nothing reads it."""

    def __init__(self) -> None:
        import torch_pruning as tp

        self.fallback = tp.importance.GroupMagnitudeImportance(p=2)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        found = readers(group)
        if not found:
            return self.fallback(group)
        imp = torch.zeros(len(group[0].idxs))
        for layer, idxs, root in found:
            if any(r is None for r in root):
                continue
            std = getattr(layer, COV).diagonal()[idxs].clamp_min(0).sqrt()
            local = in_columns(layer, idxs).flatten(1).norm(dim=1) * std.float()
            imp.scatter_add_(0, torch.tensor(root), local.float())
        return imp


@torch.no_grad()
def compensate(group, how: str = "regress") -> None:
    """Before `group.prune()`: fold the removed inputs of every reader into its kept weights and
    bias (`how`: regress | mean | none), then drop those inputs' statistics."""
    merged: dict[nn.Module, set[int]] = {}
    for layer, idxs, _ in readers(group):  # a layer may read a channel more than once (SPP's concat)
        merged.setdefault(layer, set()).update(idxs)
    for layer, idx_set in merged.items():
        mean, cov = getattr(layer, MEAN), getattr(layer, COV)
        gone = torch.zeros(len(mean), dtype=torch.bool)
        gone[sorted(idx_set)] = True
        if how != "none":
            fold(layer, gone, mean, cov if how == "regress" else None)
        setattr(layer, MEAN, mean[~gone])
        setattr(layer, COV, cov[~gone][:, ~gone])


def fold(layer: nn.Module, gone: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor | None) -> None:
    """x_R ~ m_R + B (x_K - m_K): W_K += W_R B per kernel tap, bias += sum_taps W_R (m_R - B m_K)."""
    w = layer.weight.data.double()  # (O, C, k, k) or (O, C)
    w_r = w[:, gone]
    b = torch.zeros(int(gone.sum()), int((~gone).sum()), dtype=torch.float64)  # (R, K)
    if cov is not None and (~gone).any():
        s_kk = cov[~gone][:, ~gone]
        s_kk = s_kk + RIDGE * s_kk.diagonal().mean().clamp_min(1e-12) * torch.eye(len(s_kk), dtype=s_kk.dtype)
        b = torch.linalg.solve(s_kk, cov[~gone][:, gone]).T
    shift = mean[gone] - b @ mean[~gone]  # (R,)
    delta = torch.einsum("or...,r->o", w_r, shift)
    w[:, ~gone] += torch.einsum("or...,rk->ok...", w_r, b)
    layer.weight.data.copy_(w.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=layer.weight.dtype))
    layer.bias.data.add_(delta.to(layer.bias.dtype))


def drop_stats(module: nn.Module) -> None:
    """Remove the attached statistics (they must not be pickled with the pruned module)."""
    for m in module.modules():
        for attr in (MEAN, COV):
            if hasattr(m, attr):
                delattr(m, attr)
