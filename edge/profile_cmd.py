"""Placeholder while the profile command is written (issue 6)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise ValueError("profile: not implemented yet")
