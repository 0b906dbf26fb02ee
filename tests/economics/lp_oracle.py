"""A linear-programming oracle for the planner (development only: scipy's HiGHS).

The same problem as controller/economics/planner.py with linear wear (``per_c_rate_per_kwh``
must be 0), written independently from the problem's definition, not from the planner's code:

* per slot j three non-negative variables, grid-side kWh: ``charge`` (imported), ``bonus_out``
  (exported within the peak event's power window, earning export + bonus) and ``plain_out``
  (exported beyond it, earning the export price);
* ``charge <= P_c dt``, ``bonus_out + plain_out <= P_d dt``, ``bonus_out <= window dt``, and one
  direction at a time as a convex combination: ``charge / (P_c dt) + out / (P_d dt) <= 1`` (the
  LP may still share a slot between the two; the planner cannot);
* SoC after slot k: ``s0 + 100 / capacity * sum(eta_c charge - out / eta_d)``, between the
  floor and the ceiling (a start outside them widens that bound to the start: a relaxation of
  the planner's "no discharge while below the floor"), above the departure reserve (the core's
  rule, capped by what charging flat out from now reaches), at least the target at the end
  (or the most reachable), and total export within the discharge budget.

It maximises export revenue + bonus - import cost - wear (base rate per kWh out of the battery).
``random_problem`` makes the random instances the tests and bench/planner.py compare on.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog  # type: ignore[import-untyped]

from controller.economics.planner import Plan, PlanProblem
from controller.economics.wear import WearRate


@dataclass(frozen=True, slots=True)
class LpResult:
    value: float  # cash: export revenue + bonus - import cost - wear
    end_value: float  # the worth of the energy held at departure against the start
    import_cost: float
    export_revenue: float
    wear_cost: float
    power_w: tuple[float, ...]  # grid side, net of the slot's charge and export
    soc_pct: tuple[float, ...]  # at each slot end

    @property
    def gross(self) -> float:
        """The plan's gross cash flow: everything paid, earned or worn, in magnitude."""
        return abs(self.import_cost) + abs(self.export_revenue) + abs(self.wear_cost)


def end_value_per_kwh(p: PlanProblem) -> float:
    """Per kWh of battery energy held at departure: as given, else the cheapest import price
    (not below 0) through the charge losses, a millionth less (the planner's documented rule)."""
    if p.end_value_per_kwh is not None:
        return p.end_value_per_kwh
    return max(0.0, min(p.import_per_kwh)) / p.charge_efficiency * (1.0 - 1e-6)


def soc_bounds(problem: PlanProblem) -> tuple[list[float], list[float]]:
    """The lowest and highest SoC allowed at each slot end k = 1..n."""
    p = problem
    n = len(p.import_per_kwh)
    hours = p.slot_s / 3600.0
    gain = [
        w / 1000.0 * hours * p.charge_efficiency / p.capacity_kwh * 100.0 for w in p.max_charge_w
    ]
    floor = min(p.soc_floor_pct, p.soc_pct)
    ceiling = max(p.soc_ceiling_pct, p.soc_pct)
    lower = [floor] * n
    upper = [ceiling] * n
    if p.target_soc_pct is not None:
        # Charging flat out from now, stopping at the ceiling.
        most = []
        soc = p.soc_pct
        for k in range(n):
            if soc < p.soc_ceiling_pct:
                soc = min(soc + gain[k], p.soc_ceiling_pct)
            most.append(soc)
        for k in range(1, n + 1):  # slot end k; slots k .. n-1 are left
            left = n - k
            if left == 0:
                reserve = p.target_soc_pct
            else:
                chargeable = min(sum(gain[k:]), gain[k] * left)
                time_left_s = left * p.slot_s
                usable = max(0.0, time_left_s - p.reserve_lost_s) / time_left_s
                reserve = p.target_soc_pct - chargeable * usable / (
                    1.0 + p.departure_margin_pct / 100.0
                )
            lower[k - 1] = max(lower[k - 1], min(reserve, most[k - 1]))
    return lower, upper


def _time_sharing_pays(p: PlanProblem, j: int, bonus: float) -> bool:
    """Whether charging and exporting in the same slot earns money (a peak event's bonus above
    the import price): only then can the LP's convex combination beat one power per slot."""
    eta_c, eta_d = p.charge_efficiency, p.discharge_efficiency
    per_kwh_charged = (p.export_per_kwh[j] + bonus) * eta_c * eta_d - p.wear.base_per_kwh * eta_c
    return per_kwh_charged > p.import_per_kwh[j] - 1e-9


def solve_lp(problem: PlanProblem) -> LpResult:  # noqa: PLR0915  the LP's rows in order
    """The optimum of ``problem`` (linear wear only).

    A pure LP, except where the planner's rules are not convex: a slot where charging and
    exporting at once would pay gets a binary direction (one power per slot), and a start below
    the floor (above the ceiling) gets a binary per slot saying whether it may discharge
    (charge), which it may only if the slot ends at or above the floor (at or below the
    ceiling). Those few binaries make it a small MILP for HiGHS; it stays exact.
    """
    p = problem
    if p.wear.per_c_rate_per_kwh != 0:
        raise ValueError("the LP oracle takes linear wear only (per_c_rate_per_kwh = 0)")
    n = len(p.import_per_kwh)
    hours = p.slot_s / 3600.0
    eta_c, eta_d = p.charge_efficiency, p.discharge_efficiency
    bonus = p.bonus_per_kwh or (0.0,) * n
    window_w = p.bonus_power_w or (math.inf,) * n
    floor_strict = p.soc_pct < p.soc_floor_pct
    ceiling_strict = p.soc_pct > p.soc_ceiling_pct
    # Variables: charge[0..n), bonus_out[0..n), plain_out[0..n), then binaries: z, the direction
    # (1: export) where time-sharing would pay; w, "may export" ("may charge") per slot when the
    # start is below the floor (above the ceiling).
    ci, bi, pi, zi, wi = 0, n, 2 * n, 3 * n, 4 * n
    size = 5 * n
    cost = np.zeros(size)  # linprog minimises
    wear_per_out = p.wear.base_per_kwh / eta_d  # per grid-side kWh exported
    # The energy held at departure is worth end_value per battery kWh (against the start).
    held = end_value_per_kwh(p)
    for j in range(n):
        cost[ci + j] = p.import_per_kwh[j] - held * eta_c
        cost[bi + j] = -(p.export_per_kwh[j] + bonus[j] - wear_per_out - held / eta_d)
        cost[pi + j] = -(p.export_per_kwh[j] - wear_per_out - held / eta_d)
    bounds = [(0.0, w / 1000.0 * hours) for w in p.max_charge_w]
    bounds += [
        (0.0, min(window_w[j], p.max_discharge_w[j]) / 1000.0 * hours if bonus[j] > 0 else 0.0)
        for j in range(n)
    ]
    bounds += [(0.0, w / 1000.0 * hours) for w in p.max_discharge_w]
    bounds += [(0.0, 0.0)] * (2 * n)  # the binaries, where used, get (0, 1) below
    integrality = np.zeros(size)
    rows: list[np.ndarray] = []
    limits: list[float] = []
    per_kwh_pct = 100.0 / p.capacity_kwh

    def soc_row(k: int) -> np.ndarray:  # SoC after slot k - 1, less the start
        row = np.zeros(size)
        row[ci : ci + k] = eta_c * per_kwh_pct
        row[bi : bi + k] = -per_kwh_pct / eta_d
        row[pi : pi + k] = -per_kwh_pct / eta_d
        return row

    for j in range(n):
        charge_kwh = p.max_charge_w[j] / 1000.0 * hours
        out_kwh = p.max_discharge_w[j] / 1000.0 * hours
        row = np.zeros(size)
        row[bi + j] = row[pi + j] = 1.0
        rows.append(row)  # the export's own limit
        limits.append(out_kwh)
        if _time_sharing_pays(p, j, bonus[j]) and charge_kwh > 0 and out_kwh > 0:
            # One direction per slot: export only when z = 1, charge only when z = 0.
            integrality[zi + j] = 1
            bounds[zi + j] = (0.0, 1.0)
            row = np.zeros(size)
            row[bi + j] = row[pi + j] = 1.0
            row[zi + j] = -out_kwh
            rows.append(row)
            limits.append(0.0)
            row = np.zeros(size)
            row[ci + j] = 1.0
            row[zi + j] = charge_kwh
            rows.append(row)
            limits.append(charge_kwh)
        elif charge_kwh > 0 and out_kwh > 0:  # one direction at a time, as a combination
            row = np.zeros(size)
            row[ci + j] = 1.0 / charge_kwh
            row[bi + j] = row[pi + j] = 1.0 / out_kwh
            rows.append(row)
            limits.append(1.0)
        if floor_strict and out_kwh > 0:
            # Export only when w = 1, and then the slot ends at or above the floor (the SoC is
            # never more than floor - start below it: big-M with that M).
            big_m = p.soc_floor_pct - p.soc_pct
            integrality[wi + j] = 1
            bounds[wi + j] = (0.0, 1.0)
            row = np.zeros(size)
            row[bi + j] = row[pi + j] = 1.0
            row[wi + j] = -out_kwh
            rows.append(row)
            limits.append(0.0)
            row = -soc_row(j + 1)
            row[wi + j] = big_m
            rows.append(row)
            limits.append(p.soc_pct - p.soc_floor_pct + big_m)
        if ceiling_strict and charge_kwh > 0:  # the mirror image: charge only ending below
            big_m = p.soc_pct - p.soc_ceiling_pct
            integrality[wi + j] = 1
            bounds[wi + j] = (0.0, 1.0)
            row = np.zeros(size)
            row[ci + j] = 1.0
            row[wi + j] = -charge_kwh
            rows.append(row)
            limits.append(0.0)
            row = soc_row(j + 1)
            row[wi + j] = big_m
            rows.append(row)
            limits.append(p.soc_ceiling_pct - p.soc_pct + big_m)
    lower, upper = soc_bounds(p)
    for k in range(1, n + 1):
        row = soc_row(k)
        rows.append(row)  # soc_k <= upper
        limits.append(upper[k - 1] - p.soc_pct)
        rows.append(-row)  # soc_k >= lower
        limits.append(p.soc_pct - lower[k - 1])
    if p.discharge_budget_kwh is not None:
        row = np.zeros(size)
        row[bi:zi] = 1.0
        rows.append(row)
        limits.append(p.discharge_budget_kwh)
    result = linprog(
        cost,
        A_ub=np.array(rows),
        b_ub=np.array(limits),
        bounds=bounds,
        method="highs",
        integrality=integrality if integrality.any() else None,
        options={"mip_rel_gap": 1e-6} if integrality.any() else None,
    )
    if result.status != 0:
        raise AssertionError(f"LP oracle failed: {result.message}")
    x = result.x
    charge = x[ci : ci + n]
    bonus_out = x[bi : bi + n]
    plain_out = x[pi : pi + n]
    out = bonus_out + plain_out
    import_cost = float(np.dot(p.import_per_kwh, charge))
    revenue = float(np.dot(p.export_per_kwh, out) + np.dot(bonus, bonus_out))
    wear = float(p.wear.base_per_kwh * out.sum() / eta_d)
    soc = p.soc_pct + np.cumsum(eta_c * charge - out / eta_d) * per_kwh_pct
    return LpResult(
        value=revenue - import_cost - wear,
        end_value=float(held * np.sum(eta_c * charge - out / eta_d)),
        import_cost=import_cost,
        export_revenue=revenue,
        wear_cost=wear,
        power_w=tuple(float(w) for w in (charge - out) / hours * 1000.0),
        soc_pct=tuple(float(s) for s in soc),
    )


def _prices(rng: random.Random, start: dt.datetime, n: int) -> tuple[list[float], list[float]]:
    """Import and export prices per 15-minute slot, in one of a few shapes."""
    shape = rng.choice(("peak_valley", "peak_valley", "walk", "flat", "two_peaks"))
    valley = rng.uniform(0.1, 0.4)
    peak = valley + rng.uniform(0.2, 1.5)
    shoulder = rng.uniform(valley, peak)
    export_share = rng.uniform(0.5, 1.0)
    imports: list[float] = []
    level = rng.uniform(0.2, 1.0)
    for k in range(n):
        hour = (start.hour + start.minute / 60 + k * 0.25) % 24
        if shape == "flat":
            price = shoulder
        elif shape == "walk":
            level = min(2.0, max(0.05, level + rng.gauss(0.0, 0.05)))
            price = level
        else:
            in_peak = 17 <= hour < 21 or (shape == "two_peaks" and 8 <= hour < 11)
            price = peak if in_peak else valley if hour < 7 or hour >= 23 else shoulder
        imports.append(round(price, 4))
    exports = [round(price * export_share, 4) for price in imports]
    return imports, exports


def random_problem(rng: random.Random, slots: int | None = None) -> PlanProblem:
    """A random planning problem: prices of a peak/valley, random-walk or flat shape with
    sometimes a peak event (a bonus, sometimes only up to a power), capacities 30-100 kWh,
    arrival SoC 20-80 %, a target or none, power limits (sometimes lower in some slots), linear
    wear and sometimes a discharge budget."""
    n = slots if slots is not None else rng.randint(8, 96)
    tz = dt.timezone(dt.timedelta(hours=8))
    start = dt.datetime(2026, 7, 1, rng.randint(16, 21), rng.choice((0, 15, 30, 45)), tzinfo=tz)
    imports, exports = _prices(rng, start, n)
    bonus = [0.0] * n
    bonus_w = [math.inf] * n
    if rng.random() < 0.5:
        length = rng.randint(2, 12)
        first = rng.randint(0, max(0, n - length))
        amount = rng.uniform(0.3, 4.0)
        window = rng.choice((math.inf, rng.uniform(1000.0, 6000.0)))
        for k in range(first, min(n, first + length)):
            bonus[k] = round(amount, 3)
            bonus_w[k] = window
    capacity = rng.uniform(30.0, 100.0)
    max_charge = rng.choice((3700.0, 7400.0, 7400.0, 11000.0))
    max_discharge = rng.choice((3700.0, 7400.0, 7400.0, 11000.0))
    charge_w = [max_charge] * n
    discharge_w = [max_discharge] * n
    if rng.random() < 0.3:
        for k in rng.sample(range(n), k=n // 4):
            charge_w[k] = rng.uniform(0.0, max_charge)
            discharge_w[k] = rng.uniform(0.0, max_discharge)
    floor = rng.uniform(10.0, 30.0)
    ceiling = rng.uniform(80.0, 100.0)
    target = rng.choice((None, rng.uniform(50.0, ceiling)))
    return PlanProblem(
        start=start,
        import_per_kwh=tuple(imports),
        export_per_kwh=tuple(exports),
        capacity_kwh=capacity,
        soc_pct=rng.uniform(20.0, 80.0),
        soc_floor_pct=floor,
        soc_ceiling_pct=ceiling,
        max_charge_w=tuple(charge_w),
        max_discharge_w=tuple(discharge_w),
        target_soc_pct=target,
        departure_margin_pct=rng.choice((0.0, 10.0, 20.0, 30.0)),
        charge_efficiency=rng.uniform(0.85, 0.97),
        discharge_efficiency=rng.uniform(0.85, 0.97),
        wear=WearRate(rng.choice((0.0, rng.uniform(0.01, 0.15)))),
        bonus_per_kwh=tuple(bonus),
        bonus_power_w=tuple(bonus_w),
        discharge_budget_kwh=rng.choice((None, None, rng.uniform(2.0, 40.0))),
    )


def gap(lp: LpResult, plan: Plan) -> float:
    """How far the planner's objective (cash value + end value) falls short of the LP's, as a
    share of the LP plan's gross cash flow (import cost + export revenue + wear, in magnitude;
    when that is below one money unit, of one unit: a plan that hardly moves has no scale)."""
    shortfall = (lp.value + lp.end_value) - (plan.value + plan.end_value)
    return shortfall / max(lp.gross, 1.0)
