"""decide() and its state, pinned where a mutant of controller/core/safety.py survived.

Plain unit tests (no Hypothesis) so each mutant of `make mutation` runs in milliseconds. Each test
states one behaviour exactly (a value, a boundary, a message a technician reads, a field of the
state carried to the next decision), so a mutant that changes it fails here.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import replace
from typing import Any

import pytest

from controller.core.arbitration import RequestSource, arbitrate, setpoint_in_force
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
from controller.core.rules import Direction, Limit, Readings, Rule
from controller.core.safety import (
    CoreState,
    Decision,
    Inputs,
    Latch,
    Now,
    StateFormatError,
    _soc_bounds,
    decide,
    durable_state,
    reset_faults,
    restore_state,
)
from controller.core.snapshots import (
    InverterState,
    PowerState,
    Setpoint,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
T0_S = 500.0
NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=AMSTERDAM)
VEHICLE = VehicleState(
    observed_at_s=T0_S,
    phase=VehiclePhase.ENERGY_TRANSFER,
    protocol="chademo",
    soc_pct=60.0,
    pack_voltage_v=400.0,
    capacity_kwh=40.0,
    charge_permitted=True,
    discharge_permitted=True,
)
INVERTER = InverterState(observed_at_s=T0_S, reachable=True)


class Loop:
    """Calls decide() like the control loop, with fresh snapshots unless told otherwise."""

    def __init__(self, policy: Policy | None = None, /, **vehicle: Any) -> None:
        self.policy = policy or Policy()
        self.state = CoreState(floor_blocked=False)
        self.now_s = T0_S
        self.wall = NOON
        self.vehicle: VehicleState | None = replace(VEHICLE, **vehicle)
        self.inverter: InverterState | None = INVERTER
        self.setpoint: Setpoint | None = None
        self.emergency_stop = False
        self.clock_trusted = True

    def ask(self, power_w: float, mode: SetpointMode = SetpointMode.POWER) -> None:
        """A setpoint received before the next tick, valid for 15 minutes."""
        received_s = self.now_s + 0.01
        self.setpoint = Setpoint("sp", received_s, received_s + 900.0, mode, power_w)

    def tick(self, seconds: float = 0.1) -> Decision:
        self.now_s += seconds
        self.wall += dt.timedelta(seconds=seconds)
        vehicle = None if self.vehicle is None else replace(self.vehicle, observed_at_s=self.now_s)
        inverter = (
            None if self.inverter is None else replace(self.inverter, observed_at_s=self.now_s)
        )
        inputs = Inputs(vehicle, inverter, self.setpoint, self.emergency_stop, self.clock_trusted)
        decision, self.state = decide(inputs, self.state, Now(self.now_s, self.wall), self.policy)
        return decision

    def settle(self, power_w: float) -> Decision:
        """Ask for ``power_w`` and tick until the ramp has reached it."""
        self.ask(power_w)
        decision = self.tick()
        for _ in range(60):
            decision = self.tick()
        return decision


def reasons(decision: Decision) -> list[str]:
    return [str(reason) for reason in decision.reasons]


def limit_rules(decision: Decision, direction: Direction) -> set[Rule]:
    return {lim.rule for lim in decision.limits if lim.direction is direction}


# --- the first decision and the ramp --------------------------------------------------------------


def test_the_first_decision_has_no_interval_so_no_ramp_step() -> None:
    loop = Loop()
    loop.ask(3_000.0)
    first = loop.tick()
    assert first.command.power_w == 0.0
    assert first.command.enable
    assert first.target_w == 3_000.0
    assert "ramp: 0 W toward 3000 W at 2000 W/s" in reasons(first)
    assert loop.tick(0.1).command.power_w == pytest.approx(200.0)


def test_a_monotonic_clock_going_back_earns_no_ramp_step() -> None:
    loop = Loop()
    loop.ask(3_000.0)
    loop.tick()
    assert loop.tick(-5.0).command.power_w == 0.0


def test_a_request_exactly_at_a_cap_is_not_cut_by_it() -> None:
    loop = Loop(Policy(site=SitePolicy(grid_import_limit_w=2_000.0, grid_export_limit_w=1_500.0)))
    assert loop.settle(2_000.0).binding is None
    assert loop.settle(-1_500.0).binding is None
    cut = loop.settle(2_500.0)
    assert cut.binding == Limit(Rule.SITE_GRID_LIMIT, Direction.CHARGE, 2_000.0, "grid import")
    assert (cut.target_w, cut.command.power_w) == (2_000.0, 2_000.0)
    assert "ramp" not in {reason.rule.value for reason in cut.reasons}


def test_settled_discharge_is_exact_and_never_minus_zero() -> None:
    loop = Loop()
    assert loop.settle(-3_000.0).command.power_w == -3_000.0
    stopped = loop.settle(0.0)
    assert math.copysign(1.0, stopped.command.power_w) == 1.0
    assert stopped.power_state is PowerState.IDLE


def test_the_power_stage_is_enabled_while_either_direction_has_any_cap() -> None:
    """0.5 W one way and none the other: still enabled; no power either way: disabled."""
    tiny = Loop(Policy(site=SitePolicy(grid_import_limit_w=0.5, grid_export_limit_w=0.0)))
    assert tiny.tick().command.enable
    export = Loop(Policy(site=SitePolicy(grid_import_limit_w=0.0, grid_export_limit_w=0.5)))
    assert export.tick().command.enable
    neither = Loop(charge_permitted=False, discharge_permitted=False)
    decision = neither.tick()
    assert not decision.command.enable
    assert decision.command.power_w == 0.0
    assert decision.power_state is PowerState.IDLE


def test_a_discharge_cut_to_a_0_w_cap_is_plus_zero() -> None:
    """Clamping a negative command to a 0 W discharge cap gives -0.0; the core sends +0.0."""
    loop = Loop()
    loop.settle(-3_000.0)
    loop.vehicle = replace(VEHICLE, discharge_permitted=False)
    command_w = loop.tick().command.power_w
    assert command_w == 0.0
    assert math.copysign(1.0, command_w) == 1.0


def test_power_state_follows_any_nonzero_command() -> None:
    loop = Loop()
    assert loop.settle(0.5).power_state is PowerState.CHARGING
    assert loop.settle(-0.5).power_state is PowerState.DISCHARGING
    assert loop.settle(0.0).power_state is PowerState.IDLE


class NoOffset(dt.tzinfo):
    """A time zone that does not know its offset (utcoffset() is None)."""

    def utcoffset(self, _: dt.datetime | None) -> dt.timedelta | None:
        return None

    def dst(self, _: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, _: dt.datetime | None) -> str | None:
        return None


@pytest.mark.parametrize(
    "wall", [dt.datetime(2026, 6, 1, 12), dt.datetime(2026, 6, 1, 12, tzinfo=NoOffset())]
)
def test_now_needs_a_wall_clock_with_a_known_offset(wall: dt.datetime) -> None:
    with pytest.raises(ValueError, match=r"^Now\.wall: expected an aware datetime in the site's"):
        Now(0.0, wall)


def test_a_decision_without_limits_in_a_direction_has_no_cap() -> None:
    decision = Loop().tick()
    assert decision.cap_w(Direction.CHARGE) == 7_400.0
    assert replace(decision, limits=()).cap_w(Direction.DISCHARGE) == math.inf


# --- SoC bounds: resolution and horizon -----------------------------------------------------------


def test_soc_bounds_widen_by_resolution_and_the_energy_of_the_horizon() -> None:
    """40 kWh, 2 s horizon: 3.6 kW for 2 s is 2 Wh = 0.005 %; a 0.5 s interval adds a 1 kW step."""
    policy = Policy(safety=SafetyPolicy(floor_horizon_s=2.0, soc_resolution_pct=0.5))
    inverter = replace(INVERTER, measured_power_w=-2_600.0)
    r = Readings(VEHICLE, inverter, 60.0, 400.0, 40_000.0)
    state = CoreState(last_command_w=-2_000.0)
    bounds = _soc_bounds(r, state, policy, 0.5)
    hours = 2.0 / 3600.0
    assert bounds.low_now_pct == 59.5
    assert bounds.low_next_pct == pytest.approx(59.5 - 3_600.0 * hours / 400.0, abs=1e-12)
    assert bounds.high_next_pct == pytest.approx(60.5 + 1_000.0 * hours / 400.0, abs=1e-12)
    # Charging on both counts: no discharge energy, so the low bound is the resolution alone.
    charging = Readings(VEHICLE, replace(INVERTER, measured_power_w=500.0), 60.0, 400.0, 40_000.0)
    bounds = _soc_bounds(charging, CoreState(last_command_w=1_000.0), policy, 0.0)
    assert bounds.low_next_pct == 59.5
    # A lagging meter: the command discharges at 3 kW while the meter still shows a 2 kW charge;
    # each direction counts the larger of the two.
    lagging = Readings(VEHICLE, replace(INVERTER, measured_power_w=2_000.0), 60.0, 400.0, 40_000.0)
    bounds = _soc_bounds(lagging, CoreState(last_command_w=-3_000.0), policy, 0.0)
    assert bounds.low_next_pct == pytest.approx(59.5 - 3_000.0 * hours / 400.0, abs=1e-12)
    assert bounds.high_next_pct == pytest.approx(60.5 + 2_000.0 * hours / 400.0, abs=1e-12)


def test_soc_bounds_cap_the_power_at_the_ratings_and_scale_with_the_time_factor() -> None:
    policy = Policy(
        safety=SafetyPolicy(
            max_charge_power_w=1_000.0,
            max_discharge_power_w=500.0,
            floor_horizon_s=3.0,
            battery_time_factor=4.0,
            ramp_max_interval_s=0.25,
        )
    )
    inverter = replace(INVERTER, measured_power_w=math.nan)
    r = Readings(VEHICLE, inverter, 50.0, 400.0, 10_000.0)
    bounds = _soc_bounds(r, CoreState(last_command_w=800.0), policy, 2.0)
    hours = 12.0 / 3600.0
    assert bounds.low_next_pct == pytest.approx(49.0 - 500.0 * hours / 100.0, abs=1e-12)
    assert bounds.high_next_pct == pytest.approx(51.0 + 1_000.0 * hours / 100.0, abs=1e-12)
    quiet = _soc_bounds(r, CoreState(), policy, 0.1)
    assert quiet.low_next_pct == pytest.approx(49.0 - 200.0 * hours / 100.0, abs=1e-12)
    assert quiet.high_next_pct == pytest.approx(51.0 + 200.0 * hours / 100.0, abs=1e-12)


def test_the_floor_holds_on_the_reported_soc_minus_its_resolution() -> None:
    """Floor 40 %, resolution 1 %: a reported 41 % may truly be 40 %, so discharge stops."""
    policy = Policy(safety=SafetyPolicy(floor_horizon_s=0.0))
    at_edge = Loop(policy, soc_pct=41.0)
    at_edge.ask(-1_000.0)
    decision = at_edge.tick()
    assert Rule.SOC_FLOOR in limit_rules(decision, Direction.DISCHARGE)
    assert decision.soc_floor_pct == 40.0
    assert (
        "soc_floor: SoC 41 % (down to 40.0 % before a stop takes effect): floor 40.0 % "
        "(owner soc_floor_pct), resumes at or above 42.0 %"
    ) in reasons(decision)
    above = Loop(policy, soc_pct=41.1)
    assert Rule.SOC_FLOOR not in limit_rules(above.tick(), Direction.DISCHARGE)


def test_the_ceiling_holds_on_the_reported_soc_plus_its_resolution() -> None:
    policy = Policy(safety=SafetyPolicy(floor_horizon_s=0.0))
    decision = Loop(policy, soc_pct=89.0).tick()
    assert Rule.SOC_CEILING in limit_rules(decision, Direction.CHARGE)
    assert (
        "soc_ceiling: SoC 89 % (up to 90.0 % before a stop takes effect): ceiling 90 %, "
        "resumes at or below 88 %"
    ) in reasons(decision)
    assert Rule.SOC_CEILING not in limit_rules(Loop(policy, soc_pct=88.9).tick(), Direction.CHARGE)


def test_the_blocked_flags_are_carried_to_the_next_state() -> None:
    loop = Loop(soc_pct=95.0)
    loop.state = CoreState(floor_blocked=True)
    loop.tick()
    assert loop.state.ceiling_blocked
    assert not loop.state.floor_blocked
    low = Loop(soc_pct=30.0)
    low.tick()
    assert low.state.floor_blocked
    assert not low.state.ceiling_blocked


def test_the_highest_floor_part_binds() -> None:
    loop = Loop(soc_pct=60.0, discharge_soc_min_pct=70.0)
    decision = loop.tick()
    assert decision.soc_floor_pct == 70.0
    assert Rule.VEHICLE_MIN_DISCHARGE_LEVEL in limit_rules(decision, Direction.DISCHARGE)
    assert Rule.SOC_FLOOR not in limit_rules(decision, Direction.DISCHARGE)


# --- wear -----------------------------------------------------------------------------------------


def test_the_wear_day_is_the_local_date() -> None:
    """00:30 in Amsterdam on 2 June is 22:30 UTC on 1 June; the count belongs to 2 June."""
    loop = Loop()
    loop.wall = dt.datetime(2026, 6, 2, 0, 30, tzinfo=AMSTERDAM)
    loop.tick()
    assert loop.state.wear_day == dt.date(2026, 6, 2)


def test_the_wear_count_accumulates_within_a_day_and_restarts_on_the_next() -> None:
    loop = Loop()
    loop.state = CoreState(
        floor_blocked=False,
        wear_day=dt.date(2026, 6, 1),
        discharged_today_wh=100.0,
        last_command_w=-3_600.0,
        decided_at_s=T0_S,
    )
    loop.inverter = replace(INVERTER, measured_power_w=-1_800.0)
    loop.tick(1.0)
    assert loop.state.discharged_today_wh == pytest.approx(101.0)
    loop.state = replace(loop.state, wear_day=dt.date(2026, 5, 31), last_command_w=0.0)
    loop.tick(2.0)  # measured 1.8 kW for 2 s: 1 Wh on the new day
    assert loop.state.wear_day == dt.date(2026, 6, 1)
    assert loop.state.discharged_today_wh == pytest.approx(1.0)


def test_a_wall_clock_stepped_back_keeps_the_later_day_and_its_count() -> None:
    loop = Loop()
    loop.state = CoreState(wear_day=dt.date(2026, 6, 2), discharged_today_wh=500.0)
    loop.tick()
    assert (loop.state.wear_day, loop.state.discharged_today_wh) == (dt.date(2026, 6, 2), 500.0)


def test_a_charging_measurement_does_not_count_as_discharge() -> None:
    loop = Loop()
    loop.state = CoreState(decided_at_s=T0_S, wear_day=dt.date(2026, 6, 1))
    loop.inverter = replace(INVERTER, measured_power_w=3_000.0)
    loop.tick(1.0)
    assert loop.state.discharged_today_wh == 0.0


def test_a_stale_inverter_measurement_is_not_counted() -> None:
    loop = Loop()
    loop.state = CoreState(decided_at_s=T0_S, wear_day=dt.date(2026, 6, 1))
    loop.inverter = replace(INVERTER, measured_power_w=-3_600.0, reachable=False)
    loop.tick(1.0)
    assert loop.state.discharged_today_wh == 0.0


def test_a_stale_but_reachable_inverter_measurement_is_not_counted() -> None:
    """A meter reading older than its deadline says nothing about the last second."""
    now_s = T0_S + 1.0
    old = replace(INVERTER, observed_at_s=now_s - 3.5, measured_power_w=-3_600.0)
    state = CoreState(decided_at_s=T0_S, wear_day=dt.date(2026, 6, 1))
    _, after = decide(Inputs(VEHICLE, old), state, Now(now_s, NOON), Policy())
    assert after.discharged_today_wh == 0.0
    fresh = replace(old, observed_at_s=now_s - 3.0)
    _, after = decide(Inputs(VEHICLE, fresh), state, Now(now_s, NOON), Policy())
    assert after.discharged_today_wh == pytest.approx(1.0)


def test_the_wear_budget_reason_states_the_count_and_the_budget() -> None:
    loop = Loop(Policy(wear=WearPolicy(max_discharge_kwh_per_day=10.0)))
    loop.state = CoreState(wear_day=dt.date(2026, 6, 1), discharged_today_wh=10_000.0)
    decision = loop.tick()
    assert Rule.WEAR_BUDGET in limit_rules(decision, Direction.DISCHARGE)
    assert "wear_budget: discharged 10.00 kWh today of 10.00 kWh" in reasons(decision)


# --- latches and the emergency stop ---------------------------------------------------------------


def test_fault_causes_are_named_and_kept_in_the_latch() -> None:
    loop = Loop()
    loop.emergency_stop = True
    loop.vehicle = replace(VEHICLE, faults=("over_voltage",), phase=VehiclePhase.FAULT)
    loop.inverter = replace(INVERTER, faults=("ground_fault",))
    decision = loop.tick()
    assert loop.state.fault_latch == Latch(
        causes=(
            "emergency stop",
            "vehicle: over_voltage",
            "vehicle session fault",
            "inverter: ground_fault",
        ),
        active=True,
        clear_since_s=None,
        manual=True,
    )
    assert decision.power_state is PowerState.FAULT
    assert "emergency_stop: emergency stop" in reasons(decision)
    assert "vehicle_fault: vehicle: over_voltage" in reasons(decision)
    assert "inverter_fault: inverter: ground_fault" in reasons(decision)
    assert (
        "fault_latch: latched: emergency stop, vehicle: over_voltage, vehicle session fault, "
        "inverter: ground_fault"
    ) in reasons(decision)


def test_latch_notes_count_the_time_clear() -> None:
    loop = Loop(Policy(safety=SafetyPolicy(fault_hold_s=60.0)))
    loop.vehicle = replace(VEHICLE, faults=("x",))
    loop.tick()
    loop.vehicle = VEHICLE
    loop.tick(1.0)
    decision = loop.tick(5.0)
    assert loop.state.fault_latch.clear_since_s == T0_S + 1.1
    assert "fault_latch: latched: vehicle: x; clear for 5 s of 60 s hold" in reasons(decision)
    manual = Loop(Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL)))
    manual.emergency_stop = True
    manual.tick()
    manual.emergency_stop = False
    manual.tick(1.0)
    note = "fault_latch: latched: emergency stop; clear for 2 s, waiting for a manual reset"
    assert note in reasons(manual.tick(2.0))


def test_a_manual_reset_fault_kind_never_resets_itself() -> None:
    """vehicle_fault marked manual: held past the hold; inverter_fault still resets itself."""
    policy = Policy(
        safety=SafetyPolicy(fault_hold_s=1.0, manual_reset_faults=frozenset({"vehicle_fault"}))
    )
    vehicle = Loop(policy)
    vehicle.vehicle = replace(VEHICLE, faults=("x",))
    vehicle.tick()
    assert vehicle.state.fault_latch.manual
    vehicle.vehicle = VEHICLE
    vehicle.tick(0.5)
    assert vehicle.tick(5.0).power_state is PowerState.FAULT
    inverter = Loop(policy)
    inverter.inverter = replace(INVERTER, faults=("y",))
    inverter.tick()
    assert not inverter.state.fault_latch.manual
    inverter.inverter = INVERTER
    inverter.tick(0.5)
    assert inverter.tick(5.0).power_state is not PowerState.FAULT
    assert inverter.state.fault_latch == Latch()


def test_a_stop_request_latches_automatically_even_in_manual_mode() -> None:
    loop = Loop(Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL, fault_hold_s=2.0)))
    loop.vehicle = replace(VEHICLE, stop_requested=True)
    decision = loop.tick()
    assert loop.state.stop_latch.causes == ("vehicle requested stop",)
    assert not loop.state.stop_latch.manual
    assert decision.power_state is PowerState.STOPPING
    assert "vehicle_stop_request: latched: vehicle requested stop" in reasons(decision)
    loop.vehicle = VEHICLE
    loop.tick(1.0)
    note = "vehicle_stop_request: latched: vehicle requested stop; clear for 1 s of 2 s hold"
    assert note in reasons(loop.tick(1.0))
    released = loop.tick(1.0)
    assert released.command.enable
    assert loop.state.stop_latch == Latch()


def waiting_for_start(loop: Loop) -> tuple[bool, float | None]:
    return loop.state.awaiting_start, loop.state.start_after_s


def test_reset_of_an_emergency_stop_waits_for_a_new_setpoint() -> None:
    loop = Loop()
    loop.ask(1_000.0)
    loop.emergency_stop = True
    loop.tick()
    loop.emergency_stop = False
    loop.tick()
    reset_at_s = loop.now_s
    loop.state, answer = reset_faults(loop.state)
    assert answer.accepted
    assert str(answer.reason) == (
        "fault_reset: cleared: emergency stop; power resumes only after a start"
    )
    assert loop.state.awaiting_start
    assert loop.state.start_after_s == reset_at_s
    assert loop.state.fault_latch == Latch()
    waiting = loop.tick(1.0)
    assert waiting.command.power_w == 0.0
    assert waiting.target_w == 0.0
    assert (
        "fault_reset: emergency stop reset: no power until a start (a new aggregator setpoint, "
        "or the car unplugged and plugged in again)"
    ) in reasons(waiting)
    # The old setpoint (received before the reset) is no start; a new one is.
    assert waiting_for_start(loop) == (True, reset_at_s)
    loop.ask(1_000.0)
    loop.tick()
    assert waiting_for_start(loop) == (False, None)
    assert loop.tick().command.power_w > 0.0


def test_a_setpoint_received_exactly_at_the_reset_is_no_start() -> None:
    loop = Loop()
    loop.state = CoreState(awaiting_start=True, start_after_s=T0_S)
    loop.setpoint = Setpoint("old", T0_S, T0_S + 900.0, SetpointMode.POWER, 1_000.0)
    loop.tick()
    assert loop.state.awaiting_start
    loop.ask(0.0, SetpointMode.IDLE)
    loop.tick()
    assert not loop.state.awaiting_start  # an idle setpoint is a start too


def test_a_released_setpoint_is_no_start() -> None:
    loop = Loop()
    loop.state = CoreState(awaiting_start=True, start_after_s=T0_S - 10.0)
    loop.ask(0.0, SetpointMode.RELEASE)
    loop.tick()
    assert loop.state.awaiting_start


def test_unplugging_ends_the_wait_for_a_start() -> None:
    loop = Loop()
    loop.state = CoreState(awaiting_start=True, start_after_s=T0_S)
    loop.vehicle = replace(VEHICLE, phase=VehiclePhase.UNPLUGGED)
    loop.tick()
    assert (loop.state.awaiting_start, loop.state.start_after_s) == (False, None)


def test_after_a_restart_only_a_setpoint_from_now_on_is_a_start() -> None:
    loop = Loop()
    loop.ask(1_000.0)
    loop.state = CoreState(awaiting_start=True, start_after_s=None)
    loop.tick()
    assert loop.state.awaiting_start
    assert loop.state.start_after_s == loop.now_s
    loop.ask(1_000.0)
    loop.tick()
    assert not loop.state.awaiting_start


def test_reset_of_a_fault_that_is_not_an_emergency_stop_restarts_at_once() -> None:
    loop = Loop(Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL)))
    loop.vehicle = replace(VEHICLE, faults=("x", "y"))
    loop.tick()
    loop.vehicle = VEHICLE
    loop.tick()
    loop.state = replace(loop.state, start_after_s=7.0)
    loop.state, answer = reset_faults(loop.state)
    assert str(answer.reason) == "fault_reset: cleared: vehicle: x, vehicle: y"
    assert not loop.state.awaiting_start
    assert loop.state.start_after_s == 7.0


def test_reset_refused_while_a_cause_is_present_names_the_latched_causes() -> None:
    state = CoreState(
        fault_latch=Latch(causes=("a",), active=False),
        stop_latch=Latch(causes=("vehicle requested stop",), active=True),
    )
    same, answer = reset_faults(state)
    assert same is state
    assert not answer.accepted
    assert str(answer.reason) == (
        "fault_reset: refused, a cause is still present; latched: a, vehicle requested stop"
    )
    only_fault = replace(state, fault_latch=Latch(("a",), active=True), stop_latch=Latch())
    assert not reset_faults(only_fault)[1].accepted
    assert str(reset_faults(CoreState())[1].reason) == "fault_reset: nothing latched"


# --- the departure guarantee ----------------------------------------------------------------------


def departure_loop(soc_pct: float, *, hours_left: float, **safety: Any) -> Loop:
    """Departure 18:00 local, target 80 %, 40 kWh charged at 4 kW (10 %/h), 25 % margin."""
    policy = Policy(
        owner=OwnerPolicy(
            soc_floor_pct=20.0,
            departure=Departure(dt.time(18, 0), 80.0),
            departure_margin_pct=25.0,
        ),
        site=SitePolicy(grid_import_limit_w=4_000.0),
        safety=SafetyPolicy(floor_horizon_s=0.0, **safety),
    )
    loop = Loop(policy, soc_pct=soc_pct)
    loop.wall = dt.datetime(2026, 6, 1, 18, 0, tzinfo=AMSTERDAM) - dt.timedelta(hours=hours_left)
    return loop


def test_the_departure_guarantee_charges_once_the_charge_no_longer_fits() -> None:
    """5 h left with a 25 % margin: 4 h of charge, 40 %: reserve 40 %; at a true 39 % it charges
    whatever the aggregator asks."""
    loop = departure_loop(40.0, hours_left=5.0)
    loop.ask(-2_000.0)
    decision = loop.tick()
    assert decision.soc_floor_pct == pytest.approx(40.0, abs=0.01)
    assert loop.state.departure_charging
    assert decision.binding is not None
    assert decision.binding.rule is Rule.DEPARTURE_RESERVE
    assert decision.target_w == 4_000.0
    note = (
        "departure guarantee: charging toward 80 % by 18:00 at up to 4000 W (SoC 40 %, "
        "reserve 40.0 %)"
    )
    assert decision.binding == Limit(Rule.DEPARTURE_RESERVE, Direction.DISCHARGE, 0.0, note)
    assert f"departure_reserve: {note}" in reasons(decision)


def test_the_departure_guarantee_charges_when_the_soc_is_exactly_at_the_reserve() -> None:
    """No margin, no horizon: 4 kW ramps up in 2 s, then 5 h of charge are 50 % of 40 kWh, so
    with 5 h 2 s left the reserve is exactly 30 %, and a true 30 % (reported 31 %) charges."""
    policy = Policy(
        owner=OwnerPolicy(departure=Departure(dt.time(18, 0), 80.0), departure_margin_pct=0.0),
        site=SitePolicy(grid_import_limit_w=4_000.0),
        safety=SafetyPolicy(floor_horizon_s=0.0),
    )
    departure = dt.datetime(2026, 6, 1, 18, 0, tzinfo=AMSTERDAM)
    before_tick = dt.timedelta(hours=5, seconds=2.1)
    at_reserve = Loop(policy, soc_pct=31.0)
    at_reserve.wall = departure - before_tick
    at_reserve.tick()
    assert at_reserve.state.departure_charging
    above = Loop(policy, soc_pct=31.5)
    above.wall = departure - before_tick
    above.tick()
    assert not above.state.departure_charging


def test_the_departure_guarantee_waits_while_the_charge_still_fits() -> None:
    loop = departure_loop(41.5, hours_left=5.0)
    loop.ask(-2_000.0)
    decision = loop.tick()
    assert not loop.state.departure_charging
    assert decision.target_w == -2_000.0


def test_once_charging_the_guarantee_keeps_on_until_the_target() -> None:
    loop = departure_loop(60.0, hours_left=5.0)
    loop.state = replace(loop.state, departure_charging=True)
    loop.ask(0.0, SetpointMode.IDLE)
    assert loop.tick().target_w == 4_000.0
    assert loop.state.departure_charging
    full = departure_loop(81.0, hours_left=5.0)
    full.state = replace(full.state, departure_charging=True)
    assert full.tick().target_w == 0.0  # a true SoC of at least 80 %: done
    assert not full.state.departure_charging


def test_a_request_at_the_guarantee_power_is_followed_as_asked() -> None:
    loop = departure_loop(30.0, hours_left=5.0)
    loop.ask(4_000.0)
    decision = loop.tick()
    assert loop.state.departure_charging
    assert decision.binding is None
    assert not any("departure guarantee" in reason for reason in reasons(decision))


def test_a_tighter_limit_binds_over_the_guarantee() -> None:
    loop = departure_loop(30.0, hours_left=5.0)
    loop.vehicle = replace(loop.vehicle or VEHICLE, charge_permitted=False)
    loop.ask(-1_000.0)
    decision = loop.tick()
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_PERMISSION


def test_the_departure_is_fixed_for_the_session_and_dropped_on_unplug() -> None:
    loop = departure_loop(70.0, hours_left=5.0)
    loop.tick()
    fixed = dt.datetime(2026, 6, 1, 16, 0, tzinfo=dt.UTC)
    assert loop.state.departure_at == fixed
    loop.vehicle = None  # link lost: keep it
    loop.tick()
    assert loop.state.departure_at == fixed
    loop.vehicle = replace(VEHICLE, phase=VehiclePhase.UNPLUGGED)
    loop.tick()
    assert loop.state.departure_at is None


def test_after_departure_time_the_reserve_is_the_target_until_unplugged() -> None:
    loop = departure_loop(70.0, hours_left=0.5)
    loop.tick()
    loop.wall += dt.timedelta(hours=2)
    decision = loop.tick()
    assert decision.soc_floor_pct == 80.0
    assert any("floor 80.0 % (80 % by 18:00: due)" in reason for reason in reasons(decision))
    assert loop.state.departure_at == dt.datetime(2026, 6, 1, 16, 0, tzinfo=dt.UTC)


def test_a_departure_more_than_25_hours_ahead_is_fixed_again() -> None:
    loop = departure_loop(70.0, hours_left=5.0)
    # Now is 11:00 UTC on 1 June; 25 h ahead is 12:00 UTC on 2 June.
    loop.state = replace(loop.state, departure_at=dt.datetime(2026, 6, 2, 12, 1, tzinfo=dt.UTC))
    loop.tick()
    assert loop.state.departure_at == dt.datetime(2026, 6, 1, 16, 0, tzinfo=dt.UTC)
    within = departure_loop(70.0, hours_left=5.0)
    kept = dt.datetime(2026, 6, 2, 12, 0, 0, 100_000, tzinfo=dt.UTC)  # 25 h after the tick
    within.state = replace(within.state, departure_at=kept)
    within.tick()
    assert within.state.departure_at == kept


def test_an_untrusted_clock_fixes_no_departure_and_holds_the_target() -> None:
    loop = departure_loop(70.0, hours_left=5.0)
    loop.clock_trusted = False
    decision = loop.tick()
    assert loop.state.departure_at is None
    assert decision.soc_floor_pct == 80.0
    fixed = departure_loop(70.0, hours_left=5.0)
    fixed.tick()
    fixed.clock_trusted = False
    assert fixed.tick().soc_floor_pct == 80.0


def test_an_untrusted_clock_gives_no_peak_window_discharge() -> None:
    policy = Policy(
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE, peak_windows=(TimeWindow(dt.time(11), dt.time(13)),)
        )
    )
    loop = Loop(policy)
    loop.clock_trusted = False
    decision = loop.tick()
    assert decision.request.power_w == 0.0
    assert decision.request.source is RequestSource.FALLBACK_PEAK_DISCHARGE


def test_outside_both_windows_the_fallback_asks_for_exactly_0_w() -> None:
    policy = Policy(
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE,
            cheap_windows=(TimeWindow(dt.time(1), dt.time(5)),),
            peak_windows=(TimeWindow(dt.time(17), dt.time(21)),),
        )
    )
    request = Loop(policy).tick().request
    assert (request.power_w, request.source) == (0.0, RequestSource.FALLBACK_OFF_WINDOW)


def test_a_setpoint_is_in_force_from_its_receipt_to_its_expiry_inclusive() -> None:
    setpoint = Setpoint("sp", 10.0, 20.0, SetpointMode.POWER, 1_000.0)
    assert setpoint_in_force(setpoint, 10.0) == (setpoint, "setpoint 'sp'")
    assert setpoint_in_force(setpoint, 20.0)[0] is setpoint
    assert setpoint_in_force(setpoint, 20.5)[0] is None
    assert setpoint_in_force(None, 10.0) == (None, "no aggregator setpoint")


def test_without_a_setpoint_the_note_says_so() -> None:
    assert Loop().tick().request.note == "no aggregator setpoint; fallback idle"


def test_arbitration_trusts_the_clock_unless_told_otherwise() -> None:
    policy = Policy(
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE, peak_windows=(TimeWindow(dt.time(11), dt.time(13)),)
        )
    )
    assert arbitrate(None, policy, 0.0, NOON, 60.0).power_w == -3_700.0


def test_the_cheap_window_charges_on_the_lowest_possible_soc() -> None:
    """Target 80 %, resolution 1 %: a reported 80.5 % may be 79.5 %, so the window charges."""
    policy = Policy(
        owner=OwnerPolicy(soc_ceiling_pct=80.0),
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE, cheap_windows=(TimeWindow(dt.time(11), dt.time(13)),)
        ),
    )
    assert Loop(policy, soc_pct=80.5).tick().request.power_w == 3_700.0
    assert Loop(policy, soc_pct=81.0).tick().request.power_w == 0.0


# --- gates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vehicle", "note"),
    [
        (None, "no_session: no vehicle data"),
        (replace(VEHICLE, phase=VehiclePhase.READY), "no_session: vehicle session ready"),
        (replace(VEHICLE, soc_pct=None), "soc_unknown: vehicle SoC unknown (None)"),
        (replace(VEHICLE, soc_pct=101.0), "soc_unknown: vehicle SoC implausible (101.0)"),
    ],
)
def test_gate_reasons(vehicle: VehicleState | None, note: str) -> None:
    loop = Loop()
    loop.vehicle = vehicle
    decision = loop.tick()
    assert note in reasons(decision)
    assert not decision.command.enable
    assert decision.soc_floor_pct is None


def test_stale_data_reasons_state_the_age_and_the_deadline() -> None:
    now_s = T0_S + 10.0
    inputs = Inputs(
        replace(VEHICLE, observed_at_s=now_s - 1.5),
        replace(INVERTER, observed_at_s=now_s - 3.25),
    )
    decision, _ = decide(inputs, CoreState(), Now(now_s, NOON), Policy())
    assert "vehicle_stale: vehicle data 1.50 s old, deadline 1 s" in reasons(decision)
    assert "inverter_stale: inverter data 3.25 s old, deadline 3 s" in reasons(decision)
    assert decision.power_state is PowerState.FAULT
    idle = replace(VEHICLE, observed_at_s=now_s - 5.0, phase=VehiclePhase.UNPLUGGED)
    quiet, _ = decide(Inputs(idle, INVERTER), CoreState(), Now(now_s, NOON), Policy())
    assert "no_session: no vehicle session (unplugged)" in reasons(quiet)
    assert quiet.power_state is PowerState.IDLE


@pytest.mark.parametrize(
    ("inverter", "note"),
    [
        (None, "inverter_stale: no inverter data"),
        (replace(INVERTER, reachable=False), "inverter_stale: inverter unreachable"),
    ],
)
def test_inverter_gate_reasons(inverter: InverterState | None, note: str) -> None:
    loop = Loop()
    loop.inverter = inverter
    decision = loop.tick()
    assert note in reasons(decision)
    assert decision.power_state is PowerState.FAULT


# --- durable state --------------------------------------------------------------------------------


SAVED_STATE = CoreState(
    fault_latch=Latch(causes=("emergency stop",), active=True, clear_since_s=3.0, manual=True),
    stop_latch=Latch(causes=("vehicle requested stop",), active=False, clear_since_s=2.0),
    awaiting_start=True,
    start_after_s=9.0,
    departure_at=dt.datetime(2026, 6, 1, 16, 0, tzinfo=dt.UTC),
    wear_day=dt.date(2026, 6, 1),
    discharged_today_wh=1_234.5,
)


def test_durable_state_is_the_part_a_restart_must_keep() -> None:
    assert durable_state(SAVED_STATE) == {
        "version": 1,
        "fault_latch": {"causes": ["emergency stop"], "manual": True},
        "stop_latch": {"causes": ["vehicle requested stop"], "manual": False},
        "awaiting_start": True,
        "departure_at": "2026-06-01T16:00:00+00:00",
        "wear_day": "2026-06-01",
        "discharged_today_wh": 1_234.5,
    }
    empty = durable_state(CoreState())
    assert (empty["departure_at"], empty["wear_day"]) == (None, None)


def test_restore_gives_latched_but_inactive_latches_and_no_start_time() -> None:
    restored = restore_state(CoreState(), durable_state(SAVED_STATE))
    assert restored.fault_latch == Latch(causes=("emergency stop",), manual=True)
    assert restored.stop_latch == Latch(causes=("vehicle requested stop",))
    assert restored.awaiting_start
    assert restored.start_after_s is None
    assert restored.departure_at == SAVED_STATE.departure_at
    assert restored.departure_at is not None
    assert restored.departure_at.tzinfo is dt.UTC
    assert (restored.wear_day, restored.discharged_today_wh) == (dt.date(2026, 6, 1), 1_234.5)


def test_restore_converts_a_departure_to_utc_and_drops_manual_without_causes() -> None:
    data = durable_state(CoreState())
    data["departure_at"] = "2026-06-01T18:00:00+02:00"
    data["fault_latch"] = {"causes": [], "manual": True}
    data["discharged_today_wh"] = 7
    restored = restore_state(CoreState(start_after_s=4.0), data)
    assert restored.departure_at == dt.datetime(2026, 6, 1, 16, 0, tzinfo=dt.UTC)
    assert restored.departure_at is not None
    assert restored.departure_at.utcoffset() == dt.timedelta(0)
    assert restored.fault_latch == Latch()
    assert restored.discharged_today_wh == 7.0
    assert isinstance(restored.discharged_today_wh, float)
    assert restored.start_after_s is None


def test_restore_keeps_the_larger_count_of_the_same_day_and_a_later_seeded_day() -> None:
    data = durable_state(SAVED_STATE)
    same_day = CoreState(wear_day=dt.date(2026, 6, 1), discharged_today_wh=2_000.0)
    assert restore_state(same_day, data).discharged_today_wh == 2_000.0
    lower = CoreState(wear_day=dt.date(2026, 6, 1), discharged_today_wh=1_000.0)
    assert restore_state(lower, data).discharged_today_wh == 1_234.5
    later = CoreState(wear_day=dt.date(2026, 6, 2), discharged_today_wh=10.0)
    restored = restore_state(later, data)
    assert (restored.wear_day, restored.discharged_today_wh) == (dt.date(2026, 6, 2), 10.0)
    earlier = CoreState(wear_day=dt.date(2026, 5, 31), discharged_today_wh=10.0)
    restored = restore_state(earlier, data)
    assert (restored.wear_day, restored.discharged_today_wh) == (dt.date(2026, 6, 1), 1_234.5)
    no_saved_day = durable_state(CoreState(discharged_today_wh=50.0))
    restored = restore_state(later, no_saved_day)
    assert (restored.wear_day, restored.discharged_today_wh) == (dt.date(2026, 6, 2), 10.0)
    restored = restore_state(CoreState(), no_saved_day)
    assert (restored.wear_day, restored.discharged_today_wh) == (None, 50.0)


def broken(key: str, value: object) -> dict[str, object]:
    data = durable_state(SAVED_STATE)
    data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "core state: expected version 1"),
        (broken("version", 2), "core state: expected version 1"),
        (broken("fault_latch", []), "core state: fault_latch: expected an object"),
        (
            broken("stop_latch", {"causes": "x", "manual": False}),
            "core state: stop_latch.causes: expected a list of strings",
        ),
        (
            broken("fault_latch", {"causes": [1], "manual": False}),
            "core state: fault_latch.causes: expected a list of strings",
        ),
        (
            broken("fault_latch", {"causes": [], "manual": 1}),
            "core state: fault_latch.manual: expected true or false",
        ),
        (broken("awaiting_start", None), "core state: awaiting_start: expected true or false"),
        (
            broken("discharged_today_wh", True),
            "core state: discharged_today_wh: expected a finite number >= 0",
        ),
        (broken("discharged_today_wh", "1"), "core state: discharged_today_wh: expected a finite"),
        (broken("discharged_today_wh", math.nan), "core state: discharged_today_wh: expected"),
        (broken("discharged_today_wh", -0.5), "core state: discharged_today_wh: expected"),
        (
            broken("departure_at", 5),
            "core state: departure_at: expected an ISO 8601 string or null",
        ),
        (broken("departure_at", "tomorrow"), "core state: departure_at: not an ISO 8601 value: "),
        (broken("departure_at", "2026-06-01T18:00:00"), "core state: departure_at: expected a UTC"),
        (broken("wear_day", "2026-13-01"), "core state: wear_day: not an ISO 8601 value: "),
    ],
)
def test_restore_rejects_malformed_state(data: object, message: str) -> None:
    with pytest.raises(StateFormatError) as caught:
        restore_state(CoreState(), data)
    assert str(caught.value).startswith(message)


def test_restore_accepts_a_zero_count() -> None:
    assert restore_state(CoreState(), broken("discharged_today_wh", 0)).discharged_today_wh == 0.0


def test_restore_quotes_only_the_start_of_a_bad_value() -> None:
    with pytest.raises(StateFormatError) as caught:
        restore_state(CoreState(), broken("wear_day", "x" * 50))
    assert str(caught.value) == f"core state: wear_day: not an ISO 8601 value: {'x' * 40!r}"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
