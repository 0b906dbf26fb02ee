"""The policies the simulated year compares, each driven through the real core.

A strategy gives the core's ``Policy`` for a night and, for the planning ones, a session that
hands the core the plan's power for the slot in force (``Inputs.plan``), as the daemon's wiring
does. The core caps every request the same way for all of them.

* ``at_once`` (a): charge at full power from plug-in until the departure target, then idle.
  Built as the ``time_of_use`` fallback with a cheap window covering the whole day and no peak
  window: the core's own cheap-window charge stops at the target.
* ``fixed_windows`` (b): the ``time_of_use`` fallback of config/example-cn.yaml: charge in the
  valley (22:00-06:00), discharge 18:00-21:00, both at 7 kW.
* ``optimize``: the planner (``controller.planning.PlanKeeper``) from the reported SoC, with the
  efficiency it is configured with, learning of each peak event when it is announced.
* ``foresight`` (c): the same planner told the truth: the true SoC, the plant's efficiency and
  every event of the night at plug-in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Protocol

from bench.yearnights import SITE_ZONE, TARIFF_BANDS, Event, Night
from bench.yearplant import PlantConfig
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
from controller.core.rules import next_local_instant
from controller.core.snapshots import PlannedPower
from controller.economics.tariff import (
    ALL_DAY_TYPES,
    ALL_MONTHS,
    Band,
    PeakEvent,
    Tariff,
    TariffPeriod,
)
from controller.economics.wear import Chemistry, WearModel
from controller.planning import PlanKeeper, PlanSettings

# The owner's promises, the installation and the fallback windows of config/example-cn.yaml
# (tests/bench/test_year.py checks them against it): a 7 kW home charger in Shanghai.
SOC_FLOOR_PCT = 40.0
SOC_CEILING_PCT = 90.0
TARGET_SOC_PCT = 80.0
DEPARTURE_MARGIN_PCT = 20.0
MAX_POWER_W = 7_000.0
GRID_IMPORT_LIMIT_W = 10_000.0
GRID_EXPORT_LIMIT_W = 7_000.0
WEAR_BUDGET_KWH_PER_DAY = 20.0
FIXED_WINDOW_POWER_W = 7_000.0
VALLEY_WINDOW = TimeWindow(dt.time(22, 0), dt.time(6, 0))
EVENING_PEAK_WINDOW = TimeWindow(dt.time(18, 0), dt.time(21, 0))
WHOLE_DAY = (TimeWindow(dt.time(0, 0), dt.time(12, 0)), TimeWindow(dt.time(12, 0), dt.time(0, 0)))


@dataclass(frozen=True, slots=True)
class Observation:
    """What a strategy may know at a step (the foresight strategy reads the true values)."""

    wall: dt.datetime
    reported_soc_pct: float
    true_soc_pct: float
    capacity_kwh: float
    discharged_today_kwh: float  # the core's wear count for the local day
    departure_at: dt.datetime | None  # the session's departure as the core fixed it


class Session(Protocol):
    """A strategy's state for one plug-in."""

    @property
    def replans(self) -> int:
        """How many plans the session made (0: it does not plan)."""

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
            departure_margin_pct=DEPARTURE_MARGIN_PCT,
        ),
        site=SitePolicy(
            grid_import_limit_w=GRID_IMPORT_LIMIT_W, grid_export_limit_w=GRID_EXPORT_LIMIT_W
        ),
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
        wear=WearPolicy(max_discharge_kwh_per_day=WEAR_BUDGET_KWH_PER_DAY),
        battery_capacity_default_kwh=60.0,
    )


class _NoPlan:
    replans = 0

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


# --- the planning strategies ----------------------------------------------------------------------

# The planner's configured efficiency (config/example-cn.yaml economics); the plant's true one
# is PlantConfig's 0.91: the plan drifts and is re-made from the reported SoC.
ASSUMED_EFFICIENCY = 0.92
# The example's pack: LFP (most Chinese cars'), CNY 50,000 to replace (its placeholder).
CHEMISTRY = Chemistry.LFP
REPLACEMENT_COST = 50_000.0


def tariff() -> Tariff:
    """``TARIFF_BANDS`` as the planner's ``Tariff``: every day of the year alike."""
    bands = tuple(
        Band(start, end, import_price, export_price, name)
        for start, end, import_price, export_price, name in TARIFF_BANDS
    )
    return Tariff("CNY", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, bands),))


def wear_model(plant: PlantConfig) -> WearModel:
    return WearModel(CHEMISTRY, capacity_kwh=plant.capacity_kwh, replacement_cost=REPLACEMENT_COST)


def _peak_event(event: Event) -> PeakEvent:
    return PeakEvent(event.event_id, event.start, event.end, event.bonus_per_kwh, event.power_w)


class PlannedSession:
    """A plug-in under the ``optimize`` fallback: the plan keeper, fed as the daemon feeds it
    (controller/control.py) or, for the foresight bound, with the truth."""

    def __init__(self, keeper: PlanKeeper, night: Night, *, foresight: bool) -> None:
        self.keeper = keeper
        self._night = night
        self._foresight = foresight
        self._events = [(e.announced_at, _peak_event(e)) for e in night.events]
        self._resolution_pct = keeper.policy.safety.soc_resolution_pct
        self._departure_local = night.departure.astimezone(SITE_ZONE).time()

    @property
    def replans(self) -> int:
        return self.keeper.replans

    def plan(self, seen: Observation) -> PlannedPower | None:
        if self._foresight:
            return self.keeper.update(
                wall=seen.wall,
                soc_pct=seen.true_soc_pct,
                capacity_kwh=seen.capacity_kwh,
                departure_at=self._night.departure,
                discharged_today_kwh=seen.discharged_today_kwh,
                clock_trusted=True,
                events=tuple(event for _, event in self._events),
            )
        # Events the aggregator has announced by now; each new one is a new price version.
        known = tuple(event for announced_at, event in self._events if announced_at <= seen.wall)
        # The departure the core fixes at its first decision of the session (the wiring passes
        # the core's, which is None before that decision: a first plan without a departure
        # would be made only to be replaced a step later).
        departure_at = seen.departure_at or next_local_instant(seen.wall, self._departure_local)
        return self.keeper.update(
            wall=seen.wall,
            soc_pct=seen.reported_soc_pct - self._resolution_pct,
            capacity_kwh=seen.capacity_kwh,
            departure_at=departure_at,
            discharged_today_kwh=seen.discharged_today_kwh,
            clock_trusted=True,
            events=known,
            prices_version=len(known),
        )


@dataclass(frozen=True, slots=True)
class Planned:
    """Fallback ``optimize`` through the planner. Without ``foresight``, the product: it knows
    the reported SoC, assumes the configured efficiency and learns each event when it is
    announced. With it, (c) the bound: the same planner knowing the true SoC, the true
    efficiency and every event of the night at plug-in, its plan followed through the same core
    and plant."""

    step_s: float
    plant: PlantConfig
    foresight: bool = False

    @property
    def name(self) -> str:
        return "foresight" if self.foresight else "optimize"

    def policy(self, night: Night) -> Policy:
        fallback = FallbackPolicy(mode=FallbackMode.OPTIMIZE)
        return replace(base_policy(night, self.step_s), fallback=fallback)

    def session(self, night: Night, policy: Policy) -> Session:
        plant = self.plant
        settings = PlanSettings(
            tariff=tariff(),
            wear=wear_model(plant),
            charge_efficiency=plant.charge_efficiency if self.foresight else ASSUMED_EFFICIENCY,
            discharge_efficiency=plant.discharge_efficiency
            if self.foresight
            else ASSUMED_EFFICIENCY,
        )
        return PlannedSession(PlanKeeper(settings, policy), night, foresight=self.foresight)
