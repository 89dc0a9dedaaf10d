"""Time-varying degradation schedules: which preset and severity each frame of a clip gets.

`mixed` alternates clean, mild (severity 1-2) and severe (4-5) stretches of a few seconds, each
stretch with one random preset, as a camera drifting through dusk, rain or a congested uplink.
The first three stretches are the three kinds in random order, so any clip of three stretches or
more shows all of them; after that a stretch never repeats the previous kind.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from .degrade import PRESETS, SEVERITIES

SCHEDULES = ("mixed",)
KINDS = ("clean", "mild", "severe")


@dataclass(frozen=True, slots=True)
class FrameState:
    """The degradation one frame gets. JSON: {"preset": str | null, "severity": int}."""

    preset: str | None  # None = clean (the frame is passed through)
    severity: int = 0  # 1..5; 0 when clean

    def __post_init__(self) -> None:
        if (self.preset is None) != (self.severity == 0) or self.severity not in (0, *SEVERITIES):
            raise ValueError(f"FrameState: expected (None, 0) or (preset, 1..5), got ({self.preset!r}, {self.severity!r})")

    @property
    def kind(self) -> str:
        return "clean" if self.preset is None else "mild" if self.severity <= 2 else "severe" if self.severity >= 4 else "moderate"

    def to_json(self) -> dict:
        return asdict(self)


CLEAN = FrameState(None, 0)


@dataclass(frozen=True, slots=True)
class MixedConfig:
    stretch_s: tuple[float, float] = (2.0, 6.0)  # stretch length range, seconds
    mild: tuple[int, ...] = (1, 2)  # severities of a mild stretch
    severe: tuple[int, ...] = (4, 5)  # severities of a severe stretch
    presets: tuple[str, ...] = PRESETS  # presets drawn from (h264 is coded per stretch)


def _stretch_state(kind: str, rng: np.random.Generator, cfg: MixedConfig) -> FrameState:
    if kind == "clean":
        return CLEAN
    sevs = cfg.mild if kind == "mild" else cfg.severe
    return FrameState(cfg.presets[int(rng.integers(len(cfg.presets)))], int(sevs[int(rng.integers(len(sevs)))]))


def _kinds(rng: np.random.Generator):
    """clean/mild/severe: a random permutation first, then never the same kind twice in a row."""
    order = [KINDS[i] for i in rng.permutation(3)]
    yield from order
    last = order[-1]
    while True:
        last = [k for k in KINDS if k != last][int(rng.integers(2))]
        yield last


def mixed_schedule(n_frames: int, fps: float, seed: int, cfg: MixedConfig = MixedConfig()) -> list[FrameState]:
    """n_frames states in stretches of cfg.stretch_s seconds. A longer clip with the same seed and
    fps gets the same states on the frames they share (the draw does not depend on n_frames)."""
    if n_frames < 0 or fps <= 0:
        raise ValueError(f"mixed_schedule: expected n_frames >= 0 and fps > 0, got {n_frames}, {fps}")
    unknown = set(cfg.presets) - set(PRESETS)
    if unknown:
        raise ValueError(f"mixed_schedule: unknown presets {sorted(unknown)}: expected some of {', '.join(PRESETS)}")
    rng = np.random.default_rng([int(seed), 0x5C4ED])
    states: list[FrameState] = []
    for kind in _kinds(rng):
        if len(states) >= n_frames:
            break
        length = max(int(round(rng.uniform(*cfg.stretch_s) * fps)), 1)
        states += [_stretch_state(kind, rng, cfg)] * length
    return states[:n_frames]


def schedule(name: str, n_frames: int, fps: float, seed: int) -> list[FrameState]:
    """A named schedule (SCHEDULES); ValueError naming the known ones otherwise."""
    if name != "mixed":
        raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    return mixed_schedule(n_frames, fps, seed)


def stretches(states: list[FrameState]) -> list[tuple[int, int, FrameState]]:
    """Runs of equal states as (first, stop, state), 0-based half-open positions."""
    out, pos = [], 0
    for state, run in itertools.groupby(states):
        n = sum(1 for _ in run)
        out.append((pos, pos + n, state))
        pos += n
    return out
