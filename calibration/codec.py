"""Real H.264 through Debian's ffmpeg (libx264): raw BGR frames in by pipe, decoded BGR frames out.

OpenCV's pip build can decode but not encode H.264, so encoding runs in an `ffmpeg` process.
The encoder is pinned to one thread so the bitstream (hence the degraded frames) is the same on
every machine; x264 is fast enough at these sizes (~2 ms/frame at 640x480, veryfast).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vsdmot.runtime.errors import VsdmotError

log = logging.getLogger(__name__)

GOP_SECONDS = 2.0  # an IP camera's usual key-frame interval
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-threads", "1", "-pix_fmt", "yuv420p"]


class CodecError(VsdmotError):
    """ffmpeg is missing, or it failed to encode or decode."""


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise CodecError("h264 degradation needs Debian's ffmpeg on PATH (apt-get install ffmpeg)")
    return exe


def _pad_even(img: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: replicate the last row/column when odd."""
    h, w = img.shape[:2]
    return np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h | w) % 2 else img


def _raw_in(w: int, h: int, fps: float) -> list[str]:
    return ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-"]


def _run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CodecError(f"ffmpeg failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def h264_intra(img: np.ndarray, qp: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same frame coded as one H.264 intra frame at quantiser `qp` (0..51)."""
    h, w = img.shape[:2]
    src = _pad_even(img)
    with tempfile.TemporaryDirectory(prefix="vsdmot-h264-") as tmp:
        path = Path(tmp) / "f.mkv"
        _run([ffmpeg_exe(), "-v", "error", *_raw_in(src.shape[1], src.shape[0], 25), *X264, "-qp", str(qp), str(path)],
             src.tobytes())
        raw = _run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"])
    return np.frombuffer(raw, np.uint8).reshape(src.shape)[:h, :w].copy()


def _encoder_cmd(w: int, h: int, fps: float, bpp: float, gop: int, phase: int, out: Path) -> list[str]:
    """Constant-bitrate style x264 (1 s VBV buffer, as a streaming camera) at `bpp` bits/pixel."""
    bitrate = max(int(bpp * w * h * fps), 8000)  # bits/s
    keys = f"expr:eq(mod(n+{phase},{gop}),0)"  # key frames every gop frames, seeded phase
    return [ffmpeg_exe(), "-v", "error", *_raw_in(w, h, fps), *X264,
            "-b:v", str(bitrate), "-maxrate", str(bitrate), "-bufsize", str(bitrate),
            "-x264-params", f"keyint={gop * 4}:min-keyint=1:scenecut=0:bframes=0",
            "-force_key_frames", keys, str(out)]


def _encode(frames: Iterator[np.ndarray], first: np.ndarray, cmd_for) -> tuple[int, tuple]:
    """Stream frames into the encoder; (count, padded shape). A dead encoder raises CodecError."""
    src = _pad_even(first)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd_for(src.shape[1], src.shape[0]), stdin=subprocess.PIPE, stderr=err)
        try:
            n = _feed(proc, _chain(first, frames), first.shape)
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            rc = proc.wait()
        if rc != 0 or n < 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()[-300:]
            raise CodecError(f"ffmpeg (libx264 encode) failed (exit {rc}): {msg}")
    return n, src.shape


def _feed(proc: subprocess.Popen, frames: Iterator[np.ndarray], shape: tuple) -> int:
    """Write frames to the encoder's stdin; the count, or -1 if the encoder went away."""
    n = 0
    for img in frames:
        if img.shape != shape:
            raise ValueError(f"h264: frame {n + 1} is {img.shape}, expected {shape} like frame 1")
        try:
            proc.stdin.write(_pad_even(img).tobytes())
        except BrokenPipeError:
            return -1
        n += 1
    return n


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _decode(path: Path, shape: tuple, n: int) -> Iterator[np.ndarray]:
    """Decoded frames of `path`, (H, W, 3) uint8 BGR; exactly n or CodecError."""
    proc = subprocess.Popen([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    size, got = int(np.prod(shape)), 0
    try:
        while (buf := proc.stdout.read(size)) and len(buf) == size:
            got += 1
            yield np.frombuffer(buf, np.uint8).reshape(shape)
    finally:
        proc.stdout.close()
        proc.wait()
    if got != n:
        raise CodecError(f"h264: decoded {got} frames, expected {n} (ffmpeg exit {proc.returncode})")


def h264_clip(images: Iterable[np.ndarray], bpp: float, fps: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Encode a clip with libx264 at `bpp` bits per pixel, decode it, yield the frames (same count,
    shape and order). GOP = 2 s; the rng picks where in the GOP the clip starts."""
    it = iter(images)
    first = next(it, None)
    if first is None:
        return
    gop = max(int(round(GOP_SECONDS * fps)), 1)
    phase = int(rng.integers(gop))
    h, w = first.shape[:2]
    with tempfile.TemporaryDirectory(prefix="vsdmot-h264-") as tmp:
        path = Path(tmp) / "clip.mkv"
        n, shape = _encode(it, first, lambda pw, ph: _encoder_cmd(pw, ph, fps, bpp, gop, phase, path))
        log.debug("h264: %d frames at %.4f bpp, GOP %d phase %d, %d bytes", n, bpp, gop, phase, path.stat().st_size)
        for img in _decode(path, shape, n):
            yield img[:h, :w].copy()
