"""The gate's noise-floor study: null candidates built from the shipped bundle (resealed, loadable),
scored on train-side windows only, resumable line by line, summarised by the gate's own rules."""

from __future__ import annotations

import json

import pytest

from vsdmot.export import accuracy_gate as ag
from vsdmot.export import noise_floor as nf
from vsdmot.export.noise_floor import NoiseFloorConfig

W = ("S:1-200", "S:201-400", "S:401-600")


def recs_with(drops: dict[tuple[str, str, str], float], bundles=("null-a",), conds=("clean", "jpeg-s3")) -> dict:
    """Records: the reference at HOTA 0.5 everywhere; each bundle 0.5 - drop/100 (drop 0 unless given)."""
    out = {}
    for b in ("ref", *bundles):
        for w in W:
            for c in conds:
                h = 0.5 - (drops.get((b, w, c), 0.0) / 100 if b != "ref" else 0.0)
                out[(b, w, c)] = {"bundle": b, "window": w, "cond": c, "HOTA": h}
    return out


# -- summary: emulated gates judged by accuracy_gate.decide -----------------------------------------
@pytest.mark.parametrize("drops, rule, refused, largest", [
    # one clean tip of 1.6 on the third window (FP16 rounding did this on PETS 401-600)
    ({("null-a", W[2], "clean"): 1.6}, "per-case", 2, 1.6),  # both pairs holding W[2]
    ({("null-a", W[2], "clean"): 1.6}, "balanced", 0, 0.4),  # (0.8 + 0) / 2
    ({("null-a", W[2], "clean"): 1.6}, "pooled", 0, 0.8),
    ({("null-a", W[2], "clean"): 1.6}, "mean", 0, 0.4),
    # a clean loss of 2.4 on two windows: the pair of them is refused by every pooled rule
    ({("null-a", W[0], "clean"): 2.4, ("null-a", W[1], "clean"): 2.4}, "balanced", 1, 1.2),
    ({("null-a", W[0], "clean"): 2.4, ("null-a", W[1], "clean"): 2.4}, "pooled", 3, 2.4),
    ({("null-a", W[0], "clean"): 2.4, ("null-a", W[1], "clean"): 2.4}, "mean", 1, 1.2),
])
def test_rule_summary_counts_null_refusals(drops, rule, refused, largest):
    s = nf.summarize(recs_with(drops), "ref", gate_size=2)
    assert len(s["gates"]) == 3  # pairs of 3 windows
    assert s["rules"][rule] == {"null_gates": 3, "null_refused": refused, "null_largest": pytest.approx(largest)}


def test_summary_uses_the_gates_decide_and_threshold(monkeypatch):
    calls = []
    real = ag.decide
    monkeypatch.setattr(ag, "decide", lambda cases, cfg: calls.append(cfg) or real(cases, cfg))
    s = nf.summarize(recs_with({("null-a", W[0], "clean"): 1.6}), "ref", gate_size=2, threshold=0.1)
    assert len(calls) == 3 * len(ag.RULES) and {c.rule for c in calls} == set(ag.RULES)
    assert all(c.max_hota_drop == 0.1 for c in calls)
    assert s["rules"]["balanced"]["null_refused"] == 2  # 0.4 > 0.1 on the two pairs holding W[0]


def test_only_null_candidates_count_and_drops_are_per_case():
    recs = recs_with({("harm-x", W[0], "clean"): 9.0, ("null-a", W[1], "jpeg-s3"): -0.5}, ("null-a", "harm-x"))
    s = nf.summarize(recs, "ref", gate_size=3)
    assert [g["bundle"] for g in s["gates"]] == ["null-a", "harm-x"]  # one gate each: all 3 windows
    assert s["rules"]["per-case"]["null_refused"] == 0 and s["rules"]["per-case"]["null_gates"] == 1
    assert not s["gates"][1]["rules"]["per-case"]["passed"]  # the harm is refused, not counted as a null
    drop = {(c["candidate"], c["sequence"], c["condition"]): c["hota_drop"] for c in s["cases"]}
    assert drop[("harm-x", W[0], "clean")] == pytest.approx(9.0) and drop[("null-a", W[1], "jpeg-s3")] == -0.5
    md = nf.drops_markdown(s)
    assert "| harm-x | S:1-200 | 9.00 | 0.00 |" in md and "| null-a | S:201-400 | 0.00 | -0.50 |" in md
    assert "| **null refused (of 1)** | | 0 | 0 | 0 | 0 |" in nf.rules_markdown(s)


def test_gates_use_only_conditions_every_window_has():
    recs = recs_with({("null-a", W[0], "jpeg-s3"): 5.0})
    del recs[("null-a", W[1], "jpeg-s3")]  # not scored (a killed run)
    g = nf.summarize(recs, "ref", gate_size=2)["gates"]
    assert [x["conditions"] for x in g] == [["clean"], ["clean", "jpeg-s3"], ["clean"]]


def test_summary_needs_the_reference():
    with pytest.raises(ValueError, match="no records of the reference 'default'"):
        nf.summarize(recs_with({}), "default", gate_size=2)


# -- scoring: one line per case, resumed after a kill --------------------------------------------------
def fake_bundles(tmp_path):
    out = {}
    for tag in ("ref", "null-a"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "manifest.json").write_text(json.dumps({"tag": tag}))
        out[tag] = tmp_path / tag
    return out


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    cfg = NoiseFloorConfig(windows=("S:1-10", "S:11-20"), conditions=("clean", "jpeg-s3"), out_dir=str(tmp_path / "o"))
    bundles, calls = fake_bundles(tmp_path), []

    def dies_after_3(b, w, c):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append((b.name, w, c))
        return {"HOTA": 0.5, "IDF1": 0.6}

    with pytest.raises(KeyboardInterrupt):
        nf.score_all(cfg, bundles, dies_after_3, progress=False)
    out = tmp_path / "o" / "cases.jsonl"
    assert len(out.read_text().splitlines()) == 3
    calls2 = []
    nf.score_all(cfg, bundles, lambda b, w, c: calls2.append((b.name, w, c)) or {"HOTA": 0.4}, progress=False)
    assert len(calls2) == 8 - 3 and not set(calls2) & set(calls)  # only the missing cases
    recs = nf.load_records([out])
    assert len(recs) == 8 and recs[("ref", "S:1-10", "clean")]["IDF1"] == 0.6
    nf.score_all(cfg, bundles, lambda *a: pytest.fail("all done: nothing to score"), progress=False)
    monkeypatch.setattr(nf, "runtime_code_id", lambda: "other tracker code")  # new code: every case again
    calls3 = []
    nf.score_all(cfg, bundles, lambda b, w, c: calls3.append(1) or {"HOTA": 0.4}, progress=False)
    assert len(calls3) == 8


def test_run_study_scores_reference_and_candidates(tmp_path):
    (tmp_path / "data" / "S").mkdir(parents=True)
    cfg = NoiseFloorConfig(candidates=("null-fp16",), windows=("S:1-10", "S:11-20"), conditions=("clean",),
                           out_dir=str(tmp_path / "o"), data_root=str(tmp_path / "data"))
    seen = []

    def fake(b, w, c):
        seen.append((b, w, c))
        return {"HOTA": 0.5 - (0.02 if b.name == "null-fp16" and w == "S:1-10" else 0.0)}

    s = nf.run_study(cfg, fake, progress=False)
    assert {b.name for b, _, _ in seen} == {"default", "null-fp16"} and len(seen) == 4
    assert s["rules"]["per-case"] == {"null_gates": 1, "null_refused": 1, "null_largest": pytest.approx(2.0)}
    md, js = nf.write_summary(s, tmp_path / "o")
    assert "| null-fp16 | S:1-10 | 2.00 |" in md.read_text() and json.loads(js.read_text())["gate_size"] == 2
    png = (tmp_path / "o" / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000  # the picture of the same summary


# -- what the study refuses ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exception", [
    ({"windows": ("PETS09-S2L1:590-610",)}, "held-out evaluation frames"),
    ({"windows": ("PETS09-S2L1:601-795",)}, "held-out evaluation frames"),
    ({"windows": ("PETS09-S2L1",)}, "held-out evaluation frames"),  # the whole sequence holds 601-795
    ({"windows": ("TUD-Campus:1-20",)}, "held-out evaluation frames"),
    ({"windows": ("PETS09-S2L1-601-795",)}, "held-out evaluation frames"),  # the held-out copy
    ({"windows": ("PETS09-S2L1:1-x",)}, "NAME:A-B"),
    ({"windows": ()}, "at least one"),
    ({"conditions": ("clean", "fog")}, "gate condition"),
    ({"candidates": ("null-x",)}, "candidate"),
    ({"candidates": ("/no/such/bundle",)}, "bundle folder"),
    ({"gate_size": 0}, "gate_size"),
    ({"threads": 0}, "threads"),
])
def test_config_refuses(kw, exception):
    with pytest.raises(ValueError, match=exception):
        NoiseFloorConfig(**kw)


@pytest.mark.parametrize("windows", [("PETS09-S2L1:1-600",), ("PETS09-S2L1:401-600", "MOT17-02-FRCNN:1-50")])
def test_train_side_windows_pass(windows):
    assert NoiseFloorConfig(windows=windows, gate_size=1).windows == windows


def test_held_out_only_when_asked():
    assert NoiseFloorConfig(windows=("PETS09-S2L1:601-795", "TUD-Campus"), held_out=True).held_out


def test_cli_says_why_it_refuses(capsys):
    assert nf.main(["run", "--windows", "TUD-Campus"]) == 2
    assert "held-out evaluation frames" in capsys.readouterr().err
    assert nf.main(["run", "--conditions", "clean", "fog-s3", "--no-progress"]) == 2


def test_missing_reference_is_named(tmp_path):
    cfg = NoiseFloorConfig(reference=str(tmp_path / "nothing"), out_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="reference: expected a bundle"):
        nf.prepare_bundles(cfg, progress=False)


# -- real null bundles from the shipped default ---------------------------------------------------------
@pytest.mark.parametrize("spec, changed", [
    ("null-fp16", {"detector.onnx", "student.onnx", "tracker.onnx"}),
    ("null-n1", {"detector.onnx", "student.onnx", "tracker.onnx"}),
    ("harm-d05", {"detector.onnx"}),
])
def test_real_candidate_differs_from_the_reference_and_loads(tmp_path, spec, changed):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle

    c = nf.parse_candidate(spec, 5e-4)
    out = nf.build_candidate(c, DEFAULT_BUNDLE, tmp_path / spec)
    load_bundle(out)  # the manifest verifies: every file's sha256 and the seal
    ref, new = (json.loads((d / "manifest.json").read_text())["files"] for d in (DEFAULT_BUNDLE, out))
    assert {n for n in ref if new[n]["sha256"] != ref[n]["sha256"]} == changed
    for name in changed:
        ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(DEFAULT_BUNDLE / name)).graph.initializer}
        b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / name)).graph.initializer}
        moved = [k for k in a if a[k].dtype == np.float32 and a[k].size > 1 and not np.array_equal(a[k], b[k])]
        assert moved, name
        rel = np.concatenate([np.abs(b[k] / np.where(a[k] == 0, 1, a[k]) - 1).ravel() for k in moved])
        assert np.median(rel) < (0.1 if spec == "harm-d05" else 2e-3), (name, np.median(rel))
    again = nf.build_candidate(c, DEFAULT_BUNDLE, tmp_path / "again")  # seeded: a resumed run scores the same files
    assert json.loads((again / "manifest.json").read_text())["files"] == new
