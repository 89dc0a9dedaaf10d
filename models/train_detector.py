"""`vsdmot-train detector`: train the appearance projection, and optionally (--no-freeze-detector)
fine-tune the detector for degraded video by self-distillation.

Default (measured best today, docs/training.md): the detector stays as converted and only the
`embed` projection trains.

Teacher: a frozen copy of the initial detector (converted YOLOX-nano) on the CLEAN frame.
Student: the detector on a DEGRADED copy (calibration.degrade, random preset and severity).
Loss per anchor (raw YOLOX layout): BCE(obj_s, obj_t) everywhere, BCE(cls_s, cls_t) and L1 on the
raw box terms weighted by the teacher's person score. No labels needed: it only asks the detector
to see through degradations what it sees on clean frames. (Measured: 38 steps at lr 2e-4 damaged
the BN-folded detector; it needs a longer budget and a lower lr than today's machine allowed.)
Appearance: the `embed` projection learns by InfoNCE that the same ground-truth identity (PETS
1-600) in two frames `gap` apart is closer than other people (head features detached, so this
loss never moves the detector itself).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsdmot.models.checkpoint import load_model_file, resume, save_checkpoint
from vsdmot.models.detector import Detector, DetectorConfig, from_yolox_onnx
from vsdmot.models.trainframes import (DEFAULT_DATA, VAL_FIRST, TrainFrame, data_note, degrade_fn, letterbox, load_mot17,
                                       load_pets, random_degrade)
from vsdmot.models.trainloop import check_config, cosine_lr, out_dir, resuming, run_steps, setup
from vsdmot.splits import PETS_TRAIN_LAST
from vsdmot.paths import yolox_nano_onnx
from vsdmot.runtime.yolox import anchor_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorTrainConfig:
    seed: int = 0  # python, numpy and torch seed
    steps: int = 200  # optimiser steps (the time budget may stop earlier)
    max_minutes: float = 8.0  # CPU-time budget in minutes, all threads (0 = none)
    stop_at: int = 0  # stop after this step with the schedule of `steps` (0 = at `steps`): repeats a budget-stopped run
    lr: float = 2e-4  # AdamW peak learning rate (fine-tuning: small)
    embed_lr: float = 3e-3  # learning rate of the appearance projection
    weight_decay: float = 1e-5  # AdamW weight decay
    p_degrade: float = 0.8  # share of student frames that are degraded (the rest stay clean)
    severity_max: int = 5  # severities drawn from 1..severity_max
    w_reg: float = 1.0  # weight of the box (raw reg L1) term
    w_embed: float = 0.2  # weight of the appearance InfoNCE term
    tau: float = 0.1  # InfoNCE temperature
    gap: int = 10  # max frames between the two frames of an identity pair
    freeze_detector: bool = True  # train only the appearance projection; --no-freeze-detector: self-distil too
    mot17: bool = True  # also distil on the MOT17-mini train frames
    pets_last: int = VAL_FIRST - 1  # last PETS frame trained on (541-600: validation; 601-795 never)
    train_size: int = 416  # letterbox side during training (fully convolutional; 320 costs 0.6x)
    init: str = ""  # start from this detector file; empty: convert yolox_onnx
    yolox_onnx: str = str(yolox_nano_onnx())  # official YOLOX-nano ONNX
    data: str = str(DEFAULT_DATA)  # root of the real data (PETS09-S2L1, MOT17-mini)
    out: str = "runs/train/detector"  # run folder: last.pt (resumable) and detector.pt
    threads: int = 2  # torch threads
    save_every: int = 25  # steps between checkpoints
    resume: bool = False  # continue from <out>/last.pt

    def __post_init__(self) -> None:
        check_config(self, {"steps": 0, "stop_at": 0, "gap": 1, "pets_last": 1, "train_size": 32, "threads": 1, "save_every": 0},
                     ("p_degrade",), "severity_max", {"pets_last": PETS_TRAIN_LAST})


def gt_anchors(frame: TrainFrame, r: float, score: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each gt box: the anchor inside it with the highest teacher score. -> (anchor idx, ids)."""
    grid, stride = anchor_grid(size)
    centre = (grid + 0.5) * stride  # (A, 2) letterbox px
    idx, ids = [], []
    for box, pid in zip(frame.boxes * r, frame.ids):
        inside = np.flatnonzero((centre[:, 0] > box[0]) & (centre[:, 0] < box[2]) & (centre[:, 1] > box[1]) & (centre[:, 1] < box[3]))
        if len(inside):
            idx.append(inside[np.argmax(score[inside])])
            ids.append(pid)
    return np.asarray(idx, np.int64), np.asarray(ids, np.int64)


def distill_loss(s: torch.Tensor, t: torch.Tensor, w_reg: float) -> tuple[torch.Tensor, dict]:
    """s, t: (B, A, 5+C) raw layout (obj/cls are probabilities)."""
    eps = 1e-6
    obj = F.binary_cross_entropy(s[..., 4].clamp(eps, 1 - eps), t[..., 4])
    wt = (t[..., 4] * t[..., 5:].max(-1).values).detach()  # (B, A) teacher person score
    norm = wt.sum().clamp_min(1.0)
    cls = (F.binary_cross_entropy(s[..., 5:].clamp(eps, 1 - eps), t[..., 5:], reduction="none").mean(-1) * wt).sum() / norm
    reg = ((s[..., :4] - t[..., :4]).abs().mean(-1) * wt).sum() / norm
    return obj + cls + w_reg * reg, {"obj": obj.item(), "cls": cls.item(), "reg": reg.item()}


def info_nce(ea: torch.Tensor, ia: np.ndarray, eb: torch.Tensor, ib: np.ndarray, tau: float) -> torch.Tensor | None:
    """Symmetric InfoNCE over identities present in both frames. ea (Na, E), eb (Nb, E) normalised."""
    common = np.intersect1d(ia, ib)
    if len(common) < 2:
        return None
    a = ea[[int(np.flatnonzero(ia == c)[0]) for c in common]]
    b = eb[[int(np.flatnonzero(ib == c)[0]) for c in common]]
    logits, target = a @ b.T / tau, torch.arange(len(common))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _tensor(imgs: list[np.ndarray], size: int) -> tuple[torch.Tensor, list[float]]:
    boxes = [letterbox(i, size) for i in imgs]
    return torch.from_numpy(np.stack([b[0] for b in boxes]).transpose(0, 3, 1, 2).astype(np.float32)), [b[1] for b in boxes]


def pick_frames(pets: list[TrainFrame], others: list[TrainFrame], rng, gap_items: int) -> list[TrainFrame]:
    """One PETS pair (same people, `gap` apart) for the appearance loss, plus two random frames."""
    i = int(rng.integers(0, len(pets) - gap_items))
    j = i + int(rng.integers(1, gap_items + 1))
    pool = pets + others
    return [pets[i], pets[j]] + [pool[k] for k in rng.integers(0, len(pool), 2)]


def _load_init(cfg: DetectorTrainConfig) -> tuple[Detector, dict]:
    if cfg.init:
        return load_model_file(cfg.init, lambda c: Detector(DetectorConfig(**c)))
    return from_yolox_onnx(cfg.yolox_onnx)


def _make_step(cfg: DetectorTrainConfig, model: Detector, teacher, opt, pets, others, deg, rng):
    """One optimiser step: distillation (unless frozen) + appearance InfoNCE on a PETS pair."""
    size, gap_items, frozen = cfg.train_size, max(cfg.gap // 2, 1), cfg.freeze_detector

    def step(k: int) -> dict:
        cosine_lr(opt, (0.0 if frozen else cfg.lr, cfg.embed_lr), k, cfg.steps)
        frames = pick_frames(pets, others, rng, gap_items)[: 2 if frozen else 4]
        clean, ratios = _tensor([f.image for f in frames], size)
        degraded, _ = _tensor([random_degrade(f.image, rng, cfg.p_degrade, cfg.severity_max, deg) for f in frames], size)
        with torch.no_grad():
            t_out, _ = teacher(clean)
        with torch.set_grad_enabled(not frozen):
            s_out, feats = model.yolox(degraded)
        loss, parts = (s_out.sum() * 0.0, {}) if frozen else distill_loss(s_out, t_out, cfg.w_reg)
        emb = model.embed_from_feats([f.detach() for f in feats])  # (B, A, E)
        tscore = (t_out[..., 4] * t_out[..., 5]).numpy()
        (ia, ida), (ib, idb) = (gt_anchors(frames[n], ratios[n], tscore[n], size) for n in (0, 1))
        nce = info_nce(emb[0, ia], ida, emb[1, ib], idb, cfg.tau) if len(ia) and len(ib) else None
        if nce is not None:
            loss, parts["nce"] = loss + cfg.w_embed * nce, nce.item()
        if loss.requires_grad:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return parts

    return step


def train(cfg: DetectorTrainConfig) -> Path:
    rng = setup(cfg.seed, cfg.threads)
    out = out_dir(cfg.out)
    pets = [f for f in load_pets(Path(cfg.data), last=min(cfg.pets_last, VAL_FIRST - 1), every=2) if len(f.ids)]
    others = load_mot17(Path(cfg.data)) if cfg.mot17 else []
    model, prov = _load_init(cfg)
    prov = prov.get("provenance", prov)
    teacher = copy.deepcopy(model.yolox).eval().requires_grad_(False)
    model.train().yolox.requires_grad_(not cfg.freeze_detector)
    params = [{"params": model.yolox.parameters(), "lr": 0.0 if cfg.freeze_detector else cfg.lr},
              {"params": model.embed_proj.parameters(), "lr": cfg.embed_lr}]
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    start = resume(out / "last.pt", model, opt, cfg, rng) if resuming(out / "last.pt", cfg.resume) else 0
    step = _make_step(cfg, model, teacher, opt, pets, others, degrade_fn() if cfg.p_degrade > 0 else None, rng)
    method = "converted YOLOX-nano; appearance projection trained (InfoNCE)" if cfg.freeze_detector else "self-distillation"
    used_mot17 = cfg.mot17 and not cfg.freeze_detector  # frozen, a step takes one PETS pair and nothing else
    meta = lambda k: {"stage": "detector", "step": k, "provenance": prov, "method": method,  # noqa: E731
                      "data": data_note(min(cfg.pets_last, VAL_FIRST - 1), used_mot17, every=2, validation=False)}
    save = lambda k: save_checkpoint(out / "last.pt", model, model.cfg, cfg, opt, k, meta(k), np_rng=rng)  # noqa: E731
    done = run_steps(step, start, cfg.steps, cfg.max_minutes, save, cfg.save_every, "detector", cfg.stop_at)
    model.yolox.requires_grad_(True)
    return save_checkpoint(out / "detector.pt", model, model.cfg, cfg, None, done, meta(done))


def add_arguments(parser) -> None:
    from vsdmot.models.trainloop import add_config_args

    add_config_args(parser, DetectorTrainConfig)


def run(args) -> int:
    from vsdmot.models.trainloop import config_from_args

    print(f"detector weights: {train(config_from_args(DetectorTrainConfig, args))}")
    return 0


def evaluate(detector_files: dict[str, str], frames: list[TrainFrame], severity: int = 3, seed: int = 0,
             onnx_reference: str = DetectorTrainConfig.yolox_onnx) -> dict[str, dict[str, float]]:
    """Per detector and preset: mean F1 agreement (score > 0.3, IoU 0.5) of its boxes on the
    degraded frame with the official YOLOX-nano's boxes on the clean frame; "clean" = no degradation.
    Runs exported ONNX in onnxruntime (fast); frames must be training-range validation frames."""
    import tempfile

    from vsdmot.models.detector import export_onnx
    from vsdmot.models.train_quality import _detect_fn, agreement

    fn, presets = degrade_fn()
    ref_detect = _detect_fn(onnx_reference, 2, 0.3)
    refs = [ref_detect(f.image) for f in frames]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in detector_files.items():
            model = load_model_file(path, lambda c: Detector(DetectorConfig(**c)))[0] if path else from_yolox_onnx(onnx_reference)[0]
            detect = _detect_fn(str(export_onnx(model, Path(tmp) / f"{name}.onnx")), 2, 0.3)
            row = {}
            for p in ["clean", *presets]:
                rng = np.random.default_rng(seed)
                imgs = [f.image if p == "clean" else fn(f.image, p, severity, rng) for f in frames]
                row[p] = float(np.mean([agreement(r, detect(i)) for r, i in zip(refs, imgs) if len(r)]))
            row["mean_degraded"] = float(np.mean([v for k, v in row.items() if k != "clean"]))
            out[name] = row
    return out


@torch.no_grad()
def embed_auc(model: Detector, frames: list[TrainFrame], gap: int = 10, deg=None, seed: int = 0) -> float:
    """ROC AUC of embed cosine, same gt identity (frames `gap` apart) vs different identities.
    Anchors: the model's best-scoring anchor inside each gt box. `deg` = (degrade, presets) or None."""
    rng, size, rows = np.random.default_rng(seed), model.cfg.input_size, []
    for f in frames:
        img = f.image if deg is None else deg[0](f.image, deg[1][rng.integers(len(deg[1]))], 3, rng)
        x, (r,) = _tensor([img], size)
        out, emb = model(x)
        idx, ids = gt_anchors(f, r, (out[0, :, 4] * out[0, :, 5]).numpy(), size)
        rows.append((int(f.source.split(":")[1]), emb[0, idx].numpy(), ids))
    pos, neg = [], []
    for ka, ea, ia in rows:
        for kb, eb, ib in rows:
            if 0 < kb - ka <= gap:
                sim = ea @ eb.T
                same = ia[:, None] == ib[None, :]
                pos += sim[same].tolist()
                neg += sim[~same].tolist()
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
