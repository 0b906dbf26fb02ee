"""Structured logging: JSON lines for journald, a readable console on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def _pick_format(requested: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if requested != "auto":
        return requested
    # Under systemd stdout goes to journald (JOURNAL_STREAM is set): one JSON object per line.
    if os.environ.get("JOURNAL_STREAM") or not stream.isatty():
        return "json"
    return "console"


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process. Safe to call more than once."""
    out = stream if stream is not None else sys.stdout
    chosen = _pick_format(fmt, out)
    renderer: structlog.types.Processor
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if chosen == "json":
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    level_no = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: render their records the same way, so the
    # journal holds one format.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    # pymodbus logs every timeout at ERROR; the inverter link reports the same failure with
    # its context, so pymodbus is heard only for what the link cannot see.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger bound with the component name."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger
