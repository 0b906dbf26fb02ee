"""Logs: JSON lines for journald, readable text on a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from controller.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield None
    structlog.reset_defaults()
    logging.getLogger().handlers = []


def test_json_lines_carry_fields() -> None:
    """In JSON mode every event is one JSON object with level, timestamp and fields."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    get_logger("test").info("setpoint applied", power_w=-3000)
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "setpoint applied"
    assert record["power_w"] == -3000
    assert record["level"] == "info"
    assert record["component"] == "test"
    assert record["timestamp"].endswith("Z")


def test_level_filters_debug() -> None:
    """Below the configured level nothing is written."""
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    get_logger("test").info("chatter")
    assert out.getvalue() == ""


def test_auto_is_json_when_not_a_terminal() -> None:
    """auto picks JSON when output is not a terminal (journald, pipes)."""
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    get_logger("test").info("hello")
    assert json.loads(out.getvalue())["event"] == "hello"


def test_console_mode_is_readable() -> None:
    """console mode writes a human line, not JSON."""
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    get_logger("test").info("hello", soc_pct=45)
    text = out.getvalue()
    assert "hello" in text
    assert "soc_pct=45" in text
    assert not text.startswith("{")


def test_library_logs_come_out_as_json_too() -> None:
    """Records from the standard library's logging (libraries) are rendered as JSON lines."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("can.interfaces").warning("bus %s is off", "can0")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "bus can0 is off"
    assert record["level"] == "warning"
    assert record["logger"] == "can.interfaces"
