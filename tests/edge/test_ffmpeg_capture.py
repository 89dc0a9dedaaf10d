"""Interlaced video, which OpenCV decodes as black frames with ok=True: files are decoded through the
ffmpeg program instead (deinterlaced), and a live source that delivers black frames says so."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from helpers import DATA
from vsdmot.edge import ffmpeg_capture as F
from vsdmot.edge.sources import BLANK_WARN, FileSource, LiveOptions, LiveSource, open_source
from vsdmot.runtime.errors import SourceError
from vsdmot.runtime.sources import VideoFileSource

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")
FRAMES = 12


@pytest.fixture(scope="module")
def interlaced(tmp_path_factory):
    """FRAMES frames of real PETS video, 320x240, woven into fields (two frames make one, top field
    first) and coded interlaced in MPEG-2, as a DVR exports it."""
    src, out = DATA / "PETS09-S2L1" / "PETS09-S2L1.avi", tmp_path_factory.mktemp("il") / "dvr.ts"
    if not src.is_file():
        pytest.skip(f"needs {src}")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(src), "-frames:v", str(2 * FRAMES),
                    "-vf", "scale=320:240,tinterlace=interleave_top,setfield=tff", "-c:v", "mpeg2video",
                    "-flags", "+ilme+ildct", "-q:v", "3", "-f", "mpegts", str(out)], check=True)
    return out


@needs_ffmpeg
def test_an_interlaced_file_is_decoded_through_ffmpeg(interlaced, caplog):
    opencv = VideoFileSource(interlaced)
    opencv_blank, count = F.blank(opencv.first_frame), opencv.frame_count  # the container's count
    opencv.close()
    if not opencv_blank:
        pytest.skip(f"this OpenCV ({cv2.__version__}) decodes interlaced video itself")
    with caplog.at_level(logging.WARNING, logger=F.log.name), open_source(source=str(interlaced)) as src:
        assert isinstance(src, FileSource)
        frames = list(src)
    assert "decoding it through ffmpeg" in caplog.text
    assert count >= FRAMES and [f.index for f in frames] == list(range(1, count + 1))  # every frame, in order
    assert all(f.image.shape == (240, 320, 3) and f.image.mean() > 40 for f in frames)  # PETS, not black
    assert frames[-1].timestamp == pytest.approx((count - 1) / src.fps)


@needs_ffmpeg
def test_a_black_progressive_video_stays_with_opencv(tmp_path):
    """Black both ways (a capped lens at the start): nothing to gain from ffmpeg."""
    out = tmp_path / "black.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=black:s=64x48:r=10",
                    "-frames:v", "5", "-c:v", "mpeg4", str(out)], check=True)
    src = F.decodable(VideoFileSource(out))
    assert type(src) is VideoFileSource and len(list(src)) == 5
    src.close()


def test_without_ffmpeg_the_error_says_how_to_deinterlace(monkeypatch, tmp_path):
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(SourceError, match="install ffmpeg, or deinterlace it once: ffmpeg -i .* -vf yadif"):
        F.FfmpegCapture(str(tmp_path / "dvr.ts"), (64, 48), 25.0)


class BlackCapture:
    def read(self):
        time.sleep(0.001)
        return True, np.zeros((48, 64, 3), np.uint8)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_a_live_source_of_black_frames_says_so_once(caplog):
    opts = LiveOptions(queue_size=4, stall_timeout_s=5.0, detect_duplicates=False)
    with caplog.at_level(logging.WARNING), LiveSource("rtsp://dvr/1", lambda: BlackCapture(), opts) as src:
        deadline = time.monotonic() + 5
        while src.stats().frames_read < 3 * BLANK_WARN and time.monotonic() < deadline:
            time.sleep(0.01)
    warned = [r for r in caplog.records if "all black" in r.getMessage()]
    assert len(warned) == 1 and "interlaced" in warned[0].getMessage()


def test_blank_is_opencv_s_refused_buffer_not_a_dark_scene():
    rng = np.random.default_rng(0)
    refused = np.zeros((240, 320, 3), np.uint8)
    refused.flat[rng.choice(refused.size, 50, replace=False)] = 7  # stray values of the buffer's last use
    night = rng.poisson(2.0, (240, 320, 3)).astype(np.uint8)  # dark, but noisy as a sensor is
    assert F.blank(refused) and F.blank(np.zeros_like(refused)) and not F.blank(night)
