"""The accuracy gate as one picture, written into the bundle beside its report (export_report.png):
per held-out case, the FP32 reference's HOTA and the bundle's, and the drop against the rule's
threshold and the single-case limit."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_gate(accuracy: Mapping[str, Any], path: Path, gate: Mapping[str, Any] | None = None) -> Path:
    """Top: HOTA of the reference and the bundle per case (bars). Bottom: the drop per case (bars, up =
    worse), the pooled clean and degraded drops, the threshold and the single-case limit (lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = accuracy["cases"]
    labels = [f"{c['sequence'].split(':')[0]}\n{c['condition']}" for c in cases]
    x = range(len(cases))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.75 * len(cases) + 2), 6.2), sharex=True)
    ref = [100 * c["reference"]["HOTA"] for c in cases]
    mine = [100 * c["bundle"]["HOTA"] for c in cases]
    top.bar([i - 0.2 for i in x], ref, 0.4, color="0.6", label=accuracy.get("vs", "reference"))
    top.bar([i + 0.2 for i in x], mine, 0.4, color="C0", label="this bundle")
    top.set_ylabel("HOTA")
    top.set_ylim(0, 1.25 * max(ref + mine + [1.0]))  # room for the legend above the bars
    top.legend(fontsize=8, loc="upper center", ncol=2)
    drops = [c["hota_drop"] for c in cases]
    bottom.bar(list(x), drops, 0.6, color=["C3" if d > 0 else "C2" for d in drops])
    _limits(bottom, accuracy)
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_ylabel("HOTA drop (points, up = worse)")
    bottom.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
    verdict = f"rule {accuracy.get('rule', '?')}: {accuracy.get('gated_hota_drop', float('nan')):.2f}"
    gate = gate or {}
    outcome = "PASSED" if gate.get("passed") else "REFUSED, published with --force" if gate.get("forced") else \
        "REFUSED" if gate else ""
    fig.suptitle(f"accuracy gate{': ' + outcome if outcome else ''}, {len(cases)} held-out cases ({verdict} against "
                 f"{accuracy.get('threshold_hota_drop')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _limits(ax, accuracy: Mapping[str, Any]) -> None:
    """The rule's threshold, the single-case limit and the pooled drops, as horizontal lines."""
    if accuracy.get("threshold_hota_drop") is not None:
        ax.axhline(accuracy["threshold_hota_drop"], color="k", lw=1, ls="--", label="threshold")
    if accuracy.get("max_case_drop") is not None:
        ax.axhline(accuracy["max_case_drop"], color="C3", lw=1, ls=":", label="single-case limit")
    for (name, value), style in zip((accuracy.get("pooled_hota_drops") or {}).items(), ("-.", (0, (5, 1)))):
        ax.axhline(value, color="C0", lw=1, ls=style, label=f"pooled {name}: {value:.2f}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
