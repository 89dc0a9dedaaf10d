"""Health and metrics: /healthz 200/503 by freshness, Prometheus text that a parser accepts, a real
server on loopback, and power metrics only from a (recorded) meter."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from vsdmot import __version__
from vsdmot.edge import health as H
from vsdmot.edge.power import Ina3221Meter
from vsdmot.runtime.types import Detections, FrameResult


@dataclass
class Stats:
    last_fresh_monotonic: float
    connected: bool = True
    stalled: bool = False
    dropped: int = 0
    reconnects: int = 0
    stalls: int = 0
    warmup: int = 0


class Clock:
    def __init__(self):
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def result(i: int, semantic: str, total_ms: float = 20.0) -> FrameResult:
    return FrameResult(i, i / 10, 0.8, 0.3, semantic, Detections.empty(with_ids=True),
                       {"quality": 1.0, "detector": total_ms - 3, "tracker": 2.0, "total": total_ms})


@pytest.mark.parametrize(
    "text, expected",
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108)), ("0.0.0.0:0", ("0.0.0.0", 0)),
     ("localhost", ValueError), (":9108", ValueError), ("127.0.0.1:99999", ValueError)],
)
def test_parse_listen(text, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match="HOST:PORT"):
            H.parse_listen(text)
    else:
        assert H.parse_listen(text) == expected


def test_health_by_freshness():
    clock = Clock()
    m = H.Metrics(stall_s=5.0, clock=clock)
    code, body = m.health()
    assert (code, body["status"]) == (503, "starting")
    m.observe(result(1, "fresh"), Stats(last_fresh_monotonic=clock.t))
    assert m.health()[0] == 200
    clock.t += 4.9  # no frame for 4.9 s: still within the window
    assert m.health()[0] == 200
    clock.t += 0.2
    code, body = m.health()
    assert (code, body["status"]) == (503, "stalled") and body["last_fresh_age_s"] == pytest.approx(5.1)
    # frames keep coming but the source says they are stale (a stuck camera): still 503
    m.observe(result(2, "skipped"), Stats(last_fresh_monotonic=clock.t - 5.1, stalls=1))
    assert m.health()[0] == 503
    m.observe(result(3, "skipped"), Stats(last_fresh_monotonic=clock.t, connected=False, reconnects=1))
    code, body = m.health()
    assert code == 503 and body["source_connected"] is False and body["source_reconnects"] == 1
    m.observe(result(4, "skipped"), Stats(last_fresh_monotonic=clock.t, reconnects=1))
    assert m.health()[0] == 200
    m.observe(result(5, "skipped"), Stats(last_fresh_monotonic=clock.t, stalled=True))  # the source's own verdict
    assert m.health()[0] == 503


def test_live_source_without_a_fresh_frame_yet():
    clock = Clock()
    m = H.Metrics(stall_s=5.0, clock=clock)
    m.observe(result(1, "skipped"), Stats(last_fresh_monotonic=0.0))  # SourceStats: 0.0 = none yet
    code, body = m.health()
    assert code == 503 and body["last_fresh_age_s"] is None and json.dumps(body)
    assert not H.is_fresh(Stats(last_fresh_monotonic=0.0), clock.t, 5.0)
    assert H.is_fresh(None, clock.t, 5.0)  # a file source has no stats: its frames are fresh


def test_source_counters_are_current_during_a_stall():
    """During a stall no frame reaches the loop, so no hook is called: /metrics and /healthz kept
    the source's counters of the last frame (source_connected 1, stalls and reconnects 0) for as
    long as the camera was gone. With the source's stats getter they are read per request."""
    clock = Clock()
    live = Stats(last_fresh_monotonic=clock.t)
    m = H.Metrics(stall_s=5.0, clock=clock, source_stats=lambda: live)
    m.observe(result(1, "fresh"), live)
    assert m.health()[0] == 200
    clock.t += 8.0  # the camera vanished: the source dropped the capture and is re-opening it
    live.connected, live.stalls, live.reconnects, live.stalled = False, 1, 0, True
    code, body = m.health()
    assert code == 503 and body["source_connected"] is False and body["source_stalls"] == 1
    s = parse_prometheus(m.prometheus())
    assert s["vsdmot_source_connected"] == 0 and s["vsdmot_source_stalls_total"] == 1
    assert s["vsdmot_last_fresh_frame_age_seconds"] == pytest.approx(8.0)


def test_source_stats_before_the_first_frame_are_not_ok():
    """Frames the source read while the model loads are fresh, but nothing was tracked yet."""
    clock = Clock()
    m = H.Metrics(stall_s=5.0, clock=clock, source_stats=lambda: Stats(last_fresh_monotonic=clock.t))
    code, body = m.health()
    assert (code, body["status"]) == (503, "starting")


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample line `name{labels} value` -> value; raises on a malformed line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line) or not line, line
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[a-zA-Z_]+="[^"]*"(?:,[a-zA-Z_]+="[^"]*")*\})?) (\S+)$', line)
        assert m, f"malformed sample line: {line!r}"
        out[m[1]] = float(m[2])
    return out


def test_metrics_content():
    clock = Clock()
    m = H.Metrics(stall_s=5.0, clock=clock)
    states = ["fresh"] + ["skipped"] * 6 + ["reused"] * 3
    for i, st in enumerate(states, 1):
        clock.t += 0.1
        m.observe(result(i, st, total_ms=4.0 if i % 2 else 40.0),
                  Stats(clock.t, dropped=2, reconnects=1, stalls=1, warmup=16))
    s = parse_prometheus(m.prometheus())
    assert s["vsdmot_frames_total"] == 10
    assert s["vsdmot_fps"] == pytest.approx(10.0)
    assert s["vsdmot_semantic_skip_ratio"] == pytest.approx(0.6)
    assert s['vsdmot_semantic_frames_total{state="reused"}'] == 3
    assert s["vsdmot_source_dropped_frames_total"] == 2 and s["vsdmot_source_reconnects_total"] == 1
    assert s["vsdmot_source_warmup_total"] == 16  # frames replaced while the model loaded: not drops
    assert s['vsdmot_stage_latency_seconds_bucket{stage="total",le="0.005"}'] == 5
    assert s['vsdmot_stage_latency_seconds_bucket{stage="total",le="0.05"}'] == 10
    assert s['vsdmot_stage_latency_seconds_bucket{stage="total",le="+Inf"}'] == 10
    assert s['vsdmot_stage_latency_seconds_sum{stage="total"}'] == pytest.approx(0.22)
    assert s['vsdmot_power_meter_info{meter="none"}'] == 1
    assert not any(k.startswith("vsdmot_power_watts") for k in s)  # no meter, no watts


def test_metrics_outputs_bytes_and_free_space(tmp_path):
    """Each output's bytes on disk count its rotated predecessors; a folder's free space is the
    file system's; no outputs, no lines."""
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b"x" * 300)
    (tmp_path / "t.jsonl.20261125T010203Z").write_bytes(b"x" * 1000)
    (tmp_path / "t.jsonl.20261125T010203Z-1").write_bytes(b"x" * 500)
    m = H.Metrics(outputs={"jsonl": str(jsonl), "mot": str(tmp_path / "m.txt"), "video": ""})
    s = parse_prometheus(m.prometheus())
    assert s['vsdmot_output_bytes{output="jsonl"}'] == 1800 and s['vsdmot_output_bytes{output="mot"}'] == 0
    assert abs(s['vsdmot_output_free_bytes{output="jsonl"}'] - shutil.disk_usage(tmp_path).free) < 1e8  # others write too
    assert not any('output="video"' in k for k in s)  # not asked for
    assert not any(k.startswith("vsdmot_output") for k in parse_prometheus(H.Metrics().prometheus()))


def test_metrics_power_from_a_recorded_meter():
    m = H.Metrics()
    m.set_power(Ina3221Meter(Path(__file__).parent / "data/sysfs/jp6_orin_nano").read(), "ina3221")
    s = parse_prometheus(m.prometheus())
    assert s['vsdmot_power_watts{rail="VDD_IN"}'] == pytest.approx(5.072 * 1.024)
    assert s['vsdmot_power_rail_watts{rail="VDD_SOC"}'] == pytest.approx(5.072 * 0.288)
    assert s['vsdmot_power_meter_info{meter="ina3221"}'] == 1


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_server_on_loopback_through_the_hook():
    hook = H.HealthHook("127.0.0.1:0", stall_s=60.0)
    hook.on_start()
    try:
        host, port = hook.server.address
        assert host == "127.0.0.1"
        base = f"http://{host}:{port}"
        code, ctype, body = get(base + "/healthz")
        assert (code, ctype, json.loads(body)["status"]) == (503, "application/json", "starting")
        import time

        hook.on_frame(result(1, "fresh"), Stats(time.monotonic()))
        code, _, body = get(base + "/healthz")
        assert code == 200 and json.loads(body)["frames"] == 1
        code, ctype, body = get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert parse_prometheus(body)["vsdmot_frames_total"] == 1
        assert get(base + "/nope")[0] == 404
    finally:
        hook.on_stop(None)


def test_port_in_use_is_a_clear_error():
    first = H.HealthServer(H.Metrics(), "127.0.0.1:0").start()
    try:
        with pytest.raises(OSError, match="health server"):
            H.HealthServer(H.Metrics(), "127.0.0.1:%d" % first.address[1])
        hook = H.HealthHook("127.0.0.1:%d" % first.address[1], stall_s=5.0)
        hook.on_start()  # the run goes on without its own server, and says so in the log
        assert hook.server is None
        hook.on_stop(None)
    finally:
        first.close()


def started_meter_hook() -> H.HealthHook:
    """A started HealthHook whose sampler reads the recorded Orin Nano sysfs tree (a replay of
    recorded files, not a measurement), once its first sample is in (or after 5 s)."""
    import time

    hook = H.HealthHook("127.0.0.1:0", stall_s=60.0, meter_order=("ina3221",),
                        root=str(Path(__file__).parent / "data/sysfs/jp6_orin_nano"))
    hook.on_start()
    deadline = time.monotonic() + 5
    while hook.sampler.latest() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return hook


def test_hook_serves_power_from_a_meter():
    """The hook's sampler thread on the recorded sysfs tree ends up in /metrics."""
    import time

    hook = started_meter_hook()
    try:
        hook.on_frame(result(1, "fresh"), Stats(time.monotonic()))
        host, port = hook.server.address
        s = parse_prometheus(get(f"http://{host}:{port}/metrics")[2])
    finally:
        hook.on_stop(None)
    assert s['vsdmot_power_meter_info{meter="ina3221"}'] == 1
    assert s['vsdmot_power_watts{rail="VDD_IN"}'] == pytest.approx(5.072 * 1.024)


def test_a_meter_that_stopped_reading_gives_no_watts():
    """The hook exported the sampler's last sample whatever its age: a rail that vanished (or a
    jtop service that died) kept its last watts in /metrics as if current."""
    import dataclasses
    import time

    hook = started_meter_hook()
    try:
        hook.sampler.stop()  # the meter reads no more
        last = hook.sampler.samples[-1]
        hook.sampler.samples.append(dataclasses.replace(last, t=time.monotonic() - 60.0))  # a minute old
        hook.on_frame(result(1, "fresh"), Stats(time.monotonic()))
        host, port = hook.server.address
        s = parse_prometheus(get(f"http://{host}:{port}/metrics")[2])
    finally:
        hook.on_stop(None)
    assert not any(k.startswith("vsdmot_power_watts") or k.startswith("vsdmot_power_rail_watts") for k in s), s


def test_fps_falls_when_frames_stop():
    """4.6 s after the last of a steady 10 FPS the metric read 10.0 (the span of the frames left in
    the window, not the window): a stopped stream looked healthy on a dashboard."""
    fps = H.FpsWindow(5.0)
    t = 0.0
    for _ in range(100):  # 10 s at 10 FPS
        t += 0.1
        fps.tick(t)
    assert fps.fps(t) == pytest.approx(10.0, abs=0.5)
    assert fps.fps(t + 2.5) == pytest.approx(5.0, abs=0.5) and fps.fps(t + 4.6) <= 1.0 and fps.fps(t + 6) == 0.0
    slow = H.FpsWindow(5.0)  # one frame every 4 s: it flapped between 0.4 and 0, or read 0 throughout
    for k in range(10):
        slow.tick(4.0 * k)
    assert all(0.19 <= slow.fps(36.0 + dt) <= 0.41 for dt in (0.0, 1.0, 2.0, 3.5))


def test_a_loop_that_stopped_tracking_is_stalled_though_the_source_is_fresh():
    """The loop blocked on a full output pipe: the source's reader went on receiving (fresh), and
    /healthz said ok for 50 s while no frame was tracked and the watchdog starved."""
    clock, fresh = Clock(), {"t": 0.0}
    m = H.Metrics(stall_s=5.0, clock=clock, source_stats=lambda: Stats(fresh["t"]))
    for i in range(1, 4):
        clock.t += 0.1
        fresh["t"] = clock.t
        m.observe(result(i, "skipped"), Stats(clock.t))
    assert m.health()[0] == 200
    clock.t += 8.0
    fresh["t"] = clock.t  # the reader still delivers; the loop does not take the frames
    code, body = m.health()
    assert code == 503 and body["status"] == "stalled" and body["last_frame_age_s"] == pytest.approx(8.0)
    assert parse_prometheus(m.prometheus())["vsdmot_last_processed_frame_age_seconds"] == pytest.approx(8.0)


def test_metrics_carry_the_process_and_the_build():
    """A service meant to run for months: resident memory and file descriptors that creep show in
    the standard process_* metrics first."""
    s = parse_prometheus(H.Metrics().prometheus())
    assert s["process_resident_memory_bytes"] > 10e6 and s["process_open_fds"] >= 3
    assert s["process_cpu_seconds_total"] > 0 and s["process_start_time_seconds"] > 1.7e9
    assert [k for k in s if k.startswith("vsdmot_build_info")] == [f'vsdmot_build_info{{version="{__version__}"}}']
