"""The planner against the LP oracle (tests/economics/lp_oracle.py) on random instances.

Gap: (LP objective - planner objective) / max(LP gross cash flow, 1), where the objective is
the cash value (export revenue + bonus - import cost - wear) plus the end value of the energy
held at departure, and the gross cash flow is |import cost| + |export revenue| + |wear| of the
LP's plan. The goal of issue 19: within 1 %. The planner can never beat the oracle (its plan
is feasible there), which checks both sides.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random

import pytest

from controller.economics.planner import PlanProblem, make_plan
from tests.economics.lp_oracle import gap, random_problem, solve_lp

GOAL = 0.01
INSTANCES = 100


def test_planner_is_within_one_percent_of_the_lp_optimum() -> None:
    rng = random.Random(19)  # noqa: S311  test instances, not secrets
    gaps = []
    for index in range(INSTANCES):
        problem = random_problem(rng)
        lp = solve_lp(problem)
        plan = make_plan(problem)
        shortfall = gap(lp, plan)
        gaps.append(shortfall)
        assert shortfall <= GOAL, (index, shortfall, problem)
        # Never better than the optimum (beyond float noise): the plan is feasible there.
        assert shortfall >= -1e-7, (index, shortfall, problem)
    # The comparison is not vacuous: most instances trade, and some are not trivially optimal.
    assert sum(g > 1e-6 for g in gaps) >= 5


def test_oracle_sees_a_discharge_budget_bind() -> None:
    # The oracle's budget row works: a tight budget lowers its optimum, as it does the plan's.
    rng = random.Random(3)  # noqa: S311  test instances, not secrets
    problem = random_problem(rng, slots=96)
    wide = dataclasses.replace(problem, discharge_budget_kwh=None, target_soc_pct=None)
    tight = dataclasses.replace(wide, discharge_budget_kwh=1.0)
    free, capped = solve_lp(wide), solve_lp(tight)
    assert capped.value + capped.end_value <= free.value + free.end_value + 1e-9
    assert sum(-min(p, 0.0) for p in capped.power_w) / 4000.0 <= 1.0 + 1e-6
    plan = make_plan(tight)
    assert plan.exported_kwh <= 1.0 + 1e-6
    assert gap(capped, plan) <= GOAL


@pytest.mark.parametrize("seed", [1, 2])
def test_start_below_the_floor_charges_to_it_first_in_both(seed: int) -> None:
    # The oracle's bound below the floor is the flat-out charge from now, like the planner's;
    # neither discharges below the floor. (Seed 2 was a 1.2 % gap when the rule only forbade
    # discharging below the floor, which is not convex: the planner's grid missed the exact
    # charge to "floor plus two event-window discharges".)
    problem = random_problem(random.Random(seed), slots=40)  # noqa: S311  test data
    problem = dataclasses.replace(problem, soc_pct=5.0, soc_floor_pct=30.0, target_soc_pct=None)
    lp = solve_lp(problem)
    plan = make_plan(problem)
    for soc in (lp.soc_pct, [slot.soc_end_pct for slot in plan.slots]):
        trajectory = [problem.soc_pct, *soc]
        for k in range(len(soc)):
            if trajectory[k + 1] < trajectory[k] - 1e-6:  # a discharge
                assert trajectory[k + 1] >= 30.0 - 1e-6
    assert plan.slots[0].power_w == pytest.approx(problem.max_charge_w[0])
    assert gap(lp, plan) <= GOAL


def test_a_tight_budget_with_a_bonus_above_the_import_price_stays_within_the_goal() -> None:
    # bench.planner --seed 19's worst instance: charging and exporting in turn through an event
    # whose bonus is far above the import price, so a slot's earnings are not concave and the
    # budget's price leaves a duality gap; the plans it brackets (and their cuts) were 1.03 %
    # short. The repair with the budget left as a second state closes it to within the goal.
    charge_w = [7400.0] * 30
    discharge_w = [7400.0] * 30
    for k, c, d in (
        (1, 4933.2183112591765, 3868.799648916561),
        (7, 1625.6463446673506, 382.3627741088299),
        (12, 4385.136426234647, 7325.2391162334325),
        (18, 2265.158385224135, 4302.591246612888),
        (22, 6843.739028447648, 3053.1752229718345),
        (23, 1237.0327807374047, 1975.8445610617591),
        (24, 1599.7065145274055, 4300.530849193828),
    ):
        charge_w[k], discharge_w[k] = c, d
    problem = PlanProblem(
        start=dt.datetime(2026, 7, 1, 20, 30, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        import_per_kwh=(1.698,) * 2 + (0.7113,) * 8 + (0.2431,) * 20,
        export_per_kwh=(1.2295,) * 2 + (0.5151,) * 8 + (0.176,) * 20,
        capacity_kwh=66.97372583568242,
        soc_pct=60.82408922155289,
        soc_floor_pct=29.73689737066454,
        soc_ceiling_pct=84.15670722204511,
        max_charge_w=tuple(charge_w),
        max_discharge_w=tuple(discharge_w),
        target_soc_pct=73.6296562435999,
        departure_margin_pct=0.0,
        charge_efficiency=0.8561558790032613,
        discharge_efficiency=0.9392017306335918,
        bonus_per_kwh=(0.0,) * 10 + (2.619,) * 11 + (0.0,) * 9,
        bonus_power_w=(math.inf,) * 30,
        discharge_budget_kwh=7.255725386649938,
    )
    plan = make_plan(problem)
    assert plan.exported_kwh <= 7.255725386649938 + 1e-6
    assert any("budget" in note for note in plan.notes)
    assert 0.0 <= gap(solve_lp(problem), plan) <= GOAL
