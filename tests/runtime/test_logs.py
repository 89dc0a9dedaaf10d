"""log_once: one line per (logger, level, message) per process."""

from __future__ import annotations

import logging

from vsdmot.runtime.logs import log_once


def test_a_repeated_line_is_logged_once(caplog):
    log_once.cache_clear()
    with caplog.at_level(logging.INFO, logger="vsdmot.test"):
        for _ in range(3):
            log_once("vsdmot.test", logging.INFO, "pipeline: a")
        log_once("vsdmot.test", logging.WARNING, "pipeline: a")  # another level is another line
        log_once("vsdmot.test", logging.INFO, "pipeline: b")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "pipeline: a"), ("WARNING", "pipeline: a"), ("INFO", "pipeline: b")]
