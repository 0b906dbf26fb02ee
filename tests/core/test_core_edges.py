"""Edges of the interlocks that mutation testing (`make mutation`) found untested.

Each test pins one behaviour a surviving mutant of controller/core/ broke without any other test
failing: a boundary (at the deadline, at the limit), a conservative reading of an implausible
value, or a piece of state carried from one decision to the next.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

import pytest

from controller.core.policy import Policy, SafetyPolicy, WearPolicy
from controller.core.rules import Direction, Rule
from controller.core.safety import CoreState, reset_faults
from controller.core.snapshots import PowerCommand, PowerState
from tests.core.test_core_safety import INVERTER, Rig, departure_rig, rules


def test_the_start_up_command_is_zero_and_disabled() -> None:
    """PowerCommand.zero(), what the inverter link holds before any decision, is 0 W, disabled."""
    assert PowerCommand.zero() == PowerCommand(power_w=0.0, enable=False)


# --- freshness and latches ------------------------------------------------------------------------


def test_data_exactly_as_old_as_its_deadline_is_still_fresh() -> None:
    """Vehicle data 1.0 s old and inverter data 3.0 s old are fresh; stale means older."""
    rig = Rig()
    rig.vehicle_age_s, rig.inverter_age_s = 1.0, 3.0
    decision = rig.tick(1.0)
    assert not {Rule.VEHICLE_STALE, Rule.INVERTER_STALE} & rules(decision)
    assert decision.command.enable


def test_auto_reset_latch_releases_once_clear_for_exactly_the_hold() -> None:
    """With a 10 s hold, the fault latch releases when the cause has been gone for 10 s."""
    rig = Rig(Policy(safety=SafetyPolicy(fault_hold_s=10.0)))
    rig.set_vehicle(faults=("battery_over_voltage",))
    assert rig.tick(1.0).power_state is PowerState.FAULT
    rig.set_vehicle(faults=())
    assert rig.tick(1.0).power_state is PowerState.FAULT  # clear from here
    assert rig.tick(5.0).power_state is PowerState.FAULT
    decision = rig.tick(5.0)
    assert decision.power_state is not PowerState.FAULT
    assert Rule.FAULT_LATCH not in rules(decision)


def test_manual_reset_also_ends_the_hold_of_a_stop_request() -> None:
    """Once the vehicle's stop flag is gone, an accepted reset clears the stop latch too."""
    rig = Rig(Policy(safety=SafetyPolicy(fault_hold_s=60.0)))
    rig.set_vehicle(stop_requested=True)
    assert Rule.VEHICLE_STOP_REQUEST in rules(rig.tick())
    rig.set_vehicle(stop_requested=False)
    assert Rule.VEHICLE_STOP_REQUEST in rules(rig.tick())
    rig.state, answer = reset_faults(rig.state)
    assert answer.accepted
    decision = rig.tick()
    assert Rule.VEHICLE_STOP_REQUEST not in rules(decision)
    assert decision.command.enable


# --- implausible readings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current_a", "expected_w"),
    [(math.nan, 0.0), (math.inf, 0.0), (-5.0, 0.0), (0.5, 190.0)],
)
def test_a_current_limit_counts_only_as_a_finite_amount_of_at_least_0_a(
    current_a: float, expected_w: float
) -> None:
    """A charge current limit that is NaN, infinite or negative is 0 A; 0.5 A is 190 W at 380 V."""
    rig = Rig(charge_current_limit_a=current_a)
    rig.request(3_000.0)
    decision = rig.run(5.0)
    assert decision.command.power_w == pytest.approx(expected_w)
    assert decision.cap_w(Direction.CHARGE) == pytest.approx(expected_w)


def test_a_negative_pack_voltage_turns_a_current_limit_into_no_power() -> None:
    """A pack voltage below 0 V is implausible: the discharge current limit then allows 0 W."""
    rig = Rig(pack_voltage_v=-380.0, discharge_current_limit_a=15.0)
    rig.request(-3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert decision.cap_w(Direction.DISCHARGE) == 0.0


@pytest.mark.parametrize(("limit_v", "expected_w"), [(math.nan, 0.0), (400.0, 3_000.0)])
def test_vehicle_maximum_voltage_blocks_only_when_reached_or_unreadable(
    limit_v: float, expected_w: float
) -> None:
    """A maximum voltage that is not a number blocks charging; 400 V above a 380 V pack does not."""
    rig = Rig(charge_voltage_limit_v=limit_v)
    rig.request(3_000.0)
    assert rig.run(5.0).command.power_w == expected_w


def test_discharge_stops_exactly_at_the_vehicle_minimum_discharge_voltage() -> None:
    """CHAdeMO 0x200 bytes 4-5: a pack at exactly the minimum discharge voltage gives 0 W."""
    rig = Rig(discharge_voltage_min_v=250.0)
    rig.discharging()
    rig.set_vehicle(pack_voltage_v=250.0)
    decision = rig.tick()
    assert decision.command.power_w == 0.0
    assert Rule.VEHICLE_DISCHARGE_VOLTAGE in rules(decision, Direction.DISCHARGE)


def test_an_unreadable_vehicle_minimum_discharge_level_blocks_discharge() -> None:
    """CHAdeMO 0x200 byte 6 reported as NaN is an infinitely high floor: no discharge at all."""
    rig = Rig(soc_pct=60.0, discharge_soc_min_pct=math.nan)
    rig.request(-3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.VEHICLE_MIN_DISCHARGE_LEVEL


@pytest.mark.parametrize("capacity_kwh", [0.0, -40.0, math.nan])
def test_an_implausible_capacity_falls_back_to_the_default(capacity_kwh: float) -> None:
    """A capacity of 0, below 0 or NaN counts as the 80 kWh default: 0.001 cycles is 80 Wh."""
    rig = Rig(Policy(wear=WearPolicy(max_cycles_per_day=0.001)), capacity_kwh=capacity_kwh)
    decision = rig.discharging(3_600.0)
    assert Rule.WEAR_BUDGET not in rules(decision)


def test_cold_battery_exactly_at_the_minimum_temperature_may_run() -> None:
    """A battery at exactly battery_temp_min_c (-10 C) is not too cold."""
    decision = Rig(battery_temp_min_c=-10.0).tick()
    assert Rule.BATTERY_TEMPERATURE not in rules(decision)
    assert decision.command.enable


def test_temperature_derating_takes_the_inverters_lower_charge_rating() -> None:
    """Inverter at 80 C (derate 70, cutoff 85) charges at a third of its 6 kW charge rating."""
    rig = Rig()
    rig.inverter = replace(INVERTER, temperature_c=80.0, max_charge_power_w=6_000.0)
    rig.request(9_000.0)
    decision = rig.run(10.0)
    assert decision.command.power_w == pytest.approx(2_000.0)
    assert decision.binding is not None
    assert decision.binding.rule is Rule.INVERTER_TEMPERATURE


# --- state of charge ------------------------------------------------------------------------------


def test_discharge_continues_through_the_hysteresis_band_down_to_the_floor() -> None:
    """Hysteresis only delays a restart: a running discharge goes on at a reported 42 % (floor
    40 %, the true SoC at least 41 %), inside the band that a restart must clear."""
    rig = Rig(soc_pct=50.0)
    rig.discharging()
    rig.set_vehicle(soc_pct=42.0)
    assert rig.run(1.0).command.power_w < 0.0


def test_departure_reserve_counts_on_the_inverters_lower_charge_rating() -> None:
    """Three hours out, an inverter that charges at 3.8 kW (not 7.4 kW) raises the reserve."""
    rig = departure_rig(soc_pct=60.0)
    rig.wall = dt.datetime(2026, 6, 1, 4, 0, tzinfo=dt.UTC)
    rig.inverter = replace(INVERTER, max_charge_power_w=3_800.0)
    expected_pct = 80.0 - 2.5 * 3_800 / 40_000 * 100
    assert rig.tick().soc_floor_pct == pytest.approx(expected_pct, abs=0.01)


def test_departure_reserve_ignores_a_vehicle_requesting_0_a() -> None:
    """A CHAdeMO car asks for 0 A while discharging: that says nothing about a departure charge."""
    rig = departure_rig(soc_pct=60.0)
    rig.wall = dt.datetime(2026, 6, 1, 4, 0, tzinfo=dt.UTC)
    rig.set_vehicle(charge_current_limit_a=0.0)
    assert rig.tick().soc_floor_pct == 40.0  # the owner's floor, as at full power


# --- wear budget ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("discharged_wh", "blocked"), [(19_999.0, False), (20_000.0, True)])
def test_wear_budget_stops_discharge_exactly_at_the_budget(
    discharged_wh: float, blocked: bool
) -> None:
    """With 20 kWh a day, discharge stops once 20,000 Wh are counted, not before."""
    rig = Rig()
    rig.state = CoreState(
        decided_at_s=rig.now_s, wear_day=rig.wall.date(), discharged_today_wh=discharged_wh
    )
    decision = rig.tick()
    assert (Rule.WEAR_BUDGET in rules(decision, Direction.DISCHARGE)) is blocked


def test_discharged_energy_counts_power_times_time_and_restarts_each_day() -> None:
    """3,600 W for 1 s counts 1 Wh; idle counts nothing; a new local day starts from 0 Wh."""
    rig = Rig()
    today = rig.wall.date()
    rig.state = CoreState(last_command_w=-3_600.0, decided_at_s=rig.now_s, wear_day=today)
    rig.tick(1.0)
    assert rig.state.discharged_today_wh == 1.0
    rig.state = CoreState(decided_at_s=rig.now_s, wear_day=today, discharged_today_wh=5.0)
    rig.tick(1.0)
    assert rig.state.discharged_today_wh == 5.0
    yesterday = today - dt.timedelta(days=1)
    rig.state = CoreState(decided_at_s=rig.now_s, wear_day=yesterday, discharged_today_wh=5.0)
    rig.tick(1.0)
    assert rig.state.discharged_today_wh == 0.0
