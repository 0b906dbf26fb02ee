"""The bridge from the technician's config to the core's policy, and the stateful core step."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from controller.config import load_config, parse_config
from controller.control import CoreControlStep, policy_from_config
from controller.core.policy import FallbackMode, FaultResetMode
from controller.core.snapshots import (
    InverterState,
    PowerState,
    Setpoint,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
WALL = dt.datetime(2026, 11, 23, 19, 0, tzinfo=dt.UTC)


def test_example_config_becomes_the_policy_it_says() -> None:
    """Every owner, safety and fallback value in the YAML reaches the core unchanged."""
    config = load_config(EXAMPLE)
    policy = policy_from_config(config)
    assert policy.owner.soc_floor_pct == config.owner.soc_floor_pct
    assert policy.owner.departure is not None
    assert policy.owner.departure.time_local == dt.time(7, 30)
    assert policy.owner.departure.target_soc_pct == 80
    assert policy.owner.departure_margin_pct == config.safety.departure_margin_pct
    assert policy.site.grid_export_limit_w == config.safety.grid_export_limit_w
    assert policy.safety.ramp_w_per_s == config.safety.ramp_w_per_s
    assert policy.safety.vehicle_stale_after_s == config.vehicle.stale_after_s
    assert policy.safety.fault_reset is FaultResetMode.AUTO
    assert policy.wear.max_discharge_kwh_per_day == config.safety.max_discharge_kwh_per_day
    assert policy.fallback.mode is FallbackMode.OPTIMIZE
    assert config.fallback.peak_window is not None
    assert [w.start_local for w in policy.fallback.peak_windows] == [
        config.fallback.peak_window.start
    ]
    assert policy.battery_capacity_default_kwh == config.owner.battery_capacity_kwh


def vehicle(now_s: float, soc_pct: float) -> VehicleState:
    return VehicleState(
        observed_at_s=now_s,
        phase=VehiclePhase.ENERGY_TRANSFER,
        protocol="chademo",
        soc_pct=soc_pct,
        pack_voltage_v=380.0,
        charge_current_limit_a=30.0,
        charge_voltage_limit_v=410.0,
        discharge_current_limit_a=30.0,
        discharge_voltage_min_v=250.0,
        discharge_soc_min_pct=10.0,
        battery_temp_max_c=25.0,
        capacity_kwh=40.0,
        charge_permitted=True,
        discharge_permitted=True,
    )


def inverter(now_s: float) -> InverterState:
    return InverterState(
        observed_at_s=now_s,
        reachable=True,
        enabled=True,
        measured_power_w=0.0,
        max_charge_power_w=7400.0,
        max_discharge_power_w=7400.0,
        temperature_c=35.0,
    )


def test_step_follows_a_setpoint_and_reports_it() -> None:
    """An aggregator discharge setpoint is followed (ramped) and named in the output."""
    step = CoreControlStep(policy_from_config(load_config(EXAMPLE)))
    setpoint = Setpoint("sp-1", 0.0, 1000.0, SetpointMode.POWER, -3000.0)
    output = None
    for i in range(40):
        now_s = 1.0 + i * 0.1
        output = step(vehicle(now_s, 70.0), inverter(now_s), setpoint, now_s, WALL)
    assert output is not None
    assert output.command.power_w == -3000.0
    assert output.state is PowerState.DISCHARGING
    assert output.source == "aggregator"
    assert output.setpoint_id == "sp-1"
    assert output.max_discharge_w > 0
    assert output.energy_above_floor_wh is not None
    assert output.energy_above_floor_wh > 0


def test_step_without_data_holds_zero() -> None:
    """No vehicle and no inverter: 0 W, stage disabled."""
    step = CoreControlStep(policy_from_config(load_config(EXAMPLE)))
    output = step(None, None, None, 5.0, WALL)
    assert output.command.power_w == 0.0
    assert not output.command.enable
    assert output.setpoint_id is None


def test_manual_fault_reset_clears_a_latch_once_the_cause_is_gone() -> None:
    """With fault_reset: manual, an inverter fault stays latched until a reset after it clears."""
    text = EXAMPLE.read_text().replace("fault_reset: auto", "fault_reset: manual")
    step = CoreControlStep(policy_from_config(parse_config(text)))
    faulty = InverterState(observed_at_s=1.0, reachable=True, faults=("inverter state FAULT",))
    output = step(vehicle(1.0, 70.0), faulty, None, 1.0, WALL)
    assert output.state is PowerState.FAULT
    assert not step.reset_faults().accepted  # the cause is still present at the last decision
    output = step(vehicle(2.0, 70.0), inverter(2.0), None, 2.0, WALL)
    assert output.faults  # still latched: manual mode never clears by itself
    assert step.reset_faults().accepted
    output = step(vehicle(2.1, 70.0), inverter(2.1), None, 2.1, WALL)
    assert output.faults == ()
    assert output.session_allowed


def test_emergency_stop_input_holds_zero_and_latches() -> None:
    """The board's E-stop: 0 W at once, no session permission, latched until it is released."""
    pressed = [False]
    step = CoreControlStep(
        policy_from_config(load_config(EXAMPLE)), emergency_stop=lambda: pressed[0]
    )
    setpoint = Setpoint("sp-1", 0.0, 1000.0, SetpointMode.POWER, -3000.0)
    for i in range(40):
        now_s = 1.0 + i * 0.1
        output = step(vehicle(now_s, 70.0), inverter(now_s), setpoint, now_s, WALL)
    assert output.command.power_w == -3000.0
    pressed[0] = True
    output = step(vehicle(5.1, 70.0), inverter(5.1), setpoint, 5.1, WALL)
    assert output.command.power_w == 0.0
    assert not output.session_allowed
    assert output.state is PowerState.FAULT
    pressed[0] = False
    output = step(vehicle(5.2, 70.0), inverter(5.2), setpoint, 5.2, WALL)
    assert output.command.power_w == 0.0  # still latched: reset after the hold time
    assert output.faults
