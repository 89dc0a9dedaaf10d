"""Write a profile report: report.json, PNG plots and report.md (runs side by side).

Plots: latency over time (per stage), stage breakdown (mean ms per stage, per run), q and w over
time (with the semantic state of each frame), and power over time only where a meter exists.
matplotlib is imported lazily (Agg backend); without it the JSON and markdown are still written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vsdmot.runtime.mot import atomic_write_text

DISAGREE = 1.25  # rounds whose end-to-end FPS ratios differ more than this: the machine's load changed

log = logging.getLogger(__name__)

STATE_COLOURS = {"fresh": "tab:red", "reused": "tab:orange", "skipped": "tab:green"}


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    """Write everything into `out_dir`; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    plots = _plots(report, out_dir)
    md = out_dir / "report.md"
    md.write_text(render_markdown(report, plots))
    return md


def _plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: report without plots (pip install matplotlib)")
        return []
    made = []
    for name, fn in (("latency_over_time.png", _plot_latency), ("stage_breakdown.png", _plot_stages),
                     ("quality_weight.png", _plot_qw), ("power_over_time.png", _plot_power)):
        fig = fn(plt, report["runs"])
        if fig is not None:
            fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
            plt.close(fig)
            made.append(name)
    return made


def _axes(plt: Any, n: int, title: str) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(n, 1, figsize=(10, 3.2 * n), sharex=True, squeeze=False)
    fig.suptitle(title)
    return fig, [a[0] for a in axes]


def _warm_line(ax: Any, run: dict[str, Any]) -> None:
    s = run["series"]
    warm = run["stats"]["warmup_frames"]
    if 0 < warm < len(s["t"]):
        ax.axvline(s["t"][warm - 1], color="grey", linestyle="--", linewidth=1, label="end of warm-up")


def _plot_latency(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, axes = _axes(plt, len(runs), "Per-stage latency over time")
    for ax, run in zip(axes, runs):
        s = run["series"]
        for stage in sorted({k for lat in s["latency_ms"] for k in lat}):
            ax.plot(s["t"], [lat.get(stage, float("nan")) for lat in s["latency_ms"]], label=stage,
                    linewidth=1.6 if stage == "total" else 0.9)
        _warm_line(ax, run)
        ax.set_title(run["label"], fontsize=10)
        ax.set_ylabel("ms")
        ax.legend(fontsize=7, ncol=6, loc="upper right")
    axes[-1].set_xlabel("seconds since the run started")
    return fig


def _plot_stages(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 4))
    stages = sorted({k for r in runs for k in r["stats"]["latency_ms"] if k != "total"})
    bottoms = [0.0] * len(runs)
    for stage in stages:
        means = [r["stats"]["latency_ms"].get(stage, {}).get("mean", 0.0) for r in runs]
        ax.bar([r["label"] for r in runs], means, bottom=bottoms, label=stage)
        bottoms = [b + m for b, m in zip(bottoms, means)]
    ax.set_ylabel("mean ms per frame (steady state)")
    ax.set_title("Stage breakdown")
    ax.legend(fontsize=8)
    return fig


def _plot_qw(plt: Any, runs: list[dict[str, Any]]) -> Any:
    fig, axes = _axes(plt, len(runs), "Frame quality q, DSWR weight w, and semantic work per frame")
    for ax, run in zip(axes, runs):
        s = run["series"]
        ax.plot(s["index"], s["q"], label="q (quality)", color="tab:blue")
        ax.plot(s["index"], s["w"], label="w (semantic weight)", color="tab:purple")
        for state, colour in STATE_COLOURS.items():
            xs = [i for i, st in zip(s["index"], s["semantic"]) if st == state]
            ax.scatter(xs, [-0.05] * len(xs), s=6, color=colour, label=f"semantics {state}")
        ax.set_ylim(-0.1, 1.05)
        ax.set_title(run["label"], fontsize=10)
        ax.legend(fontsize=7, ncol=5, loc="center right")
    axes[-1].set_xlabel("frame index")
    return fig


def _plot_power(plt: Any, runs: list[dict[str, Any]]) -> Any:
    if not any(r["power_samples"] for r in runs):
        return None  # no meter: no power plot, rather than an empty or invented one
    fig, axes = _axes(plt, len(runs), "Board power over time (real meter)")
    for ax, run in zip(axes, runs):
        p = run["power_samples"]
        ax.plot([x[0] for x in p], [x[1] for x in p], color="tab:red", label="total W")
        idle = run["energy"].get("idle_w")
        if idle is not None:
            ax.axhline(idle, color="grey", linestyle=":", label=f"idle {idle:.2f} W")
        ax.set_title(run["label"], fontsize=10)
        ax.set_ylabel("W")
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("seconds since the run started")
    return fig


def _fmt(v: Any, unit: str = "") -> str:
    return "n/a" if v is None else f"{v}{unit}"


def _rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    def col(f):
        return [f(r) for r in runs]

    rows = [
        ("frames measured (after warm-up)", col(lambda r: f"{r['stats']['frames']} ({r['stats']['warmup_frames']} warm-up)")),
        ("backend / tracker", col(lambda r: f"{r['backend']} / {r['tracker']}")),
        ("FPS, model stages only", col(lambda r: _fmt(r["stats"]["fps"]["model"]))),
        ("FPS, whole per-frame step", col(lambda r: _fmt(r["stats"]["fps"]["pipeline"]))),
        ("FPS, end to end (decode + step + hooks)", col(lambda r: _fmt(r["stats"]["fps"]["end_to_end"]))),
        ("latency total p50 / p90 / p99 ms", col(lambda r: "{p50} / {p90} / {p99}".format(**r["stats"]["latency_ms"]["total"])
                                                 if "total" in r["stats"]["latency_ms"] else "n/a")),
        ("semantic skipped / reused / fresh", col(lambda r: "{skipped} / {reused} / {fresh}".format(**r["stats"]["semantic"]))),
        ("semantic skip ratio", col(lambda r: f"{100 * r['stats']['semantic_skip_ratio']:.1f} %")),
        ("CPU seconds (per frame)", col(lambda r: f"{r['stats']['cpu_seconds']} ({1000 * r['stats']['cpu_seconds_per_frame']:.1f} ms)")),
        ("CPU cores busy", col(lambda r: _fmt(r["stats"]["cpu_cores_busy"]))),
        ("RSS MiB, start -> end (growth per min)", col(_rss)),
    ]
    if any(r["energy"].get("mean_w") is not None for r in runs):
        rows += [("mean power W (idle W)", col(lambda r: f"{_fmt(r['energy'].get('mean_w'))} ({_fmt(r['energy'].get('idle_w'))})")),
                 ("net J per frame (idle subtracted)", col(lambda r: _fmt(r["energy"].get("net_joules_per_frame")))),
                 ("gross J per frame", col(lambda r: _fmt(r["energy"].get("joules_per_frame"))))]
    return rows


def _stage_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| run | stage | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|"]
    for r in runs:
        for stage, p in r["stats"]["latency_ms"].items():
            lines.append(f"| {r['label']} | {stage} | {p['p50']} | {p['p90']} | {p['p99']} | {p['mean']} |")
    return lines


def _rss(r: dict[str, Any]) -> str:
    """"201.8 -> 205.8 (0.5)", or with a window under a minute "201.8 -> 205.8 (+4.0 in 8 s)"."""
    s = r["stats"]
    start, end = s.get("rss_mb", ["?", "?"])
    if s.get("rss_growth_mb_per_min") is not None or not isinstance(start, (int, float)):
        return f"{start} -> {end} ({_fmt(s.get('rss_growth_mb_per_min'))})"
    return f"{start} -> {end} ({end - start:+.1f} in {s.get('rss_window_s', '?')} s: too short for a rate)"


def _comparison(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    def x(key: str) -> str:
        return "n/a (no power meter)" if c[key] is None and "joules" in key else f"x{c[key]}"

    head = ["", f"**{c['a']} relative to {c['b']}:** end-to-end FPS {x('fps_end_to_end')}, model FPS "
            f"{x('fps_model')}, CPU seconds per frame {x('cpu_seconds_per_frame')}, net energy per frame "
            f"{x('net_joules_per_frame')}.", ""]
    rounds = c.get("rounds", 1)
    if rounds > 1:
        each = ", ".join(f"x{v}" for v in c["per_round"]["fps_end_to_end"])
        lines = [f"Medians of {rounds} interleaved rounds (A B A B ...); end-to-end FPS ratio per round: {each}. "
                 "The tables and plots above show each side's median round."]
        if (c.get("spread") or 1.0) > DISAGREE:
            lines += ["", f"**The rounds disagree** (their ratios differ {c['spread']}x): the machine's load changed "
                      "between them, so the median is not yet a measurement. Run again with more rounds (5 or more, "
                      "an odd number)."]
        return head + lines
    return head + ["One run of each, one after the other: on a shared or warming machine a ratio within about 10 % "
                   "of x1 can be order and noise (two identical FP32 detectors compared at x1.03-x1.11 here). For a "
                   "ratio to rely on, add `--rounds 5`: the two sides then run interleaved and the report gives "
                   "the median."]


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    """Caveats a reader must see next to the numbers."""
    notes = []
    for r in runs:
        pol = r["config"]["semantics"]["policy"]
        if r.get("semantic_policy_effective", pol) != pol:
            notes.append(f"- {r['label']}: the bundle has no student encoder, so policy '{pol}' ran as "
                         f"'{r['semantic_policy_effective']}' (no semantic work at all).")
        if pol == "always" and r["stats"]["semantic"]["fresh"] == 0:
            notes.append(f"- {r['label']}: the {r['tracker']} tracker takes no semantic input, so the semantic "
                         "policy has no effect here; compare policies with the e2e or hybrid tracker.")
        if "TensorRT" not in r["backend"] and r["energy"].get("mean_w") is None:
            notes.append(f"- {r['label']}: CPU inference without a power meter: time and CPU seconds only.")
    return notes + ([""] if notes else [])


def _device(runs: list[dict[str, Any]]) -> list[str]:
    """Power mode, clocks and the hottest zone per run: start, halfway (under load), end."""
    from .clocks import hottest

    lines = []
    for r in runs:
        dev = r.get("device") or {}
        if not dev.get("start"):
            continue
        start, load, end = dev["start"], dev.get("under_load") or {}, dev.get("end") or {}

        def mhz(state: dict[str, Any], unit: str) -> str:
            c = state.get(unit)
            return "?" if not c else f"{c['cur_mhz']:.0f}"

        def top(unit: str) -> str:
            c = start.get(unit)
            return f" (max {c['max_mhz']:.0f})" if c and c["max_mhz"] else ""

        cpu = start.get("cpu") or {}
        source = "" if cpu.get("max_mhz") else " (/proc/cpuinfo: no cpufreq here, so it may not move)"
        parts = [f"{what} {start[key]}" for what, key in (("power mode", "power_mode"), ("governor", "governor"))
                 if start.get(key)]  # only what this machine exposes
        parts.append(f"CPU MHz start / halfway / end {mhz(start, 'cpu')} / {mhz(load, 'cpu')} / {mhz(end, 'cpu')}"
                     f"{top('cpu')}{source}")
        if start.get("gpu"):
            parts.append(f"GPU MHz {mhz(start, 'gpu')} / {mhz(load, 'gpu')} / {mhz(end, 'gpu')}{top('gpu')}")
        if start.get("temps_c") or end.get("temps_c"):
            parts.append(f"hottest zone {hottest(start.get('temps_c') or {}) or '?'} -> "
                         f"{hottest(end.get('temps_c') or {}) or '?'}")
        lines.append(f"- {r['label']}: " + "; ".join(parts) + ".")
        lines += [f"  - {n}" for n in dev.get("notes", [])]
    return (["**Device** (what the numbers ran at; `edge/clocks.py`):", ""] + lines + [""]) if lines else []


def _engines(run: dict[str, Any]) -> str:
    """What the networks' engines were built at, else the --precision asked (no TensorRT engines)."""
    built = run.get("engine_precision") or {}
    if built:
        return "TensorRT engines: " + ", ".join(f"{name} {prec}" for name, prec in sorted(built.items()))
    return f"engine --precision {run['config']['pipeline']['precision']}"


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    runs, meter, host, st = report["runs"], report["meter"], report["host"], report["settings"]
    cpu = f" ({host['cpu_model']})" if host.get("cpu_model") else ""
    lines = [f"# vsdmot-edge profile ({report['created_utc']})", "",
             f"Host: {host['node']} {host['machine']}, {host['cpus']} CPUs{cpu}, Python {host['python']}, vsdmot {host['vsdmot']}.",
             f"Source: `{st['source']}`. Warm-up {st['warmup_s']} s, measured {st['duration_s']} s per run.",
             "Threads / precision / input size per run: " + "; ".join(
                 f"{r['label']}: threads {r['config']['pipeline']['threads'] or 'all'}, {r.get('bundle_precision') or '?'} bundle "
                 f"({_engines(r)}), detector input {r.get('input_size') or '?'}"
                 f"{', overlap' if r['config']['pipeline'].get('overlap') else ''}" for r in runs),
             "", *_device(runs), f"**Power:** {meter['explain']}."]
    if meter["name"] and meter["idle_w"] is not None:
        lines.append(f"Idle baseline {meter['idle_w']:.3f} W, measured before any model was loaded; net figures subtract it.")
    lines += ["", "| | " + " | ".join(r["label"] for r in runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in _rows(runs)]
    lines += _comparison(report.get("comparison"))
    lines += ["", "FPS three ways: *model stages* = 1000 / mean(semantics + detector + tracker ms); *whole step* adds "
              "the quality gate; *end to end* = frames / wall time, with decoding and hooks. With overlap (the next "
              "frame perceived while this one is tracked) stage times overlap and grow: read end to end.", ""] + _notes(runs) + [

              "## Per-stage latency (steady state)", ""] + _stage_table(runs) + ["", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots] or ["(matplotlib not installed: no plots)"]
    return "\n".join(lines) + "\n"
