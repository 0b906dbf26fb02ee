"""The planner (controller/economics/planner.py): the rules its plan keeps, on its own SoC
trajectory, and the decisions that follow from the objective (docs/economics.md, "The planner").

The comparison with the LP oracle is in test_planner_oracle.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.rules import departure_reserve_pct
from controller.economics.planner import Plan, PlanProblem, check_problem, make_plan
from controller.economics.wear import WearRate

TZ = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2026, 7, 1, 18, 0, tzinfo=TZ)
SLOT_H = 0.25
EPS_PCT = 1e-6


def problem(**changes: Any) -> PlanProblem:
    """A night from 18:00, 54 slots (departure 07:30), 60 kWh, 7.4 kW both ways, flat 0.6."""
    n = changes.pop("n", 54)
    base = PlanProblem(
        start=START,
        import_per_kwh=(0.6,) * n,
        export_per_kwh=(0.6,) * n,
        capacity_kwh=60.0,
        soc_pct=50.0,
        soc_floor_pct=20.0,
        soc_ceiling_pct=90.0,
        max_charge_w=(7400.0,) * n,
        max_discharge_w=(7400.0,) * n,
    )
    return dataclasses.replace(base, **changes)


def night_prices(
    n: int, peak: float, valley: float, export_share: float = 1.0
) -> dict[str, tuple[float, ...]]:
    """Peak 18:00-21:00 (slots 0-11), valley 23:00-07:00 (slots 20-51), shoulder between."""
    imports = [
        valley if 20 <= k < 52 else peak if k < 12 else (peak + valley) / 2 for k in range(n)
    ]
    return {
        "import_per_kwh": tuple(imports),
        "export_per_kwh": tuple(price * export_share for price in imports),
    }


def powers(plan: Plan) -> list[float]:
    return [slot.power_w for slot in plan.slots]


def socs(plan: Plan, start_pct: float) -> list[float]:
    return [start_pct] + [slot.soc_end_pct for slot in plan.slots]


# --- decisions that follow from the objective ----------------------------------------------------


def test_flat_prices_never_discharge() -> None:
    plan = make_plan(problem(target_soc_pct=80.0))
    assert min(powers(plan)) >= 0.0
    assert plan.slots[-1].soc_end_pct >= 80.0 - EPS_PCT
    assert plan.exported_kwh == 0.0


def test_no_target_and_flat_prices_do_nothing() -> None:
    plan = make_plan(problem())
    assert all(p == 0.0 for p in powers(plan))
    assert plan.value == 0.0


def test_spread_smaller_than_losses_and_wear_does_not_discharge() -> None:
    # Selling a battery kWh earns 0.6 * 0.92 - 0.05 = 0.502; buying it back in the valley
    # costs 0.5 / 0.92 = 0.543: the spread does not pay for the round trip.
    prices = night_prices(54, peak=0.6, valley=0.5)
    plan = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=70.0, wear=WearRate(0.05)))
    assert min(powers(plan)) >= 0.0


def test_wear_alone_can_stop_a_discharge_that_losses_would_allow() -> None:
    # 0.7 * 0.92 = 0.644 beats 0.5 / 0.92 = 0.543 without wear; with 0.15 per kWh it does not.
    prices = night_prices(54, peak=0.7, valley=0.5)
    free = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=70.0))
    worn = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=70.0, wear=WearRate(0.15)))
    assert min(powers(free)) < 0.0
    assert min(powers(worn)) >= 0.0


def test_big_spread_discharges_at_the_peak_and_charges_in_the_valley() -> None:
    prices = night_prices(54, peak=1.2, valley=0.3)
    plan = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=80.0, wear=WearRate(0.05)))
    p = powers(plan)
    valley = range(20, 52)
    # Every peak slot sells flat out; the shoulder (0.75) also beats the valley's 0.3 through
    # the losses, so it sells there too; the valley only buys.
    assert all(w == pytest.approx(-7400.0) for w in p[:12])
    assert all(w >= 0.0 for k, w in enumerate(p) if k in valley)
    assert all(k in valley for k, w in enumerate(p) if w > 0)
    assert min(socs(plan, 70.0)) == pytest.approx(20.0, abs=EPS_PCT)  # down to the floor
    assert plan.slots[-1].soc_end_pct >= 80.0 - EPS_PCT
    assert plan.value > 0
    assert plan.target_reachable
    assert plan.wear_cost > 0


def test_c_rate_wear_spreads_a_discharge_over_more_slots() -> None:
    prices = night_prices(54, peak=1.2, valley=0.3)
    flat = make_plan(problem(**prices, soc_pct=60.0, target_soc_pct=60.0))
    steep = make_plan(problem(**prices, soc_pct=60.0, target_soc_pct=60.0, wear=WearRate(0.0, 2.0)))
    assert min(powers(flat)) == pytest.approx(-7400.0, abs=1.0)
    assert min(powers(steep)) > -7000.0
    assert min(powers(steep)) < 0.0


def test_peak_event_bonus_pays_only_up_to_its_power() -> None:
    # The export price alone (0.3) never pays for the valley recharge (0.3 / 0.92 / 0.92);
    # the event's bonus does, but only for the first 2 kW.
    n = 54
    prices = night_prices(n, peak=0.3, valley=0.3)
    bonus = tuple(3.0 if 4 <= k < 8 else 0.0 for k in range(n))
    window = tuple(2000.0 if 4 <= k < 8 else math.inf for k in range(n))
    plan = make_plan(
        problem(
            **prices,
            soc_pct=60.0,
            target_soc_pct=60.0,
            bonus_per_kwh=bonus,
            bonus_power_w=window,
        )
    )
    p = powers(plan)
    for k in range(n):
        if 4 <= k < 8:
            assert p[k] == pytest.approx(-2000.0, abs=1.0)
        else:
            assert p[k] >= 0.0
    assert plan.slots[5].bonus_per_kwh == 3.0
    # The bonus is in the revenue: 4 slots of 0.5 kWh at 0.3 + 3.0.
    assert plan.export_revenue == pytest.approx(4 * 0.5 * 3.3, rel=1e-6)


def test_discharge_budget_caps_the_export() -> None:
    prices = night_prices(54, peak=1.2, valley=0.3)
    unlimited = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=80.0))
    capped = make_plan(
        problem(**prices, soc_pct=70.0, target_soc_pct=80.0, discharge_budget_kwh=5.0)
    )
    assert unlimited.exported_kwh > 20.0
    assert capped.exported_kwh <= 5.0 + 1e-6
    assert capped.exported_kwh == pytest.approx(5.0, abs=0.05)
    assert any("budget" in note for note in capped.notes)
    assert capped.value < unlimited.value
    assert all(k < 12 for k, w in enumerate(powers(capped)) if w < 0)


def test_budget_from_below_the_floor_still_uses_the_budget() -> None:
    # A blend of two plans could discharge below the floor here, so the budget search has to
    # find a plan that fits on its own: charge above the floor, sell exactly the budget.
    n = 16
    imports = tuple(0.1 if k < 8 else 2.0 for k in range(n))
    plan = make_plan(
        problem(
            n=n,
            import_per_kwh=imports,
            export_per_kwh=imports,
            soc_pct=10.0,
            soc_floor_pct=20.0,
            discharge_budget_kwh=3.0,
        )
    )
    assert plan.exported_kwh == pytest.approx(3.0, abs=1e-6)
    trajectory = socs(plan, 10.0)
    for k, power_w in enumerate(powers(plan)):
        if power_w < 0:
            assert trajectory[k + 1] >= 20.0 - EPS_PCT


# --- the departure promise ------------------------------------------------------------------------


def test_unreachable_target_charges_flat_out_and_says_so() -> None:
    # 2 h at 7.4 kW into 60 kWh at 92 %: 13.6 kWh, 22.7 points: 20 % reaches 42.7 % at most.
    plan = make_plan(problem(n=8, soc_pct=20.0, target_soc_pct=80.0))
    assert not plan.target_reachable
    assert all(p == pytest.approx(7400.0) for p in powers(plan))
    assert plan.slots[-1].soc_end_pct == pytest.approx(20.0 + 8 * 7.4 * SLOT_H * 0.92 / 0.6)
    (note,) = plan.notes
    assert "target 80 % unreachable by 20:00" in note
    assert "42.7 % at most" in note


def late_peak(n: int = 24) -> dict[str, Any]:
    """Cheap, then a peak at 21:30-23:00, then cheap again for the last hour before 00:00."""
    imports = tuple(2.0 if 14 <= k < 20 else 0.3 for k in range(n))
    return {"n": n, "import_per_kwh": imports, "export_per_kwh": imports}


def test_reserve_keeps_a_late_peak_from_draining_the_car() -> None:
    # Selling at the peak and buying back in the last hour pays; the last hour could buy back
    # 11.35 points, but the core's rule allows only what fits with the 20 % margin.
    plan = make_plan(problem(**late_peak(), soc_pct=80.0, target_soc_pct=80.0))
    trajectory = socs(plan, 80.0)
    assert min(powers(plan)) < 0.0  # it does sell at the peak
    n = len(plan.slots)
    for k in range(1, n + 1):
        left_s = (n - k) * 900.0
        reserve = departure_reserve_pct(80.0, left_s, 7400.0, 60_000.0, 20.0)
        assert trajectory[k] >= reserve - EPS_PCT
    assert trajectory[-1] >= 80.0 - EPS_PCT
    # It binds: at 23:00 the plan sits on its own reserve, 80 - 4 * 2.8367 / 1.2.
    assert trajectory[20] == pytest.approx(80.0 - 4 * 7.4 * SLOT_H * 0.92 / 0.6 / 1.2, abs=1e-6)


def test_reserve_lost_time_raises_the_reserve() -> None:
    loose = make_plan(problem(**late_peak(), soc_pct=80.0, target_soc_pct=80.0))
    tight = make_plan(
        problem(**late_peak(), soc_pct=80.0, target_soc_pct=80.0, reserve_lost_s=1800.0)
    )
    # Half of the last hour is lost: only half of the charge counts.
    assert socs(tight, 80.0)[20] == pytest.approx(80.0 - 2 * 7.4 * SLOT_H * 0.92 / 0.6 / 1.2)
    assert tight.value < loose.value


def test_below_the_reserve_at_the_start_charges_until_back_above_it() -> None:
    # 3 h left, 55 % now, target 80 %: the charge fits (34 points possible) but not with the
    # margin, so the plan charges flat out from the start even though prices fall later.
    n = 12
    imports = tuple(1.0 if k < 4 else 0.2 for k in range(n))
    plan = make_plan(
        problem(
            n=n,
            import_per_kwh=imports,
            export_per_kwh=imports,
            soc_pct=55.0,
            target_soc_pct=80.0,
            departure_margin_pct=50.0,
        )
    )
    assert plan.target_reachable
    assert powers(plan)[0] == pytest.approx(7400.0)
    assert plan.slots[-1].soc_end_pct >= 80.0 - EPS_PCT


# --- starts outside the band ----------------------------------------------------------------------


def test_start_below_the_floor_never_discharges_below_it() -> None:
    prices = night_prices(54, peak=3.0, valley=0.1)
    plan = make_plan(problem(**prices, soc_pct=10.0, soc_floor_pct=20.0, target_soc_pct=60.0))
    trajectory = socs(plan, 10.0)
    for k, power_w in enumerate(powers(plan)):
        if power_w < 0:
            assert trajectory[k] >= 20.0 - EPS_PCT
            assert trajectory[k + 1] >= 20.0 - EPS_PCT
    assert any("below the floor" in note for note in plan.notes)


def test_start_above_the_ceiling_never_charges_above_it() -> None:
    # Paid to import, but exporting costs: nothing may be charged from above the ceiling.
    n = 20
    paid = {"n": n, "import_per_kwh": (-0.5,) * n}
    plan = make_plan(problem(**paid, export_per_kwh=(-1.0,) * n, soc_pct=95.0))
    assert all(w == 0.0 for w in powers(plan))
    assert any("above the ceiling" in note for note in plan.notes)
    # Exporting free: it discharges below the ceiling first, and only then charges, up to it.
    cycling = make_plan(problem(**paid, export_per_kwh=(0.0,) * n, soc_pct=95.0))
    trajectory = socs(cycling, 95.0)
    for k, power_w in enumerate(powers(cycling)):
        if power_w > 0:
            assert trajectory[k + 1] <= 90.0 + EPS_PCT
    assert max(powers(cycling)) > 0


def test_negative_import_prices_fill_the_battery_to_the_ceiling() -> None:
    cheap = (-0.2,) * 20
    plan = make_plan(problem(n=20, import_per_kwh=cheap, export_per_kwh=(-0.3,) * 20))
    assert plan.slots[-1].soc_end_pct == pytest.approx(90.0, abs=EPS_PCT)
    assert plan.import_cost < 0


# --- the plan's interface ------------------------------------------------------------------------


def test_power_at_and_json() -> None:
    prices = night_prices(54, peak=1.2, valley=0.3)
    plan = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=80.0))
    assert plan.power_at(START) == plan.slots[0].power_w
    assert plan.power_at(START + dt.timedelta(minutes=44)) == plan.slots[2].power_w
    assert plan.power_at(START - dt.timedelta(seconds=1)) is None
    assert plan.power_at(START + dt.timedelta(hours=13, minutes=30)) is None
    assert plan.slots[-1].end == START + dt.timedelta(hours=13, minutes=30)
    summary = plan.to_json()
    assert summary["start"] == START.isoformat()
    assert summary["slot_s"] == 900.0
    assert len(summary["power_w"]) == len(summary["soc_pct"]) == 54
    assert summary["target_reachable"] is True


def test_value_is_the_sum_of_its_parts() -> None:
    prices = night_prices(54, peak=1.2, valley=0.3)
    plan = make_plan(problem(**prices, soc_pct=70.0, target_soc_pct=80.0, wear=WearRate(0.05)))
    assert plan.value == pytest.approx(plan.export_revenue - plan.import_cost - plan.wear_cost)
    imported = sum(max(s.power_w, 0.0) / 1000.0 * SLOT_H * s.import_per_kwh for s in plan.slots)
    exported = sum(max(-s.power_w, 0.0) / 1000.0 * SLOT_H * s.export_per_kwh for s in plan.slots)
    assert plan.import_cost == pytest.approx(imported)
    assert plan.export_revenue == pytest.approx(exported)
    assert plan.wear_cost == pytest.approx(0.05 * plan.exported_kwh / 0.92)


# --- malformed problems ---------------------------------------------------------------------------

MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"export_per_kwh": (0.6,) * 53}, "export_per_kwh has 53 values, import_per_kwh 54"),
    ({"import_per_kwh": (0.6,) * 53 + (math.nan,)}, "import_per_kwh[53] is nan"),
    ({"export_per_kwh": (math.inf,) * 54}, "export_per_kwh[0] is inf: expected a finite"),
    ({"max_charge_w": (-1.0,) * 54}, "max_charge_w[0] is -1: expected >= 0"),
    ({"max_discharge_w": (math.inf,) * 54}, "max_discharge_w[0] is inf"),
    ({"charge_efficiency": 0.0}, "charge_efficiency is 0.0: expected a fraction in (0, 1]"),
    ({"discharge_efficiency": 1.2}, "discharge_efficiency is 1.2"),
    ({"capacity_kwh": -60.0}, "capacity_kwh is -60.0: expected a number > 0"),
    ({"start": START.replace(tzinfo=None)}, "is naive: expected an aware datetime"),
    ({"soc_pct": 101.0}, "soc_pct is 101.0: expected a percentage in [0, 100]"),
    ({"soc_floor_pct": 95.0}, "soc_floor_pct 95 is above soc_ceiling_pct 90"),
    ({"target_soc_pct": 95.0}, "target_soc_pct 95 is above soc_ceiling_pct 90"),
    ({"target_soc_pct": math.nan}, "target_soc_pct is nan"),
    ({"n": 0}, "no slots"),
    (
        {"bonus_per_kwh": (1.0,) * 3},
        "bonus_per_kwh has 3 values, import_per_kwh 54: one per slot or none",
    ),
    ({"bonus_power_w": (1000.0,) * 54}, "bonus_power_w without bonus_per_kwh"),
    ({"wear": WearRate(-0.1)}, "wear.base_per_kwh is -0.1"),
    ({"discharge_budget_kwh": math.nan}, "discharge_budget_kwh is nan"),
    ({"slot_s": 0.0}, "slot_s is 0.0"),
    ({"soc_step_pct": 0.001}, "soc_step_pct is 0.001"),
    ({"departure_margin_pct": -5.0}, "departure_margin_pct is -5.0"),
    ({"reserve_lost_s": -1.0}, "reserve_lost_s is -1.0"),
]


@pytest.mark.parametrize(("changes", "reason"), MALFORMED)
def test_malformed_problem_is_rejected_with_its_reason(
    changes: dict[str, Any], reason: str
) -> None:
    bad = problem(**changes)
    errors = check_problem(bad)
    assert any(reason in error for error in errors), errors
    with pytest.raises(ValueError) as caught:  # noqa: PT011  the reason is checked below
        make_plan(bad)
    assert reason in str(caught.value)


def test_well_formed_problem_has_no_reasons() -> None:
    assert check_problem(problem(target_soc_pct=80.0)) == []


# --- properties: the rules on the plan's own trajectory -------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> PlanProblem:
    n = draw(st.integers(1, 40))
    price = st.floats(-0.3, 3.0, allow_nan=False)
    power = st.one_of(st.just(0.0), st.floats(500.0, 11000.0))
    floor = draw(st.floats(0.0, 50.0))
    ceiling = draw(st.floats(floor, 100.0))
    target = draw(st.one_of(st.none(), st.floats(0.0, ceiling)))
    with_bonus = draw(st.booleans())
    return PlanProblem(
        start=START,
        import_per_kwh=tuple(draw(st.lists(price, min_size=n, max_size=n))),
        export_per_kwh=tuple(draw(st.lists(price, min_size=n, max_size=n))),
        capacity_kwh=draw(st.floats(10.0, 120.0)),
        soc_pct=draw(st.floats(0.0, 100.0)),
        soc_floor_pct=floor,
        soc_ceiling_pct=ceiling,
        max_charge_w=tuple(draw(st.lists(power, min_size=n, max_size=n))),
        max_discharge_w=tuple(draw(st.lists(power, min_size=n, max_size=n))),
        target_soc_pct=target,
        departure_margin_pct=draw(st.floats(0.0, 50.0)),
        charge_efficiency=draw(st.floats(0.7, 1.0)),
        discharge_efficiency=draw(st.floats(0.7, 1.0)),
        wear=WearRate(draw(st.floats(0.0, 0.3)), draw(st.floats(0.0, 0.5))),
        bonus_per_kwh=tuple(draw(st.lists(st.floats(0.0, 4.0), min_size=n, max_size=n)))
        if with_bonus
        else (),
        bonus_power_w=tuple(
            draw(st.lists(st.one_of(st.just(math.inf), power), min_size=n, max_size=n))
        )
        if with_bonus
        else (),
        discharge_budget_kwh=draw(st.one_of(st.none(), st.floats(0.0, 30.0))),
        soc_step_pct=draw(st.sampled_from((0.25, 0.5, 1.0))),
    )


def most_reachable(p: PlanProblem) -> list[float]:
    """SoC at each slot end charging flat out from now, stopping at the ceiling."""
    soc = p.soc_pct
    result = [soc]
    for power_w in p.max_charge_w:
        if soc < p.soc_ceiling_pct:
            gain = power_w / 1000.0 * p.slot_s / 3600.0 * p.charge_efficiency
            soc = min(soc + gain / p.capacity_kwh * 100.0, p.soc_ceiling_pct)
        result.append(soc)
    return result


@settings(max_examples=50, deadline=None)
@given(problems())
def test_plan_keeps_every_rule(p: PlanProblem) -> None:
    plan = make_plan(p)
    n = len(p.import_per_kwh)
    assert len(plan.slots) == n
    trajectory = socs(plan, p.soc_pct)
    hours = p.slot_s / 3600.0
    tol = 1e-6
    for k, slot in enumerate(plan.slots):
        before, after = trajectory[k], trajectory[k + 1]
        power_w = slot.power_w
        # Power limits, and the SoC follows from the power and the efficiencies.
        assert -p.max_discharge_w[k] - tol <= power_w <= p.max_charge_w[k] + tol
        if power_w >= 0:
            gained = power_w / 1000.0 * hours * p.charge_efficiency
        else:
            gained = power_w / 1000.0 * hours / p.discharge_efficiency
        assert after - before == pytest.approx(gained / p.capacity_kwh * 100.0, abs=1e-6)
        # Floor and ceiling: a discharge never ends below the floor, a charge never above the
        # ceiling; a start outside the band only moves toward it.
        if after < before - tol:
            assert after >= p.soc_floor_pct - tol
        if after > before + tol:
            assert after <= p.soc_ceiling_pct + tol
        assert min(p.soc_floor_pct, p.soc_pct) - tol <= after
        assert after <= max(p.soc_ceiling_pct, p.soc_pct) + tol
    most = most_reachable(p)
    if p.target_soc_pct is not None:
        target = p.target_soc_pct
        assert plan.target_reachable == (most[-1] >= target - 1e-7)
        for k in range(1, n + 1):
            # Never below the curve from which the core's departure rule takes over (at the
            # charge power of that moment), unless charging flat out from now is below it.
            power_w = p.max_charge_w[k] if k < n else 0.0
            reserve = departure_reserve_pct(
                target,
                (n - k) * p.slot_s,
                power_w,
                p.capacity_kwh * 1000.0,
                p.departure_margin_pct,
            )
            assert trajectory[k] >= min(reserve, most[k]) - tol
        assert trajectory[-1] >= min(target, most[-1]) - tol
        if not plan.target_reachable:
            assert any("unreachable" in note for note in plan.notes)
    else:
        assert plan.target_reachable
    if p.discharge_budget_kwh is not None:
        assert plan.exported_kwh <= p.discharge_budget_kwh + 1e-6
    assert plan.value == pytest.approx(
        plan.export_revenue - plan.import_cost - plan.wear_cost, abs=1e-9
    )
