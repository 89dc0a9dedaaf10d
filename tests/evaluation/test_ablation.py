"""vsdmot-bench ablation on a few real TUD-Campus frames with the shipped default bundle: the rows
give numbers and the policy's real counts, resume recomputes nothing, a missing student skips its
row, and memoisation gives exactly what the plain runtime pipeline gives."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vsdmot.evaluation import ablation as A
from vsdmot.evaluation import ablation_report as R
from vsdmot.evaluation import bench as B
from vsdmot.evaluation.bench_cli import main as bench_main

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not (A.DEFAULT_BUNDLE / "manifest.json").is_file(), reason="no shipped default bundle")

ROWS = ("e2e-auto", "e2e-never", "e2e-always", "e2e-static-w", "hybrid-auto", "bytetrack", "peer")
FRAMES = (1, 5)


def config(seq: Path, out: Path, rows=ROWS, **kw) -> A.AblationConfig:
    return A.AblationConfig((seq,), (B.Condition(),), A.select_rows(A.default_rows(), rows), out, out / "cache",
                            frames=kw.pop("frames", FRAMES), progress=False, **kw)


@pytest.fixture(scope="module")
def first_run(tud_dir, yolox_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    return out, A.run_ablation(config(tud_dir, out))


def by_row(data: dict) -> dict[str, dict]:
    return {r["row"]: r for r in data["results"]}


def test_rows_give_numbers_and_policy_counts(first_run):
    _, data = first_run
    got = by_row(data)
    assert sorted(got) == sorted(ROWS)
    for name, r in got.items():
        assert r["frames"] == 5 and r["condition"] == "clean" and not r["degraded"]
        assert all(0.0 <= r["metrics"][k] <= 1.0 for k in A.METRICS), name
        assert Path(r["results_file"]).is_file()
    assert got["e2e-never"]["semantics"]["skipped_share"] == 1.0
    assert got["bytetrack"]["semantics"]["skipped_share"] == 1.0  # the runtime turns ByteTrack's policy to never
    for name in ("e2e-always", "e2e-static-w"):
        assert got[name]["semantics"]["skipped_share"] == 0.0 and got[name]["semantics"]["fresh"] == 5
    assert got["e2e-static-w"]["w_mean"] == pytest.approx(data["meta"]["static_w"])
    assert got["peer"]["semantics"] == {}
    assert data["meta"]["memo_calls"]["detector"] == 2 * 5  # bundle detector and peer detector, once per frame
    assert data["meta"]["memo_calls"]["student"] == 5  # shared by always and static-w (and auto when on)


def test_resume_recomputes_nothing(first_run, tud_dir):
    out, data = first_run
    again = A.run_ablation(config(tud_dir, out))
    assert again["meta"]["recomputed_pairs"] == 0 and again["meta"]["memo_calls"] == {}
    assert again["results"] == data["results"]
    changed = A.run_ablation(config(tud_dir, out, rows=("e2e-static-w", "e2e-never"), static_w=0.3))
    assert changed["meta"]["recomputed_pairs"] == 1 and changed["meta"]["memo_calls"] == {}  # stored stages
    assert by_row(changed)["e2e-static-w"]["w_mean"] == pytest.approx(0.3)


def test_tracker_code_change_recomputes_rows(first_run, tud_dir, tmp_path, monkeypatch):
    out, data = first_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)  # stored results and stages, keyed by today's code
    monkeypatch.setattr(A, "code_identity", lambda: "another tracker")  # e.g. a HybridTracker change
    again = A.run_ablation(config(tud_dir, tmp_path, rows=("hybrid-auto",)))
    assert again["meta"]["recomputed_pairs"] == 1  # the stored row result is stale: tracked again
    assert again["meta"]["memo_calls"] == {}  # on the stored detector / q / student values


def test_stage_code_change_recomputes_the_stored_stages(first_run, tud_dir, tmp_path, monkeypatch):
    """The stored detector / q / student values were keyed by their network files only: after a
    change to the runtime's decode, NMS or quality features, recomputed rows read the old values."""
    out, _ = first_run
    shutil.copytree(out / "memo", tmp_path / "memo")
    monkeypatch.setattr(A, "stage_identity", lambda: "0badc0de")  # e.g. a runtime/yolox.py decode change
    again = A.run_ablation(config(tud_dir, tmp_path, rows=("hybrid-auto",)))
    assert again["meta"]["memo_calls"]["detector"] == 5  # computed again, once per frame


def test_stored_stages_give_the_same_results(first_run, tud_dir, tmp_path):
    out, data = first_run
    shutil.copytree(out / "memo", tmp_path / "memo")  # detector, q and student values, no row results
    again = A.run_ablation(config(tud_dir, tmp_path))
    assert again["meta"]["recomputed_pairs"] == 1 and again["meta"]["memo_calls"] == {}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("results_file", "pair_seconds")} for r in rs]  # noqa: E731
    assert strip(again["results"]) == strip(data["results"])


def test_missing_student_skips_its_row(first_run, tud_dir, caplog):
    out, _ = first_run
    gone = A.Row("e2e-align-only", "e2e", "auto", str(out / "nowhere" / "student_alignment.pt"))
    cfg = config(tud_dir, out, rows=("e2e-never",))
    with caplog.at_level(logging.WARNING):
        data = A.run_ablation(A.AblationConfig(cfg.seqs, cfg.conditions, (*cfg.rows, gone), out, cfg.cache,
                                               frames=FRAMES, progress=False))
    why = data["meta"]["skipped_rows"]["e2e-align-only"]
    assert "student_alignment.pt not found" in why and "row skipped" in why
    assert "student_alignment.pt not found" in caplog.text
    assert "e2e-align-only" not in by_row(data) and data["meta"]["recomputed_pairs"] == 0
    assert f"| e2e-align-only | {why} |" in R.summary_table(data)


def dark_tail_sequence(src: Path, out: Path, n: int = 8) -> Path:
    """The first n TUD frames, the second half darkened (q falls, auto switches semantics on)."""
    from vsdmot.runtime.mot import SeqInfo, read_rows, read_seqinfo, write_seqinfo
    from vsdmot.runtime.sources import open_sequence

    (out / "img1").mkdir(parents=True)
    for f in open_sequence(src).frames():
        if f.index > n:
            break
        img = f.image if f.index <= n // 2 else (f.image * 0.2).astype(np.uint8)
        cv2.imwrite(str(out / "img1" / f"{f.index:06d}.png"), img)
    (out / "gt").mkdir()
    lines = [ln for ln in (src / "gt" / "gt.txt").read_text().splitlines() if int(ln.split(",")[0]) <= n]
    (out / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    info = read_seqinfo(src)
    write_seqinfo(out / "seqinfo.ini", SeqInfo("TUD-dark", info.frame_rate, n, info.width, info.height, "img1", ".png"))
    assert len(read_rows(out / "gt" / "gt.txt"))
    return out


def plain_run(seq: Path, tracker: str, policy: str) -> tuple[str, dict]:
    """The runtime pipeline as vsdmot-edge builds it, no memo: MOT lines and semantic counts."""
    from vsdmot.runtime.bundle import load_bundle
    from vsdmot.runtime.config import PipelineConfig, RunConfig, SemanticsConfig, TrackerConfig
    from vsdmot.runtime.mot import format_result_rows, read_seqinfo
    from vsdmot.runtime.pipeline import build_pipeline, step
    from vsdmot.runtime.sources import open_sequence

    cfg = RunConfig(pipeline=PipelineConfig(backend="onnxruntime", threads=1),
                    semantics=SemanticsConfig(policy=policy), tracker=TrackerConfig(kind=tracker))
    p = build_pipeline(load_bundle(A.DEFAULT_BUNDLE), cfg, read_seqinfo(seq).frame_rate)
    lines = []
    for f in open_sequence(seq).frames():
        r = step(f, p)
        lines.append(format_result_rows(f.index, r.tracks.track_id, r.tracks.xywh, r.tracks.score))
    p.close()
    return "".join(lines), p.semantics.counts.as_dict()


def test_memoised_rows_equal_the_plain_pipeline(tud_dir, tmp_path):
    seq = dark_tail_sequence(tud_dir, tmp_path / "TUD-dark")
    rows = ("e2e-auto", "hybrid-always")
    data = A.run_ablation(config(seq, tmp_path / "out", rows=rows, frames=None))
    got = by_row(data)
    assert got["e2e-auto"]["semantics"]["skipped"] < 8  # the dark half switched semantics on
    for name, (tracker, policy) in zip(rows, (("e2e", "auto"), ("hybrid", "always"))):
        text, counts = plain_run(seq, tracker, policy)
        assert Path(got[name]["results_file"]).read_text() == text, name
        assert {k: got[name]["semantics"][k] for k in counts} == counts, name


def test_cli_writes_json_markdown_plot(tud_dir, yolox_onnx, tmp_path, capsys):
    out = tmp_path / "cli"
    code = bench_main(["ablation", "--seq", str(tud_dir), "--frames", "1:3", "--preset", "--schedule",
                       "--rows", "bytetrack", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 0
    assert "| bytetrack |" in capsys.readouterr().out
    data = json.loads((out / "ablation.json").read_text())
    assert data["meta"]["command"].startswith("vsdmot-bench ablation") and len(data["results"]) == 1
    assert (out / "ablation.md").read_text().startswith("### Means") and (out / "ablation.png").stat().st_size > 0


def test_rows_keep_the_bundle_rows():
    extra = (A.bundle_row("int8=runs/b"),)
    assert [r.name for r in A.select_rows(A.default_rows(), ["bytetrack"], extra)] == ["bytetrack", "int8"]
    assert [r.name for r in A.select_rows(A.default_rows(), None, extra)][-1] == "int8"
    with pytest.raises(ValueError, match="unique"):
        A.select_rows(A.default_rows(), None, (A.bundle_row("peer=runs/b"),))


@pytest.mark.parametrize("spec, error", [("x", "expected NAME=DIR"), ("=dir", "expected NAME=DIR")])
def test_bundle_row_spec(spec, error):
    with pytest.raises(ValueError, match=error):
        A.bundle_row(spec)
    assert A.bundle_row("int8=runs/b").bundle == "runs/b"


def test_held_out_copy_cuts_and_renumbers(tud_dir, tmp_path):
    from vsdmot.runtime.mot import read_rows, read_seqinfo

    out = A.held_out_copy(tud_dir, tmp_path / "TUD-3-6", 3, 6)
    info, gt, src = read_seqinfo(out), read_rows(out / "gt" / "gt.txt"), read_rows(tud_dir / "gt" / "gt.txt")
    assert (info.name, info.length, len(list((out / "img1").glob("*.png")))) == ("TUD-Campus-3-6", 4, 4)
    assert (gt.frame.min(), gt.frame.max()) == (1, 4) and len(gt) == int(((src.frame >= 3) & (src.frame <= 6)).sum())
    assert A.held_out_copy(tud_dir, out, 3, 6) == out  # written once


def test_cli_refuses_a_severity_outside_1_to_5(tud_dir, tmp_path, capsys):
    """Refused before anything is degraded or tracked, as vsdmot-bench refuses it."""
    assert bench_main(["ablation", "--seq", str(tud_dir), "--severity", "7", "--out", str(tmp_path / "a")]) == 2
    assert "--severity 1-5" in capsys.readouterr().err and not (tmp_path / "a").exists()
