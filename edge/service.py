"""systemd integration for `vsdmot-edge run`: sd_notify, watchdog, signals and the run hooks.

sd_notify is a datagram of "KEY=VALUE" lines sent to the unix socket named by $NOTIFY_SOCKET
(a path, or "@name" for the abstract namespace). No python-systemd dependency.

    READY=1     after the first processed frame (not at start: the engine build may take minutes)
    WATCHDOG=1  every WATCHDOG_USEC / 2, and only while the source delivers fresh frames, so a
                camera that vanished, or a stream that froze, lets systemd restart the service
    STATUS=...  FPS, tracks, semantic skip ratio, every few seconds; "stalled" from a timer while
                no frame arrives (a stalled source calls no hook)
    STOPPING=1  on SIGTERM / SIGINT (and at the end of a finite source)
    RELOADING=1 then READY=1 around a SIGHUP config reload

Contract with `edge/run_cmd.py`: it calls `add_run_arguments(parser)` while building its parser,
`make_hooks(args, cfg, source)` for the hooks it passes to `run_loop`, and `install_signal_handlers(
stop_event, reload_callback)` once, from the main thread, before the loop. The loop finishes the
frame in hand when `stop_event` is set, flushes its sinks and returns; the CLI exits 0.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from vsdmot.runtime.config import parse_listen

from .health import FpsWindow, HealthHook, is_fresh
from .power import meter_list

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0  # how often STATUS= is refreshed while running


def notify_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET -> a sendto() address: "@name" is abstract ("\\0name"), else a path."""
    if not value or not (value.startswith("/") or value.startswith("@")):
        raise ValueError(f"NOTIFY_SOCKET: expected an absolute path or @abstract name, got {value!r}")
    return "\0" + value[1:] if value.startswith("@") else value


class Notifier:
    """An sd_notify client. With no NOTIFY_SOCKET (not under systemd) every send is a no-op."""

    def __init__(self, socket_name: str | None):
        self.address = notify_address(socket_name) if socket_name else None
        self._sock: socket.socket | None = None
        # re-entrant: the SIGTERM handler sends STOPPING=1 in the main thread, which may be inside
        # send() already (a hook's STATUS or WATCHDOG); a plain Lock deadlocked there
        self._lock = threading.RLock()
        self.sent: collections.deque[str] = collections.deque(maxlen=64)  # the last messages sent (bounded)
        self.stopping = False  # STOPPING=1 was sent

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of newline-joined fields; False (logged) if it could not be sent."""
        if self.address is None:
            return False
        msg = "\n".join(fields)
        with self._lock:
            try:
                if self._sock is None:
                    # non-blocking: a wedged receiver must never stall the tracking loop
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                self._sock.sendto(msg.encode(), self.address)
            except BlockingIOError:
                log.warning("sd_notify %r dropped: the notify socket's queue is full", msg.split("\n")[0])
                return False
            except OSError as e:
                log.warning("sd_notify %r failed: %s", msg, e)
                return False
            self.sent.append(msg)
            self.stopping = self.stopping or msg.startswith("STOPPING=1")
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Half of WATCHDOG_USEC in seconds, or None when systemd asks no watchdog of this process."""
    usec, wpid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    if wpid and int(wpid) != (os.getpid() if pid is None else pid):
        return None  # the watchdog is meant for another process (e.g. a wrapper's parent)
    if not usec.isdigit() or int(usec) == 0:
        raise ValueError(f"WATCHDOG_USEC: expected a positive integer, got {usec!r}")
    return int(usec) / 2e6


class NotifyHook:
    """Run-loop hook that keeps systemd informed. Never pings the watchdog on stale frames."""

    def __init__(self, notifier: Notifier, stall_s: float, watchdog_s: float | None,
                 clock: Callable[[], float] = time.monotonic, status_every_s: float = STATUS_EVERY_S):
        self.notifier, self.stall_s, self.watchdog_s, self.clock = notifier, stall_s, watchdog_s, clock
        self.status_every_s = status_every_s
        self.ready = False
        self.frames = 0
        self._fps = FpsWindow()
        self._last_ping = self._last_status = self._last_frame = -float("inf")
        self._skipped = 0
        self._stopped = threading.Event()

    def on_start(self) -> None:
        self.notifier.send("STATUS=starting: model loaded, waiting for the first frame")
        if self.notifier.enabled:  # a stalled source calls no on_frame: a timer keeps STATUS= true
            threading.Thread(target=self._status_while_idle, name="vsdmot-status", daemon=True).start()

    def _status_while_idle(self) -> None:
        """STATUS=stalled while no frame arrives (never WATCHDOG=1: that needs fresh frames)."""
        while not self._stopped.wait(self.status_every_s):
            idle = self.clock() - self._last_frame
            if self.ready and idle > self.stall_s:
                self.notifier.send(f"STATUS=stalled: no frame for {idle:.0f} s")

    def on_frame(self, result: Any, source_stats: Any = None) -> None:
        now = self.clock()
        self.frames, self._last_frame = self.frames + 1, now
        self._skipped += result.semantic == "skipped"
        self._fps.tick(now)
        if not self.ready:
            self.notifier.send("READY=1", self._status(result, now))  # once: a failure is logged, not retried
            self.ready, self._last_status = True, now
        fresh = is_fresh(source_stats, now, self.stall_s)
        if fresh and self.watchdog_s is not None and now - self._last_ping >= self.watchdog_s:
            self.notifier.send("WATCHDOG=1")
            self._last_ping = now
        if now - self._last_status >= self.status_every_s:
            self.notifier.send(self._status(result, now) if fresh else "STATUS=stalled: no fresh frames")
            self._last_status = now

    def _status(self, result: Any, now: float) -> str:
        skip = 100.0 * self._skipped / max(self.frames, 1)
        return f"STATUS=tracking: {self._fps.fps(now):.1f} fps, {len(result.tracks)} tracks, semantic skipped {skip:.0f}%"

    def on_stop(self, summary: Any = None) -> None:
        self._stopped.set()
        if not self.notifier.stopping:
            self.notifier.send("STOPPING=1", f"STATUS=stopped after {self.frames} frames")
        self.notifier.close()


# ---- signals --------------------------------------------------------------------------------

_NOTIFIER: Notifier | None = None  # the process-wide notifier, shared by hooks and signal handlers


def process_notifier() -> Notifier:
    """The one Notifier of this process (from $NOTIFY_SOCKET)."""
    global _NOTIFIER
    if _NOTIFIER is None:
        _NOTIFIER = Notifier.from_env()
    return _NOTIFIER


def install_signal_handlers(stop_event: threading.Event, reload_callback: Callable[[], Any] | None = None,
                            notifier: Notifier | None = None) -> Callable[[], None]:
    """SIGTERM/SIGINT: STOPPING=1 and set `stop_event` (a second SIGINT exits 130 at once).
    SIGHUP: RELOADING=1, `reload_callback()`, READY=1 (a failing reload keeps the old config).

    Python runs handlers in the main thread between bytecodes, so `reload_callback` runs there
    too: it should build the new config and swap a reference, not do work mid-frame.
    Call once, from the main thread. Returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("install_signal_handlers: must be called from the main thread")
    from .runner import abort_now  # here, not in the handler; `run` has imported the runner already

    notifier = notifier or process_notifier()

    def on_stop(signum: int, frame: Any) -> None:
        if stop_event.is_set() and signum == signal.SIGINT:
            abort_now(signum)
        log.info("%s: finishing the current frame, flushing outputs", signal.Signals(signum).name)
        notifier.send("STOPPING=1", f"STATUS=stopping on {signal.Signals(signum).name}")
        stop_event.set()

    def on_hup(signum: int, frame: Any) -> None:
        _reload(notifier, reload_callback)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _reload(notifier: Notifier, reload_callback: Callable[[], Any] | None) -> None:
    if reload_callback is None:
        log.warning("SIGHUP: this run has no config file to reload; ignored")
        return
    notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        reload_callback()
    except Exception as e:  # noqa: BLE001 - a bad edit of the config must not kill a running service
        log.error("SIGHUP: config reload failed, keeping the running config: %s", e)
        notifier.send("READY=1", f"STATUS=reload failed, running the previous config: {e}")
        return
    log.info("SIGHUP: config reloaded")
    notifier.send("READY=1", "STATUS=config reloaded")


# ---- what `vsdmot-edge run` asks of this module ---------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Service options of `vsdmot-edge run` (defaults come from the config's [service] table)."""
    g = parser.add_argument_group("service (systemd, health and metrics)")
    g.add_argument("--health-listen", metavar="HOST:PORT", default=None, type=listen_arg,
                   help="serve /healthz and /metrics here (default: [service] health_listen, 127.0.0.1:9108); "
                        "'off' disables")
    g.add_argument("--no-watchdog", action="store_true", help="never send WATCHDOG=1 even if systemd asks for it")
    g.add_argument("--preview", action="store_true", default=None,
                   help="serve the annotated frames on the health server: /preview (MJPEG, for a browser or VLC) "
                        "and /preview.jpg (default: [service] preview, off)")
    g.add_argument("--power-meter", metavar="LIST", default=None, type=meter_list,
                   help="power meters to try for /metrics, in order ('none' = no power metrics; default: "
                        "[service] power_meter, jtop,ina3221,nvml,rapl)")


def listen_arg(text: str) -> str:
    """`--health-listen`: HOST:PORT, or off / none; checked while parsing (a bad port used to fail
    after the model loaded and the earlier outputs were moved aside)."""
    if text not in ("off", "none"):
        try:
            parse_listen(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e}, or 'off'") from None
    return text


def _service_settings(args: argparse.Namespace, cfg: Any) -> tuple[str, float, bool]:
    svc = getattr(cfg, "service", None)
    listen = getattr(args, "health_listen", None)
    listen = listen if listen is not None else getattr(svc, "health_listen", "127.0.0.1:9108")
    stall = getattr(svc, "stall_timeout_s", 5.0)  # one stall window for the source, health and watchdog
    watchdog = getattr(svc, "watchdog", True) and not getattr(args, "no_watchdog", False)
    return ("" if listen in ("off", "none") else listen), float(stall), bool(watchdog)


def make_preview(args: argparse.Namespace, cfg: Any) -> Any:
    """The run's `edge.preview.Preview` sink with --preview or [service] preview, else None.
    ValueError when the health server that would serve it is off."""
    if not (getattr(args, "preview", None) or getattr(getattr(cfg, "service", None), "preview", False)):
        return None
    if not _service_settings(args, cfg)[0]:
        raise ValueError("run: --preview is served by the health server, which is off (--health-listen off or "
                         "[service] health_listen = \"off\"); give it a HOST:PORT")
    from .preview import Preview

    return Preview()


def make_hooks(args: argparse.Namespace, cfg: Any, source: Any = None, preview: Any = None) -> list[Any]:
    """The hooks `run_loop` calls: systemd notification always (a no-op outside systemd), and the
    health server unless disabled (serving `preview` too, when given). The server reads
    `source.stats()` per request: a stalled source calls no hook, and its counters must not freeze
    at the last frame's."""
    listen, stall, watchdog = _service_settings(args, cfg)
    notifier = process_notifier()
    interval = watchdog_interval_s() if watchdog else None
    if notifier.enabled:
        log.info("systemd: notify socket set, watchdog every %s s", interval)
    hooks: list[Any] = [NotifyHook(notifier, stall, interval)]
    if listen:
        chosen = getattr(args, "power_meter", None) or getattr(getattr(cfg, "service", None), "power_meter", "none")
        meters = tuple(m for m in chosen.split(",") if m and m != "none")
        stats = getattr(source, "stats", None)
        sinks = getattr(cfg, "sinks", None)
        outputs = {n.removesuffix("_out"): getattr(sinks, n) for n in getattr(sinks, "PATHS", ())}
        hooks.append(HealthHook(listen, stall, meters or None, source_stats=stats if callable(stats) else None,
                                outputs=outputs, preview=preview))
    return hooks
