"""Telemetry, status and events from control reports, pure: what changes, and when it is due."""

from __future__ import annotations

import dataclasses
import json

from controller.aggregator.telemetry import (
    TelemetryGate,
    events_between,
    status_message,
    telemetry_message,
)
from controller.core.snapshots import PowerState
from tests.aggregator.support import report


def test_telemetry_carries_measurements_limits_and_flexibility() -> None:
    """Telemetry has SoC, power, voltage, state, limits, flexibility and faults."""
    message = telemetry_message(
        report(
            "sp-1",
            -2000.0,
            state=PowerState.DISCHARGING,
            source="aggregator",
            binding_limit="soc_floor",
            faults=("vehicle: cell over-voltage",),
        )
    )
    data = json.loads(message.to_json())
    assert data["state"] == "discharging"
    assert data["commanded_power_w"] == -2000.0
    assert data["measured_power_w"] == -2000.0
    assert data["soc_pct"] == 60.0
    assert data["voltage_v"] == 380.0
    assert data["limits"] == ["soc_floor"]
    assert data["faults"] == ["vehicle: cell over-voltage"]
    assert data["flexibility"] == {
        "max_charge_power_w": 7400.0,
        "max_discharge_power_w": 7400.0,
        "soc_floor_pct": 40.0,
        "energy_above_floor_wh": 9000.0,
    }


def test_unmeasured_values_are_null_not_missing() -> None:
    """A value the links do not report is present as null."""
    data = json.loads(telemetry_message(report(soc_pct=None)).to_json())
    assert data["soc_pct"] is None
    assert "soc_pct" in data


def test_status_is_the_discrete_state() -> None:
    """Status carries state, source, setpoint, enablement and faults."""
    data = json.loads(status_message(report("sp-3", 100.0, source="aggregator")).to_json())
    assert data["source"] == "aggregator"
    assert data["setpoint_id"] == "sp-3"
    assert data["enabled"] is True


def test_gate_publishes_first_discrete_changes_and_the_period() -> None:
    """First report: due; unchanged: not due until the period; a discrete change: due at once."""
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    first = report()
    assert gate.due(first, 0.0)
    gate.sent(first, 0.0)
    assert not gate.due(first, 0.5)
    assert not gate.periodic_due(9.9)
    assert gate.periodic_due(10.0)
    assert gate.due(first, 10.0)
    changed = report(state=PowerState.FAULT, faults=("x",))
    assert gate.due(changed, 0.1)


def test_gate_rate_limits_numeric_changes() -> None:
    """A numeric change beyond its step is due, but at most once per min_interval_s."""
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    base = report(None, 1000.0, state=PowerState.CHARGING, source="fallback")
    gate.sent(base, 0.0)
    small = dataclasses.replace(base, measured_power_w=1050.0)
    big = dataclasses.replace(base, measured_power_w=1200.0)
    assert not gate.due(small, 2.0)
    assert not gate.due(big, 0.5)
    assert gate.due(big, 1.0)
    assert gate.due(dataclasses.replace(base, soc_pct=None), 1.0)


def test_events_for_source_changes_and_faults() -> None:
    """A change of control source and each fault raised or cleared is an event."""
    following = report("sp-1", -1000.0, source="aggregator", faults=("a",))
    fallback = report(None, 0.0, source="fallback", faults=("b",))
    assert events_between(None, following)[0].kind == "fault_raised"
    kinds = [(e.kind, e.fault or e.to_source) for e in events_between(following, fallback)]
    assert kinds == [
        ("control_source_changed", "fallback"),
        ("fault_raised", "b"),
        ("fault_cleared", "a"),
    ]
    assert events_between(fallback, fallback) == []


def test_a_rewritten_revert_timer_is_an_event() -> None:
    """Each time the link finds the inverter's revert settings lost and rewrites them, one event
    (issue 16): the count rising is the event, an unchanged count is none."""
    before = report(None, 0.0)
    after = dataclasses.replace(before, inverter_revert_rewrites=1)
    (event,) = events_between(before, after)
    assert event.kind == "revert_settings_rewritten"
    assert "(1 since start)" in event.message
    assert events_between(after, after) == []
    assert events_between(None, after) == []
