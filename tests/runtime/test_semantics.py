"""The semantic policy: skip / reuse / fresh decisions, hysteresis, counts, and the student resize."""

from __future__ import annotations

import numpy as np
import pytest

from vsdmot.runtime.config import SemanticsConfig
from vsdmot.runtime.semantics import SemanticPolicy, Student
from vsdmot.runtime.types import TensorSpec


class FakeStudentBackend:
    """Records what it was fed; returns a vector that encodes the call number."""

    def __init__(self, size=(32, 32)):
        self.inputs = {"image": TensorSpec("image", (1, 3, *size), "float32")}
        self.outputs = {"semantic": TensorSpec("semantic", (1, 8), "float32")}
        self.fed: list[np.ndarray] = []

    def infer(self, feed):
        self.fed.append(feed["image"])
        return {"semantic": np.full((1, 8), len(self.fed), np.float32)}

    def close(self):
        pass


IMG = np.zeros((48, 64, 3), np.uint8)
CFG = SemanticsConfig(policy="auto", eps_off=0.1, eps_on=0.2, delta=0.05, max_age=3)


def run(cfg, qw):
    backend = FakeStudentBackend()
    policy = SemanticPolicy(cfg, Student(backend))
    states = [policy.get(IMG, q, w)[1] for q, w in qw]
    return "".join(s[0] for s in states), policy, backend


CASES = [  # (policy, [(q, w) ...], expected states as initials f/r/s)
    ("never", [(0.2, 0.9)] * 3, "sss"),
    ("always", [(0.9, 0.0)] * 3, "fff"),
    ("auto", [(0.9, 0.0)] * 3, "sss"),  # clean: w below eps, skipped
    ("auto", [(0.3, 0.5)] * 6, "frrfrr"),  # stable quality: reuse until max_age (3)
    ("auto", [(0.3, 0.5), (0.32, 0.5), (0.4, 0.5), (0.41, 0.5)], "frfr"),  # q moved > delta: fresh
    ("auto", [(0.5, 0.15)] * 2, "ss"),  # between eps_off and eps_on while off: stays off
    ("auto", [(0.3, 0.25), (0.3, 0.15), (0.3, 0.12), (0.3, 0.05), (0.3, 0.15), (0.3, 0.25)], "frrssf"),
]


@pytest.mark.parametrize("policy,qw,expected", CASES)
def test_policy_table(policy, qw, expected):
    cfg = SemanticsConfig(**{**CFG.__dict__, "policy": policy})
    got, p, backend = run(cfg, qw)
    assert got == expected
    assert p.counts.as_dict() == {s: expected.count(s[0]) for s in ("fresh", "reused", "skipped")}
    assert len(backend.fed) == expected.count("f")


def test_hysteresis_does_not_flap():
    # w oscillating around a single threshold would toggle every frame; with a band it does not
    w = [0.25] + [0.09, 0.11] * 10
    got, _, _ = run(CFG, [(0.3, x) for x in w])
    assert got == "f" + "s" * 20


def test_returned_vector_is_cached_one_and_none_when_skipped():
    policy = SemanticPolicy(CFG, Student(FakeStudentBackend()))
    v1, _ = policy.get(IMG, 0.3, 0.5)
    v2, s2 = policy.get(IMG, 0.3, 0.5)
    assert s2 == "reused" and v2 is v1 and v1.shape == (1, 8)
    assert policy.get(IMG, 0.3, 0.0) == (None, "skipped")
    policy.reset()
    assert policy.get(IMG, 0.3, 0.5)[1] == "fresh"


def test_student_gets_small_resize_in_its_spec():
    backend = FakeStudentBackend(size=(24, 40))  # (H, W) = (24, 40)
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Student(backend)(img)
    (fed,) = backend.fed
    assert fed.shape == (1, 3, 24, 40) and fed.dtype == np.float32
    assert 0 <= fed.min() and fed.max() <= 255


@pytest.mark.parametrize("shape", [(1, 3, -1, -1), (1, 1, 32, 32), (1, 3, 32)])
def test_student_refuses_bad_input_spec(shape):
    backend = FakeStudentBackend()
    backend.inputs = {"image": TensorSpec("image", shape, "float32")}
    with pytest.raises(ValueError, match="student input 'image'"):
        Student(backend)


def test_policy_needs_a_student_unless_never():
    SemanticPolicy(SemanticsConfig(policy="never"), None)
    with pytest.raises(ValueError, match="needs a student"):
        SemanticPolicy(SemanticsConfig(policy="auto"), None)
