"""`vsdmot-train student`: distil a teacher into the student semantic encoder with DCSD.

Each step draws B random crops of training frames (PETS 1-600, MOT17-mini train). The teacher
sees the clean crop, the student a degraded copy (calibration.degrade, random preset and
severity; a share stays clean). The loss is DCSD (models/dcsd.py) in the teacher's principal
subspace, fitted once on clean crops before training.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsdmot.models.checkpoint import resume, save_checkpoint
from vsdmot.models.dcsd import DcsdConfig, TeacherProjection, dcsd_loss
from vsdmot.models.student import StudentConfig, StudentEncoder
from vsdmot.models.teacher import make_teacher
from vsdmot.models.trainframes import DEFAULT_DATA, TrainFrame, data_note, degrade_fn, load_train_frames, random_degrade
from vsdmot.models.trainloop import check_config, cosine_lr, out_dir, resuming, run_steps, setup
from vsdmot.splits import PETS_TRAIN_LAST
from vsdmot.runtime.semantics import student_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentTrainConfig:
    seed: int = 0  # python, numpy and torch seed
    steps: int = 600  # optimiser steps (the time budget may stop earlier)
    max_minutes: float = 12.0  # CPU-time budget in minutes, all threads (0 = none)
    stop_at: int = 0  # stop after this step with the schedule of `steps` (0 = at `steps`): repeats a budget-stopped run
    batch: int = 16  # crops per step (the relational constraint needs B >= 2)
    lr: float = 2e-3  # AdamW peak learning rate (warm-up, cosine decay)
    weight_decay: float = 1e-4  # AdamW weight decay
    teacher: str = "efficientnet-lite0"  # efficientnet-lite0 | clip-rn50
    teacher_checkpoint: str = ""  # local CLIP checkpoint (clip-rn50) or weights file override
    alignment: bool = True  # DCSD constraint 1: degraded student vs clean teacher
    relational: bool = True  # DCSD constraint 2: batch similarity structure
    w_align: float = 1.0  # weight of the alignment loss
    w_rel: float = 1.0  # weight of the relational loss
    p_degrade: float = 0.8  # share of student inputs that are degraded
    severity_max: int = 5  # degradation severities are drawn from 1..severity_max
    crop_min: float = 0.3  # smallest crop side, as a share of the frame side
    pca_crops: int = 384  # clean crops used to fit the teacher projection
    input_size: int = 128  # student input R
    dim: int = 128  # semantic vector length D; the tracker fuses this width (128 as shipped): keep them equal
    pets_last: int = 600  # last PETS frame used (541-600 are the validation crops; 601-795 never)
    mot17: bool = True  # also use the MOT17-mini train frames
    data: str = str(DEFAULT_DATA)  # root of the real data (PETS09-S2L1, MOT17-mini)
    out: str = "runs/train/student"  # run folder: last.pt (resumable) and student.pt
    threads: int = 2  # torch threads
    save_every: int = 50  # steps between checkpoints
    resume: bool = False  # continue from <out>/last.pt

    def __post_init__(self) -> None:
        check_config(self, {"steps": 0, "stop_at": 0, "batch": 2 if self.relational else 1, "pca_crops": 2, "input_size": 16,
                            "dim": 1, "threads": 1, "save_every": 0}, ("p_degrade",), "severity_max",
                     {"pets_last": PETS_TRAIN_LAST})
        if not 0.0 < self.crop_min <= 1.0 or not (self.alignment or self.relational):
            raise ValueError(f"expected 0 < --crop-min <= 1 and --alignment or --relational on, got crop_min "
                             f"{self.crop_min}, alignment {self.alignment}, relational {self.relational}")


def _crop(img: np.ndarray, rng: np.random.Generator, smin: float) -> np.ndarray:
    h, w = img.shape[:2]
    s = rng.uniform(smin, 1.0)
    ch, cw = max(int(h * s * rng.uniform(0.85, 1.15)), 16), max(int(w * s), 16)
    ch = min(ch, h)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    c = img[y : y + ch, x : x + cw]
    return c[:, ::-1] if rng.random() < 0.5 else c


def _to_tensor(imgs: list[np.ndarray], size: int) -> torch.Tensor:
    """List of (H,W,3) uint8 BGR -> (B,3,size,size) float32 0..255 (INTER_AREA resize)."""
    return torch.from_numpy(np.concatenate([student_input(i, (size, size)) for i in imgs]))


def make_batch(frames: list[TrainFrame], rng, cfg: StudentTrainConfig, teacher_size: int, deg):
    """(clean (B,3,Tt,Tt) for the teacher, degraded (B,3,R,R) for the student)."""
    crops = [_crop(frames[i].image, rng, cfg.crop_min) for i in rng.integers(0, len(frames), cfg.batch)]
    degraded = [random_degrade(c, rng, cfg.p_degrade, cfg.severity_max, deg) for c in crops]
    return _to_tensor(crops, teacher_size), _to_tensor(degraded, cfg.input_size)


def fit_projection(teacher, frames, rng, cfg: StudentTrainConfig) -> TeacherProjection:
    feats = []
    for _ in range(max(cfg.pca_crops // cfg.batch, 1)):
        crops = [_crop(frames[i].image, rng, cfg.crop_min) for i in rng.integers(0, len(frames), cfg.batch)]
        feats.append(teacher(_to_tensor(crops, teacher.input_size)))
    return TeacherProjection(teacher.dim, cfg.dim).fit(torch.cat(feats))


@torch.no_grad()
def evaluate(student, teacher, proj, frames, cfg: StudentTrainConfig, deg, seed: int = 123) -> dict:
    """Mean cosine to the projected clean teacher: student on clean and on degraded crops, and the
    teacher itself on degraded crops (how much degradation moves the teacher)."""
    rng = np.random.default_rng(seed)
    clean, degraded_s, degraded_t, gram, n = 0.0, 0.0, 0.0, 0.0, 4
    student.eval()
    for _ in range(n):
        crops = [_crop(frames[i].image, rng, cfg.crop_min) for i in rng.integers(0, len(frames), cfg.batch)]
        degr = [random_degrade(x, rng, 1.0, cfg.severity_max, deg) for x in crops]
        tp = proj(teacher(_to_tensor(crops, teacher.input_size)))
        sd = student(_to_tensor(degr, cfg.input_size))
        clean += float((student(_to_tensor(crops, cfg.input_size)) * tp).sum(-1).mean()) / n
        degraded_s += float((sd * tp).sum(-1).mean()) / n
        degraded_t += float((proj(teacher(_to_tensor(degr, teacher.input_size))) * tp).sum(-1).mean()) / n
        gram += _gram_corr(sd, tp) / n
    student.train()
    return {"cos_student_clean": clean, "cos_student_degraded": degraded_s, "cos_teacher_degraded": degraded_t,
            "gram_corr_degraded": gram}


def _gram_corr(s: torch.Tensor, t: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal (B, B) cosine matrices of student and projected
    teacher: how well the student keeps which crops are alike (rotation-invariant, so it also
    scores a relational-only student, whose coordinates need not match the teacher's)."""
    a, b = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    off = ~torch.eye(len(a), dtype=torch.bool)
    x, y = (a @ a.T)[off], (b @ b.T)[off]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-9))


def validate_file(path: str | Path, seed: int = 123) -> dict:
    """Re-run the PETS 541-600 validation of a saved student (its own projection and train config)
    with the current evaluation code, so students trained at different times compare."""
    from vsdmot.models.checkpoint import load_checkpoint
    from vsdmot.models.student import load_student

    c = load_checkpoint(path)
    cfg = StudentTrainConfig(**{k: v for k, v in c["train_config"].items() if k in StudentTrainConfig.__dataclass_fields__})
    teacher = make_teacher(cfg.teacher, cfg.teacher_checkpoint or None)
    proj = TeacherProjection(teacher.dim, cfg.dim)
    proj.load_state_dict(c["extra"]["projection"])
    _, val = _split(load_train_frames(Path(cfg.data), last=cfg.pets_last, mot17=cfg.mot17))
    return evaluate(load_student(path)[0], teacher, proj, val, cfg, degrade_fn(), seed)


def _split(frames: list[TrainFrame]) -> tuple[list[TrainFrame], list[TrainFrame]]:
    """Hold out PETS 541-600 (inside the training range) to report a validation cosine."""
    held = [f.source.startswith("PETS") and int(f.source.split(":")[1]) > 540 for f in frames]
    return [f for f, h in zip(frames, held) if not h], [f for f, h in zip(frames, held) if h]


def train(cfg: StudentTrainConfig) -> Path:
    rng = setup(cfg.seed, cfg.threads)
    out = out_dir(cfg.out)
    train_frames, val_frames = _split(load_train_frames(Path(cfg.data), last=cfg.pets_last, mot17=cfg.mot17))
    val_name = "PETS 541-%d" % cfg.pets_last if val_frames else "training crops: no PETS frame above 540 in this run"
    val_frames = val_frames or train_frames  # tiny runs: report on training crops
    deg = degrade_fn() if cfg.p_degrade > 0 else None
    teacher = make_teacher(cfg.teacher, cfg.teacher_checkpoint or None)
    scfg = StudentConfig(input_size=cfg.input_size, dim=cfg.dim)
    student = StudentEncoder(scfg).train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    dcfg = DcsdConfig(cfg.alignment, cfg.relational, cfg.w_align, cfg.w_rel)
    start, proj = 0, None
    if resuming(out / "last.pt", cfg.resume):
        start = resume(out / "last.pt", student, opt, cfg, rng)
        proj = TeacherProjection(teacher.dim, cfg.dim)
        ck = torch.load(out / "last.pt", weights_only=True)
        proj.load_state_dict(ck.get("extra", {}).get("projection") or ck["meta"]["projection"])
    proj = proj or fit_projection(teacher, train_frames, rng, cfg)

    def step(k: int) -> dict:
        cosine_lr(opt, cfg.lr, k, cfg.steps)
        clean, degraded = make_batch(train_frames, rng, cfg, teacher.input_size, deg)
        loss, parts = dcsd_loss(student(degraded), proj(teacher(clean)), dcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return parts

    def meta(k: int) -> dict:
        return {"stage": "student", "step": k, "teacher": teacher.name, "teacher_weights": Path(teacher.weights).name,
                "dcsd": asdict(dcfg), "data": data_note(cfg.pets_last, cfg.mot17, every=2)}

    extra = {"projection": proj.state_dict()}  # teacher -> semantic space (mean, basis)
    save = lambda k: save_checkpoint(out / "last.pt", student, scfg, cfg, opt, k, meta(k), extra, rng)  # noqa: E731
    done = run_steps(step, start, cfg.steps, cfg.max_minutes, save, cfg.save_every, "student", cfg.stop_at)
    metrics = evaluate(student, teacher, proj, val_frames, cfg, deg)
    log.info("student validation (%s): %s", val_name, {k: round(v, 4) for k, v in metrics.items()})
    return save_checkpoint(out / "student.pt", student, scfg, cfg, None, done, {**meta(done), "validation": metrics}, extra)


def add_arguments(parser) -> None:
    from vsdmot.models.trainloop import add_config_args

    add_config_args(parser, StudentTrainConfig)


def run(args) -> int:
    from vsdmot.models.trainloop import config_from_args

    path = train(config_from_args(StudentTrainConfig, args))
    print(f"student weights: {path}")
    return 0
