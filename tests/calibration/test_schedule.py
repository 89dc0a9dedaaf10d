"""Mixed schedules: clean, mild and severe stretches of a few seconds, seeded, JSON-serialisable."""

from __future__ import annotations

import json

import pytest

from vsdmot.calibration.degrade import PRESETS
from vsdmot.calibration.schedule import CLEAN, FrameState, MixedConfig, mixed_schedule, schedule, stretches

FPS = 25.0


def test_structure_of_a_long_mixed_schedule():
    states = mixed_schedule(3000, FPS, seed=3)  # 2 minutes
    runs = stretches(states)
    assert len(states) == 3000 and sum(b - a for a, b, _ in runs) == 3000
    assert {s.kind for _, _, s in runs[:3]} == {"clean", "mild", "severe"}  # all three early
    for (a, b, s), (_, _, nxt) in zip(runs, runs[1:]):
        assert 2.0 * FPS <= b - a <= 6.0 * FPS, f"stretch {a}-{b} is {(b - a) / FPS:.1f} s"
        assert s.kind != nxt.kind
    assert 0 < runs[-1][1] - runs[-1][0] <= 6.0 * FPS  # the last one may be cut short
    for _, _, s in runs:
        assert s == CLEAN or s.preset in PRESETS
        assert s.kind != "moderate" and (s.severity in (1, 2)) == (s.kind == "mild")
    assert len({s.preset for _, _, s in runs}) >= 5  # random presets, not one


def test_seeded_and_prefix_stable():
    a = mixed_schedule(500, FPS, seed=1)
    assert a == mixed_schedule(500, FPS, seed=1)
    assert a != mixed_schedule(500, FPS, seed=2)
    assert mixed_schedule(800, FPS, seed=1)[:500] == a  # a longer clip shares the frames it has


def test_stretch_seconds_follow_the_frame_rate():
    runs = stretches(mixed_schedule(700, 7.0, seed=0))  # PETS09 runs at 7 fps
    assert all(14 <= b - a <= 42 for a, b, _ in runs[:-1])


def test_json_round_trip():
    states = mixed_schedule(200, FPS, seed=4)
    text = json.dumps([s.to_json() for s in states])
    assert [FrameState(**d) for d in json.loads(text)] == states
    assert json.loads(text)[0].keys() == {"preset", "severity"}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: FrameState(None, 3), r"expected \(None, 0\) or \(preset, 1..5\)"),
        (lambda: FrameState("jpeg", 0), r"expected \(None, 0\) or \(preset, 1..5\)"),
        (lambda: FrameState("jpeg", 6), r"expected \(None, 0\) or \(preset, 1..5\)"),
        (lambda: mixed_schedule(10, 0.0, 0), "expected n_frames >= 0 and fps > 0"),
        (lambda: mixed_schedule(10, FPS, 0, MixedConfig(presets=("fog",))), "unknown presets \\['fog'\\]"),
        (lambda: schedule("calm", 10, FPS, 0), "unknown schedule 'calm': expected one of mixed"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_short_and_empty_clips():
    assert mixed_schedule(0, FPS, 0) == []
    assert len(mixed_schedule(1, FPS, 0)) == 1
    assert schedule("mixed", 30, FPS, 9) == mixed_schedule(30, FPS, 9)
