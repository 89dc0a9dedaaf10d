"""`vsdmot-edge profile`: steady-state statistics from frame records, energy arithmetic, and a real
comparison report on the demo clip (here: no power meter, so no watts anywhere in the report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vsdmot.edge import profile_cmd as PC
from vsdmot.edge.cli import main
from vsdmot.edge.power import make_sample


def records(n: int, dt: float = 0.1, cpu_per_frame: float = 0.05) -> list[PC.FrameRecord]:
    states = ["fresh", "skipped", "skipped", "reused"]
    return [PC.FrameRecord(t=100.0 + dt * i, index=i, q=0.9, w=0.1, semantic=states[i % 4],
                           latency_ms={"quality": 1.0, "semantics": 2.0, "detector": 30.0, "tracker": 3.0, "total": 40.0 if i else 900.0},
                           cpu_s=10.0 + cpu_per_frame * i) for i in range(1, n + 1)]


def test_summarize_steady_state():
    recs = records(40)  # frames finish at 100.1 .. 104.0; run started at 100.0
    s = PC.summarize(recs, t_start=100.0, warmup_s=1.0)
    assert s["warmup_frames"] == 9 and s["frames"] == 31  # frames at t - start < 1.0 s are warm-up
    assert s["seconds"] == pytest.approx(3.1)
    assert s["fps"]["end_to_end"] == pytest.approx(31 / 3.1, rel=1e-3)
    assert s["fps"]["model"] == pytest.approx(1000 / 35.0, rel=1e-3)  # semantics + detector + tracker
    assert s["fps"]["pipeline"] == pytest.approx(1000 / 40.0, rel=1e-3)  # the warm-up's 900 ms frame is excluded
    assert s["latency_ms"]["total"]["p99"] == 40.0
    assert s["semantic"]["skipped"] + s["semantic"]["fresh"] + s["semantic"]["reused"] == 31
    assert s["semantic_skip_ratio"] == pytest.approx(s["semantic"]["skipped"] / 31, abs=1e-4)
    assert s["cpu_seconds"] == pytest.approx(31 * 0.05) and s["cpu_cores_busy"] == pytest.approx(0.5, rel=1e-3)
    assert s["rss_growth_mb_per_min"] is None and s["rss_window_s"] == pytest.approx(3.1)  # no rate from 3 s
    long = PC.summarize(records(700), t_start=100.0, warmup_s=1.0)  # 70 s
    assert long["rss_growth_mb_per_min"] == 0.0  # records() leaves RSS at 0


def test_warmup_longer_than_the_run_is_a_clear_error():
    with pytest.raises(ValueError, match="no frames after the 10.0 s warm-up"):
        PC.summarize(records(5), t_start=100.0, warmup_s=10.0)


def test_unwritable_report_dir_fails_before_measuring(monkeypatch, capsys):
    monkeypatch.setattr(PC, "profile", lambda args: pytest.fail("measured before checking --report"))
    assert main(["profile", "--demo", "--report", "/dev/null/report"]) == 1
    assert "profile report: cannot write /dev/null/report/report.json" in capsys.readouterr().err


def test_first_frame_is_always_warmup():
    assert PC.summarize(records(5), t_start=100.0, warmup_s=0.0)["frames"] == 4


def test_energy_net_of_idle_baseline():
    """Arithmetic only (samples built by hand, labelled as such; never reported as measured)."""
    stats = {"frames": 100, "seconds": 10.0}
    samples = [make_sample({"VDD_IN": 7.0}, t) for t in (0.0, 5.0, 10.0)]
    e = PC.energy(stats, samples, idle_w=5.0)
    assert (e["mean_w"], e["net_w"], e["joules_per_frame"], e["net_joules_per_frame"]) == (7.0, 2.0, 0.7, 0.2)
    assert "too few" in PC.energy(stats, samples[:1], None)["note"]


def test_energy_needs_samples_over_the_whole_window():
    """A meter that stopped reading 3 s into a 10 s window left 3 s of samples; their mean was
    multiplied by the full 10 s as if measured throughout. The CLI's line then said 'no power
    meter' for any metered run without figures. (Samples built by hand: arithmetic only.)"""
    stats = {"frames": 100, "seconds": 10.0}
    samples = [make_sample({"VDD_IN": 7.0}, t) for t in (0.0, 1.0, 2.0, 3.0)]
    e = PC.energy(stats, samples, idle_w=5.0)
    assert "mean_w" not in e and "joules_per_frame" not in e and "3.0 of the 10.0 s" in e["note"]
    assert "mean_w" in PC.energy(stats, [make_sample({"VDD_IN": 7.0}, t) for t in (0.1, 5.0, 9.9)], None)
    assert PC.power_text(e) == f", power: {e['note']}"
    assert PC.power_text({"metered": False, "note": "no power meter on this machine"}) == ", no power meter"


@pytest.mark.parametrize(
    "flags, labels, error",
    [
        ({}, ["semantic=config"], None),
        ({"semantic": "never"}, ["semantic=never"], None),
        ({"compare_semantic": "auto,always"}, ["semantic=auto", "semantic=always"], None),
        ({"compare_bundle": "/b/int8,/b/fp32"}, ["bundle=int8", "bundle=fp32"], None),
        ({"compare_semantic": "auto"}, None, "two comma-separated"),
        ({"compare_semantic": "auto,sometimes"}, None, "auto, always or never"),
        ({"compare_semantic": "auto,always", "compare_bundle": "a,b"}, None, "exclusive"),
    ],
)
def test_variants(flags, labels, error):
    args = argparse.Namespace(**{"semantic": None, "compare_semantic": None, "compare_bundle": None, **flags})
    if error:
        with pytest.raises(ValueError, match=error):
            PC.variants(args)
    else:
        assert [v.label for v in PC.variants(args)] == labels


def _run(label: str, fps: float) -> dict:
    return {"label": label, "stats": {"fps": {"end_to_end": fps, "model": 2 * fps}, "cpu_seconds_per_frame": 0.01},
            "energy": {}}


def test_rounds_give_median_ratios_and_each_side_s_median_run():
    rounds = [[_run("A", 100.0), _run("B", 50.0)], [_run("A", 90.0), _run("B", 60.0)], [_run("A", 80.0), _run("B", 80.0)]]
    c = PC.compare_rounds(rounds)
    assert c["per_round"]["fps_end_to_end"] == [2.0, 1.5, 1.0] and c["fps_end_to_end"] == 1.5 and c["rounds"] == 3
    assert c["spread"] == 2.0  # > DISAGREE: the report and the run's log say the rounds disagree
    assert c["net_joules_per_frame"] is None  # no meter in any round
    assert [r["stats"]["fps"]["end_to_end"] for r in PC.median_runs(rounds)] == [90.0, 60.0]
    with pytest.raises(ValueError, match="--compare-semantic or --compare-bundle"):
        PC.rounds_of(argparse.Namespace(rounds=3), [PC.Variant("semantic=auto", {})])


@pytest.mark.parametrize("given, loop", [(["--demo"], True), (["--source", "clip.mp4"], True),
                                         (["--camera", "/dev/video0"], None), (["--source", "rtsp://cam/1"], None),
                                         (["--source", "https://host/clip.mp4"], True)])
def test_profile_replays_files_only(given, loop):
    """The profile set --loop for every source, so `profile --camera` (or a stream) warned
    '--loop: replays files only; ignored for this camera' about a flag the user never gave."""
    p = argparse.ArgumentParser()
    PC.add_arguments(p)
    args = p.parse_args([*given, "--report", "unused"])
    assert PC.run_namespace(args, PC.variants(args)[0]).loop is loop


class StalledSource:
    """A live source whose camera delivers nothing: iteration waits until stop() (as LiveSource)."""

    fps, name, frame_count = 25.0, "stalled", 0

    def __init__(self):
        import threading

        self.stopped = threading.Event()

    def __iter__(self):
        if not self.stopped.wait(5.0):
            raise AssertionError("the source was never stopped")
        return iter(())

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        pass


def test_ctrl_c_stops_a_profile_on_a_stalled_camera(monkeypatch):
    """The profile's stop event was a plain Event: Ctrl-C set it, but the loop sat in the source
    waiting for a frame that never came, so a profile of a stalled camera hung until a second
    Ctrl-C aborted it. It now stops the source too, as `run` does."""
    import os
    import signal
    import threading
    import time
    import types

    from vsdmot.edge import run_cmd
    from vsdmot.runtime import pipeline as runtime_pipeline

    source = StalledSource()
    pipe = types.SimpleNamespace(semantics=types.SimpleNamespace(counts=types.SimpleNamespace(as_dict=dict)),
                                 close=lambda: None, backends=[], backend_kind="onnxruntime", tracker_kind="bytetrack")
    monkeypatch.setattr(run_cmd, "open_bundle", lambda path: types.SimpleNamespace(manifest={}))
    monkeypatch.setattr(run_cmd, "open_source", lambda cfg: source)
    monkeypatch.setattr(runtime_pipeline, "build_pipeline", lambda bundle, cfg, fps: pipe)
    p = argparse.ArgumentParser()
    PC.add_arguments(p)
    args = p.parse_args(["--camera", "/dev/video0", "--report", "unused"])
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(ValueError, match="no frames after"):  # nothing was measured: said so
            PC.run_variant(args, PC.variants(args)[0], PC.ProfileConfig(duration_s=1.0, warmup_s=0.0), None)
    finally:
        timer.cancel()
    assert source.stopped.is_set() and time.monotonic() - t0 < 4.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, yolox_onnx) -> Path:
    pytest.importorskip("torch")  # the tiny bundle's student is made with torch
    from tinybundle import make_bundle

    # the e2e tracker takes the semantic vector, so the two policies differ (random tracker weights:
    # timing and semantic work are real, tracking accuracy is not what this measures)
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", yolox_onnx, tracker=True)


def test_profile_report_on_the_demo_clip(bundle, tmp_path, capsys):
    """Two runs side by side on the shipped demo clip; no meter here, so time and CPU only."""
    rep = tmp_path / "report"
    rc = main(["profile", "--demo", "--bundle", str(bundle), "--threads", "1", "--duration", "2", "--warmup", "0.5",
               "--idle", "0", "--compare-semantic", "auto,always", "--rounds", "2", "--report", str(rep)])
    assert rc == 0
    report = json.loads((rep / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["semantic=auto", "semantic=always"]
    for r in report["runs"]:
        s = r["stats"]
        assert s["frames"] > 5 and s["warmup_frames"] >= 1
        assert {"quality", "detector", "tracker", "total"} <= set(s["latency_ms"])
        assert all(s["fps"][k] > 0 for k in ("model", "pipeline", "end_to_end"))
        assert s["fps"]["model"] >= s["fps"]["pipeline"] >= s["fps"]["end_to_end"] * 0.9
        assert s["cpu_seconds"] > 0 and 0 <= s["semantic_skip_ratio"] <= 1
        assert s["rss_mb"][0] > 10 and s["rss_window_s"] > 0
        assert r["config"]["semantics"]["policy"] == r["label"].split("=")[1]
        if report["meter"]["name"] is None:
            assert r["energy"] == {"metered": False, "note": report["meter"]["explain"]} and r["power_samples"] == []
    auto, always = (r["stats"] for r in report["runs"])
    assert always["semantic"]["fresh"] == always["frames"] and always["semantic_skip_ratio"] == 0
    assert auto["semantic_skip_ratio"] >= always["semantic_skip_ratio"]
    c = report["comparison"]
    assert (c["a"], c["b"]) == ("semantic=auto", "semantic=always") and c["fps_end_to_end"] > 0
    assert c["rounds"] == 2 and len(c["per_round"]["fps_end_to_end"]) == 2  # A B A B, interleaved
    if report["meter"]["name"] is None:
        assert c["net_joules_per_frame"] is None and c["joules_per_frame"] is None
    pngs = {p.name for p in rep.glob("*.png")}
    assert {"latency_over_time.png", "stage_breakdown.png", "quality_weight.png"} <= pngs
    md = (rep / "report.md").read_text()
    assert "| FPS, end to end (decode + step + hooks) |" in md and "semantic=always" in md
    assert "Medians of 2 interleaved rounds" in md
    prec = json.loads((Path(bundle) / "manifest.json").read_text())["precision"]
    assert all(r["input_size"] == "416x416" and r["bundle_precision"] == prec for r in report["runs"])
    assert all(r["engine_precision"] == {} for r in report["runs"])  # onnxruntime: no engines
    assert f"{prec} bundle (engine --precision auto), detector input 416x416" in md
    if report["meter"]["name"] is None:
        assert "power_over_time.png" not in pngs and "no power meter" in md
        assert not any(w in md for w in ("mean power W", "J per frame")) and "n/a (no power meter)" in md
    assert "semantic=auto:" in capsys.readouterr().out
    for r in report["runs"]:  # read before, halfway (1.5 s in) and after each run; this VM: the CPU's MHz only
        assert set(r["device"]) == {"start", "under_load", "end", "notes"}
        assert r["device"]["start"]["cpu_model"] == report["host"]["cpu_model"]
    assert "**Device** (what the numbers ran at" in md and "semantic=always: CPU MHz start" in md
    assert "no cpufreq here" in md and "power mode" not in md  # this VM has neither: not printed as n/a


def test_the_report_names_power_mode_clocks_heat_and_their_notes():
    from vsdmot.edge.clocks import Clock, DeviceState, notes
    from vsdmot.edge.profile_cmd import device_record
    from vsdmot.edge.profile_report import _device

    start = DeviceState("ARMv8", "15W (1)", "schedutil", Clock(729.6, 1728.0), Clock(306.0, 1020.0), {"cpu-thermal": 48.0})
    load = DeviceState("ARMv8", "15W (1)", "schedutil", Clock(1420.0, 1728.0), Clock(1020.0, 1020.0), {"cpu-thermal": 83.5})
    dev = device_record({"start": start, "under_load": load, "end": load})
    assert dev["notes"] == notes(load) and len(dev["notes"]) == 3  # CPU at 82 %, hot, schedutil
    (line, *sub) = _device([{"label": "run", "device": dev}])[2:-1]
    assert line == ("- run: power mode 15W (1); governor schedutil; CPU MHz start / halfway / end 730 / 1420 / 1420 "
                    "(max 1728); GPU MHz 306 / 1020 / 1020 (max 1020); hottest zone cpu-thermal 48 C -> cpu-thermal 84 C.")
    assert sub[0].startswith("  - CPU at 1420 of 1728 MHz under load (82%)")


def _has_board_meter() -> bool:
    return any(Path(p).exists() for p in ("/sys/bus/i2c/drivers/ina3221", "/sys/bus/i2c/drivers/ina3221x"))


@pytest.mark.jetson
@pytest.mark.skipif(not _has_board_meter(), reason="needs a Jetson's INA3221 rails (/sys/bus/i2c/drivers/ina3221*)")
def test_profile_with_the_board_meter(bundle, tmp_path):
    rep = tmp_path / "report"
    assert main(["profile", "--demo", "--bundle", str(bundle), "--duration", "10", "--warmup", "2", "--idle", "3",
                 "--power-meter", "ina3221", "--report", str(rep)]) == 0
    report = json.loads((rep / "report.json").read_text())
    e = report["runs"][0]["energy"]
    assert report["meter"]["name"] == "ina3221" and report["meter"]["idle_w"] > 0
    assert e["mean_w"] > 0 and e["samples"] > 10 and "net_joules_per_frame" in e
    assert (rep / "power_over_time.png").is_file()


def test_profile_with_the_shipped_default_bundle(tmp_path):
    """What a user runs first: the demo clip and the default model, no --bundle."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE

    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"the shipped default bundle is not in this checkout ({DEFAULT_BUNDLE})")
    rep = tmp_path / "report"
    assert main(["profile", "--demo", "--threads", "1", "--duration", "2", "--warmup", "0.5", "--idle", "0",
                 "--report", str(rep)]) == 0
    report = json.loads((rep / "report.json").read_text())
    run = report["runs"][0]
    assert run["stats"]["frames"] > 0 and run["label"] == f"semantic={run['config']['semantics']['policy']}"
    if run["semantic_policy_effective"] != run["config"]["semantics"]["policy"]:
        assert "has no student encoder" in (rep / "report.md").read_text()


def test_the_report_names_the_precision_each_engine_was_built_at():
    """On TensorRT the report gives what each engine was built at (its cache key), not the
    --precision asked: TensorRT 11 without ModelOpt AutoCast builds fp32 where auto asked int8."""
    from types import SimpleNamespace

    from vsdmot.edge.profile_report import _engines

    trt = lambda name, prec: SimpleNamespace(path=f"/b/{name}.onnx", key=SimpleNamespace(precision=prec))  # noqa: E731
    pipeline = SimpleNamespace(backends=[trt("detector", "fp32"), trt("tracker", "int8"), SimpleNamespace(path="x")])
    built = PC.engine_precisions(pipeline)
    assert built == {"detector": "fp32", "tracker": "int8"}
    config = {"pipeline": {"precision": "auto"}}
    assert _engines({"engine_precision": built, "config": config}) == "TensorRT engines: detector fp32, tracker int8"
    assert _engines({"engine_precision": {}, "config": config}) == "engine --precision auto"


def test_profile_with_overlap_says_so(bundle, tmp_path):
    """The report names overlap (its stage times overlap in time: read end to end)."""
    rep = tmp_path / "report"
    assert main(["profile", "--demo", "--bundle", str(bundle), "--threads", "1", "--duration", "1", "--warmup", "0.3",
                 "--idle", "0", "--overlap", "--report", str(rep)]) == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["runs"][0]["config"]["pipeline"]["overlap"] is True and report["runs"][0]["stats"]["frames"] > 3
    md = (rep / "report.md").read_text()
    assert "detector input 416x416, overlap" in md and "read end to end" in md
