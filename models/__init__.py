"""Torch networks (detector, tracker head, student encoder, DSWR head), DCSD losses and training.

This file imports nothing heavy: `WEIGHTS` is readable without torch.
"""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"  # the shipped, committed weights (models/weights/)
