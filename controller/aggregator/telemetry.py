"""From the daemon's ``ControlReport`` to telemetry, status and events. Pure: no IO, no clock.

Telemetry goes out when something changed and, in any case, every ``period_s``:

* a *discrete* change (state, control source, setpoint followed, stage enabled, binding limit,
  limits in force, faults) publishes at once;
* a *numeric* change beyond its step (power 100 W, SoC 0.5 %, voltage 5 V, energy 100 Wh)
  publishes at most once per ``min_interval_s``, so a noisy measurement cannot flood the link;
* otherwise the latest report is published when ``period_s`` has passed since the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from controller.aggregator.messages import (
    EventBody,
    Flexibility,
    PlanBody,
    Source,
    State,
    StatusMessage,
    TelemetryBody,
)
from controller.links import ControlReport

_SOURCES: tuple[Source, ...] = ("aggregator", "fallback", "none")


def _source(report: ControlReport) -> Source:
    for source in _SOURCES:
        if report.source == source:
            return source
    return "none"


def _state(report: ControlReport) -> State:
    value = report.state.value
    for state in ("idle", "charging", "discharging", "stopping", "fault"):
        if value == state:
            return state
    return "fault"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _common(report: ControlReport) -> dict[str, Any]:
    """The fields telemetry and the retained status share."""
    return {
        "at": report.wall,
        "state": _state(report),
        "source": _source(report),
        "setpoint_id": report.setpoint_id,
        "enabled": report.enabled,
        "faults": list(report.faults),
    }


def telemetry_message(report: ControlReport) -> TelemetryBody:
    """The telemetry payload for one report."""
    return TelemetryBody(
        **_common(report),
        commanded_power_w=_finite(report.commanded_w) or 0.0,
        measured_power_w=_finite(report.measured_power_w),
        soc_pct=_finite(report.soc_pct),
        voltage_v=_finite(report.voltage_v),
        binding_limit=report.binding_limit,
        limits=list(report.limits),
        flexibility=Flexibility(
            max_charge_power_w=max(0.0, _finite(report.max_charge_w) or 0.0),
            max_discharge_power_w=max(0.0, abs(_finite(report.max_discharge_w) or 0.0)),
            soc_floor_pct=_finite(report.soc_floor_pct),
            energy_above_floor_wh=_finite(report.energy_above_floor_wh),
        ),
        plan=_plan(report),
    )


def _plan(report: ControlReport) -> PlanBody | None:
    plan = report.output.plan
    if plan is None:
        return None
    return PlanBody(
        plan_number=plan.plan_number,
        start=plan.start,
        slot_s=plan.slot_s,
        power_w=list(plan.power_w),
        soc_end_pct=list(plan.soc_end_pct),
        ends_at=plan.ends_at,
        value=round(plan.value, 2),
        target_reachable=plan.target_reachable,
        reason=plan.reason,
    )


def status_key(report: ControlReport) -> tuple[object, ...]:
    """What the retained status shows; a new status is published when this changes."""
    return (
        report.state,
        report.source,
        report.setpoint_id,
        report.enabled,
        report.faults,
    )


def status_message(report: ControlReport) -> StatusMessage:
    """The retained status payload for one report."""
    return StatusMessage(**_common(report))


def events_between(previous: ControlReport | None, current: ControlReport) -> list[EventBody]:
    """Events for what changed from one report to the next: control source, faults."""
    events: list[EventBody] = []
    before_source = _source(previous) if previous is not None else None
    now_source = _source(current)
    if before_source is not None and before_source != now_source:
        events.append(
            EventBody(
                at=current.wall,
                kind="control_source_changed",
                message=f"control source {before_source} -> {now_source}",
                setpoint_id=current.setpoint_id,
                from_source=before_source,
                to_source=now_source,
            )
        )
    before_faults = set(previous.faults) if previous is not None else set()
    events.extend(
        EventBody(at=current.wall, kind="fault_raised", message=f"fault: {fault}", fault=fault)
        for fault in current.faults
        if fault not in before_faults
    )
    now_faults = set(current.faults)
    events.extend(
        EventBody(
            at=current.wall, kind="fault_cleared", message=f"fault cleared: {fault}", fault=fault
        )
        for fault in (previous.faults if previous is not None else ())
        if fault not in now_faults
    )
    rewrites = current.inverter_revert_rewrites
    if previous is not None and rewrites > previous.inverter_revert_rewrites:
        # The device had dropped the timer that brings it to 0 W if the controller dies: the
        # link rewrote it (a device that drops it again at once is a fault instead).
        events.append(
            EventBody(
                at=current.wall,
                kind="revert_settings_rewritten",
                message=(
                    "the inverter had lost its revert timer settings; rewritten "
                    f"({rewrites} since start)"
                ),
            )
        )
    return events


def _discrete(report: ControlReport) -> tuple[object, ...]:
    return (
        report.state,
        report.source,
        report.setpoint_id,
        report.enabled,
        report.binding_limit,
        report.limits,
        report.faults,
        # A new plan is published at once (the slots only move on with the periodic report).
        None if report.output.plan is None else report.output.plan.plan_number,
    )


# (field, step): a change of at least the step counts as a change.
_NUMERIC_STEPS: tuple[tuple[str, float], ...] = (
    ("commanded_w", 100.0),
    ("measured_power_w", 100.0),
    ("max_charge_w", 100.0),
    ("max_discharge_w", 100.0),
    ("soc_pct", 0.5),
    ("soc_floor_pct", 0.5),
    ("voltage_v", 5.0),
    ("energy_above_floor_wh", 100.0),
)


def _numeric_changed(before: ControlReport, after: ControlReport) -> bool:
    for name, step in _NUMERIC_STEPS:
        old = getattr(before, name)
        new = getattr(after, name)
        if (old is None) != (new is None):
            return True
        if old is not None and new is not None and abs(new - old) >= step:
            return True
    return False


@dataclass(slots=True)
class TelemetryGate:
    """Decides when a report is worth publishing as telemetry (see the module docstring)."""

    period_s: float
    min_interval_s: float = 1.0
    _last: ControlReport | None = None
    _last_sent_s: float = -math.inf

    def due(self, report: ControlReport, now_s: float) -> bool:
        """Whether ``report`` should be published now."""
        last = self._last
        if last is None or now_s - self._last_sent_s >= self.period_s:
            return True
        if _discrete(report) != _discrete(last):
            return True
        return now_s - self._last_sent_s >= self.min_interval_s and _numeric_changed(last, report)

    def periodic_due(self, now_s: float) -> bool:
        """Whether the period has passed with nothing published (the caller republishes)."""
        return self._last is not None and now_s - self._last_sent_s >= self.period_s

    def sent(self, report: ControlReport, now_s: float) -> None:
        """``report`` was queued for publishing at ``now_s``."""
        self._last = report
        self._last_sent_s = now_s
