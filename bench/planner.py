"""The planner's speed and optimality (issue 19): `python -m bench.planner`.

    python -m bench.planner                    # 200 instances each, seed 19
    python -m bench.planner --instances 50 --seed 7 --json out.json

Speed: the wall time of one ``make_plan`` call on a 24 h plan (96 slots of 15 minutes, 60 kWh,
7.4 kW both ways) with random prices (peak/valley, random walk, flat; sometimes a peak event),
arrival SoC, target and wear, after one warm-up call; median, p95 and max, with the CPU time
beside it (the machine is shared: the load average is reported too). Twice: without a
discharge budget, and with one that binds (the Lagrangian search runs several DP passes).
Goal: <= 50 ms.

Optimality: on random instances of every kind (tests/economics/lp_oracle.py random_problem:
8-96 slots, 30-100 kWh, starts 20-80 %, limits, events, budgets), the gap to the LP/MILP oracle:
(oracle objective - planner objective) / max(oracle gross cash flow, 1). Goal: <= 1 %.

``run(instances, seed)`` returns the figures as a dict (for `make bench`); ``main`` prints them
and returns 1 if the optimality goal is missed (the speed goal depends on the machine's load,
so it is reported, not enforced).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from controller.economics.planner import PlanProblem, make_plan
from tests.economics.lp_oracle import gap, random_problem, solve_lp

SPEED_GOAL_MS = 50.0
GAP_GOAL = 0.01
DAY_SLOTS = 96


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _summary(values: list[float], digits: int = 2) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "p95": round(_percentile(values, 0.95), digits),
        "max": round(max(values), digits),
    }


def day_problem(rng: random.Random, budget: bool) -> PlanProblem:
    """A 24 h plan: 96 slots, 60 kWh, 7.4 kW both ways; a binding budget if ``budget``."""
    p = random_problem(rng, slots=DAY_SLOTS)
    return dataclasses.replace(
        p,
        capacity_kwh=60.0,
        max_charge_w=(7400.0,) * DAY_SLOTS,
        max_discharge_w=(7400.0,) * DAY_SLOTS,
        discharge_budget_kwh=rng.uniform(1.0, 6.0) if budget else None,
    )


def _timings(problems: list[PlanProblem]) -> tuple[dict[str, float], dict[str, float], int]:
    make_plan(problems[0])  # warm-up: numpy's first calls
    wall_ms: list[float] = []
    cpu_ms: list[float] = []
    binding = 0
    for problem in problems:
        wall, cpu = time.perf_counter(), time.process_time()
        plan = make_plan(problem)
        cpu_ms.append((time.process_time() - cpu) * 1000.0)
        wall_ms.append((time.perf_counter() - wall) * 1000.0)
        binding += any("budget" in note for note in plan.notes)
    return _summary(wall_ms), _summary(cpu_ms), binding


def run(instances: int, seed: int) -> dict[str, Any]:
    """Speed on ``instances`` 24 h plans (twice: no budget, a binding one) and the gap to the
    oracle on ``instances`` random problems."""
    rng = random.Random(seed)  # noqa: S311  test instances, not secrets
    load_before = os.getloadavg()[0]
    plain = [day_problem(rng, budget=False) for _ in range(instances)]
    budgeted = [day_problem(rng, budget=True) for _ in range(instances)]
    plain_wall, plain_cpu, _ = _timings(plain)
    budget_wall, budget_cpu, binding = _timings(budgeted)
    gaps: list[float] = []
    kinds = {"budget_binds": 0, "start_below_floor": 0, "event": 0}
    for _ in range(instances):
        problem = random_problem(rng)
        plan = make_plan(problem)
        gaps.append(gap(solve_lp(problem), plan))
        kinds["budget_binds"] += any("budget" in note for note in plan.notes)
        kinds["start_below_floor"] += problem.soc_pct < problem.soc_floor_pct
        kinds["event"] += any(problem.bonus_per_kwh)
    return {
        "instances": instances,
        "seed": seed,
        "cpus": os.cpu_count(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "day_plan_ms": {"wall": plain_wall, "cpu": plain_cpu},
        "day_plan_budget_ms": {"wall": budget_wall, "cpu": budget_cpu, "binding": binding},
        "gap_pct": {
            **{key: round(value * 100.0, 3) for key, value in _summary(gaps, 6).items()},
            "over_goal": sum(g > GAP_GOAL for g in gaps),
            "min": round(min(gaps) * 100.0, 4),
        },
        "gap_instances": kinds,
        "speed_goal_ms": SPEED_GOAL_MS,
        "gap_goal_pct": GAP_GOAL * 100.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planner", description=__doc__)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    figures = run(args.instances, args.seed)
    plain, budget, gaps = figures["day_plan_ms"], figures["day_plan_budget_ms"], figures["gap_pct"]
    print(f"24 h plan (96 slots, 60 kWh, 7.4 kW), {args.instances} instances, seed {args.seed}")
    print(f"  load average {figures['load_average']} on {figures['cpus']} CPUs")
    for label, row in (("no budget", plain), ("budget binds", budget)):
        wall, cpu = row["wall"], row["cpu"]
        print(
            f"  {label:13s} wall median {wall['median']:.1f} ms, p95 {wall['p95']:.1f} ms, "
            f"max {wall['max']:.1f} ms; cpu median {cpu['median']:.1f} ms, p95 {cpu['p95']:.1f} ms"
        )
    print(f"  (budget bound in {budget['binding']} of {args.instances})")
    print(
        f"gap to the LP/MILP oracle: median {gaps['median']:.3f} %, p95 {gaps['p95']:.3f} %, "
        f"max {gaps['max']:.3f} %, over {GAP_GOAL * 100:g} %: {gaps['over_goal']} "
        f"({figures['gap_instances']})"
    )
    speed_met = plain["wall"]["median"] <= SPEED_GOAL_MS
    verdict = "met" if speed_met else "MISSED"
    print(f"speed goal (median <= {SPEED_GOAL_MS:g} ms, no budget): {verdict}")
    gap_met = gaps["over_goal"] == 0
    print(f"optimality goal (every gap <= {GAP_GOAL * 100:g} %): {'met' if gap_met else 'MISSED'}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if gap_met else 1


if __name__ == "__main__":
    sys.exit(main())
