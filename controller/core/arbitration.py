"""Who asks for power: a valid aggregator setpoint, else the local fallback policy, else 0 W.

Arbitration only chooses the request. It never makes it safe: every interlock is applied to the
request afterwards, so a fallback discharge in the peak window still stops at the floor.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from dataclasses import dataclass

from controller.core.policy import FallbackMode, Policy
from controller.core.snapshots import PlannedPower, Setpoint, SetpointMode


class RequestSource(enum.StrEnum):
    """Where the requested power came from."""

    SETPOINT = "setpoint"  # the aggregator's power setpoint
    SETPOINT_IDLE = "setpoint_idle"  # the aggregator asks for 0 W
    FALLBACK_IDLE = "fallback_idle"  # local policy: idle
    FALLBACK_CHEAP_CHARGE = "fallback_cheap_charge"  # local time-of-use: cheap window
    FALLBACK_PEAK_DISCHARGE = "fallback_peak_discharge"  # local time-of-use: peak window
    FALLBACK_OFF_WINDOW = "fallback_off_window"  # local time-of-use: outside both windows
    FALLBACK_PLAN = "fallback_plan"  # local optimize: the planner's power for this slot


@dataclass(frozen=True, slots=True)
class Request:
    """The power asked for, before any interlock. + charges the vehicle, - discharges it."""

    power_w: float
    source: RequestSource
    note: str


def setpoint_in_force(setpoint: Setpoint | None, now_s: float) -> tuple[Setpoint | None, str]:
    """The setpoint if it is valid now, else None with why it is not."""
    if setpoint is None:
        return None, "no aggregator setpoint"
    if not setpoint.received_at_s <= now_s <= setpoint.valid_until_s:
        return None, f"setpoint {setpoint.setpoint_id!r} not valid now (expired or not yet valid)"
    if setpoint.mode is SetpointMode.POWER and not math.isfinite(setpoint.power_w):
        return None, f"setpoint {setpoint.setpoint_id!r} power is not a number"
    return setpoint, f"setpoint {setpoint.setpoint_id!r}"


def arbitrate(
    setpoint: Setpoint | None,
    policy: Policy,
    now_s: float,
    now_wall: dt.datetime,
    soc_pct: float | None,
    *,
    clock_trusted: bool = True,
    plan: PlannedPower | None = None,
) -> Request:
    """Choose the request: valid setpoint (RELEASE hands over) -> fallback policy -> 0 W.

    ``soc_pct`` is the lowest SoC the battery may hold (the cheap-window charge stops once that
    reaches the target). With an untrusted wall clock the windows and the plan give no
    discharge. ``plan`` is the planner's power for now (fallback ``optimize``).
    """
    valid, why = setpoint_in_force(setpoint, now_s)
    if valid is not None:
        if valid.mode is SetpointMode.POWER:
            return Request(valid.power_w, RequestSource.SETPOINT, why)
        if valid.mode is SetpointMode.IDLE:
            return Request(0.0, RequestSource.SETPOINT_IDLE, f"{why}: idle")
        why = f"{why}: released to the local policy"
    if policy.fallback.mode is FallbackMode.OPTIMIZE:
        return _planned(plan, now_wall, why, clock_trusted=clock_trusted)
    return _fallback(policy, now_wall, soc_pct, why, clock_trusted=clock_trusted)


def _planned(
    plan: PlannedPower | None, now_wall: dt.datetime, why: str, *, clock_trusted: bool
) -> Request:
    """The plan's power for the slot in force. The plan only proposes: every interlock (floor,
    ceiling, departure reserve, wear budget, ratings) still applies to it afterwards."""
    if plan is None:
        return Request(0.0, RequestSource.FALLBACK_PLAN, f"{why}; optimize: no plan")
    if not plan.in_force(now_wall):
        return Request(
            0.0,
            RequestSource.FALLBACK_PLAN,
            f"{why}; optimize: the plan's slot {plan.slot_start:%H:%M}-{plan.slot_end:%H:%M} "
            "is not in force",
        )
    if plan.power_w < 0 and not clock_trusted:
        return Request(
            0.0,
            RequestSource.FALLBACK_PLAN,
            f"{why}; optimize: a planned discharge by a wall clock not synchronised: no discharge",
        )
    return Request(plan.power_w, RequestSource.FALLBACK_PLAN, f"{why}; {plan.note}")


def _fallback(
    policy: Policy, now_wall: dt.datetime, soc_pct: float | None, why: str, *, clock_trusted: bool
) -> Request:
    fallback = policy.fallback
    if fallback.mode is FallbackMode.IDLE:
        return Request(0.0, RequestSource.FALLBACK_IDLE, f"{why}; fallback idle")
    local = now_wall.time()
    if any(w.contains(local) for w in fallback.cheap_windows):
        departure = policy.owner.departure
        target = policy.owner.soc_ceiling_pct if departure is None else departure.target_soc_pct
        if soc_pct is not None and soc_pct < target:
            return Request(
                fallback.charge_power_w,
                RequestSource.FALLBACK_CHEAP_CHARGE,
                f"{why}; cheap window, charging toward {target:g} %",
            )
        return Request(
            0.0, RequestSource.FALLBACK_CHEAP_CHARGE, f"{why}; cheap window, target reached"
        )
    if any(w.contains(local) for w in fallback.peak_windows):
        if not clock_trusted:
            return Request(
                0.0,
                RequestSource.FALLBACK_PEAK_DISCHARGE,
                f"{why}; peak window by a wall clock not synchronised: no discharge",
            )
        return Request(
            -fallback.discharge_power_w,
            RequestSource.FALLBACK_PEAK_DISCHARGE,
            f"{why}; peak window, discharging above the floor",
        )
    return Request(0.0, RequestSource.FALLBACK_OFF_WINDOW, f"{why}; outside tariff windows")
