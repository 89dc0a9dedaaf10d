"""MOTRv2-style end-to-end tracker head with static shapes, pointer outputs and no absolute positions.

Per frame, P proposal slots (detector boxes, scores, appearance embeddings) seed detect queries and
S track slots carry track queries from the previous frame. Geometry enters only as relative pair
features between each track's predicted box and each proposal (IoU, centre offset over the track's
size, log w/h ratios) plus the appearance cosine; absolute coordinates never reach a weight. A small
decoder lets tracks attend to proposals and proposals to tracks (a detect query that duplicates a
live track learns a low birth score) and proposals to each other (duplicate boxes). Outputs:

- `match_logits` (B, S, P+1): per track, a pointer over the proposals plus a last "no match" column;
  the box of a matched track is the detector's box (taken, never regressed);
- `keep` (B, S): probability the track is seen in this frame;
- `birth` (B, P): probability a proposal starts a new track;
- `track_query_out` (B, S, d), `birth_query` (B, P, d): next frame's track queries (query interaction).

Fusion as in VSE-MOT: every query += w * proj(semantic). `sem_fusion="linear"` (every checkpoint before
2026-11-24 08:30 UTC): proj = Linear, whose output (norm ~0.6 on the student's vectors) is small against the
LayerNorm'd queries (norm ~8), so w barely mattered. `"norm"`: proj = gain * LayerNorm(Linear), the
scale of a query, times a learnable scalar gain started small (`sem_gain`). Invalid slots (mask 0)
never match or give birth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F

NEG = -1e4  # logit for a masked pointer entry (finite: fp16/INT8 friendly)
INPUTS = ("prop_box", "prop_score", "prop_embed", "prop_mask", "track_query", "track_box",
          "track_embed", "track_miss", "track_mask", "semantic", "w")
OUTPUTS = ("match_logits", "keep", "birth", "track_query_out", "birth_query")
PAIR_FEATURES = 9


@dataclass(frozen=True)
class TrackerHeadConfig:
    d: int = 64  # query width
    heads: int = 4  # attention heads
    layers: int = 2  # decoder layers
    embed_dim: int = 32  # E: appearance embedding width (the detector's `embed` rows)
    semantic_dim: int = 128  # D: the student's semantic vector width
    proposals: int = 64  # P: proposal slots in the exported graph (training may use fewer)
    slots: int = 32  # S: track slots in the exported graph (training may use fewer)
    miss_norm: float = 20.0  # frames: miss counts are divided by this (MOTRv2's tolerance)
    pair_dim: int = 32  # width of the track-proposal pair embedding
    embed_dropout: float = 0.2  # dropout on the raw embedding projection (generalise beyond cosine)
    sem_fusion: str = "linear"  # proj(semantic): "linear" = Linear (old heads), "norm" = gain * LayerNorm(Linear)
    sem_gain: float = 0.1  # initial gain of the "norm" fusion (|LayerNorm| = sqrt(d): 0.1 -> norm ~0.8)

    @classmethod
    def from_dict(cls, d: dict) -> TrackerHeadConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"TrackerHeadConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self):
        if self.sem_fusion not in ("linear", "norm"):
            raise ValueError(f"TrackerHeadConfig: sem_fusion expected 'linear' or 'norm', got {self.sem_fusion!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))


def pair_features(tbox, pbox, temb, pemb, pscore, miss) -> torch.Tensor:
    """(B,S,4),(B,P,4),(B,S,E),(B,P,E),(B,P),(B,S) -> (B,S,P,9) relative features only."""
    t, p = tbox[:, :, None, :], pbox[:, None, :, :]
    tw = (t[..., 2] - t[..., 0]).clamp(min=1.0)
    th = (t[..., 3] - t[..., 1]).clamp(min=1.0)
    pw = (p[..., 2] - p[..., 0]).clamp(min=1.0)
    ph = (p[..., 3] - p[..., 1]).clamp(min=1.0)
    iw = (torch.minimum(t[..., 2], p[..., 2]) - torch.maximum(t[..., 0], p[..., 0])).clamp(min=0)
    ih = (torch.minimum(t[..., 3], p[..., 3]) - torch.maximum(t[..., 1], p[..., 1])).clamp(min=0)
    inter = iw * ih
    iou = inter / (tw * th + pw * ph - inter).clamp(min=1e-6)
    dx = ((p[..., 0] + p[..., 2]) - (t[..., 0] + t[..., 2])) / (2 * tw)
    dy = ((p[..., 1] + p[..., 3]) - (t[..., 1] + t[..., 3])) / (2 * th)
    dist = torch.sqrt(dx * dx + dy * dy + 1e-6).clamp(max=8.0)
    cos = torch.einsum("bse,bpe->bsp", F.normalize(temb, dim=-1), F.normalize(pemb, dim=-1))
    s = pscore[:, None, :].expand_as(iou)
    m = miss[:, :, None].expand_as(iou)
    feats = [iou, dx.clamp(-4, 4), dy.clamp(-4, 4), torch.log(pw / tw), torch.log(ph / th), dist, cos, s, m]
    return torch.stack(feats, -1)


def prop_pair_features(pbox, pemb) -> torch.Tensor:
    """(B,P,4),(B,P,E) -> (B,P,P,2): IoU and appearance cosine between proposals."""
    feats = pair_features(pbox, pbox, pemb, pemb, pbox[..., 0] * 0, pbox[..., 0] * 0)
    return feats[..., [0, 6]]


class BiasedAttention(nn.Module):
    """Multi-head attention with an additive per-pair bias and per-pair values, plus a null key."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.null_k = nn.Parameter(torch.zeros(heads, d // heads))
        self.null_v = nn.Parameter(torch.zeros(heads, d // heads))

    def forward(self, x, y, bias, pv, ymask) -> torch.Tensor:
        """x (B,N,d) attends y (B,M,d); bias (B,N,M,H); pv (B,N,M,d) pair values or None; ymask (B,M)."""
        b, n, _ = x.shape
        m = y.shape[1]
        q = self.q(x).view(b, n, self.h, self.dh)
        k, v = self.k(y).view(b, m, self.h, self.dh), self.v(y).view(b, m, self.h, self.dh)
        scale = 1.0 / math.sqrt(self.dh)
        logit = torch.einsum("bnhc,bmhc->bnmh", q, k) * scale + bias + (1 - ymask)[:, None, :, None] * NEG
        lnull = (q * self.null_k).sum(-1)[:, :, None, :] * scale  # (B,N,1,H)
        att = torch.softmax(torch.cat([lnull, logit], 2), dim=2)  # (B,N,M+1,H)
        am = att[:, :, 1:]
        out = torch.einsum("bnmh,bmhc->bnhc", am, v) + att[:, :, 0, :, None] * self.null_v
        if pv is not None:
            out = out + (am[..., None] * pv.view(b, n, m, self.h, self.dh)).sum(2)
        return self.o(out.reshape(b, n, -1))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, pd: int):
        super().__init__()
        self.t2p, self.p2t, self.p2p = (BiasedAttention(d, heads) for _ in range(3))
        self.bias = nn.Linear(pd, 2 * heads)  # pair embedding -> track->prop and prop->track biases
        self.val_tp, self.val_pt = nn.Linear(pd, d), nn.Linear(pd, d)
        self.bias_pp = mlp(2, 16, heads)
        self.ffn_t, self.ffn_p = mlp(d, 2 * d, d), mlp(d, 2 * d, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(7))

    def forward(self, t, p, e, pp, tmask, pmask):
        """t (B,S,d), p (B,P,d), e (B,S,P,pd) pair embedding, pp (B,P,P,2)."""
        n, h = self.norms, self.bias.out_features // 2
        bias = self.bias(e)  # (B,S,P,2H)
        t = t + self.t2p(n[0](t), n[1](p), bias[..., :h], self.val_tp(e), pmask)
        p = p + self.p2t(n[2](p), n[3](t), bias[..., h:].transpose(1, 2), self.val_pt(e).transpose(1, 2), tmask)
        p = p + self.p2p(n[4](p), n[4](p), self.bias_pp(pp), None, pmask)
        return t + self.ffn_t(n[5](t)), p + self.ffn_p(n[6](p))


class TrackerHead(nn.Module):
    """The end-to-end tracker head. Inputs/outputs: see module doc and docs/networks.md."""

    def __init__(self, cfg: TrackerHeadConfig = TrackerHeadConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        self.det_in = mlp(cfg.embed_dim + 1, d, d)
        self.track_in = nn.Linear(1, d)
        self.sem = nn.Linear(cfg.semantic_dim, d)
        if cfg.sem_fusion == "norm":
            self.sem_norm = nn.LayerNorm(d)
            self.sem_gain = nn.Parameter(torch.tensor(float(cfg.sem_gain)))
        pd = cfg.pair_dim
        self.pair = mlp(PAIR_FEATURES, pd, pd)
        self.pair_sem = nn.Linear(d, pd)
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.heads, pd) for _ in range(cfg.layers))
        self.ptr_t, self.ptr_p = nn.Linear(d, pd), nn.Linear(d, pd)
        self.ptr = mlp(pd, pd, 1)
        self.null, self.keep, self.birth = nn.Linear(d, 1), nn.Linear(d, 1), nn.Linear(d, 1)
        self.update = mlp(2 * d, 2 * d, d)
        self.born = mlp(d, 2 * d, d)
        self.out_norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.embed_dropout)

    def forward(self, prop_box, prop_score, prop_embed, prop_mask, track_query, track_box,
                track_embed, track_miss, track_mask, semantic, w):
        miss = track_miss / self.cfg.miss_norm
        fuse = w[:, :, None] * self.project(semantic)[:, None, :]  # (B,1,d): w * proj(semantic)
        emb = torch.cat([prop_score[..., None], self.drop(prop_embed)], -1)
        p = self.det_in(emb) + fuse  # (B,P,d) detect queries
        t = track_query + self.track_in(miss[..., None]) + fuse  # (B,S,d) track queries
        e = self.pair(pair_features(track_box, prop_box, track_embed, prop_embed, prop_score, miss))
        e = e + self.pair_sem(fuse)[:, :, None, :]  # (B,S,P,pd): quality-conditioned pair embedding
        pp = prop_pair_features(prop_box, prop_embed)
        for layer in self.layers:
            t, p = layer(t, p, e, pp, track_mask, prop_mask)
        return self._outputs(t, p, e, track_query, prop_mask, track_mask)

    def project(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B,D) -> (B,d): Linear, or gain * LayerNorm(Linear) (norm sqrt(d) * gain, like a query)."""
        s = self.sem(semantic)
        return self.sem_gain * self.sem_norm(s) if self.cfg.sem_fusion == "norm" else s

    SEM_PARAMS = ("sem.", "sem_norm.", "sem_gain", "pair_sem.")  # the fusion's parameters (own lr group)

    def _outputs(self, t, p, e, tq, pmask, tmask):
        h = e + self.ptr_t(t)[:, :, None, :] + self.ptr_p(p)[:, None, :, :]
        logit = self.ptr(h)[..., 0] + (1 - pmask[:, None, :]) * NEG  # (B,S,P)
        logits = torch.cat([logit, self.null(t)], -1)  # (B,S,P+1)
        keep = torch.sigmoid(self.keep(t)[..., 0]) * tmask  # (B,S)
        birth = torch.sigmoid(self.birth(p)[..., 0]) * pmask  # (B,P)
        prob = torch.softmax(logits, -1)[..., :-1]  # (B,S,P) soft pointer for the update
        ctx = torch.einsum("bsp,bpd->bsd", prob, p)
        t_out = self.out_norm(tq + self.update(torch.cat([t, ctx], -1)))  # (B,S,d)
        b_out = self.out_norm(self.born(p))  # (B,P,d)
        return logits, keep, birth, t_out, b_out


def example_inputs(cfg: TrackerHeadConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the export shapes, in INPUTS order."""
    g = torch.Generator().manual_seed(seed)
    P, S = cfg.proposals, cfg.slots
    xy = torch.rand(batch, P, 2, generator=g) * 500
    pbox = torch.cat([xy, xy + 20 + torch.rand(batch, P, 2, generator=g) * 80], -1)
    xy = torch.rand(batch, S, 2, generator=g) * 500
    tbox = torch.cat([xy, xy + 20 + torch.rand(batch, S, 2, generator=g) * 80], -1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mask = lambda n: (torch.rand(batch, n, generator=g) < 0.6).float()  # noqa: E731
    return (pbox, torch.rand(batch, P, generator=g), F.normalize(r(batch, P, cfg.embed_dim), dim=-1), mask(P),
            r(batch, S, cfg.d), tbox, F.normalize(r(batch, S, cfg.embed_dim), dim=-1),
            torch.randint(0, 20, (batch, S), generator=g).float(), mask(S),
            F.normalize(r(batch, cfg.semantic_dim), dim=-1), torch.rand(batch, 1, generator=g))


def export_onnx(model: TrackerHead, path, opset: int = 17) -> None:
    """Static-shape ONNX (batch 1, P and S from the config), legacy exporter for opset 17."""
    model = model.eval()
    with torch.no_grad():
        torch.onnx.export(model, example_inputs(model.cfg), str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), opset_version=opset, dynamo=False)
