"""The live preview: the newest annotated frame as JPEG, served as MJPEG and as one JPEG by the
health server, bounded in clients, ended with the run; and a whole run with --preview."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from vsdmot.edge import health as H
from vsdmot.edge.preview import BOUNDARY, Preview, PreviewConfig, encode
from vsdmot.runtime.types import Detections, FrameResult

from helpers import EDGE_CLI, REPO


def frame(i: int, w: int = 320, h: int = 240) -> tuple[FrameResult, np.ndarray]:
    """Frame i: a gray image with one tracked box (id 7) at x = 10 * i."""
    tracks = Detections(np.array([[10.0 * i, 40, 10.0 * i + 50, 160]]), np.array([0.9]), track_id=np.array([7]))
    return FrameResult(i, i / 25, 0.9, 0.1, "skipped", tracks), np.full((h, w, 3), 128, np.uint8)


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_the_newest_frame_is_served_annotated():
    p = Preview()
    assert p.jpeg(timeout_s=0.05) is None  # nothing yet: waits, then None
    for i in (1, 2, 3):
        p.write(*frame(i))
    seq, data = p.jpeg()
    assert seq == 3
    img = decode(data)
    assert img.shape == (240, 320, 3)
    off = np.abs(img[100].astype(int) - 128).max(axis=1)  # per column of row 100: how far from the gray image
    assert off[30] > 40 and off[80] > 40  # frame 3's box (x 30..80) is drawn, not frame 1's or 2's
    assert off[40:70].max() < 12 and off[10] < 12 and off[20] < 12 and off[100:].max() < 12
    assert p.jpeg(after=3, timeout_s=0.05) is None  # nothing newer
    p.write(FrameResult(4, 0.2, 1, 0, "skipped", Detections.empty(with_ids=True)), None)  # no image: ignored
    assert p.jpeg(after=3, timeout_s=0.05) is None


def test_wide_frames_are_downscaled_and_close_wakes_waiters():
    cfg = PreviewConfig(max_width=480)
    small = decode(encode(*frame(4, 1920, 1080), cfg))  # box x 40..90, y 40..160 -> 10..22.5, 10..40
    assert small.shape == (270, 480, 3)
    off = np.abs(small[35].astype(int) - 128).max(axis=1)  # below the q/w bars
    assert off[10] > 40 and off[22] > 40 and off[16] < 12 and off[40:].max() < 12  # drawn where it shrank to
    p = Preview(cfg)
    woke = []
    t = threading.Thread(target=lambda: woke.append(p.jpeg(timeout_s=10)))
    t.start()
    time.sleep(0.1)
    started = time.monotonic()
    p.close()
    t.join(5)
    assert woke == [None] and time.monotonic() - started < 1.0 and p.closed


@pytest.mark.parametrize("bad", [dict(max_fps=0), dict(max_width=8), dict(quality=0), dict(max_clients=0)])
def test_bad_preview_config(bad):
    with pytest.raises(ValueError, match="preview: expected"):
        PreviewConfig(**bad)


def _parts(stream, n: int) -> list[bytes]:
    """The first n JPEGs of a multipart/x-mixed-replace response."""
    out = []
    while len(out) < n:
        assert stream.readline().strip() == f"--{BOUNDARY}".encode()
        headers = {}
        while (line := stream.readline().strip()):
            k, _, v = line.decode().partition(":")
            headers[k.lower()] = v.strip()
        assert headers["content-type"] == "image/jpeg"
        out.append(stream.read(int(headers["content-length"])))
        stream.readline()
    return out


def _feed(p: Preview, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        p.write(*frame(i % 20))
        time.sleep(0.01)


def test_server_streams_mjpeg_and_a_snapshot_and_bounds_clients():
    p = Preview(PreviewConfig(max_fps=50, max_clients=1))
    server = H.HealthServer(H.Metrics(), "127.0.0.1:0", p).start()
    base = "http://127.0.0.1:%d" % server.address[1]
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(p, stop), daemon=True)
    feeder.start()
    try:
        with urllib.request.urlopen(base + "/preview.jpg", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and decode(r.read()).shape == (240, 320, 3)
        with urllib.request.urlopen(base + "/preview", timeout=5) as stream:
            assert stream.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            assert [decode(j).shape for j in _parts(stream, 3)] == [(240, 320, 3)] * 3
            with pytest.raises(urllib.error.HTTPError) as e:  # max_clients = 1
                urllib.request.urlopen(base + "/preview", timeout=5)
            assert e.value.code == 503 and "1 preview clients already" in e.value.read().decode()
            p.close()  # the run ends: the stream ends
            stream.read()
        with urllib.request.urlopen(base + "/preview", timeout=5) as again:  # the client left: a slot is free
            assert again.read() == b""  # and the preview is closed, so it ends at once
    finally:
        stop.set()
        server.close()


@pytest.mark.parametrize("host,warned", [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True)])
def test_a_preview_beyond_loopback_is_warned_about(host, warned, caplog):
    try:
        server = H.HealthServer(H.Metrics(), f"[{host}]:0" if ":" in host else f"{host}:0", Preview()).start()
    except OSError as e:
        pytest.skip(f"cannot listen on {host} here: {e}")
    server.close()
    assert ("without authentication" in caplog.text) == warned


def test_a_taken_port_says_the_preview_is_not_served(caplog):
    first = H.HealthServer(H.Metrics(), "127.0.0.1:0").start()
    try:
        hook = H.HealthHook("127.0.0.1:%d" % first.address[1], 5.0, preview=Preview())
        hook.on_start()  # the run goes on: tracking outranks its health server
        hook.on_stop()
    finally:
        first.close()
    assert "running without /healthz, /metrics and /preview (another process may answer on that port)" in caplog.text


def test_a_paused_viewer_gives_its_slot_back(monkeypatch):
    """A viewer that stops reading (a paused VLC) blocked its stream's write forever, and with
    `max_clients` of them every viewer got 503 until a restart. The handler's socket timeout ends it."""
    import socket

    monkeypatch.setattr(H._Handler, "timeout", 0.5)
    p = Preview(PreviewConfig(max_fps=50, max_clients=1, quality=100))
    noise = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)  # ~0.5 MB JPEGs: buffers fill fast
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            p.write(frame(1)[0], noise)
            time.sleep(0.01)

    server = H.HealthServer(H.Metrics(), "127.0.0.1:0", p).start()
    threading.Thread(target=feed, daemon=True).start()
    paused = socket.create_connection(server.address)
    try:
        paused.sendall(b"GET /preview HTTP/1.0\r\n\r\n")  # and never reads
        deadline, code = time.monotonic() + 20, 503
        while code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/preview" % server.address[1], timeout=5) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
        assert code == 200
    finally:
        stop.set()
        p.close()
        paused.close()
        server.close()


def test_without_preview_the_paths_say_how_to_get_one():
    server = H.HealthServer(H.Metrics(), "127.0.0.1:0").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d/preview.jpg" % server.address[1], timeout=5)
        assert e.value.code == 404 and "run with --preview" in json.loads(e.value.read())["error"]
    finally:
        server.close()


def test_preview_without_a_health_server_is_refused_at_once():
    done = subprocess.run([*EDGE_CLI, "run", "--demo", "--preview", "--health-listen", "off"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert "--preview is served by the health server, which is off" in done.stderr.splitlines()[-1]


def test_a_run_serves_its_frames(tmp_path):
    """`vsdmot-edge run --demo --preview`: /preview.jpg is the demo frame with its tracks drawn."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.Popen([*EDGE_CLI, "run", "--demo", "--loop", "--threads", "1",
                            "--preview", "--health-listen", f"127.0.0.1:{port}", "--mot-out", str(tmp_path / "m.txt")],
                           cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline, img = time.monotonic() + 60, None
        while img is None and time.monotonic() < deadline and run.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/preview.jpg", timeout=5) as r:
                    img = decode(r.read())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)  # the model is still loading, or no frame yet
        assert img is not None and img.shape == (480, 640, 3)
    finally:
        run.terminate()
        _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err
    assert f"preview: http://127.0.0.1:{port}/preview" in err
