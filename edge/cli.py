"""`vsdmot-edge`: run, profile, serve and inspect the tracker on a device. Never imports torch
(except `run --backend torch`, which loads the reference lazily)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from vsdmot._cli import build_parser, run_main

COMMANDS = {
    "run": ("vsdmot.edge.run_cmd", "track a camera, stream, video, image folder or sequence"),
    "profile": ("vsdmot.edge.profile_cmd", "measure steady-state latency, FPS and energy; write a report"),
    "service": ("vsdmot.edge.service_cmd", "generate, install or inspect the systemd service"),
    "doctor": ("vsdmot.edge.doctor_cmd", "say what this device has (JetPack, TensorRT, cameras, power rails)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vsdmot-edge", __doc__.splitlines()[0], COMMANDS)
    return run_main(parser, argv)


def console_main() -> int:
    """The `vsdmot-edge` script: `main`, then, when a live source's reader was left blocked inside
    FFmpeg (a stop during a UDP outage), an exit that skips the interpreter's teardown: tearing
    down its capture under it aborted the process ("terminate called without an active
    exception", exit 134, a core dump and a `failed` unit under systemd) after every output had
    been closed. In-process callers (tests) use `main`."""
    code = 1
    try:
        code = main()
        return code
    finally:
        from vsdmot.edge.sources import readers_left_blocked

        if readers_left_blocked():
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a reader that has gone (a closed pipe): nothing more to say
                    pass
            os._exit(code)
