"""Checkpoints that carry their config (nanoGPT style) and resume a run exactly where it stopped.

A checkpoint is a plain dict saved with torch.save and loaded with weights_only=True:
  model_config: dict   the network's frozen config (rebuilds the model without any other file)
  train_config: dict   the stage's frozen training config (resume refuses a different one)
  model: state_dict    fp32 weights
  optimizer: state_dict | None, step: int, rng: torch RNG state | None
  rng_numpy: str | None the stage's numpy Generator state (JSON), so a resumed run draws the same data
  meta: dict           provenance, metrics, teacher, data (JSON-able: bundle manifests copy it)
  extra: dict          tensors a stage needs besides the model (e.g. the student's teacher projection)
Shipped weights (`models/weights/*.pt`) use the same layout without optimizer and rng.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, model: nn.Module, model_config: Any, train_config: Any = None,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0, meta: dict | None = None,
                    extra: dict | None = None, np_rng: np.random.Generator | None = None) -> Path:
    """Write atomically (tmp + rename) so an interrupted save never corrupts the last checkpoint.
    `np_rng`: the numpy Generator the stage draws its batches from (restored by `resume`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model_config": _as_dict(model_config),
        "train_config": _as_dict(train_config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": torch.get_rng_state() if optimizer is not None else None,
        "rng_numpy": json.dumps(np_rng.bit_generator.state) if np_rng is not None else None,
        "meta": meta or {},
        "extra": extra or {},
    }
    return save_atomic(ckpt, path)


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save through a temporary file and a rename: a kill mid-write leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"checkpoint {path}: expected a vsdmot checkpoint dict with model and model_config")
    return ckpt


def load_model_file(path: str | Path, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """Rebuild the network from the file's own config, load its weights. Returns (model.eval(), meta)."""
    ckpt = load_checkpoint(path)
    model = build(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt.get("meta", {})


def resume(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, train_config: Any,
           np_rng: np.random.Generator | None = None) -> int:
    """Load model, optimizer and RNGs (torch, and `np_rng` when the checkpoint saved one) from `path`;
    return the step to continue from."""
    ckpt = load_checkpoint(path)
    want, got = _as_dict(train_config), ckpt.get("train_config")
    got = got or {}
    diff = {k for k in set(want) & set(got) if k not in _RESUMABLE and got[k] != want[k]}  # new fields: defaults
    if diff:
        raise ValueError(f"checkpoint {path}: training config differs in {sorted(diff)}; use a new --out")
    model.load_state_dict(ckpt["model"])
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("rng") is not None:
        torch.set_rng_state(ckpt["rng"])
    if np_rng is not None and ckpt.get("rng_numpy"):
        np_rng.bit_generator.state = json.loads(ckpt["rng_numpy"])
    log.info("resumed %s at step %d", path, ckpt["step"])
    return int(ckpt["step"])


# Fields that may change between a run and its resumption (budgets, paths, verbosity).
_RESUMABLE = {"steps", "max_minutes", "stop_at", "out", "threads", "log_every", "save_every", "resume", "init"}


def _as_dict(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(cfg)
