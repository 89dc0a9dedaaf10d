"""`vsdmot-train STAGE` with a bad flag value: one clear line and exit 2, before any work."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from vsdmot.models.cli import main  # noqa: E402


@pytest.mark.parametrize("argv, names", [
    (["tracker", "--log-every", "0"], "--log-every"),  # was ZeroDivisionError after the first step
    (["tracker", "--save-every", "0"], "--save-every"),
    (["tracker", "--tbptt", "0"], "--tbptt"),  # was ZeroDivisionError inside the first rollout
    (["tracker", "--batch", "0"], "--batch"),
    (["tracker", "--real-share", "1.5"], "--real-share"),
    (["tracker", "--synth-semantics", "student"], "--synth-semantics"),
    (["quality", "--pets-every", "0"], "--pets-every"),  # was ZeroDivisionError while decoding PETS
    (["quality", "--severity-max", "0"], "--severity-max"),
    (["quality", "--views", "0"], "--views"),
    (["student", "--batch", "1"], "--batch"),  # the relational constraint needs pairs
    (["student", "--severity-max", "9"], "--severity-max"),
    (["student", "--no-alignment", "--no-relational"], "--alignment"),
    (["student", "--p-degrade", "-0.1"], "--p-degrade"),
    (["detector", "--train-size", "0"], "--train-size"),
    (["detector", "--severity-max", "0"], "--severity-max"),
])
def test_bad_values_are_one_line(argv, names, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vsdmot-train: error: ") and names in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_shipped_train_configs_still_load():
    """The checks accept the configs the shipped weights were trained with."""
    from vsdmot.models import WEIGHTS
    from vsdmot.models.checkpoint import load_checkpoint
    from vsdmot.models.train_student import StudentTrainConfig

    c = load_checkpoint(WEIGHTS / "student.pt")["train_config"]
    StudentTrainConfig(**{k: v for k, v in c.items() if k in StudentTrainConfig.__dataclass_fields__})
