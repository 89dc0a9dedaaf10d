"""DSWR head in torch: w = g(q) = w_max * sigmoid(k * (q0 - q)), the parameterisation that
runtime/dswr.py applies from JSON. Trained jointly with the tracker (models/train_tracker.py):
the tracker-head engineer's loss flows into it through the fused queries (query += w * proj(sem)).

Constraints by construction: w_max = sigmoid(a) in (0, 1), k = softplus(b) + k_min > 0 (so g is
monotone non-increasing in q), q0 free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DswrConfig:
    w_max: float = 0.9  # initial upper bound of w, in (0, 1)
    k: float = 10.0  # initial steepness (> k_min)
    q0: float = 0.6  # initial midpoint quality
    k_min: float = 0.5  # floor on k: keeps g strictly decreasing


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class DswrHead(nn.Module):
    """q (...,) in [0, 1] -> w (...,) in (0, w_max)."""

    def __init__(self, cfg: DswrConfig = DswrConfig()):
        super().__init__()
        if not (0.0 < cfg.w_max < 1.0 and cfg.k > cfg.k_min > 0.0):
            raise ValueError(f"DswrConfig: expected 0 < w_max < 1 and k > k_min > 0, got {cfg}")
        self.cfg = cfg
        self.a = nn.Parameter(torch.tensor(math.log(cfg.w_max / (1.0 - cfg.w_max))))
        self.b = nn.Parameter(torch.tensor(_inv_softplus(cfg.k - cfg.k_min)))
        self.q0 = nn.Parameter(torch.tensor(float(cfg.q0)))

    def w_max(self) -> torch.Tensor:
        return torch.sigmoid(self.a)

    def k(self) -> torch.Tensor:
        return F.softplus(self.b) + self.cfg.k_min

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.w_max() * torch.sigmoid(self.k() * (self.q0 - q.clamp(0.0, 1.0)))

    def to_params(self) -> dict:
        """The "dswr" section of quality.json, read by runtime/dswr.py: Dswr.from_params."""
        with torch.no_grad():
            return {"form": "sigmoid", "w_max": self.w_max().item(), "k": self.k().item(), "q0": self.q0.item()}
