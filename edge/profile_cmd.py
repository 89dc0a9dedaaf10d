"""Measure steady-state latency, FPS and energy, and write a report: `vsdmot-edge profile`.

    vsdmot-edge profile (--source PATH | --camera DEV | --demo) [--bundle DIR] [--duration S] [--warmup S]
        [--idle S] --report DIR [--semantic auto|always|never]
        [--compare-semantic auto,always | --compare-bundle DIR_A,DIR_B] [--rounds N] [--power-meter LIST]
        [--width W --height H --fps F --fourcc CC --rotate DEG --camera-motion M]   # as `run`

Per run: warm up (frames in the first --warmup seconds are not counted), then measure for
--duration seconds. A file source is replayed if it ends early. Reported: per-stage latency
percentiles; FPS three ways (model stages only, the whole per-frame step, and end to end with
decode and hooks); the semantic skip ratio; CPU seconds (time.process_time); RSS and its growth
per minute; the device's power mode, clocks and temperatures before, halfway through and after
each run (`edge/clocks.py`); and, only where a real power meter exists, watts with the idle
baseline (measured before any model is loaded) subtracted and joules per frame. Without a meter
the report says so and has no watts.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsdmot import __version__
from vsdmot.runtime.sinks import check_writable
from vsdmot.edge.power import METER_ORDER, meter_list
from vsdmot.edge.profile_report import DISAGREE
from vsdmot.runtime.stats_sink import MODEL_STAGES  # the networks' stages (incl. their pre/post-processing)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileConfig:
    duration_s: float = 30.0  # steady-state measuring time per run
    warmup_s: float = 5.0  # time discarded at the start of each run (engine warm-up, caches)
    idle_s: float = 5.0  # idle power baseline measured before the runs (only with a meter)
    max_frames: int = 0  # stop a run after this many frames in total (0 = by duration)
    power_period_s: float = 0.1  # power sampling period

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.warmup_s < 0 or self.idle_s < 0 or self.power_period_s <= 0:
            raise ValueError(f"profile: expected duration > 0 and warmup, idle >= 0, got {self}")


@dataclass
class FrameRecord:
    """What one frame cost; one row of the report's series."""

    t: float  # monotonic seconds when the frame finished (after sinks)
    index: int  # source frame index
    q: float  # quality
    w: float  # DSWR weight
    semantic: str  # fresh / reused / skipped
    latency_ms: dict[str, float]  # stage -> ms
    cpu_s: float  # time.process_time() when the frame finished
    rss_mb: float = 0.0  # resident set size after the frame, MiB (0 where /proc is absent)


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0


def rss_mb() -> float:
    """This process's resident set size now, MiB (Linux /proc; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class ProfileHook:
    """Run-loop hook: records every frame and stops the run when the time (or frames) is up; reads
    the device's clocks and temperatures at the start, halfway through the measuring (on a timer
    thread, so no frame pays for it) and at the end."""

    cfg: ProfileConfig
    stop_event: threading.Event
    records: list[FrameRecord] = field(default_factory=list)
    t_start: float = 0.0  # monotonic at on_start
    cpu_start: float = 0.0  # process_time at on_start
    device: dict[str, Any] = field(default_factory=dict)  # "start" / "under_load" / "end" -> clocks.DeviceState
    _timer: threading.Timer | None = None

    def on_start(self) -> None:
        from .clocks import read_state

        self.device["start"] = read_state()  # with the power mode (nvpmodel -q), read once, here
        self._timer = threading.Timer(self.cfg.warmup_s + self.cfg.duration_s / 2, self._read, ("under_load",))
        self._timer.daemon = True
        self._timer.start()
        self.t_start, self.cpu_start = time.monotonic(), time.process_time()

    def _read(self, when: str) -> None:
        from .clocks import read_state

        self.device[when] = read_state(nvpmodel="")

    def on_frame(self, result: Any, source_stats: Any = None) -> None:
        now = time.monotonic()
        self.records.append(FrameRecord(now, result.index, float(result.q), float(result.w), result.semantic,
                                        dict(result.latency_ms), time.process_time(), rss_mb()))
        over_time = now - self.t_start >= self.cfg.warmup_s + self.cfg.duration_s
        if over_time or (self.cfg.max_frames and len(self.records) >= self.cfg.max_frames):
            self.stop_event.reason = "duration" if over_time else "max_frames"  # the run's log: not a "signal"
            self.stop_event.set()

    def on_stop(self, summary: Any = None) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a run cut short (--max-frames, Ctrl-C) has no halfway reading
        self._read("end")


def steady(records: list[FrameRecord], t_start: float, warmup_s: float) -> tuple[list[FrameRecord], float, float]:
    """(steady frames, window start t, window start cpu): frames after the warm-up; the window
    opens when the last warm-up frame finished (at least the first frame is always warm-up)."""
    warm = [r for r in records if r.t - t_start < warmup_s] or records[:1]
    rest = records[len(warm):]
    if not rest:
        raise ValueError(f"profile: no frames after the {warmup_s} s warm-up ({len(records)} in all): "
                         "raise --duration (and --max-frames, if given) or lower --warmup")
    return rest, warm[-1].t, warm[-1].cpu_s


def percentiles(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {k: round(float(x), 3) for k, x in
            {"p50": p50, "p90": p90, "p99": p99, "mean": v.mean(), "min": v.min(), "max": v.max()}.items()}


def summarize(records: list[FrameRecord], t_start: float, warmup_s: float) -> dict[str, Any]:
    """Steady-state statistics of one run (no power; see `energy`)."""
    rows, t0, cpu0 = steady(records, t_start, warmup_s)
    wall, cpu = rows[-1].t - t0, rows[-1].cpu_s - cpu0
    stages = sorted({s for r in rows for s in r.latency_ms})
    lat = {s: percentiles([r.latency_ms[s] for r in rows if s in r.latency_ms]) for s in stages}
    model_ms = [sum(r.latency_ms.get(s, 0.0) for s in MODEL_STAGES) for r in rows]
    counts = {k: sum(r.semantic == k for r in rows) for k in ("fresh", "reused", "skipped")}
    n = len(rows)
    return {
        "frames": n, "warmup_frames": len(records) - n, "seconds": round(wall, 3),
        "fps": {
            "model": round(1000.0 / float(np.mean(model_ms)), 2) if np.mean(model_ms) > 0 else None,
            "pipeline": round(1000.0 / lat["total"]["mean"], 2) if "total" in lat and lat["total"]["mean"] > 0 else None,
            "end_to_end": round(n / wall, 2) if wall > 0 else None,
        },
        "latency_ms": lat,
        "model_stages": list(MODEL_STAGES),
        "semantic": counts,
        "semantic_skip_ratio": round(counts["skipped"] / n, 4),
        "semantic_fresh_ratio": round(counts["fresh"] / n, 4),
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_frame": round(cpu / n, 5),
        "cpu_cores_busy": round(cpu / wall, 3) if wall > 0 else None,
        "rss_mb": [round(rows[0].rss_mb, 1), round(rows[-1].rss_mb, 1)],  # steady window start, end
        # per minute only from a minute or more: 4 MiB of warm-up allocation in 8 s read as 1.8 GB an hour
        "rss_growth_mb_per_min": round((rows[-1].rss_mb - rows[0].rss_mb) / wall * 60, 2) if wall >= 60 else None,
        "rss_window_s": round(wall, 1),
        "window": [t0, rows[-1].t],
    }


def energy(stats: dict[str, Any], samples: list[Any], idle_w: float | None) -> dict[str, Any]:
    """Mean power over the steady window and joules per frame, gross and net of the idle baseline."""
    from .power import mean_watts

    mean_w = mean_watts(samples)
    if mean_w is None:
        return {"metered": True, "note": f"too few power samples in the window ({len(samples)})"}
    frames, seconds = stats["frames"], stats["seconds"]
    span = samples[-1].t - samples[0].t
    if seconds - span > max(0.2 * seconds, 1.0):  # the meter stopped (or started late): no extrapolation
        return {"metered": True, "note": f"power samples cover only {span:.1f} of the {seconds:.1f} s window "
                                         "(the meter stopped reading): no energy figures"}
    out = {"metered": True, "samples": len(samples), "mean_w": round(mean_w, 3),
           "joules_per_frame": round(mean_w * seconds / frames, 4)}
    if idle_w is not None:
        net = mean_w - idle_w
        out.update(idle_w=round(idle_w, 3), net_w=round(net, 3), net_joules_per_frame=round(net * seconds / frames, 4))
    return out


# ---- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One run of a comparison: a label and the CLI overrides that make it."""

    label: str  # e.g. "semantic=auto"
    overrides: dict[str, Any]  # run_cmd flag name -> value


def variants(args: argparse.Namespace) -> list[Variant]:
    if args.compare_semantic and args.compare_bundle:
        raise ValueError("profile: --compare-semantic and --compare-bundle are exclusive; compare one thing at a time")
    if args.compare_semantic:
        policies = _pair(args.compare_semantic, "--compare-semantic")
        for p in policies:
            if p not in ("auto", "always", "never"):
                raise ValueError(f"--compare-semantic: expected auto, always or never, got {p!r}")
        return [Variant(f"semantic={p}", {"semantic": p}) for p in policies]
    if args.compare_bundle:
        return [Variant(f"bundle={Path(b).name}", {"bundle": b}) for b in _pair(args.compare_bundle, "--compare-bundle")]
    return [Variant(f"semantic={args.semantic or 'config'}", {})]


def _pair(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise ValueError(f"{flag}: expected two comma-separated values (A,B), got {text!r}")
    return parts


def run_variant(args: argparse.Namespace, variant: Variant, cfg: ProfileConfig, sampler: Any) -> dict[str, Any]:
    """Build config, bundle, source and pipeline for one variant, run it, and summarize."""
    from vsdmot.edge import run_cmd
    from vsdmot.edge.runner import SourceStopEvent, run_loop, stop_on_signals
    from vsdmot.runtime.config import to_dict
    from vsdmot.runtime.pipeline import build_pipeline

    run_cfg = run_cmd.build_config(run_namespace(args, variant))
    bundle = run_cmd.open_bundle(run_cfg.pipeline.bundle)
    source = run_cmd.open_source(run_cfg)
    try:
        pipeline = build_pipeline(bundle, run_cfg, fps=source.fps)
        backend, engines = _backends(pipeline), engine_precisions(pipeline)  # before close() empties pipeline.backends
        policy = getattr(getattr(getattr(pipeline, "semantics", None), "cfg", None), "policy", run_cfg.semantics.policy)
        stop = SourceStopEvent(source)  # Ctrl-C also ends a live source's wait for a frame (a stalled camera)
        hook = ProfileHook(cfg, stop)
        try:
            with stop_on_signals(stop):
                run_loop(source, pipeline, [], [hook], stop, overlap=run_cmd.overlap_for(run_cfg, pipeline))
        finally:
            pipeline.close()
    finally:
        source.close()
    stats = summarize(hook.records, hook.t_start, cfg.warmup_s)
    label = variant.label.replace("=config", f"={run_cfg.semantics.policy}")
    return {"label": label, "config": to_dict(run_cfg), "stats": stats, "semantic_policy_effective": policy,
            "tracker": pipeline.tracker_kind, "backend": backend,
            "input_size": _input_size(pipeline), "bundle_precision": bundle.manifest.get("precision"),
            "engine_precision": engines, "device": device_record(hook.device),
            "series": _series(hook.records, hook.t_start),
            "power_samples": [] if sampler is None else _power_series(sampler, stats["window"], hook.t_start)}


def device_record(device: dict[str, Any]) -> dict[str, Any]:
    """The run's device readings as dicts, and the notes on the one under load (else the end's)."""
    from .clocks import notes

    loaded = device.get("under_load") or device.get("end")
    return {**{when: state.as_dict() for when, state in device.items()}, "notes": notes(loaded) if loaded else []}


def run_namespace(args: argparse.Namespace, variant: Variant) -> argparse.Namespace:
    """`run`'s arguments for one variant: no frame cap, and a file replayed if it ends early. A
    camera or a live stream gets no --loop, which would only warn that it is ignored; an http(s)
    URL may be a finite video (read like a file), so it keeps it."""
    from vsdmot.edge.sources import is_stream_url

    src = args.source or ""
    live = bool(args.camera) or (is_stream_url(src) and src.split("://", 1)[0].lower() not in ("http", "https"))
    return argparse.Namespace(**{**vars(args), **variant.overrides, "loop": None if live else True, "max_frames": None})


def _input_size(pipeline: Any) -> str | None:
    """The detector's input as 'WxH' (e.g. '416x416'), or None for a pipeline without one."""
    from vsdmot.runtime.yolox import size_text

    size = getattr(getattr(getattr(pipeline, "detector", None), "config", None), "input_size", None)
    return size_text(size) if size is not None else None


def _backends(pipeline: Any) -> str:
    """What the networks really ran on ("auto" resolved), e.g. "OnnxRuntimeBackend"."""
    names = sorted({type(b).__name__ for b in getattr(pipeline, "backends", [])})
    return ", ".join(names) or str(pipeline.backend_kind)


def engine_precisions(pipeline: Any) -> dict[str, str]:
    """{network: the precision its TensorRT engine was built at} (the cache key's, which TensorRT 11
    without AutoCast lowers to fp32: runtime.backends.typed_precision); {} on other backends."""
    return {Path(b.path).stem: b.key.precision for b in getattr(pipeline, "backends", []) if hasattr(b, "key")}


def _series(records: list[FrameRecord], t_start: float) -> dict[str, list]:
    return {"t": [round(r.t - t_start, 4) for r in records], "index": [r.index for r in records],
            "q": [round(r.q, 4) for r in records], "w": [round(r.w, 4) for r in records],
            "semantic": [r.semantic for r in records], "latency_ms": [r.latency_ms for r in records],
            "rss_mb": [round(r.rss_mb, 1) for r in records]}


def _power_series(sampler: Any, window: list[float], t_start: float) -> list[list[float]]:
    """[[t since run start, total W, 1 if inside the steady window]] for the whole run."""
    return [[round(s.t - t_start, 3), round(s.total_w, 4), int(window[0] <= s.t <= window[1])]
            for s in sampler.between(t_start, window[1] + 1.0)]


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """First run relative to the second (ratios A / B); None where either side has no figure."""
    def ratio(get) -> float | None:
        a, b = (get(r) for r in runs)
        return round(a / b, 3) if a is not None and b not in (None, 0) else None

    return {
        "a": runs[0]["label"], "b": runs[1]["label"],
        "fps_end_to_end": ratio(lambda r: r["stats"]["fps"]["end_to_end"]),
        "fps_model": ratio(lambda r: r["stats"]["fps"]["model"]),
        "cpu_seconds_per_frame": ratio(lambda r: r["stats"]["cpu_seconds_per_frame"]),
        "net_joules_per_frame": ratio(lambda r: r["energy"].get("net_joules_per_frame")),
        "joules_per_frame": ratio(lambda r: r["energy"].get("joules_per_frame")),
    }


def rounds_of(args: argparse.Namespace, pair: list[Variant]) -> int:
    """--rounds, which only a comparison takes."""
    rounds = getattr(args, "rounds", 1)
    if rounds < 1:
        raise ValueError(f"--rounds: expected >= 1, got {rounds}")
    if rounds > 1 and len(pair) != 2:
        raise ValueError("--rounds: interleaves the two sides of --compare-semantic or --compare-bundle; give one")
    return rounds


def compare_rounds(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """`compare` of each round (A / B), then per figure the median over rounds and every round's ratio."""
    per = [compare(rnd) for rnd in rounds]
    keys = [k for k in per[0] if k not in ("a", "b")]
    median = {k: None if any(c[k] is None for c in per) else round(float(np.median([c[k] for c in per])), 3)
              for k in keys}
    fps = [c["fps_end_to_end"] for c in per if c["fps_end_to_end"]]
    spread = round(max(fps) / min(fps), 3) if fps else None  # 1.0: every round gave the same ratio
    return {"a": per[0]["a"], "b": per[0]["b"], **median, "rounds": len(per),
            "per_round": {k: [c[k] for c in per] for k in keys}, "spread": spread}



def median_runs(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant, the round whose end-to-end FPS is the median (the lower one of an even count): the
    run the report's tables and plots show."""
    def fps(run: dict[str, Any]) -> float:
        return run["stats"]["fps"]["end_to_end"] or 0.0

    return [sorted((rnd[i] for rnd in rounds), key=fps)[(len(rounds) - 1) // 2] for i in range(len(rounds[0]))]


def measure_idle(sampler: Any, idle_s: float) -> float | None:
    """Mean board power while nothing of ours runs (before any model is loaded)."""
    from .power import mean_watts

    if sampler is None or idle_s <= 0:
        return None
    t0 = time.monotonic()
    time.sleep(idle_s)
    return mean_watts(sampler.between(t0, time.monotonic()))


def host_info() -> dict[str, Any]:
    from .clocks import read_state

    return {"machine": platform.machine(), "node": platform.node(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu_model": read_state(nvpmodel="").cpu_model, "platform": platform.platform(),
            "vsdmot": __version__}


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Idle baseline, then each variant; returns the report dict (written by `write_report`)."""
    from .power import PowerSampler, open_meter

    cfg = ProfileConfig(args.duration, args.warmup, args.idle, args.max_frames or 0)
    order = [m for m in args.power_meter.split(",") if m and m != "none"]
    probe = open_meter(order)
    log.info("profile: %s", probe.short())  # why each meter failed: at -v, and in report.json's meter.tried
    log.debug("profile: %s", probe.explain())
    sampler = PowerSampler(probe.meter, cfg.power_period_s).start() if probe.meter else None
    try:
        idle_w = measure_idle(sampler, cfg.idle_s)
        pair = variants(args)
        rounds = [[run_variant(args, v, cfg, sampler) for v in pair] for _ in range(rounds_of(args, pair))]  # A B A B
        for r in (run for rnd in rounds for run in rnd):
            t0, t1 = r["stats"]["window"]
            r["energy"] = energy(r["stats"], sampler.between(t0, t1), idle_w) if sampler else \
                {"metered": False, "note": probe.explain()}
    finally:
        if sampler is not None:
            sampler.stop()
            probe.meter.close()
    runs, comparison = median_runs(rounds), compare_rounds(rounds) if len(pair) == 2 else None
    meter = {"name": probe.meter.name if probe.meter else None, "scope": probe.meter.scope if probe.meter else None,
             "explain": probe.explain(), "tried": probe.tried, "idle_w": idle_w}
    return {"vsdmot_version": __version__, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": host_info(), "settings": vars(cfg) | {"source": args.source or "demo"}, "meter": meter,
            "runs": runs, "comparison": comparison, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


# ---- CLI ------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", metavar="PATH_OR_URL", help="video file, image folder, sequence, or stream URL")
    src.add_argument("--camera", metavar="DEV", help="V4L2 camera or csi://N")
    src.add_argument("--demo", action="store_true", help="the shipped demo clip")
    p.add_argument("--report", metavar="DIR", required=True, help="write report.json, report.md and PNG plots here")
    p.add_argument("--bundle", metavar="DIR", help="model bundle (default: the shipped one)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch"),
                   help="auto = TensorRT with a GPU, else onnxruntime; torch = the training reference")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"),
                      help="TensorRT engine precision (default auto: int8 for an --int8 bundle, else fp16)")
    p.add_argument("--threads", type=int, help="onnxruntime threads per network (0 = all cores)")
    p.add_argument("--spin", action="store_true", default=None, help="onnxruntime workers spin between runs (as run --spin)")
    p.add_argument("--overlap", action="store_true", default=None,
                   help="perceive the next frame while this one is tracked (as run --overlap)")
    p.add_argument("--semantic", choices=("auto", "always", "never"), help="semantic policy (single run)")
    p.add_argument("--tracker", choices=("e2e", "hybrid", "bytetrack"), help="tracker (default: the bundle's)")
    p.add_argument("--config", metavar="FILE", help="TOML run config (flags override it)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="steady-state seconds per run (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, metavar="S", help="warm-up seconds discarded (default 5)")
    p.add_argument("--idle", type=float, default=5.0, metavar="S", help="idle power baseline seconds (meter only; default 5)")
    p.add_argument("--max-frames", type=int, metavar="N", help="cap each run at N frames (warm-up included)")
    p.add_argument("--compare-semantic", metavar="A,B", help="two runs side by side, e.g. auto,always")
    p.add_argument("--compare-bundle", metavar="DIR_A,DIR_B", help="two bundles side by side, e.g. INT8 vs FP32")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="with --compare-*: run the two sides N times, interleaved (A B A B ...), and report the "
                   "median ratio and each round's (default 1: one run each, which on a shared machine can be "
                   "order and noise)")
    p.add_argument("--power-meter", default=",".join(METER_ORDER), type=meter_list, metavar="LIST",
                   help="meters to try in order (default jtop,ina3221,nvml,rapl; 'none' = no power)")
    from .run_cmd import add_source_options

    add_source_options(p, loop=False)  # files loop by themselves here


def run(args: argparse.Namespace) -> int:
    from .profile_report import write_report

    check_writable(Path(args.report) / "report.json", "profile report")  # before minutes of measuring, not after
    report = profile(args)
    out = write_report(report, Path(args.report))
    for r in report["runs"]:
        s, e = r["stats"], r["energy"]
        watts = power_text(e)
        print(f"{r['label']}: {s['frames']} frames, FPS model {s['fps']['model']} / pipeline {s['fps']['pipeline']} "
              f"/ end-to-end {s['fps']['end_to_end']}, skip {100 * s['semantic_skip_ratio']:.0f}%, "
              f"CPU {s['cpu_seconds_per_frame'] * 1000:.1f} ms/frame{watts}")
    if (c := report["comparison"]) and (c.get("spread") or 1.0) > DISAGREE:
        log.warning("profile: the %d rounds disagree (end-to-end FPS ratios %s): the load on this machine changed "
                    "between them, so the median is not yet a measurement; run again with more rounds (5 or more, "
                    "an odd number)", c["rounds"], ", ".join(f"x{v}" for v in c["per_round"]["fps_end_to_end"]))
    print(f"report: {out}")
    return 0


def power_text(e: dict[str, Any]) -> str:
    """The energy part of a run's summary line: watts and J/frame, why a meter gave none, or no meter."""
    if "mean_w" in e:
        return f", {e['mean_w']} W ({e.get('net_joules_per_frame', e['joules_per_frame'])} J/frame)"
    return f", power: {e['note']}" if e.get("metered") else ", no power meter"
