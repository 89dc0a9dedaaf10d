"""`vsdmot-edge run`: the BRIEF contract end to end on real frames, and bad input as one clear line
with a non-zero exit that leaves earlier outputs intact."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from tinybundle import make_bundle, write_manifest
from vsdmot.edge.cli import main
from vsdmot.edge import run_cmd
from vsdmot.edge.run_cmd import DEMO_CLIP
from vsdmot.runtime.mot import read_rows

pytest.importorskip("torch")  # the tiny bundle's student is made with torch


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, yolox_onnx) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", yolox_onnx, extra={"tracker": "bytetrack"})


def edge_run(*args: str) -> int:
    return main(["run", "--health-listen", "off", "--threads", "1", *map(str, args)])


def test_demo_clip_is_shipped_small_and_not_the_shared_file():
    assert DEMO_CLIP.is_file() and DEMO_CLIP.stat().st_size < 2_000_000
    import cv2

    cap = cv2.VideoCapture(str(DEMO_CLIP))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    assert 150 <= cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 200
    assert (DEMO_CLIP.parent / "NOTICE-demo.md").is_file()


def test_contract_outputs(bundle, tmp_path):
    out = {k: tmp_path / n for k, n in (("mot", "mot.txt"), ("stats", "stats.json"), ("jsonl", "f.jsonl"), ("video", "a.avi"))}
    rc = edge_run("--demo", "--bundle", bundle, "--max-frames", 6, "--mot-out", out["mot"], "--stats-out", out["stats"],
                  "--jsonl-out", out["jsonl"], "--video-out", out["video"])
    assert rc == 0
    rows = read_rows(out["mot"])
    assert rows.frame.min() == 1 and rows.frame.max() == 6 and len(set(rows.id)) >= 3
    assert (rows.xywh[:, 0] + rows.xywh[:, 2]).max() <= 640.5  # demo-clip pixels
    stats = json.loads(out["stats"].read_text())
    assert stats["frames"] == 6 and stats["fps"] > 0
    assert {"semantic_runs", "semantic_skipped", "latency_ms"} <= set(stats)
    assert {"detector", "tracker", "quality"} <= set(stats["latency_ms"])
    assert len(out["jsonl"].read_text().splitlines()) == 6
    assert out["video"].stat().st_size > 0
    assert stats["source_stats"]["frames_read"] >= 6  # the source's own counters reach the stats file



def test_rotate_mb_splits_the_outputs_and_keeps_the_newest(bundle, tmp_path):
    """--rotate-mb and --keep-files reach the sinks: a long run's JSONL is cut into files of about that
    size, the oldest deleted, and the kept ones end on whole lines, the newest frames all there."""
    from vsdmot.runtime.sinks import kept_files

    jsonl = tmp_path / "f.jsonl"
    assert edge_run("--demo", "--bundle", bundle, "--max-frames", 30, "--jsonl-out", jsonl,
                    "--rotate-mb", 0.002, "--keep-files", 2) == 0
    old = kept_files(jsonl)
    frames = [json.loads(ln)["frame"] for f in [*old, jsonl] for ln in f.read_text().splitlines()]
    assert len(old) == 2 and all(f.stat().st_size >= 2000 for f in old)
    assert frames == list(range(frames[0], 31)) and frames[0] > 1  # contiguous, newest last, oldest gone


def test_rotate_turns_a_sideways_camera_upright(bundle, tmp_path):
    """The demo clip turned a quarter counter-clockwise (a camera mounted sideways, 480x640): the detector
    finds almost nobody lying down; --rotate 90 turns the frames back and the people are tracked, in the
    upright 640x480 frame."""
    import cv2

    sideways = tmp_path / "sideways.avi"
    cap, out = cv2.VideoCapture(str(DEMO_CLIP)), cv2.VideoWriter(str(sideways), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 640))
    for _ in range(6):
        ok, img = cap.read()
        out.write(cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE))
    cap.release(), out.release()
    rows = {}
    for turn in (0, 90):
        mot = tmp_path / f"mot{turn}.txt"
        assert edge_run("--source", sideways, "--bundle", bundle, "--rotate", turn, "--mot-out", mot) == 0
        rows[turn] = read_rows(mot)
    assert len(rows[90]) >= 3 * max(len(rows[0]), 1)
    assert (rows[90].xywh[:, 0] + rows[90].xywh[:, 2]).max() > 480  # boxes in the upright 640x480 frame
    assert (rows[90].xywh[:, 1] + rows[90].xywh[:, 3]).max() <= 480.5

def test_config_file_and_flag_precedence(bundle, tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text(f'max_frames = 2\n[pipeline]\nbundle = "{bundle}"\n[sinks]\nmot_out = "{tmp_path / "a.txt"}"\n')
    assert edge_run("--config", conf, "--source", DEMO_CLIP, "--max-frames", 3) == 0
    assert read_rows(tmp_path / "a.txt").frame.max() == 3  # the flag beats the file


@pytest.mark.parametrize("flags, camera, source", [(["--demo"], "", str(DEMO_CLIP)), (["--source", "x.mp4"], "", "x.mp4"),
                                                    (["--camera", "/dev/video1"], "/dev/video1", "")])
def test_a_source_flag_replaces_the_config_file_s_source(tmp_path, flags, camera, source):
    """The service's config names a camera: `--demo` (or --source) to try it on a clip was refused,
    'expected one source, got both a camera and a source'."""
    conf = tmp_path / "edge.toml"
    conf.write_text('[source]\ncamera = "/dev/video0"\n')
    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    cfg = run_cmd.build_config(p.parse_args(["--config", str(conf), *flags, "--health-listen", "off"]))
    assert (cfg.source.camera, cfg.source.source) == (camera, source)
    conf.write_text('[source]\ncamera = "/dev/video0"\nfps = 30.0\nwidth = 1280\n')  # the service's capture settings
    cfg = run_cmd.build_config(p.parse_args(["--config", str(conf), *flags, "--health-listen", "off"]))
    if source:  # the clip keeps its own rate and size: the camera's 30 FPS would retime a 7 FPS file
        assert (cfg.source.fps, cfg.source.width) == (0.0, 0)
    else:
        assert (cfg.source.fps, cfg.source.width) == (30.0, 1280)
    conf.write_text('[source]\ncamera = "/dev/video0"\nsource = "rtsp://cam/1"\n')  # both in the file itself
    with pytest.raises(ValueError, match="comment out one of them"):
        run_cmd.build_config(p.parse_args(["--config", str(conf), "--health-listen", "off"]))


def _tamper_schema(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    write_manifest(b, {"schema_version": 99, "tracker": m.get("tracker")})


def _tamper_hash(b: Path) -> None:
    (b / "quality.json").write_text((b / "quality.json").read_text().replace("0.6", "0.7"))


def _wrong_shape(b: Path) -> None:
    import torch

    (b / "detector.onnx").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Conv2d(3, 85, 1), (torch.zeros(1, 3, 300, 416),), str(b / "detector.onnx"),
                          input_names=["images"], output_names=["output"], opset_version=17, dynamo=False)
    write_manifest(b, {"tracker": "bytetrack"})


BAD = [  # (what, setup(bundle dir) or None, extra args, exit code, words in the error line)
    ("missing source", None, ["--source", "/nonexistent/clip.mp4"], 1, ["nothing at /nonexistent/clip.mp4"]),
    ("no source", None, [], 2, ["expected a source"]),
    ("wrong schema", _tamper_schema, ["--demo"], 1, ["schema_version 1", "found 99"]),
    ("hash mismatch", _tamper_hash, ["--demo"], 1, ["quality.json", "sha256"]),
    ("wrong input shape", _wrong_shape, ["--demo"], 2, ["detector input 'images'", "(1, 3, 300, 416)"]),
    ("bad config key", None, ["--demo", "--config", "BADCONF"], 2, ["unknown key 'bogus'"]),
    ("video that opens but decodes nothing", None, ["--source", "TRUNC"], 1, ["yielded no frames"]),
    ("16x16 video", None, ["--source", "TINY"], 1, ["frames are 16x16 px; expected at least 32x32"]),  # was mid-run
    ("output is the source", None, ["--source", "CLIP", "--video-out", "CLIP"], 2, ["--video-out", "is the --source file"]),
    ("two outputs one file", None, ["--demo", "--jsonl-out", "MOT"], 2, ["--jsonl-out and --mot-out are the same file"]),
    ("output is the config", None, ["--demo", "--config", "GOODCONF", "--stats-out", "GOODCONF"], 2, ["is the --config file"]),
    ("unwritable stats", None, ["--demo", "--stats-out", "/dev/null/s.json"], 2, ["--stats-out", "cannot create files in /dev/null"]),
    ("output is a folder", None, ["--demo", "--video-out", "FOLDER"], 2, ["--video-out", "is a folder"]),  # was after the load
    ("output inside the bundle", None, ["--demo", "--jsonl-out", "INBUNDLE"], 2, ["--jsonl-out", "is inside the bundle"]),
    ("unsupported video container", None, ["--demo", "--video-out", "WEBM"], 2, ["video sink", "'.webm'"]),
]


@pytest.mark.parametrize("what,setup,args,code,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_nonzero_and_outputs_kept(what, setup, args, code, words, bundle, tmp_path, capsys):
    b = tmp_path / "bundle"
    os.system(f"cp -a {bundle} {b}")  # symlinked detector stays a symlink
    if setup:
        setup(b)
    conf = tmp_path / "bad.toml"
    conf.write_text("[semantics]\nbogus = 1\n")
    mot = tmp_path / "mot.txt"
    mot.write_text("1,1,1.00,2.00,3.00,4.00,0.9000,-1,-1,-1\n")  # an earlier run's results
    trunc = tmp_path / "trunc.mp4"  # the demo clip cut after its header: OpenCV opens it, decodes nothing
    trunc.write_bytes(Path(DEMO_CLIP).read_bytes()[:5000])
    clip, good = tmp_path / "clip.mp4", tmp_path / "good.toml"
    clip.write_bytes(Path(DEMO_CLIP).read_bytes())
    good.write_text("max_frames = 2\n")
    tiny = tmp_path / "t16.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    for k in range(3):
        writer.write(np.full((16, 16, 3), 80 * k, np.uint8))
    writer.release()
    inputs = {p: p.read_bytes() for p in (clip, good)}
    names = {"BADCONF": conf, "TRUNC": trunc, "CLIP": clip, "MOT": mot, "GOODCONF": good, "TINY": tiny,
             "WEBM": tmp_path / "a.webm", "FOLDER": tmp_path, "INBUNDLE": b / "detector.onnx"}
    args = [str(names.get(a, a)) for a in args]
    rc = edge_run("--bundle", b, "--mot-out", mot, "--max-frames", 2, *args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
    assert rc == code and len(err) == 1 and "Traceback" not in err[0]
    for word in words:
        assert word in err[0]
    assert mot.read_text() == "1,1,1.00,2.00,3.00,4.00,0.9000,-1,-1,-1\n"
    assert all(p.read_bytes() == data for p, data in inputs.items())  # the inputs too


def test_missing_default_bundle_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import vsdmot.runtime.bundle as rb

    monkeypatch.setattr(rb, "DEFAULT_BUNDLE", tmp_path / "absent")
    assert edge_run("--demo", "--max-frames", 1) == 1
    assert "shipped default bundle is missing" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_frame_flushes_and_exits_zero(signum, bundle, tmp_path):
    mot, stats = tmp_path / "mot.txt", tmp_path / "stats.json"
    code = "import sys; from vsdmot.edge.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "run", "--demo", "--loop", "--bundle", str(bundle), "--threads", "1",
           "--health-listen", "off", "--mot-out", str(mot), "--stats-out", str(stats)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (mot.exists() and mot.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by signal" in err
    rows = read_rows(mot)  # every line complete
    assert json.loads(stats.read_text())["frames"] == rows.frame.max()


@pytest.fixture(scope="module")
def e2e_bundle(tmp_path_factory, yolox_onnx) -> Path:
    pytest.importorskip("vsdmot.models.tracker_head")
    return make_bundle(tmp_path_factory.mktemp("e") / "bundle", yolox_onnx, tracker=True, extra={"tracker": "e2e"})


@pytest.mark.parametrize("policy,runs", [("always", 4), ("never", 0)])
def test_semantic_policy_reaches_the_stats(e2e_bundle, tmp_path, policy, runs):
    stats = tmp_path / "stats.json"
    assert edge_run("--demo", "--bundle", e2e_bundle, "--semantic", policy, "--max-frames", 4, "--stats-out", stats) == 0
    s = json.loads(stats.read_text())
    assert s["semantic_runs"] == runs and s["semantic_runs"] + s["semantic_reused"] + s["semantic_skipped"] == 4


def test_backend_torch_matches_onnxruntime_on_the_default_bundle(tmp_path):
    from vsdmot.models import reference
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle

    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"no shipped default bundle at {DEFAULT_BUNDLE}")
    nets = [n[:-5] for n in load_bundle(DEFAULT_BUNDLE).names if n.endswith(".onnx")]
    missing = [n for n in nets if not (Path(reference.WEIGHTS) / f"{n}.pt").is_file()]
    if missing:
        pytest.skip(f"--backend torch runs the shipped torch weights; missing {missing} in {reference.WEIGHTS}")
    rows = {}
    for kind in ("torch", "onnxruntime"):
        assert edge_run("--demo", "--backend", kind, "--max-frames", 5, "--mot-out", tmp_path / f"{kind}.txt") == 0
        rows[kind] = read_rows(tmp_path / f"{kind}.txt")
    assert len(rows["torch"]) > 0 and (rows["torch"].id == rows["onnxruntime"].id).all()
    assert abs(rows["torch"].xywh - rows["onnxruntime"].xywh).max() < 0.5


def test_backend_tensorrt_without_tensorrt_is_one_line(bundle, tmp_path, capsys):
    from vsdmot.runtime.backends import tensorrt_status

    if tensorrt_status()[0]:
        pytest.skip("TensorRT works here")
    assert edge_run("--demo", "--bundle", bundle, "--backend", "tensorrt", "--max-frames", 1) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "TensorRT is not installed" in err[0]


def test_reload_applies_semantics_and_names_sections_that_need_a_restart(tmp_path, caplog):
    from types import SimpleNamespace

    from vsdmot.edge.run_cmd import _reloader

    cfg = tmp_path / "run.toml"
    cfg.write_text('[source]\nsource = "clip.mp4"\n[semantics]\npolicy = "auto"\n[tracker]\nkind = "hybrid"\n')
    pipeline = SimpleNamespace(semantics=SimpleNamespace(student=object(), cfg=None))
    from vsdmot.runtime.config import load_config

    reload = _reloader(argparse.Namespace(config=str(cfg)), pipeline, load_config(cfg))  # the config it started from
    cfg.write_text('[source]\nsource = "clip.mp4"\n[semantics]\npolicy = "always"\n[tracker]\nkind = "bytetrack"\n')
    with caplog.at_level("WARNING"):
        reload()
    assert pipeline.semantics.cfg.policy == "always"
    assert "[tracker]" in caplog.text and "[source]" not in caplog.text and "restart" in caplog.text


@pytest.mark.parametrize("cgroup, hint", [
    ("0::/system.slice/vsdmot-cam2.service\n", " (systemctl restart vsdmot-cam2)"),  # a unit of several cameras
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/vte-spawn-1.scope\n", ""),  # a terminal
    ("12:pids:/system.slice/vsdmot-edge.service\n0::/system.slice/vsdmot-edge.service\n", " (systemctl restart vsdmot-edge)"),
    (None, ""),  # no /proc (not Linux)
])
def test_the_restart_hint_names_this_services_unit(tmp_path, cgroup, hint):
    """It named vsdmot-edge for every unit, also for a second camera's vsdmot-cam2."""
    from vsdmot.edge.run_cmd import _restart_hint

    path = tmp_path / "cgroup"
    if cgroup is not None:
        path.write_text(cgroup)
    assert _restart_hint(str(path)) == hint


@pytest.mark.parametrize("frame_count, max_frames, total", [(795, 0, 795), (795, 300, 300), (0, 300, 300), (0, 0, 0)])
def test_progress_total_is_what_the_run_will_do(frame_count, max_frames, total):
    import argparse

    from vsdmot.edge import run_cmd
    from vsdmot.edge.runner import ProgressHook

    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    args = p.parse_args(["--demo", "--health-listen", "off", "--max-frames", str(max_frames)])
    source = type("S", (), {"frame_count": frame_count})()
    hooks = run_cmd.make_hooks(args, run_cmd.build_config(args), source)
    assert isinstance(hooks[0], ProgressHook) and hooks[0].total == total


def test_health_hook_reads_the_source_stats_itself():
    """`run` hands the source's stats getter to the health hook, so /metrics and /healthz show a
    stalled source's counters while no frame arrives (they froze at the last frame's)."""
    import argparse

    from vsdmot.edge import run_cmd
    from vsdmot.edge.health import HealthHook

    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    args = p.parse_args(["--demo", "--health-listen", "127.0.0.1:0", "--power-meter", "none"])
    stats = object()
    source = type("S", (), {"frame_count": 0, "stats": lambda self: stats})()
    health = [h for h in run_cmd.make_hooks(args, run_cmd.build_config(args), source) if isinstance(h, HealthHook)]
    assert len(health) == 1 and health[0].metrics.source_stats() is stats


@pytest.mark.parametrize("under_systemd", [False, True])
def test_a_camera_missing_at_start_is_awaited_under_systemd(monkeypatch, under_systemd):
    """Under systemd a camera not there yet at start (a USB camera enumerating late, an IP camera
    booting slower than the Jetson after a power cut) made `run` exit 1 at once; Restart= then used
    up StartLimitBurst (5 starts in 10 min) within a minute and left the unit failed for good.
    Under a service manager the source keeps retrying in the background (READY=1 waits for the
    first frame); in a shell the first open still fails at once, with the reason."""
    from vsdmot.edge import run_cmd
    from vsdmot.runtime.config import load_config
    from vsdmot.runtime.errors import SourceError

    cfg = load_config(None, {"source.camera": "/dev/video97"})
    if not under_systemd:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        with pytest.raises(SourceError, match="no such device"):
            run_cmd.open_source(cfg)
        return
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    source = run_cmd.open_source(cfg)
    try:
        assert source.stats().connected is False
    finally:
        source.close()


def test_a_run_without_outputs_says_nothing_is_saved(bundle, caplog):
    with caplog.at_level(logging.INFO, logger="vsdmot.edge.run_cmd"):
        assert edge_run("--demo", "--bundle", bundle, "--max-frames", 1) == 0
        assert edge_run("--demo", "--bundle", bundle, "--max-frames", 1, "--jsonl-out", "/dev/null") == 0
    said = [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
    assert said == ["no --mot-out, --jsonl-out, --video-out or --stats-out: the tracks are not saved"]


def test_overlap_flag_gives_the_same_rows_and_stays_off_on_tensorrt(tmp_path, caplog, monkeypatch):
    from types import SimpleNamespace

    from vsdmot.edge import run_cmd, runner
    from vsdmot.runtime.config import load_config

    asked = []
    real_loop = runner.run_loop
    monkeypatch.setattr(runner, "run_loop", lambda *a, **k: asked.append(k["overlap"]) or real_loop(*a, **k))
    rows = {}
    for flag in ((), ("--overlap",)):
        out = tmp_path / f"mot{len(flag)}.txt"
        assert edge_run("--demo", "--max-frames", "12", "--mot-out", out, *flag) == 0
        rows[bool(flag)] = out.read_text()
    assert asked == [False, True] and rows[True] == rows[False] and rows[True]
    on = load_config(None, {"pipeline.overlap": True})
    assert run_cmd.overlap_for(on, SimpleNamespace(backend_kind="onnxruntime"))
    assert not run_cmd.overlap_for(on, SimpleNamespace(backend_kind="tensorrt"))
    assert not run_cmd.overlap_for(on, SimpleNamespace(backend_kind="onnxruntime+tensorrt"))  # auto, mixed
    assert "not with the TensorRT backend" in caplog.text


def test_output_size_notes_name_what_may_fill_the_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from vsdmot.edge.run_cmd import output_size_notes
    from vsdmot.runtime.config import SinksConfig

    jsonl = str(tmp_path / "t.jsonl")
    assert output_size_notes(SinksConfig(jsonl_out=jsonl), endless=False) == []  # a file source ends
    (note,) = output_size_notes(SinksConfig(jsonl_out=jsonl, stats_out=str(tmp_path / "s.json")), endless=True)
    assert note.startswith("--jsonl-out: this source has no end") and "--rotate-mb 100" in note
    os.mkfifo(tmp_path / "pipe")
    assert output_size_notes(SinksConfig(mot_out=str(tmp_path / "pipe")), endless=True) == []  # a pipe fills nothing
    rotated = SinksConfig(jsonl_out=jsonl, video_out=str(tmp_path / "v.avi"), rotate_mb=100.0, keep_files=5)
    assert output_size_notes(rotated, endless=True) == []  # bounded, and this disk has 600 MB free
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 250 * 10**6, 250 * 10**6))
    notes = output_size_notes(rotated, endless=True)
    assert [n.split(":")[0] for n in notes] == ["--jsonl-out", "--video-out"]
    assert "250 MB free, less than the 600 MB" in notes[0]


def test_more_threads_than_cores_is_warned_about():
    from vsdmot.edge.run_cmd import thread_note

    assert thread_note(0, 2) is None and thread_note(2, 2) is None and thread_note(4, None) is None
    assert "--threads 999 is more than this machine's 2 cores" in thread_note(999, 2)


def test_without_onnxruntime_the_run_says_what_to_install():
    """JetPack ships no onnxruntime: `--backend auto` without a usable TensorRT ended in a traceback."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['onnxruntime'] = None\n"  # as if it were not installed
            "from vsdmot.edge.cli import main\nsys.exit(main(sys.argv[1:]))")
    ran = subprocess.run([sys.executable, "-c", code, "run", "--demo", "--max-frames", "2", "--health-listen", "off"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert "needs the Python package 'onnxruntime'" in ran.stderr.strip().splitlines()[-1]


SIGNAL_WHILE_STARTING = """
import os, sys
from vsdmot.edge import run_cmd
from vsdmot.edge.cli import main
real = run_cmd.open_bundle
run_cmd.open_bundle = lambda path: (os.kill(os.getpid(), int(sys.argv[1])), real(path))[1]
sys.exit(main(["run", "--health-listen", "off", "--threads", "1", "--bundle", sys.argv[2], "--demo",
               "--max-frames", "3", "--mot-out", sys.argv[3]]))
"""


@pytest.mark.parametrize("signum, code, frames", [(signal.SIGTERM, -signal.SIGTERM, False), (signal.SIGHUP, 0, True)])
def test_a_signal_while_the_run_starts(signum, code, frames, bundle, tmp_path):
    """Before the loop's handlers are in (a bundle loading, a first TensorRT build): SIGHUP (reload
    mid-run) killed the process and is ignored; SIGTERM ends it at once, by the signal, which
    systemd counts as a clean stop (a Python handler would wait for minutes of C++ work)."""
    mot = tmp_path / "mot.txt"
    out = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_STARTING, str(int(signum)), str(bundle), str(mot)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    assert mot.exists() == frames  # SIGTERM: ended before any output; SIGHUP: ignored, the run went on
