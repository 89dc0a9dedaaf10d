"""Teachers: CLIP ModifiedResNet loads from OpenAI (TorchScript) and open_clip (state_dict) layouts;
the default EfficientNet-Lite0 teacher loads its packaged ImageNet weights offline."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vsdmot.models.clip_rn50 import ModifiedResNet, arch_from_state_dict, load_clip_visual  # noqa: E402
from vsdmot.models.teacher import ClipRN50Teacher, make_teacher  # noqa: E402

TINY = dict(layers=(1, 2, 1, 1), output_dim=24, heads=4, input_resolution=64, width=8)  # RN50's shape, tiny


class _Clip(torch.nn.Module):
    """Stands in for a whole CLIP model: the image tower under `visual`, a text-side parameter."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual
        self.token_embedding = torch.nn.Embedding(10, 4)

    def forward(self, x):
        return self.visual(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ModifiedResNet(**TINY).eval()


def _save(layout: str, model, path):
    clip = _Clip(model).eval()
    if layout == "openai":
        torch.jit.trace(clip, torch.randn(1, 3, 64, 64)).save(str(path))
    elif layout == "open_clip":
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)
    else:  # plain fp16 state_dict, as OpenAI's weights are stored
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("layout, atol", [("openai", 1e-5), ("open_clip", 1e-5), ("fp16_state_dict", 5e-2)])
def test_clip_loader_both_layouts(tmp_path, tiny, layout, atol):
    path = _save(layout, tiny, tmp_path / f"{layout}.pt")
    loaded = load_clip_visual(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny(x), atol=atol, rtol=1e-2)


def test_arch_is_read_off_the_weights(tiny):
    sd = {k: v for k, v in tiny.state_dict().items()}
    assert arch_from_state_dict(sd) == {**TINY, "layers": (1, 2, 1, 1)}


def test_clip_teacher_takes_bgr_frames_of_any_size(tmp_path, tiny):
    teacher = ClipRN50Teacher(_save("open_clip", tiny, tmp_path / "c.pt"))
    out = teacher(torch.rand(3, 3, 90, 120) * 255)
    assert out.shape == (3, 24) and teacher.dim == 24 and teacher.input_size == 64
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name, ckpt, match", [("clip-rn50", None, "checkpoint"), ("vit", None, "expected one of")])
def test_make_teacher_rejects_bad_input(name, ckpt, match):
    with pytest.raises(ValueError, match=match):
        make_teacher(name, ckpt)


def test_clip_loader_rejects_missing_and_non_resnet(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_clip_visual(tmp_path / "none.pt")
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "vit.pt")
    with pytest.raises(ValueError, match="ModifiedResNet"):
        load_clip_visual(tmp_path / "vit.pt")


def test_default_teacher_loads_packaged_weights_offline():
    pytest.importorskip("efficientnet_lite_pytorch")
    teacher = make_teacher()
    out = teacher(torch.rand(2, 3, 120, 160) * 255)
    assert out.shape == (2, 1280) and torch.isfinite(out).all() and float(out.std()) > 0
