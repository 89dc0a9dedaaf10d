"""vsdmot/_cli.py logging flags, through `vsdmot-edge`'s parser: INFO by default (what a run did),
-v debugs vsdmot, -vv every library, -q warnings only. `-v` used to change nothing visible:
the default was INFO already and `-v` and `-vv` both gave DEBUG, WARNING unreachable."""

from __future__ import annotations

import logging

import pytest

from vsdmot._cli import build_parser, log_level, run_main
from vsdmot.edge.cli import COMMANDS

D, I, W = logging.DEBUG, logging.INFO, logging.WARNING


@pytest.mark.parametrize(
    "argv, levels",
    [
        (["doctor"], (I, I)),
        (["-v", "doctor"], (I, D)),
        (["doctor", "-v"], (I, D)),  # after the subcommand too (it was 'unrecognized arguments')
        (["-vv", "doctor"], (D, D)),
        (["doctor", "-vv"], (D, D)),
        (["-q", "doctor"], (W, W)),
        (["doctor", "--quiet"], (W, W)),
        (["-q", "doctor", "-v"], (W, W)),  # quiet wins
    ],
)
def test_verbose_and_quiet_flags(argv, levels):
    args = build_parser("vsdmot-edge", "", COMMANDS).parse_args(argv)
    assert log_level(getattr(args, "verbose", 0), getattr(args, "quiet", 0)) == levels


def test_run_main_sets_the_levels(monkeypatch, capsys):
    import argparse

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as a console script starts; restored after
    monkeypatch.setattr(root, "level", root.level)
    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="count", default=0)  # a parser without -q (vsdmot-export's)

    def run(args):
        for name in ("vsdmot.edge.x", "onnxruntime"):
            logging.getLogger(name).debug("debug from %s", name)
            logging.getLogger(name).info("info from %s", name)

    parser.set_defaults(_run=run)
    for argv, shown in [([], ["info from vsdmot.edge.x", "info from onnxruntime"]),
                        (["-v"], ["debug from vsdmot.edge.x", "info from vsdmot.edge.x", "info from onnxruntime"])]:
        root.handlers = []
        assert run_main(parser, argv) == 0
        lines = capsys.readouterr().err.splitlines()
        assert [ln.split(": ", 1)[1] for ln in lines] == shown
    assert logging.getLogger("vsdmot").level == logging.NOTSET  # no logger level outlives the call
