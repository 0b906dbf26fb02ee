"""The policy dataclasses: safe defaults, and invariants checked at construction."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable

import pytest

from controller.core.policy import (
    Departure,
    FallbackMode,
    FaultResetMode,
    OwnerPolicy,
    Policy,
    SafetyPolicy,
    SitePolicy,
    TimeWindow,
    WearPolicy,
)
from controller.core.rules import departure_reserve_pct, seconds_until
from controller.core.safety import Now

AMSTERDAM = zoneinfo.ZoneInfo("Europe/Amsterdam")


def test_default_policy_is_complete_and_conservative() -> None:
    """Policy() alone is a usable configuration: a floor, no export beyond the site, auto reset."""
    policy = Policy()
    assert policy.owner.soc_floor_pct == 40.0
    assert policy.owner.soc_ceiling_pct == 90.0
    assert policy.owner.departure is None
    assert policy.safety.vehicle_stale_after_s == 1.0
    assert policy.safety.fault_reset is FaultResetMode.AUTO
    assert policy.fallback.mode is FallbackMode.IDLE
    assert policy.wear.max_discharge_kwh_per_day == 20.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: OwnerPolicy(soc_floor_pct=150.0), "soc_floor_pct"),
        (lambda: OwnerPolicy(soc_ceiling_pct=-1.0), "soc_ceiling_pct"),
        (lambda: SitePolicy(grid_export_limit_w=-1.0), "grid_export_limit_w"),
        (lambda: SafetyPolicy(ramp_w_per_s=0.0), "ramp_w_per_s"),
        (lambda: SafetyPolicy(vehicle_stale_after_s=float("nan")), "vehicle_stale_after_s"),
        (lambda: SafetyPolicy(battery_temp_derate_c=60.0), "battery_temp_derate_c"),
        (lambda: SafetyPolicy(inverter_temp_cutoff_c=10.0), "inverter_temp_derate_c"),
        (lambda: SafetyPolicy(cell_voltage_min_v=4.5), "cell_voltage_min_v"),
        (lambda: WearPolicy(max_cycles_per_day=-1.0), "max_cycles_per_day"),
        (lambda: Policy(battery_capacity_default_kwh=0.0), "battery_capacity_default_kwh"),
        (lambda: TimeWindow(dt.time(1), dt.time(1)), "start and end must differ"),
        (lambda: Departure(dt.time(7, tzinfo=dt.UTC)), "without zone"),
    ],
)
def test_invalid_values_are_rejected_not_clamped(build: Callable[[], object], message: str) -> None:
    """A value the core cannot obey safely is a ValueError at construction."""
    with pytest.raises(ValueError, match=message):
        build()


def test_wall_clock_must_be_aware() -> None:
    """A naive wall-clock time cannot place a departure or a tariff window: rejected."""
    with pytest.raises(ValueError, match="aware"):
        Now(0.0, dt.datetime(2026, 1, 1, 12))


@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        (dt.time(17), dt.time(21), [dt.time(17), dt.time(20, 59)], [dt.time(21), dt.time(3)]),
        (dt.time(22), dt.time(6), [dt.time(23), dt.time(0), dt.time(5, 59)], [dt.time(6)]),
    ],
)
def test_time_window_is_half_open_and_may_cross_midnight(
    start: dt.time, end: dt.time, inside: list[dt.time], outside: list[dt.time]
) -> None:
    """A window holds [start, end); with start after end it wraps past midnight."""
    window = TimeWindow(start, end)
    assert all(window.contains(t) for t in inside)
    assert not any(window.contains(t) for t in outside)


def test_seconds_until_departure_counts_real_seconds_across_dst() -> None:
    """The night the clocks spring forward, 22:00 to 07:00 local is 8 h, not 9 h."""
    evening = dt.datetime(2026, 3, 28, 22, tzinfo=AMSTERDAM)
    assert seconds_until(evening, dt.time(7)) == 8 * 3600
    autumn = dt.datetime(2026, 10, 24, 22, tzinfo=AMSTERDAM)
    assert seconds_until(autumn, dt.time(7)) == 10 * 3600


def test_seconds_until_departure_rolls_to_tomorrow_once_passed() -> None:
    """At or after today's departure time, the next departure is tomorrow's."""
    at_departure = dt.datetime(2026, 6, 1, 7, 30, tzinfo=dt.UTC)
    assert seconds_until(at_departure, dt.time(7, 30)) == 24 * 3600


def test_departure_reserve_is_target_minus_what_fits_in_time() -> None:
    """7.4 kW for 5 h (6 h with a 20 % margin) into 74 kWh is 50 %: reserve 80 - 50 = 30 %."""
    assert departure_reserve_pct(80.0, 6 * 3600, 7_400.0, 74_000.0, 20.0) == pytest.approx(30.0)
    assert departure_reserve_pct(80.0, 6 * 3600, 0.0, 74_000.0, 20.0) == 80.0
