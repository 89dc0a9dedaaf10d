"""YOLOX-nano in torch, in the deployed (BatchNorm-fused) form of the official ONNX export.

Architecture (Megvii YOLOX, Apache-2.0): CSPDarknet backbone with depthwise convs, PAFPN neck and
a decoupled head; depth 0.33, width 0.25, SiLU. Every conv carries a bias because the ONNX file
has BatchNorm folded in; the converter (`models/convert_yolox.py`) loads its initializers here.

`forward` returns the raw YOLOX layout `(1, A, 5 + C)` exactly as the official ONNX (reg raw,
obj and cls sigmoided, before grid decode), plus the per-level head features (cls and reg branches) that the
detector wrapper turns into appearance embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class YoloxConfig:
    num_classes: int = 80  # 80 = COCO as shipped; 1 = person-only (COCO class 0 kept)
    width: float = 0.25  # channel multiplier (nano)
    depth: float = 0.33  # block-count multiplier (nano)
    input_size: int = 416  # square letterboxed input S


def _conv(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> nn.Sequential:
    """BaseConv with BN folded in: Conv2d(bias) + SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=True), nn.SiLU())


class DWConv(nn.Module):
    """Depthwise k x k (stride s) then pointwise 1x1."""

    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1):
        super().__init__()
        self.dconv = _conv(cin, cin, k, s, groups=cin)
        self.pconv = _conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pconv(self.dconv(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, shortcut: bool):
        super().__init__()
        self.conv1 = _conv(cin, cout, 1)
        self.conv2 = DWConv(cout, cout, 3, 1)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.use_add else y


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True):
        super().__init__()
        hidden = cout // 2
        self.conv1 = _conv(cin, hidden, 1)
        self.conv2 = _conv(cin, hidden, 1)
        self.conv3 = _conv(2 * hidden, cout, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv1(x), self.conv2(x)  # this order matches the official ONNX graph
        return self.conv3(torch.cat([self.m(x1), x2], dim=1))


class SPPBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, kernels: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        hidden = cin // 2
        self.conv1 = _conv(cin, hidden, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernels])
        self.conv2 = _conv(hidden * (len(kernels) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], dim=1))


class Focus(nn.Module):
    """Space-to-depth (B,3,H,W) -> (B,12,H/2,W/2), then a 3x3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv(cin * 4, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, bl = x[..., ::2, ::2], x[..., 1::2, ::2]
        tr, br = x[..., ::2, 1::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], dim=1))


class CSPDarknet(nn.Module):
    def __init__(self, depth: float, width: float):
        super().__init__()
        c, d = int(width * 64), max(round(depth * 3), 1)  # nano: 16, 1
        self.stem = Focus(3, c)
        self.dark2 = nn.Sequential(DWConv(c, c * 2, 3, 2), CSPLayer(c * 2, c * 2, d))
        self.dark3 = nn.Sequential(DWConv(c * 2, c * 4, 3, 2), CSPLayer(c * 4, c * 4, d * 3))
        self.dark4 = nn.Sequential(DWConv(c * 4, c * 8, 3, 2), CSPLayer(c * 8, c * 8, d * 3))
        self.dark5 = nn.Sequential(
            DWConv(c * 8, c * 16, 3, 2), SPPBottleneck(c * 16, c * 16), CSPLayer(c * 16, c * 16, d, False)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        x3 = self.dark3(x)  # (B, 64, S/8, S/8)
        x4 = self.dark4(x3)  # (B, 128, S/16, S/16)
        return x3, x4, self.dark5(x4)  # last: (B, 256, S/32, S/32)


class PAFPN(nn.Module):
    def __init__(self, depth: float, width: float):
        super().__init__()
        c3, c4, c5 = int(256 * width), int(512 * width), int(1024 * width)
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width)
        self.lateral_conv0 = _conv(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False)
        self.reduce_conv1 = _conv(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False)
        self.bu_conv2 = DWConv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False)
        self.bu_conv1 = DWConv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.up(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.up(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


class YoloxHead(nn.Module):
    def __init__(self, num_classes: int, width: float):
        super().__init__()
        h = int(256 * width)  # 64 for nano
        ins = [int(c * width) for c in (256, 512, 1024)]
        self.stems = nn.ModuleList([_conv(c, h, 1) for c in ins])
        self.cls_convs = nn.ModuleList([nn.Sequential(DWConv(h, h), DWConv(h, h)) for _ in ins])
        self.reg_convs = nn.ModuleList([nn.Sequential(DWConv(h, h), DWConv(h, h)) for _ in ins])
        self.cls_preds = nn.ModuleList([nn.Conv2d(h, num_classes, 1) for _ in ins])
        self.reg_preds = nn.ModuleList([nn.Conv2d(h, 4, 1) for _ in ins])
        self.obj_preds = nn.ModuleList([nn.Conv2d(h, 1, 1) for _ in ins])

    def level(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: (B, 5+C, h, w) raw-layout output and (B, 128, h, w) cls+reg features."""
        x = self.stems[k](x)
        cls_feat = self.cls_convs[k](x)
        cls_out = self.cls_preds[k](cls_feat)
        reg_feat = self.reg_convs[k](x)
        reg_out, obj_out = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
        out = torch.cat([reg_out, obj_out.sigmoid(), cls_out.sigmoid()], 1)
        return out, torch.cat([cls_feat, reg_feat], 1)


class YoloxNano(nn.Module):
    """images (B,3,S,S) BGR 0..255 -> output (B,A,5+C), feats: list of (B,128,h,w) per stride."""

    def __init__(self, cfg: YoloxConfig = YoloxConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = PAFPN(cfg.depth, cfg.width)
        self.head = YoloxHead(cfg.num_classes, cfg.width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs, feats = zip(*(self.head.level(k, f) for k, f in enumerate(self.backbone(images))))
        output = torch.cat([o.flatten(2) for o in outs], 2).permute(0, 2, 1)  # (B, A, 5+C)
        return output, list(feats)
