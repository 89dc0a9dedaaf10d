"""The project's detector: YOLOX-nano (person-only by default) plus an appearance `embed` output.

I/O (matches `detector.onnx`): `images` (1,3,S,S) float32 BGR 0..255 letterboxed (pad 114), S=416
-> `output` (1,A,5+C) raw YOLOX layout (reg raw, obj/cls sigmoided, before grid decode),
   `embed` (1,A,E) float32, L2-normalised appearance per anchor (same anchor order as `output`).
The embedding is a 1x1 projection of the head's cls+reg branch features at each anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vsdmot.models import WEIGHTS
from vsdmot.models.yolox import YoloxConfig, YoloxNano

WEIGHTS_DIR = WEIGHTS
DEFAULT_WEIGHTS = WEIGHTS_DIR / "detector.pt"


@dataclass(frozen=True)
class DetectorConfig:
    num_classes: int = 1  # 1 = person-only (COCO class 0 kept); 80 = all COCO classes
    embed_dim: int = 32  # E, appearance vector length per anchor
    input_size: int = 416  # S, square letterboxed input
    feat_channels: int = 128  # head cls+reg features entering the projection (nano: 64+64)


class Detector(nn.Module):
    """images (B,3,S,S) -> output (B,A,5+C), embed (B,A,E)."""

    def __init__(self, cfg: DetectorConfig = DetectorConfig(), seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.yolox = YoloxNano(YoloxConfig(num_classes=cfg.num_classes, input_size=cfg.input_size))
        self.embed_proj = nn.Conv2d(cfg.feat_channels, cfg.embed_dim, 1, bias=False)
        g = torch.Generator().manual_seed(seed)  # fixed random orthogonal init: usable untrained
        w = torch.linalg.qr(torch.randn(cfg.feat_channels, cfg.embed_dim, generator=g))[0].T
        self.embed_proj.weight.data.copy_(w[:, :, None, None])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output, feats = self.yolox(images)
        return output, self.embed_from_feats(feats)

    def embed_from_feats(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Per-level (B,128,h,w) head features -> (B,A,E) L2-normalised, anchors in output order."""
        emb = torch.cat([self.embed_proj(f).flatten(2) for f in feats], 2).permute(0, 2, 1)
        return F.normalize(emb, dim=-1)


def from_yolox_onnx(onnx_path: str | Path, cfg: DetectorConfig = DetectorConfig()) -> tuple[Detector, dict]:
    """A detector initialised from the official YOLOX-nano ONNX, and its provenance."""
    from vsdmot.models.convert_yolox import convert

    det = Detector(cfg)
    yolox, prov = convert(onnx_path, cfg.num_classes)
    det.yolox.load_state_dict(yolox.state_dict())
    return det.eval(), prov


def load_detector(path: str | Path = DEFAULT_WEIGHTS) -> tuple[Detector, dict]:
    """Load shipped or trained weights (a `models.checkpoint` file). Returns (model, meta)."""
    from vsdmot.models.checkpoint import load_model_file

    return load_model_file(path, lambda c: Detector(DetectorConfig(**c)))


def export_onnx(model: Detector, path: str | Path) -> Path:
    """detector.onnx: opset 17, static (1,3,S,S) -> output, embed."""
    from vsdmot.models.onnx import export

    s = model.cfg.input_size
    return export(model, {"images": (1, 3, s, s)}, ["output", "embed"], path)
