"""Health and metrics over HTTP (stdlib `http.server` on a thread), bound to localhost by default.

    GET /healthz  200 while fresh frames arrive within the stall window, else 503; JSON body
    GET /metrics  Prometheus text: FPS, per-stage latency histograms, semantic skip ratio,
                  dropped frames, reconnects, stalls, the outputs' bytes on disk and the free
                  space beside them, and power where a meter exists
    GET /preview, /preview.jpg   with --preview: the annotated frames (edge/preview.py)

`HealthHook` is a run-loop hook (`on_start`, `on_frame(result, source_stats)`, `on_stop`): it
feeds a thread-safe `Metrics` that the server thread reads. Given the source's `stats` getter,
each request reads the source's counters afresh: a stalled source delivers no frame, so no hook
call would update them.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from vsdmot import __version__
from vsdmot.runtime.config import parse_listen

log = logging.getLogger(__name__)

# Latency histogram upper bounds in seconds (Prometheus convention: base units).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# edge/sources.py SourceStats counters exported to /metrics and /healthz
SOURCE_COUNTERS = ("frames_read", "dropped", "warmup", "duplicates", "read_failures", "stalls", "reconnects")
POWER_PERIOD_S = 1.0  # the service's power sampling period
POWER_MAX_AGE_S = 5.0  # an older sample is not exported: the meter stopped reading (no watts, not stale ones)


class FpsWindow:
    """Frames per second over the last `window_s` seconds (or since the first frame, when that is
    sooner), up to now: the rate falls when frames stop. (Over the span of the frames left in the
    window, it read 11 FPS 4 s after the last frame.)"""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._first: float | None = None

    def tick(self, now: float) -> None:
        self._first = now if self._first is None else self._first
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def fps(self, now: float) -> float:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if self._first is None:
            return 0.0
        if now - self._first < self.window_s:  # the first frame opens the window: the ones after it count
            return (len(self._times) - 1) / max(now - self._first, 1e-9) if len(self._times) >= 2 else 0.0
        return len(self._times) / self.window_s  # a slow source (1 frame in 4 s) reads 0.2-0.25, not 0


def last_fresh(stats: Any, now: float) -> float:
    """When the source last delivered a fresh frame (monotonic s). Without stats (a file source)
    the frame just processed is fresh; a live source's 0.0 means "none yet"."""
    t = getattr(stats, "last_fresh_monotonic", None) if stats is not None else None
    if t is None:
        return now
    return float(t) if t > 0 else -math.inf


def is_fresh(stats: Any, now: float, stall_s: float) -> bool:
    """Fresh = connected, not flagged stalled, and a new frame within `stall_s` seconds (a stuck
    camera repeating its last image, or a stream that stopped, is not fresh)."""
    if stats is not None and (getattr(stats, "connected", True) is False or getattr(stats, "stalled", False) is True):
        return False
    return now - last_fresh(stats, now) <= stall_s


class Histogram:
    """Cumulative-bucket histogram of seconds."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds, self.counts, self.total, self.n = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, seconds: float) -> None:
        for i, b in enumerate(self.bounds):
            if seconds <= b:
                self.counts[i] += 1
        self.total += seconds
        self.n += 1


class Metrics:
    """Thread-safe run state: written by the run loop, read by the HTTP thread."""

    def __init__(self, stall_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 source_stats: Callable[[], Any] | None = None, outputs: Mapping[str, str] | None = None):
        if stall_s <= 0:
            raise ValueError(f"stall window: expected > 0 s, got {stall_s}")
        self.stall_s, self.clock = stall_s, clock
        self.outputs = {k: Path(v) for k, v in (outputs or {}).items() if v}  # sink kind (mot, jsonl, ...) -> file
        # the live source's stats(), read per request: during a stall no frame (and no observe) comes
        self.source_stats = source_stats
        self.started = clock()
        self._lock = threading.Lock()
        self._fps = FpsWindow()
        self.frames = 0
        self.semantic = {"fresh": 0, "reused": 0, "skipped": 0}
        self.latency: dict[str, Histogram] = {}
        self.source: dict[str, float] = {k: 0 for k in SOURCE_COUNTERS}
        self.connected, self.stalled = True, False
        self.last_fresh: float | None = None  # the source's last fresh frame (its reader thread's clock)
        self.last_processed: float | None = None  # the loop's last finished frame: a stuck loop has none
        self.last_q = self.last_w = math.nan
        self.power: Any = None  # a power.PowerSample, when metered
        self.power_meter = ""  # meter name, "" = none
        self.power_reader: Callable[[], Any] | None = None  # a recent PowerSample or None, read per request

    def observe(self, result: Any, stats: Any = None) -> None:
        now = self.clock()
        with self._lock:
            self.frames, self.last_processed = self.frames + 1, now
            self._fps.tick(now)
            self.semantic[result.semantic] = self.semantic.get(result.semantic, 0) + 1
            for stage, ms in result.latency_ms.items():
                self.latency.setdefault(stage, Histogram()).observe(ms / 1000.0)
            self.last_q, self.last_w = float(result.q), float(result.w)
            self._observe_source(stats, now)

    def _observe_source(self, stats: Any, now: float) -> None:
        for k in SOURCE_COUNTERS:
            self.source[k] = getattr(stats, k, self.source[k]) if stats is not None else self.source[k]
        self.connected = bool(getattr(stats, "connected", True)) if stats is not None else True
        self.stalled = bool(getattr(stats, "stalled", False)) if stats is not None else False
        t = last_fresh(stats, now)
        self.last_fresh = t if math.isfinite(t) else self.last_fresh

    def _refresh(self, now: float) -> None:
        """The source's counters as of now, not of the last frame. Holds _lock."""
        stats = self.source_stats() if self.source_stats is not None else None
        if stats is not None:
            self._observe_source(stats, now)
        if self.power_reader is not None:
            self.power = self.power_reader()

    def set_power(self, sample: Any, meter: str) -> None:
        with self._lock:
            self.power, self.power_meter = sample, meter

    def fps(self) -> float:
        with self._lock:
            return self._fps.fps(self.clock())

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 while a fresh frame came within the stall window."""
        now = self.clock()
        with self._lock:
            self._refresh(now)
            age = None if self.last_fresh is None else now - self.last_fresh
            done = None if self.last_processed is None else now - self.last_processed  # a loop stuck on a full
            ok = (self.frames > 0 and age is not None and age <= self.stall_s  # pipe or a hung network reads
                  and done is not None and done <= self.stall_s and self.connected and not self.stalled)
            status = "ok" if ok else ("starting" if self.frames == 0 else "stalled")
            body = {
                "status": status, "frames": self.frames, "fps": round(self._fps.fps(now), 2),
                "last_fresh_age_s": None if age is None else round(age, 3),
                "last_frame_age_s": None if done is None else round(done, 3), "stall_timeout_s": self.stall_s,
                "source_connected": self.connected, "uptime_s": round(now - self.started, 1),
                **{f"source_{k}": self.source[k] for k in SOURCE_COUNTERS},
            }
        return (200 if ok else 503), body

    def prometheus(self) -> str:
        """The text exposition format (version 0.0.4)."""
        now = self.clock()
        with self._lock:
            self._refresh(now)
            lines = _counter_lines(self, now) + _histogram_lines(self.latency) + _power_lines(self)
        return "\n".join(lines + _output_lines(self.outputs) + _process_lines()) + "\n"


def _metric(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_num(v)}" for labels, v in samples]


def _process_lines() -> list[str]:
    """The standard process_* metrics (a service meant to run for months: memory and file
    descriptors that creep show here first) and vsdmot_build_info."""
    import os
    import resource

    out: list[str] = []
    cpu = os.times()
    _metric(out, "process_cpu_seconds_total", "counter", "User and system CPU time, seconds.",
            [("", round(cpu.user + cpu.system, 3))])
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])  # resident pages
        _metric(out, "process_resident_memory_bytes", "gauge", "Resident memory, bytes.",
                [("", pages * resource.getpagesize())])
        _metric(out, "process_open_fds", "gauge", "Open file descriptors.", [("", len(os.listdir("/proc/self/fd")))])
    except (OSError, ValueError, IndexError):  # no /proc (not Linux)
        pass
    _metric(out, "process_start_time_seconds", "gauge", "Start time, seconds since the epoch.", [("", START_TIME)])
    _metric(out, "vsdmot_build_info", "gauge", "The vsdmot version running.", [(f'{{version="{__version__}"}}', 1)])
    return out


def _start_time() -> float:
    """When this process started, seconds since the epoch: /proc/self/stat's start (clock ticks
    after boot) plus /proc/stat's btime, as prometheus_client does; else now."""
    import os

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError, StopIteration):
        return round(time.time(), 3)


START_TIME = _start_time()


def _num(v: float) -> str:
    return "NaN" if isinstance(v, float) and math.isnan(v) else repr(float(v)) if isinstance(v, float) else str(v)


def _counter_lines(m: Metrics, now: float) -> list[str]:
    out: list[str] = []
    age = now - m.last_fresh if m.last_fresh is not None else math.nan
    n = sum(m.semantic.values())
    _metric(out, "vsdmot_frames_total", "counter", "Frames processed.", [("", m.frames)])
    _metric(out, "vsdmot_fps", "gauge", "Frames per second over the last 5 s.", [("", m._fps.fps(now))])
    _metric(out, "vsdmot_semantic_frames_total", "counter", "Frames by semantic state (fresh, reused, skipped).",
            [(f'{{state="{k}"}}', v) for k, v in sorted(m.semantic.items())])
    _metric(out, "vsdmot_semantic_skip_ratio", "gauge", "Share of frames that skipped semantic work.",
            [("", m.semantic.get("skipped", 0) / n if n else 0.0)])
    _metric(out, "vsdmot_quality", "gauge", "Quality q of the last frame (1 = clean).", [("", m.last_q)])
    _metric(out, "vsdmot_dswr_weight", "gauge", "DSWR fusion weight w of the last frame.", [("", m.last_w)])
    for k in SOURCE_COUNTERS:
        name = "vsdmot_source_dropped_frames_total" if k == "dropped" else f"vsdmot_source_{k}_total"
        _metric(out, name, "counter", f"Source {k.replace('_', ' ')} (the live source's statistics).", [("", m.source[k])])
    _metric(out, "vsdmot_source_connected", "gauge", "1 while the source is connected.", [("", int(m.connected))])
    _metric(out, "vsdmot_last_fresh_frame_age_seconds", "gauge", "Seconds since the source's last fresh frame.",
            [("", age)])
    done = now - m.last_processed if m.last_processed is not None else math.nan
    _metric(out, "vsdmot_last_processed_frame_age_seconds", "gauge", "Seconds since the last frame was tracked.",
            [("", done)])
    return out


def _histogram_lines(latency: dict[str, Histogram]) -> list[str]:
    if not latency:
        return []
    out = ["# HELP vsdmot_stage_latency_seconds Per-stage latency.", "# TYPE vsdmot_stage_latency_seconds histogram"]
    for stage, h in sorted(latency.items()):
        name = f'vsdmot_stage_latency_seconds_bucket{{stage="{stage}",le='
        out += [f'{name}"{b}"}} {c}' for b, c in zip(h.bounds, h.counts)] + [f'{name}"+Inf"}} {h.n}']
        out += [f'vsdmot_stage_latency_seconds_sum{{stage="{stage}"}} {h.total!r}',
                f'vsdmot_stage_latency_seconds_count{{stage="{stage}"}} {h.n}']
    return out


def _output_lines(outputs: Mapping[str, Path]) -> list[str]:
    """Per output file: the bytes it and its kept predecessors (NAME.<UTC time>, --rotate-mb) hold,
    and the free bytes of its file system, so an alert can fire before a full disk stops the run."""
    from vsdmot.runtime.sinks import kept_files

    held, free = [], []
    for kind, path in outputs.items():
        label = f'{{output="{kind}"}}'
        files = [f for f in (path, *kept_files(path)) if f.is_file()]
        held.append((label, sum(_size(f) for f in files)))
        try:
            free.append((label, shutil.disk_usage(path.parent).free))
        except OSError:  # the folder went away: no number rather than a wrong one
            continue
    out: list[str] = []
    if outputs:
        _metric(out, "vsdmot_output_bytes", "gauge", "Bytes an output holds on disk, its kept earlier files included.", held)
        _metric(out, "vsdmot_output_free_bytes", "gauge", "Free bytes on the file system of an output.", free)
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # rotated away between the listing and here
        return 0


def _power_lines(m: Metrics) -> list[str]:
    """Only a real meter's readings; with none, a single info gauge says so (no invented watts)."""
    out: list[str] = []
    meter = m.power_meter or "none"
    _metric(out, "vsdmot_power_meter_info", "gauge", "The power meter in use (meter=\"none\": no watts).",
            [(f'{{meter="{meter}"}}', 1)])
    if m.power is not None:
        rails = [(f'{{rail="{k}"}}', v) for k, v in sorted(m.power.rails_w.items())]
        _metric(out, "vsdmot_power_rail_watts", "gauge", "Power per rail in watts.", rails)
        _metric(out, "vsdmot_power_watts", "gauge", "Board power in watts.",
                [(f'{{rail="{m.power.total_rail}"}}', m.power.total_w)])
    return out


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics  # set on a subclass per server
    preview: Any = None  # edge.preview.Preview with --preview
    timeout = 10.0  # seconds a socket read or write may block: a paused /preview viewer frees its slot

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        from .preview import serve

        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            code, body = self.metrics.health()
            self._send(code, "application/json", json.dumps(body) + "\n")
        elif path == "/metrics":
            self._send(200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.prometheus())
        elif not serve(self, self.preview, path):
            paths = ["/healthz", "/metrics"] + (["/preview", "/preview.jpg"] if self.preview else [])
            self._send(404, "application/json", json.dumps({"error": "not found", "paths": paths}))

    def _send(self, code: int, ctype: str, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("health %s: " + fmt, self.client_address[0], *args)


class HealthServer:
    """The HTTP server on a daemon thread. Port 0 picks a free port (see `.address`)."""

    def __init__(self, metrics: Metrics, listen: str = "127.0.0.1:9108", preview: Any = None):
        host, port = parse_listen(listen)
        handler = type("Handler", (_Handler,), {"metrics": metrics, "preview": preview})
        server = type("Server", (ThreadingHTTPServer,), {"address_family": _family(host), "daemon_threads": True})
        try:
            self._httpd = server((host, port), handler)
        except OSError as e:
            raise OSError(f"health server: cannot listen on {listen} ({e.strerror or e}); give --health-listen "
                          "another HOST:PORT (or off), or [service] health_listen (\"off\")") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="vsdmot-health", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._httpd.server_address[:2]

    def start(self) -> HealthServer:
        self._thread.start()
        host, port = self.address
        log.info("health: serving /healthz and /metrics on http://%s:%d", host, port)
        if self._httpd.RequestHandlerClass.preview is not None:
            log.info("preview: http://%s:%d/preview (MJPEG: a browser or VLC), /preview.jpg (one frame)", host, port)
            if not _is_loopback(host):
                log.warning("preview: the camera's images are served on %s:%d without authentication, to anyone "
                            "who reaches this port; bind the health server to 127.0.0.1 unless a firewall or a "
                            "reverse proxy guards it", host, port)
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


class HealthHook:
    """Run-loop hook: serve health/metrics for the run, and power readings where metered."""

    def __init__(self, listen: str, stall_s: float, meter_order: tuple[str, ...] | None = None, root: str = "/",
                 source_stats: Callable[[], Any] | None = None, outputs: Mapping[str, str] | None = None,
                 preview: Any = None):
        # source_stats: the source's, read per request; outputs: sink kind -> file, sized per request;
        # preview: an edge.preview.Preview (a sink of the run) to serve at /preview
        self.metrics = Metrics(stall_s, source_stats=source_stats, outputs=outputs)
        self.listen, self.meter_order, self.root = listen, meter_order, root  # root: "/" (tests: a recorded tree)
        self.preview = preview
        self.server: HealthServer | None = None
        self.sampler: Any = None

    def on_start(self) -> None:
        try:
            self.server = HealthServer(self.metrics, self.listen, self.preview).start()
        except OSError as e:  # tracking matters more than its metrics: run on, loudly
            served = "/healthz, /metrics and /preview" if self.preview is not None else "/healthz and /metrics"
            log.error("%s; running without %s (another process may answer on that port)", e, served)
        if self.meter_order:
            self._start_power()

    def _start_power(self) -> None:
        from .power import PowerSampler, open_meter

        probe = open_meter(self.meter_order, self.root)
        log.info("health: %s", probe.short())
        if probe.meter is None:  # why each meter failed: at -v (`vsdmot-edge doctor` explains them too)
            log.debug("health: %s", probe.explain())
        if probe.meter is not None:
            sampler = PowerSampler(probe.meter, period_s=POWER_PERIOD_S, keep=10).start()  # bounded: runs for months
            self.sampler, self.metrics.power_meter = sampler, probe.meter.name
            self.metrics.power_reader = lambda: sampler.latest(max_age_s=POWER_MAX_AGE_S)

    def on_frame(self, result: Any, source_stats: Any = None) -> None:
        self.metrics.observe(result, source_stats)

    def on_stop(self, summary: Any = None) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler.meter.close()
        if self.server is not None:
            self.server.close()
