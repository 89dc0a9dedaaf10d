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
        (["service", "status", "-v"], (I, D)),  # after a nested action too
        (["-v", "service", "unit"], (I, D)),
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


@pytest.mark.parametrize("flags, warned", [([], False), (["-v"], True)])
def test_a_stream_that_cannot_open_is_one_error_without_opencvs_warning(flags, warned):
    """OpenCV's `[ WARN:0@..] global cap.cpp:... can't be used to capture by name` sat above the
    run's own error line; FFmpeg's reason (`Connection refused`) stays."""
    import os
    import subprocess

    from helpers import EDGE_CLI, REPO

    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    done = subprocess.run([*EDGE_CLI, *flags, "run", "--source", "rtsp://127.0.0.1:1/none", "--health-listen", "off"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 1 and "cannot open" in done.stderr.splitlines()[-1]
    assert ("[ WARN" in done.stderr) == warned


@pytest.mark.parametrize("argv", [["run", "--rotate", "45"], ["run", "--max-frames", "abc"], ["service", "install", "--watchdog-sec", "x"]])
def test_a_bad_flag_value_is_one_line(argv, capsys):
    """argparse printed the whole usage (16 lines for `run`) before the error."""
    from vsdmot.edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"vsdmot-edge {argv[0]}") and err.rstrip().endswith("--help)")


def test_the_script_exits_past_a_reader_left_blocked(monkeypatch):
    """A stop during a UDP outage leaves the reader inside FFmpeg; the interpreter's teardown then
    aborted the process (exit 134) after the outputs were closed. The script exits without it."""
    from vsdmot.edge import cli, sources

    exits: list[int] = []
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    assert cli.console_main() == 0 and exits == []  # nothing blocked: the usual way out
    monkeypatch.setattr(sources, "_BLOCKED", ["udp://127.0.0.1:5000"])
    cli.console_main()
    assert exits == [0]

    def failing():
        raise ValueError("a main that raises")

    monkeypatch.setattr(cli, "main", failing)
    class Gone:  # stdout whose reader has gone
        def flush(self):
            raise BrokenPipeError

    monkeypatch.setattr(cli.sys, "stdout", Gone())
    with pytest.raises(ValueError):  # os._exit is a stand-in here: the raise goes on after it
        cli.console_main()  # neither the raise nor a closed stdout skips the exit past the blocked reader
    assert exits == [0, 1]
