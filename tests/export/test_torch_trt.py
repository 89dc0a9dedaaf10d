"""`--target torch-tensorrt` up to the device boundary: what Torch-TensorRT is asked to compile,
where the compiled programs are cached and when they are reused. Torch-TensorRT, TensorRT and the
GPU are stand-ins here (none installs on this machine); the real compile runs only on a device."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import replace

import pytest
import torch

from vsdmot.export import torch_trt
from vsdmot.export.chain import ExportConfig, with_programs
from vsdmot.runtime.bundle import DEFAULT_BUNDLE, file_sha256, load_bundle


@pytest.fixture
def stand_ins(monkeypatch):
    """`torch_tensorrt` (records compile and save), `tensorrt` and a GPU name; `.cuda()` is a no-op."""
    calls = []

    def compile(module, ir, inputs, enabled_precisions):
        calls.append({"module": module, "ir": ir, "inputs": inputs, "precisions": enabled_precisions})
        return module

    def save(module, path, inputs):
        calls[-1]["saved"] = path
        with open(path, "wb") as f:
            f.write(b"exported program")

    monkeypatch.setitem(sys.modules, "torch_tensorrt",
                        types.SimpleNamespace(__version__="2.5.0", compile=compile, save=save))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    orin = types.SimpleNamespace(name="Orin", major=8, minor=7, multi_processor_count=8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: orin)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    return calls


@pytest.mark.parametrize("bundle,program", [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "fp16")])
def test_program_precision(bundle, program):
    """Torch-TensorRT's INT8 needs a ModelOpt-quantised module: an INT8 bundle's programs are FP16."""
    assert torch_trt.program_precision(bundle) == program
    weak = types.SimpleNamespace(__version__="10.3.0", BuilderFlag=types.SimpleNamespace(FP16=0))
    typed = types.SimpleNamespace(__version__="11.0.0", BuilderFlag=types.SimpleNamespace())  # TensorRT 11
    assert torch_trt.program_precision(bundle, weak) == program
    assert torch_trt.program_precision(bundle, typed) == "fp32"  # enabled_precisions no longer gives FP16


@pytest.mark.parametrize("precision,dtypes", [("fp32", {torch.float32}), ("fp16", {torch.float32, torch.float16})])
def test_compile_program_asks_for_the_onnx_inputs_in_order(trk_net, stand_ins, tmp_path, precision, dtypes):
    """The compiled program takes the ONNX file's inputs in its order (the TorchNet's forward order)."""
    torch_trt.compile_program(trk_net, precision, tmp_path / "p.ep")
    (call,) = stand_ins
    assert call["ir"] == "dynamo" and call["precisions"] == dtypes
    assert call["module"] is not trk_net.module  # a copy goes to the GPU; the caller's module stays where it was
    assert all(torch.equal(a, b) for a, b in zip(call["module"].state_dict().values(), trk_net.module.state_dict().values()))
    assert [tuple(t.shape) for t in call["inputs"]] == [tuple(t.shape) for t in trk_net.inputs.values()]
    assert call["saved"] == str(tmp_path / "p.ep") and (tmp_path / "p.ep").read_bytes() == b"exported program"


def test_programs_are_cached_per_file_device_and_precision(stand_ins, tmp_path, caplog):
    """One program per network under the engine cache, keyed by the bundle file's sha256, both
    versions, the GPU and the precision; reused when intact, compiled again when altered."""
    bundle = load_bundle(DEFAULT_BUNDLE)  # the shipped FP32 bundle, read only
    nets = {n: types.SimpleNamespace(module=torch.nn.Identity(), inputs={}) for n in ("detector", "student", "tracker")}
    first = torch_trt.compile_programs(DEFAULT_BUNDLE, nets, tmp_path)
    assert len(stand_ins) == 3 and sorted(first) == sorted(nets)
    for name, path in first.items():
        assert path.parent.parent == tmp_path / "torch-tensorrt" and path.parent.name.startswith(f"{name}-fp32-")
        stamp = (path.parent / "stamp.json").read_text()
        assert file_sha256(bundle.file(f"{name}.onnx")) in stamp and "torch_tensorrt 2.5.0, tensorrt 10.3.0" in stamp
        assert '"gpu": "Orin (sm_87, 8 SMs, CUDA 12.6)"' in stamp and file_sha256(path) in stamp
    assert torch_trt.compile_programs(DEFAULT_BUNDLE, nets, tmp_path) == first and len(stand_ins) == 3  # reused
    first["student"].write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger=torch_trt.log.name):
        torch_trt.compile_programs(DEFAULT_BUNDLE, nets, tmp_path)
    assert len(stand_ins) == 4 and stand_ins[-1]["saved"] == str(first["student"].parent / ".tmp-program.ep")
    assert any("sha256 does not match" in r.getMessage() for r in caplog.records)


def test_a_failed_compile_leaves_no_program(stand_ins, tmp_path):
    """A compile that dies part-way leaves no program or stamp for the next run to trust."""
    def fail(module, ir, inputs, enabled_precisions):
        raise RuntimeError("Torch-TensorRT: unsupported operator")

    sys.modules["torch_tensorrt"].compile = fail
    nets = {"detector": types.SimpleNamespace(module=torch.nn.Identity(), inputs={})}
    with pytest.raises(RuntimeError, match="unsupported"):
        torch_trt.compile_programs(DEFAULT_BUNDLE, nets, tmp_path)
    assert not list((tmp_path / "torch-tensorrt").glob("*/program.ep")) and not list(tmp_path.rglob("stamp.json"))


@pytest.mark.parametrize("target,called", [("torch-tensorrt", True), ("onnx", False), ("tensorrt", False)])
def test_the_chain_compiles_the_networks_the_bundle_came_from(tiny_export, det_net, monkeypatch, target, called):
    """After publishing, and with the torch networks the bundle's ONNX files were exported from."""
    seen = []
    monkeypatch.setattr(torch_trt, "compile_programs", lambda out, nets, cache=None: seen.append((out, nets)) or {})
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))  # no legacy step
    out, sources = tiny_export(target)
    assert bool(seen) is called
    if called:
        ((published, nets),) = seen
        assert published == out and load_bundle(published).precision == "int8"  # published first
        assert nets["detector"] is det_net  # not pruned here: the module itself


def test_with_programs_passes_the_bundle_through(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_trt, "compile_programs", lambda *a: pytest.fail("compiled for --target onnx"))
    assert with_programs(tmp_path, replace(ExportConfig(), target="onnx"), {}) == tmp_path


@pytest.mark.gpu
def test_a_real_compile_matches_the_torch_module(det_net, tmp_path):
    """On a device with Torch-TensorRT and CUDA: the saved program loads and agrees with the module."""
    try:
        import torch_tensorrt  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"needs torch-tensorrt with TensorRT on a CUDA device: {e}")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch_trt.compile_program(det_net, "fp32", tmp_path / "det.ep")
    program = torch.export.load(str(tmp_path / "det.ep")).module()
    x = torch.rand(1, 3, 64, 64, device="cuda") * 255
    with torch.no_grad():
        want, got = det_net.module.cuda()(x), program(x)
    for w, g in zip(want, got):
        assert torch.nn.functional.cosine_similarity(w.flatten(), g.flatten(), dim=0) > 0.999
