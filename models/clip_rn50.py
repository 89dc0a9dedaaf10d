"""CLIP's ModifiedResNet image tower (RN50 and relatives), written here so open_clip is not needed,
and a loader for local checkpoints in both layouts:

- OpenAI: the TorchScript archive `RN50.pt` (keys `visual.*`, fp16), or its plain state_dict;
- open_clip: a state_dict (`visual.*`), possibly wrapped in {"state_dict": ...} and prefixed
  `module.` by distributed training.

The architecture is read off the weights (as OpenAI's `build_model` does), so RN50, RN101 and
tiny random test variants all load the same way.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()  # anti-aliased stride
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * 4, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class AttentionPool2d(nn.Module):
    """(N, C, H, W) -> (N, out): one query (the mean token) attends over all positions."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj, self.q_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, embed_dim)
        self.v_proj, self.c_proj = nn.Linear(embed_dim, embed_dim), nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + self.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False,
        )
        return out.squeeze(0)


class ModifiedResNet(nn.Module):
    """CLIP visual tower: 3-conv stem, avg-pool downsampling, attention pooling. RGB normalised input."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), output_dim: int = 1024, heads: int = 32,
                 input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)  # (N, output_dim)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Either layout -> a flat state_dict of the whole CLIP model (or its visual tower)."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI's RN50.pt is a TorchScript archive
            warnings.simplefilter("ignore")
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        log.info("%s: OpenAI TorchScript layout", path)
    except RuntimeError:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # open_clip / plain state_dict
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
        log.info("%s: state_dict layout", path)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a CLIP checkpoint (TorchScript archive or state_dict)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def visual_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the image tower without the `visual.` prefix, float32."""
    vis = {k[len("visual."):]: v.float() for k, v in sd.items() if k.startswith("visual.")}
    vis = vis or {k: v.float() for k, v in sd.items()}
    if "attnpool.c_proj.weight" not in vis or "layer1.0.conv1.weight" not in vis:
        raise ValueError("CLIP checkpoint: no ModifiedResNet visual tower (a ViT checkpoint? only RN models load)")
    return vis


def arch_from_state_dict(vis: dict[str, torch.Tensor]) -> dict:
    """ModifiedResNet kwargs read off the weights (as OpenAI's build_model does)."""
    layers = tuple(len({k.split(".")[1] for k in vis if k.startswith(f"layer{b}.")}) for b in (1, 2, 3, 4))
    width = vis["bn3.weight"].shape[0]
    embed_dim = width * 32
    grid = round((vis["attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return {"layers": layers, "output_dim": vis["attnpool.c_proj.weight"].shape[0],
            "heads": max(embed_dim // 64, 1), "input_resolution": grid * 32, "width": width}


def load_clip_visual(path: str | Path) -> ModifiedResNet:
    """The image tower of a local CLIP RN checkpoint (OpenAI or open_clip layout), eval, float32."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CLIP checkpoint {path}: no such file")
    vis = visual_state_dict(_read_state_dict(path))
    model = ModifiedResNet(**arch_from_state_dict(vis))
    model.load_state_dict(vis, strict=True)
    return model.eval()
