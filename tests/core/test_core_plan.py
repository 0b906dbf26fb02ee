"""The ``optimize`` fallback: the core follows the planner's power for the slot in force, and
caps it like any other request (the planner proposes, the core decides)."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.core.arbitration import RequestSource
from controller.core.policy import FallbackMode, FallbackPolicy, OwnerPolicy, Policy
from controller.core.rules import Rule
from controller.core.snapshots import PlannedPower, SetpointMode
from tests.core.test_core_safety import NOON, Rig

OPTIMIZE = Policy(fallback=FallbackPolicy(mode=FallbackMode.OPTIMIZE))


def slot(power_w: float, start: dt.datetime = NOON, minutes: float = 15) -> PlannedPower:
    return PlannedPower(power_w, start, start + dt.timedelta(minutes=minutes), "plan: test slot")


def test_the_planned_power_is_the_request_while_its_slot_is_in_force() -> None:
    rig = Rig(OPTIMIZE)
    rig.plan = slot(-3_000.0)
    decision = rig.run(5.0)
    assert decision.request.source is RequestSource.FALLBACK_PLAN
    assert decision.request.power_w == -3_000.0
    assert decision.command.power_w == -3_000.0
    assert "plan: test slot" in decision.request.note


def test_no_plan_or_a_slot_out_of_force_asks_for_nothing() -> None:
    rig = Rig(OPTIMIZE)
    decision = rig.run(1.0)
    assert decision.request.source is RequestSource.FALLBACK_PLAN
    assert decision.command.power_w == 0.0
    assert "no plan" in decision.request.note
    rig.plan = slot(-3_000.0, start=NOON + dt.timedelta(hours=1))  # not yet
    decision = rig.run(1.0)
    assert decision.command.power_w == 0.0
    assert "not in force" in decision.request.note
    rig.plan = slot(-3_000.0, start=NOON - dt.timedelta(hours=1))  # over
    assert rig.run(1.0).command.power_w == 0.0


def test_a_planned_discharge_still_stops_at_the_floor() -> None:
    policy = Policy(
        owner=OwnerPolicy(soc_floor_pct=40.0),
        fallback=FallbackPolicy(mode=FallbackMode.OPTIMIZE),
    )
    rig = Rig(policy, soc_pct=40.5)
    rig.plan = slot(-3_000.0)
    decision = rig.run(2.0)
    assert decision.command.power_w == 0.0
    assert decision.binding is not None
    assert decision.binding.rule is Rule.SOC_FLOOR


def test_a_planned_charge_is_capped_by_the_ratings() -> None:
    rig = Rig(OPTIMIZE)
    rig.plan = slot(50_000.0)
    decision = rig.run(10.0)
    assert 0 < decision.command.power_w <= OPTIMIZE.safety.max_charge_power_w


def test_an_untrusted_clock_allows_no_planned_discharge_but_a_planned_charge() -> None:
    rig = Rig(OPTIMIZE)
    rig.clock_trusted = False
    rig.plan = slot(-3_000.0)
    assert rig.run(2.0).command.power_w == 0.0
    rig.plan = slot(2_000.0)
    assert rig.run(2.0).command.power_w == 2_000.0


@pytest.mark.parametrize("mode", [SetpointMode.POWER, SetpointMode.IDLE])
def test_an_aggregator_setpoint_overrides_the_plan(mode: SetpointMode) -> None:
    rig = Rig(OPTIMIZE)
    rig.plan = slot(-3_000.0)
    rig.request(1_000.0, mode)
    decision = rig.run(2.0)
    assert decision.request.source in (RequestSource.SETPOINT, RequestSource.SETPOINT_IDLE)
    assert decision.command.power_w == (1_000.0 if mode is SetpointMode.POWER else 0.0)


def test_release_hands_control_back_to_the_plan() -> None:
    rig = Rig(OPTIMIZE)
    rig.plan = slot(-2_000.0)
    rig.request(0.0, SetpointMode.RELEASE)
    decision = rig.run(3.0)
    assert decision.request.source is RequestSource.FALLBACK_PLAN
    assert decision.command.power_w == -2_000.0


def test_a_planned_power_must_be_finite_and_its_slot_aware() -> None:
    with pytest.raises(ValueError, match="finite"):
        slot(float("nan"))
    with pytest.raises(ValueError, match="aware"):
        PlannedPower(0.0, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1, 0, 15), "x")
