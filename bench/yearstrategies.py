"""The policies the simulated year compares, each driven through the real core.

A strategy gives the core's ``Policy`` for a night and, for the planning ones, a session that
hands the core the plan's power for the slot in force (``Inputs.plan``), as the daemon's wiring
does. The core caps every request the same way for all of them.

* ``at_once`` (a): charge at full power from plug-in until the departure target, then idle.
  Built as the ``time_of_use`` fallback with a cheap window covering the whole day and no peak
  window: the core's own cheap-window charge stops at the target.
* ``fixed_windows`` (b): the ``time_of_use`` fallback with its windows on the tariff's valley
  (charge) and evening peak (discharge), at the example config's 3.7 kW.
* ``optimize``: the planner (``controller.planning.PlanKeeper``) from the reported SoC, with the
  efficiency it is configured with, learning of each peak event when it is announced.
* ``foresight`` (c): the same planner told the truth: the true SoC, the plant's efficiency and
  every event of the night at plug-in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Protocol

from bench.yearnights import SITE_ZONE, Night
from controller.core.policy import (
    Departure,
    FallbackMode,
    FallbackPolicy,
    OwnerPolicy,
    Policy,
    SafetyPolicy,
    SitePolicy,
    TimeWindow,
    WearPolicy,
)
from controller.core.snapshots import PlannedPower

# The owner's promises and the installation (config/example.yaml's limits, a 30 % floor).
SOC_FLOOR_PCT = 30.0
SOC_CEILING_PCT = 90.0
TARGET_SOC_PCT = 80.0
MAX_POWER_W = 7_400.0
FIXED_WINDOW_POWER_W = 3_700.0
VALLEY_WINDOW = TimeWindow(dt.time(22, 0), dt.time(6, 0))
EVENING_PEAK_WINDOW = TimeWindow(dt.time(18, 0), dt.time(22, 0))
WHOLE_DAY = (TimeWindow(dt.time(0, 0), dt.time(12, 0)), TimeWindow(dt.time(12, 0), dt.time(0, 0)))


@dataclass(frozen=True, slots=True)
class Observation:
    """What a strategy may know at a step (the foresight strategy reads the true values)."""

    wall: dt.datetime
    reported_soc_pct: float
    true_soc_pct: float
    capacity_kwh: float
    discharged_today_kwh: float  # the core's wear count for the local day


class Session(Protocol):
    """A strategy's state for one plug-in."""

    def plan(self, seen: Observation) -> PlannedPower | None:
        """The plan's power for now (None: the strategy does not plan)."""


class Strategy(Protocol):
    @property
    def name(self) -> str:
        """The key in the report."""

    def policy(self, night: Night) -> Policy:
        """The core's policy for this night (the departure time is the night's)."""

    def session(self, night: Night, policy: Policy) -> Session:
        """A fresh session at plug-in."""


def base_policy(night: Night, step_s: float) -> Policy:
    """The policy every strategy shares: the night's departure, the limits, and the time
    constants of a simulation that decides every ``step_s``."""
    departure_local = night.departure.astimezone(SITE_ZONE).time()
    return Policy(
        owner=OwnerPolicy(
            soc_floor_pct=SOC_FLOOR_PCT,
            soc_ceiling_pct=SOC_CEILING_PCT,
            departure=Departure(time_local=departure_local, target_soc_pct=TARGET_SOC_PCT),
        ),
        site=SitePolicy(grid_import_limit_w=11_000.0, grid_export_limit_w=MAX_POWER_W),
        safety=SafetyPolicy(
            max_charge_power_w=MAX_POWER_W,
            max_discharge_power_w=MAX_POWER_W,
            # One decision per step: a step's gap is a normal interval, not a stalled loop
            # (otherwise the ramp would allow only 2 kW per step).
            ramp_max_interval_s=step_s,
            # The plant's SoC is one step old and a command takes effect one step late: the
            # floor must look two steps ahead.
            floor_horizon_s=2.0 * step_s,
            # Snapshots are taken at each step (observed now); keep the daemon's deadlines.
        ),
        wear=WearPolicy(max_discharge_kwh_per_day=20.0),
    )


class _NoPlan:
    def plan(self, seen: Observation) -> PlannedPower | None:
        return None


@dataclass(frozen=True, slots=True)
class AtOnce:
    """(a) Charge at full power on plug-in until the target."""

    step_s: float
    name: str = "at_once"

    def policy(self, night: Night) -> Policy:
        fallback = FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE, cheap_windows=WHOLE_DAY, charge_power_w=MAX_POWER_W
        )
        return replace(base_policy(night, self.step_s), fallback=fallback)

    def session(self, night: Night, policy: Policy) -> Session:
        return _NoPlan()


@dataclass(frozen=True, slots=True)
class FixedWindows:
    """(b) The fixed-window policy: charge in the valley, discharge in the evening peak."""

    step_s: float
    name: str = "fixed_windows"

    def policy(self, night: Night) -> Policy:
        fallback = FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE,
            cheap_windows=(VALLEY_WINDOW,),
            peak_windows=(EVENING_PEAK_WINDOW,),
            charge_power_w=FIXED_WINDOW_POWER_W,
            discharge_power_w=FIXED_WINDOW_POWER_W,
        )
        return replace(base_policy(night, self.step_s), fallback=fallback)

    def session(self, night: Night, policy: Policy) -> Session:
        return _NoPlan()
