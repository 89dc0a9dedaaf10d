"""The accuracy gate's caches: tracks and verdicts are keyed by the runtime's per-frame code, so a
tracker change (e.g. HybridTracker's update) is never scored against tracks the old code wrote."""

from __future__ import annotations

import json

from vsdmot.evaluation import bench, metrics
from vsdmot.export import accuracy_gate as ag
from vsdmot.export.accuracy_gate import GateConfig
from vsdmot.runtime import code_identity


def test_track_cache_is_keyed_by_the_runtime_code(tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": {"x.onnx": {"sha256": "0" * 64}}}))
    written = []

    def track(bundle_dir, seq_dir, window, res, threads):
        written.append(res)
        res.parent.mkdir(parents=True, exist_ok=True)
        res.write_text("rows\n")

    monkeypatch.setattr(bench, "prepare_sequence", lambda *a, **k: tmp_path / "seq")
    monkeypatch.setattr(ag, "track_sequence", track)
    monkeypatch.setattr(metrics, "evaluate", lambda seq_dir, res, frames: {})
    args = (bundle, "TUD-Campus", "clean", GateConfig(), tmp_path / "cache", 1)
    ag._track_and_score(*args)
    ag._track_and_score(*args)
    assert len(written) == 1  # same bundle files, same code: the cached tracks
    monkeypatch.setattr(ag, "runtime_code_id", lambda: "another tracker")
    ag._track_and_score(*args)
    assert len(written) == 2 and written[1] != written[0]


def test_code_identity_follows_the_runtime_source():
    a = code_identity()
    assert len(a) == 16 and a == code_identity()  # stable between calls
