"""Student encoder: normalised output, ONNX export (opset 17, static) matching torch, prunes with DepGraph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vsdmot.models.student import StudentConfig, StudentEncoder, export_onnx  # noqa: E402


def test_output_is_l2_normalised_and_small():
    m = StudentEncoder().eval()
    with torch.no_grad():
        s = m(torch.rand(2, 3, 128, 128) * 255)
    assert s.shape == (2, 128)
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(2))
    assert 3e5 <= sum(p.numel() for p in m.parameters()) <= 1e6


def test_onnx_export_static_opset17_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    m = StudentEncoder(StudentConfig(input_size=96, dim=64)).eval()
    path = export_onnx(m, tmp_path / "student.onnx")
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"image": [1, 3, 96, 96], "semantic": [1, 64]}
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 96, 96)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_prunes_with_torch_pruning_depgraph():
    tp = pytest.importorskip("torch_pruning")
    m = StudentEncoder().eval()
    x = torch.rand(1, 3, 128, 128) * 255
    pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[m.head])
    pruner.step()
    with torch.no_grad():
        assert m(x).shape == (1, 128)
    assert sum(p.numel() for p in m.parameters()) < 0.45 * sum(p.numel() for p in StudentEncoder().parameters())


def test_bad_config_raises():
    with pytest.raises(ValueError, match="equal length"):
        StudentEncoder(StudentConfig(widths=(8, 16), blocks=(1,)))


def test_fp16_checkpoint_round_trips_through_load_student(tmp_path):
    from vsdmot.models.checkpoint import save_checkpoint
    from vsdmot.models.student import load_student, save_fp16

    torch.manual_seed(0)
    m = StudentEncoder().eval()
    src = save_checkpoint(tmp_path / "student.pt", m, m.cfg, {"seed": 0}, None, 165, {"stage": "student"},
                          np_rng=np.random.default_rng(0))  # a last.pt carries the data stream's state
    dest = save_fp16(src, tmp_path / "ablation" / "student_alignment.pt")
    assert torch.load(dest, weights_only=True)["rng_numpy"] is None  # shipped files carry no training state
    assert dest.stat().st_size <= 2_000_000
    loaded, meta = load_student(dest)
    assert meta["dtype"] == "float16" and next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", ["student_alignment.pt", "student_relational.pt"])
def test_shipped_ablation_students_load(name):
    from vsdmot.models.student import DEFAULT_WEIGHTS, load_student

    path = DEFAULT_WEIGHTS.parent / "ablation" / name
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    m, meta = load_student(path)
    assert path.stat().st_size <= 2_100_000 and meta["stage"] == "student"
    with torch.no_grad():
        assert m(torch.rand(1, 3, 128, 128) * 255).shape == (1, 128)
