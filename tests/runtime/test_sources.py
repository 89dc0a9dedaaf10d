"""File sources on the real sequences: a video (PETS, TUD), an img1/ folder (MOT17-mini), bad input."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import cv2
import numpy as np

import pytest

from helpers import REPO
from vsdmot.runtime.errors import SourceError
from vsdmot.runtime.sources import (
    ImageFolderSource, VideoFileSource, is_sequence, open_file_source, open_sequence,
)


@pytest.mark.parametrize(
    "fixture, n_frames, fps, shape, from_video",
    [
        ("pets_dir", 795, 7.0, (576, 768, 3), True),  # seqinfo's 7 fps, not the AVI header's 10
        ("tud_dir", 71, 25.0, (480, 640, 3), True),
        ("mot17_dir", 6, 14.0, (480, 640, 3), False),
    ],
)
def test_sequence_frames(request, fixture, n_frames, fps, shape, from_video):
    seq = open_sequence(request.getfixturevalue(fixture))
    assert (seq.video is not None) == from_video
    assert seq.gt_path is not None and seq.gt_path.name == "gt.txt"
    src = seq.frames()
    assert src.fps == fps and src.name == seq.info.name
    indices = []
    for frame in src:
        indices.append(frame.index)
        assert frame.image.shape == shape and frame.image.dtype == np.uint8
        assert frame.timestamp == pytest.approx((frame.index - 1) / fps)
    src.close()
    assert indices == list(range(1, n_frames + 1))


def test_video_header_rate_is_not_trusted(pets_dir):
    """Opened as a bare file, PETS reports the header's 10 fps; as a sequence, seqinfo's 7."""
    bare = open_file_source(pets_dir / "PETS09-S2L1.avi")
    assert isinstance(bare, VideoFileSource) and bare.fps == pytest.approx(10.0)
    assert open_file_source(pets_dir).fps == 7.0


def test_variable_rate_video_keeps_its_own_timestamps(tmp_path):
    """Five frames 0.1 s apart, then five 0.02 s apart: the header's single rate (13.2 fps) would
    put frame 10 at 0.68 s instead of 0.58 s. A given rate (--fps, seqinfo) still wins."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    vfr = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=50",
                    "-frames:v", "10", "-vf", "setpts='if(lt(N,5),N*0.1,0.5+(N-5)*0.02)/TB'", "-fps_mode", "vfr",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(vfr)], check=True)
    pts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.52, 0.54, 0.56, 0.58]
    assert [f.timestamp for f in open_file_source(vfr)] == pytest.approx(pts, abs=1e-3)
    assert [f.timestamp for f in open_file_source(vfr, fps=10.0)] == pytest.approx([i / 10 for i in range(10)])


def test_raw_h264_without_timestamps_gets_the_header_rate(tmp_path):
    """A raw H.264 elementary stream (what a Raspberry Pi camera records) has no container
    timestamps: OpenCV reports position 0 ms for every frame and a frame count of about -1.9e14.
    The frames were all stamped 0.0 s and frame_count was negative; now they step by the header's
    rate and the count is 0 (unknown)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    raw = tmp_path / "cam.h264"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25",
                    "-frames:v", "10", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "h264", str(raw)], check=True)
    src = open_file_source(raw)
    assert src.fps == pytest.approx(25.0) and src.frame_count >= 0
    assert [f.timestamp for f in src] == pytest.approx([i / 25 for i in range(10)])


def test_phone_video_comes_upright_from_its_rotation_metadata(tmp_path, caplog):
    """A phone films portrait as landscape pixels plus a display rotation in the container. The
    frames must come as a player shows them (the detector finds few people lying on their side,
    and MOT rows must match what the user sees): OpenCV's FFmpeg backend applies it
    (CAP_PROP_ORIENTATION_AUTO), and the source keeps that."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    plain, phone = tmp_path / "plain.mp4", tmp_path / "phone.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25",
                    "-frames:v", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(plain)], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(plain), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(phone)], check=True)  # same pixels, a 90-degree display matrix
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(phone), str(tmp_path / "shown%d.png")],
                   check=True)  # the ffmpeg tools (ffplay, and players built on libav) rotate on decode too
    with caplog.at_level("INFO", logger="vsdmot.runtime.sources"):
        upright = [f.image for f in open_file_source(phone)]
    assert [im.shape for im in upright] == [(64, 48, 3)] * 3
    for i, im in enumerate(upright, 1):
        np.testing.assert_array_equal(im, cv2.imread(str(tmp_path / f"shown{i}.png")))
    assert "turned by its rotation metadata to 48x64 frames" in caplog.text  # it was silent
    assert "--rotate 90 undoes it" in caplog.text
    from vsdmot.edge.sources import rotated

    undone = [f.image for f in rotated(open_file_source(phone), 90)]  # what the log says undoes it
    np.testing.assert_array_equal(undone[0], next(iter(open_file_source(plain))).image)


def test_a_video_cut_short_says_so_and_a_whole_one_does_not(pets_dir, tud_dir, tmp_path, caplog):
    """The first MB of an 8 MB AVI decodes ~100 of the 795 frames its header states, then ends
    as a whole file would: a run on it exited 0 with no word."""
    cut = tmp_path / "cut.avi"
    cut.write_bytes((pets_dir / "PETS09-S2L1.avi").read_bytes()[:1_000_000])
    with caplog.at_level("WARNING", logger="vsdmot.runtime.sources"):
        n = sum(1 for _ in open_file_source(cut))
        assert 0 < n < 700 and f"decoding stopped after {n} frames, but its header states 795" in caplog.text
        caplog.clear()
        assert sum(1 for _ in open_file_source(tud_dir / "TUD-Campus.mp4")) == 71 and caplog.text == ""


def test_non_square_pixels_are_named(tmp_path, caplog):
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    for sar in ("2/1", "1/1"):
        clip = tmp_path / f"sar{sar[0]}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10",
                        "-frames:v", "3", "-vf", f"setsar={sar}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
                       check=True)
        caplog.clear()
        with caplog.at_level("WARNING", logger="vsdmot.runtime.sources"):
            open_file_source(clip).close()
        assert ("pixels are not square (sample aspect 2:1)" in caplog.text) == (sar == "2/1")


def test_video_iterates_twice_from_frame_one(tud_dir):
    src = open_sequence(tud_dir).frames()
    first = [f.image for f in itertools.islice(src, 3)]
    again = [f for f in itertools.islice(src, 3)]
    assert [f.index for f in again] == [1, 2, 3]
    np.testing.assert_array_equal(again[0].image, first[0])


def test_image_folder_numeric_names(tmp_path):
    for i in (3, 1, 2):
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), np.full((32, 40, 3), 40 * i, np.uint8))
    src = open_file_source(tmp_path, fps=5.0)
    assert isinstance(src, ImageFolderSource)
    frames = list(src)
    assert [f.index for f in frames] == [1, 2, 3] and frames[2].image[0, 0, 0] == 120
    assert frames[1].timestamp == pytest.approx(0.2)


@pytest.mark.parametrize(
    "names, indices",
    [
        (["1", "2", "10"], [1, 2, 10]),  # unpadded: by number, not 1, 10, 2
        (["000000", "000001", "000002"], [1, 2, 3]),  # 0-based: shifted, a frame 0 was refused mid-run
        (["b", "a10", "a2"], [1, 2, 3]),  # not numbers: by name, numbered from 1
        (["000001", "000002", "000004", "poster"], [1, 2, 4]),  # a stray name renumbered every frame after a gap
        (["a", "b", "7"], [1, 2, 3]),  # mostly not numbers: by name
    ],
)
def test_image_folder_order_and_numbering(tmp_path, names, indices):
    for n, name in enumerate(names):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((32, 40, 3), n, np.uint8))
    frames = list(open_file_source(tmp_path))
    assert [f.index for f in frames] == indices and frames[0].timestamp == 0.0
    if names[0] not in ("b", "a"):
        assert [int(f.image[0, 0, 0]) for f in frames] == [0, 1, 2]  # the files in numeric order


def test_a_cut_jpeg_is_named(tmp_path, caplog):
    img = np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)
    for k in (1, 2, 3):
        cv2.imwrite(str(tmp_path / f"{k:06d}.jpg"), img)
    cut, trailer = tmp_path / "000002.jpg", tmp_path / "000003.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    trailer.write_bytes(trailer.read_bytes() + bytes(212))  # a phone's motion-photo trailer: whole, not cut
    (tmp_path / "._000001.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble: skipped, not counted
    with caplog.at_level("WARNING", logger="vsdmot.runtime.sources"):
        assert [f.index for f in open_file_source(tmp_path)] == [1, 2, 3]
    assert "000002.jpg is cut short" in caplog.text and "000001.jpg" not in caplog.text
    assert "000003.jpg" not in caplog.text


def test_a_cut_jpeg_with_an_exif_thumbnail_is_named(tmp_path):
    """Camera JPEGs carry a thumbnail, itself a JPEG with its own end marker, in APP1: a search of
    the whole file for the marker found it and called a truncated photo whole."""
    from vsdmot.runtime.sources import _cut_jpeg

    img = np.random.default_rng(1).integers(0, 255, (96, 128, 3), np.uint8)
    main, thumb = (cv2.imencode(".jpg", im)[1].tobytes() for im in (img, img[:16, :16]))
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\0\0" + thumb
    whole, p = main[:2] + app1 + main[2:], tmp_path / "photo.jpg"
    p.write_bytes(whole)
    assert not _cut_jpeg(p) and cv2.imread(str(p)) is not None
    p.write_bytes(whole[: len(whole) * 3 // 4])
    assert _cut_jpeg(p)


def test_a_folder_of_sequences_names_them(mot17_dir):
    with pytest.raises(SourceError, match=r"no images .* it holds 7 sequence folders \(MOT17-02-FRCNN, .*\): give one"):
        open_file_source(mot17_dir.parent)


def test_is_sequence(pets_dir, tmp_path):
    assert is_sequence(pets_dir) and not is_sequence(tmp_path)


def _copy_without(src_dir, dst, skip: str):
    dst.mkdir()
    for p in src_dir.iterdir():
        if p.name != skip and p.is_file():
            shutil.copy(p, dst / p.name)
    return dst


def test_missing_seqinfo(tud_dir, tmp_path):
    seq = _copy_without(tud_dir, tmp_path / "seq", "seqinfo.ini")
    with pytest.raises(ValueError, match="seqinfo.ini: expected a file"):
        open_sequence(seq)


def test_sequence_without_frames(tud_dir, tmp_path):
    seq = _copy_without(tud_dir, tmp_path / "seq", "TUD-Campus.mp4")
    with pytest.raises(ValueError, match="no images in img1/ and no video"):
        open_sequence(seq)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a video at all" * 100, b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(2000)],
)
def test_unreadable_video_is_one_source_error(tud_dir, tmp_path, content):
    seq = _copy_without(tud_dir, tmp_path / "seq", "TUD-Campus.mp4")
    (seq / "TUD-Campus.mp4").write_bytes(content)
    with pytest.raises(SourceError, match="TUD-Campus.mp4"):
        list(open_sequence(seq).frames())


DEMO = REPO / "runtime" / "assets" / "demo.mp4"  # 180 frames


def test_video_that_decodes_nothing_is_refused_when_opened(tmp_path):
    """Before a run creates its outputs (a header-only file opens in OpenCV but has no frame)."""
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(DEMO.read_bytes()[:5000])
    with pytest.raises(SourceError, match="yielded no frames"):
        VideoFileSource(trunc)
    frames = list(VideoFileSource(DEMO))  # the first frame, read at open, is still frame 1
    assert [f.index for f in frames[:2]] == [1, 2] and len(frames) == 180


def _written(path, data: bytes):
    path.write_bytes(data)
    return path


def _corrupt_images(folder):
    (folder / "000001.jpg").write_bytes(b"")
    (folder / "000002.png").write_bytes(b"not a png")
    return folder


def test_image_folder_with_some_corrupt_images_skips_them(tmp_path):
    cv2.imwrite(str(tmp_path / "000002.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "000001.jpg").write_bytes(b"")
    assert [f.index for f in open_file_source(tmp_path)] == [2]


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p / "missing.avi", SourceError, "nothing at"),
        (lambda p: p, SourceError, "no images"),  # an empty folder
        (lambda p: _written(p / "empty.mp4", b""), SourceError, "empty.mp4 is empty \\(0 bytes\\)"),
        (lambda p: _written(p / "cut.mp4", DEMO.read_bytes()[:32] + bytes(5000)), SourceError, "cut short"),  # ftyp, no moov
        (lambda p: _corrupt_images(p), SourceError, "none of the 2 image files"),  # a run used to end with 0 frames, exit 0
    ],
)
def test_bad_file_source(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        open_file_source(make(tmp_path))


def _tiny_video(folder, w: int, h: int):
    path = folder / f"t{w}x{h}.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    for k in range(3):
        out.write(np.full((h, w, 3), 60 * k, np.uint8))
    out.release()
    return path


def _tiny_images(folder, w: int, h: int):
    for k in (1, 2):
        cv2.imwrite(str(folder / f"{k:06d}.png"), np.zeros((h, w, 3), np.uint8))
    return folder


@pytest.mark.parametrize("make", [_tiny_video, _tiny_images])
@pytest.mark.parametrize("w, h, ok", [(16, 16, False), (64, 16, False), (32, 32, True)])
def test_frames_under_32_px_are_refused_when_opened(tmp_path, make, w, h, ok):
    """The quality gate needs 32x32; a 16x16 video failed at its first frame, after the run had
    moved mot.txt aside and created an empty one."""
    path = make(tmp_path, w, h)
    if ok:
        assert [f.image.shape for f in open_file_source(path)] == [(h, w, 3)] * (2 if path.is_dir() else 3)
        return
    with pytest.raises(SourceError, match=f"frames are {w}x{h} px; expected at least 32x32"):
        open_file_source(path)
