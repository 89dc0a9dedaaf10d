"""Plumbing shared by the training stages: seeds, threads, a budgeted tqdm loop that checkpoints
and resumes, and the run folder (`runs/train/<stage>/`: last.pt, and the final model file)."""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from vsdmot._cli import handling
from vsdmot.splits import held_out_text
from tqdm import tqdm

log = logging.getLogger(__name__)


def setup(seed: int, threads: int) -> np.random.Generator:
    """Seed python, numpy and torch; cap torch threads (shared CPU). Returns the numpy RNG."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    return np.random.default_rng(seed)


def run_steps(step_fn: Callable[[int], dict], start: int, steps: int, max_minutes: float,
              save_fn: Callable[[int], None], save_every: int, desc: str, stop_at: int = 0) -> int:
    """Call step_fn(step) for step in [start, steps) until the CPU-time budget ends, or [start,
    stop_at) when `stop_at` is given (the schedules still span `steps`).

    The budget is this process's CPU time (all threads), not wall time, so a run does the same
    work on a busy shared machine as on an idle one. Where it stops depends on the machine's
    speed, so the log names the step and the flags that repeat the run without the budget.

    Saves every `save_every` steps and at the end (so a stopped run resumes from its last save).
    Ctrl-C or SIGTERM finishes the step in hand, saves, and exits (130 / 143); a second one stops at
    once. Returns the number of steps completed in total.
    """
    t0, step = time.process_time(), start
    end = min(steps, stop_at) if stop_at else steps
    bar = tqdm(total=end, initial=start, desc=desc, dynamic_ncols=True, mininterval=2.0)
    with _stop_requests(desc) as stop:
        while step < end and not stop:
            if max_minutes > 0 and time.process_time() - t0 > max_minutes * 60:
                log.warning("%s: CPU budget of %g min reached at step %d of %d; to repeat this run exactly: "
                            "--steps %d --stop-at %d --max-minutes 0", desc, max_minutes, step, steps, steps, step)
                break
            parts = step_fn(step)
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()}, refresh=False)
            if save_every > 0 and step % save_every == 0:
                save_fn(step)
        bar.close()
        save_fn(step)
    if stop:
        log.warning("%s: stopped and saved at step %d; the same command with --resume continues from it", desc, step)
        raise SystemExit(128 + stop[0])
    return step


@contextlib.contextmanager
def _stop_requests(desc: str) -> Iterator[list[int]]:
    """A list that gets the signal number of a Ctrl-C or SIGTERM (main thread only), so the loop
    stops between steps instead of losing every step since the last save (up to 50, ~20 min)."""
    stop: list[int] = []

    def request(signum, frame):
        if stop:
            raise KeyboardInterrupt  # a second request: now, unsaved
        stop.append(signum)
        log.warning("%s: finishing this step, then saving (again to stop at once, unsaved)", desc)

    with handling((signal.SIGINT, signal.SIGTERM), request):
        yield stop


def cosine_lr(opt: torch.optim.Optimizer, base: float | tuple[float, ...], step: int, total: int, warmup: int = 20) -> None:
    """Linear warm-up then cosine decay; `base` per param group (or one for all)."""
    f = min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(step / max(total, 1), 1.0)))
    bases = base if isinstance(base, tuple) else (base,) * len(opt.param_groups)
    for g, b in zip(opt.param_groups, bases):
        g["lr"] = float(b * f)


def check_config(cfg, at_least: dict[str, float] | None = None, shares: tuple[str, ...] = (),
                 severity: str = "", at_most: dict[str, float] | None = None) -> None:
    """ValueError naming the flag of the first field out of range: `at_least` and `at_most` map a
    field to its bound, `shares` lie in [0, 1], `severity` (a field name) in 1..5 (calibration.degrade's)."""
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    for name, lo in (at_least or {}).items():
        if getattr(cfg, name) < lo:
            raise ValueError(f"{flag(name)}: expected >= {lo}, got {getattr(cfg, name)}")
    for name, hi in (at_most or {}).items():  # PETS09-S2L1 frames past 600 are held out: clamping hid it
        if getattr(cfg, name) > hi:
            raise ValueError(f"{flag(name)}: expected <= {hi} ({held_out_text()} are held out), "
                             f"got {getattr(cfg, name)}")
    for name in shares:
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{flag(name)}: expected a share in [0, 1], got {getattr(cfg, name)}")
    if severity and not 1 <= getattr(cfg, severity) <= 5:
        raise ValueError(f"{flag(severity)}: expected a severity 1..5, got {getattr(cfg, severity)}")


def resuming(saved: Path, resume: bool) -> bool:
    """Whether to continue from `saved` (a run's last.pt or samples): with --resume and the file
    there. Without --resume an existing one is replaced as the run goes, which is said, not silent:
    re-running a crashed stage's command started it over."""
    if saved.exists() and not resume:
        log.warning("%s exists: this run starts over and replaces it (--resume continues from it)", saved)
    return resume and saved.exists()


def out_dir(path: str) -> Path:
    """The run folder, made if missing; ValueError naming --out when a file stands there or on its way."""
    p = Path(path)
    blocker = next((a for a in (p, *p.parents) if a.exists() and not a.is_dir()), None)
    if blocker is not None:  # it said "[Errno 17] File exists"
        raise ValueError(f"--out {path}: {blocker} is a file; expected a folder for the run")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _field_help(cls: type) -> dict[str, str]:
    """One-line field comments of a config dataclass, read from its source."""
    import inspect
    import re

    src = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", src, re.M)}


def add_config_args(parser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """--field-name for every field of a frozen config dataclass (bools: --x / --no-x)."""
    import argparse
    import dataclasses

    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, h = "--" + f.name.replace("_", "-"), f"{helps.get(f.name, '')} (default: {f.default})"
        h = h.replace("%", "%%")  # argparse %-formats help: a comment's '50-100 %' broke --help
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=h)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=h)


def config_from_args(cls: type, args) -> object:
    import dataclasses

    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
