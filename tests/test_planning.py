"""The wiring between the planner and the core (controller/planning.py): when it plans, what it
plans with, and the prices the receipts use."""

from __future__ import annotations

import datetime as dt
import functools
import time
import zoneinfo
from pathlib import Path

import pytest

from controller.app import plan_settings
from controller.config import Config, load_config
from controller.control import CoreControlStep, policy_from_config
from controller.core.policy import Policy
from controller.core.snapshots import InverterState, VehiclePhase, VehicleState
from controller.economics.tariff import PeakEvent, PriceSlot
from controller.planning import MomentPrices, PlanKeeper

ROOT = Path(__file__).resolve().parents[1]
TZ = zoneinfo.ZoneInfo("Asia/Shanghai")
EVENING = dt.datetime(2026, 12, 3, 18, 7, tzinfo=TZ)
DEPARTURE = dt.datetime(2026, 12, 4, 7, 30, tzinfo=TZ)


@functools.cache
def shanghai() -> Config:
    """config/example-cn.yaml: peak 06-22 (import 0.617, export 0.85), valley 22-06 (0.307, 0),
    floor 40 %, ceiling 90 %, departure 80 % at 07:30, 7 kW each way, LFP."""
    return load_config(ROOT / "config/example-cn.yaml")


def keeper(*, in_background: bool = False) -> tuple[PlanKeeper, Policy]:
    policy = policy_from_config(shanghai())
    return PlanKeeper(plan_settings(shanghai()), policy, in_background=in_background), policy


def update(k: PlanKeeper, wall: dt.datetime = EVENING, soc_pct: float = 60.0, **kw: object) -> None:
    args: dict[str, object] = {
        "wall": wall,
        "soc_pct": soc_pct,
        "capacity_kwh": 60.0,
        "departure_at": DEPARTURE,
        "discharged_today_kwh": 0.0,
        "clock_trusted": True,
    } | kw
    k.update(**args)  # type: ignore[arg-type]


def test_a_night_plan_sells_at_the_peak_buys_in_the_valley_and_meets_the_target() -> None:
    k, policy = keeper()
    update(k)
    plan = k.plan
    assert plan is not None
    assert plan.target_reachable
    by_time = {slot.start.astimezone(TZ).time(): slot for slot in plan.slots}
    assert by_time[dt.time(20, 0)].power_w < 0  # the evening peak: export at 0.85
    assert by_time[dt.time(23, 0)].power_w > 0  # the valley: import at 0.307
    assert plan.slots[-1].end <= DEPARTURE
    departure = policy.owner.departure
    assert departure is not None
    assert plan.slots[-1].soc_end_pct >= departure.target_soc_pct
    floor = policy.owner.soc_floor_pct
    assert min(slot.soc_end_pct for slot in plan.slots) >= floor


def test_it_replans_only_when_the_night_changes() -> None:
    k, _ = keeper()
    update(k)
    assert k.replans == 1
    update(k, EVENING + dt.timedelta(seconds=10), soc_pct=60.3)
    assert k.replans == 1  # on the plan's path: nothing to do
    update(k, EVENING + dt.timedelta(seconds=20), prices_version=1)
    assert (k.replans, k.last_reason) == (2, "new prices")
    update(k, EVENING + dt.timedelta(seconds=30), prices_version=1, departure_at=None)
    assert (k.replans, k.last_reason) == (3, "departure changed")
    update(k, EVENING + dt.timedelta(seconds=40), prices_version=1, departure_at=None)
    assert k.replans == 3
    update(
        k,
        EVENING + dt.timedelta(seconds=50),
        prices_version=1,
        departure_at=None,
        max_charge_w=3000,
    )
    assert (k.replans, k.last_reason) == (4, "a rating changed")


def test_a_soc_off_the_plans_path_replans() -> None:
    k, _ = keeper()
    update(k, soc_pct=60.0)
    plan = k.plan
    assert plan is not None
    third = plan.slots[2]
    assert third.soc_end_pct > 60.0 + 4  # the plan charges at first
    halfway = third.start + (third.end - third.start) / 2
    update(k, halfway, soc_pct=60.0)  # stuck: the charge did not happen
    assert k.replans == 2
    assert "off the plan" in k.last_reason


def test_an_untrusted_clock_plans_no_discharge() -> None:
    k, _ = keeper()
    update(k, clock_trusted=False)
    assert k.plan is not None
    assert all(slot.power_w >= 0 for slot in k.plan.slots)


def test_the_wear_budget_left_today_caps_the_planned_export() -> None:
    k, policy = keeper()
    left_kwh = 2.0
    used = policy.wear.max_discharge_kwh_per_day - left_kwh
    update(k, discharged_today_kwh=used)
    assert k.plan is not None
    assert k.plan.exported_kwh <= left_kwh + 1e-6


def test_no_soc_no_plan_and_unplugging_forgets_it() -> None:
    k, _ = keeper()
    k.update(
        wall=EVENING,
        soc_pct=None,
        capacity_kwh=None,
        departure_at=None,
        discharged_today_kwh=0.0,
        clock_trusted=True,
    )
    assert k.plan is None
    assert "no state of charge" in k.last_reason
    update(k)
    assert k.outline(EVENING) is not None
    k.forget()
    assert k.plan is None
    assert k.outline(EVENING) is None


def test_the_outline_carries_the_next_slots_from_the_one_in_force() -> None:
    k, _ = keeper()
    update(k)
    outline = k.outline(EVENING + dt.timedelta(minutes=30))
    assert outline is not None
    assert outline.start == dt.datetime(2026, 12, 3, 18, 30, tzinfo=TZ)
    assert len(outline.power_w) == shanghai().economics.plan_slots_published
    assert outline.ends_at <= DEPARTURE
    assert outline.plan_number == 1


@pytest.mark.timeout(10)
def test_in_the_background_the_old_plan_holds_until_the_new_one_lands() -> None:
    k, _ = keeper(in_background=True)
    try:
        update(k)  # submitted: no plan yet, nothing proposed
        deadline = time.monotonic() + 5
        while k.plan is None and time.monotonic() < deadline:
            time.sleep(0.01)
            update(k)
        assert k.plan is not None
        first = k.plan
        update(k, prices_version=7)
        assert k.plan is first  # the new one is being made
        while k.replans < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            update(k, prices_version=7)
        assert k.replans == 2
        assert k.plan is not first
    finally:
        k.close()


def test_a_pushed_schedule_and_an_event_price_the_receipts() -> None:
    prices = MomentPrices(shanghai().economic_tariff())
    at = dt.datetime(2026, 12, 3, 19, 0, tzinfo=TZ)
    assert prices(at) == pytest.approx((0.617, 0.85))
    assert not prices.in_peak_event(at)

    class Book:
        version = 1

        def current_slots(self, now: dt.datetime) -> tuple[PriceSlot, ...]:
            return (PriceSlot(at, at + dt.timedelta(hours=1), 0.5, 1.0),)

        def events(self, now: dt.datetime) -> tuple[PeakEvent, ...]:
            return (PeakEvent("dr-1", at, at + dt.timedelta(minutes=30), 3.0),)

    prices.source = Book()
    assert prices(at) == pytest.approx((0.5, 4.0))
    assert prices.in_peak_event(at)
    assert prices(at + dt.timedelta(minutes=45)) == pytest.approx((0.5, 1.0))
    assert prices(at + dt.timedelta(hours=2)) == pytest.approx((0.617, 0.85))


def test_the_control_step_follows_the_plan_in_optimize() -> None:
    """The core's request is the plan's power for the slot in force; the output publishes it."""
    policy = policy_from_config(shanghai())
    step = CoreControlStep(policy, planner=PlanKeeper(plan_settings(shanghai()), policy))
    at = dt.datetime(2026, 12, 3, 20, 0, tzinfo=TZ)
    vehicle = VehicleState(
        observed_at_s=100.0,
        phase=VehiclePhase.ENERGY_TRANSFER,
        protocol="gbt27930",
        soc_pct=70.0,
        pack_voltage_v=380.0,
        charge_current_limit_a=50.0,
        discharge_current_limit_a=50.0,
        capacity_kwh=60.0,
        charge_permitted=True,
        discharge_permitted=True,
    )
    inverter = InverterState(observed_at_s=100.0, reachable=True)
    output = step(vehicle, inverter, None, 100.0, at)
    assert output.plan is not None
    # Planned for the departure the core fixes at this same first decision, not a day ahead.
    assert output.plan.ends_at == DEPARTURE
    assert output.plan.power_w[0] < 0  # the evening peak
    assert any("optimize: plan 20:00-20:15 discharge" in reason for reason in output.reasons)
    unplugged = VehicleState(observed_at_s=100.1, phase=VehiclePhase.UNPLUGGED, protocol="gbt27930")
    assert step(unplugged, inverter, None, 100.1, at).plan is None


def test_the_slot_in_force_is_priced_on_what_is_left_of_it() -> None:
    """At 21:52 the 21:45-22:00 slot's past (a pushed 5.00 export price until 21:50) is spent:
    the plan prices the slot at the 0.85 in force from now on."""
    k, _ = keeper()
    at = dt.datetime(2026, 12, 3, 21, 52, tzinfo=TZ)
    pushed = (PriceSlot(at.replace(minute=30), at.replace(minute=50), 0.617, 5.0),)
    update(k, at, pushed=pushed)
    assert k.plan is not None
    first, second = k.plan.slots[:2]
    assert first.start == at.replace(minute=45)
    assert first.export_per_kwh == pytest.approx(0.85)
    assert second.import_per_kwh == pytest.approx(0.307)  # 22:00: the valley


@pytest.mark.parametrize("in_background", [False, True])
def test_a_planner_that_fails_gives_no_plan_and_is_not_retried_every_cycle(
    monkeypatch: pytest.MonkeyPatch, in_background: bool
) -> None:
    """A bug in the planner (here a ZeroDivisionError) must not stop the charger: no plan (the
    core then asks for 0 W), the reason said, the same inputs tried again only a minute later."""
    calls: list[int] = []

    def broken(problem: object) -> object:
        calls.append(1)
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("controller.planning.make_plan", broken)
    k, _ = keeper(in_background=in_background)
    try:
        for second in range(0, 50, 5):
            update(k, EVENING + dt.timedelta(seconds=second))
            deadline = time.monotonic() + 2
            while k._pending is not None and time.monotonic() < deadline:
                time.sleep(0.01)
        update(k, EVENING + dt.timedelta(seconds=55))
        assert k.plan is None
        assert k.last_reason == "no plan: a bug"
        assert len(calls) == 1
        update(k, EVENING + dt.timedelta(seconds=70))  # a minute after it was seen: again
        deadline = time.monotonic() + 2
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 2
    finally:
        k.close()


@pytest.mark.parametrize("reported_kwh", [2.0, 900.0, None])
def test_an_implausible_or_missing_capacity_plans_with_the_configured_one(
    reported_kwh: float | None,
) -> None:
    """The core does not believe a 2 kWh or 900 kWh report (rules.py guarantee_capacity_kwh):
    the plan uses the configured capacity too, rather than none at all."""
    k, policy = keeper()
    update(k, capacity_kwh=reported_kwh)
    assert k.plan is not None, k.last_reason
    plain, _ = keeper()
    update(plain, capacity_kwh=policy.battery_capacity_default_kwh)
    assert plain.plan is not None
    assert [s.power_w for s in k.plan.slots] == [s.power_w for s in plain.plan.slots]
