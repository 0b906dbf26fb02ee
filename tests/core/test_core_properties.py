"""Properties of the safety core over random sequences of inputs and times, judged on a plant.

Each scenario is a random policy, a start time (some next to a DST change), a battery whose true
SoC follows the power delivered and is reported as the car would (whole percent, rounded,
truncated or rounded up, or exactly), and a sequence of steps: time advances and stalls, the
wall clock jumps both ways and loses its synchronisation, snapshots age, every reported value may
turn NaN, infinite, negative or out of range, sessions end and start, setpoints arrive and expire,
the emergency stop and the manual reset are pressed.

The oracles are written here from the promises, not from the core's formulas: the floor and the
ceiling on the plant's true SoC; the departure from first principles (the energy missing, the
power available now with every derating, the margin, the time left to a departure found by
scanning the local clock); the hard limits from the reported values; the latches from the causes
seen. Each focus puts its starting SoC within 1 % of the floor, the ceiling or the reserve.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from controller.core.arbitration import RequestSource
from controller.core.policy import (
    Departure,
    FallbackMode,
    FallbackPolicy,
    FaultResetMode,
    OwnerPolicy,
    Policy,
    SafetyPolicy,
    SitePolicy,
    TimeWindow,
    WearPolicy,
)
from controller.core.rules import Direction, Rule
from controller.core.safety import CoreState, Decision, Inputs, Now, decide, reset_faults
from controller.core.snapshots import (
    InverterState,
    PowerState,
    Setpoint,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
NAN, INF = math.nan, math.inf
# No cell of any chemistry comes near 10 V: a cell voltage outside this is a corrupt frame.
CELL_VOLTAGE_RANGE_V = (0.0, 10.0)


def hhmm(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


def mostly(usual: object, *others: object) -> list[Any]:
    """Choices where ``usual`` comes up three times in four (sampled_from is uniform)."""
    return [usual] * (3 * len(others)) + list(others)


# --- the plant's reports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """How the car reports its SoC, and how far the truth may lie below and above the report."""

    name: str
    of: Callable[[float], float]
    below_pct: float  # the true SoC is at least report - below_pct
    above_pct: float  # the true SoC is at most report + above_pct (exclusive for 1)


REPORTS = (
    Report("exact", lambda pct: pct, 0.0, 0.0),
    Report("round", lambda pct: float(math.floor(pct + 0.5)), 0.5, 0.5),
    Report("truncate", lambda pct: float(math.floor(pct)), 0.0, 1.0),
    Report("round up", lambda pct: float(math.ceil(pct)), 1.0, 0.0),
)


# --- strategies ---------------------------------------------------------------------------------


# Strategies are built once, at import: building them inside a composite costs more than drawing.
MINUTES = st.integers(0, 1439)
FRACTION = st.floats(0.0, 1.0)
SITE_POLICIES = st.builds(
    SitePolicy,
    grid_import_limit_w=st.sampled_from(mostly(11_000.0, 3_680.0, 0.0, 50_000.0)),
    grid_export_limit_w=st.sampled_from(mostly(7_400.0, 3_680.0, 0.0)),
)
WEAR_POLICIES = st.builds(
    WearPolicy,
    max_discharge_kwh_per_day=st.sampled_from(mostly(20.0, 0.0, 0.02, 1.0)),
    max_cycles_per_day=st.sampled_from(mostly(None, 0.001, 1.0)),
)
MANUAL_FAULTS = st.sampled_from(
    mostly(
        frozenset[str](),
        frozenset({"vehicle_fault"}),
        frozenset({"inverter_fault"}),
        frozenset({"vehicle_fault", "inverter_fault"}),
    )
)
TEMPERATURE_LIMITS = st.sampled_from(mostly((45.0, 55.0, 70.0, 85.0), (30.0, 40.0, 40.0, 60.0)))


@st.composite
def safety_policies(draw: st.DrawFn) -> tuple[SafetyPolicy, Report]:
    """A safety policy and a report the policy's resolution covers (else no promise holds)."""
    resolution_pct = draw(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0]))
    report = draw(
        st.sampled_from([r for r in REPORTS if max(r.below_pct, r.above_pct) <= resolution_pct])
    )
    battery_derate_c, battery_cutoff_c, inverter_derate_c, inverter_cutoff_c = draw(
        TEMPERATURE_LIMITS
    )
    safety = SafetyPolicy(
        max_charge_power_w=draw(st.sampled_from([3_700.0, 7_400.0, 11_000.0, 22_000.0])),
        max_discharge_power_w=draw(st.sampled_from([3_700.0, 7_400.0, 11_000.0])),
        ramp_w_per_s=draw(st.sampled_from([100.0, 2_000.0, 50_000.0])),
        ramp_max_interval_s=draw(st.sampled_from([0.2, 1.0, 10.0])),
        vehicle_stale_after_s=draw(st.sampled_from([0.5, 1.0])),
        inverter_stale_after_s=draw(st.sampled_from([1.0, 3.0])),
        floor_hysteresis_pct=draw(st.sampled_from([0.0, 2.0, 5.0])),
        ceiling_hysteresis_pct=draw(st.sampled_from([0.0, 2.0])),
        battery_temp_derate_c=battery_derate_c,
        battery_temp_cutoff_c=battery_cutoff_c,
        inverter_temp_derate_c=inverter_derate_c,
        inverter_temp_cutoff_c=inverter_cutoff_c,
        fault_reset=draw(st.sampled_from(mostly(FaultResetMode.AUTO, FaultResetMode.MANUAL))),
        fault_hold_s=draw(st.sampled_from(mostly(2.0, 0.0, 0.3, 60.0))),
        manual_reset_faults=draw(MANUAL_FAULTS),
        soc_resolution_pct=resolution_pct,
        floor_horizon_s=draw(st.sampled_from([0.5, 1.0, 2.0, 5.0])),
    )
    return safety, report


@st.composite
def windows(draw: st.DrawFn) -> tuple[TimeWindow, ...]:
    """No window, or one of 1 min to 23 h 59 min, possibly across midnight."""
    start, length = draw(MINUTES), draw(MINUTES)
    if length == 0:
        return ()
    return (TimeWindow(hhmm(start), hhmm((start + length) % 1440)),)


FALLBACK_POLICIES = st.builds(
    FallbackPolicy,
    mode=st.sampled_from(mostly(FallbackMode.TIME_OF_USE, FallbackMode.IDLE)),
    cheap_windows=windows(),
    peak_windows=windows(),
    charge_power_w=st.sampled_from([0.0, 3_700.0, 20_000.0]),
    discharge_power_w=st.sampled_from([0.0, 3_700.0, 20_000.0]),
)


@st.composite
def owner_policies(draw: st.DrawFn) -> OwnerPolicy:
    floor = draw(st.integers(0, 60)) + draw(st.sampled_from([0.0, 0.0, 0.4, 0.6]))
    ceiling = min(100.0, floor + 1 + draw(st.integers(0, 60)))
    departure = None
    if draw(st.booleans()):
        target = floor + (ceiling - floor) * draw(FRACTION)
        departure = Departure(time_local=hhmm(draw(MINUTES)), target_soc_pct=target)
    return OwnerPolicy(
        soc_floor_pct=floor,
        soc_ceiling_pct=ceiling,
        departure=departure,
        departure_margin_pct=draw(st.sampled_from([0.0, 20.0, 100.0])),
    )


START_ANCHORS = (
    dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 28, 12, tzinfo=AMSTERDAM),  # the next night springs forward
    dt.datetime(2026, 10, 24, 12, tzinfo=AMSTERDAM),  # the next night falls back
    dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2026, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
)
# Any minute of the day, or the last five before local midnight (the wear day turns).
START_MINUTES = st.one_of(MINUTES, st.integers(1435, 1439))
START_WALLS = st.builds(
    lambda anchor, minutes: anchor + dt.timedelta(minutes=minutes),
    st.sampled_from(START_ANCHORS),
    START_MINUTES,
)

# What a field can change to in one event: mostly back to normal, so a session keeps recovering
# and power keeps flowing between the blocks. Every numeric field can turn NaN, infinite,
# negative or out of its physical range.
VEHICLE_CHOICES: dict[str, list[Any]] = {
    "phase": mostly(
        VehiclePhase.ENERGY_TRANSFER,
        VehiclePhase.READY,
        VehiclePhase.STOPPING,
        VehiclePhase.UNPLUGGED,
        VehiclePhase.FAULT,
        VehiclePhase.HANDSHAKE,
        VehiclePhase.ENDED,
    ),
    "pack_voltage_v": mostly(380.0, 400.0, 250.0, None, 0.0, NAN, INF, -INF, -380.0, 1_600.0),
    "pack_current_a": mostly(0.0, None, NAN, INF, -20.0, 5_000.0),
    "charge_current_limit_a": mostly(16.0, None, 0.0, 31.0, 125.0, NAN, INF, -INF, -5.0, 1_200.0),
    "charge_voltage_limit_v": mostly(410.0, None, 300.0, NAN, INF, -INF, -1.0, 2_000.0),
    "discharge_current_limit_a": mostly(15.0, None, 0.0, 30.0, NAN, INF, -INF, -5.0, 1_200.0),
    "discharge_voltage_min_v": mostly(250.0, None, 390.0, NAN, INF, -INF, -1.0, 2_000.0),
    "discharge_soc_min_pct": mostly(10.0, None, 30.0, 50.5, NAN, INF, -INF, -5.0, 150.0),
    "battery_temp_max_c": mostly(25.0, None, 47.0, 54.0, 60.0, NAN, INF, -INF, -100.0, 200.0),
    "battery_temp_min_c": mostly(10.0, None, -20.0, NAN, INF, -INF, -100.0, 200.0),
    "cell_voltage_max_v": mostly(4.0, None, 4.25, NAN, INF, -INF, -1.0, 2_000.0),
    "cell_voltage_min_v": mostly(3.6, None, 2.9, NAN, INF, -INF, -1.0, 2_000.0),
    "capacity_kwh": mostly(62.0, None, 2.0, 5.0, 250.0, 300.0, 0.0, -40.0, NAN, INF, -INF),
    "charge_permitted": mostly(True, False),
    "discharge_permitted": mostly(True, False),
    "stop_requested": mostly(False, True),
    "faults": mostly((), ("over_voltage",)),
}
INVERTER_CHOICES: dict[str, list[Any]] = {
    "reachable": mostly(True, False),
    "enabled": mostly(True, False),
    "max_charge_power_w": mostly(10_000.0, None, 5_000.0, NAN, INF, -INF, -5_000.0),
    "max_discharge_power_w": mostly(10_000.0, None, 5_000.0, NAN, INF, -INF, -5_000.0),
    "dc_voltage_v": mostly(380.0, None, NAN, -1.0, 5_000.0),
    "temperature_c": mostly(40.0, None, 75.0, 84.0, 90.0, NAN, INF, -INF, -100.0, 200.0),
    "faults": mostly((), ("ground_fault",)),
    "energy_charged_wh": mostly(500.0, None, NAN, INF, -1.0),
    "energy_discharged_wh": mostly(1_000.0, None, NAN, -INF, -1.0),
}
VEHICLE_FIELDS = {name: st.sampled_from(values) for name, values in VEHICLE_CHOICES.items()}
INVERTER_FIELDS = {name: st.sampled_from(values) for name, values in INVERTER_CHOICES.items()}
# Every scenario starts in a healthy session (the usual values); events then break and mend it.
HEALTHY_VEHICLE = VehicleState(
    observed_at_s=0.0,
    protocol="chademo",
    **{name: values[0] for name, values in VEHICLE_CHOICES.items()},
)
HEALTHY_INVERTER = InverterState(
    observed_at_s=0.0, **{name: values[0] for name, values in INVERTER_CHOICES.items()}
)

# Every unusual value of every field once: (vehicle or inverter, field, value). A scenario may
# start with one, and a glitch puts one in a single decision's snapshot.
ODD_VALUES = [
    (which, name, value)
    for which, choices in (("vehicle", VEHICLE_CHOICES), ("inverter", INVERTER_CHOICES))
    for name, values in choices.items()
    for value in dict.fromkeys(values[1:])  # NaN-safe: dict keeps identity-equal keys
    if value is not values[0]
]
ODD_STARTS = st.sampled_from(ODD_VALUES)


@dataclass(frozen=True)
class Step:
    """What happens before one decision: time passes, then at most one event."""

    advance_s: float
    event: str
    name: str = ""  # the field an event changes
    value: Any = None


# Stormy: every kind of trouble, often (the limits, latches and shaping are about that).
STORMY = st.sampled_from(
    ["tick"] * 10
    + ["vehicle"] * 8
    + ["inverter"] * 3
    + ["setpoint"] * 3
    + ["pulse"] * 3
    + ["glitch"] * 3
    + ["manual_reset"] * 3
    + ["clock_trusted"] * 2
    + ["vehicle_age", "vehicle_age", "inverter_age", "measured", "soc_report", "soc_report"]
    + ["soc_jump", "wall_jump", "vehicle_absent", "inverter_absent", "emergency_stop"]
)
# Calm: mostly a session running on, with now and then one of the same troubles (the promises
# at the floor, ceiling and reserve need power to run up to them).
CALM = st.sampled_from(
    ["tick"] * 40
    + ["vehicle"] * 3
    + ["setpoint", "inverter", "pulse", "glitch", "manual_reset"]
    + ["clock_trusted"] * 2
    + ["vehicle_age", "inverter_age", "measured", "soc_report", "soc_jump", "wall_jump"]
)
# A cause present at one decision only: the latches must hold it, and the holds then run out.
PULSES = st.sampled_from(
    ["emergency_stop"] * 3
    + ["vehicle_fault", "vehicle_fault_phase", "inverter_fault", "stop_requested"]
)
# The loop decides every 100 ms; sometimes late, sometimes stalled (the inverter's revert timer
# then stops the power), sometimes twice at the same instant.
ADVANCES_S = st.sampled_from([0.0, 0.05, *[0.1] * 7, 0.3, 0.5, 1.0, 1.0, 2.5, 4.0, 30.0, 3_600.0])
VEHICLE_FIELD_NAMES = st.sampled_from(sorted(VEHICLE_CHOICES))
INVERTER_FIELD_NAMES = st.sampled_from(sorted(INVERTER_CHOICES))
AGES_S = st.sampled_from(mostly(0.0, 0.1, 0.4, 0.9, 1.5, 5.0, -0.5, NAN))  # -0.5: the future
SWITCHES = st.sampled_from(mostly(False, True))  # the unusual state: absent, pressed
TRUST = st.sampled_from([True, False])
MEASURED = st.sampled_from(mostly("delivered", "none", "lag", "other", "nan", "inf", "-inf"))
# A report that is no percentage: CHAdeMO 0xFF, a corrupt frame, an offset gone wrong.
SOC_REPORTS = st.sampled_from(mostly(None, NAN, INF, -INF, -5.0, -0.5, 100.5, 150.0, 255.0))
SOC_JUMPS_PCT = st.sampled_from([-20.0, -3.0, -1.0, -0.3, 0.3, 1.0, 3.0, 20.0])
# NTP corrections and a clock set by hand: back a day and more, an hour, a second; forward.
WALL_JUMPS_S = st.sampled_from(
    [-90_000.0, -86_400.0, -3_600.0, -300.0, -1.0, 1.0, 300.0, 3_600.0, 86_460.0]
)
SetpointPlan = tuple[SetpointMode, float, float, float]
SETPOINT_POWERS_W = st.one_of(
    st.sampled_from([-22_000.0, -7_400.0, -3_700.0, -1_000.0, 1_000.0, 3_700.0, 7_400.0]),
    st.integers(-220, 220).map(lambda hundreds: hundreds * 100.0),
    st.sampled_from([NAN, INF, -INF]),
)
SETPOINT_PLANS = st.tuples(
    st.sampled_from(mostly(SetpointMode.POWER, SetpointMode.IDLE, SetpointMode.RELEASE)),
    SETPOINT_POWERS_W,
    st.sampled_from(mostly(0.0, -100.0, 1.0, NAN)),  # received, relative to now (1.0: future)
    st.sampled_from(mostly(7_200.0, -1.0, 0.5, 30.0, INF, NAN)),  # valid until, relative
)


@st.composite
def steps(
    draw: st.DrawFn, ages_s: st.SearchStrategy[float], events: st.SearchStrategy[str]
) -> Step:
    advance_s = draw(ADVANCES_S)
    event = draw(events)
    name, value = "", None
    if event == "vehicle":
        name = draw(VEHICLE_FIELD_NAMES)
        value = draw(VEHICLE_FIELDS[name])
    elif event == "inverter":
        name = draw(INVERTER_FIELD_NAMES)
        value = draw(INVERTER_FIELDS[name])
    elif event in ("vehicle_age", "inverter_age"):
        value = draw(ages_s if event == "vehicle_age" else AGES_S)
    elif event in ("vehicle_absent", "inverter_absent", "emergency_stop"):
        value = draw(SWITCHES)
    elif event == "measured":
        value = draw(MEASURED)
    elif event == "soc_report":
        value = draw(SOC_REPORTS)
    elif event == "soc_jump":
        value = draw(SOC_JUMPS_PCT)
    elif event == "wall_jump":
        value = draw(WALL_JUMPS_S)
    elif event == "clock_trusted":
        value = draw(TRUST)
    elif event == "pulse":
        value = draw(PULSES)
    elif event == "glitch":
        value = draw(ODD_STARTS)
    elif event == "setpoint" and draw(st.booleans()):
        value = draw(SETPOINT_PLANS)  # else: the setpoint is withdrawn
    return Step(advance_s, event, name, value)


# Where the starting SoC is put: within 1 % of the floor, the ceiling or the departure reserve,
# or in a band up to 2 % beyond where the report's resolution moves it (floor + resolution),
# with the power running toward it; or anywhere. The focused mix, for the promises about those
# boundaries, gives a quarter of the examples to each (checked by
# test_the_focus_puts_a_fifth_near_each_promise); the spread mix, for the limits, latches and
# shaping, starts most anywhere, where power flows more freely.
FOCUSED_MIX = (
    ("reserve",) * 6
    + ("floor",) * 6
    + ("ceiling",) * 6
    + ("floor band", "floor band", "ceiling band", "ceiling band", "reserve band", "reserve band")
)
SPREAD_MIX = ("anywhere",) * 6 + ("reserve", "floor", "ceiling", "floor band", "ceiling band")


def focuses(mix: tuple[str, ...]) -> st.SearchStrategy[str]:
    # Chosen by a seeded random.Random: hypothesis draws integers and sampled_from leaning on
    # their first and smallest values, which would starve the later entries of the mix.
    return st.randoms(use_true_random=True).map(lambda rng: rng.choice(mix))


FOCUSED = focuses(FOCUSED_MIX)
SPREAD = focuses(SPREAD_MIX)
# Up to 2 % beyond, most often within a few steps of the boundary.
BAND_PCT = st.integers(1, 100).map(lambda n: 2 * (n / 100) ** 2)
ONE_IN_THREE = st.sampled_from([True, False, False])
START_TRUST = st.sampled_from(mostly(True, False))
THREE_IN_FOUR = st.sampled_from(mostly(True, False))
# Within 1 %, most often very close: a cube leans toward 0 (and 0 itself is exactly at it).
NEAR_PCT = st.floats(-1.0, 1.0).map(lambda x: x**3)
RUNNING_W = st.sampled_from([0.0, 1_000.0, 3_700.0, 7_400.0])
PUSH_W = st.sampled_from([1_000.0, 3_700.0, 7_400.0, 22_000.0])
# A small battery moves a percent in seconds; an implausible report is planned at the default.
CAPACITIES_KWH = st.sampled_from([5.0, 5.0, 10.0, 62.0, 2.0, NAN, 300.0])


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    report: Report
    focus: str
    start_wall: dt.datetime
    soc0_pct: float
    state0: CoreState
    vehicle: VehicleState
    inverter: InverterState
    setpoint: SetpointPlan | None
    clock_trusted: bool  # at the start; events change it
    steps: tuple[Step, ...]


@st.composite
def scenarios(draw: st.DrawFn, focuses: st.SearchStrategy[str] = FOCUSED) -> Scenario:
    """A scenario: a policy, a plant and its reports, where the SoC starts, and the steps (calm
    ones for a focused start, stormy ones for a spread one)."""
    safety, report = draw(safety_policies())
    policy = Policy(
        owner=draw(owner_policies()),
        site=draw(SITE_POLICIES),
        safety=safety,
        wear=draw(WEAR_POLICIES),
        fallback=draw(FALLBACK_POLICIES),
        battery_capacity_default_kwh=draw(st.sampled_from([5.0, 80.0, 250.0])),
    )
    start_wall = draw(START_WALLS)
    vehicle, inverter = HEALTHY_VEHICLE, HEALTHY_INVERTER
    if draw(ONE_IN_THREE):
        which, name, value = draw(ODD_STARTS)
        if which == "vehicle":
            vehicle = replace(vehicle, **{name: value})
        else:
            inverter = replace(inverter, **{name: value})
    focus = draw(focuses)
    owner = policy.owner
    setpoint = draw(SETPOINT_PLANS) if draw(THREE_IN_FOUR) else None
    state0 = CoreState()
    soc0_pct = draw(st.floats(0.0, 100.0))
    if focus != "anywhere":
        # A small battery moves a percent in seconds: the steps cross the boundary.
        vehicle = replace(vehicle, capacity_kwh=draw(CAPACITIES_KWH))
        push_w = draw(PUSH_W)
        running_w = draw(RUNNING_W)
        if focus.startswith("ceiling"):
            # A charge already running up to the ceiling, and asked to go on.
            state0 = CoreState(last_command_w=running_w, ceiling_blocked=False)
            setpoint = (SetpointMode.POWER, push_w, 0.0, 600.0)
        else:
            state0 = CoreState(last_command_w=-running_w, floor_blocked=False)
            setpoint = (SetpointMode.POWER, -push_w, 0.0, 600.0)
    if focus.startswith("floor"):
        # The owner's floor is the one approached: the vehicle's own level (usually 10 %) is not.
        vehicle = replace(vehicle, discharge_soc_min_pct=None)
    if focus == "floor":
        soc0_pct = owner.soc_floor_pct + draw(NEAR_PCT)
    elif focus == "floor band":
        soc0_pct = owner.soc_floor_pct + safety.soc_resolution_pct + draw(BAND_PCT)
    elif focus == "ceiling":
        soc0_pct = owner.soc_ceiling_pct + draw(NEAR_PCT)
    elif focus == "ceiling band":
        soc0_pct = owner.soc_ceiling_pct - safety.soc_resolution_pct - draw(BAND_PCT)
    elif focus.startswith("reserve"):
        policy, start_wall, reserve_pct = draw(
            near_the_reserve(policy, start_wall, vehicle, inverter)
        )
        band = focus == "reserve band"
        beyond_pct = safety.soc_resolution_pct + draw(BAND_PCT) if band else draw(NEAR_PCT)
        soc0_pct = reserve_pct + beyond_pct
    ages = report_ages(report, safety)
    events = STORMY if focus == "anywhere" or focuses is SPREAD else CALM
    return Scenario(
        policy=policy,
        report=report,
        focus=focus,
        start_wall=start_wall,
        soc0_pct=min(100.0, max(0.0, soc0_pct)),
        state0=state0,
        vehicle=vehicle,
        inverter=inverter,
        setpoint=setpoint,
        clock_trusted=draw(START_TRUST),
        steps=tuple(draw(st.lists(steps(ages, events), min_size=3, max_size=30))),
    )


def report_ages(report: Report, safety: SafetyPolicy) -> st.SearchStrategy[float]:
    """Vehicle data ages the plant can honour: a fresh but old SoC only where the resolution
    leaves room beyond the report's own error for the energy that flowed since."""
    if safety.soc_resolution_pct - max(report.below_pct, report.above_pct) >= 0.25:
        return AGES_S
    return st.sampled_from([a for a in mostly(0.0, 1.5, 5.0, -0.5, NAN) if not 0.0 < a <= 1.0])


@st.composite
def near_the_reserve(
    draw: st.DrawFn,
    policy: Policy,
    start_wall: dt.datetime,
    vehicle: VehicleState,
    inverter: InverterState,
) -> tuple[Policy, dt.datetime, float]:
    """A departure placed so that the first-principles reserve is at a chosen SoC (returned); a
    low floor and a full ceiling, so the reserve is the promise that binds."""
    target_pct = float(draw(st.integers(50, 100)))
    reserve_pct = draw(st.floats(max(0.0, target_pct - 60.0), target_pct))
    margin = 1 + policy.owner.departure_margin_pct / 100
    power_w = available_charge_w(policy, vehicle, inverter)
    capacity = capacity_wh(vehicle, policy)
    left_s = 3_600.0 * draw(st.floats(0.01, 23.5))
    if power_w > 0:
        left_s = (target_pct - reserve_pct) / 100 * capacity / power_w * 3_600 * margin
        left_s = min(max(left_s, 1.0), 23.5 * 3_600)
        reserve_pct = target_pct - left_s / margin / 3_600 * power_w / capacity * 100
    else:
        reserve_pct = target_pct
    departs = (start_wall.astimezone(dt.UTC) + dt.timedelta(seconds=round(left_s))).astimezone(
        start_wall.tzinfo
    )
    owner = replace(
        policy.owner,
        soc_floor_pct=float(draw(st.integers(0, 30))),
        soc_ceiling_pct=100.0,
        departure=Departure(departs.time(), target_pct),
    )
    return replace(policy, owner=owner), start_wall, reserve_pct


# --- the oracles' physics, written from the promises and the standards ---------------------------


def le(a: float, b: float) -> bool:
    """a <= b up to float rounding."""
    return a <= b + 1e-6 * max(1.0, abs(b))


def within(value: float | None, low: float, high: float) -> float | None:
    """A reported number inside its physical range, else nothing to go by."""
    if value is None or math.isnan(value) or not low <= value <= high:
        return None
    return value


def capacity_wh(vehicle: VehicleState, policy: Policy) -> float:
    """A capacity a car can have (5..250 kWh) is believed; anything else is the default."""
    reported = within(vehicle.capacity_kwh, 5.0, 250.0)
    return (policy.battery_capacity_default_kwh if reported is None else reported) * 1000.0


def pack_voltage(vehicle: VehicleState) -> float | None:
    v = within(vehicle.pack_voltage_v, 0.0, 1_500.0)
    return v if v is not None and v > 0 else None


def share_at(temp_c: float | None, derate_c: float, cutoff_c: float) -> float:
    """Share of the rated power allowed at a temperature; an implausible one allows nothing."""
    if temp_c is None:
        return 1.0
    if within(temp_c, -60.0, 150.0) is None or temp_c >= cutoff_c:
        return 0.0
    return min(1.0, (cutoff_c - temp_c) / (cutoff_c - derate_c))


def temperature_share(policy: Policy, vehicle: VehicleState, inverter: InverterState) -> float:
    s = policy.safety
    cold = vehicle.battery_temp_min_c
    if cold is not None and (within(cold, -60.0, 150.0) is None or cold < s.battery_temp_min_c):
        return 0.0
    return min(
        share_at(vehicle.battery_temp_max_c, s.battery_temp_derate_c, s.battery_temp_cutoff_c),
        share_at(inverter.temperature_c, s.inverter_temp_derate_c, s.inverter_temp_cutoff_c),
    )


def rating_w(value: float | None) -> float:
    """An inverter rating: none reported is no limit, one that is no finite number >= 0 is 0."""
    if value is None:
        return INF
    return value if math.isfinite(value) and value >= 0 else 0.0


def current_w(limit_a: float | None, volts: float | None) -> float:
    """A current limit as power at the pack voltage; nothing without a plausible current and
    voltage."""
    if limit_a is None:
        return INF
    amps = within(limit_a, 0.0, 1_000.0)
    return 0.0 if amps is None or volts is None else amps * volts


def available_charge_w(policy: Policy, vehicle: VehicleState, inverter: InverterState) -> float:
    """The power a departure charge can count on now: installation, inverter, grid, and the
    vehicle's own request where it asks for current, all at the temperature's share."""
    rated_w = min(policy.safety.max_charge_power_w, rating_w(inverter.max_charge_power_w))
    options = [rated_w, policy.site.grid_import_limit_w]
    amps = within(vehicle.charge_current_limit_a, 0.0, 1_000.0)
    volts = pack_voltage(vehicle)
    if vehicle.charge_current_limit_a is not None and amps is None:
        options.append(0.0)  # a reported value that is not a current: nothing to count on
    elif amps and volts is not None:
        options.append(amps * volts)
    return min(options) * temperature_share(policy, vehicle, inverter)


def hard_caps(
    policy: Policy, vehicle: VehicleState, inverter: InverterState
) -> tuple[float, float]:
    """The most the command may be in each direction by the hard limits: (charge, discharge)."""
    s = policy.safety
    v = pack_voltage(vehicle)
    rated_c = min(s.max_charge_power_w, rating_w(inverter.max_charge_power_w))
    rated_d = min(s.max_discharge_power_w, rating_w(inverter.max_discharge_power_w))
    share = temperature_share(policy, vehicle, inverter)
    charge = [rated_c, share * rated_c, policy.site.grid_import_limit_w]
    discharge = [rated_d, share * rated_d, policy.site.grid_export_limit_w]
    charge.append(current_w(vehicle.charge_current_limit_a, v))
    discharge.append(current_w(vehicle.discharge_current_limit_a, v))
    if not vehicle.charge_permitted:
        charge.append(0.0)
    if not vehicle.discharge_permitted:
        discharge.append(0.0)
    high_v = vehicle.charge_voltage_limit_v
    if high_v is not None and (within(high_v, 0, 1_500) is None or v is None or v >= high_v):
        charge.append(0.0)
    low_v = vehicle.discharge_voltage_min_v
    if low_v is not None and (within(low_v, 0, 1_500) is None or v is None or v <= low_v):
        discharge.append(0.0)
    if cell_blocks(vehicle.cell_voltage_max_v, lambda volts: volts >= s.cell_voltage_max_v):
        charge.append(0.0)
    if cell_blocks(vehicle.cell_voltage_min_v, lambda volts: volts <= s.cell_voltage_min_v):
        discharge.append(0.0)
    return min(charge), min(discharge)


def cell_blocks(volts: float | None, at_limit: Callable[[float], bool]) -> bool:
    """A reported cell voltage at its limit, or not a cell voltage at all, blocks."""
    if volts is None:
        return False
    return within(volts, *CELL_VOLTAGE_RANGE_V) is None or at_limit(volts)


@functools.lru_cache(maxsize=8_192)
def local_to_utc(day: dt.date, at: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """The first instant at which the local clock reads ``at`` on ``day`` or later.

    Found on the clock's readings, not on fold: the candidates are the local time at each UTC
    offset the zone uses around that day; where none reads back (the hour skipped in spring),
    the minutes between them are scanned for the first that reads at or after it.
    """
    naive = dt.datetime.combine(day, at)
    offsets = {
        (naive + dt.timedelta(hours=hours)).replace(tzinfo=tz).utcoffset()
        for hours in (-26, -2, 0, 2, 26)
    }
    candidates = sorted(
        (naive - offset).replace(tzinfo=dt.UTC) for offset in offsets if offset is not None
    )
    reads_back = [c for c in candidates if c.astimezone(tz).replace(tzinfo=None) == naive]
    if reads_back:
        return reads_back[0]
    moment = candidates[0]
    while moment.astimezone(tz).replace(tzinfo=None) < naive:
        moment += dt.timedelta(minutes=1)
    return moment


def next_departure(now_wall: dt.datetime, at: dt.time) -> dt.datetime:
    """The first departure strictly after ``now_wall``."""
    tz = now_wall.tzinfo
    assert tz is not None
    for days in (-1, 0, 1, 2):
        candidate = local_to_utc(now_wall.date() + dt.timedelta(days=days), at, tz)
        if candidate > now_wall:
            return candidate
    raise AssertionError("no departure within two days")


# --- the plant and the control loop: nothing but decide() and reset_faults() --------------------


@dataclass(frozen=True)
class Record:
    """One decision, what led to it, and what its command then did to the battery."""

    now: Now
    interval_s: float
    inputs: Inputs
    before: CoreState
    decision: Decision
    after: CoreState
    reset_accepted: bool | None  # None: no reset command before this decision
    true_pct: float  # the plant's true SoC at the decision
    capacity_wh: float  # the plant's capacity while this command flowed
    flowed_s: float  # how long the command flowed (the next step, or the revert timer)
    true_after_pct: float  # the true SoC once it had


@dataclass
class Plant:
    """A battery whose true SoC follows the power delivered, and its history for aged reports."""

    true_pct: float
    capacity_wh: float
    history: list[tuple[float, float]] = field(default_factory=list)

    def move(self, now_s: float, power_w: float, advance_s: float, revert_s: float) -> float:
        """Deliver ``power_w`` for ``advance_s`` (0 W after the inverter's revert timer)."""
        flowed_s = min(advance_s, revert_s)
        self.history.append((now_s, self.true_pct))
        moved_pct = power_w * flowed_s / 3_600 / self.capacity_wh * 100
        self.true_pct = min(100.0, max(0.0, self.true_pct + moved_pct))
        self.history.append((now_s + flowed_s, self.true_pct))
        del self.history[:-80]
        return flowed_s

    def jump(self, delta_pct: float) -> None:
        """A change the plant does not explain (a BMS recalibration): reports start afresh."""
        self.true_pct = min(100.0, max(0.0, self.true_pct + delta_pct))
        self.history.clear()

    def at(self, when_s: float) -> float:
        """The true SoC at ``when_s`` (piecewise linear between the points kept)."""
        later = self.true_pct
        for (t0, p0), (t1, p1) in zip(
            reversed(self.history[:-1]), reversed(self.history[1:]), strict=True
        ):
            if t0 <= when_s <= t1:
                return p1 if t1 == t0 else p0 + (p1 - p0) * (when_s - t0) / (t1 - t0)
            if when_s > t1:
                return later
            later = p0
        return later


# Events that set the World field of their own name.
SWITCHED_FIELDS = (
    "vehicle_absent",
    "inverter_absent",
    "emergency_stop",
    "measured",
    "soc_report",
    "clock_trusted",
)


@dataclass
class World:
    """What the links would report; events change it, time ages it."""

    vehicle: VehicleState
    inverter: InverterState
    wall: dt.datetime
    now_s: float = 1_000.0
    vehicle_absent: bool = False
    inverter_absent: bool = False
    soc_report: float | None = None  # a report that is no percentage, in force until replaced
    vehicle_age_s: float = 0.0
    inverter_age_s: float = 0.0
    measured: str = "delivered"
    setpoint: Setpoint | None = None
    emergency_stop: bool = False
    clock_trusted: bool = True
    flowing_w: float = 0.0  # what the inverter delivers now
    flowed_before_w: float = 0.0  # what it delivered in the step before
    pulse: str | None = None  # a cause present at this decision only
    glitch: tuple[str, str, Any] | None = None  # an odd value in this decision's snapshot only

    def apply(self, step: Step, plant: Plant) -> None:
        self.pulse = step.value if step.event == "pulse" else None
        self.glitch = step.value if step.event == "glitch" else None
        if step.event == "vehicle":
            self.vehicle = replace(self.vehicle, **{step.name: step.value})
        elif step.event == "inverter":
            self.inverter = replace(self.inverter, **{step.name: step.value})
        elif step.event in ("vehicle_age", "inverter_age"):
            setattr(self, f"{step.event}_s", step.value)
        elif step.event in SWITCHED_FIELDS:
            setattr(self, step.event, step.value)
        elif step.event == "setpoint":
            self.setpoint = self.setpoint_from(step.value)
        elif step.event == "soc_jump":
            plant.jump(step.value)
        elif step.event == "wall_jump":
            self.advance_wall(step.value)

    def advance_wall(self, seconds: float) -> None:
        """The wall clock moves in real seconds, across DST changes (aware arithmetic in Python
        adds to the local reading instead)."""
        tz = self.wall.tzinfo
        self.wall = (self.wall.astimezone(dt.UTC) + dt.timedelta(seconds=seconds)).astimezone(tz)

    def setpoint_from(self, plan: SetpointPlan | None) -> Setpoint | None:
        if plan is None:
            return None
        mode, power_w, from_s, until_s = plan
        return Setpoint("sp", self.now_s + from_s, self.now_s + until_s, mode, power_w)

    def inputs(self, plant: Plant, report: Report) -> Inputs:
        observed_s = self.now_s - self.vehicle_age_s
        soc_pct = self.soc_report
        if soc_pct is None:
            soc_pct = report.of(plant.at(min(observed_s, self.now_s)))
        vehicle = replace(self.vehicle, observed_at_s=observed_s, soc_pct=soc_pct)
        inverter = self.inverter
        if self.pulse == "vehicle_fault":
            vehicle = replace(vehicle, faults=("pulse",))
        elif self.pulse == "vehicle_fault_phase":
            vehicle = replace(vehicle, phase=VehiclePhase.FAULT)
        elif self.pulse == "stop_requested":
            vehicle = replace(vehicle, stop_requested=True)
        elif self.pulse == "inverter_fault":
            inverter = replace(inverter, faults=("pulse",))
        if self.glitch is not None:
            which, name, value = self.glitch
            if which == "vehicle":
                vehicle = replace(vehicle, **{name: value})
            else:
                inverter = replace(inverter, **{name: value})
        measured = {
            "delivered": self.flowing_w,
            "lag": self.flowed_before_w,
            "none": None,
            "other": -2_500.0,
            "nan": NAN,
            "inf": INF,
            "-inf": -INF,
        }[self.measured]
        inverter = replace(
            inverter,
            observed_at_s=self.now_s - self.inverter_age_s,
            measured_power_w=measured,
        )
        return Inputs(
            None if self.vehicle_absent else vehicle,
            None if self.inverter_absent else inverter,
            self.setpoint,
            self.emergency_stop or self.pulse == "emergency_stop",
            self.clock_trusted,
        )


@dataclass
class Pending:
    """A decision whose command has not yet flowed."""

    now: Now
    interval_s: float
    inputs: Inputs
    before: CoreState
    decision: Decision
    after: CoreState
    reset_accepted: bool | None
    true_pct: float


def simulate(scenario: Scenario) -> list[Record]:
    policy = scenario.policy
    revert_s = policy.safety.floor_horizon_s
    world = World(scenario.vehicle, scenario.inverter, scenario.start_wall)
    world.clock_trusted = scenario.clock_trusted
    world.setpoint = world.setpoint_from(scenario.setpoint)
    plant = Plant(scenario.soc0_pct, capacity_wh(scenario.vehicle, policy))
    state = replace(scenario.state0, decided_at_s=world.now_s - 0.1)
    world.flowing_w = state.last_command_w
    records: list[Record] = []
    pending: Pending | None = None
    for step in scenario.steps:
        flowed_s = plant.move(world.now_s, state.last_command_w, step.advance_s, revert_s)
        if pending is not None:
            records.append(finish(pending, plant, flowed_s))
        world.flowed_before_w = world.flowing_w
        world.flowing_w = state.last_command_w if step.advance_s < revert_s else 0.0
        world.now_s += step.advance_s
        world.advance_wall(step.advance_s)
        world.apply(step, plant)
        reset_accepted = None
        if step.event == "manual_reset":
            state, outcome = reset_faults(state)
            reset_accepted = outcome.accepted
        inputs = world.inputs(plant, scenario.report)
        if inputs.vehicle is not None:
            # The plant's battery is the size the core counts on: the promise is about that one.
            plant.capacity_wh = capacity_wh(inputs.vehicle, policy)
        now = Now(world.now_s, world.wall)
        before = state
        assert before.decided_at_s is not None
        interval_s = world.now_s - before.decided_at_s
        decision, state = decide(inputs, state, now, policy)
        pending = Pending(now, interval_s, inputs, before, decision, state, reset_accepted, 0.0)
        pending.true_pct = plant.true_pct
    assert pending is not None
    # After the last decision its command flows until the inverter's revert timer.
    flowed_s = plant.move(world.now_s, state.last_command_w, revert_s, revert_s)
    records.append(finish(pending, plant, flowed_s))
    return records


def finish(pending: Pending, plant: Plant, flowed_s: float) -> Record:
    return Record(
        now=pending.now,
        interval_s=pending.interval_s,
        inputs=pending.inputs,
        before=pending.before,
        decision=pending.decision,
        after=pending.after,
        reset_accepted=pending.reset_accepted,
        true_pct=pending.true_pct,
        capacity_wh=plant.capacity_wh,
        flowed_s=flowed_s,
        true_after_pct=plant.true_pct,
    )


# --- the oracles that follow a session ------------------------------------------------------------


@dataclass
class SessionOracle:
    """The session's departure and the latches, followed from the inputs alone."""

    policy: Policy
    departure_at: dt.datetime | None = None
    manual_fault: bool = False  # a cause only a person may clear was seen since the last reset
    last_fault_s: float | None = None
    last_stop_s: float | None = None
    emergency_since_reset: bool = False
    awaiting: bool = False  # an emergency stop was reset: no power until a start
    start_after_s: float | None = None
    last_decision_s: float | None = None

    def follow(self, rec: Record) -> None:
        """Update on one decision, before it is judged."""
        inputs, now_s = rec.inputs, rec.now.monotonic_s
        if rec.reset_accepted:
            self.manual_fault = False
            self.last_fault_s = self.last_stop_s = None
            if self.emergency_since_reset:
                self.awaiting, self.start_after_s = True, self.last_decision_s
            self.emergency_since_reset = False
        safety = self.policy.safety
        manual_mode = safety.fault_reset is FaultResetMode.MANUAL
        v, i = inputs.vehicle, inputs.inverter
        vehicle_fault = v is not None and (bool(v.faults) or v.phase is VehiclePhase.FAULT)
        inverter_fault = i is not None and bool(i.faults)
        if inputs.emergency_stop or vehicle_fault or inverter_fault:
            self.last_fault_s = now_s
        if (
            inputs.emergency_stop
            or (vehicle_fault and (manual_mode or "vehicle_fault" in safety.manual_reset_faults))
            or (inverter_fault and (manual_mode or "inverter_fault" in safety.manual_reset_faults))
        ):
            self.manual_fault = True
        self.emergency_since_reset |= inputs.emergency_stop
        if v is not None and v.stop_requested:
            self.last_stop_s = now_s
        if self.awaiting and self.started(inputs, now_s):
            self.awaiting = False
        self.follow_departure(inputs, rec.now.wall)
        self.last_decision_s = now_s

    def started(self, inputs: Inputs, now_s: float) -> bool:
        """A start after an emergency stop reset: the car unplugged, or a new setpoint."""
        if inputs.vehicle is not None and inputs.vehicle.phase is VehiclePhase.UNPLUGGED:
            return True
        sp = inputs.setpoint
        if sp is None or not sp.received_at_s <= now_s <= sp.valid_until_s:
            return False
        if sp.mode is SetpointMode.RELEASE:
            return False
        if sp.mode is SetpointMode.POWER and not math.isfinite(sp.power_w):
            return False
        return self.start_after_s is None or sp.received_at_s > self.start_after_s

    def follow_departure(self, inputs: Inputs, wall: dt.datetime) -> None:
        """Fixed when a session is first seen on a trusted clock, kept until the car is seen
        unplugged; a departure more than a day ahead means the clock went back: fixed again."""
        departure, v = self.policy.owner.departure, inputs.vehicle
        if departure is None or (v is not None and v.phase is VehiclePhase.UNPLUGGED):
            self.departure_at = None
            return
        if v is None:
            return
        ahead_s = None if self.departure_at is None else (self.departure_at - wall).total_seconds()
        if ahead_s is not None and ahead_s <= 25 * 3_600:
            return
        if inputs.clock_trusted:
            self.departure_at = next_departure(wall, departure.time_local)
        else:
            self.departure_at = None

    def fault_held(self, now_s: float) -> bool:
        hold_s = self.policy.safety.fault_hold_s
        recent = self.last_fault_s is not None and now_s - self.last_fault_s < hold_s
        return self.manual_fault or recent

    def stop_held(self, now_s: float) -> bool:
        hold_s = self.policy.safety.fault_hold_s
        return self.last_stop_s is not None and now_s - self.last_stop_s < hold_s

    def left_s(self, wall: dt.datetime, clock_trusted: bool) -> float | None:
        """Seconds to the departure (0 once due); None when it cannot be known."""
        if self.departure_at is None or not clock_trusted:
            return None
        return max(0.0, (self.departure_at - wall).total_seconds())


def reserve_pct(policy: Policy, rec: Record, left_s: float | None) -> float:
    """The lowest SoC from which the target is still reached in ``left_s``: the energy missing,
    at the power available now, with the margin. Without a time left, the target itself."""
    departure = policy.owner.departure
    assert departure is not None
    vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
    assert vehicle is not None
    assert inverter is not None
    power_w = available_charge_w(policy, vehicle, inverter)
    if left_s is None or power_w <= 0:
        return departure.target_soc_pct
    margin = 1 + policy.owner.departure_margin_pct / 100
    fits_wh = left_s / 3_600 / margin * power_w
    return departure.target_soc_pct - fits_wh / capacity_wh(vehicle, policy) * 100


def charge_fits(policy: Policy, rec: Record, soc_pct: float, left_s: float | None) -> bool:
    """From ``soc_pct`` the target is reached in time, margin included (first principles)."""
    departure = policy.owner.departure
    assert departure is not None
    missing_pct = departure.target_soc_pct - soc_pct
    if missing_pct <= 1e-9:
        return True
    vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
    assert vehicle is not None
    assert inverter is not None
    power_w = available_charge_w(policy, vehicle, inverter)
    if left_s is None or power_w <= 0:
        return False
    need_wh = missing_pct / 100 * capacity_wh(vehicle, policy)
    need_s = need_wh / power_w * 3_600 * (1 + policy.owner.departure_margin_pct / 100)
    return le(need_s, left_s)


def reported_soc(rec: Record) -> float:
    vehicle = rec.inputs.vehicle
    assert vehicle is not None
    assert vehicle.soc_pct is not None
    return vehicle.soc_pct


def floors(policy: Policy, vehicle: VehicleState) -> float:
    """The owner's floor and the vehicle's own minimum discharge level (none if implausible)."""
    level = vehicle.discharge_soc_min_pct
    if level is None:
        return policy.owner.soc_floor_pct
    known = within(level, 0.0, 100.0)
    return INF if known is None else max(policy.owner.soc_floor_pct, known)


# --- the properties -------------------------------------------------------------------------------

# The profile named by HYPOTHESIS_PROFILE ("ci" by default; all registered in conftest.py).
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@PROFILE
@given(scenarios())
def test_true_soc_never_discharged_below_the_floor(scenario: Scenario) -> None:
    """The plant's true SoC never goes below the owner's floor, or the vehicle's own minimum
    level, by a discharge (a car already below it is never discharged further)."""
    policy = scenario.policy
    for rec in simulate(scenario):
        vehicle = rec.inputs.vehicle
        if rec.true_after_pct >= rec.true_pct or vehicle is None:
            continue
        floor_pct = floors(policy, vehicle)
        assert rec.true_after_pct >= min(floor_pct, rec.true_pct) - 1e-9, (
            f"true SoC {rec.true_pct} -> {rec.true_after_pct} % under floor {floor_pct} %"
        )


@PROFILE
@given(scenarios())
def test_true_soc_never_charged_above_the_ceiling(scenario: Scenario) -> None:
    """The plant's true SoC never goes above the owner's ceiling by a charge, the departure
    guarantee's included."""
    ceiling_pct = scenario.policy.owner.soc_ceiling_pct
    for rec in simulate(scenario):
        if rec.true_after_pct <= rec.true_pct:
            continue
        assert rec.true_after_pct <= max(ceiling_pct, rec.true_pct) + 1e-9, (
            f"true SoC {rec.true_pct} -> {rec.true_after_pct} % over ceiling {ceiling_pct} %"
        )


@PROFILE
@given(scenarios())
def test_departure_target_stays_reachable_whenever_discharging(scenario: Scenario) -> None:
    """Whenever discharge flows, the charge back to the target still fits in the time left from
    the true SoC it leaves behind: the energy missing at the derated power available, with the
    margin. From departure time on, or without a trusted clock, that means at the target."""
    policy = scenario.policy
    session = SessionOracle(policy)
    for rec in simulate(scenario):
        session.follow(rec)
        if policy.owner.departure is None or rec.decision.command.power_w >= 0:
            continue
        # Judged when the discharge decided here has flowed.
        then = rec.now.wall + dt.timedelta(seconds=rec.flowed_s)
        left_s = session.left_s(then, rec.inputs.clock_trusted)
        assert charge_fits(policy, rec, rec.true_after_pct, left_s), (
            f"discharged to {rec.true_after_pct} % with {left_s} s left"
        )


@PROFILE
@given(scenarios())
def test_departure_guarantee_charges_once_the_charge_no_longer_fits(scenario: Scenario) -> None:
    """Once the lowest SoC the report allows is at or below the first-principles reserve, the
    core charges at the power available (or the charge limit), whatever the aggregator or the
    fallback asks, and goes on charging until that lowest SoC reaches the target; it charges
    only a car that may be below the target."""
    policy = scenario.policy
    session = SessionOracle(policy)
    guarantee_on = False  # the oracle's own: on at the reserve, off at the target or a gate
    for rec in simulate(scenario):
        session.follow(rec)
        departure, decision = policy.owner.departure, rec.decision
        charging = rec.after.departure_charging
        if departure is None or decision.soc_floor_pct is None:
            assert not charging
            guarantee_on = False
            continue
        vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
        assert vehicle is not None
        assert inverter is not None
        low_pct = reported_soc(rec) - policy.safety.soc_resolution_pct
        if charging:
            # The lowest true SoC, even with everything in flight drained, is below target.
            in_flight_pct = (
                22_000 * policy.safety.floor_horizon_s / 36 / capacity_wh(vehicle, policy)
            )
            assert low_pct - in_flight_pct < departure.target_soc_pct
        left_s = session.left_s(rec.now.wall, rec.inputs.clock_trusted)
        if left_s is None:
            # No trusted clock: the reserve vetoes discharge, but no charge is forced toward a
            # departure the core cannot place.
            assert not charging
            guarantee_on = False
            continue
        reserve = reserve_pct(policy, rec, left_s)
        if low_pct >= departure.target_soc_pct - 1e-6:
            guarantee_on = False
        elif low_pct <= reserve - 1e-6:
            guarantee_on = True
        if not guarantee_on or session.awaiting:
            continue
        power_w = available_charge_w(policy, vehicle, inverter)
        expected_w = min(power_w, decision.cap_w(Direction.CHARGE))
        assert le(expected_w, decision.target_w), (
            f"low {low_pct} % (reserve {reserve} %), asked {decision.target_w} W"
        )
        assert decision.command.power_w >= 0


@PROFILE
@given(scenarios(SPREAD))
def test_command_never_exceeds_any_limit_in_force(scenario: Scenario) -> None:
    """The command respects every reported limit and every hard limit the oracle knows; the
    floors and ceiling on the report widened by its resolution; the wear budget per local day
    (a clock stepped back keeps the later day's count); no peak discharge on an untrusted clock."""
    policy = scenario.policy
    resolution_pct = policy.safety.soc_resolution_pct
    budget_wh = policy.wear.max_discharge_kwh_per_day * 1000
    discharged_wh, day = 0.0, None
    for rec in simulate(scenario):
        # Lower bound of the local day's discharged energy: the commanded discharge alone.
        today = rec.now.wall.date()
        if day is None or today > day:
            discharged_wh, day = 0.0, today
        discharged_wh += max(0.0, -rec.before.last_command_w) * rec.interval_s / 3600
        decision = rec.decision
        if not rec.inputs.clock_trusted and decision.request.source is not RequestSource.SETPOINT:
            assert decision.request.power_w >= 0
        power_w = decision.command.power_w
        assert le(power_w, decision.cap_w(Direction.CHARGE))
        assert le(-power_w, decision.cap_w(Direction.DISCHARGE))
        if power_w == 0:
            continue
        vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
        assert vehicle is not None
        assert inverter is not None
        soc_pct = reported_soc(rec)
        assert 0 <= soc_pct <= 100
        charge_max_w, discharge_max_w = hard_caps(policy, vehicle, inverter)
        if power_w > 0:
            assert le(power_w, charge_max_w)
            assert soc_pct + resolution_pct < policy.owner.soc_ceiling_pct
        else:
            assert le(-power_w, discharge_max_w)
            assert soc_pct - resolution_pct > floors(policy, vehicle)
            assert discharged_wh < min(budget_wh, wear_cycles_wh(policy, vehicle))


def wear_cycles_wh(policy: Policy, vehicle: VehicleState) -> float:
    cycles = policy.wear.max_cycles_per_day
    return INF if cycles is None else cycles * capacity_wh(vehicle, policy)


def implausible_temperature(inputs: Inputs) -> bool:
    v, i = inputs.vehicle, inputs.inverter
    temps = [] if v is None else [v.battery_temp_max_c, v.battery_temp_min_c]
    temps += [] if i is None else [i.temperature_c]
    return any(t is not None and within(t, -60.0, 150.0) is None for t in temps)


@PROFILE
@given(scenarios(SPREAD))
def test_any_stale_input_fault_or_pending_start_yields_zero(scenario: Scenario) -> None:
    """Stale or missing data, no session, an SoC that is no percentage, a fault, a stop, an
    unreset latch (an emergency stop always needs a person) or a reset emergency stop awaiting
    its start: 0 W. An implausible temperature: 0 W and disabled."""
    policy = scenario.policy
    session = SessionOracle(policy)
    previous: Record | None = None
    for rec in simulate(scenario):
        now_s = rec.now.monotonic_s
        if rec.reset_accepted:
            # A reset is accepted only once the causes were gone at the last decision.
            assert previous is not None
            p = previous.inputs
            assert not p.emergency_stop
            assert p.vehicle is None or not (p.vehicle.faults or p.vehicle.stop_requested)
            assert p.vehicle is None or p.vehicle.phase is not VehiclePhase.FAULT
            assert p.inverter is None or not p.inverter.faults
        session.follow(rec)
        inputs = rec.inputs
        v, i = inputs.vehicle, inputs.inverter
        command = rec.decision.command
        fault_held = session.fault_held(now_s)
        no_session = (
            v is None
            or v.phase is not VehiclePhase.ENERGY_TRANSFER
            or within(v.soc_pct, 0.0, 100.0) is None
        )
        stale = (
            v is None
            or not 0 <= now_s - v.observed_at_s <= policy.safety.vehicle_stale_after_s
            or i is None
            or not i.reachable
            or not 0 <= now_s - i.observed_at_s <= policy.safety.inverter_stale_after_s
        )
        if fault_held or session.stop_held(now_s) or no_session or stale or session.awaiting:
            assert command.power_w == 0
        if fault_held or stale or no_session or implausible_temperature(inputs):
            assert not command.enable
        in_session = v is not None and v.phase not in (VehiclePhase.UNPLUGGED, VehiclePhase.ENDED)
        if fault_held or (stale and in_session):
            assert rec.decision.power_state is PowerState.FAULT
        if not command.enable:
            assert command.power_w == 0
        previous = rec


@PROFILE
@given(scenarios(SPREAD))
def test_ramp_never_exceeded_except_toward_zero(scenario: Scenario) -> None:
    """Each change is within ramp x interval, unless it moves toward 0 W."""
    safety = scenario.policy.safety
    for rec in simulate(scenario):
        last_w = rec.before.last_command_w
        new_w = rec.decision.command.power_w
        step_w = safety.ramp_w_per_s * min(rec.interval_s, safety.ramp_max_interval_s)
        toward_zero = last_w * new_w >= 0 and abs(new_w) <= abs(last_w)
        assert toward_zero or le(abs(new_w - last_w), step_w)


@PROFILE
@given(scenarios(SPREAD))
def test_reported_binding_limit_is_the_one_that_binds(scenario: Scenario) -> None:
    """The target is the power wanted, clamped to the limits: the request, 0 W while a reset
    emergency stop awaits its start, or the departure guarantee's available power when it asks
    more. The binding limit is the smallest in the wanted direction, and it cut the power; when
    the guarantee's power fits, the departure reserve is reported as binding."""
    policy = scenario.policy
    session = SessionOracle(policy)
    for rec in simulate(scenario):
        session.follow(rec)
        d = rec.decision
        charge_cap_w, discharge_cap_w = d.cap_w(Direction.CHARGE), d.cap_w(Direction.DISCHARGE)
        wanted_w = d.request.power_w
        guarantee = False
        if session.awaiting:
            wanted_w = 0.0
        elif rec.after.departure_charging:
            vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
            assert vehicle is not None
            assert inverter is not None
            power_w = available_charge_w(policy, vehicle, inverter)
            guarantee = power_w > wanted_w
            wanted_w = max(wanted_w, power_w)
        expected_w = min(max(wanted_w, -discharge_cap_w), charge_cap_w)
        assert math.isclose(d.target_w, expected_w, rel_tol=1e-9, abs_tol=1e-6)
        if d.binding is None:
            assert not guarantee
            assert d.target_w == wanted_w
        elif d.binding.direction is Direction.CHARGE:
            assert d.binding in d.limits
            assert d.binding.power_w == charge_cap_w < wanted_w
            assert d.target_w == d.binding.power_w
        elif guarantee and le(wanted_w, charge_cap_w):
            assert d.binding.rule is Rule.DEPARTURE_RESERVE
        else:
            assert d.binding in d.limits
            assert d.binding.power_w == discharge_cap_w < -wanted_w
            assert d.target_w == -d.binding.power_w


# --- the strategy itself --------------------------------------------------------------------------


def near(scenario: Scenario) -> set[str]:
    """Which promises the starting true SoC is within 1 % of."""
    policy, soc_pct = scenario.policy, scenario.soc0_pct
    found = set()
    if abs(soc_pct - policy.owner.soc_floor_pct) <= 1:
        found.add("floor")
    if abs(soc_pct - policy.owner.soc_ceiling_pct) <= 1:
        found.add("ceiling")
    departure = policy.owner.departure
    if departure is not None:
        at = next_departure(scenario.start_wall, departure.time_local)
        left_s = (at - scenario.start_wall).total_seconds()
        power_w = available_charge_w(policy, scenario.vehicle, scenario.inverter)
        capacity = capacity_wh(scenario.vehicle, policy)
        margin = 1 + policy.owner.departure_margin_pct / 100
        reserve = departure.target_soc_pct
        if power_w > 0:
            reserve -= left_s / 3_600 / margin * power_w / capacity * 100
        if abs(soc_pct - reserve) <= 1:
            found.add("reserve")
    return found


@pytest.mark.parametrize("promise", ["floor", "ceiling", "reserve"])
def test_the_focus_puts_a_fifth_near_each_promise(promise: str) -> None:
    """The focused mix gives each promise at least a fifth of the examples, and each of those
    starts within 1 % of it (checked on fixed examples). Hypothesis draws choices unevenly from
    run to run, so the share is pinned by the mix's weights, not by counting one run."""
    assert FOCUSED_MIX.count(promise) / len(FOCUSED_MIX) >= 1 / 5
    starts: list[set[str]] = []

    @settings(max_examples=100, derandomize=True, database=None, phases=[Phase.generate])
    @given(scenarios(st.just(promise)))
    def start(scenario: Scenario) -> None:
        starts.append(near(scenario))

    start()
    assert len(starts) >= 90
    assert sum(promise in found for found in starts) >= 0.95 * len(starts)


# --- policies the core cannot obey are refused ----------------------------------------------------

BAD_VALUES: dict[str, tuple[Callable[..., object], list[float]]] = {
    "max_charge_power_w": (SafetyPolicy, [NAN, INF, -INF, -1.0]),
    "max_discharge_power_w": (SafetyPolicy, [NAN, INF, -INF, -1.0]),
    "ramp_w_per_s": (SafetyPolicy, [NAN, INF, -INF, -1.0, 0.0]),
    "ramp_max_interval_s": (SafetyPolicy, [NAN, INF, -1.0, 0.0]),
    "vehicle_stale_after_s": (SafetyPolicy, [NAN, INF, -1.0, 0.0]),
    "inverter_stale_after_s": (SafetyPolicy, [NAN, INF, -1.0, 0.0]),
    "floor_hysteresis_pct": (SafetyPolicy, [NAN, INF, -1.0]),
    "ceiling_hysteresis_pct": (SafetyPolicy, [NAN, INF, -1.0]),
    "battery_temp_min_c": (SafetyPolicy, [NAN, INF, -INF]),
    "fault_hold_s": (SafetyPolicy, [NAN, INF, -1.0]),
    "soc_resolution_pct": (SafetyPolicy, [NAN, INF, -1.0, 10.5]),
    "floor_horizon_s": (SafetyPolicy, [NAN, INF, -1.0]),
    "soc_floor_pct": (OwnerPolicy, [NAN, INF, -1.0, 100.5]),
    "soc_ceiling_pct": (OwnerPolicy, [NAN, -INF, -1.0, 100.5]),
    "departure_margin_pct": (OwnerPolicy, [NAN, INF, -1.0]),
    "grid_import_limit_w": (SitePolicy, [NAN, INF, -1.0]),
    "grid_export_limit_w": (SitePolicy, [NAN, INF, -1.0]),
    "max_discharge_kwh_per_day": (WearPolicy, [NAN, INF, -1.0]),
    "max_cycles_per_day": (WearPolicy, [NAN, INF, -1.0]),
    "charge_power_w": (FallbackPolicy, [NAN, INF, -1.0]),
    "discharge_power_w": (FallbackPolicy, [NAN, INF, -1.0]),
    "battery_capacity_default_kwh": (Policy, [NAN, INF, -80.0, 0.0, 1.0, 4.9, 250.5]),
}


@pytest.mark.parametrize(
    ("build", "name", "value"),
    [(build, name, value) for name, (build, values) in BAD_VALUES.items() for value in values],
)
def test_a_policy_value_the_core_cannot_obey_is_refused(
    build: Callable[..., object], name: str, value: float
) -> None:
    """NaN, infinite, negative or out-of-range policy values are a ValueError naming the field."""
    with pytest.raises(ValueError, match=name):
        build(**{name: value})


def test_a_departure_target_outside_0_to_100_is_refused() -> None:
    for target in (NAN, -1.0, 100.5):
        with pytest.raises(ValueError, match="target_soc_pct"):
            Departure(dt.time(7), target)
