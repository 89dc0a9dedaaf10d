"""DSWR at run time: w = g(q) = w_max * sigmoid(k * (q0 - q)), monotone non-increasing in q.

Low quality (small q) gives a large fusion weight; clean frames give w near 0, so the semantic
branch can be skipped. The parameters are learned with the tracker (models/dswr.py: DswrHead,
same parameterisation) and stored in quality.json's "dswr" section. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Dswr:
    w_max: float = 1.0  # upper bound of w, in (0, 1]
    k: float = 10.0  # steepness (> 0): how sharply w rises as q falls below q0
    q0: float = 0.6  # quality at which w = w_max / 2

    def __post_init__(self) -> None:
        if not 0.0 < self.w_max <= 1.0:
            raise ValueError(f"dswr w_max: expected in (0, 1], got {self.w_max}")
        if not (self.k > 0.0 and math.isfinite(self.k)):
            raise ValueError(f"dswr k: expected a finite value > 0, got {self.k}")
        if not math.isfinite(self.q0):
            raise ValueError(f"dswr q0: expected finite, got {self.q0}")

    @classmethod
    def from_params(cls, d: Mapping) -> Dswr:
        """From quality.json (its "dswr" section, or the section itself); missing keys keep defaults."""
        if "dswr" in d or "gate" in d:  # a whole quality.json
            d = d.get("dswr", {})
        unknown = set(d) - {"w_max", "k", "q0", "form"}
        if unknown:
            raise ValueError(f"dswr params: unknown keys {sorted(unknown)}; expected w_max, k, q0")
        if d.get("form", "sigmoid") != "sigmoid":
            raise ValueError(f"dswr params: form expected 'sigmoid', got {d['form']!r}")
        return cls(**{k: float(v) for k, v in d.items() if k != "form"})

    def weight(self, q: float) -> float:
        """w in [0, w_max] for quality q (clipped to [0, 1])."""
        z = self.k * (self.q0 - min(max(float(q), 0.0), 1.0))
        return self.w_max / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def params(self) -> dict:
        return {"form": "sigmoid", "w_max": self.w_max, "k": self.k, "q0": self.q0}
