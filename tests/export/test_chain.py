"""The whole chain on small real networks and real frames: fp32 reference, pruned INT8, the gate."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from vsdmot.calibration.feeds import DetectorFeeds, ImageList
from vsdmot.export import chain
from vsdmot.export.accuracy_gate import GateConfig
from vsdmot.export.chain import ExportConfig, Sources, export
from vsdmot.export.recover import RecoverConfig
from vsdmot.runtime.bundle import load_bundle
from vsdmot.runtime.errors import BundleError

QUALITY = {"features": ["brightness"], "mean": [0.5], "std": [0.2], "layers": [{"W": [[1.0]], "b": [0.0]}]}


@pytest.fixture
def sources(det_net, real_frames, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "quality.json").write_text(json.dumps(QUALITY))
    (tmp_path / "w" / "NOTICE").write_text("YOLOX-nano notice (test)\n")
    feeds = DetectorFeeds(ImageList(real_frames), 64)
    feeds.key = "pets-24"
    return Sources({"detector": det_net}, {"quality.json": tmp_path / "w" / "quality.json",
                                           "NOTICE": tmp_path / "w" / "NOTICE"},
                   {"checkpoints": {"detector": {"path": "test"}}}, {"detector": feeds})


def fake_eval(drop_points: float):
    """An EvalFn: the reference scores HOTA 0.60; every other bundle scores `drop_points` less."""
    def evaluate(bundle_dir, seq, cond):
        ref = "reference" in str(bundle_dir)
        h = 0.60 if ref else 0.60 - drop_points / 100
        return {"HOTA": h, "DetA": h, "AssA": h, "MOTA": h, "IDF1": h}
    return evaluate


def cfg_for(tmp_path, **kw):
    base = ExportConfig(work_dir=str(tmp_path / "work"), recover=RecoverConfig(steps=10, max_seconds=20),
                        gate=GateConfig(sequences=("S1",), conditions=("clean", "realesrgan-s3")), progress=False)
    return replace(base, **kw)


def test_fp32_reference_bundle(sources, tmp_path):
    out = export(cfg_for(tmp_path, precision="fp32"), tmp_path / "fp32", sources=sources)
    b = load_bundle(out)
    m = b.manifest
    assert m["precision"] == "fp32" and m["tracker"] == "bytetrack"
    assert m["files"]["detector.onnx"]["inputs"] == [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert {"onnx", "onnxruntime", "torch", "torch-pruning"} <= set(m["tools"])
    assert m["parity"]["detector"]["passed"] and m["accuracy_gate"]["passed"]
    assert b.params("quality.json") == QUALITY and b.has("NOTICE") and b.has("export_report.md")
    assert not b.has("export_report.png")  # the reference has no gate to draw


def test_the_parity_reference_is_named_by_the_network_not_the_work_dir(sources, tmp_path):
    ids = [load_bundle(export(cfg_for(tmp_path, precision="fp32", work_dir=str(tmp_path / w)), tmp_path / w / "b",
                              sources=sources)).manifest["parity"]["detector"]["reference"] for w in ("a", "b")]
    assert ids[0] == ids[1] and ids[0].startswith("torch:")


def test_an_unpruned_network_s_torch_parity_is_computed_once(sources, tmp_path, caplog):
    """The reference and the device bundle wrote fp32/detector.parity.json against different feeds,
    so neither was ever up to date (17.8 s a run under load)."""
    with caplog.at_level("INFO", logger="vsdmot.export.report"):
        export(cfg_for(tmp_path, precision="int8"), tmp_path / "int8", sources=sources, eval_fn=fake_eval(0.0))
    wrote = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parity: wrote detector.parity.json")]
    assert len(wrote) == 1


def test_keep_fp32_leaves_that_network_float(sources, tmp_path):
    cfg = cfg_for(tmp_path, precision="int8", keep_fp32=("detector",))
    m = load_bundle(export(cfg, tmp_path / "int8", sources=sources, eval_fn=fake_eval(0.0))).manifest
    assert m["precision"] == "fp32" and m["files"]["detector.onnx"]["precision"] == "fp32"  # its one network: FP32
    assert not list((tmp_path / "work" / "fp32").glob("detector.int8-*.onnx"))  # not even quantised
    with pytest.raises(ValueError, match="--keep-fp32"):
        cfg_for(tmp_path, keep_fp32=("decoder",))


def test_pruned_int8_passes_gate_and_is_idempotent(sources, tmp_path, caplog):
    cfg = cfg_for(tmp_path, precision="int8", prune=0.5)
    out = export(cfg, tmp_path / "int8", sources=sources, eval_fn=fake_eval(0.4))
    m = load_bundle(out).manifest
    assert m["files"]["detector.onnx"]["precision"] == "int8" and m["export"]["prune"] == 0.5
    assert m["accuracy_gate"] == {**m["accuracy_gate"], "passed": True, "forced": False}
    assert m["accuracy"]["gated_hota_drop"] == pytest.approx(0.4) and len(m["accuracy"]["cases"]) == 2
    acc = m["accuracy"]  # how the drop was gated is in the manifest, not only in the log
    assert acc["rule"] == m["accuracy_gate"]["rule"] == "balanced" and acc["worst_case_hota_drop"] == pytest.approx(0.4)
    assert acc["pooled_hota_drops"] == {"clean": pytest.approx(0.4), "degraded": pytest.approx(0.4)}
    assert m["calibration"]["method"] == "minmax" and m["calibration"]["frames"]["detector"] == 24
    assert m["files"]["detector.onnx"]["size"] < 0.5 * load_bundle(tmp_path / "work" / "reference").entry("detector.onnx")["size"]
    rep = json.loads((out / "export_report.json").read_text())
    assert set(rep["wall_seconds"]) == {"calibration feeds", "prune + recover + quantise", "accuracy gate"}
    assert "wall seconds" in (out / "export_report.md").read_text()
    assert "![export_report.png](export_report.png)" in (out / "export_report.md").read_text()
    png = (out / "export_report.png").read_bytes()  # the gate per case, a listed (hash-checked) report file
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and m["files"]["export_report.png"]["role"] == "report"
    steps = rep["steps"]
    assert {"prune", "recover", "to_onnx", "simplify", "parity", "quantize[minmax]", "qdq_check"} <= {
        s["step"] for s in steps if s["network"] == "detector"}
    caplog.set_level("INFO")
    export(cfg, tmp_path / "int8", sources=sources, eval_fn=fake_eval(0.4))
    assert "prune: detector.pruned.pt is up to date" in caplog.text and "quantize[minmax]" in caplog.text
    assert caplog.text.count("up to date") >= 8


def test_gate_refuses_and_leaves_nothing_loadable(sources, tmp_path):
    cfg = cfg_for(tmp_path, precision="int8", prune=0.0)
    with pytest.raises(BundleError, match="accuracy gate refused.*5.00 points.*--force"):
        export(cfg, tmp_path / "bad", sources=sources, eval_fn=fake_eval(5.0))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(BundleError, match="accuracy gate failed"):
        load_bundle(tmp_path / "bad.rejected")
    assert not list(tmp_path.glob(".bad.staging-*"))



def test_a_refused_int8_network_falls_back_and_the_report_names_it(sources, tmp_path):
    """The gate refuses the INT8 detector (5 points), passes it in FP32: the bundle, the report's
    `networks` and `refused_by_the_gate` all say the detector is FP32, and why."""
    def evaluate(bundle_dir, seq, cond):
        m = json.loads((bundle_dir / "manifest.json").read_text())
        h = 0.55 if m["files"]["detector.onnx"]["precision"] == "int8" else 0.60
        return {"HOTA": h, "DetA": h, "AssA": h, "MOTA": h, "IDF1": h}

    out = export(cfg_for(tmp_path, precision="int8"), tmp_path / "b", sources=sources, eval_fn=evaluate)
    assert load_bundle(out).manifest["files"]["detector.onnx"]["precision"] == "fp32"
    summary = json.loads((out / "export_report.json").read_text())["summary"]
    assert summary["networks"] == {"detector": "fp32"}
    (refused,) = summary["refused_by_the_gate"]
    assert refused.startswith("detector int8: refused: balanced HOTA drop 5.00 points")
    assert "**networks**: detector=fp32" in (out / "export_report.md").read_text()

@pytest.mark.slow
def test_gate_failure_keeps_the_previous_bundle(sources, tmp_path):
    good = export(cfg_for(tmp_path, precision="fp32"), tmp_path / "b", sources=sources)
    before = (good / "manifest.json").read_bytes()
    with pytest.raises(BundleError):
        export(cfg_for(tmp_path, precision="int8", prune=0.0), tmp_path / "b", sources=sources, eval_fn=fake_eval(3))
    assert (good / "manifest.json").read_bytes() == before and load_bundle(good)


def test_force_publishes_the_bundle_it_gated_and_records_it(sources, tmp_path):
    """--force publishes what was exported: the FP32 fallback ran anyway and published another
    bundle (with pruning, every network FP32, still labelled int8) after gating three that could not pass."""
    cfg = cfg_for(tmp_path, precision="int8", prune=0.0, gate=GateConfig(sequences=("S1",), conditions=("clean",), force=True))
    m = load_bundle(export(cfg, tmp_path / "forced", sources=sources, eval_fn=fake_eval(5.0))).manifest
    assert m["accuracy_gate"]["passed"] is False and m["accuracy_gate"]["forced"] is True
    assert m["precision"] == "int8" and m["files"]["detector.onnx"]["precision"] == "int8"  # no fallback


@pytest.mark.slow
def test_method_auto_picks_on_train_side_frames_and_gates_on_held_out(sources, tmp_path, monkeypatch):
    seen = []

    def by_method(bundle_dir, seq, cond):
        seen.append((bundle_dir.name, seq))
        drop = {"auto-minmax": 0.8, "auto-entropy": 0.3, "auto-percentile": 0.5}.get(bundle_dir.name, 0.3)
        h = 0.6 if bundle_dir.name == "reference" else 0.6 - drop / 100
        return {"HOTA": h, "MOTA": h, "IDF1": h}
    cfg = cfg_for(tmp_path, precision="int8", prune=0.0, method="auto", select=("S1:1-50",),
                  gate=GateConfig(sequences=("S1:51-99",), conditions=("clean",)))
    m = load_bundle(export(cfg, tmp_path / "auto", sources=sources, eval_fn=by_method)).manifest
    assert m["calibration"]["method"] == "entropy"
    assert m["calibration"]["method_selection"]["sequences"] == ["S1:1-50"]
    assert {seq for name, seq in seen if name.startswith("auto-")} == {"S1:1-50"}  # chosen on train side
    assert {seq for name, seq in seen if not name.startswith(("auto-", "reference"))} == {"S1:51-99"}  # gated held out
    assert [c["sequence"] for c in m["accuracy"]["cases"]] == ["S1:51-99"]


@pytest.mark.parametrize("select, gate, clash", [
    (("S1:1-50",), ("S1:51-99",), False),
    (("S1:1-60",), ("S1:51-99",), True),
    (("S1",), ("S1:51-99",), True),  # a whole sequence overlaps any window of it
    (("root/S1:1-60",), ("S1:51-99",), True),  # same sequence through another path
    (("S2",), ("S1",), False),
])
def test_method_selection_must_not_see_the_gate_frames(select, gate, clash):
    make = lambda: ExportConfig(select=select, gate=GateConfig(sequences=gate))  # noqa: E731
    if clash:
        with pytest.raises(ValueError, match="must not overlap"):
            make()
    else:
        assert make().select == select


def test_cli_exits_nonzero_when_the_gate_refuses(sources, tmp_path, monkeypatch, capsys):
    from vsdmot.export import accuracy_gate, cli

    monkeypatch.setattr(chain, "load_sources", lambda ckpt: sources)
    monkeypatch.setattr(accuracy_gate, "pipeline_eval", lambda cfg: fake_eval(2.0))
    argv = ["--int8", "--prune", "0", "--out", str(tmp_path / "cli"), "--work-dir", str(tmp_path / "work"),
            "--no-progress"]
    monkeypatch.setattr(chain, "GateConfig", GateConfig)
    rc = cli.main(argv)
    assert rc == 1 and "accuracy gate refused" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
    assert cli.main([*argv, "--force"]) == 0
    assert load_bundle(tmp_path / "cli").manifest["accuracy_gate"]["forced"] is True


@pytest.mark.slow
def test_failed_gate_falls_back_to_fp32_networks(sources, tmp_path):
    def int8_hurts(bundle_dir, seq, cond):
        m = json.loads((bundle_dir / "manifest.json").read_text())
        h = 0.6 - (0.05 if m["files"]["detector.onnx"].get("precision") == "int8" else 0.0)
        return {"HOTA": h, "MOTA": h, "IDF1": h}
    cfg = cfg_for(tmp_path, precision="int8", prune=0.0, gate=GateConfig(sequences=("S1",), conditions=("clean",)))
    m = load_bundle(export(cfg, tmp_path / "fb", sources=sources, eval_fn=int8_hurts)).manifest
    assert m["files"]["detector.onnx"]["precision"] == "fp32" and m["export"]["fp32_networks"] == ["detector"]
    assert m["accuracy_gate"]["passed"] and m["accuracy"]["gated_hota_drop"] == 0.0
    assert m["precision"] == "fp32"  # no network left INT8: the label says what the files are


def test_a_crash_in_the_gate_leaves_nothing_behind(sources, tmp_path):
    def broken(bundle_dir, seq, cond):
        raise RuntimeError("tracker crashed")
    with pytest.raises(RuntimeError, match="tracker crashed"):
        export(cfg_for(tmp_path, precision="int8", prune=0.0), tmp_path / "x", sources=sources, eval_fn=broken)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.staging-*"))


def test_gate_caches_tracks_per_frame_window(tmp_path, monkeypatch):
    """PETS09-S2L1:401-600 (method selection) and :601-795 (the gate) are different tracks; one cache
    file per sequence let the second window be scored on the first one's rows."""
    from vsdmot.evaluation import bench, metrics
    from vsdmot.export import accuracy_gate as ag

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": {"x.onnx": {"sha256": "0" * 64}}}))
    written = []
    monkeypatch.setattr(bench, "prepare_sequence", lambda *a, **k: tmp_path / "seq")
    monkeypatch.setattr(ag, "track_sequence", lambda b, s, w, res, t: written.append(res) or res.parent.mkdir(
        parents=True, exist_ok=True) or res.write_text(f"{w}\n"))
    monkeypatch.setattr(metrics, "evaluate", lambda seq_dir, res, frames: {"rows": res.read_text()})
    cfg = GateConfig()
    a = ag._track_and_score(bundle, "PETS09-S2L1:401-600", "clean", cfg, tmp_path / "cache", 1)
    b = ag._track_and_score(bundle, "PETS09-S2L1:601-795", "clean", cfg, tmp_path / "cache", 1)
    assert len(set(written)) == 2 and a["rows"] != b["rows"]


def test_feeds_id_names_unkeyed_feeds_by_content():
    """Recorded tracker feeds have no key: two recordings of the same count but other values (the
    tracker changed) must not share a quantize cache entry."""
    from vsdmot.export.chain import feeds_id

    a = [{"x": np.zeros((1, 4), np.float32)}, {"x": np.ones((1, 4), np.float32)}]
    b = [{"x": np.zeros((1, 4), np.float32)}, {"x": np.full((1, 4), 2, np.float32)}]
    assert feeds_id(a) == feeds_id([dict(f) for f in a]) and feeds_id(a) != feeds_id(b)


def test_input_size_reaches_every_bundle_of_the_export(sources, real_frames, tmp_path):
    """--input-size: the published INT8 bundle and the FP32 reference its gate compares with both
    take (H, W) = (64, 96), so the gate measures INT8's loss, not the input's."""
    feeds = DetectorFeeds(ImageList(real_frames), (64, 96))
    feeds.key = "pets-24-64x96"
    src = replace(sources, feeds={"detector": feeds})
    out = export(cfg_for(tmp_path, precision="int8", input_size=(64, 96)), tmp_path / "rect", sources=src,
                 eval_fn=fake_eval(0.0))
    want = [{"name": "images", "shape": [1, 3, 64, 96], "dtype": "float32"}]
    m = load_bundle(out).manifest
    assert m["files"]["detector.onnx"]["inputs"] == want and m["files"]["detector.onnx"]["precision"] == "int8"
    assert m["export"]["detector_input"] == "96x64"
    assert load_bundle(tmp_path / "work" / "reference").manifest["files"]["detector.onnx"]["inputs"] == want
    assert sources.nets["detector"].inputs["images"].shape == (1, 3, 64, 64)  # the caller's sources untouched


@pytest.mark.parametrize("size", [(64, 100), (32, 64), (64,)])
def test_input_size_must_tile_the_strides(size, tmp_path):
    with pytest.raises(ValueError, match="--input-size"):
        cfg_for(tmp_path, input_size=size)


def test_a_work_dir_in_use_is_refused_and_the_other_export_keeps_its_staging(sources, tmp_path):
    """Two exports sharing --work-dir would overwrite each other's FP32 reference mid-gate."""
    import fcntl

    cfg = cfg_for(tmp_path, precision="fp32")
    staging = chain.staging_dir(tmp_path / "b")
    staging.mkdir(parents=True)  # the running export's half-written bundle
    (tmp_path / "work").mkdir()
    with open(tmp_path / "work" / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242")
        held.flush()
        with pytest.raises(ValueError, match=r"in use by another vsdmot-export \(pid 4242\)"):
            export(cfg, tmp_path / "b", sources=sources)
        assert staging.is_dir()
    staging.rmdir()
    assert load_bundle(export(cfg, tmp_path / "b", sources=sources)).manifest["precision"] == "fp32"  # released


def test_a_bundle_calibrated_on_nothing_records_no_earlier_calibration_set(sources, tmp_path):
    """The work dir keeps calibset.json from the last export that built calibration feeds; an --fp16
    export (nothing calibrated) in the same work dir merged it into its manifest's calibration section,
    naming a set and sources it never used."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "calibset.json").write_text(json.dumps({"sources": ["an-earlier-run.mp4"], "frame_count": 512}))
    src = replace(sources, feeds={})
    m = load_bundle(export(cfg_for(tmp_path, precision="fp16"), tmp_path / "fp16", sources=src,
                           eval_fn=fake_eval(0.0))).manifest
    assert "an-earlier-run.mp4" not in json.dumps(m["calibration"]) and "frame_count" not in m["calibration"]


def test_networks_kept_fp32_get_no_calibration_feeds(sources, tmp_path, monkeypatch):
    """--keep-fp32 tracker: recording its feeds (the FP32 pipeline over 500 frames) was wasted work."""
    asked = []
    monkeypatch.setattr(chain, "calibration_feeds", lambda s, names, *a: asked.append(list(names)) or {})
    bare = replace(sources, feeds={})
    chain.network_feeds(bare, cfg_for(tmp_path, keep_fp32=("detector",)), tmp_path, tmp_path)
    chain.network_feeds(bare, cfg_for(tmp_path), tmp_path, tmp_path)
    chain.network_feeds(bare, cfg_for(tmp_path, keep_fp32=("detector",), prune=0.25), tmp_path, tmp_path)
    assert asked == [["detector"], ["detector"]]  # the kept-FP32 unpruned run asks for nothing


@pytest.mark.parametrize("kw, match", [({"calib_quality": "gates"}, "--calib-quality"),
                                       ({"int8_min_cosine": float("nan")}, "int8_min_cosine"),
                                       ({"prune": float("nan")}, "--prune"), ({"prune": 0.95}, "--prune"),
                                       ({"engine_cache": "/var/cache/vsdmot/engines"}, "--engine-cache: only")])
def test_export_config_refuses_what_would_fail_or_mislead_later(kw, match):
    """A --calib-quality typo behaved as 'gate'; NaN ratios passed every `<` check."""
    with pytest.raises(ValueError, match=match):
        ExportConfig(**kw)


def test_a_tracker_naming_no_default_is_bundled_as_the_hybrid():
    """A user's own tracker.pt (vsdmot-train tracker --ship) names none: it exported as e2e, 10 HOTA
    below the hybrid on held-out scenes, with nothing said."""
    from vsdmot.export.chain import default_tracker
    from vsdmot.export.sources import Sources

    def with_meta(meta):
        return Sources({}, provenance={"checkpoints": {"tracker": {"meta": meta}}})

    assert default_tracker(with_meta({})) == "hybrid"
    assert default_tracker(with_meta({"default_tracker": "e2e"})) == "e2e"
