"""The planner against the LP oracle (tests/economics/lp_oracle.py) on random instances.

Gap: (LP objective - planner objective) / max(LP gross cash flow, 1), where the objective is
the cash value (export revenue + bonus - import cost - wear) plus the end value of the energy
held at departure, and the gross cash flow is |import cost| + |export revenue| + |wear| of the
LP's plan. The goal of issue 19: within 1 %. The planner can never beat the oracle (its plan
is feasible there), which checks both sides.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from controller.economics.planner import make_plan
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
def test_oracle_respects_the_start_below_the_floor(seed: int) -> None:
    # The oracle's binaries: from below the floor it never discharges below it either. Seed 2
    # is the worst case known (docs/economics.md, limits): charging from 5 % to exactly the
    # floor plus two event-window discharges, a point between the 0.5 % grid's points.
    problem = random_problem(random.Random(seed), slots=40)  # noqa: S311  test data
    problem = dataclasses.replace(problem, soc_pct=5.0, soc_floor_pct=30.0, target_soc_pct=None)
    lp = solve_lp(problem)
    soc = [problem.soc_pct, *lp.soc_pct]
    for k, power_w in enumerate(lp.power_w):
        if power_w < -1e-6:
            assert soc[k + 1] >= 30.0 - 1e-6
    assert gap(lp, make_plan(problem)) <= 0.015
    assert gap(lp, make_plan(dataclasses.replace(problem, soc_step_pct=0.25))) <= GOAL
