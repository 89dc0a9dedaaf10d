"""vsdmot-bench: the tracker registry, the degraded-sequence cache, and a tiny real run of the peer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vsdmot.evaluation import bench as B
from vsdmot.evaluation.bench_cli import main as bench_main
from vsdmot.runtime.mot import read_rows
from vsdmot.runtime.types import Detections


class Oracle:
    """Outputs the counted ground truth of each frame: a perfect tracker."""

    def __init__(self, gt):
        self.gt = gt

    def track(self, frame):
        g = self.gt.at(frame.index)
        g = g.select(g.conf != 0)
        return Detections(np.c_[g.xywh[:, :2], g.xywh[:, :2] + g.xywh[:, 2:]], g.conf, g.id)

    def close(self):
        pass


@pytest.fixture
def oracle(tud_dir):
    gt = read_rows(tud_dir / "gt" / "gt.txt")
    B.register_tracker("test-oracle", lambda env: Oracle(gt), "ground truth replayed")
    yield "test-oracle"
    B._REGISTRY.pop("test-oracle", None)


def test_registry_and_perfect_run(oracle, tud_dir, tmp_path):
    assert "peer" in B.available_trackers() and B.available_trackers()[oracle] == "ground truth replayed"
    (run,) = B.bench([tud_dir], [B.Condition()], [oracle], tmp_path, cache_dir=tmp_path / "cache",
                     frames=(5, 14), progress=False)
    assert (run.tracker, run.sequence, run.condition, run.frames) == (oracle, "TUD-Campus", "clean", 10)
    assert run.metrics["HOTA"] == pytest.approx(1.0) and run.metrics["frames"] == 10 and run.fps > 0
    rows = read_rows(run.results_file)
    assert (rows.frame.min(), rows.frame.max()) == (5, 14)  # source numbering kept in the file
    table = B.format_table([run]).splitlines()
    assert table[0].split() == ["tracker", "sequence", "condition", "HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW", "FPS"]
    assert table[2].split()[3:8] == ["100.0"] * 5


def test_unknown_tracker(tud_dir, tmp_path):
    with pytest.raises(ValueError, match="tracker: expected one of .*'peer'.*got 'nope'"):
        B.bench([tud_dir], [B.Condition()], ["nope"], tmp_path, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "cond, name",
    [(B.Condition(), "clean"), (B.Condition("noise", 3), "noise-s3"), (B.Condition(schedule="mixed"), "schedule-mixed")],
)
def test_condition_names(cond, name):
    assert cond.name == name


def test_conditions_list():
    got = [c.name for c in B.conditions(["blur", "jpeg"], 3, ["mixed"])]
    assert got == ["clean", "blur-s3", "jpeg-s3", "schedule-mixed"]
    assert [c.name for c in B.conditions([], 2, [], clean=False)] == []


class FakeWriter:
    """Stands in for write_degraded_sequence: copies the sequence, counts calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, src, out, *, preset=None, severity=None, schedule=None, seed=0, progress=True, **window):
        self.calls.append((preset, severity, schedule, seed, *window.values()))
        shutil.copytree(src, out)
        return out


class SlowWriter(FakeWriter):
    """A writer that records its process and takes long enough for another to arrive meanwhile."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def __call__(self, src, out, **kw):
        import os
        import time

        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return super().__call__(src, out, **kw)


def _prepare_in_child(src, cache, log, result):
    Path(result).write_text(str(B.prepare_sequence(src, B.Condition("blur", 3), cache, writer=SlowWriter(log))))


def test_two_processes_write_one_degraded_copy(tud_dir, tmp_path):
    """Two exports gating at once both wrote NAME.partial: one rename failed (ENOTEMPTY) and left
    ~300 MB behind. Now one writes, the other waits and reuses it; a killed writer's partial is swept."""
    import multiprocessing

    src, cache = tmp_path / "TUD-Campus", tmp_path / "cache"
    shutil.copytree(tud_dir, src)
    stale = cache / "TUD-Campus" / "blur-s3-seed0.partial-99999999"
    stale.mkdir(parents=True)
    (cache / "TUD-Campus" / ".blur-s3-seed0.partial-99999999.tmp-x1y2").mkdir()  # the killed writer's own temp
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_prepare_in_child, args=(src, cache, tmp_path / "log", tmp_path / f"r{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len((tmp_path / "log").read_text().split()) == 1  # one writer
    out = cache / "TUD-Campus" / "blur-s3-seed0"
    assert (tmp_path / "r0").read_text() == (tmp_path / "r1").read_text() == str(out)
    assert (out / "seqinfo.ini").is_file() and not list(cache.rglob("*.partial*"))


def test_degraded_sequences_are_cached_by_condition_and_seed(tud_dir, tmp_path):
    src = tmp_path / "TUD-Campus"
    shutil.copytree(tud_dir, src)
    cache, writer = tmp_path / "cache", FakeWriter()
    blur = B.Condition("blur", 3)
    assert B.prepare_sequence(src, B.Condition(), cache, writer=writer) == src  # clean: no copy
    a = B.prepare_sequence(src, blur, cache, seed=0, writer=writer)
    assert a == cache / "TUD-Campus" / "blur-s3-seed0" and (a / "seqinfo.ini").is_file()
    assert B.prepare_sequence(src, blur, cache, seed=0, writer=writer) == a  # hit
    B.prepare_sequence(src, blur, cache, seed=1, writer=writer)
    B.prepare_sequence(src, B.Condition("blur", 4), cache, seed=0, writer=writer)
    assert writer.calls == [("blur", 3, None, 0), ("blur", 3, None, 1), ("blur", 4, None, 0)]
    (src / "gt" / "gt.txt").write_text((src / "gt" / "gt.txt").read_text() + "\n")  # source changed
    B.prepare_sequence(src, blur, cache, seed=0, writer=writer)
    assert len(writer.calls) == 4 and not list(cache.rglob("*.partial*"))


def test_a_window_gets_its_own_copy_and_the_whole_span_shares_one(tud_dir, tmp_path):
    src = tmp_path / "TUD-Campus"
    shutil.copytree(tud_dir, src)
    cache, writer, blur = tmp_path / "cache", FakeWriter(), B.Condition("blur", 3)
    whole = B.prepare_sequence(src, blur, cache, writer=writer)
    assert B.prepare_sequence(src, blur, cache, writer=writer, frames=(1, 71)) == whole  # TUD-Campus: 71 frames
    part = B.prepare_sequence(src, blur, cache, writer=writer, frames=(30, 71))
    assert part == cache / "TUD-Campus" / "blur-s3-seed0-f30-71"
    assert B.prepare_sequence(src, blur, cache, writer=writer, frames=(30, 71)) == part  # hit
    assert writer.calls == [("blur", 3, None, 0), ("blur", 3, None, 0, (30, 71))]


def test_cli_peer_tiny_run(yolox_onnx, tud_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_main(["--seq", str(tud_dir), "--frames", "1:6", "--out", str(out), "--cache", str(tmp_path / "c"),
                       "--detector", str(yolox_onnx), "--threads", "1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "tracker" and lines[2].split()[:3] == ["peer", "TUD-Campus", "clean"]
    data = json.loads((out / "bench.json").read_text())
    assert data["meta"]["complete"] and data["meta"]["threads"] == 1 and data["meta"]["input_size"] == 416 and "decode excluded" in data["meta"]["fps_note"]
    (run,) = data["runs"]
    assert run["frames"] == 6 and run["metrics"]["MOTA"] > 0.3 and run["fps"] > 0
    assert (out / "bench.png").stat().st_size > 5000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tracker", "nope"], "tracker: expected one of"),
        (["--severity", "9"], "severity 1-5"),
        (["--frames", "5:900"], "expected 1 <= A <= B <= 71"),
        (["--preset", "no_such_preset"], "preset: expected names from"),
        (["--schedule", "sometimes"], "schedule: expected names from"),
    ],
)
def test_cli_bad_input_is_one_line(tud_dir, tmp_path, capsys, argv, message):
    if "--preset" in argv or "--schedule" in argv:
        pytest.importorskip("vsdmot.calibration.schedule", reason="degradation library not landed yet")
    code = bench_main(["--seq", str(tud_dir), "--out", str(tmp_path), "--no-plot", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("vsdmot-bench: error:")


def test_real_preset_if_degradations_exist(oracle, tud_dir, tmp_path):
    degrade = pytest.importorskip("vsdmot.calibration.degrade", reason="degradation library not landed yet")
    pytest.importorskip("vsdmot.calibration.sequence", reason="write_degraded_sequence not landed yet")
    preset = sorted(degrade.PRESETS)[0]
    seq = B.prepare_sequence(tud_dir, B.Condition(preset, 3), tmp_path / "cache", progress=False)
    assert read_rows(seq / "gt" / "gt.txt").frame.max() == 71
    assert B.prepare_sequence(tud_dir, B.Condition(preset, 3), tmp_path / "cache", progress=False) == seq
    (run,) = B.bench([tud_dir], [B.Condition(preset, 3)], ["test-oracle"], tmp_path, cache_dir=tmp_path / "cache",
                     frames=(1, 5), progress=False)
    assert (run.sequence, run.condition) == ("TUD-Campus", f"{preset}-s3") and run.metrics["HOTA"] == pytest.approx(1.0)


class Empty:
    def track(self, frame):
        return Detections.empty(with_ids=True)

    def close(self):
        pass


def test_parallel_jobs_keep_order_and_report_each_pair(tud_dir, mot17_dir, tmp_path):
    B.register_tracker("test-empty", lambda env: Empty())
    seen = []
    try:
        runs = B.bench([tud_dir, mot17_dir], [B.Condition()], ["test-empty"], tmp_path, cache_dir=tmp_path / "c",
                       jobs=2, progress=False, on_result=lambda rs: seen.append(len(rs)))
    finally:
        B._REGISTRY.pop("test-empty", None)
    assert [r.sequence for r in runs] == ["TUD-Campus", "MOT17-05-FRCNN"]
    assert all(r.metrics["HOTA"] == 0.0 and r.metrics["FN"] > 0 for r in runs) and seen == [1, 2]


def test_the_bench_plot_shows_negative_mota():
    from vsdmot.evaluation.plots import axis_floor

    metrics = [{"HOTA": 0.5, "MOTA": -0.31}, {"HOTA": 0.6, "MOTA": 0.7}, {"HOTA": float("nan")}]
    assert axis_floor(metrics, "MOTA") == pytest.approx(-31.0) and axis_floor(metrics, "HOTA") == 0.0


def test_a_crash_while_writing_bench_json_keeps_the_previous_file(tmp_path, monkeypatch):
    """bench.json is rewritten after every pair; a kill mid-write had left half a JSON file."""
    path = tmp_path / "bench.json"
    B.write_json([], path, {"run": 1})

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr("os.fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        B.write_json([], path, {"run": 2})
    assert json.loads(path.read_text())["meta"] == {"run": 1} and [p.name for p in tmp_path.iterdir()] == ["bench.json"]
