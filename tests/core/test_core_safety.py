"""Each interlock, the latches, the ramp and arbitration, one behaviour per test."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from typing import Any

import pytest

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
    PlannedPower,
    PowerState,
    Setpoint,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)

T0_S = 1_000.0
NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
TICK_S = 0.1

# A CHAdeMO V2H session as in the recorded Leaf logs: 380 V pack, 15 A max discharge (0x200 byte
# 0), 10 % minimum discharge level (0x200 byte 6); nothing else limiting by default.
VEHICLE = VehicleState(
    observed_at_s=T0_S,
    phase=VehiclePhase.ENERGY_TRANSFER,
    protocol="chademo",
    soc_pct=60.0,
    pack_voltage_v=380.0,
    capacity_kwh=40.0,
    charge_permitted=True,
    discharge_permitted=True,
)
INVERTER = InverterState(observed_at_s=T0_S, reachable=True)


class Rig:
    """Drives decide() like the control loop: fresh snapshots every tick unless told otherwise."""

    def __init__(self, policy: Policy | None = None, /, **vehicle: Any) -> None:
        self.policy = policy or Policy()
        self.state = CoreState()
        self.now_s = T0_S
        self.wall = NOON
        self.vehicle: VehicleState | None = replace(VEHICLE, **vehicle)
        self.inverter: InverterState | None = INVERTER
        self.vehicle_age_s = 0.0
        self.inverter_age_s = 0.0
        self.setpoint: Setpoint | None = None
        self.emergency_stop = False
        self.clock_trusted = True
        self.plan: PlannedPower | None = None  # the optimize fallback's planned power

    def request(self, power_w: float, mode: SetpointMode = SetpointMode.POWER) -> None:
        """An aggregator setpoint valid for the next 15 minutes."""
        self.setpoint = Setpoint("sp-1", self.now_s, self.now_s + 900.0, mode, power_w)

    def set_vehicle(self, **changes: Any) -> None:
        assert self.vehicle is not None
        self.vehicle = replace(self.vehicle, **changes)

    def tick(self, seconds: float = TICK_S) -> Decision:
        self.now_s += seconds
        self.wall += dt.timedelta(seconds=seconds)
        vehicle = inverter = None
        if self.vehicle is not None:
            vehicle = replace(self.vehicle, observed_at_s=self.now_s - self.vehicle_age_s)
        if self.inverter is not None:
            inverter = replace(self.inverter, observed_at_s=self.now_s - self.inverter_age_s)
        inputs = Inputs(
            vehicle, inverter, self.setpoint, self.emergency_stop, self.clock_trusted, self.plan
        )
        decision, self.state = decide(inputs, self.state, Now(self.now_s, self.wall), self.policy)
        return decision

    def run(self, seconds: float) -> Decision:
        """Tick for ``seconds`` and return the last decision."""
        decision = self.tick()
        for _ in range(round(seconds / TICK_S) - 1):
            decision = self.tick()
        return decision

    def discharging(self, power_w: float = 3_000.0) -> Decision:
        """Settle at a steady discharge of ``power_w``."""
        self.request(-power_w)
        decision = self.run(5.0)
        assert decision.command.power_w == -power_w
        return decision


def rules(decision: Decision, direction: Direction | None = None) -> set[Rule]:
    return {lim.rule for lim in decision.limits if direction is None or lim.direction is direction}


def assert_stopped(decision: Decision) -> None:
    assert decision.command.power_w == 0.0
    assert not decision.command.enable


# --- faults and latches ---------------------------------------------------------------------------


def test_emergency_stop_cuts_power_at_once() -> None:
    """E-stop while discharging: 0 W and disabled in the same decision, state FAULT."""
    rig = Rig()
    rig.discharging()
    rig.emergency_stop = True
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.FAULT
    assert decision.binding is not None
    assert decision.binding.rule is Rule.FAULT_LATCH
    assert Rule.EMERGENCY_STOP in {r.rule for r in decision.reasons}


def test_vehicle_fault_flag_stops_and_latches_until_the_hold_passes() -> None:
    """CHAdeMO 0x102 byte 4 fault: 0 W at once; power returns only after the hold without it."""
    rig = Rig(Policy(safety=SafetyPolicy(fault_hold_s=10.0)))
    rig.discharging()
    rig.set_vehicle(faults=("battery_over_voltage",))
    assert_stopped(rig.tick())
    rig.set_vehicle(faults=())
    assert rig.run(9.5).power_state is PowerState.FAULT
    assert_stopped(rig.tick())
    decision = rig.run(1.0)
    assert decision.power_state is PowerState.DISCHARGING
    assert -3_000.0 < decision.command.power_w < 0.0  # ramping up again from 0 W


def test_vehicle_session_fault_latches() -> None:
    """A vehicle session in its FAULT phase is a fault, latched like a flag."""
    rig = Rig()
    rig.discharging()
    rig.set_vehicle(phase=VehiclePhase.FAULT)
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.FAULT


def test_inverter_fault_latches() -> None:
    """An inverter fault stops power and holds it off after the fault clears."""
    rig = Rig()
    rig.discharging()
    assert rig.inverter is not None
    rig.inverter = replace(rig.inverter, faults=("ground_fault",))
    assert_stopped(rig.tick())
    rig.inverter = replace(rig.inverter, faults=())
    decision = rig.run(5.0)
    assert_stopped(decision)
    assert decision.binding is not None
    assert "inverter: ground_fault" in decision.binding.source


def test_manual_reset_mode_waits_for_the_reset_command() -> None:
    """With manual reset, a cleared fault keeps 0 W until reset_faults is accepted.

    The cause here is an emergency stop, so the reset alone does not restart (ISO 13850): power
    returns with the aggregator's next setpoint.
    """
    rig = Rig(Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL, fault_hold_s=1.0)))
    rig.discharging()
    rig.emergency_stop = True
    rig.tick()
    rig.emergency_stop = False
    assert_stopped(rig.run(600.0))
    rig.state, outcome = reset_faults(rig.state)
    assert outcome.accepted
    assert rig.run(1.0).command.power_w == 0.0  # the setpoint from before the stop
    rig.request(-3_000.0)
    assert rig.run(1.0).command.power_w < 0.0


def test_manual_reset_is_refused_while_the_cause_is_present() -> None:
    """Reset refused while the fault was still present at the last decision."""
    rig = Rig(Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL)))
    rig.emergency_stop = True
    rig.tick()
    state, outcome = reset_faults(rig.state)
    assert not outcome.accepted
    assert "emergency stop" in outcome.reason.message
    assert "still present" in outcome.reason.message
    assert state == rig.state


def test_reset_with_nothing_latched_is_refused() -> None:
    """A reset command with nothing latched changes nothing."""
    state, outcome = reset_faults(CoreState())
    assert not outcome.accepted
    assert state == CoreState()


def test_stop_request_stops_at_once_and_resumes_after_the_hold_even_in_manual_mode() -> None:
    """A vehicle stop request is a normal end: 0 W at once, no manual reset needed after it."""
    policy = Policy(safety=SafetyPolicy(fault_reset=FaultResetMode.MANUAL, fault_hold_s=2.0))
    rig = Rig(policy)
    rig.discharging()
    rig.set_vehicle(stop_requested=True)
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.STOPPING
    rig.set_vehicle(stop_requested=False)
    assert_stopped(rig.run(1.5))
    assert rig.run(1.0).command.power_w < 0.0


# --- freshness and session ------------------------------------------------------------------------


def test_stale_vehicle_data_stops_power_within_one_cycle() -> None:
    """Vehicle data older than 1 s (CHAdeMO 0x102, GB/T BCL timeout) gives 0 W, state FAULT."""
    rig = Rig()
    rig.discharging()
    rig.vehicle_age_s = 1.05
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.FAULT
    assert rules(decision) == {Rule.VEHICLE_STALE}


def test_stale_data_does_not_latch() -> None:
    """When fresh data returns, power ramps up again without any reset."""
    rig = Rig()
    rig.discharging()
    rig.vehicle_age_s = 2.0
    rig.tick()
    rig.vehicle_age_s = 0.0
    assert rig.run(1.0).command.power_w < 0.0


def test_vehicle_data_from_the_future_counts_as_stale() -> None:
    """A snapshot stamped after now is implausible: 0 W."""
    rig = Rig()
    rig.discharging()
    rig.vehicle_age_s = -0.5
    assert_stopped(rig.tick())


@pytest.mark.parametrize(
    ("change", "note"),
    [
        ({"inverter_age_s": 3.5}, "old"),
        ({"inverter": replace(INVERTER, reachable=False)}, "unreachable"),
        ({"inverter": None}, "no inverter data"),
    ],
)
def test_stale_unreachable_or_missing_inverter_stops_power(
    change: dict[str, object], note: str
) -> None:
    """Without fresh inverter data there is no power."""
    rig = Rig()
    rig.discharging()
    for name, value in change.items():
        setattr(rig, name, value)
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.INVERTER_STALE
    assert note in decision.binding.source


@pytest.mark.parametrize(
    "phase",
    [VehiclePhase.HANDSHAKE, VehiclePhase.READY, VehiclePhase.STOPPING, VehiclePhase.ENDED],
)
def test_no_power_outside_energy_transfer(phase: VehiclePhase) -> None:
    """Power flows only in the energy-transfer phase of the vehicle session."""
    rig = Rig(phase=phase)
    rig.request(-3_000.0)
    decision = rig.run(2.0)
    assert_stopped(decision)
    assert rules(decision) == {Rule.NO_SESSION}


def test_silent_unplugged_vehicle_is_idle_not_a_fault() -> None:
    """An old snapshot from an unplugged vehicle is an empty connector, not a fault."""
    rig = Rig(phase=VehiclePhase.UNPLUGGED)
    rig.vehicle_age_s = 60.0
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.IDLE


def test_no_vehicle_snapshot_gives_zero() -> None:
    """Before the first vehicle frame there is no session and no power."""
    rig = Rig()
    rig.vehicle = None
    rig.request(5_000.0)
    assert_stopped(rig.run(2.0))


@pytest.mark.parametrize("soc_pct", [None, math.nan])
def test_unknown_soc_gives_zero(soc_pct: float | None) -> None:
    """Without a SoC neither the floor nor the ceiling can be checked: 0 W."""
    rig = Rig(soc_pct=soc_pct)
    rig.request(3_000.0)
    decision = rig.run(2.0)
    assert_stopped(decision)
    assert rules(decision) == {Rule.SOC_UNKNOWN}


# --- vehicle limits -------------------------------------------------------------------------------


def test_vehicle_permission_flags_block_each_direction() -> None:
    """No charge without the vehicle's charge permission, no discharge without its own."""
    rig = Rig(charge_permitted=False)
    rig.request(3_000.0)
    decision = rig.run(3.0)
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_PERMISSION
    rig.discharging()
    rig.set_vehicle(discharge_permitted=False)
    assert rig.tick().command.power_w == 0.0


def test_charge_current_request_limits_power_at_pack_voltage() -> None:
    """CHAdeMO 0x102 byte 3: 14 A requested at a 380 V pack caps charging at 5,320 W."""
    rig = Rig(charge_current_limit_a=14.0)
    rig.request(7_000.0)
    decision = rig.run(5.0)
    assert decision.command.power_w == pytest.approx(5_320.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_CHARGE_CURRENT


def test_max_discharge_current_limits_discharge_at_pack_voltage() -> None:
    """CHAdeMO 0x200 byte 0: 15 A at 380 V caps discharge at 5,700 W."""
    rig = Rig(discharge_current_limit_a=15.0)
    rig.request(-7_000.0)
    decision = rig.run(5.0)
    assert decision.command.power_w == pytest.approx(-5_700.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_DISCHARGE_CURRENT


@pytest.mark.parametrize("voltage_v", [None, 0.0, math.nan])
def test_current_limit_without_pack_voltage_allows_no_power(voltage_v: float | None) -> None:
    """A current limit cannot be turned into power without the voltage: 0 W that way."""
    rig = Rig(pack_voltage_v=voltage_v, discharge_current_limit_a=15.0)
    rig.request(-3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert Rule.VEHICLE_DISCHARGE_CURRENT in rules(decision, Direction.DISCHARGE)
    assert decision.cap_w(Direction.CHARGE) > 0  # the other direction is not limited by it


def test_charging_stops_at_the_vehicle_maximum_voltage() -> None:
    """CHAdeMO 0x100 maximum / GB/T BCL voltage: no charging at or above it."""
    rig = Rig(charge_voltage_limit_v=380.0)
    rig.request(3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_CHARGE_VOLTAGE


def test_discharge_stops_at_the_vehicle_minimum_discharge_voltage() -> None:
    """CHAdeMO 0x200 bytes 4-5: no discharging at or below the minimum discharge voltage."""
    rig = Rig(discharge_voltage_min_v=250.0)
    rig.discharging()
    rig.set_vehicle(pack_voltage_v=249.0)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_DISCHARGE_VOLTAGE


@pytest.mark.parametrize(
    ("changes", "direction"),
    [
        ({"cell_voltage_max_v": 4.20}, Direction.CHARGE),
        ({"cell_voltage_min_v": 3.00}, Direction.DISCHARGE),
        ({"cell_voltage_max_v": math.nan}, Direction.CHARGE),
    ],
)
def test_cell_voltage_limits_block_one_direction(
    changes: dict[str, float], direction: Direction
) -> None:
    """A cell at its limit (GB/T BCS / BSM) blocks that direction; a garbled value blocks too."""
    decision = Rig(**changes).tick()
    assert Rule.CELL_VOLTAGE in rules(decision, direction)
    assert decision.cap_w(direction) == 0.0


# --- installation, inverter and site --------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "inverter", "request_w", "expected_w", "rule"),
    [
        (Policy(), INVERTER, 9_000.0, 7_400.0, Rule.CHARGER_RATING),
        (
            Policy(),
            replace(INVERTER, max_charge_power_w=5_000.0),
            9_000.0,
            5_000.0,
            Rule.INVERTER_RATING,
        ),
        (
            Policy(site=SitePolicy(grid_import_limit_w=4_000.0)),
            INVERTER,
            9_000.0,
            4_000.0,
            Rule.SITE_GRID_LIMIT,
        ),
        (
            Policy(site=SitePolicy(grid_export_limit_w=2_500.0)),
            INVERTER,
            -9_000.0,
            -2_500.0,
            Rule.SITE_GRID_LIMIT,
        ),
        (
            Policy(site=SitePolicy(grid_export_limit_w=0.0)),
            INVERTER,
            -9_000.0,
            0.0,
            Rule.SITE_GRID_LIMIT,
        ),
    ],
)
def test_ratings_and_grid_limits_cap_the_command(
    policy: Policy, inverter: InverterState, request_w: float, expected_w: float, rule: Rule
) -> None:
    """Installation, inverter and grid-connection limits cap each direction separately."""
    rig = Rig(policy)
    rig.inverter = inverter
    rig.request(request_w)
    decision = rig.run(10.0)
    assert decision.command.power_w == expected_w
    assert decision.binding is not None
    assert decision.binding.rule is rule


def test_battery_temperature_derates_linearly_then_cuts_off() -> None:
    """Battery at 50 C (derate 45, cutoff 55) gets half of rated power; at 55 C none."""
    rig = Rig(battery_temp_max_c=50.0)
    rig.request(9_000.0)
    decision = rig.run(10.0)
    assert decision.command.power_w == pytest.approx(3_700.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.BATTERY_TEMPERATURE
    rig.set_vehicle(battery_temp_max_c=55.0)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert decision.cap_w(Direction.DISCHARGE) == 0.0


def test_cold_battery_allows_no_power() -> None:
    """Below battery_temp_min_c (lithium plating risk) nothing flows either way."""
    decision = Rig(battery_temp_min_c=-15.0).tick()
    assert decision.cap_w(Direction.CHARGE) == decision.cap_w(Direction.DISCHARGE) == 0.0
    assert not decision.command.enable


def test_inverter_temperature_derates_from_its_rating() -> None:
    """Inverter at 80 C (derate 70, cutoff 85) gets a third of its 6 kW rating."""
    rig = Rig()
    rig.inverter = replace(INVERTER, temperature_c=80.0, max_discharge_power_w=6_000.0)
    rig.request(-9_000.0)
    decision = rig.run(10.0)
    assert decision.command.power_w == pytest.approx(-2_000.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.INVERTER_TEMPERATURE


def test_unreadable_temperature_is_a_cutoff() -> None:
    """A temperature that is not a number never permits power."""
    decision = Rig(battery_temp_max_c=math.nan).tick()
    assert Rule.BATTERY_TEMPERATURE in rules(decision)
    assert not decision.command.enable


# --- state of charge ------------------------------------------------------------------------------


def test_soc_floor_stops_discharge_at_the_floor_with_hysteresis() -> None:
    """The floor holds on the true SoC, which may be 1 % below the report (whole percent).

    Discharge stops at a reported 41 % (floor 40 %), stays off at 42 and 42.5 % (the lowest true
    SoC is below floor + 2), and resumes from 44 %.
    """
    rig = Rig(soc_pct=45.0)
    rig.discharging()
    rig.set_vehicle(soc_pct=42.0)
    assert rig.tick().command.power_w < 0.0
    rig.set_vehicle(soc_pct=41.0)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.SOC_FLOOR
    for reported_pct in (42.0, 42.5):
        rig.set_vehicle(soc_pct=reported_pct)
        assert rig.run(2.0).command.power_w == 0.0
    rig.set_vehicle(soc_pct=44.0)
    assert rig.run(1.0).command.power_w < 0.0


def test_soc_floor_does_not_block_charging() -> None:
    """At the floor the car may still be charged."""
    rig = Rig(soc_pct=30.0)
    rig.request(3_000.0)
    assert rig.run(5.0).command.power_w == 3_000.0


def test_floor_starts_blocked_after_a_restart() -> None:
    """A fresh start within the hysteresis band does not discharge: it acts as after a stop.

    At a reported 42.5 % the true SoC is at least 41.5 %: above the 40 % floor, but inside the
    band up to 42 %.
    """
    rig = Rig(soc_pct=42.5)
    rig.request(-3_000.0)
    assert rig.run(2.0).command.power_w == 0.0


def test_vehicle_minimum_discharge_level_raises_the_floor() -> None:
    """CHAdeMO 0x200 byte 6 above the owner's floor becomes the floor that binds."""
    rig = Rig(soc_pct=50.0, discharge_soc_min_pct=50.0)
    rig.request(-3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert decision.soc_floor_pct == 50.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_MIN_DISCHARGE_LEVEL


def test_soc_ceiling_stops_charging_with_hysteresis() -> None:
    """The ceiling holds on the true SoC, which may be 1 % above the report.

    Charging at a reported 88 % stops at 89 % (the true SoC may reach the 90 % ceiling), stays
    off at 88 and 87.5 % (the highest true SoC is above 88 %), and resumes from 86 %.
    """
    rig = Rig(soc_pct=88.0)
    rig.request(3_000.0)
    assert rig.run(5.0).command.power_w == 3_000.0
    rig.set_vehicle(soc_pct=89.0)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.SOC_CEILING
    for reported_pct in (88.0, 87.5):
        rig.set_vehicle(soc_pct=reported_pct)
        assert rig.run(1.0).command.power_w == 0.0
    rig.set_vehicle(soc_pct=86.0)
    assert rig.run(1.0).command.power_w > 0.0


def departure_rig(soc_pct: float) -> Rig:
    # 40 kWh, 7.4 kW: 18.5 %/h. Leaving 07:00 for 80 %, 20 % margin.
    policy = Policy(owner=OwnerPolicy(departure=Departure(dt.time(7, 0), 80.0)))
    rig = Rig(policy, soc_pct=soc_pct)
    rig.wall = dt.datetime(2026, 6, 1, 1, 0, tzinfo=dt.UTC)  # 6 h before departure
    return rig


def test_departure_reserve_allows_discharge_while_the_target_still_fits() -> None:
    """Six hours out, 5 h of charging fits: reserve 80 - 5 x 18.5 = below the owner floor."""
    rig = departure_rig(soc_pct=60.0)
    decision = rig.discharging()
    assert decision.soc_floor_pct == 40.0


def test_departure_reserve_refuses_discharge_once_the_target_would_not_fit() -> None:
    """Two hours out (1 h 40 min of charging with margin): reserve 80 - 30.8 = 49.2 %.

    At a reported 49 % (48 % at worst) the discharge is refused and the departure guarantee
    charges at the full 7.4 kW instead. The reserve keeps in hand the ramp from 0 W to 7.4 kW
    (3.7 s at 2 kW/s) and the horizon.
    """
    rig = departure_rig(soc_pct=49.0)
    rig.wall = dt.datetime(2026, 6, 1, 5, 0, tzinfo=dt.UTC)
    rig.request(-3_000.0)
    assert rig.run(2.0).command.power_w > 0.0
    decision = rig.run(5.0)
    assert decision.command.power_w == 7_400.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.DEPARTURE_RESERVE
    usable_s = 2 * 3600 - 7.0 - 7_400 / 2_000 - rig.policy.safety.floor_horizon_s
    expected_pct = 80.0 - usable_s / 1.2 / 3600 * 7_400 / 40_000 * 100
    assert decision.soc_floor_pct == pytest.approx(expected_pct, abs=0.001)


def test_departure_reserve_rises_as_departure_nears() -> None:
    """The same SoC allowed to discharge at 01:00 is refused by 05:30."""
    rig = departure_rig(soc_pct=55.0)
    rig.discharging()
    rig.wall = dt.datetime(2026, 6, 1, 5, 30, tzinfo=dt.UTC)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.DEPARTURE_RESERVE


def test_departure_reserve_counts_on_the_vehicles_lower_charge_current() -> None:
    """Three hours out, a vehicle taking 10 A (3.8 kW, not 7.4 kW) raises the reserve to 56 %."""
    fast, slow = departure_rig(soc_pct=60.0), departure_rig(soc_pct=60.0)
    fast.wall = slow.wall = dt.datetime(2026, 6, 1, 4, 0, tzinfo=dt.UTC)
    slow.set_vehicle(charge_current_limit_a=10.0)
    assert fast.tick().soc_floor_pct == 40.0  # 80 - 46 %: the owner's floor is higher
    assert slow.tick().soc_floor_pct == pytest.approx(80.0 - 2.5 * 3_800 / 40_000 * 100, abs=0.01)


def test_wear_budget_stops_discharge_for_the_rest_of_the_day() -> None:
    """Once 40 Wh are discharged today (budget 0.04 kWh), discharge stops until local midnight."""
    policy = Policy(wear=WearPolicy(max_discharge_kwh_per_day=0.04))
    rig = Rig(policy)
    rig.wall = dt.datetime(2026, 6, 1, 23, 59, 0, tzinfo=dt.UTC)
    rig.discharging(3_600.0)  # 1 Wh/s
    decision = rig.run(40.0)
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.WEAR_BUDGET
    assert rig.state.discharged_today_wh == pytest.approx(40.0, abs=0.2)
    decision = rig.run(20.0)  # past midnight: a new day, a new budget
    assert decision.command.power_w < 0.0


def test_wear_cycles_cap_uses_the_vehicle_capacity() -> None:
    """0.001 cycles/day of a 40 kWh pack is 40 Wh: reached after about 40 s at 3.6 kW."""
    rig = Rig(Policy(wear=WearPolicy(max_cycles_per_day=0.001)))
    rig.discharging(3_600.0)
    decision = rig.run(40.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.WEAR_BUDGET


def test_wear_budget_counts_the_measured_power_when_it_is_higher() -> None:
    """An inverter measuring more discharge than commanded counts at the measured power."""
    rig = Rig()
    rig.discharging(1_000.0)
    before_wh = rig.state.discharged_today_wh
    assert rig.inverter is not None
    rig.inverter = replace(rig.inverter, measured_power_w=-3_600.0)
    rig.run(10.0)
    assert rig.state.discharged_today_wh - before_wh == pytest.approx(10.0, abs=0.5)


# --- ramp and binding -----------------------------------------------------------------------------


def test_ramp_limits_every_rise() -> None:
    """From 0 W toward 5 kW at 2 kW/s: 200 W per 100 ms tick."""
    rig = Rig()
    rig.request(5_000.0)
    first = rig.tick()
    assert first.command.power_w == 0.0  # no interval yet: no step
    assert rig.tick().command.power_w == pytest.approx(200.0)
    assert rig.tick().command.power_w == pytest.approx(400.0)
    assert Rule.RAMP in {r.rule for r in rig.tick().reasons}


def test_ramp_applies_to_a_lower_request_too() -> None:
    """The aggregator lowering its request is a change like any other: ramped."""
    rig = Rig()
    rig.discharging(5_000.0)
    rig.request(-1_000.0)
    assert rig.tick().command.power_w == pytest.approx(-4_800.0)


def test_a_falling_limit_cuts_the_command_at_once() -> None:
    """A limit that drops below the command is obeyed in the same decision, not ramped."""
    rig = Rig()
    rig.discharging(5_000.0)
    rig.set_vehicle(discharge_current_limit_a=5.0)  # 1,900 W at 380 V
    assert rig.tick().command.power_w == pytest.approx(-1_900.0)


def test_a_long_gap_between_decisions_earns_only_a_bounded_step() -> None:
    """After a stall, the ramp counts at most ramp_max_interval_s."""
    rig = Rig()
    rig.request(7_000.0)
    rig.tick()
    assert rig.tick(30.0).command.power_w == pytest.approx(2_000.0)


def test_no_binding_limit_when_the_request_fits() -> None:
    """A request inside every limit is followed, and no limit is reported as binding."""
    rig = Rig()
    rig.request(-2_000.0)
    decision = rig.run(3.0)
    assert decision.command.power_w == -2_000.0
    assert decision.binding is None
    assert decision.target_w == -2_000.0


def test_binding_is_the_smallest_limit_in_the_request_direction() -> None:
    """Among vehicle (5.7 kW), inverter (5 kW) and site (2.5 kW) export limits, the site binds."""
    rig = Rig(Policy(site=SitePolicy(grid_export_limit_w=2_500.0)), discharge_current_limit_a=15.0)
    rig.inverter = replace(INVERTER, max_discharge_power_w=5_000.0)
    rig.request(-9_000.0)
    decision = rig.run(5.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.SITE_GRID_LIMIT
    assert decision.binding.power_w == 2_500.0
    assert {Rule.VEHICLE_DISCHARGE_CURRENT, Rule.INVERTER_RATING} <= rules(
        decision, Direction.DISCHARGE
    )


# --- arbitration ----------------------------------------------------------------------------------


def test_expired_setpoint_hands_over_to_the_fallback() -> None:
    """Past valid_until the setpoint is ignored; the idle fallback then asks for 0 W."""
    rig = Rig()
    rig.setpoint = Setpoint("old", T0_S - 100, T0_S - 1, SetpointMode.POWER, 5_000.0)
    decision = rig.tick()
    assert decision.request.source is RequestSource.FALLBACK_IDLE
    assert decision.request.power_w == 0.0


def test_setpoint_not_yet_valid_is_ignored() -> None:
    """A setpoint received in the future is not in force."""
    rig = Rig()
    rig.setpoint = Setpoint("early", T0_S + 60, T0_S + 600, SetpointMode.POWER, 5_000.0)
    assert rig.tick().request.source is RequestSource.FALLBACK_IDLE


def test_setpoint_power_that_is_not_a_number_is_rejected() -> None:
    """A NaN setpoint never becomes a command: the fallback decides."""
    rig = Rig()
    rig.request(math.nan)
    decision = rig.run(1.0)
    assert decision.request.source is RequestSource.FALLBACK_IDLE
    assert decision.command.power_w == 0.0


def test_idle_setpoint_holds_zero() -> None:
    """SetpointMode.IDLE asks for 0 W even where the fallback would discharge."""
    policy = Policy(
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE, peak_windows=(TimeWindow(dt.time(11), dt.time(13)),)
        )
    )
    rig = Rig(policy)
    rig.request(-5_000.0, SetpointMode.IDLE)
    decision = rig.run(2.0)
    assert decision.request.source is RequestSource.SETPOINT_IDLE
    assert decision.command.power_w == 0.0


def tou_policy(**owner: Any) -> Policy:
    return Policy(
        owner=OwnerPolicy(**owner),
        fallback=FallbackPolicy(
            mode=FallbackMode.TIME_OF_USE,
            cheap_windows=(TimeWindow(dt.time(23, 30), dt.time(6, 30)),),
            peak_windows=(TimeWindow(dt.time(11), dt.time(14)),),
            charge_power_w=3_700.0,
            discharge_power_w=2_000.0,
        ),
    )


def test_release_hands_control_to_the_time_of_use_fallback() -> None:
    """SetpointMode.RELEASE: the local policy decides; at noon (peak) it discharges."""
    rig = Rig(tou_policy())
    rig.request(0.0, SetpointMode.RELEASE)
    decision = rig.run(3.0)
    assert decision.request.source is RequestSource.FALLBACK_PEAK_DISCHARGE
    assert decision.command.power_w == -2_000.0


def test_cheap_window_charges_toward_the_departure_target_across_midnight() -> None:
    """At 02:00 (cheap window 23:30-06:30) the car charges while below its 80 % target."""
    rig = Rig(tou_policy(departure=Departure(dt.time(7), 80.0)), soc_pct=70.0)
    rig.wall = dt.datetime(2026, 6, 2, 2, 0, tzinfo=dt.UTC)
    decision = rig.run(3.0)
    assert decision.request.source is RequestSource.FALLBACK_CHEAP_CHARGE
    assert decision.command.power_w == 3_700.0
    # The target counts on the lowest true SoC: a reported 80 % may be 79 %, 81 % is enough.
    rig.set_vehicle(soc_pct=80.0)
    assert rig.run(3.0).command.power_w == 3_700.0
    rig.set_vehicle(soc_pct=81.0)
    assert rig.run(3.0).command.power_w == 0.0


def test_peak_window_discharge_still_stops_at_the_floor() -> None:
    """The fallback asks for discharge in the peak window; the floor still refuses it."""
    rig = Rig(tou_policy(), soc_pct=40.0)
    decision = rig.run(3.0)
    assert decision.request.power_w == -2_000.0
    assert decision.command.power_w == 0.0


def test_outside_tariff_windows_the_fallback_idles() -> None:
    """Between the windows the time-of-use fallback asks for 0 W."""
    rig = Rig(tou_policy())
    rig.wall = dt.datetime(2026, 6, 1, 18, 0, tzinfo=dt.UTC)
    assert rig.tick().request.source is RequestSource.FALLBACK_OFF_WINDOW


# --- power state ----------------------------------------------------------------------------------


def test_power_state_follows_the_command_sign() -> None:
    """Charging for +, discharging for -, idle at 0 W."""
    rig = Rig()
    assert rig.tick().power_state is PowerState.IDLE
    rig.request(2_000.0)
    assert rig.run(2.0).power_state is PowerState.CHARGING
    rig.request(-2_000.0)
    assert rig.run(3.0).power_state is PowerState.DISCHARGING


def test_vehicle_stopping_phase_reports_stopping() -> None:
    """The vehicle session's stop sequence shows as STOPPING, at 0 W."""
    rig = Rig()
    rig.discharging()
    rig.set_vehicle(phase=VehiclePhase.STOPPING)
    decision = rig.tick()
    assert_stopped(decision)
    assert decision.power_state is PowerState.STOPPING


def test_decide_is_pure() -> None:
    """The same inputs, state and time give the same decision and state."""
    inputs = Inputs(VEHICLE, INVERTER)
    now = Now(T0_S + 0.1, NOON)
    state = CoreState(last_command_w=-1_000.0, decided_at_s=T0_S)
    assert decide(inputs, state, now, Policy()) == decide(inputs, state, now, Policy())
