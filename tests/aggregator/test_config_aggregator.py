"""The aggregator section of the config: new bounds and cross-field rules, located by line."""

from __future__ import annotations

import pytest

from controller.config import parse_config
from controller.errors import ConfigError

HEAD = """\
site: {site_id: home-1, charger_id: c1}
vehicle: {protocol: chademo}
inverter: {transport: tcp, tcp: {host: 192.0.2.10}}
aggregator:
  broker: {host: broker.example, port: 8883}
"""


def problems(extra: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + extra, "c.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_defaults() -> None:
    """Omitted aggregator keys take their documented defaults."""
    aggregator = parse_config(HEAD).aggregator
    assert aggregator.max_abs_power_w == 22_000.0
    assert aggregator.clock_skew_tolerance_s == 30.0
    assert (aggregator.reconnect_initial_s, aggregator.reconnect_max_s) == (1.0, 60.0)


def test_out_of_bounds_values_are_located() -> None:
    """A negative power bound or an absurd skew is reported at its line."""
    found = problems("  max_abs_power_w: -5\n  clock_skew_tolerance_s: 9999\n")
    assert [(line, path) for line, path, _ in found] == [
        (6, "aggregator.max_abs_power_w"),
        (7, "aggregator.clock_skew_tolerance_s"),
    ]


def test_password_file_needs_a_username() -> None:
    """A password without a user name cannot log in: said at once."""
    found = problems("  password_file: /etc/v2g-controller/mqtt-password\n")
    assert "expected a username" in found[0][2]


def test_reconnect_waits_are_ordered() -> None:
    """The first reconnect wait may not exceed the cap."""
    found = problems("  reconnect_initial_s: 30\n  reconnect_max_s: 10\n")
    assert "reconnect_initial_s at or below reconnect_max_s" in found[0][2]
