"""Interlaced video, which OpenCV decodes as blank or stale frames with ok=True: a file ffprobe calls
interlaced is decoded through the ffmpeg program (deinterlaced, every coded frame, a failure raised),
by every file opener (runtime.sources.open_file_source)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import numpy as np
import pytest

from helpers import DATA
from vsdmot.runtime import ffmpeg_capture as F
from vsdmot.edge.sources import FileSource, LiveOptions, open_source
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
    info = F.probe(interlaced)
    assert info.interlaced and info.field_order == "tt" and info.size == (320, 240)
    opencv = VideoFileSource(interlaced)
    count = opencv.frame_count  # the container's count
    opencv.close()
    with caplog.at_level(logging.WARNING, logger=F.log.name), open_source(source=str(interlaced)) as src:
        assert isinstance(src, FileSource)
        frames = list(src)
    assert "decoding it through ffmpeg" in caplog.text
    assert count >= FRAMES and [f.index for f in frames] == list(range(1, count + 1))  # every frame, in order
    assert all(f.image.shape == (240, 320, 3) and f.image.mean() > 40 for f in frames)  # PETS, not black
    assert frames[-1].timestamp == pytest.approx((count - 1) / src.fps)


@needs_ffmpeg
def test_the_decision_does_not_depend_on_what_the_process_decoded_before(interlaced):
    """OpenCV's refused conversion leaves its buffer as it was: after other decodes, stripes of older
    frames that no pixel test can tell from video. Every pass of a loop decodes through ffmpeg."""
    VideoFileSource(interlaced).close()  # OpenCV decoded it once in this process: its buffer is stale now
    with open_source(source=str(interlaced), opts=LiveOptions(loop=True)) as src:
        frames = [f for _, f in zip(range(3 * FRAMES), src)]  # into the second pass (24 frames a pass)
        assert type(src._inner) is F.FfmpegFileSource
    assert frames[-1].index == 3 * FRAMES and all(f.image.mean() > 40 for f in frames)


@needs_ffmpeg
def test_a_variable_rate_file_keeps_its_coded_frames(tmp_path):
    """ffmpeg's rawvideo output pads a variable-rate file to a constant rate unless told not to (a
    48-frame file came out as 95 frames, and MOT frame numbers stopped matching the file's)."""
    out = tmp_path / "vfr.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=10",
                    "-frames:v", "20", "-vf", "setpts='if(lt(N,10),N,N*3)/10/TB',setfield=tff", "-c:v", "mpeg2video",
                    "-flags", "+ilme+ildct", str(out)], check=True)
    info = F.probe(out)
    assert info.interlaced
    cap = F.FfmpegCapture(str(out), info.size, info.fps)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 20


@needs_ffmpeg
def test_a_killed_ffmpeg_is_an_error_not_the_end_of_the_video(interlaced):
    info = F.probe(interlaced)
    cap = F.FfmpegCapture(str(interlaced), info.size, info.fps)
    assert cap.read()[0]
    cap._proc.kill()
    with pytest.raises(SourceError, match="ffmpeg stopped with code -9 after 1 frames"):
        while cap.read()[0]:
            pass
    cap.release()
    assert cap.read() == (False, None)  # after release: no frame, no exception


@needs_ffmpeg
def test_progressive_files_stay_with_opencv(tmp_path):
    out = tmp_path / "black.mp4"  # black first frames (a capped lens): no reason to leave OpenCV
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=black:s=64x48:r=10",
                    "-frames:v", "5", "-c:v", "mpeg4", str(out)], check=True)
    src = F.decodable(out)
    assert type(src) is VideoFileSource and len(list(src)) == 5
    src.close()


@needs_ffmpeg  # to make the clip
def test_without_ffmpeg_an_interlaced_file_opens_with_a_warning(monkeypatch, interlaced, caplog):
    info = F.probe(interlaced)
    if info is None:
        pytest.skip("needs ffprobe")
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    monkeypatch.setattr(F, "probe", lambda path: info)  # ffprobe without ffmpeg: still say so
    with caplog.at_level(logging.WARNING, logger=F.log.name):
        src = F.decodable(interlaced)
    src.close()
    assert type(src) is VideoFileSource and "install ffmpeg, or deinterlace it once" in caplog.text


def test_blank_is_a_zeroed_buffer_not_a_dark_scene():
    rng = np.random.default_rng(0)
    refused = np.zeros((240, 320, 3), np.uint8)
    refused.flat[rng.choice(refused.size, 50, replace=False)] = 7  # stray values of the buffer's last use
    night = rng.poisson(2.0, (240, 320, 3)).astype(np.uint8)  # dark, but noisy as a sensor is
    assert F.blank(refused) and F.blank(np.zeros_like(refused)) and not F.blank(night)


@pytest.mark.parametrize("stream, degrees", [({"side_data_list": [{"rotation": -90}]}, -90),  # ffprobe 5+
                                             ({"tags": {"rotate": "90"}}, 90), ({}, 0)])  # ffprobe 4.4 (JetPack 6)
def test_rotation_from_either_ffprobe(stream, degrees):
    assert F._rotation(stream) == degrees


@needs_ffmpeg  # to make the clip
def test_without_ffprobe_a_blank_first_frame_is_named(interlaced, tmp_path):
    """Without the ffmpeg package nothing can read the field order: the run opened an interlaced file
    through OpenCV in silence. A fresh process (OpenCV's buffer still zeros) names it from the first frame."""
    import subprocess
    import sys

    code = ("import logging, shutil, sys\nlogging.basicConfig()\nshutil.which = lambda name: None\n"
            "from vsdmot.runtime.sources import open_file_source\n"
            "src = open_file_source(sys.argv[1])\nprint(type(src).__name__)\n")
    ran = subprocess.run([sys.executable, "-c", code, str(interlaced)], capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == "VideoFileSource" and "decodes as blank frames" in ran.stderr
    assert "install ffmpeg" in ran.stderr


@needs_ffmpeg
def test_calibration_reads_an_interlaced_clip_deinterlaced(interlaced):
    """The probe sits in runtime's file opener, so a DVR clip given to `vsdmot-export --calib` is not
    calibrated on blank or stale frames (the fix first lived in edge's run path only)."""
    from vsdmot.calibration.calibset import iter_frames

    frames = [img for _, img in iter_frames(str(interlaced), 1)]
    assert len(frames) >= FRAMES and all(img.mean() > 40 for img in frames)
