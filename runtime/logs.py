"""Log a line once per process. Setups repeat: an export's gate and the benchmarks build a
pipeline (three networks, a detector) per case, about twenty times, and each said the same."""

from __future__ import annotations

import functools
import logging


@functools.lru_cache(maxsize=256)
def log_once(logger: str, level: int, message: str) -> None:
    """`logging.getLogger(logger).log(level, message)` the first time this (logger, level, message) comes."""
    logging.getLogger(logger).log(level, message)
