"""From the daemon's ``ControlReport`` to telemetry, status and events. Pure: no IO, no clock.

Telemetry goes out on a change of *values*, at most once per ``min_interval_s``, and in any case
every ``period_s`` (``idle_period_s`` while the charger is idle):

* a *discrete* change: state, control source, setpoint followed, stage enabled, faults, plan
  number, the set of limits in force (rule and direction) and the binding one;
* a *numeric* change beyond its deadband since the last record: power 100 W, SoC 0.5 %, voltage
  5 V, energy 100 Wh, each limit's power 100 W.

The readable limit strings are not compared: they carry the age of the data ("vehicle data
1.11 s old"), which changes every cycle (issue 20, finding 2: 79 records in 8 s). A change within
``min_interval_s`` of the last record is owed, not lost: the latest report goes out when the
interval ends (from ``periodic_due``, which the sender asks every 0.2 s), even if the values
went back meanwhile. Idle: state idle and 0 W commanded; status and events still report every
discrete change at once, telemetry only needs to show the charger is alive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from controller.aggregator.messages import (
    EventBody,
    Flexibility,
    LimitBody,
    PlanBody,
    Source,
    State,
    StatusMessage,
    TelemetryBody,
)
from controller.core.rules import Direction, Limit, Rule
from controller.core.snapshots import PowerState
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


# Telemetry precision: what a consumer can use, and no more digits on a metered uplink.
def _watts(value: float) -> float:
    return float(round(value))


def _tenths(value: float | None) -> float | None:
    """SoC in %, voltage in V: to 0.1 (and never "-0.0")."""
    return None if value is None else round(value, 1) + 0.0


def _common(report: ControlReport) -> dict[str, Any]:
    """The fields telemetry and the retained status share."""
    return {
        "at": report.wall,
        "state": _state(report),
        "source": _source(report),
        "setpoint_id": report.setpoint_id,
        "enabled": report.enabled,
        # Latched causes, then those present now (stale data): a fault state names its cause.
        "faults": list(report.faults) + list(report.output.present_faults),
    }


def _in_force(report: ControlReport) -> dict[tuple[Rule, Direction], float]:
    """The limits in force by (rule, direction), each at its lowest power; a limit that is not a
    finite number is no cap to report (the core never lets one permit anything)."""
    lowest: dict[tuple[Rule, Direction], float] = {}
    for limit in report.limit_values:
        if not math.isfinite(limit.power_w):
            continue
        key = (limit.rule, limit.direction)
        lowest[key] = min(limit.power_w, lowest.get(key, math.inf))
    return lowest


def _limit_body(rule: Rule, direction: Direction, power_w: float) -> LimitBody:
    return LimitBody(
        rule=str(rule),
        direction="charge" if direction is Direction.CHARGE else "discharge",
        power_w=max(0.0, _watts(power_w)),
    )


def _binding_body(binding: Limit | None) -> LimitBody | None:
    if binding is None or not math.isfinite(binding.power_w):
        return None
    return _limit_body(binding.rule, binding.direction, binding.power_w)


def telemetry_message(report: ControlReport) -> TelemetryBody:
    """The telemetry payload for one report."""
    measured_w = _finite(report.measured_power_w)
    above_floor_wh = _finite(report.energy_above_floor_wh)
    return TelemetryBody(
        **_common(report),
        commanded_power_w=_watts(_finite(report.commanded_w) or 0.0),
        measured_power_w=None if measured_w is None else _watts(measured_w),
        soc_pct=_tenths(_finite(report.soc_pct)),
        voltage_v=_tenths(_finite(report.voltage_v)),
        binding_limit=_binding_body(report.binding),
        limits=[
            _limit_body(rule, direction, power_w)
            for (rule, direction), power_w in _in_force(report).items()
        ],
        flexibility=Flexibility(
            max_charge_power_w=max(0.0, _watts(_finite(report.max_charge_w) or 0.0)),
            max_discharge_power_w=max(0.0, _watts(abs(_finite(report.max_discharge_w) or 0.0))),
            soc_floor_pct=_tenths(_finite(report.soc_floor_pct)),
            energy_above_floor_wh=None if above_floor_wh is None else _watts(above_floor_wh),
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
        report.output.present_faults,
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
    """What must be equal for two reports to be "the same" apart from numbers: values only,
    never the readable text (which carries ages)."""
    binding = report.binding
    return (
        report.state,
        report.source,
        report.setpoint_id,
        report.enabled,
        report.faults,
        report.output.present_faults,
        # A new plan is published at once (the slots only move on with the periodic report).
        None if report.output.plan is None else report.output.plan.plan_number,
        frozenset(_in_force(report)),
        None if binding is None else (binding.rule, binding.direction),
    )


# (field, deadband): a change of at least the deadband since the last record counts.
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
LIMIT_POWER_STEP_W = 100.0


def _moved(before: float | None, after: float | None, step: float) -> bool:
    # Not a finite number is published as null: the same as None.
    old, new = _finite(before), _finite(after)
    if old is None or new is None:
        return (old is None) != (new is None)
    return abs(new - old) >= step


def _numeric_changed(before: ControlReport, after: ControlReport) -> bool:
    for name, step in _NUMERIC_STEPS:
        if _moved(getattr(before, name), getattr(after, name), step):
            return True
    # Called when the discrete key is equal, so both have the same limits in force.
    old_limits = _in_force(before)
    return any(
        _moved(old_limits.get(key), power_w, LIMIT_POWER_STEP_W)
        for key, power_w in _in_force(after).items()
    ) or _binding_moved(before, after)


def _binding_moved(before: ControlReport, after: ControlReport) -> bool:
    old, new = before.binding, after.binding
    if old is None or new is None:
        return False  # the discrete key covers a binding limit that came or went
    return _moved(old.power_w, new.power_w, LIMIT_POWER_STEP_W)


def changed(before: ControlReport, after: ControlReport) -> bool:
    """Whether ``after`` differs from ``before`` enough to be worth a telemetry record."""
    return _discrete(before) != _discrete(after) or _numeric_changed(before, after)


def is_idle(report: ControlReport) -> bool:
    """Idle for telemetry: state idle with 0 W commanded."""
    return report.state is PowerState.IDLE and report.commanded_w == 0.0


@dataclass(slots=True)
class TelemetryGate:
    """Decides when a report is worth publishing as telemetry (see the module docstring).

    ``due`` is asked for every report, ``periodic_due`` between reports (by the sender's
    housekeeping, which then publishes the latest report); ``sent`` is told what went out.
    """

    period_s: float
    min_interval_s: float = 1.0
    idle_period_s: float | None = None  # None: period_s also while idle
    _last: ControlReport | None = None  # the report published last
    _last_sent_s: float = -math.inf
    _latest: ControlReport | None = None  # the newest report seen
    _owed: bool = False  # a change since the last record waits for min_interval_s

    def due(self, report: ControlReport, now_s: float) -> bool:
        """Whether ``report`` should be published now."""
        self._latest = report
        last = self._last
        if last is None:
            return True
        if not self._owed and changed(last, report):
            self._owed = True
        return self._ready(now_s)

    def periodic_due(self, now_s: float) -> bool:
        """Whether the latest report should be published now though none came: the period
        passed, or a change waited for the end of ``min_interval_s``."""
        return self._last is not None and self._ready(now_s)

    def sent(self, report: ControlReport, now_s: float) -> None:
        """``report`` was queued for publishing at ``now_s``."""
        self._last = report
        self._last_sent_s = now_s
        self._owed = False

    def current_period_s(self) -> float:
        """The period in force: ``idle_period_s`` while the latest report is idle."""
        latest = self._latest if self._latest is not None else self._last
        if self.idle_period_s is None or latest is None or not is_idle(latest):
            return self.period_s
        return max(self.period_s, self.idle_period_s)

    def _ready(self, now_s: float) -> bool:
        since_s = now_s - self._last_sent_s
        if self._owed and since_s >= self.min_interval_s:
            return True
        return since_s >= self.current_period_s()
