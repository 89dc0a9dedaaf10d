"""Step: recover a pruned network by distillation from the unpruned one, on degraded frames.

The student (pruned) learns to reproduce every output of the teacher (unpruned) on the same
inputs: per output and per channel of its last axis, the mean squared error over the teacher's
variance of that channel, averaged per output and summed over outputs. Per channel matters: in
the detector's `output` (A, 5+C) the raw box offsets have ~1e3x the variance of the objectness
and class scores, so one variance per tensor would train the boxes and ignore the scores.
BatchNorm statistics stay frozen (eval mode): batches are small and the kept channels' stats
are still right. Adam with a cosine decay over the budget. Stops at `steps` or after
`max_seconds` of this process's CPU time, whichever comes first: CPU time, not wall clock, so a
loaded machine gives the same number of steps (slower) instead of fewer. Records the
distillation loss before and after on a held-out slice of the feeds.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .report import cached_step, fingerprint, tools_key
from .defaults import RECOVER_SECONDS
from .to_onnx import TorchNet, module_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverConfig:
    steps: int = 100_000  # optimizer steps at most (the CPU budget usually ends it first)
    max_seconds: float = RECOVER_SECONDS  # CPU s (process_time); the chain splits it by MACs: detector 600 + student 85
    batch: int = 4  # feeds per step
    lr: float = 5e-4  # Adam learning rate at the start (cosine decay to 0)
    holdout: float = 0.1  # fraction of feeds kept out of training to measure the loss
    holdout_max: int = 16  # at most this many held-out feeds are scored (before and after)
    seed: int = 0  # batch order
    zoom: float = 0.5  # share of image inputs replaced by a random zoom-in (crop of the content, resized back)
    zoom_min: float = 0.25  # smallest crop side, as a fraction of the content's shorter side
    focus: float = 1.0  # weight of the score-weighted term (rows weighted by the teacher's obj x cls; 0 = off)
    probe: float = 0.2  # share of the budget after which the held-out loss is checked against the pruned net's
    backoff: float = 0.2  # if it rose by then, restart from the pruned net at lr x backoff (0 = never restart)

    def __post_init__(self) -> None:
        if not (self.steps >= 0 and 0 <= self.max_seconds < float("inf") and self.batch >= 1 and self.lr > 0
                and 0 < self.holdout < 1):  # written so that NaN fails too (it crashed the budget split later)
            raise ValueError(f"recover config out of range: {self}")


def recover(pruned: TorchNet, cfg: RecoverConfig, out_path: str | Path, teacher: TorchNet,
            feeds: Sequence[Mapping[str, np.ndarray]], feeds_id: str = "") -> Path:
    """Distil `teacher` into `pruned` on `feeds`; write the recovered module to `out_path`."""
    def build(out: Path) -> dict[str, Any]:
        module, details = distil(pruned, teacher, feeds, cfg)
        torch.save(module, out)
        return details

    key = fingerprint(module_sha256(pruned.module), module_sha256(teacher.module), cfg, feeds_id or len(feeds),
                      tools_key("torch"))
    return cached_step("recover", out_path, key, build)


def distil(pruned: TorchNet, teacher: TorchNet, feeds: Sequence[Mapping[str, np.ndarray]],
           cfg: RecoverConfig) -> tuple[nn.Module, dict[str, Any]]:
    student = copy.deepcopy(pruned.module).eval()  # eval: BatchNorm stats frozen, dropout off
    n_hold = max(1, int(len(feeds) * cfg.holdout))
    train = list(range(n_hold, len(feeds)))
    hold = [int(i) for i in np.linspace(0, n_hold - 1, min(n_hold, cfg.holdout_max)).round()]
    names = list(teacher.inputs)
    before = held_loss(student, teacher, feeds, hold, names, cfg.focus)
    run = _Run(teacher, feeds, train, names, cfg)
    opt = run.train(student, cfg.lr, 0.0, cfg.probe, None)
    lr, mid = cfg.lr, held_loss(student, teacher, feeds, hold, names, cfg.focus)
    if cfg.backoff > 0 and not mid <= before:  # light pruning: 5e-4 raised the loss (10 %: 1.63 -> 2.73)
        lr, student = cfg.lr * cfg.backoff, copy.deepcopy(pruned.module).eval()
        log.info("recover %s: held-out loss %.4f -> %.4f after %.0f %% of the budget; restarting at lr %.1e",
                 pruned.name, before, mid, 100 * cfg.probe, lr)
        opt = None
    run.train(student, lr, cfg.probe if opt is None else 0.0, 1.0, opt)
    step, t0, w0 = run.step, run.t0, run.w0
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    after = held_loss(student, teacher, feeds, hold, names, cfg.focus)
    worse = not after <= before  # NaN counts as worse
    if worse:  # distillation made it worse on held-out feeds: keep the compensated pruned net
        log.warning("recover %s: held-out loss rose %.4f -> %.4f; keeping the network as pruned", pruned.name,
                    before, after)
        student = copy.deepcopy(pruned.module).eval()
    log.info("recover %s: %d steps in %.0f CPU s (%.0f s wall), held-out distillation loss %.4f -> %.4f",
             pruned.name, step, cpu, wall, before, after)
    return student.eval(), {"steps": step, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                            "loss_before": before, "loss_probe": mid, "lr": lr, "loss_after": after,
                            "kept": "pruned" if worse else "recovered", "train_feeds": len(train),
                            "holdout_feeds": n_hold, "holdout_scored": len(hold)}


class _Run:
    """The distillation loop's state: budget clocks (CPU and wall), steps, batch order."""

    def __init__(self, teacher: TorchNet, feeds, train: list[int], names: list[str], cfg: RecoverConfig):
        self.teacher, self.feeds, self.train_idx, self.names, self.cfg = teacher, feeds, train, names, cfg
        self.rng, self.t0, self.w0, self.step = np.random.default_rng(cfg.seed), time.process_time(), time.perf_counter(), 0

    def progress(self) -> float:
        """Share of the budget used: steps or CPU seconds, whichever is further (a 0 s budget: all of it)."""
        cpu = (time.process_time() - self.t0) / self.cfg.max_seconds if self.cfg.max_seconds > 0 else 1.0
        return max(self.step / max(self.cfg.steps, 1), cpu)

    def train(self, student: nn.Module, lr: float, start: float, stop: float, opt) -> torch.optim.Optimizer:
        """Adam steps until `stop` of the budget, lr cosine-decayed from `lr` at `start` to 0 at 1."""
        cfg = self.cfg
        opt = opt or torch.optim.Adam(student.parameters(), lr=lr)
        while self.step < cfg.steps and (p := self.progress()) < stop and self.train_idx:
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (p - start) / max(1e-9, 1 - start))))
            idx = self.rng.choice(self.train_idx, size=min(cfg.batch, len(self.train_idx)), replace=False)
            args = zoomed(batch(self.feeds, idx, self.names), cfg.zoom, self.rng, cfg.zoom_min)
            loss = distil_loss(student, self.teacher, args, cfg.focus)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.step += 1
        return opt


def batch(feeds, idx, names) -> list[torch.Tensor]:
    """Concatenate the chosen feeds along the batch axis, per input, in forward() order."""
    return [torch.as_tensor(np.concatenate([feeds[int(i)][k] for i in idx], 0)) for k in names]


def zoomed(args: list[torch.Tensor], share: float, rng: np.random.Generator, low: float = 0.4) -> list[torch.Tensor]:
    """Replace a `share` of each image input (B,3,H,W), H, W >= 64, by a random crop of its
    content (the letterbox padding, 114 on every channel, left out) of the input's aspect, whose
    height is `low`-100 % of the largest such crop, resized back to (H, W): the calibration frames
    (PETS09, far-away people) then also show the large people the held-out sequences have;
    teacher and student see the same input."""
    out = []
    for x in args:
        if x.dim() == 4 and x.shape[1] == 3 and min(x.shape[-2:]) >= 64 and share > 0:
            x, (H, W) = x.clone(), x.shape[-2:]
            for i in np.flatnonzero(rng.random(len(x)) < share):
                (y0, y1), (x0, x1) = content_box(x[i])
                ch = max(8, int(min(y1 - y0, (x1 - x0) * H / W) * rng.uniform(low, 1.0)))  # square: as before
                cw = max(8, min(x1 - x0, round(ch * W / H)))
                y, xx = int(rng.integers(y0, y1 - ch + 1)), int(rng.integers(x0, x1 - cw + 1))
                crop = x[i:i + 1, :, y:y + ch, xx:xx + cw]
                x[i:i + 1] = torch.nn.functional.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)
        out.append(x)
    return out


def content_box(img: torch.Tensor, pad: float = 114.0) -> tuple[tuple[int, int], tuple[int, int]]:
    """(3,H,W) letterboxed image -> ((y0, y1), (x0, x1)) of the rows/columns not entirely padding;
    the whole image when it is all padding or when no side is padded."""
    real = (img != pad).any(0)  # (H, W)
    rows, cols = torch.nonzero(real.any(1)).flatten(), torch.nonzero(real.any(0)).flatten()
    if len(rows) < 8 or len(cols) < 8:
        return (0, img.shape[-2]), (0, img.shape[-1])
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def outputs(module: nn.Module, args: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    out = module(*args)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def distil_loss(student: nn.Module, teacher: TorchNet, args: list[torch.Tensor], focus: float = 0.0) -> torch.Tensor:
    """Sum over outputs of `channel_nmse`, plus `focus` x the same error with rows weighted by the
    teacher's scores (`score_weights`) when the network is a detector."""
    with torch.no_grad():
        target = outputs(teacher.module.eval(), args)
    pred = outputs(student, args)
    loss = sum(channel_nmse(p, t) for p, t in zip(pred, target))
    w = score_weights(target) if focus > 0 else None
    if w is not None:
        loss = loss + focus * sum(weighted_nmse(p, t, w) for p, t in zip(pred, target) if p.dim() == 3)
    return loss


def score_weights(target: tuple[torch.Tensor, ...], floor: float = 0.01) -> torch.Tensor | None:
    """(B, A) row weights floor + obj x cls from a YOLOX-layout first output (B, A, 5 + C), else None.
    Why: of the 3549 anchors a frame has, a few dozen hold people; an unweighted per-channel MSE is
    spent on the background's meaningless box offsets and embeddings, and a large near person is
    a handful of stride-32 anchors (what pruned detectors lost on TUD-Campus)."""
    out = target[0]
    if out.dim() != 3 or out.shape[-1] < 6:
        return None
    return floor + out[..., 4] * out[..., 5:].amax(-1)


def weighted_nmse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the w-weighted MSE over the w-weighted teacher variance; (B, A, C), w (B, A)."""
    p, t, w = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1]), w.reshape(-1, 1)
    mean = (w * t).sum(0) / w.sum()
    var = (w * (t - mean) ** 2).sum(0) / w.sum()
    return ((w * (p - t) ** 2).sum(0) / w.sum() / (var + 1e-4)).mean()


def channel_nmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the last axis' channels of MSE / teacher variance, both over all other axes.
    A (B, D) output (one vector per input, e.g. the student's) has only B rows per channel: a
    per-channel variance over a batch of 4 is noise, so it gets one variance for the whole tensor."""
    if pred.dim() <= 2:
        return ((pred - target) ** 2).mean() / (target.var() + 1e-6)
    p, t = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
    return (((p - t) ** 2).mean(0) / (t.var(0) + 1e-4)).mean()  # floor: a near-constant channel must not dominate


def held_loss(student: nn.Module, teacher: TorchNet, feeds, idx, names, focus: float = 0.0) -> float:
    with torch.no_grad():
        return float(np.mean([float(distil_loss(student, teacher, batch(feeds, [i], names), focus)) for i in idx]))
