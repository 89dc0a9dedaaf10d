"""runtime/cpu.py: the one warning an INT8 bundle on onnxruntime's CPU provider gets."""

import logging
from pathlib import Path

from helpers import REPO
from vsdmot.runtime.logs import log_once


def int8_marked(tmp_path):
    """The shipped bundle with its detector's manifest entry saying int8 (what the warning reads), resealed."""
    import json
    import shutil

    from vsdmot.runtime.bundle import DIGEST_FIELD, MANIFEST, manifest_digest

    out = Path(shutil.copytree(REPO / "runtime" / "assets" / "default", tmp_path / "int8"))
    m = json.loads((out / MANIFEST).read_text())
    m["files"]["detector.onnx"]["precision"] = "int8"
    m.pop(DIGEST_FIELD)
    m[DIGEST_FIELD] = manifest_digest(m)
    (out / MANIFEST).write_text(json.dumps(m))
    return out


def test_int8_bundle_on_onnxruntime_cpu_warns_once(tmp_path, caplog):
    """The runtime says so when it opens INT8 networks on onnxruntime's CPU provider, once per process."""
    from vsdmot.runtime.bundle import load_bundle
    from vsdmot.runtime.config import RunConfig
    from vsdmot.runtime.pipeline import build_pipeline

    int8 = int8_marked(tmp_path)
    log_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            build_pipeline(load_bundle(REPO / "runtime" / "assets" / "default"), RunConfig(), 25.0).close()
            assert not [r for r in caplog.records if "slower than FP32" in r.getMessage()]  # FP32: silent
            for _ in range(2):
                build_pipeline(load_bundle(int8), RunConfig(), 25.0).close()
        assert sum("slower than FP32 on any CPU" in r.getMessage() for r in caplog.records) == 1
    finally:
        log_once.cache_clear()
