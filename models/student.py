"""Student semantic encoder: a small plain CNN (conv/BN/ReLU only: folds for export, prunes cleanly
with torch-pruning's DepGraph) mapping a whole frame to one global semantic vector.

I/O (matches `student.onnx`): `image` (1,3,R,R) float32 BGR 0..255, the frame resized (no
letterbox) to R x R; normalisation happens inside -> `semantic` (1,D) float32, L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vsdmot.models import WEIGHTS

DEFAULT_WEIGHTS = WEIGHTS / "student.pt"
# ImageNet mean/std in BGR order, 0..255 scale.
_MEAN_BGR = (0.406 * 255, 0.456 * 255, 0.485 * 255)
_STD_BGR = (0.225 * 255, 0.224 * 255, 0.229 * 255)


@dataclass(frozen=True)
class StudentConfig:
    input_size: int = 128  # R, square input
    dim: int = 128  # D, semantic vector length
    widths: tuple[int, ...] = (16, 32, 64, 112, 160)  # channels per stage, each stage halves H and W
    blocks: tuple[int, ...] = (1, 1, 2, 2, 1)  # extra 3x3 conv blocks per stage after its stride-2 conv


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class StudentEncoder(nn.Module):
    """image (B,3,R,R) BGR 0..255 -> semantic (B,D), L2-normalised."""

    def __init__(self, cfg: StudentConfig = StudentConfig()):
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks):
            raise ValueError(f"StudentConfig: widths and blocks need equal length, got {cfg.widths}, {cfg.blocks}")
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(_MEAN_BGR).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD_BGR).view(1, 3, 1, 1))
        layers, cin = [], 3
        for w, n in zip(cfg.widths, cfg.blocks):
            layers += [_cbr(cin, w, 2)] + [_cbr(w, w) for _ in range(n)]
            cin = w
        self.features = nn.Sequential(*layers)  # (B, C_last, R/32, R/32)
        self.head = nn.Linear(cin, cfg.dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features((image - self.mean) / self.std)
        return F.normalize(self.head(x.mean(dim=(2, 3))), dim=-1)  # (B, D)


def load_student(path: str | Path = DEFAULT_WEIGHTS) -> tuple[StudentEncoder, dict]:
    from vsdmot.models.checkpoint import load_model_file

    return load_model_file(path, lambda c: StudentEncoder(StudentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})))


def export_onnx(model: StudentEncoder, path: str | Path) -> Path:
    """student.onnx: opset 17, static (1,3,R,R) -> semantic (1,D)."""
    from vsdmot.models.onnx import export

    r = model.cfg.input_size
    return export(model, {"image": (1, 3, r, r)}, ["semantic"], path)


def save_fp16(src: str | Path, dest: str | Path, projection: bool = False) -> Path:
    """A student checkpoint (e.g. runs/train/student/student.pt) as a small shipped file: float
    tensors in fp16, no optimiser (~1.6 MB for the default shape). `load_student` reads it back
    into an fp32 network (load_state_dict casts). The teacher projection (`extra`, 0.3 MB in
    fp16) is kept only on request."""
    from vsdmot.models.checkpoint import load_checkpoint, save_atomic

    c = load_checkpoint(src)
    half = lambda d: {k: v.half() if v.is_floating_point() else v for k, v in d.items()}  # noqa: E731
    out = {**c, "model": half(c["model"]), "optimizer": None, "rng": None, "rng_numpy": None,
           "meta": {**c.get("meta", {}), "dtype": "float16", "source": Path(src).name},
           "extra": {"projection": half(c["extra"]["projection"])} if projection and c.get("extra") else {}}
    return save_atomic(out, dest)  # dest is often models/weights/student.pt: never half written
