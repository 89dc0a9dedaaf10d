"""DCSD: Dual-Constraint Semantic Distillation losses. Each constraint can be switched off.

Student s_i = student(degraded frame i), shape (B, D), L2-normalised; teacher t_i = teacher(clean
frame i), shape (B, Dt). The teacher is mapped into the student's space by a fixed linear
projection P (Dt -> D: the teacher features' mean and top-D principal directions, measured on
clean training frames), so both constraints compare like with like and nothing trainable sits on
the teacher side (no collapse).

1. Alignment: 1 - cos(s_i, normalize(P(t_i))), mean over i. The student must recover, from
   the degraded frame, what the teacher sees on the clean one: degradation invariance.
2. Relational: the student's (B, B) cosine-similarity matrix matches the teacher's (in P's
   space), mean squared error off the diagonal. It transfers the *structure* of the teacher's
   space (which frames are alike), which is what a tracker fusing a global vector can use, and
   it holds even where absolute alignment is hard (severe degradation).
Both are zero when the student equals the projected teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DcsdConfig:
    alignment: bool = True  # constraint 1: degraded-student vs clean-teacher cosine
    relational: bool = True  # constraint 2: batch similarity structure
    w_align: float = 1.0  # weight of the alignment loss
    w_rel: float = 1.0  # weight of the relational loss


class TeacherProjection(nn.Module):
    """Fixed Dt -> D map: centre by the teacher mean, project on the top-D principal directions."""

    def __init__(self, teacher_dim: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(teacher_dim))
        self.register_buffer("basis", torch.eye(teacher_dim, dim))  # (Dt, D)

    @torch.no_grad()
    def fit(self, feats: torch.Tensor) -> TeacherProjection:
        """feats (N, Dt) clean-frame teacher features, N >= 2."""
        if feats.ndim != 2 or feats.shape[0] < 2 or feats.shape[1] != self.mean.numel():
            raise ValueError(f"TeacherProjection.fit: expected (N>=2, {self.mean.numel()}), got {tuple(feats.shape)}")
        self.mean.copy_(feats.mean(0))
        _, _, v = torch.linalg.svd(feats - self.mean, full_matrices=False)  # v: (min(N,Dt), Dt)
        d = self.basis.shape[1]
        basis = torch.zeros_like(self.basis)
        basis[:, : min(d, v.shape[0])] = v[:d].T
        self.basis.copy_(basis)
        return self

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize((t - self.mean) @ self.basis, dim=-1)  # (B, D)


def alignment_loss(s: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
    """s, tp: (B, D) L2-normalised. Mean of 1 - cos."""
    return (1.0 - (s * tp).sum(-1)).mean()


def relational_loss(s: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
    """MSE between (B, B) cosine matrices, off the diagonal. Zero for B < 2."""
    b = s.shape[0]
    if b < 2:
        return s.sum() * 0.0
    off = ~torch.eye(b, dtype=torch.bool, device=s.device)
    return ((s @ s.T - tp @ tp.T)[off] ** 2).mean()


def dcsd_loss(s: torch.Tensor, tp: torch.Tensor, cfg: DcsdConfig = DcsdConfig()) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts (floats, for logging). s: student (B,D), tp: projected teacher (B,D)."""
    if s.shape != tp.shape:
        raise ValueError(f"dcsd: student {tuple(s.shape)} and projected teacher {tuple(tp.shape)} differ")
    if not (cfg.alignment or cfg.relational):
        raise ValueError("dcsd: at least one constraint (alignment, relational) must be on")
    total, parts = s.sum() * 0.0, {}
    if cfg.alignment:
        la = alignment_loss(s, tp)
        total, parts["align"] = total + cfg.w_align * la, la.item()
    if cfg.relational:
        lr = relational_loss(s, tp)
        total, parts["rel"] = total + cfg.w_rel * lr, lr.item()
    return total, parts
