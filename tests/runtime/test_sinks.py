"""Sinks: MOT round trip, JSONL, annotated video, stats, SIGKILL durability and a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsdmot.runtime.mot import read_rows
from vsdmot.runtime.sinks import JsonlSink, MotSink, SinkError, kept_files, open_sinks, rotate_previous
from vsdmot.runtime.stats_sink import LatencyHistogram, StatsSink
from vsdmot.runtime.video_sink import VideoSink, annotate, track_colour
from vsdmot.runtime.types import Detections, FrameResult

from helpers import REPO


def make_result(index: int, n: int = 3, semantic: str = "fresh", latency: dict | None = None) -> FrameResult:
    """n tracks with ids 1..n moving right by 2 px per frame."""
    x = np.arange(n, dtype=np.float32) * 50 + 2 * index
    xyxy = np.stack([x, x * 0 + 20, x + 30, x * 0 + 90], axis=1)
    tracks = Detections(xyxy, np.linspace(0.9, 0.6, n), np.arange(1, n + 1))
    return FrameResult(index, (index - 1) / 25, 0.8, 0.3, semantic, tracks, latency or {"detector": 5.0})


def test_mot_round_trip(tmp_path):
    with MotSink(tmp_path / "res.txt") as sink:
        for i in range(1, 6):
            sink.write(make_result(i))
        sink.write(FrameResult(6, 0.2, 1.0, 0.0, "skipped", Detections.empty(with_ids=True)))
    rows = read_rows(tmp_path / "res.txt")
    assert len(rows) == 15 and sorted(set(rows.frame)) == [1, 2, 3, 4, 5]
    r2 = rows.at(2)
    np.testing.assert_allclose(r2.xywh, make_result(2).tracks.xywh, atol=0.01)
    np.testing.assert_array_equal(r2.id, [1, 2, 3])
    np.testing.assert_allclose(r2.conf, make_result(2).tracks.score, atol=1e-4)


def test_a_restart_keeps_the_previous_file(tmp_path):
    path = tmp_path / "res.txt"
    for run in range(4):
        with MotSink(path, keep_previous=2) as sink:
            for i in range(1, run + 2):
                sink.write(make_result(i))
        os.utime(path, (1e9 + run * 3600, 1e9 + run * 3600))  # distinct mtimes, an hour apart
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "res.txt")
    assert kept == ["res.txt.20010909T024640Z", "res.txt.20010909T034640Z"]  # runs 1 and 2: the newest two
    assert [len(read_rows(tmp_path / k)) for k in kept] == [6, 9] and len(read_rows(path)) == 12
    MotSink(path, keep_previous=0).close()  # 0: plain replace
    assert path.read_text() == "" and len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize("cls", [MotSink, JsonlSink])
def test_rotation_bounds_the_files_and_loses_no_frame(tmp_path, cls):
    """A service writing for weeks: each file is cut at a frame boundary once it holds rotate_bytes;
    the newest `keep` full files stay, so the newest frames are all there, in order, whole."""
    path, frames, keep = tmp_path / "out.txt", 40, 3
    with cls(path, rotate_bytes=600, keep_previous=keep) as sink:
        texts = []
        for i in range(1, frames + 1):
            before = sum(f.stat().st_size for f in [path, *kept_files(path)])
            sink.write(make_result(i))
            texts.append(sum(f.stat().st_size for f in [path, *kept_files(path)]) - before)
    old = kept_files(path)
    assert len(old) == keep and sink.frames == frames
    assert all(600 <= f.stat().st_size < 600 + max(texts) for f in old)  # cut at the first frame past the size
    lines = "".join(f.read_text() for f in [*old, path]).splitlines()
    first = [int(ln.split(",")[0]) if cls is MotSink else json.loads(ln)["frame"] for ln in lines]
    assert first == sorted(first) and first[-1] == frames  # oldest file first, nothing out of order
    assert len(set(first)) == first[-1] - first[0] + 1  # a contiguous run of the newest frames


def test_rotation_with_keep_zero_holds_one_file(tmp_path):
    with MotSink(tmp_path / "m.txt", rotate_bytes=300, keep_previous=0) as sink:
        for i in range(1, 30):
            sink.write(make_result(i))
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"] and (tmp_path / "m.txt").stat().st_size < 400


def test_kept_files_sort_ten_rotations_in_one_second(tmp_path):
    """NAME.STAMP-10 is newer than NAME.STAMP-9, which a name sort puts after it."""
    names = ["m.txt.20260101T000000Z"] + [f"m.txt.20260101T000000Z-{n}" for n in range(1, 12)] + ["m.txt.20260101T000001Z"]
    for n in reversed(names):
        (tmp_path / n).write_text("x")
    assert [p.name for p in kept_files(tmp_path / "m.txt")] == names


@pytest.mark.parametrize("mtime", ["2018-01-28 12:00", "1970-01-01 00:20"])
def test_a_file_written_while_the_clock_was_behind_is_kept_as_the_newest(tmp_path, mtime):
    """A Jetson without an RTC battery boots offline: its file's mtime sorted before the kept ones,
    so it was deleted the moment it was moved aside (2018), or never counted (1970)."""
    import calendar

    path = tmp_path / "m.txt"
    for k in range(3):
        (tmp_path / f"m.txt.2026010{k + 1}T000000Z").write_text("older")
    path.write_text("the run before this one\n")
    t = calendar.timegm(time.strptime(mtime, "%Y-%m-%d %H:%M"))
    os.utime(path, (t, t))
    target = rotate_previous(path, keep=3)
    kept = kept_files(path)
    assert kept[-1] == target and target.name == "m.txt.20260103T000000Z-1" and len(kept) == 3
    assert target.read_text() == "the run before this one\n"


def test_rotation_never_counts_or_deletes_a_users_own_files(tmp_path):
    """`mot.txt.2025-backup` matched the old `NAME.2*` pattern: `--keep-files 1` deleted it, or kept
    it in place of the run's own earlier output."""
    mine = ["m.txt.2025-backup", "m.txt.2nd-camera", "m.txt.20260101T000000Z.bak", "m.txt.20260101T000000Z-x"]
    for n in mine:
        (tmp_path / n).write_text("precious")
    for run in range(3):
        with MotSink(tmp_path / "m.txt", keep_previous=1) as sink:
            sink.write(make_result(run + 1))
    kept = kept_files(tmp_path / "m.txt")
    assert len(kept) == 1 and set(read_rows(kept[0]).frame) == {2}  # the previous run's, the one before deleted
    assert all((tmp_path / n).read_text() == "precious" for n in mine)


def test_mot_sink_refuses_tracks_without_ids(tmp_path):
    with MotSink(tmp_path / "res.txt") as sink, pytest.raises(ValueError, match="track_id"):
        sink.write(FrameResult(1, 0.0, 1.0, 0.0, "skipped", Detections.empty()))


def test_jsonl_parses(tmp_path):
    before = time.time()
    with JsonlSink(tmp_path / "out.jsonl") as sink:
        for i, state in enumerate(["fresh", "reused", "skipped"], 1):
            sink.write(make_result(i, semantic=state))
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["semantic"] for r in recs] == ["fresh", "reused", "skipped"]
    assert recs[1]["frame"] == 2 and recs[1]["q"] == 0.8 and recs[1]["w"] == 0.3
    assert recs[0]["tracks"][0] == {"id": 1, "box": [2.0, 20.0, 32.0, 90.0], "score": 0.9}
    assert recs[0]["latency_ms"] == {"detector": 5.0}
    assert before - 0.01 <= recs[0]["unix_time"] <= time.time()  # the wall clock: timestamp counts from the start


def test_jsonl_writes_nan_as_null(tmp_path):
    with JsonlSink(tmp_path / "out.jsonl") as sink:
        sink.write(FrameResult(1, 0.0, float("nan"), 0.0, "skipped", Detections.empty(with_ids=True)))
    assert json.loads((tmp_path / "out.jsonl").read_text())["q"] is None


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_video_sink_writes_every_frame(tmp_path, ext):
    img = np.full((120, 160, 3), 90, np.uint8)
    path = tmp_path / f"out{ext}"
    with VideoSink(path, fps=10) as sink:
        for i in range(1, 13):
            sink.write(make_result(i, n=2), img)
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert (n, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (12, 160, 120)


@pytest.mark.parametrize(
    "name, kwargs, exception",
    [
        ("out.h264", {"fps": 25}, "expected one of"),
        ("out.webm", {"fps": 25}, "not H.264"),
        ("out.avi", {"fps": 0}, "fps > 0"),
    ],
)
def test_video_sink_bad_input(tmp_path, name, kwargs, exception):
    with pytest.raises(ValueError, match=exception):
        VideoSink(tmp_path / name, **kwargs)


def test_video_sink_drops_rather_than_stalls_the_loop(tmp_path):
    img = np.full((240, 320, 3), 90, np.uint8)
    with VideoSink(tmp_path / "v.avi", 10, queue_size=1) as sink:
        for i in range(1, 41):
            sink.write(make_result(i), img)
    assert sink.frames + sink.dropped == 40 and sink.frames >= 1


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_video_rotation_keeps_every_file_playable(tmp_path, ext):
    """Each full file is finished before it is moved aside (an .mp4 gets its index), and together the
    files hold every frame; with rotation on, an earlier run's video is moved aside, not replaced."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (240, 320, 3), np.uint8) for _ in range(30)]  # noise: ~100 kB per frame
    with VideoSink(tmp_path / f"whole{ext}", 10) as whole:
        for i, img in enumerate(images, 1):
            whole.write(make_result(i), img)
    size = (tmp_path / f"whole{ext}").stat().st_size  # the writers flush in blocks of up to 256 kB
    path = tmp_path / f"v{ext}"
    path.write_bytes(b"an earlier run")
    with VideoSink(path, 10, rotate_bytes=size // 6, keep_previous=20, drop_when_full=False) as sink:
        for i, img in enumerate(images, 1):
            sink.write(make_result(i), img)
    files = kept_files(path)
    assert files[0].read_bytes() == b"an earlier run"
    counts = [_frames_in(f) for f in [*files[1:], path]]
    assert len(counts) >= 3 and sum(counts) == 30 == sink.frames
    assert min(counts) >= 1  # the frame that filled a file opens no empty next one


def test_a_rerun_moves_the_earlier_video_and_stats_aside(tmp_path):
    """README: an earlier output file is moved aside, never truncated. The video and the stats were
    replaced (a second run of the README's demo command lost the first one's annotated video)."""
    img = np.full((48, 64, 3), 90, np.uint8)
    for run in (1, 2):
        for s in open_sinks(video_out=str(tmp_path / "v.avi"), stats_out=str(tmp_path / "s.json"), keep_files=3):
            for i in range(1, 4 * run):
                s.write(make_result(i), img)
            s.close()
    assert [_frames_in(f) for f in (*kept_files(tmp_path / "v.avi"), tmp_path / "v.avi")] == [3, 7]
    assert [json.loads(f.read_text())["frames"] for f in (*kept_files(tmp_path / "s.json"), tmp_path / "s.json")] == [3, 7]
    for s in open_sinks(video_out=str(tmp_path / "v.avi"), stats_out=str(tmp_path / "s.json"), keep_files=0):
        s.close()  # keep 0: replaced, as the text sinks do; no frame: the video is left alone
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 0 and len(kept_files(tmp_path / "s.json")) == 1
    assert _frames_in(tmp_path / "v.avi") == 7


def _frames_in(path: Path) -> int:
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    return n


def test_video_encoding_error_reaches_the_loop(tmp_path, monkeypatch):
    """An error on the encoding thread is raised by the next write (and close), and a waiting write is
    not left hanging on a queue nobody drains."""
    import vsdmot.runtime.video_sink as vs

    monkeypatch.setattr(vs, "annotate", lambda *a: 1 / 0)
    sink = VideoSink(tmp_path / "v.avi", 10, queue_size=1, drop_when_full=False)
    img = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(SinkError, match="encoding .*v.avi failed: ZeroDivisionError"):
        for i in range(1, 50):
            sink.write(make_result(i), img)
    with pytest.raises(SinkError, match="ZeroDivisionError"):
        sink.close()


def test_annotate_survives_nan_quality():
    img = np.zeros((120, 160, 3), np.uint8)
    out = annotate(img, FrameResult(1, 0.0, float("nan"), float("inf"), "fresh", make_result(1).tracks))
    assert out.shape == img.shape and out.any() and not img.any()


def test_annotations_grow_with_the_frame():
    """Lines 2 px wide and 0.5-scale labels were hairlines on 4K video (a walkthrough's finding)."""
    box = Detections(np.array([[100.0, 100.0, 300.0, 400.0]]), np.array([0.9]), np.array([7]))

    def edge_px(rows: int) -> int:  # the box's left edge, mid-height
        out = annotate(np.zeros((rows, rows * 16 // 9, 3), np.uint8), FrameResult(1, 0.0, 0.5, 0.5, "fresh", box))
        return int(np.count_nonzero(out[250, 60:200].any(axis=-1)))

    small, hd, uhd = edge_px(480), edge_px(1080), edge_px(2160)
    assert small == edge_px(720) and small < hd < uhd and uhd >= 2 * small  # as drawn at 720 rows, then scaled


def test_a_frame_of_another_size_has_its_boxes_scaled_with_it(tmp_path):
    """An image folder of mixed sizes: a half-size frame was scaled up to the video's size, then
    drawn with its own (half-size) boxes, which landed on empty ground."""
    path = tmp_path / "out.avi"
    box = Detections(np.array([[40.0, 20.0, 60.0, 50.0]]), np.array([0.9]), np.array([3]))
    with VideoSink(path, fps=10) as sink:
        sink.write(FrameResult(1, 0.0, 1.0, 0.0, "skipped", Detections.empty(True)), np.zeros((240, 320, 3), np.uint8))
        sink.write(FrameResult(2, 0.1, 1.0, 0.0, "skipped", box), np.zeros((120, 160, 3), np.uint8))  # half size
    cap = cv2.VideoCapture(str(path))
    cap.read()
    ok, frame = cap.read()
    lit = np.argwhere(frame[65:95].max(axis=-1) > 100)  # the box's sides, below the quality bar (rows < 62)
    assert ok and len(lit) and lit[:, 1].min() >= 75 and lit[:, 1].max() <= 125  # x 40-60 at half size: 80-120


def test_video_sink_needs_the_image(tmp_path):
    with VideoSink(tmp_path / "v.avi", 10) as sink, pytest.raises(ValueError, match="without its image"):
        sink.write(make_result(1))


def test_track_colours_are_stable_and_distinct():
    assert track_colour(7) == track_colour(7)
    assert len({track_colour(i) for i in range(1, 21)}) == 20


def test_histogram_percentiles_within_a_bin():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=2.0, sigma=0.5, size=20_000)
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    for p in (50, 90, 99):
        assert h.percentile(p) == pytest.approx(np.percentile(values, p), rel=0.025)
    assert h.counts.nbytes < 10_000  # bounded, whatever the run length


def test_stats_keys_and_percentiles(tmp_path):
    path = tmp_path / "stats.json"
    src = lambda: {"frames_read": 40, "dropped": 3, "reconnects": 2, "stalls": 1}  # noqa: E731
    with StatsSink(path, every_s=0, every_frames=10, source_stats=src, meta={"source": "cam0", "frames": -1}) as sink:
        for i in range(1, 41):
            states = ["fresh", "reused", "skipped", "skipped"]
            sink.write(make_result(i, semantic=states[i % 4], latency={"detector": float(i), "quality": 1.0}))
            if i == 10:
                assert json.loads(path.read_text())["frames"] == 10  # periodic write
    s = json.loads(path.read_text())
    assert s["final"] and s["frames"] == 40 and s["source"] == "cam0"  # contract keys win over meta
    assert s["source_stats"]["frames_read"] == 40
    assert (s["semantic_runs"], s["semantic_reused"], s["semantic_skipped"]) == (10, 10, 20)
    assert (s["dropped_frames"], s["reconnects"], s["stalls"]) == (3, 2, 1)
    det = s["latency_ms"]["detector"]
    assert det["p50"] == pytest.approx(20, rel=0.03) and det["p90"] == pytest.approx(36, rel=0.03)
    assert det["p99"] == pytest.approx(40, rel=0.03) and det["max"] == 40 and det["n"] == 40
    assert s["fps_model"] == pytest.approx(1000 / 20.5, rel=1e-3)
    assert s["fps_pipeline"] == pytest.approx(1000 / 21.5, rel=1e-3)
    assert s["fps"] is not None and s["fps"] > 0
    assert (s["q_mean"], s["q_min"], s["w_mean"]) == (0.8, 0.8, 0.3)  # make_result's q and w: a dark clip shows here


def test_stats_end_to_end_uses_the_total_stage(tmp_path):
    with StatsSink(tmp_path / "s.json") as sink:
        sink.write(make_result(1, latency={"quality": 1.0, "semantics": 2.0, "detector": 4.0, "tracker": 2.0, "total": 10.0}))
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["fps_pipeline"] == pytest.approx(100.0) and s["fps_model"] == pytest.approx(125.0)
    assert s["model_stages"] == ["semantics", "detector", "tracker"]


def test_stats_sink_flushes_on_close_with_no_frames(tmp_path):
    StatsSink(tmp_path / "s.json").close()
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 0 and s["fps"] is None and s["latency_ms"] == {}


def test_open_sinks_skips_empty_paths(tmp_path):
    sinks = open_sinks(mot_out=str(tmp_path / "m.txt"), stats_out=str(tmp_path / "s.json"))
    assert [type(s).__name__ for s in sinks] == ["MotSink", "StatsSink"]
    for s in sinks:
        s.close()


@pytest.mark.parametrize("live", [True, False])
def test_only_a_live_source_s_video_drops_frames_and_the_stats_count_them(tmp_path, live):
    """A file has no deadline: its annotated video waits for the encoder and keeps every frame (a 4K
    clip lost 30 of 120 frames, and video frame n stopped being source frame n). What a live
    source's video drops is in the stats file (it said dropped_frames 0)."""
    video, stats = open_sinks(video_out=str(tmp_path / "v.avi"), stats_out=str(tmp_path / "s.json"), fps=10.0,
                              live=live)
    assert video.drop_when_full is live
    video.dropped = 3  # as the encoder's queue overflowing would count them
    stats.write(make_result(1))
    video.close()
    stats.close()
    assert json.loads((tmp_path / "s.json").read_text())["video_frames_dropped"] == 3


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [sys.argv[3], sys.argv[4]]  # tests/runtime and tests (helpers)
    from test_sinks import make_result
    from vsdmot.runtime.sinks import JsonlSink, MotSink
    mot, jsonl = MotSink(sys.argv[1]), JsonlSink(sys.argv[2])
    i = 0
    while True:
        i += 1
        mot.write(make_result(i)); jsonl.write(make_result(i))
        print(i, flush=True)
        time.sleep(0.002)
    """
)


def test_sigkill_keeps_every_completed_frame(tmp_path):
    mot, jsonl = tmp_path / "res.txt", tmp_path / "out.jsonl"
    args = [sys.executable, "-c", WRITER, str(mot), str(jsonl), str(Path(__file__).parent), str(REPO / "tests")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        done = 0
        for line in proc.stdout:
            done = int(line)
            if done >= 200:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert done >= 200, "the writer died early"
    rows = read_rows(mot)  # no partial line: every row parses
    frames = set(rows.frame.tolist())
    assert set(range(1, done + 1)) <= frames and len(rows) == 3 * len(frames)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in recs][:done] == list(range(1, done + 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: MotSink(p),
        lambda p: JsonlSink(p),
        lambda p: VideoSink(p.with_suffix(".avi"), 10, (64, 48)),
        lambda p: StatsSink(p).close(),
    ],
    ids=["mot", "jsonl", "video", "stats"],
)
def test_unwritable_path_is_a_sink_error_naming_it(make):
    with pytest.raises(SinkError, match="/dev/null/out"):
        make(Path("/dev/null/out.txt"))


def _folder_named(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize(
    "make",
    [
        lambda p: VideoSink(Path("/dev/null/a.avi"), 10),  # frame size from the first frame
        lambda p: VideoSink(_folder_named(p / "a.avi"), 10),
        lambda p: StatsSink(Path("/dev/null/s.json")),
        lambda p: StatsSink(_folder_named(p / "s.json")),
    ],
    ids=["video-unwritable", "video-is-a-folder", "stats-unwritable", "stats-is-a-folder"],
)
def test_late_writing_sinks_fail_when_opened(tmp_path, make):
    """The stats file is first written seconds (or a whole run) later and the video at its first
    frame: an unwritable path must fail at open, before the run loop, not after the run."""
    with pytest.raises(SinkError, match="cannot write"):
        make(tmp_path)


def test_mot_sink_to_a_pipe(tmp_path):
    """`--mot-out /dev/stdout | cat` died at the first periodic fsync (EINVAL on a pipe)."""
    r, w = os.pipe()
    try:
        sink = MotSink(f"/dev/fd/{w}", fsync_every_s=0)  # fsync after every frame
        for i in (1, 2):
            sink.write(make_result(i))
        sink.close()
        assert os.read(r, 1 << 16).decode().count("\n") == 6
    finally:
        os.close(r)
        os.close(w)


def test_stats_sink_refuses_a_pipe(tmp_path):
    """It is replaced by rename: on a FIFO (or, as root, /dev/stdout) that replaces the node itself."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="is a pipe or device; expected a regular file"):
        StatsSink(tmp_path / "fifo")
    assert (tmp_path / "fifo").is_fifo()


def test_full_disk_error_names_the_file():
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    sink = MotSink("/dev/full")
    with pytest.raises(SinkError, match=r"/dev/full: disk full \(ENOSPC\)"):
        sink.write(make_result(1))
    os.close(sink._fd)  # /dev/full cannot be fsynced or truncated; skip close()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("cls", [MotSink, JsonlSink])
def test_full_disk_keeps_what_was_written(tiny_tmpfs, cls):
    path = tiny_tmpfs / "out.txt"
    sink = cls(path)
    with pytest.raises(SinkError, match=f"{path}: disk full.*frames already written to it are intact") as err:
        for i in range(1, 100_000):
            sink.write(make_result(i, n=5))
    written = sink.frames
    sink.close()
    assert written > 10 and str(path) in str(err.value)
    if cls is MotSink:
        assert sorted(set(read_rows(path).frame.tolist())) == list(range(1, written + 1))
    else:
        assert [json.loads(x)["frame"] for x in path.read_text().splitlines()] == list(range(1, written + 1))


def test_full_disk_keeps_previous_stats(tiny_tmpfs):
    path = tiny_tmpfs / "stats.json"
    sink = StatsSink(path, every_s=0)
    sink.flush()
    (tiny_tmpfs / "filler").write_bytes(b"\0" * 52_000)  # leave less than the stats need (one 4 KiB page)
    sink.meta["padding"] = "x" * 20_000
    with pytest.raises(SinkError, match="stats.json: disk full.*previous stats file is intact"):
        sink.flush()
    assert json.loads(path.read_text())["frames"] == 0
    assert [p.name for p in tiny_tmpfs.iterdir() if p.name.startswith(".stats")] == [".stats.json.lock"]  # no temp file


def _write_while_told(path, ready, stop):
    """Another run: a MOT sink on `path`, open until `stop`."""
    with MotSink(path, rotate_bytes=300) as sink:
        for i in range(1, 4):
            sink.write(make_result(i))  # rotates: the claim must outlive its files
        ready.set()
        stop.wait(30)


def test_a_second_run_on_the_same_output_is_refused_before_touching_anything(tmp_path):
    """Before the claim, the second run moved the first's file aside and both wrote on."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "mot.txt"
    ready, stop = ctx.Event(), ctx.Event()
    first = ctx.Process(target=_write_while_told, args=(path, ready, stop))
    first.start()
    try:
        assert ready.wait(10)
        before = sorted(p.name for p in tmp_path.iterdir())
        kept = len(kept_files(path))
        assert ".mot.txt.lock" in before and kept >= 1
        for make in (lambda: open_sinks(mot_out=str(path), jsonl_out=str(tmp_path / "t.jsonl")),
                     lambda: open_sinks(jsonl_out=str(tmp_path / "t.jsonl"), mot_out=str(path)),
                     lambda: MotSink(path)):
            with pytest.raises(SinkError, match=f"MOT sink: {path} is being written by another run "
                                                f"\\(pid {first.pid}\\); give each run its own output paths"):
                make()
            assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing moved, nothing new
    finally:
        stop.set()
        first.join(10)
    assert first.exitcode == 0 and not (tmp_path / ".mot.txt.lock").exists()
    with MotSink(path) as sink:  # free again
        sink.write(make_result(1))
    assert len(kept_files(path)) == kept and set(read_rows(path).frame) == {1}  # the first run's files kept


@pytest.mark.parametrize("make", [
    lambda p: MotSink(p), lambda p: JsonlSink(p), lambda p: VideoSink(p.with_suffix(".avi"), 10),
    lambda p: StatsSink(p.with_suffix(".json")),
], ids=["mot", "jsonl", "video", "stats"])
def test_every_sink_claims_its_path_until_close(tmp_path, make):
    sink = make(tmp_path / "out.txt")
    lock = sink.path.with_name(f".{sink.path.name}.lock")
    assert lock.read_text() == f"pid {os.getpid()}"
    with pytest.raises(SinkError, match="is being written by this process"):
        make(tmp_path / "out.txt")
    sink.close()
    assert not lock.exists()
    make(tmp_path / "out.txt").close()


def test_a_stream_output_takes_no_claim(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with MotSink(tmp_path / "fifo"), MotSink(tmp_path / "fifo"):  # written in place, like /dev/stdout
            pass
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_refused_open_frees_the_paths_it_claimed(tmp_path, monkeypatch):
    """A claim lost between open_sinks' check and the sink's own claim (a race, made certain here by
    skipping the check): the sinks opened before it give their paths back, and write nothing."""
    from vsdmot.runtime import sinks

    monkeypatch.setattr(sinks, "check_unclaimed", lambda path, kind: None)
    held = MotSink(tmp_path / "t.jsonl")
    paths = {"mot_out": tmp_path / "m.txt", "jsonl_out": tmp_path / "t.jsonl",
             "video_out": tmp_path / "v.avi", "stats_out": tmp_path / "s.json"}
    with pytest.raises(SinkError, match="being written by this process"):
        open_sinks(**{k: str(v) for k, v in paths.items()})
    held.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.txt", "t.jsonl"]  # empty; no lock, no stats, no video
    for s in open_sinks(**{k: str(v) for k, v in paths.items()}):
        s.close()


def test_a_run_killed_before_its_first_frame_leaves_no_earlier_run_in_place(tmp_path):
    """The MOT and JSONL files were new at open, but stats.json (first written after 5 s) and the
    video (opened at the first frame) were still the previous run's: a crash loop of short runs
    showed an old `final: true` stats file beside this run's outputs."""
    paths = {"mot_out": str(tmp_path / "m.txt"), "video_out": str(tmp_path / "v.avi"), "stats_out": str(tmp_path / "s.json")}
    sinks = open_sinks(**paths)
    for i in (1, 2):
        for s in sinks:
            s.write(make_result(i), np.zeros((48, 64, 3), np.uint8))
    for s in sinks:
        s.close()
    again = open_sinks(**paths)  # killed here: nothing closed
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 0
    assert not (tmp_path / "v.avi").exists() and len(kept_files(tmp_path / "v.avi")) == 1
    assert json.loads(kept_files(tmp_path / "s.json")[0].read_text())["frames"] == 2
    for s in again:
        s.close()


def test_a_crash_loop_keeps_the_last_real_runs_stats(tmp_path):
    """Each run killed right after its outputs opened left a `frames: 0` stats file, which the next
    run moved aside and counted: four such restarts pushed the last real run's file out of keep 3."""
    paths = {"mot_out": str(tmp_path / "m.txt"), "stats_out": str(tmp_path / "s.json"), "keep_files": 3}
    sinks = open_sinks(**paths)
    for s in sinks:
        s.write(make_result(1))
        s.close()
    for _ in range(4):
        for s in open_sinks(**paths):  # killed before a frame: only the claims go
            s._drop_claim()
    kept = [json.loads(p.read_text())["frames"] for p in kept_files(tmp_path / "s.json")]
    assert kept == [1] and json.loads((tmp_path / "s.json").read_text())["frames"] == 0
    for s in open_sinks(**paths):  # a finished run of no frame (a camera that never came): its record is kept
        s.close()
    for s in open_sinks(**paths):
        s.close()
    assert [json.loads(p.read_text())["final"] for p in kept_files(tmp_path / "s.json")][-1] is True


def test_a_refused_stats_path_frees_the_video_claim(tmp_path):
    """The video sink claimed its path before the stats sink was refused, and kept the claim."""
    held = StatsSink(tmp_path / "s.json")
    with pytest.raises(SinkError, match="being written by this process"):
        open_sinks(video_out=str(tmp_path / "v.avi"), stats_out=str(tmp_path / "s.json"))
    assert not (tmp_path / ".v.avi.lock").exists()
    held.close()
