"""The rule functions of controller/core/rules.py and the policy checks, one boundary per test.

Plain unit tests, no Hypothesis, so `make mutation` runs them in milliseconds per mutant. Each
compares the exact findings (limits and reasons, with their texts) a rule yields, so a mutant that
changes a value, a comparison, a default or a message fails here.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from controller.core.policy import (
    Departure,
    FallbackPolicy,
    OwnerPolicy,
    Policy,
    SafetyPolicy,
    SitePolicy,
    TimeWindow,
    WearPolicy,
)
from controller.core.rules import (
    Direction,
    Finding,
    FloorPart,
    Limit,
    Readings,
    Reason,
    Rule,
    cap_value,
    ceiling_blocks,
    cell_voltage,
    departure_charge_power_w,
    departure_part,
    departure_reserve_pct,
    derate_fraction,
    floor_blocks,
    floor_parts,
    guarantee_capacity_kwh,
    is_fresh,
    local_instant,
    next_local_instant,
    plausible,
    rated_power_w,
    ratings,
    reading,
    seconds_until,
    temperatures,
    vehicle_current,
    vehicle_permission,
    vehicle_voltage,
    wear_budget_wh,
    zero,
    zero_both,
)
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")
VEHICLE = VehicleState(
    observed_at_s=0.0,
    phase=VehiclePhase.ENERGY_TRANSFER,
    protocol="chademo",
    soc_pct=60.0,
    pack_voltage_v=400.0,
    capacity_kwh=40.0,
    charge_permitted=True,
    discharge_permitted=True,
)
INVERTER = InverterState(observed_at_s=0.0, reachable=True)


def readings(
    *,
    pack_voltage_v: float | None = 400.0,
    capacity_wh: float = 40_000.0,
    inverter: InverterState = INVERTER,
    **vehicle: Any,
) -> Readings:
    """Readings as the core builds them, with the vehicle fields given."""
    return Readings(
        vehicle=replace(VEHICLE, **vehicle),
        inverter=inverter,
        soc_pct=60.0,
        pack_voltage_v=pack_voltage_v,
        capacity_wh=capacity_wh,
    )


# --- snapshots and the small helpers --------------------------------------------------------------


def test_enums_print_their_config_and_telemetry_names() -> None:
    """Logs, telemetry and the config all use these exact words."""
    assert str(PowerState.DISCHARGING) == "discharging"
    assert str(VehiclePhase.ENERGY_TRANSFER) == "energy_transfer"
    assert str(SetpointMode.RELEASE) == "release"
    assert str(Direction.DISCHARGE) == "discharge"
    assert str(Rule.DEPARTURE_RESERVE) == "departure_reserve"
    assert PowerCommand.zero() == PowerCommand(power_w=0.0, enable=False)


def test_limit_and_reason_print_for_a_technician() -> None:
    limit = Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, 0.4, "owner")
    assert str(limit) == "soc_floor discharge <= 0 W (owner)"
    assert str(Reason(Rule.RAMP, "slow")) == "ramp: slow"


def test_a_gate_is_zero_both_ways_with_its_reason() -> None:
    assert list(zero_both(Rule.NO_SESSION, "why")) == [
        Limit(Rule.NO_SESSION, Direction.CHARGE, 0.0, "why"),
        Limit(Rule.NO_SESSION, Direction.DISCHARGE, 0.0, "why"),
        Reason(Rule.NO_SESSION, "why"),
    ]
    assert list(zero(Rule.SOC_CEILING, Direction.CHARGE, "full")) == [
        Limit(Rule.SOC_CEILING, Direction.CHARGE, 0.0, "full"),
        Reason(Rule.SOC_CEILING, "full"),
    ]


@pytest.mark.parametrize(
    ("value", "high", "expected"),
    [
        (None, math.inf, None),  # not reported: no limit from this source
        (math.nan, math.inf, 0.0),  # a NaN rating is not "no limit"
        (math.inf, math.inf, 0.0),
        (-1.0, math.inf, 0.0),
        (0.5, math.inf, 0.5),
        (1_000.0, 1_000.0, 1_000.0),  # the top of the range is still a value
        (1_000.5, 1_000.0, 0.0),
    ],
)
def test_cap_value_permits_nothing_for_a_value_that_is_not_one(
    value: float | None, high: float, expected: float | None
) -> None:
    assert cap_value(value, high) == expected


def test_cap_value_has_no_upper_bound_by_default() -> None:
    assert cap_value(1e12) == 1e12


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (math.nan, None), (-math.inf, None), (-3.5, -3.5)]
)
def test_reading_is_unknown_unless_a_finite_number(
    value: float | None, expected: float | None
) -> None:
    assert reading(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (math.nan, None), (math.inf, None), (9.9, None), (10.0, 10.0), (20.0, 20.0)],
)
def test_plausible_keeps_its_inclusive_range(value: float | None, expected: float | None) -> None:
    assert plausible(value, 10.0, 20.0) == expected
    assert plausible(20.1, 10.0, 20.0) is None


@pytest.mark.parametrize(
    ("observed_at_s", "fresh"),
    [(100.0, True), (99.5, True), (99.0, True), (98.9, False), (100.1, False)],
)
def test_is_fresh_from_now_back_to_the_deadline(observed_at_s: float, fresh: bool) -> None:
    """Data as old as the deadline is fresh; older, or from the future, is not."""
    assert is_fresh(observed_at_s, 100.0, 1.0) is fresh


# --- readings and capacity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pack_v", "expected_v"),
    [(0.0, None), (0.5, 0.5), (1_500.0, 1_500.0), (1_500.5, None), (math.nan, None)],
)
def test_readings_take_a_pack_voltage_only_above_0_v_and_in_range(
    pack_v: float, expected_v: float | None
) -> None:
    r = Readings.of(replace(VEHICLE, pack_voltage_v=pack_v), INVERTER, 55.0, Policy())
    assert r.pack_voltage_v == expected_v
    assert r.soc_pct == 55.0
    assert r.capacity_wh == 40_000.0


@pytest.mark.parametrize(
    ("reported_kwh", "expected_kwh"),
    [(None, 80.0), (4.9, 80.0), (5.0, 5.0), (250.0, 250.0), (250.5, 80.0), (math.nan, 80.0)],
)
def test_the_guarantee_counts_on_a_plausible_capacity_else_the_nominal(
    reported_kwh: float | None, expected_kwh: float
) -> None:
    assert guarantee_capacity_kwh(reported_kwh, Policy()) == expected_kwh


# --- vehicle rules --------------------------------------------------------------------------------


def test_vehicle_permission_per_direction() -> None:
    assert list(vehicle_permission(readings())) == []
    assert list(vehicle_permission(readings(charge_permitted=False))) == [
        Limit(Rule.VEHICLE_PERMISSION, Direction.CHARGE, 0.0, "vehicle does not permit charge"),
        Reason(Rule.VEHICLE_PERMISSION, "vehicle does not permit charge"),
    ]
    assert list(vehicle_permission(readings(discharge_permitted=False))) == [
        Limit(
            Rule.VEHICLE_PERMISSION, Direction.DISCHARGE, 0.0, "vehicle does not permit discharge"
        ),
        Reason(Rule.VEHICLE_PERMISSION, "vehicle does not permit discharge"),
    ]


def test_vehicle_current_limits_become_power_at_the_pack_voltage() -> None:
    r = readings(charge_current_limit_a=10.0, discharge_current_limit_a=1_000.0)
    assert list(vehicle_current(r)) == [
        Limit(
            Rule.VEHICLE_CHARGE_CURRENT,
            Direction.CHARGE,
            4_000.0,
            "vehicle charge current 10 A x 400 V",
        ),
        Limit(
            Rule.VEHICLE_DISCHARGE_CURRENT,
            Direction.DISCHARGE,
            400_000.0,
            "vehicle discharge current 1000 A x 400 V",
        ),
    ]


def test_a_current_limit_above_1000_a_is_implausible_and_permits_nothing() -> None:
    r = readings(discharge_current_limit_a=1_000.5)
    assert [(f.rule, f.power_w) for f in vehicle_current(r) if isinstance(f, Limit)] == [
        (Rule.VEHICLE_DISCHARGE_CURRENT, 0.0)
    ]


def test_a_current_limit_without_a_pack_voltage_permits_nothing() -> None:
    r = readings(pack_voltage_v=None, charge_current_limit_a=10.0)
    source = "vehicle charge current 10 A but pack voltage unknown"
    assert list(vehicle_current(r)) == [
        Limit(Rule.VEHICLE_CHARGE_CURRENT, Direction.CHARGE, 0.0, source),
        Reason(Rule.VEHICLE_CHARGE_CURRENT, source),
    ]


@pytest.mark.parametrize(
    ("pack_v", "max_v", "blocked"),
    [
        (400.0, None, False),  # not reported: no limit
        (399.0, 400.0, False),
        (400.0, 400.0, True),  # at the maximum: no more charge
        (None, 400.0, True),  # pack voltage unknown
        (400.0, math.nan, True),
        (400.0, 1_600.0, True),  # outside 0..1500 V
        (0.2, 0.5, False),  # a tiny maximum is still a value, not "implausible"
    ],
)
def test_vehicle_charge_voltage(pack_v: float | None, max_v: float | None, blocked: bool) -> None:
    findings = list(vehicle_voltage(readings(pack_voltage_v=pack_v, charge_voltage_limit_v=max_v)))
    assert bool(findings) is blocked
    if blocked:
        assert findings[0] == Limit(
            Rule.VEHICLE_CHARGE_VOLTAGE,
            Direction.CHARGE,
            0.0,
            f"pack {'unknown' if pack_v is None else f'{pack_v:g} V'} at or above vehicle "
            f"maximum {max_v:g} V",
        )


@pytest.mark.parametrize(
    ("pack_v", "min_v", "blocked"),
    [
        (400.0, None, False),
        (301.0, 300.0, False),
        (300.0, 300.0, True),  # at the minimum: no more discharge
        (None, 300.0, True),
        (400.0, math.nan, True),
        (400.0, -1.0, True),
        (0.7, 0.5, False),
    ],
)
def test_vehicle_discharge_voltage(
    pack_v: float | None, min_v: float | None, blocked: bool
) -> None:
    r = readings(pack_voltage_v=pack_v, discharge_voltage_min_v=min_v)
    findings = list(vehicle_voltage(r))
    assert bool(findings) is blocked
    if blocked:
        assert findings[0] == Limit(
            Rule.VEHICLE_DISCHARGE_VOLTAGE,
            Direction.DISCHARGE,
            0.0,
            f"pack {'unknown' if pack_v is None else f'{pack_v:g} V'} at or below vehicle "
            f"minimum discharge {min_v:g} V",
        )


@pytest.mark.parametrize(
    ("high_v", "low_v", "blocked"),
    [
        (None, None, set()),
        (4.19, 3.01, set()),
        (4.20, 3.01, {Direction.CHARGE}),  # at the maximum
        (5.0, 3.01, {Direction.CHARGE}),
        (math.nan, 3.01, {Direction.CHARGE}),
        (4.19, 3.00, {Direction.DISCHARGE}),  # at the minimum
        (4.19, 1.0, {Direction.DISCHARGE}),
        (4.19, math.nan, {Direction.DISCHARGE}),
    ],
)
def test_cell_voltage_limits(
    high_v: float | None, low_v: float | None, blocked: set[Direction]
) -> None:
    safety = SafetyPolicy()
    findings = list(
        cell_voltage(readings(cell_voltage_max_v=high_v, cell_voltage_min_v=low_v), safety)
    )
    limits = [f for f in findings if isinstance(f, Limit)]
    assert {lim.direction for lim in limits} == blocked
    assert all(lim.rule is Rule.CELL_VOLTAGE and lim.power_w == 0.0 for lim in limits)


def test_cell_voltage_reasons_name_the_cell_and_the_limit() -> None:
    r = readings(cell_voltage_max_v=4.3, cell_voltage_min_v=2.9)
    assert [str(f) for f in cell_voltage(r, SafetyPolicy()) if isinstance(f, Reason)] == [
        "cell_voltage: highest cell 4.3 V at or above 4.2 V",
        "cell_voltage: lowest cell 2.9 V at or below 3 V",
    ]


# --- charger, inverter, site ----------------------------------------------------------------------


def test_ratings_with_an_inverter_that_reports_its_ratings() -> None:
    inverter = replace(INVERTER, max_charge_power_w=5_000.0, max_discharge_power_w=math.nan)
    policy = Policy(
        safety=SafetyPolicy(max_charge_power_w=7_000.0, max_discharge_power_w=6_000.0),
        site=SitePolicy(grid_import_limit_w=9_000.0, grid_export_limit_w=4_000.0),
    )
    assert list(ratings(readings(inverter=inverter), policy)) == [
        Limit(Rule.CHARGER_RATING, Direction.CHARGE, 7_000.0, "max_charge_power_w"),
        Limit(Rule.CHARGER_RATING, Direction.DISCHARGE, 6_000.0, "max_discharge_power_w"),
        Limit(Rule.INVERTER_RATING, Direction.CHARGE, 5_000.0, "inverter rated charge"),
        # A NaN rating is not "no limit": it permits nothing.
        Limit(Rule.INVERTER_RATING, Direction.DISCHARGE, 0.0, "inverter rated discharge"),
        Limit(Rule.SITE_GRID_LIMIT, Direction.CHARGE, 9_000.0, "grid import"),
        Limit(Rule.SITE_GRID_LIMIT, Direction.DISCHARGE, 4_000.0, "grid export"),
    ]


def test_an_inverter_without_ratings_adds_no_rating_limit() -> None:
    assert Rule.INVERTER_RATING not in {
        f.rule for f in ratings(readings(), Policy()) if isinstance(f, Limit)
    }


def test_rated_power_is_the_lower_of_configured_and_inverter_rating_per_direction() -> None:
    safety = SafetyPolicy(max_charge_power_w=7_000.0, max_discharge_power_w=6_000.0)
    plain = readings()
    assert rated_power_w(plain, safety, Direction.CHARGE) == 7_000.0
    assert rated_power_w(plain, safety, Direction.DISCHARGE) == 6_000.0
    rated = readings(
        inverter=replace(INVERTER, max_charge_power_w=3_000.0, max_discharge_power_w=2_000.0)
    )
    assert rated_power_w(rated, safety, Direction.CHARGE) == 3_000.0
    assert rated_power_w(rated, safety, Direction.DISCHARGE) == 2_000.0
    high = readings(
        inverter=replace(INVERTER, max_charge_power_w=9_000.0, max_discharge_power_w=9_000.0)
    )
    assert rated_power_w(high, safety, Direction.CHARGE) == 7_000.0
    assert rated_power_w(high, safety, Direction.DISCHARGE) == 6_000.0


# --- temperatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temp_c", "fraction"),
    [
        (None, 1.0),
        (-60.0, 1.0),  # the bottom of the physical range is a reading
        (-60.5, 0.0),  # below it: broken sensor
        (44.0, 1.0),
        (45.0, 1.0),
        (47.5, 0.75),
        (50.0, 0.5),
        (55.0, 0.0),
        (56.0, 0.0),
        (math.nan, 0.0),  # a NaN temperature is not ignored
        (math.inf, 0.0),
        (150.5, 0.0),
    ],
)
def test_derate_fraction(temp_c: float | None, fraction: float) -> None:
    assert derate_fraction(temp_c, derate_c=45.0, cutoff_c=55.0) == fraction


def test_at_the_cutoff_nothing_even_with_an_empty_derate_band() -> None:
    """The cutoff is checked before the derate threshold."""
    assert derate_fraction(55.0, derate_c=55.0, cutoff_c=55.0) == 0.0


def temperature_findings(inverter_c: float | None = None, **vehicle: Any) -> list[Finding]:
    inverter = replace(
        INVERTER,
        temperature_c=inverter_c,
        max_charge_power_w=6_000.0,
        max_discharge_power_w=4_000.0,
    )
    return list(temperatures(readings(inverter=inverter, **vehicle), SafetyPolicy()))


def test_battery_derating_halves_both_directions_at_50_c() -> None:
    assert temperature_findings(battery_temp_max_c=50.0) == [
        Limit(Rule.BATTERY_TEMPERATURE, Direction.CHARGE, 3_000.0, "battery 50 C: 50% of rated"),
        Limit(Rule.BATTERY_TEMPERATURE, Direction.DISCHARGE, 2_000.0, "battery 50 C: 50% of rated"),
        Reason(Rule.BATTERY_TEMPERATURE, "battery 50 C above 45 C: derated to 50%"),
    ]


def test_below_the_derate_temperature_no_finding() -> None:
    assert temperature_findings(battery_temp_max_c=45.0, battery_temp_min_c=-10.0) == []


def test_battery_at_cutoff_is_a_gate() -> None:
    why = "battery 55 C at or above cutoff cutoff 55 C"
    assert temperature_findings(battery_temp_max_c=55.0) == list(
        zero_both(Rule.BATTERY_TEMPERATURE, why)
    )


def test_a_nan_inverter_temperature_is_a_gate_not_ignored() -> None:
    why = "inverter nan C implausible; cutoff 85 C"
    assert temperature_findings(inverter_c=math.nan) == list(
        zero_both(Rule.INVERTER_TEMPERATURE, why)
    )


def test_inverter_derating_uses_its_own_thresholds() -> None:
    """Inverter 77.5 C: halfway between 70 and 85 C."""
    assert temperature_findings(inverter_c=77.5)[0] == Limit(
        Rule.INVERTER_TEMPERATURE, Direction.CHARGE, 3_000.0, "inverter 77.5 C: 50% of rated"
    )


@pytest.mark.parametrize(
    ("cold_c", "gated"),
    [(None, False), (-10.0, False), (-10.5, True), (math.nan, True), (-61.0, True)],
)
def test_a_cold_battery_below_its_minimum_is_a_gate(cold_c: float | None, gated: bool) -> None:
    findings = temperature_findings(battery_temp_min_c=cold_c)
    expected = (
        list(zero_both(Rule.BATTERY_TEMPERATURE, f"battery {cold_c:g} C below minimum -10 C"))
        if gated
        else []
    )
    assert findings == expected


# --- departure and floors -------------------------------------------------------------------------


def test_departure_charge_power_is_the_lowest_source_derated() -> None:
    policy = Policy(
        safety=SafetyPolicy(max_charge_power_w=7_000.0),
        site=SitePolicy(grid_import_limit_w=6_000.0),
    )
    assert departure_charge_power_w(readings(), policy) == 6_000.0
    rated = replace(INVERTER, max_charge_power_w=5_000.0, temperature_c=77.5)
    assert departure_charge_power_w(readings(inverter=rated), policy) == 2_500.0
    assert departure_charge_power_w(readings(charge_current_limit_a=10.0), policy) == 4_000.0
    assert departure_charge_power_w(readings(charge_current_limit_a=0.5), policy) == 200.0
    assert departure_charge_power_w(readings(battery_temp_max_c=50.0), policy) == 3_000.0


def test_departure_charge_power_ignores_a_0_a_request_and_a_missing_voltage() -> None:
    """While discharging a CHAdeMO car requests 0 A; it says nothing about charging later."""
    policy = Policy()
    assert departure_charge_power_w(readings(charge_current_limit_a=0.0), policy) == 7_400.0
    no_voltage = readings(pack_voltage_v=None, charge_current_limit_a=10.0)
    assert departure_charge_power_w(no_voltage, policy) == 7_400.0
    assert departure_charge_power_w(readings(charge_current_limit_a=None), policy) == 7_400.0
    # Above 1000 A, or NaN, is not a current: nothing to count on, so the reserve is the target
    # (not ignored like a 0 A request, which would count on full power).
    for reported_a in (1_000.5, math.nan, -1.0):
        implausible = readings(pack_voltage_v=5.0, charge_current_limit_a=reported_a)
        assert departure_charge_power_w(implausible, policy) == 0.0


@pytest.mark.parametrize(("cold_c", "power_w"), [(-10.0, 7_400.0), (-11.0, 0.0), (math.nan, 0.0)])
def test_departure_charge_power_is_0_w_for_a_cold_battery(cold_c: float, power_w: float) -> None:
    assert departure_charge_power_w(readings(battery_temp_min_c=cold_c), Policy()) == power_w


def test_departure_reserve_from_first_principles() -> None:
    """40 kWh, 4 kW: 10 % per hour. With a 25 % margin, 5 h left are 4 h of charge: 40 %."""
    reserve = departure_reserve_pct(80.0, 5 * 3600.0, 4_000.0, 40_000.0, 25.0)
    assert reserve == pytest.approx(40.0, abs=1e-9)
    assert departure_reserve_pct(80.0, 3600.0, 0.0, 40_000.0, 25.0) == 80.0
    # A tiny charge power still counts: 1 Wh battery, 0.5 W for an hour is 50 %.
    assert departure_reserve_pct(80.0, 3600.0, 0.5, 1.0, 0.0) == pytest.approx(30.0)


def test_floor_parts_owner_and_vehicle() -> None:
    policy = Policy(owner=OwnerPolicy(soc_floor_pct=30.0))
    assert floor_parts(readings(), policy, None, 0.0) == (
        FloorPart(Rule.SOC_FLOOR, 30.0, "owner soc_floor_pct"),
    )
    assert floor_parts(readings(discharge_soc_min_pct=35.0), policy, None, 0.0)[1] == FloorPart(
        Rule.VEHICLE_MIN_DISCHARGE_LEVEL, 35.0, "vehicle minimum discharge level"
    )
    assert floor_parts(readings(discharge_soc_min_pct=0.0), policy, None, 0.0)[1].soc_pct == 0.0
    assert floor_parts(readings(discharge_soc_min_pct=100.0), policy, None, 0.0)[1].soc_pct == 100


@pytest.mark.parametrize("level_pct", [math.nan, -1.0, 100.5, math.inf])
def test_an_implausible_vehicle_minimum_discharge_level_blocks_all_discharge(
    level_pct: float,
) -> None:
    """A NaN (or out-of-range) CHAdeMO 0x200 byte 6 is an infinite floor, never 0 %."""
    part = floor_parts(readings(discharge_soc_min_pct=level_pct), Policy(), None, 0.0)[1]
    assert part == FloorPart(
        Rule.VEHICLE_MIN_DISCHARGE_LEVEL, math.inf, "vehicle minimum discharge level"
    )


DEPARTURE_POLICY = Policy(
    owner=OwnerPolicy(departure=Departure(dt.time(7, 30), 80.0), departure_margin_pct=25.0),
    safety=SafetyPolicy(ramp_w_per_s=1_000.0, floor_horizon_s=2.0),
    site=SitePolicy(grid_import_limit_w=4_000.0),
)


def test_departure_part_counts_ramp_horizon_and_margin() -> None:
    """4 kW on 40 kWh is 10 %/h. From a 2 kW discharge the ramp to +4 kW takes 6 s, plus the 2 s
    horizon: 8 s lost. 5 h + 8 s left with a 25 % margin leave 4 h of charge: reserve 40 %."""
    part = departure_part(readings(), DEPARTURE_POLICY, 5 * 3600.0 + 8.0, -2_000.0)
    assert part.rule is Rule.DEPARTURE_RESERVE
    assert part.soc_pct == pytest.approx(40.0, abs=1e-9)
    assert part.source == "80 % by 07:30 (5.0 h) at 4000 W"
    assert floor_parts(readings(), DEPARTURE_POLICY, 5 * 3600.0 + 8.0, -2_000.0)[1] == part


def test_departure_part_time_factor_scales_the_lost_time() -> None:
    """A simulated battery 10x faster loses 10 x 8 s = 80 s of the time left."""
    policy = replace(
        DEPARTURE_POLICY, safety=replace(DEPARTURE_POLICY.safety, battery_time_factor=10.0)
    )
    part = departure_part(readings(), policy, 5 * 3600.0 + 80.0, -2_000.0)
    assert part.soc_pct == pytest.approx(40.0, abs=1e-9)


def test_departure_part_from_a_charging_command_ramps_from_zero_extra() -> None:
    """A charging last command adds no ramp time: only the 4 s ramp of the charge power itself."""
    part = departure_part(readings(), DEPARTURE_POLICY, 5 * 3600.0 + 6.0, 3_000.0)
    assert part.soc_pct == pytest.approx(40.0, abs=1e-9)


def test_departure_part_when_due_or_on_an_untrusted_clock_is_the_target() -> None:
    due = departure_part(readings(), DEPARTURE_POLICY, 0.0, 0.0)
    assert (due.soc_pct, due.source) == (80.0, "80 % by 07:30: due")
    untrusted = departure_part(readings(), DEPARTURE_POLICY, None, 0.0)
    assert untrusted == FloorPart(
        Rule.DEPARTURE_RESERVE, 80.0, "80 % by 07:30: wall clock not synchronised"
    )
    # 180 s is 0.05 h, printed as 0.1 h.
    assert departure_part(readings(), DEPARTURE_POLICY, 180.0, 0.0).source == (
        "80 % by 07:30 (0.1 h) at 4000 W"
    )
    # Under a second left is not yet due.
    assert departure_part(readings(), DEPARTURE_POLICY, 0.5, 0.0).source == (
        "80 % by 07:30 (0.0 h) at 4000 W"
    )
    # Less time left than the ramp and horizon take: the reserve is the target, not above it.
    assert departure_part(readings(), DEPARTURE_POLICY, 3.0, 0.0).soc_pct == 80.0


@pytest.mark.parametrize(
    ("soc_pct", "was_blocked", "blocked"),
    [
        (40.0, False, True),  # discharge at exactly the floor is not allowed
        (40.1, False, False),
        (41.9, True, True),
        (42.0, True, False),  # floor + hysteresis releases
        (41.9, False, False),
    ],
)
def test_floor_blocks_at_the_floor_and_until_floor_plus_hysteresis(
    soc_pct: float, was_blocked: bool, blocked: bool
) -> None:
    assert floor_blocks(soc_pct, 40.0, 2.0, was_blocked) is blocked


@pytest.mark.parametrize(
    ("soc_pct", "was_blocked", "blocked"),
    [(90.0, False, True), (89.9, False, False), (88.1, True, True), (88.0, True, False)],
)
def test_ceiling_blocks_at_the_ceiling_and_until_ceiling_minus_hysteresis(
    soc_pct: float, was_blocked: bool, blocked: bool
) -> None:
    assert ceiling_blocks(soc_pct, 90.0, 2.0, was_blocked) is blocked


def test_wear_budget_is_kwh_per_day_or_cycles_times_capacity_if_lower() -> None:
    assert wear_budget_wh(readings(), Policy(wear=WearPolicy(12.0))) == 12_000.0
    cycles = Policy(wear=WearPolicy(12.0, max_cycles_per_day=0.25))
    assert wear_budget_wh(readings(), cycles) == 10_000.0
    loose = Policy(wear=WearPolicy(12.0, max_cycles_per_day=1.0))
    assert wear_budget_wh(readings(), loose) == 12_000.0


# --- local time -----------------------------------------------------------------------------------


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC)


def test_local_instant_on_an_ordinary_day() -> None:
    instant = local_instant(dt.date(2026, 6, 1), dt.time(7, 30), AMSTERDAM)
    assert instant == utc(2026, 6, 1, 5, 30)
    assert instant.tzinfo is dt.UTC  # UTC itself, not the machine's local zone


# The bisection must end: a mutant that loops fails here in seconds, not at mutmut's limit.
@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "at_local", [dt.time(2, 0, 1), dt.time(2, 1), dt.time(2, 30), dt.time(2, 59, 59)]
)
def test_a_local_time_in_the_spring_gap_is_the_transition(at_local: dt.time) -> None:
    """02:00..02:59 do not exist on 29 March 2026 in Amsterdam: each is 03:00 CEST, 01:00 UTC,
    to the second (the bisection runs down to one second)."""
    instant = local_instant(dt.date(2026, 3, 29), at_local, AMSTERDAM)
    assert instant == utc(2026, 3, 29, 1, 0)
    assert instant.tzinfo is dt.UTC


def test_an_ambiguous_local_time_is_the_earlier_instant() -> None:
    """02:30 happens twice on 25 October 2026; the first is CEST, 00:30 UTC."""
    assert local_instant(dt.date(2026, 10, 25), dt.time(2, 30), AMSTERDAM) == utc(
        2026, 10, 25, 0, 30
    )


# The bisection must end: a mutant that loops fails here in seconds, not at mutmut's limit.
@pytest.mark.timeout(5)
def test_the_first_instant_after_a_gap_that_is_not_on_the_hour() -> None:
    """Lord Howe Island moves by 30 minutes: 02:15 on 5 October 2025 is 02:30 local, 15:30 UTC."""
    lord_howe = zoneinfo.ZoneInfo("Australia/Lord_Howe")
    assert local_instant(dt.date(2025, 10, 5), dt.time(2, 15), lord_howe) == utc(
        2025, 10, 4, 15, 30
    )


def test_next_local_instant_is_strictly_after_now() -> None:
    now = dt.datetime(2026, 6, 1, 7, 30, tzinfo=AMSTERDAM)
    assert next_local_instant(now, dt.time(7, 30)) == utc(2026, 6, 2, 5, 30)
    assert next_local_instant(now, dt.time(7, 31)) == utc(2026, 6, 1, 5, 31)
    assert seconds_until(now, dt.time(8, 0)) == 1_800.0


def test_seconds_until_across_the_spring_gap() -> None:
    """From 01:00 CET to 07:00 CEST on the night the clocks go forward is 5 h."""
    now = dt.datetime(2026, 3, 29, 1, 0, tzinfo=AMSTERDAM)
    assert seconds_until(now, dt.time(7, 0)) == 5 * 3600.0


# --- policy invariants ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: OwnerPolicy(soc_floor_pct=100.5), "soc_floor_pct: expected 0..100 %"),
        (lambda: OwnerPolicy(soc_ceiling_pct=math.nan), "soc_ceiling_pct: expected 0..100 %"),
        (lambda: OwnerPolicy(departure_margin_pct=-1.0), "departure_margin_pct: expected a"),
        (lambda: OwnerPolicy(departure_margin_pct=math.inf), "departure_margin_pct"),
        (lambda: Departure(dt.time(7), target_soc_pct=-0.5), "target_soc_pct: expected 0..100 %"),
        (lambda: SitePolicy(grid_import_limit_w=-1.0), "grid_import_limit_w: expected a finite"),
        (lambda: SitePolicy(grid_export_limit_w=math.nan), "grid_export_limit_w"),
        (lambda: SafetyPolicy(max_charge_power_w=-1.0), "max_charge_power_w"),
        (lambda: SafetyPolicy(max_discharge_power_w=-1.0), "max_discharge_power_w"),
        (lambda: SafetyPolicy(ramp_w_per_s=0.0), "ramp_w_per_s: expected a finite value > 0"),
        (lambda: SafetyPolicy(ramp_max_interval_s=math.inf), "ramp_max_interval_s"),
        (lambda: SafetyPolicy(inverter_stale_after_s=-1.0), "inverter_stale_after_s"),
        (lambda: SafetyPolicy(floor_hysteresis_pct=-1.0), "floor_hysteresis_pct"),
        (lambda: SafetyPolicy(ceiling_hysteresis_pct=-1.0), "ceiling_hysteresis_pct"),
        (lambda: SafetyPolicy(fault_hold_s=-1.0), "fault_hold_s"),
        (lambda: SafetyPolicy(battery_temp_min_c=math.nan), "battery_temp_min_c: expected a fin"),
        (lambda: SafetyPolicy(cell_voltage_max_v=math.inf), "cell_voltage_max_v"),
        (lambda: SafetyPolicy(battery_temp_derate_c=55.0), "battery_temp_derate_c: expected bel"),
        (lambda: SafetyPolicy(inverter_temp_derate_c=85.0), "inverter_temp_derate_c: expected be"),
        (lambda: SafetyPolicy(cell_voltage_min_v=4.2), "cell_voltage_min_v: expected below"),
        (lambda: SafetyPolicy(manual_reset_faults=frozenset({"x"})), "manual_reset_faults: unkn"),
        (lambda: SafetyPolicy(soc_resolution_pct=10.5), "soc_resolution_pct: expected 0..10 %"),
        (lambda: SafetyPolicy(soc_resolution_pct=-0.5), "soc_resolution_pct"),
        (lambda: SafetyPolicy(soc_resolution_pct=math.nan), "soc_resolution_pct"),
        (lambda: SafetyPolicy(floor_horizon_s=-1.0), "floor_horizon_s"),
        (lambda: SafetyPolicy(battery_time_factor=0.5), "battery_time_factor: expected a finite"),
        (lambda: SafetyPolicy(battery_time_factor=math.inf), "battery_time_factor"),
        (lambda: WearPolicy(max_discharge_kwh_per_day=-1.0), "max_discharge_kwh_per_day"),
        (lambda: WearPolicy(max_cycles_per_day=math.nan), "max_cycles_per_day"),
        (lambda: FallbackPolicy(charge_power_w=-1.0), "charge_power_w"),
        (lambda: FallbackPolicy(discharge_power_w=-1.0), "discharge_power_w"),
        (lambda: Policy(battery_capacity_default_kwh=4.9), "battery_capacity_default_kwh: expe"),
        (lambda: Policy(battery_capacity_default_kwh=250.5), "battery_capacity_default_kwh"),
        (lambda: Policy(battery_capacity_default_kwh=math.nan), "battery_capacity_default_kwh"),
        (lambda: TimeWindow(dt.time(1, tzinfo=dt.UTC), dt.time(2)), "TimeWindow: expected local"),
        (lambda: TimeWindow(dt.time(1), dt.time(2, tzinfo=dt.UTC)), "TimeWindow: expected local"),
        (lambda: TimeWindow(dt.time(1), dt.time(1)), "TimeWindow: start and end must differ"),
        (lambda: Departure(dt.time(7, tzinfo=dt.UTC)), "Departure: expected a local time"),
    ],
)
def test_each_invalid_value_is_rejected_with_its_name(
    build: Callable[[], object], message: str
) -> None:
    """The message starts with the config key, as a technician reads it."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        build()


def test_boundary_values_are_accepted() -> None:
    """The edges of every range are valid configurations, not errors."""
    OwnerPolicy(soc_floor_pct=0.0, soc_ceiling_pct=100.0, departure_margin_pct=0.0)
    OwnerPolicy(soc_floor_pct=0.5, soc_ceiling_pct=0.5, departure_margin_pct=0.5)
    Departure(dt.time(7), target_soc_pct=100.0)
    SitePolicy(grid_import_limit_w=0.0, grid_export_limit_w=0.5)
    SafetyPolicy(
        ramp_w_per_s=0.5,
        ramp_max_interval_s=0.5,
        vehicle_stale_after_s=0.5,
        inverter_stale_after_s=0.5,
        soc_resolution_pct=10.0,
        floor_horizon_s=0.0,
        battery_time_factor=1.0,
        fault_hold_s=0.0,
        max_charge_power_w=0.0,
        manual_reset_faults=frozenset({"vehicle_fault", "inverter_fault"}),
        battery_temp_derate_c=54.9,
        inverter_temp_derate_c=84.9,
        cell_voltage_min_v=4.19,
    )
    SafetyPolicy(soc_resolution_pct=0.0, floor_horizon_s=0.5)
    WearPolicy(max_discharge_kwh_per_day=0.0, max_cycles_per_day=0.0)
    FallbackPolicy(charge_power_w=0.0, discharge_power_w=0.0)
    Policy(battery_capacity_default_kwh=5.0)
    Policy(battery_capacity_default_kwh=250.0)


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        (dt.time(17), dt.time(21), [dt.time(17), dt.time(20, 59)], [dt.time(21), dt.time(16)]),
        (
            dt.time(22),
            dt.time(6),
            [dt.time(22), dt.time(0), dt.time(5, 59)],
            [dt.time(6), dt.time(12), dt.time(21, 59)],
        ),
    ],
)
def test_a_time_window_includes_its_start_and_excludes_its_end(
    start: dt.time, end: dt.time, inside: list[dt.time], outside: list[dt.time]
) -> None:
    window = TimeWindow(start, end)
    assert all(window.contains(at) for at in inside)
    assert not any(window.contains(at) for at in outside)
