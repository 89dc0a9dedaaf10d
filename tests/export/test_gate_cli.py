"""`vsdmot-export` flags of the accuracy gate: the rule and the null-bundle control."""

from __future__ import annotations

import pytest

from vsdmot.export import cli
from vsdmot.export.accuracy_gate import GateConfig


def gate_of(*argv: str):
    return cli.config_from_args(cli.build_parser().parse_args([*argv, "--out", "x"])).gate


@pytest.mark.parametrize("argv, rule, control", [
    ((), GateConfig.rule, False),
    (("--gate-rule", "per-case"), "per-case", False),
    (("--gate-rule", "mean"), "mean", False),
    (("--gate-control",), GateConfig.rule, True),
    (("--gate-rule", "pooled", "--gate-control", "--max-hota-drop", "0.5"), "pooled", True),
])
def test_gate_flags(argv, rule, control):
    g = gate_of(*argv)
    assert (g.rule, g.control) == (rule, control)


def test_unknown_gate_rule_is_refused(capsys):
    with pytest.raises(SystemExit):
        gate_of("--gate-rule", "worst")
    assert "--gate-rule" in capsys.readouterr().err
