"""systemd integration: the sd_notify protocol on real datagram sockets, the notify hook's READY /
WATCHDOG / STATUS / STOPPING logic (driven with FrameResults and SourceStats-like objects), the
signal handlers, and a real `vsdmot-edge run` under a test NOTIFY_SOCKET stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vsdmot.edge import service as S
from vsdmot.runtime.types import Detections, FrameResult

from helpers import EDGE_CLI


@dataclass
class Stats:
    """The fields of edge/sources.py's SourceStats the hooks read."""

    last_fresh_monotonic: float
    connected: bool = True
    dropped: int = 0
    reconnects: int = 0
    stalls: int = 0


def result(i: int, semantic: str = "skipped") -> FrameResult:
    return FrameResult(i, i / 25, 0.9, 0.1, semantic, Detections.empty(with_ids=True), {"detector": 5.0, "total": 6.0})


class Listener:
    """A bound unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)

    def drain(self, timeout: float = 0.05) -> list[str]:
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst, str(tmp_path / "notify.sock")
    lst.close()


@pytest.mark.parametrize(
    "value, expected, error",
    [
        ("/run/systemd/notify", "/run/systemd/notify", None),
        ("@/org/freedesktop/systemd1/notify/123", "\0/org/freedesktop/systemd1/notify/123", None),
        ("relative.sock", None, "absolute path or @abstract"),
        ("", None, "absolute path or @abstract"),
    ],
)
def test_notify_address(value, expected, error):
    if error:
        with pytest.raises(ValueError, match=error):
            S.notify_address(value)
    else:
        assert S.notify_address(value) == expected


def test_notifier_path_socket(listener):
    lst, path = listener
    n = S.Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled and n.send("READY=1", "STATUS=hello")
    assert lst.drain() == ["READY=1\nSTATUS=hello"]


def test_notifier_abstract_socket():
    name = f"@vsdmot-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener("\0" + name[1:])
    try:
        assert S.Notifier(name).send("WATCHDOG=1")
        assert lst.drain() == ["WATCHDOG=1"]
    finally:
        lst.close()


def test_full_notify_queue_never_blocks(listener):
    """Nobody reads the socket (a wedged systemd): sends fail fast instead of stalling the loop."""
    _, path = listener
    n = S.Notifier(path)
    t0 = time.monotonic()
    results = [n.send("WATCHDOG=1") for _ in range(2000)]
    assert time.monotonic() - t0 < 5 and results[0] and not results[-1]


def test_notifier_without_systemd_is_a_no_op(tmp_path):
    n = S.Notifier.from_env({})
    assert not n.enabled and n.send("READY=1") is False and not n.sent
    gone = S.Notifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.send("READY=1") is False  # logged, never raised: systemd going away must not kill the run


@pytest.mark.parametrize(
    "env, pid, expected",
    [
        ({}, 1, None),
        ({"WATCHDOG_USEC": "30000000"}, 1, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 1, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, 1, None),  # meant for another process
        ({"WATCHDOG_USEC": "abc"}, 1, ValueError),
    ],
)
def test_watchdog_interval(env, pid, expected):
    if expected is ValueError:
        with pytest.raises(ValueError, match="WATCHDOG_USEC"):
            S.watchdog_interval_s(env, pid)
    else:
        assert S.watchdog_interval_s(env, pid) == expected


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def kinds(messages: list[str]) -> list[str]:
    return [m.split("\n")[0].split("=")[0] for m in messages]


def test_ready_after_first_frame_then_watchdog_while_fresh(listener):
    lst, path = listener
    clock = Clock()
    hook = S.NotifyHook(S.Notifier(path), stall_s=2.0, watchdog_s=1.0, clock=clock)
    hook.on_start()
    assert kinds(lst.drain()) == ["STATUS"]  # starting; not READY before a frame is processed
    for i in range(1, 31):  # 3 s of fresh frames at 10 FPS
        clock.t += 0.1
        hook.on_frame(result(i), Stats(last_fresh_monotonic=clock.t))
    got = kinds(lst.drain())
    assert got[0] == "READY" and got.count("READY") == 1
    assert got.count("WATCHDOG") == 3  # at t = 0.1, 1.1, 2.1 s: every watchdog_s
    hook.on_stop(None)
    assert kinds(lst.drain()) == ["STOPPING"]


def test_watchdog_stops_when_the_source_stalls_and_resumes_when_fresh(listener):
    """A camera that vanished (or repeats its last image) keeps the loop turning with stale
    frames; the watchdog must starve so systemd restarts the service."""
    lst, path = listener
    clock = Clock()
    hook = S.NotifyHook(S.Notifier(path), stall_s=2.0, watchdog_s=0.5, clock=clock)
    start, fresh_until = clock.t, clock.t + 1.0
    ping_times = []
    for i in range(1, 81):  # 8 s at 10 FPS: fresh for 1 s, then the last fresh frame stays at +1 s
        clock.t += 0.1
        hook.on_frame(result(i), Stats(last_fresh_monotonic=min(clock.t, fresh_until)))
        if "WATCHDOG" in kinds(lst.drain(0.002)):
            ping_times.append(round(clock.t - start, 1))
    # pings every 0.5 s while the newest fresh frame is within the 2 s stall window, then none
    assert ping_times == [0.1, 0.6, 1.1, 1.6, 2.1, 2.6]
    clock.t += 0.1  # fresh again: pings resume at once
    hook.on_frame(result(81), Stats(last_fresh_monotonic=clock.t))
    assert "WATCHDOG" in kinds(lst.drain())


def test_status_says_stalled_while_no_frame_arrives(listener):
    """STATUS= was refreshed only from processed frames, and a stalled source delivers none:
    `systemctl status` kept 'tracking: 10.0 fps' for as long as the camera was gone (for ever
    with the watchdog off). A timer now says so, and never pings the watchdog."""
    lst, path = listener
    clock = Clock()
    hook = S.NotifyHook(S.Notifier(path), stall_s=2.0, watchdog_s=0.5, clock=clock, status_every_s=0.1)
    hook.on_start()
    try:
        time.sleep(0.1)
        assert not any("stalled" in m for m in lst.drain())  # no frame yet: still starting, not stalled
        hook.on_frame(result(1), Stats(last_fresh_monotonic=clock.t))
        lst.drain()
        clock.t += 7.0  # no frame for 7 s
        msgs, end = [], time.monotonic() + 0.4
        while time.monotonic() < end:
            msgs += lst.drain(0.03)
    finally:
        hook.on_stop(None)
    assert any(m.startswith("STATUS=stalled: no frame for 7 s") for m in msgs), msgs
    assert "WATCHDOG" not in kinds(msgs)


def test_disconnected_source_is_not_fresh(listener):
    lst, path = listener
    clock = Clock()
    hook = S.NotifyHook(S.Notifier(path), stall_s=5.0, watchdog_s=0.1, clock=clock)
    hook.on_frame(result(1), Stats(last_fresh_monotonic=clock.t, connected=False))
    assert kinds(lst.drain()) == ["READY"]  # processed a frame, but no watchdog ping


def test_status_reports_fps(listener):
    lst, path = listener
    clock = Clock()
    hook = S.NotifyHook(S.Notifier(path), stall_s=2.0, watchdog_s=None, clock=clock)
    for i in range(1, 62):
        clock.t += 0.1
        hook.on_frame(result(i), None)  # a file source has no stats: its frames are fresh
    status = [m for m in lst.drain() if m.startswith("STATUS=tracking")]
    assert status and "10.0 fps" in status[-1] and "semantic skipped 100%" in status[-1]


def test_signal_handlers_stop_and_reload(listener):
    lst, path = listener
    stop, calls = threading.Event(), []
    restore = S.install_signal_handlers(stop, lambda: calls.append("reload"), S.Notifier(path))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        assert calls == ["reload"] and not stop.is_set()
        assert kinds(lst.drain()) == ["RELOADING", "READY"]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.is_set() and kinds(lst.drain()) == ["STOPPING"]
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_sigterm_still_flushes_and_a_second_sigint_aborts(monkeypatch):
    """systemd repeats SIGTERM on a slow stop: that must not skip the flush; a second Ctrl-C is the
    user asking to abort."""
    from vsdmot.edge import runner

    aborted: list[int] = []
    monkeypatch.setattr(runner, "abort_now", aborted.append)
    stop = threading.Event()
    restore = S.install_signal_handlers(stop, None, S.Notifier(None))
    try:
        term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        term(signal.SIGTERM, None)
        term(signal.SIGTERM, None)
        assert stop.is_set() and aborted == []
        intr(signal.SIGINT, None)
        assert aborted == [signal.SIGINT]
    finally:
        restore()


def test_sigterm_inside_a_send_does_not_deadlock(listener):
    """Python runs a signal handler in the main thread between bytecodes, so SIGTERM can arrive
    while that thread is inside Notifier.send (the hook's STATUS or WATCHDOG) holding its lock.
    The handler's own STOPPING=1 then re-enters send: it must not wait for that lock forever (the
    service hung until systemd's SIGKILL, outputs unflushed). Simulated on a thread holding the lock."""
    lst, path = listener
    notifier, stop = S.Notifier(path), threading.Event()
    restore = S.install_signal_handlers(stop, None, notifier)
    handler = signal.getsignal(signal.SIGTERM)
    restore()

    def sending() -> None:
        with notifier._lock:  # as inside send()
            handler(signal.SIGTERM, None)

    t = threading.Thread(target=sending, daemon=True)
    t.start()
    t.join(2.0)
    hung = t.is_alive()
    if hung:
        notifier._lock.release()  # let the stuck thread finish
    assert not hung, "the SIGTERM handler deadlocked on the notifier's lock"
    assert stop.is_set() and kinds(lst.drain()) == ["STOPPING"]


def test_failed_reload_keeps_running(listener):
    lst, path = listener

    def bad() -> None:
        raise ValueError("[semantics] policy: expected one of ['auto', 'always', 'never'], got 'sometimes'")

    restore = S.install_signal_handlers(threading.Event(), bad, S.Notifier(path))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
    finally:
        restore()
    msgs = lst.drain()
    assert kinds(msgs) == ["RELOADING", "READY"] and "reload failed" in msgs[1]


def test_make_hooks_from_args_and_config():
    import argparse

    from vsdmot.edge.health import HealthHook
    from vsdmot.runtime.config import load_config

    p = argparse.ArgumentParser()
    S.add_run_arguments(p)
    cfg = load_config(None, {"service.stall_timeout_s": 3.0})
    hooks = S.make_hooks(p.parse_args(["--health-listen", "off"]), cfg)
    assert [type(h) for h in hooks] == [S.NotifyHook] and hooks[0].stall_s == 3.0
    hooks = S.make_hooks(p.parse_args(["--health-listen", "127.0.0.1:0", "--power-meter", "none"]), cfg)
    assert isinstance(hooks[1], HealthHook) and hooks[1].metrics.stall_s == 3.0 and hooks[1].meter_order is None
    ina = load_config(None, {"service.power_meter": "ina3221"})  # a unit passes only --config: the file chooses
    assert S.make_hooks(p.parse_args(["--health-listen", "127.0.0.1:0"]), ina)[1].meter_order == ("ina3221",)
    assert S.make_hooks(p.parse_args(["--health-listen", "127.0.0.1:0", "--power-meter", "rapl"]), ina)[1].meter_order \
        == ("rapl",)  # the flag wins
    assert len(S.make_hooks(p.parse_args([]), cfg)) == 2  # health on by default ([service] health_listen)
    assert S.make_hooks(p.parse_args(["--no-watchdog"]), cfg)[0].watchdog_s is None


def test_a_bad_power_meter_name_is_refused_when_parsing(capsys):
    """`run --power-meter tegra` was refused only in the health hook's on_start: after the model
    loaded and the outputs were opened (an existing output already replaced)."""
    import argparse

    p = argparse.ArgumentParser()
    S.add_run_arguments(p)
    assert p.parse_args(["--power-meter", "ina3221,none"]).power_meter == "ina3221,none"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--power-meter", "ina3221,tegra"])
    assert e.value.code == 2 and "'tegra'" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["127.0.0.1:99999", ":9313", "9108", "localhost"])
def test_a_bad_health_listen_is_refused_when_parsing(bad, capsys):
    """A bad port was refused only once the model had loaded and the earlier outputs were moved aside."""
    import argparse

    p = argparse.ArgumentParser()
    S.add_run_arguments(p)
    assert [p.parse_args(["--health-listen", v]).health_listen for v in ("off", "[::1]:0")] == ["off", "[::1]:0"]
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--health-listen", bad])
    assert e.value.code == 2 and f"got {bad!r}, or 'off'" in capsys.readouterr().err


# ---- a real `vsdmot-edge run` under a test notify socket ------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, yolox_onnx) -> Path:
    pytest.importorskip("torch")  # the tiny bundle's student is made with torch
    from tinybundle import make_bundle

    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", yolox_onnx, extra={"tracker": "bytetrack"})


def test_real_run_notifies_in_order_and_sigterm_loses_no_results(bundle, tmp_path):
    """READY=1, WATCHDOG=1, STOPPING=1 in that order from a real subprocess on the demo clip;
    after SIGTERM every frame processed is in the outputs, and no line is torn."""
    from vsdmot.runtime.mot import read_rows

    sock_path = tmp_path / "notify.sock"
    lst = Listener(str(sock_path))
    out = {k: tmp_path / f"{k}.out" for k in ("mot", "jsonl", "stats")}
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    cmd = [*EDGE_CLI,
           "run", "--demo", "--loop", "--bundle", str(bundle), "--threads", "1", "--health-listen", "127.0.0.1:0",
           "--power-meter", "none", "--mot-out", str(out["mot"]), "--jsonl-out", str(out["jsonl"]),
           "--stats-out", str(out["stats"])]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    msgs: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and kinds(msgs).count("WATCHDOG") < 2:
            msgs += lst.drain()
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        msgs += lst.drain()
    finally:
        proc.kill() if proc.poll() is None else None
        lst.close()
    assert proc.returncode == 0, err
    order = [k for k in kinds(msgs) if k in ("READY", "WATCHDOG", "STOPPING")]
    assert order[0] == "READY" and order[-1] == "STOPPING" and order.count("STOPPING") == 1
    assert order.index("WATCHDOG") > order.index("READY") and "WATCHDOG" not in order[order.index("STOPPING"):]
    frames = json.loads(out["stats"].read_text())["frames"]
    records = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    rows = read_rows(out["mot"])
    assert frames > 0 and len(records) == frames  # every processed frame written, none torn
    assert len(rows.frame) == sum(len(r["tracks"]) for r in records)
    assert rows.frame.max() <= frames




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_run_to_max_frames_notifies_and_writes_every_frame(bundle, tmp_path):
    """A file source with --max-frames under a notify socket: READY first, STOPPING last, exit 0."""
    sock_path, jsonl = tmp_path / "notify.sock", tmp_path / "f.jsonl"
    lst = Listener(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}
    msgs: list[str] = []
    proc = subprocess.Popen(
        [*EDGE_CLI,
         "run", "--demo", "--max-frames", "12", "--bundle", str(bundle), "--threads", "1", "--health-listen", "off",
         "--jsonl-out", str(jsonl)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            msgs += lst.drain()  # like systemd: read as they come
        _, err = proc.communicate(timeout=10)
        msgs += lst.drain()
    finally:
        proc.kill() if proc.poll() is None else None
        lst.close()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert done.returncode == 0, done.stderr
    order = [k for k in kinds(msgs) if k in ("READY", "WATCHDOG", "STOPPING")]
    assert order[0] == "READY" and order[-1] == "STOPPING" and order.count("READY") == 1
    assert len(jsonl.read_text().splitlines()) == 12


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    """Until something listens on 127.0.0.1:port (read from /proc/net/tcp: no probing connect,
    which ffmpeg's single-client listener would take as its client)."""
    needle = f":{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in Path("/proc/net/tcp").read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"ffmpeg did not listen on port {port} within {timeout} s")


class LiveRun:
    """`vsdmot-edge run` on a live H.264 stream over loopback TCP (Debian's ffmpeg as the sender),
    under a test notify socket, with a 1 s stall window. SIGSTOP on the sender freezes the stream:
    a camera that stopped delivering while the tracker process itself is fine."""

    def __init__(self, ffmpeg: str, bundle: Path, tmp_path: Path):
        from vsdmot.edge.run_cmd import DEMO_CLIP

        port = _free_port()
        self.sender = subprocess.Popen([ffmpeg, "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(DEMO_CLIP),
                                        "-c", "copy", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"],
                                       stdin=subprocess.DEVNULL)
        self.lst = Listener(str(tmp_path / "notify.sock"))
        config = tmp_path / "edge.toml"
        config.write_text("[service]\nstall_timeout_s = 1.0\n")
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
        _wait_listening(port)
        self.proc = subprocess.Popen(
            [*EDGE_CLI,
             "run", "--source", f"tcp://127.0.0.1:{port}", "--bundle", str(bundle), "--threads", "1",
             "--health-listen", "off", "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True)
        self.timed: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.timed.extend((time.monotonic(), m) for m in self.lst.drain())

    def wait_pings(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(m.startswith("WATCHDOG=1") for _, m in self.timed) < n:
            self.collect(0.2)
            assert self.proc.poll() is None, self.proc.stderr.read()

    def freeze(self) -> float:
        os.kill(self.sender.pid, signal.SIGSTOP)
        return time.monotonic()

    def close(self) -> None:
        for p in (self.proc, self.sender):
            if p.poll() is None:
                p.kill()
                p.wait()
        self.lst.close()


@pytest.fixture
def live_run(ffmpeg, bundle, tmp_path):
    pytest.importorskip("vsdmot.edge.sources")
    run = LiveRun(ffmpeg, bundle, tmp_path)
    yield run
    run.close()


def test_real_stream_stall_starves_the_watchdog(live_run):
    """Freezing the stream stops WATCHDOG=1 within the stall window, so systemd restarts us."""
    live_run.wait_pings(3)
    frozen_at = live_run.freeze()
    live_run.collect(7.0)
    pings = [t for t, m in live_run.timed if m.startswith("WATCHDOG=1")]
    assert pings[0] < frozen_at
    # after the freeze: the frames still in the socket buffer (fresh to the source: 2 s of them
    # on a busy CI run, the last ping at +3.05 s), the 1 s stall window, then none: at least
    # 2.5 s of silence at the end, over twice the stall window, whatever the machine's speed
    assert all(t < frozen_at + 4.5 for t in pings), [round(t - frozen_at, 2) for t in pings]
    assert live_run.proc.poll() is None  # alive: the restart is systemd's decision (WatchdogSec)


def test_sigterm_during_a_stall_exits_promptly(live_run):
    """After a 6 s freeze (the source has dropped the capture and is re-opening), SIGTERM still
    exits promptly with 0: the stop event also stops the source (was a hang until SIGKILL)."""
    live_run.wait_pings(2)
    live_run.freeze()
    live_run.collect(6.0)
    live_run.proc.send_signal(signal.SIGTERM)
    live_run.collect(0.5)
    assert any(m.startswith("STOPPING=1") for _, m in live_run.timed)
    try:
        live_run.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM during a stall: no exit within 10 s")
    assert live_run.proc.returncode == 0


def test_an_exec_whose_python_the_service_cannot_see_is_refused(tmp_path):
    """install.sh's venv links its python into /root/.pyenv: under ProtectHome=yes the unit's
    ExecStart failed with 203/EXEC, though --exec itself (under /opt) passed the check."""
    from vsdmot.edge.service_cmd import check_interpreter

    script = tmp_path / "vsdmot-edge"
    script.write_text("#!/root/.pyenv/versions/3.11.7/bin/python3\nimport sys\n")
    with pytest.raises(ValueError, match=r"its Python resolves to /root/.*under /root.*-m venv /opt/vsdmot/venv"):
        check_interpreter(str(script))
    script.write_text("#!/usr/bin/python3\n")
    check_interpreter(str(script))  # a system Python: fine
