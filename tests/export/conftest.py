"""Small real torch networks (a YOLOX-like CNN with a head, a tiny attention tracker) and real frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import frames
from vsdmot.export.to_onnx import TorchNet


def conv(cin, cout, s=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class TinyDetector(nn.Module):
    """images (1,3,64,64) BGR 0..255 -> output (1,A,6), embed (1,A,8): backbone, neck, head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 32))
        self.neck = nn.Sequential(conv(32, 48), conv(48, 32))
        self.head = nn.Conv2d(32, 6, 1)
        self.embed = nn.Conv2d(32, 8, 1)

    def forward(self, images):
        f = self.neck(self.backbone(images / 255.0))
        out = self.head(f).flatten(2).permute(0, 2, 1)
        emb = nn.functional.normalize(self.embed(f).flatten(2).permute(0, 2, 1), dim=-1)
        return out, emb


class TinyTracker(nn.Module):
    """Attention over proposals with a fused semantic vector; explicit state in and out."""

    def __init__(self, d=16):
        super().__init__()
        self.inp, self.sem, self.attn = nn.Linear(4, d), nn.Linear(8, d), nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, 2)

    def forward(self, prop_box, track_query, semantic, w):
        fuse = w[:, :, None] * self.sem(semantic)[:, None, :]
        p = self.inp(prop_box) + fuse
        t, _ = self.attn(track_query + fuse, p, p)
        t = self.norm(t + track_query)
        return torch.softmax(self.out(t), -1), t


@pytest.fixture(scope="session")
def real_frames():
    return frames()


@pytest.fixture
def det_net():
    torch.manual_seed(0)
    m = TinyDetector().eval()
    return TorchNet("detector", m, {"images": torch.zeros(1, 3, 64, 64)}, ("output", "embed"),
                    prune_roots=("backbone", "neck"), keep_layers=("head", "embed"))


@pytest.fixture
def det_feeds(real_frames):
    return [{"images": f.transpose(2, 0, 1)[None].astype(np.float32)} for f in real_frames]


@pytest.fixture
def trk_net():
    torch.manual_seed(0)
    ex = {"prop_box": torch.rand(1, 6, 4), "track_query": torch.randn(1, 3, 16), "semantic": torch.randn(1, 8),
          "w": torch.rand(1, 1)}
    return TorchNet("tracker", TinyTracker().eval(), ex, ("probs", "track_query_out"))


@pytest.fixture
def trk_feeds():
    g = np.random.default_rng(0)
    return [{"prop_box": g.random((1, 6, 4), np.float32), "track_query": g.standard_normal((1, 3, 16)).astype(np.float32),
             "semantic": g.standard_normal((1, 8)).astype(np.float32), "w": g.random((1, 1), np.float32)}
            for _ in range(20)]


@pytest.fixture
def tiny_export(det_net, real_frames, tmp_path):
    """export(target=...) of the tiny real detector, INT8 on 24 PETS frames, its gate passed by a
    flat evaluation: (bundle dir, the sources it came from)."""
    import json

    from vsdmot.calibration.feeds import DetectorFeeds, ImageList
    from vsdmot.export.accuracy_gate import GateConfig
    from vsdmot.export.chain import ExportConfig, Sources, export

    def run(target: str = "onnx", **cfg_kw):
        (tmp_path / "quality.json").write_text(json.dumps({"features": ["brightness"], "mean": [0.5], "std": [0.2],
                                                           "layers": [{"W": [[1.0]], "b": [0.0]}]}))
        feeds = DetectorFeeds(ImageList(real_frames), 64)
        feeds.key = "pets-24"
        sources = Sources({"detector": det_net}, {"quality.json": tmp_path / "quality.json"}, {}, {"detector": feeds})
        cfg = ExportConfig(work_dir=str(tmp_path / "work"), progress=False, target=target,
                           gate=GateConfig(sequences=("S1",), conditions=("clean",)), **cfg_kw)
        flat = dict.fromkeys(("HOTA", "DetA", "AssA", "MOTA", "IDF1"), 0.5)
        return export(cfg, tmp_path / "int8", sources=sources, eval_fn=lambda b, s, c: flat), sources

    return run
