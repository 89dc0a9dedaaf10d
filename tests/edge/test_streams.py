"""Real live streams: Debian's ffmpeg serves H.264 in MPEG-TS over loopback TCP and UDP, and
`open_source` reads it through OpenCV's FFmpeg backend. Killing and restarting the server
proves the reconnect; SIGSTOP on the server proves stall detection. Loopback only, bounded in
time; every ffmpeg process is killed at teardown."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vsdmot.edge.sources import LiveOptions, LiveSource, open_source

# Short timeouts so a failure shows in seconds; a 320x240 clip copied (not re-encoded) on the wire.
OPTS = LiveOptions(queue_size=8, stall_timeout_s=1.5, read_timeout_s=1.0, open_timeout_s=3.0,
                   reconnect_initial_s=0.1, reconnect_max_s=0.5)


@pytest.fixture(scope="module")
def clip(ffmpeg, tud_dir, tmp_path_factory) -> Path:
    """71 TUD-Campus frames as 320x240 H.264 MPEG-TS, a keyframe every 5 frames (fast resync)."""
    out = tmp_path_factory.mktemp("stream") / "tud320.ts"
    cmd = [ffmpeg, "-loglevel", "error", "-y", "-i", str(tud_dir / "TUD-Campus.mp4"), "-vf", "scale=320:240",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", "5", "-bf", "0", "-an", "-f", "mpegts", str(out)]
    subprocess.run(cmd, check=True, timeout=60)
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`ffmpeg -re -stream_loop -1 -i clip -c copy -f mpegts URL`, restartable, always killed."""

    def __init__(self, ffmpeg: str, clip: Path, url: str):
        listen = ["-listen", "1"] if url.startswith("http") else []
        self.cmd = [ffmpeg, "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(clip),
                    "-c", "copy", "-f", "mpegts", *listen, url]
        self.procs: list[subprocess.Popen] = []
        self.start()

    @property
    def proc(self) -> subprocess.Popen:
        return self.procs[-1]

    def start(self) -> None:
        self.procs.append(subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL))

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def serve(ffmpeg, clip):
    servers: list[Server] = []

    def make(url: str) -> Server:
        servers.append(Server(ffmpeg, clip, url))
        return servers[-1]

    yield make
    for s in servers:
        s.kill()


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something LISTENs on 127.0.0.1:port, read from /proc/net/tcp: a probing
    connect would be the one client ffmpeg's `listen=1` accepts."""
    want = f"0100007F:{port:04X}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        if any(r.split()[1] == want and r.split()[3] == "0A" for r in rows):
            return
        time.sleep(0.05)
    pytest.fail(f"ffmpeg did not listen on 127.0.0.1:{port} within {timeout} s")


def take(src, n: int, timeout: float = 10.0) -> list:
    """n frames, or fewer if the watchdog closes the source after `timeout` (never hangs)."""
    watchdog = threading.Timer(timeout, src.close)
    watchdog.start()
    try:
        return [f for _, f in zip(range(n), src)]
    finally:
        watchdog.cancel()


def open_tcp(serve, opts: LiveOptions = OPTS) -> tuple[Server, LiveSource]:
    port = free_port()
    server = serve(f"tcp://127.0.0.1:{port}?listen=1")
    wait_listening(port)
    return server, open_source(source=f"tcp://127.0.0.1:{port}", opts=opts)


def test_tcp_stream_reads_frames(serve):
    _, src = open_tcp(serve)
    with src:
        frames = take(src, 30)
        s = src.stats()
    assert len(frames) == 30 and frames[0].image.shape == (240, 320, 3)
    assert [f.index for f in frames] == list(range(1, 31)) and s.connected and s.frames_read >= 30
    assert src.fps == pytest.approx(25, abs=1)


def test_udp_stream_reads_frames(serve):
    port = free_port(socket.SOCK_DGRAM)
    serve(f"udp://127.0.0.1:{port}?pkt_size=1316")
    opts = dataclasses.replace(OPTS, open_timeout_s=8.0)  # the probe waits for ffmpeg's first packets
    with open_source(source=f"udp://127.0.0.1:{port}", opts=opts) as src:
        frames = take(src, 30)
    indices = [f.index for f in frames]
    assert len(frames) == 30 and frames[-1].image.shape == (240, 320, 3)
    assert indices == sorted(set(indices))


def test_http_stream_reads_frames(serve):
    port = free_port()
    serve(f"http://127.0.0.1:{port}/live.ts")  # ffmpeg serves HTTP with -listen 1 (see Server)
    wait_listening(port)
    with open_source(source=f"http://127.0.0.1:{port}/live.ts", opts=OPTS) as src:
        frames = take(src, 20)
    assert len(frames) == 20 and frames[0].image.shape == (240, 320, 3)


def test_a_video_file_on_a_web_server_is_read_to_its_end(tmp_path):
    """An .mp4 behind http(s) has a frame count: every frame once, then the end. As a live stream
    it dropped most frames (decoding outran the loop) and replayed forever (end = reconnect)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vsdmot.edge.run_cmd import DEMO_CLIP  # moov first: plays without range requests

    (tmp_path / "demo.mp4").write_bytes(DEMO_CLIP.read_bytes())
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/demo.mp4"
        with open_source(source=url, opts=OPTS) as src:
            time.sleep(0.5)  # a live reader would have decoded (and dropped) frames by now
            indices = [f.index for f in itertools.islice(src, 400)]  # bounded: the old live reader never ended
        assert indices == list(range(1, 181)) and src.stats().dropped == 0
    finally:
        server.shutdown()
        server.server_close()


def test_an_mp4_indexed_at_its_end_on_a_server_without_ranges_says_why(tmp_path):
    """python -m http.server answers no range requests: FFmpeg cannot reach an index at the end of
    the file, and the error said only 'corrupt or empty' about a file that plays locally."""
    import functools
    import shutil
    import subprocess
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from vsdmot.edge.run_cmd import DEMO_CLIP
    from vsdmot.runtime.errors import SourceError

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(DEMO_CLIP), "-frames:v", "20", "-c", "copy",
                    str(tmp_path / "late.mp4")], check=True)  # the mp4 muxer writes the index last
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SourceError, match="range requests.*-movflags \\+faststart"):
            open_source(source=f"http://127.0.0.1:{server.server_address[1]}/late.mp4", opts=OPTS).close()
    finally:
        server.shutdown()
        server.server_close()


def test_udp_sender_restart_after_an_outage(serve):
    """UDP has no connection: a sender away longer than the read timeout is a failed read and a
    stall; the source re-opens and frames resume when the sender is back."""
    port = free_port(socket.SOCK_DGRAM)
    server = serve(f"udp://127.0.0.1:{port}?pkt_size=1316")
    opts = dataclasses.replace(OPTS, open_timeout_s=8.0)
    with open_source(source=f"udp://127.0.0.1:{port}", opts=opts) as src:
        before = take(src, 10)
        server.kill()
        time.sleep(2.0)  # > read_timeout_s and > stall_timeout_s
        server.start()
        after = take(src, 10, timeout=15)
        s = src.stats()
    assert len(before) == 10 and len(after) == 10 and after[0].index > before[-1].index
    assert s.stalls >= 1 and s.reconnects >= 1 and s.read_failures >= 1


def test_tcp_reconnects_after_server_restart(serve):
    server, src = open_tcp(serve)
    with src:
        before = take(src, 10)
        server.kill()
        time.sleep(0.5)  # the reader sees the end of the stream and starts reconnecting
        server.start()
        after = take(src, 10, timeout=15)
        s = src.stats()
    assert len(before) == 10 and len(after) == 10
    assert s.reconnects >= 1 and s.connected and s.read_failures >= 1
    assert after[0].index > before[-1].index  # indices keep rising across the reconnect
    assert after[-1].monotonic > before[-1].monotonic + 0.5


def test_stalled_stream_is_detected_within_the_timeout(serve):
    server, src = open_tcp(serve)
    with src:
        assert len(take(src, 5)) == 5
        stalls = src.stats().stalls
        os.kill(server.proc.pid, signal.SIGSTOP)  # the server stays connected and sends nothing
        t0 = time.monotonic()
        while src.stats().stalls == stalls and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        detected = time.monotonic() - t0
        s = src.stats()
    # the socket buffers up to ~1 s of frames past the SIGSTOP, then stall_timeout_s runs out
    assert s.stalls == stalls + 1 and s.stalled and detected < OPTS.stall_timeout_s + 2.0
    assert time.monotonic() - s.last_fresh_monotonic > OPTS.stall_timeout_s


def test_close_is_prompt_while_the_stream_is_stalled(serve):
    server, src = open_tcp(serve)
    assert len(take(src, 3)) == 3
    os.kill(server.proc.pid, signal.SIGSTOP)
    time.sleep(0.3)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < OPTS.read_timeout_s + 1.0 and not src._thread.is_alive()


def test_nothing_listening_is_a_clear_error():
    port = free_port()
    with pytest.raises(Exception, match=f"stream tcp://127.0.0.1:{port}: cannot open: refused or failed after 0"):
        open_source(source=f"tcp://127.0.0.1:{port}", opts=OPTS)


def test_server_that_accepts_and_sends_nothing_times_out():
    """A hung server: the open gives up after open_timeout_s instead of blocking forever."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        opts = LiveOptions(open_timeout_s=1.5, read_timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(Exception, match="cannot open: no answer within 1.5 s"):
            open_source(source=f"tcp://127.0.0.1:{port}", opts=opts)
        assert time.monotonic() - t0 < 4.0
