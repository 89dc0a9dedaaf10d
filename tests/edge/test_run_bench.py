"""run_bench: argument parsing, command lines and the summary (ratios, sizes); no timing is asserted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vsdmot.edge import run_bench


def fake_bundle(tmp: Path, name: str, sizes: list[int]) -> Path:
    d = tmp / name
    d.mkdir()
    files = {f"f{i}.onnx": {"size": s} for i, s in enumerate(sizes)}
    files["detector.onnx"] = {"size": 0, "inputs": [{"name": "images", "shape": [1, 3, 320, 416]}]}
    files["export_report.png"] = {"size": 65_000, "role": "report"}  # not counted: the runtime never loads it
    (d / "manifest.json").write_text(json.dumps({"files": files, "precision": name[:4]}))
    return d


def args_for(bundles, ref=None, variants=("peer",)) -> argparse.Namespace:
    return argparse.Namespace(source=Path("clip.mp4"), bundle=None, rounds=1, threads=1, variants=list(variants),
                              bundles=bundles, ref=ref, bundle_semantic="auto", peer_onnx=Path("peer.onnx"))


def rec(fps: float) -> dict:
    return {"fps": fps, "wall_fps": fps / 2, "peak_rss_mb": 100.0, "frames": 10}


def test_summary_gives_fps_and_size_ratios_against_the_reference_bundle_and_the_peer(tmp_path):
    big, small = fake_bundle(tmp_path, "fp32", [3000, 1000]), fake_bundle(tmp_path, "int8-p25", [900, 100])
    a = args_for([("fp32", big), ("int8-p25", small)])
    out = run_bench.summarise({"peer": [rec(20.0)], "bundle:fp32": [rec(10.0)], "bundle:int8-p25": [rec(15.0)]}, a)
    b = out["bundles"]
    assert b["int8-p25"]["fps_vs_fp32"] == 1.5 and b["fp32"]["fps_vs_fp32"] == 1.0
    assert b["int8-p25"]["fps_vs_peer"] == 0.75
    assert b["int8-p25"]["precision"] == "int8" and b["fp32"]["detector_input"] == "416x320"  # W x H
    m = len((big / "manifest.json").read_bytes())
    assert b["fp32"]["bytes"] == 4000 + m
    assert b["int8-p25"]["size_vs_fp32"] == round((1000 + len((small / "manifest.json").read_bytes())) / (4000 + m), 3)


def test_summary_names_what_the_built_in_variants_ran(tmp_path):
    """The summary said precision 'fp32' and detector input 416 for the vsdmot-* variants whatever
    --bundle they ran (an INT8 416x320 bundle was reported as FP32 at 416)."""
    a = args_for([], variants=("vsdmot-never",))
    a.bundle = fake_bundle(tmp_path, "int8", [10])
    out = run_bench.summarise({"vsdmot-never": [rec(10.0)]}, a)
    assert (out["precision"], out["detector_input"]) == ("int8", "416x320")
    a.bundle = None  # the shipped default bundle
    out = run_bench.summarise({"vsdmot-never": [rec(10.0)]}, a)
    assert (out["precision"], out["detector_input"]) == ("fp32", "416x416")


@pytest.mark.parametrize("argv, error", [
    (["--bundles", "fp32"], "NAME=DIR"),
    (["--bundles", "x=/nonexistent"], "manifest.json"),
])
def test_bad_bundles_argument_is_refused(argv, error, capsys):
    with pytest.raises(SystemExit):
        run_bench.main(["--peer-onnx", "p.onnx", *argv])
    assert error in capsys.readouterr().err


def test_unknown_ref_is_refused(tmp_path, capsys):
    d = fake_bundle(tmp_path, "a", [1])
    with pytest.raises(SystemExit):
        run_bench.main(["--peer-onnx", "p.onnx", "--bundles", f"a={d}", "--ref", "b"])
    assert "--ref" in capsys.readouterr().err


def test_the_peer_onnx_is_asked_for_only_by_the_peer_variant(tmp_path, capsys, monkeypatch):
    """Comparing two bundles needs no YOLOX-nano file (a device has no ../shared)."""
    with pytest.raises(SystemExit):
        run_bench.main(["--variants", "peer"])
    assert "the peer variant needs the YOLOX-nano ONNX" in capsys.readouterr().err
    d = fake_bundle(tmp_path, "a", [1])
    monkeypatch.setattr(run_bench, "bench", lambda args: {"variants": args.variants})
    assert run_bench.main(["--variants", "--bundles", f"a={d}"]) == 0


def test_bundle_variant_runs_the_edge_cli_on_its_bundle(tmp_path):
    d = fake_bundle(tmp_path, "int8", [1])
    cmd = run_bench._command("bundle:int8", args_for([("int8", d)]), tmp_path)
    assert cmd[cmd.index("--bundle") + 1] == str(d) and cmd[cmd.index("--semantic") + 1] == "auto"
    builtin = run_bench._command("vsdmot-never", args_for([("int8", d)]), tmp_path)
    assert "--bundle" not in builtin and builtin[builtin.index("--semantic") + 1] == "never"
