"""The noise-floor summary as one picture: every case's HOTA drop per candidate, against the spread
of the null candidates and the gate's limits (`python -m vsdmot.export.noise_floor ... --out DIR`
writes it as DIR/summary.png)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_summary(summary: Mapping[str, Any], path: Path, case_limit: float | None = None) -> Path:
    """x: candidates; y: per-case HOTA drop (points, up = worse), o clean / x degraded; a diamond per
    emulated gate at its `balanced` value; grey band: the null candidates' range; lines: the rule's
    threshold and the single-case limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = summary["cases"]
    names = list(dict.fromkeys(c["candidate"] for c in cases))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) + 2), 4.2))
    nulls = [c["hota_drop"] for c in cases if c["candidate"].startswith("null")]
    if nulls:
        ax.axhspan(min(nulls), max(nulls), color="0.85", label=f"null cases ({len(nulls)}): range")
    for i, name in enumerate(names):
        mine = [c for c in cases if c["candidate"] == name]
        for clean, marker in ((True, "o"), (False, "x")):
            ys = [c["hota_drop"] for c in mine if (c["condition"] == "clean") is clean]
            ax.scatter([i + (-0.12 if clean else 0.12)] * len(ys), ys, marker=marker, s=22, color=f"C{i % 10}",
                       label=("clean case" if clean else "degraded case") if i == 0 else None)
        gates = [g["rules"]["balanced"]["value"] for g in summary["gates"] if g["bundle"] == name]
        ax.scatter([i] * len(gates), gates, marker="D", s=40, facecolor="none", edgecolor="k",
                   label="balanced value of a gate" if i == 0 else None)
    ax.axhline(summary["threshold_hota_drop"], color="k", lw=1, ls="--", label="rule threshold")
    if case_limit is not None:
        ax.axhline(case_limit, color="C3", lw=1, ls=":", label="single-case limit")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"HOTA drop vs {summary['reference']} (points, up = worse)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
