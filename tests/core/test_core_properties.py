"""Properties of the safety core over random sequences of inputs and times.

Each scenario is a random policy, a start time (some next to a DST change) and a sequence of
steps: time advances, the vehicle's SoC drifts, snapshots age, limits, flags and faults come and
go, setpoints arrive and expire, the emergency stop and the manual reset are pressed. The checks
use oracles written here independently of the core, not the core's own numbers, wherever the
property allows it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import zoneinfo
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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
from controller.core.rules import Direction
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
NAN = math.nan


def hhmm(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


def mostly(usual: object, *others: object) -> list[Any]:
    """Choices where ``usual`` comes up three times in four (sampled_from is uniform)."""
    return [usual] * (3 * len(others)) + list(others)


# --- strategies ---------------------------------------------------------------------------------


# Strategies are built once, at import: building them inside a composite costs more than drawing.
MINUTES = st.integers(0, 1439)
SAFETY_POLICIES = st.builds(
    SafetyPolicy,
    max_charge_power_w=st.sampled_from([3_700.0, 7_400.0, 11_000.0]),
    max_discharge_power_w=st.sampled_from([3_700.0, 7_400.0]),
    ramp_w_per_s=st.sampled_from([100.0, 2_000.0, 50_000.0]),
    ramp_max_interval_s=st.sampled_from([0.2, 1.0, 10.0]),
    vehicle_stale_after_s=st.sampled_from([0.5, 1.0]),
    inverter_stale_after_s=st.sampled_from([1.0, 3.0]),
    floor_hysteresis_pct=st.sampled_from([0.0, 2.0, 5.0]),
    ceiling_hysteresis_pct=st.sampled_from([0.0, 2.0]),
    fault_reset=st.sampled_from(mostly(FaultResetMode.AUTO, FaultResetMode.MANUAL)),
    fault_hold_s=st.sampled_from(mostly(2.0, 0.0, 0.3, 60.0)),
)
SITE_POLICIES = st.builds(
    SitePolicy,
    grid_import_limit_w=st.sampled_from(mostly(11_000.0, 3_680.0, 0.0)),
    grid_export_limit_w=st.sampled_from(mostly(7_400.0, 3_680.0, 0.0)),
)
WEAR_POLICIES = st.builds(
    WearPolicy,
    max_discharge_kwh_per_day=st.sampled_from(mostly(20.0, 0.0, 0.02, 1.0)),
    max_cycles_per_day=st.sampled_from(mostly(None, 0.001, 1.0)),
)


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
TENTHS = st.integers(0, 10)


@st.composite
def owner_policies(draw: st.DrawFn) -> OwnerPolicy:
    floor = draw(st.integers(0, 60))
    ceiling = min(100, floor + 1 + draw(st.integers(0, 60)))
    departure = None
    if draw(st.booleans()):
        target = floor + (ceiling - floor) * draw(TENTHS) // 10
        departure = Departure(time_local=hhmm(draw(MINUTES)), target_soc_pct=target)
    return OwnerPolicy(
        soc_floor_pct=floor,
        soc_ceiling_pct=ceiling,
        departure=departure,
        departure_margin_pct=draw(st.sampled_from([0.0, 20.0, 100.0])),
    )


POLICIES = st.builds(
    Policy,
    owner=owner_policies(),
    site=SITE_POLICIES,
    safety=SAFETY_POLICIES,
    wear=WEAR_POLICIES,
    fallback=FALLBACK_POLICIES,
    battery_capacity_default_kwh=st.sampled_from([1.0, 80.0]),
)

START_ANCHORS = (
    dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 28, 12, tzinfo=AMSTERDAM),  # the next night springs forward
    dt.datetime(2026, 10, 24, 12, tzinfo=AMSTERDAM),  # the next night falls back
    dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
)
START_WALLS = st.builds(
    lambda anchor, minutes: anchor + dt.timedelta(minutes=minutes),
    st.sampled_from(START_ANCHORS),
    MINUTES,
)

# What a field can change to in one event: mostly back to normal, so a session keeps recovering
# and power keeps flowing between the blocks.
VEHICLE_CHOICES: dict[str, list[Any]] = {
    "phase": mostly(
        VehiclePhase.ENERGY_TRANSFER,
        VehiclePhase.READY,
        VehiclePhase.STOPPING,
        VehiclePhase.UNPLUGGED,
        VehiclePhase.FAULT,
    ),
    "pack_voltage_v": mostly(380.0, 400.0, 250.0, None, 0.0, NAN),
    "charge_current_limit_a": mostly(16.0, None, 0.0, 31.0, 125.0),
    "charge_voltage_limit_v": mostly(410.0, None, 300.0),
    "discharge_current_limit_a": mostly(15.0, None, 0.0, 30.0),
    "discharge_voltage_min_v": mostly(250.0, None, 390.0),
    "discharge_soc_min_pct": mostly(10.0, None, 30.0, 50.0),
    "battery_temp_max_c": mostly(25.0, None, 47.0, 60.0, NAN),
    "battery_temp_min_c": mostly(10.0, None, -20.0),
    "cell_voltage_max_v": mostly(4.0, None, 4.25),
    "cell_voltage_min_v": mostly(3.6, None, 2.9),
    "capacity_kwh": mostly(62.0, None, 2.0),
    "charge_permitted": mostly(True, False),
    "discharge_permitted": mostly(True, False),
    "stop_requested": mostly(False, True),
    "faults": mostly((), ("over_voltage",)),
}
INVERTER_CHOICES: dict[str, list[Any]] = {
    "reachable": mostly(True, False),
    "max_charge_power_w": mostly(10_000.0, None, 5_000.0),
    "max_discharge_power_w": mostly(10_000.0, None, 5_000.0),
    "temperature_c": mostly(40.0, None, 75.0, 90.0),
    "faults": mostly((), ("ground_fault",)),
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


@dataclass(frozen=True)
class Step:
    """What happens before one decision: time passes, SoC drifts, at most one event."""

    advance_s: float
    soc_delta_pct: int
    event: str
    name: str = ""  # the field an event changes
    value: Any = None


EVENTS = st.sampled_from(
    ["tick"] * 8
    + ["vehicle"] * 8
    + ["inverter"] * 3
    + ["setpoint"] * 4
    + ["vehicle_age", "vehicle_age", "inverter_age", "measured"]
    + ["vehicle_absent", "inverter_absent", "soc_unknown", "emergency_stop", "manual_reset"]
)
ADVANCES_S = st.sampled_from([0.0, 0.05, 0.1, 0.1, 0.1, 0.3, 1.0, 2.5, 30.0, 3_600.0])
SOC_DELTAS_PCT = st.sampled_from([0, 0, 0, 0, -1, -1, 1, 1, -3, 3, -20, 20])
VEHICLE_FIELD_NAMES = st.sampled_from(sorted(VEHICLE_CHOICES))
INVERTER_FIELD_NAMES = st.sampled_from(sorted(INVERTER_CHOICES))
AGES_S = st.sampled_from(mostly(0.0, 0.4, 0.9, 1.5, 5.0, -0.5))  # -0.5: from the future
SWITCHES = st.sampled_from(mostly(False, True))  # the unusual state: absent, unknown, pressed
MEASURED = st.sampled_from(["none", "command", "other"])
SetpointPlan = tuple[SetpointMode, float, float, float]
SETPOINT_PLANS = st.tuples(
    st.sampled_from(mostly(SetpointMode.POWER, SetpointMode.IDLE, SetpointMode.RELEASE)),
    st.integers(-120, 120).map(lambda hundreds: hundreds * 100.0),
    st.sampled_from(mostly(0.0, -100.0, 1.0)),  # received, relative to now (1.0: future)
    st.sampled_from(mostly(600.0, -1.0, 0.5, 30.0)),  # valid until, relative to now
)


@st.composite
def steps(draw: st.DrawFn) -> Step:
    advance_s = draw(ADVANCES_S)
    soc_delta_pct = draw(SOC_DELTAS_PCT)
    event = draw(EVENTS)
    name, value = "", None
    if event == "vehicle":
        name = draw(VEHICLE_FIELD_NAMES)
        value = draw(VEHICLE_FIELDS[name])
    elif event == "inverter":
        name = draw(INVERTER_FIELD_NAMES)
        value = draw(INVERTER_FIELDS[name])
    elif event in ("vehicle_age", "inverter_age"):
        value = draw(AGES_S)
    elif event in ("vehicle_absent", "inverter_absent", "soc_unknown", "emergency_stop"):
        value = draw(SWITCHES)
    elif event == "measured":
        value = draw(MEASURED)
    elif event == "setpoint" and draw(st.booleans()):
        value = draw(SETPOINT_PLANS)  # else: the setpoint is withdrawn
    return Step(advance_s, soc_delta_pct, event, name, value)


# One unusual starting condition: (vehicle or inverter, field, value), each unusual value once.
ODD_STARTS = st.sampled_from(
    [
        (which, name, value)
        for which, choices in (("vehicle", VEHICLE_CHOICES), ("inverter", INVERTER_CHOICES))
        for name, values in choices.items()
        for value in dict.fromkeys(values[1:])  # NaN-safe: dict keeps identity-equal keys
        if value is not values[0]
    ]
)
FOCUSES = st.sampled_from(["anywhere", "floor", "departure"])
NEAR_FLOOR_PCT = st.integers(-3, 8)
BEFORE_DEPARTURE_MIN = st.integers(0, 300)
BELOW_TARGET_PCT = st.integers(0, 40)
PLANNING_CURRENTS_A = st.sampled_from(
    list(dict.fromkeys(VEHICLE_CHOICES["charge_current_limit_a"]))
)
PLANNING_RATINGS_W = st.sampled_from(list(dict.fromkeys(INVERTER_CHOICES["max_charge_power_w"])))


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    start_wall: dt.datetime
    soc0_pct: float
    vehicle: VehicleState
    inverter: InverterState
    setpoint: SetpointPlan
    steps: tuple[Step, ...]


@st.composite
def scenarios(draw: st.DrawFn, focus: str | None = None) -> Scenario:
    """A scenario; ``focus`` aims it at the floor or at a departure a few hours away."""
    policy = draw(POLICIES)
    start_wall = draw(START_WALLS)
    soc0_pct = float(draw(st.integers(0, 100)))
    focus = focus or draw(FOCUSES)
    if focus == "floor":
        soc0_pct = min(100.0, max(0.0, policy.owner.soc_floor_pct + draw(NEAR_FLOOR_PCT)))
    elif focus == "departure":
        # A low floor and a high target, so the departure reserve is the floor that binds.
        departure = Departure(hhmm(draw(MINUTES)), target_soc_pct=draw(st.integers(50, 100)))
        owner = replace(
            policy.owner,
            soc_floor_pct=draw(st.integers(0, 30)),
            soc_ceiling_pct=100.0,
            departure=departure,
        )
        policy = replace(policy, owner=owner)
        at = dt.datetime.combine(start_wall.date(), departure.time_local, start_wall.tzinfo)
        start_wall = at - dt.timedelta(minutes=draw(BEFORE_DEPARTURE_MIN))
        soc0_pct = max(0.0, departure.target_soc_pct - draw(BELOW_TARGET_PCT))
    vehicle, inverter = HEALTHY_VEHICLE, HEALTHY_INVERTER
    if focus == "departure":
        # Vary what the departure charge can count on: vehicle current, inverter rating.
        vehicle = replace(vehicle, charge_current_limit_a=draw(PLANNING_CURRENTS_A))
        inverter = replace(inverter, max_charge_power_w=draw(PLANNING_RATINGS_W))
    if draw(st.booleans()):
        which, name, value = draw(ODD_STARTS)
        if which == "vehicle":
            vehicle = replace(vehicle, **{name: value})
        else:
            inverter = replace(inverter, **{name: value})
    return Scenario(
        policy=policy,
        start_wall=start_wall,
        soc0_pct=soc0_pct,
        vehicle=vehicle,
        inverter=inverter,
        setpoint=draw(SETPOINT_PLANS),
        steps=tuple(draw(st.lists(steps(), min_size=3, max_size=30))),
    )


# --- the runner: the control loop, with nothing but decide() and reset_faults() -----------------


@dataclass(frozen=True)
class Record:
    """One decision and what led to it."""

    now: Now
    interval_s: float
    inputs: Inputs
    before: CoreState
    decision: Decision
    after: CoreState
    reset_accepted: bool | None  # None: no reset command before this decision


@dataclass
class World:
    """What the links would report; events change it, time ages it."""

    vehicle: VehicleState
    inverter: InverterState
    soc_pct: float
    now_s: float = 1_000.0
    vehicle_absent: bool = False
    inverter_absent: bool = False
    soc_unknown: bool = False
    vehicle_age_s: float = 0.0
    inverter_age_s: float = 0.0
    measured: str = "command"
    setpoint: Setpoint | None = None
    emergency_stop: bool = False

    def apply(self, step: Step) -> None:
        if step.event == "vehicle":
            self.vehicle = replace(self.vehicle, **{step.name: step.value})
        elif step.event == "inverter":
            self.inverter = replace(self.inverter, **{step.name: step.value})
        elif step.event in ("vehicle_age", "inverter_age") and isinstance(step.value, float):
            setattr(self, f"{step.event}_s", step.value)
        elif step.event == "measured" and isinstance(step.value, str):
            self.measured = step.value
        elif step.event == "setpoint":
            self.setpoint = self.setpoint_from(step.value)
        elif step.event in ("vehicle_absent", "inverter_absent", "soc_unknown", "emergency_stop"):
            setattr(self, step.event, step.value)

    def setpoint_from(self, plan: SetpointPlan | None) -> Setpoint | None:
        if plan is None:
            return None
        mode, power_w, from_s, until_s = plan
        return Setpoint("sp", self.now_s + from_s, self.now_s + until_s, mode, power_w)

    def inputs(self, last_command_w: float) -> Inputs:
        vehicle = replace(
            self.vehicle,
            observed_at_s=self.now_s - self.vehicle_age_s,
            soc_pct=None if self.soc_unknown else self.soc_pct,
        )
        measured = {"none": None, "command": last_command_w, "other": -2_500.0}[self.measured]
        inverter = replace(
            self.inverter,
            observed_at_s=self.now_s - self.inverter_age_s,
            measured_power_w=measured,
        )
        return Inputs(
            None if self.vehicle_absent else vehicle,
            None if self.inverter_absent else inverter,
            self.setpoint,
            self.emergency_stop,
        )


def simulate(scenario: Scenario) -> list[Record]:
    world = World(scenario.vehicle, scenario.inverter, scenario.soc0_pct)
    world.setpoint = world.setpoint_from(scenario.setpoint)
    wall = scenario.start_wall
    state = CoreState()
    records: list[Record] = []
    for step in scenario.steps:
        world.now_s += step.advance_s
        wall += dt.timedelta(seconds=step.advance_s)
        # The battery follows the last command (a small capacity makes that visible), plus noise.
        capacity_kwh = world.vehicle.capacity_kwh or 62.0
        moved_pct = state.last_command_w * step.advance_s / 36.0 / (capacity_kwh * 1000.0)
        world.soc_pct = min(100.0, max(0.0, world.soc_pct + moved_pct + step.soc_delta_pct))
        world.apply(step)
        reset_accepted = None
        if step.event == "manual_reset":
            state, outcome = reset_faults(state)
            reset_accepted = outcome.accepted
        inputs = world.inputs(state.last_command_w)
        now = Now(world.now_s, wall)
        before = state
        interval_s = 0.0 if before.decided_at_s is None else world.now_s - before.decided_at_s
        decision, state = decide(inputs, state, now, scenario.policy)
        records.append(Record(now, interval_s, inputs, before, decision, state, reset_accepted))
    return records


# --- oracles, written independently of the core -------------------------------------------------


def le(a: float, b: float) -> bool:
    """a <= b up to float rounding."""
    return a <= b + 1e-6 * max(1.0, abs(b))


def fresh(observed_at_s: float, now_s: float, deadline_s: float) -> bool:
    return 0.0 <= now_s - observed_at_s <= deadline_s


def pack_voltage(vehicle: VehicleState) -> float | None:
    v = vehicle.pack_voltage_v
    return v if v is not None and math.isfinite(v) and v > 0 else None


def capacity_wh(vehicle: VehicleState, policy: Policy) -> float:
    c = vehicle.capacity_kwh
    return (c if c is not None and c > 0 else policy.battery_capacity_default_kwh) * 1000.0


def fault_present(inputs: Inputs) -> bool:
    v, i = inputs.vehicle, inputs.inverter
    return (
        inputs.emergency_stop
        or (v is not None and (bool(v.faults) or v.phase is VehiclePhase.FAULT))
        or (i is not None and bool(i.faults))
    )


def no_session(inputs: Inputs) -> bool:
    """No vehicle in energy transfer with a known SoC."""
    v = inputs.vehicle
    return v is None or v.phase is not VehiclePhase.ENERGY_TRANSFER or v.soc_pct is None


def stop_present(inputs: Inputs) -> bool:
    return inputs.vehicle is not None and inputs.vehicle.stop_requested


def stale_or_absent(inputs: Inputs, now_s: float, policy: Policy) -> bool:
    v, i = inputs.vehicle, inputs.inverter
    return (
        v is None
        or not fresh(v.observed_at_s, now_s, policy.safety.vehicle_stale_after_s)
        or i is None
        or not i.reachable
        or not fresh(i.observed_at_s, now_s, policy.safety.inverter_stale_after_s)
    )


def stale_in_session(inputs: Inputs, now_s: float, policy: Policy) -> bool:
    """A vehicle in a session whose own data, or the inverter's, is stale or missing."""
    v = inputs.vehicle
    idle_phases = (VehiclePhase.UNPLUGGED, VehiclePhase.ENDED)
    return v is not None and v.phase not in idle_phases and stale_or_absent(inputs, now_s, policy)


def derated(temp_c: float | None, derate_c: float, cutoff_c: float) -> float:
    """Fraction of rated power allowed at this temperature."""
    if temp_c is None:
        return 1.0
    if not math.isfinite(temp_c) or temp_c >= cutoff_c:
        return 0.0
    return min(1.0, (cutoff_c - temp_c) / (cutoff_c - derate_c))


def hard_caps(
    policy: Policy, vehicle: VehicleState, inverter: InverterState
) -> tuple[float, float]:
    """The most the command may be in each direction by the hard limits: (charge, discharge)."""
    s = policy.safety
    v = pack_voltage(vehicle)
    rated_c = [s.max_charge_power_w]
    rated_d = [s.max_discharge_power_w]
    if inverter.max_charge_power_w is not None:
        rated_c.append(inverter.max_charge_power_w)
    if inverter.max_discharge_power_w is not None:
        rated_d.append(inverter.max_discharge_power_w)
    fraction = derated(vehicle.battery_temp_max_c, s.battery_temp_derate_c, s.battery_temp_cutoff_c)
    fraction = min(
        fraction,
        derated(inverter.temperature_c, s.inverter_temp_derate_c, s.inverter_temp_cutoff_c),
    )
    if vehicle.battery_temp_min_c is not None and vehicle.battery_temp_min_c < s.battery_temp_min_c:
        fraction = 0.0
    charge = [*rated_c, policy.site.grid_import_limit_w, fraction * min(rated_c)]
    discharge = [*rated_d, policy.site.grid_export_limit_w, fraction * min(rated_d)]
    if vehicle.charge_current_limit_a is not None:
        charge.append(0.0 if v is None else vehicle.charge_current_limit_a * v)
    if vehicle.discharge_current_limit_a is not None:
        discharge.append(0.0 if v is None else vehicle.discharge_current_limit_a * v)
    if not vehicle.charge_permitted:
        charge.append(0.0)
    if not vehicle.discharge_permitted:
        discharge.append(0.0)
    if vehicle.charge_voltage_limit_v is not None and (
        v is None or v >= vehicle.charge_voltage_limit_v
    ):
        charge.append(0.0)
    if vehicle.discharge_voltage_min_v is not None and (
        v is None or v <= vehicle.discharge_voltage_min_v
    ):
        discharge.append(0.0)
    if (
        vehicle.cell_voltage_max_v is not None
        and vehicle.cell_voltage_max_v >= s.cell_voltage_max_v
    ):
        charge.append(0.0)
    if (
        vehicle.cell_voltage_min_v is not None
        and vehicle.cell_voltage_min_v <= s.cell_voltage_min_v
    ):
        discharge.append(0.0)
    return min(charge), min(discharge)


def seconds_to_departure(now_wall: dt.datetime, at: dt.time) -> float:
    """Next departure by POSIX timestamps, a different route from the core's UTC arithmetic."""
    tz = now_wall.tzinfo
    for days in (0, 1, 2):
        day = now_wall.date() + dt.timedelta(days=days)
        candidate = dt.datetime(day.year, day.month, day.day, at.hour, at.minute, tzinfo=tz)
        if candidate.timestamp() > now_wall.timestamp():
            return candidate.timestamp() - now_wall.timestamp()
    raise AssertionError("no departure within two days")


def departure_charge_w(policy: Policy, vehicle: VehicleState, inverter: InverterState) -> float:
    options = [policy.safety.max_charge_power_w, policy.site.grid_import_limit_w]
    if inverter.max_charge_power_w is not None:
        options.append(inverter.max_charge_power_w)
    v = pack_voltage(vehicle)
    if vehicle.charge_current_limit_a and v is not None:
        options.append(vehicle.charge_current_limit_a * v)
    return min(options)


def reachable(rec: Record, policy: Policy) -> bool:
    """With this SoC, the departure target can still be charged in time, margin included."""
    departure = policy.owner.departure
    vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
    if departure is None:
        return True
    assert vehicle is not None
    assert vehicle.soc_pct is not None
    assert inverter is not None
    missing_pct = departure.target_soc_pct - vehicle.soc_pct
    if missing_pct <= 0:
        return True
    power_w = departure_charge_w(policy, vehicle, inverter)
    if power_w <= 0:
        return False
    need_s = missing_pct / 100 * capacity_wh(vehicle, policy) / power_w * 3600
    margin = 1 + policy.owner.departure_margin_pct / 100
    return le(need_s * margin, seconds_to_departure(rec.now.wall, departure.time_local))


# --- the properties -------------------------------------------------------------------------------

# The profile named by HYPOTHESIS_PROFILE ("ci" by default; both registered in conftest.py).
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@PROFILE
@given(scenarios(focus="floor"))
def test_never_discharges_at_or_below_the_effective_floor(scenario: Scenario) -> None:
    """Discharge happens only with a known SoC above the owner's and the vehicle's floors."""
    policy = scenario.policy
    for rec in simulate(scenario):
        if rec.decision.command.power_w >= 0:
            continue
        vehicle = rec.inputs.vehicle
        assert vehicle is not None
        assert vehicle.soc_pct is not None
        assert vehicle.soc_pct > policy.owner.soc_floor_pct
        if vehicle.discharge_soc_min_pct is not None:
            assert vehicle.soc_pct > vehicle.discharge_soc_min_pct
        assert rec.decision.soc_floor_pct is not None
        assert vehicle.soc_pct > rec.decision.soc_floor_pct


@PROFILE
@given(scenarios())
def test_command_never_exceeds_any_limit_in_force(scenario: Scenario) -> None:
    """The command respects every reported limit and every hard limit the oracle knows."""
    policy = scenario.policy
    budget_wh = policy.wear.max_discharge_kwh_per_day * 1000
    discharged_wh, day = 0.0, scenario.start_wall.date()
    for rec in simulate(scenario):
        # Lower bound of today's discharged energy: the commanded discharge alone.
        if rec.now.wall.date() != day:
            discharged_wh, day = 0.0, rec.now.wall.date()
        discharged_wh += max(0.0, -rec.before.last_command_w) * rec.interval_s / 3600
        power_w = rec.decision.command.power_w
        assert le(power_w, rec.decision.cap_w(Direction.CHARGE))
        assert le(-power_w, rec.decision.cap_w(Direction.DISCHARGE))
        if power_w == 0:
            continue
        vehicle, inverter = rec.inputs.vehicle, rec.inputs.inverter
        assert vehicle is not None
        assert inverter is not None
        assert vehicle.soc_pct is not None
        charge_max_w, discharge_max_w = hard_caps(policy, vehicle, inverter)
        if power_w > 0:
            assert le(power_w, charge_max_w)
            assert vehicle.soc_pct < policy.owner.soc_ceiling_pct
        else:
            assert le(-power_w, discharge_max_w)
            assert discharged_wh < budget_wh


@PROFILE
@given(scenarios())
def test_any_stale_input_or_fault_yields_zero(scenario: Scenario) -> None:
    """Stale or missing data, no session, a fault, a stop or an unreset latch: 0 W, disabled."""
    policy = scenario.policy
    hold_s = policy.safety.fault_hold_s
    manual = policy.safety.fault_reset is FaultResetMode.MANUAL
    last_fault_s: float | None = None
    last_stop_s: float | None = None
    previous: Record | None = None
    for rec in simulate(scenario):
        now_s = rec.now.monotonic_s
        if rec.reset_accepted:
            # A reset is accepted only once the causes were gone at the last decision.
            assert previous is not None
            assert not fault_present(previous.inputs)
            assert not stop_present(previous.inputs)
            last_fault_s = last_stop_s = None
        if fault_present(rec.inputs):
            last_fault_s = now_s
        if stop_present(rec.inputs):
            last_stop_s = now_s
        fault_held = last_fault_s is not None and (manual or now_s - last_fault_s < hold_s)
        stop_held = last_stop_s is not None and now_s - last_stop_s < hold_s
        command = rec.decision.command
        stopped = fault_held or stop_held or no_session(rec.inputs)
        if stopped or stale_or_absent(rec.inputs, now_s, policy):
            assert command.power_w == 0
            assert not command.enable
        if fault_held or stale_in_session(rec.inputs, now_s, policy):
            assert rec.decision.power_state is PowerState.FAULT
        if not command.enable:
            assert command.power_w == 0
        previous = rec


@PROFILE
@given(scenarios())
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
@given(scenarios(focus="departure"))
def test_departure_target_stays_reachable_whenever_discharging(scenario: Scenario) -> None:
    """Whenever discharge is allowed, the departure target can still be charged in time."""
    for rec in simulate(scenario):
        if rec.decision.command.power_w < 0:
            assert reachable(rec, scenario.policy)


@PROFILE
@given(scenarios())
def test_reported_binding_limit_is_the_one_that_binds(scenario: Scenario) -> None:
    """The binding limit is the smallest in the request's direction, and it cut the request."""
    for rec in simulate(scenario):
        d = rec.decision
        request_w = d.request.power_w
        charge_cap_w, discharge_cap_w = d.cap_w(Direction.CHARGE), d.cap_w(Direction.DISCHARGE)
        assert d.target_w == min(max(request_w, -discharge_cap_w), charge_cap_w)
        if d.binding is None:
            assert d.target_w == request_w
            continue
        assert d.binding in d.limits
        if d.binding.direction is Direction.CHARGE:
            assert d.binding.power_w == charge_cap_w < request_w
            assert d.target_w == d.binding.power_w
        else:
            assert d.binding.power_w == discharge_cap_w < -request_w
            assert d.target_w == -d.binding.power_w
