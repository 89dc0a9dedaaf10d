import logging
from pathlib import Path

import pytest

from helpers import REPO
from vsdmot.runtime import cpu

EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
ICELAKE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni\n"
ORIN = "processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics asimddp lrcpc\n"
OLD_ARM = "processor\t: 0\nFeatures\t: fp asimd aes crc32\n"


@pytest.mark.parametrize("text, has", [(EPYC_AVX2, False), (ICELAKE, True), (ORIN, True), (OLD_ARM, False),
                                       ("", None), ("model name : x\n", None)])
def test_has_int8_dot(text, has):
    assert cpu.has_int8_dot(text) is has


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


def test_int8_bundle_on_a_cpu_without_dot_products_warns_once(tmp_path, monkeypatch, caplog):
    """The runtime says so when it opens INT8 networks on onnxruntime here, once per process."""
    from vsdmot.runtime.bundle import load_bundle
    from vsdmot.runtime.config import RunConfig
    from vsdmot.runtime.pipeline import build_pipeline

    int8 = int8_marked(tmp_path)
    monkeypatch.setattr(cpu, "has_int8_dot", lambda cpuinfo=None: False)
    cpu.warn_int8_on_cpu.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            build_pipeline(load_bundle(REPO / "runtime" / "assets" / "default"), RunConfig(), 25.0).close()
            assert not [r for r in caplog.records if "int8 dot-product" in r.getMessage()]  # FP32: silent
            for _ in range(2):
                build_pipeline(load_bundle(int8), RunConfig(), 25.0).close()
        assert sum("no int8 dot-product" in r.getMessage() for r in caplog.records) == 1
    finally:
        cpu.warn_int8_on_cpu.cache_clear()
