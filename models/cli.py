"""`vsdmot-train`: train the project's networks, one subcommand per stage (outputs in runs/train/<stage>/)."""

from __future__ import annotations

from collections.abc import Sequence

from vsdmot._cli import build_parser, run_main

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help). Add a stage here.
COMMANDS = {
    "detector": ("vsdmot.models.train_detector", "train the appearance projection (--no-freeze-detector: also self-distil on degraded frames)"),
    "student": ("vsdmot.models.train_student", "distil the teacher into the student semantic encoder (DCSD)"),
    "quality": ("vsdmot.models.train_quality", "fit the quality head (task-aware q) on degraded frames"),
    "tracker": ("vsdmot.models.train_tracker", "train the end-to-end tracker head and DSWR"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser("vsdmot-train", __doc__.splitlines()[0], COMMANDS)
    return run_main(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
