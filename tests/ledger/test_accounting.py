"""The ledger's pure accounting rules: counter deltas, resets, rollovers, the tariff."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.ledger.accounting import (
    CounterEvent,
    Tariff,
    counter_step,
    integrated_wh,
    plausible_rise_wh,
    same_vehicle,
    vehicle_present,
)

POWER_W = 7400.0


def test_first_value_is_only_a_base() -> None:
    """Energy from before the ledger existed is not credited."""
    step = counter_step(None, 12_345.0, max_power_w=POWER_W, elapsed_s=0.0)
    assert (step.credited_wh, step.base_wh, step.event) == (0.0, 12_345.0, CounterEvent.BASE)


def test_plausible_rise_is_credited() -> None:
    """A rise within what the installation could deliver is credited in full."""
    step = counter_step(1000.0, 1003.0, max_power_w=POWER_W, elapsed_s=1.0)
    assert (step.credited_wh, step.base_wh, step.event) == (3.0, 1003.0, CounterEvent.CREDITED)


def test_fall_is_a_reset_without_negative_delta() -> None:
    """A counter that goes down re-bases on the new value and credits nothing."""
    step = counter_step(50_000.0, 20.0, max_power_w=POWER_W, elapsed_s=1.0)
    assert (step.credited_wh, step.base_wh, step.event) == (0.0, 20.0, CounterEvent.RESET)
    assert "reset" in step.reason


def test_acc32_rollover_credits_the_wrapped_rise() -> None:
    """SunSpec 103 WH (acc32, hil/inverter/profiles.py ``% (1 << 32)``) wraps: credited."""
    step = counter_step(2.0**32 - 100, 50.0, max_power_w=POWER_W, elapsed_s=60.0)
    assert step.event is CounterEvent.ROLLOVER
    assert step.credited_wh == 150.0
    assert step.base_wh == 50.0


def test_scaled_acc32_rollover() -> None:
    """With WH_SF = 1 the counter wraps at 2**32 x 10 Wh."""
    step = counter_step(2.0**32 * 10 - 5, 5.0, max_power_w=POWER_W, elapsed_s=60.0)
    assert (step.event, step.credited_wh) == (CounterEvent.ROLLOVER, 10.0)


def test_absurd_jump_is_rejected_with_a_reason() -> None:
    """A rise larger than the rating allows is not credited; the new value is the base."""
    step = counter_step(1000.0, 1_000_000.0, max_power_w=POWER_W, elapsed_s=1.0)
    assert (step.credited_wh, step.base_wh, step.event) == (0.0, 1e6, CounterEvent.REJECTED)
    assert "could deliver" in step.reason


def test_unreadable_value_keeps_the_base() -> None:
    for raw in (math.nan, math.inf, -1.0):
        step = counter_step(10.0, raw, max_power_w=POWER_W, elapsed_s=1.0)
        assert (step.credited_wh, step.base_wh, step.event) == (0.0, 10.0, CounterEvent.INVALID)


@given(
    base=st.one_of(st.none(), st.floats(0, 2**40)),
    raw=st.one_of(st.floats(-10, 2**40), st.just(math.nan)),
    elapsed_s=st.floats(-100, 1e6),
)
def test_never_negative_and_never_more_than_plausible(
    base: float | None, raw: float, elapsed_s: float
) -> None:
    """Whatever the counter does, the credit is >= 0 and within the plausible bound."""
    step = counter_step(base, raw, max_power_w=POWER_W, elapsed_s=elapsed_s)
    assert step.credited_wh >= 0
    assert step.credited_wh <= plausible_rise_wh(POWER_W, elapsed_s)


@given(rises=st.lists(st.floats(0, 2.0), min_size=1, max_size=50), start=st.floats(0, 2**32 - 1))
def test_sum_of_credits_equals_the_counter_movement(rises: list[float], start: float) -> None:
    """Read every 100 ms, the credits add up to what the counter moved, rollover included."""
    base: float | None = start
    raw = start
    total = 0.0
    for rise in rises:
        raw = (raw + rise) % 2**32
        step = counter_step(base, raw, max_power_w=POWER_W, elapsed_s=0.1)
        total += step.credited_wh
        base = step.base_wh
    assert math.isclose(total, sum(rises), rel_tol=1e-9, abs_tol=1e-3)


def test_integration_fallback() -> None:
    assert integrated_wh(3600.0, 1.0) == 1.0
    assert integrated_wh(-7200.0, 0.5) == -1.0
    assert integrated_wh(None, 1.0) == 0.0
    assert integrated_wh(math.nan, 1.0) == 0.0
    assert integrated_wh(1000.0, -1.0) == 0.0


def test_tariff_values_energy() -> None:
    tariff = Tariff("EUR", import_price_per_kwh=0.25, export_price_per_kwh=0.30)
    assert math.isclose(tariff.import_cost(2000.0), 0.5)
    assert math.isclose(tariff.export_value(3000.0), 0.9)


def test_session_rule() -> None:
    """A connected car in any phase but UNPLUGGED keeps a session; no snapshot decides nothing."""
    assert vehicle_present(None) is None
    for phase in VehiclePhase:
        state = VehicleState(observed_at_s=0.0, phase=phase, protocol="chademo")
        assert vehicle_present(state) is (phase is not VehiclePhase.UNPLUGGED)
    assert same_vehicle(None, "VIN1")
    assert same_vehicle("VIN1", None)
    assert same_vehicle("VIN1", "VIN1")
    assert not same_vehicle("VIN1", "VIN2")
