"""Benchmark plots (matplotlib, headless). Imported only by the bench CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def axis_floor(metrics: Iterable[dict], metric: str) -> float:
    """The y axis's bottom in percent: 0, or lower for a negative value (MOTA falls below 0 when
    false positives outnumber the gt boxes; a 0-100 axis hid those bars)."""
    return min([0.0] + [100 * m[metric] for m in metrics if metric in m and np.isfinite(m[metric])])


def plot_bench(results: Sequence, path: Path, metrics: tuple[str, ...] = ("HOTA", "MOTA", "IDF1")) -> Path:
    """One row of panels per metric, one column per sequence; bars: conditions x trackers (percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seqs = list(dict.fromkeys(r.sequence for r in results))
    conds = list(dict.fromkeys(r.condition for r in results))
    trackers = list(dict.fromkeys(r.tracker for r in results))
    table = {(r.tracker, r.sequence, r.condition): r.metrics for r in results}
    panel_w = max(3.0, 1.0 + 0.35 * len(conds) * len(trackers))  # inches per sequence column
    fig, axes = plt.subplots(len(metrics), len(seqs), figsize=(panel_w * len(seqs), 2.6 * len(metrics)),
                             squeeze=False, sharey="row")
    width = 0.8 / len(trackers)
    x = np.arange(len(conds))
    for row, metric in enumerate(metrics):
        for col, seq in enumerate(seqs):
            ax = axes[row, col]
            for k, trk in enumerate(trackers):
                vals = [100 * table.get((trk, seq, c), {}).get(metric, np.nan) for c in conds]
                ax.bar(x + (k - (len(trackers) - 1) / 2) * width, vals, width, label=trk)
            ax.set_xticks(x, conds, rotation=60, ha="right", fontsize=7)
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylim(axis_floor(table.values(), metric), 100)
            ax.set_title(f"{seq}: {metric}" if row == 0 else metric, fontsize=9)
        axes[row, 0].set_ylabel(f"{metric} (%)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
