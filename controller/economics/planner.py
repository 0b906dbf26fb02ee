"""The planner: the power per 15-minute slot from now to departure that earns the owner the most.

Objective: export revenue (with a peak event's bonus) - import cost - battery wear cost, over the
slots of the plan, plus the worth of the energy held at departure. Constraints, on the plan's own
SoC trajectory at every slot end: the floor (below it: charge flat out to it first) and ceiling,
the departure reserve and target (as the core's departure rule computes them, so the core's
guarantee never has to take over from the plan), the power limits per slot and the discharge
budget (grid-side kWh the plan may export in all).

Method: dynamic programming backwards over a grid of SoC values, one numpy pass per slot over
states x actions, with the value between grid points interpolated linearly. The actions from a
state are the grid points in reach plus the "kinks" where the optimum of a piecewise-linear
problem sits: full charge, full discharge, the bonus's power edge, and the exact edges of the
feasible SoC range. A forward pass then follows the best action from the true (off-grid) SoC.
The discharge budget would make the state two-dimensional; instead a price per exported kWh is
added to the wear cost and searched (Lagrangian relaxation, Kelley's cutting plane over every
plan so far) until the best plan that fits is provably close; the plans that fit are the blends
of two plans bracketing the budget and each plan over it with its least valuable exports cut.
docs/economics.md, "The planner".

Sign: ``power_w`` is grid side, + charges the vehicle (imports), - discharges (exports).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.economics.wear import WearRate

Array = npt.NDArray[np.float64]

# Two SoC values closer than this (percent) are the same: the bounds are computed forwards and
# backwards, and their float rounding must not make an exact plan infeasible.
SOC_TOLERANCE_PCT = 1e-7
# A week of 15-minute slots: a plan longer than that is a caller's mistake, and bounds the work.
MAX_SLOTS = 7 * 96
# The default end value is this share below the cost of buying the energy back, so that buying
# at the cheapest price only to hold the energy never ties with doing nothing.
END_VALUE_DISCOUNT = 1e-6
# The grid resolution may not be finer than this (memory and time grow as 1 / step).
MIN_SOC_STEP_PCT = 0.01
# Among plans of equal value (within float noise), prefer the higher SoC: the owner's car is
# ready sooner and a later re-plan has more room. Money per percent of SoC: far below a cent.
TIE_BREAK_PER_PCT = 1e-9
# The discharge budget's Lagrangian search: at most this many passes after the first two, and
# stop once the plan is provably within this share of its gross cash flow of the best.
BUDGET_PASSES = 8
BUDGET_GAP = 0.002
# A plan fits the budget if it exports at most this much more (float noise of the cuts).
BUDGET_FIT_KWH = 1e-6
# The exact budget's repair counts the budget left in this many levels per grid step's export.
BUDGET_LEVELS_PER_STEP = 2
# Bisection steps on a blend's share where netting leaves part of the budget unused.
BLEND_STEPS = 8


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """Everything the planner needs, as values (no clock, no IO). Slot k covers
    ``[start + k * slot_s, start + (k + 1) * slot_s)``; the last slot ends at departure."""

    start: dt.datetime  # aware
    import_per_kwh: tuple[float, ...]  # per slot, money per kWh taken from the grid
    export_per_kwh: tuple[float, ...]  # per slot, money per kWh given to the grid
    capacity_kwh: float
    soc_pct: float  # SoC now (the caller passes the lowest the battery may hold)
    soc_floor_pct: float  # never plan a discharge below this
    soc_ceiling_pct: float  # never plan a charge above this
    max_charge_w: tuple[float, ...]  # per slot, >= 0, grid side
    max_discharge_w: tuple[float, ...]  # per slot, >= 0, grid side, magnitude
    target_soc_pct: float | None = None  # at the end of the last slot (departure); None: none
    # The core's rule: a charge needing T must fit in T * (1 + margin / 100).
    departure_margin_pct: float = 20.0
    charge_efficiency: float = 0.92  # the battery gains P * eta_c * dt
    discharge_efficiency: float = 0.92  # the battery loses |P| / eta_d * dt
    wear: WearRate = WearRate(0.0)  # noqa: RUF009  frozen, so one shared default is safe
    bonus_per_kwh: tuple[float, ...] = ()  # per slot, a peak event's bonus on the export price
    bonus_power_w: tuple[float, ...] = ()  # per slot, the bonus applies up to this export power
    discharge_budget_kwh: float | None = None  # grid-side kWh the plan may export; None: no cap
    slot_s: float = 900.0
    soc_step_pct: float = 0.5  # the DP grid resolution (docs/economics.md: accuracy, speed)
    # Seconds the core deducts from the time left before computing its departure reserve (ramp,
    # decision horizon): the plan's reserve deducts them too, so it stays above the core's.
    reserve_lost_s: float = 0.0
    # What a kWh held in the battery at departure is worth (money per kWh of battery energy,
    # above the SoC now; below it, the loss). None: the cheapest import price of the plan
    # through the charge losses, a hair less: what putting it back would cost, so the plan
    # never sells what it would have to buy back, nor buys only to hold (end_value_per_kwh()).
    end_value_per_kwh: float | None = None

    def end_value(self) -> float:
        """``end_value_per_kwh``, or its default (see the field)."""
        if self.end_value_per_kwh is not None:
            return self.end_value_per_kwh
        cheapest = max(0.0, min(self.import_per_kwh, default=0.0))
        return cheapest / self.charge_efficiency * (1.0 - END_VALUE_DISCOUNT)

    @property
    def slot_count(self) -> int:
        return len(self.import_per_kwh)

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.slot_s * self.slot_count)


@dataclass(frozen=True, slots=True)
class PlanSlot:
    start: dt.datetime
    end: dt.datetime
    power_w: float  # grid side: + charge, - discharge
    soc_end_pct: float
    import_per_kwh: float
    export_per_kwh: float
    bonus_per_kwh: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    slots: tuple[PlanSlot, ...]
    value: float  # export_revenue - import_cost - wear_cost
    import_cost: float
    export_revenue: float  # bonus included
    wear_cost: float
    target_reachable: bool  # False: the target cannot be met even charging flat out from now
    notes: tuple[str, ...]  # plain-language reasons
    exported_kwh: float = 0.0  # grid side
    imported_kwh: float = 0.0  # grid side
    # The worth the plan gave the energy held at departure against the SoC now (the problem's
    # end value): it maximised value + end_value. Not money paid or earned.
    end_value: float = 0.0

    def power_at(self, at: dt.datetime) -> float | None:
        """The power planned for the slot holding ``at``; None outside the plan."""
        if not self.slots:
            return None
        first = self.slots[0]
        slot_s = (first.end - first.start).total_seconds()
        index = math.floor((at - first.start).total_seconds() / slot_s)
        if 0 <= index < len(self.slots):
            return self.slots[index].power_w
        return None

    def to_json(self) -> dict[str, Any]:
        """A compact summary for telemetry: the power per slot and the SoC at each slot end."""
        if not self.slots:
            return {"start": None, "slot_s": None, "power_w": [], "soc_pct": []}
        first = self.slots[0]
        return {
            "start": first.start.isoformat(),
            "slot_s": (first.end - first.start).total_seconds(),
            "power_w": [round(s.power_w) for s in self.slots],
            "soc_pct": [round(s.soc_end_pct, 1) for s in self.slots],
            "value": round(self.value, 4),
            "target_reachable": self.target_reachable,
        }


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check_series(
    name: str, values: tuple[float, ...], *, non_negative: bool, allow_inf: bool = False
) -> list[str]:
    for index, value in enumerate(values):
        if not isinstance(value, int | float) or math.isnan(value):
            return [f"{name}[{index}] is {value!r}: expected a number"]
        if math.isinf(value) and not (allow_inf and value > 0):
            return [f"{name}[{index}] is {value!r}: expected a finite number"]
        if non_negative and value < 0:
            return [f"{name}[{index}] is {value:g}: expected >= 0"]
    return []


def _check_pct(name: str, value: float) -> list[str]:
    if not _finite(value) or not 0.0 <= value <= 100.0:
        return [f"{name} is {value!r}: expected a percentage in [0, 100]"]
    return []


def check_problem(problem: PlanProblem) -> list[str]:
    """Every reason ``problem`` is malformed; empty when the planner can take it."""
    p = problem
    errors: list[str] = []
    if p.start.tzinfo is None or p.start.utcoffset() is None:
        errors.append(f"start {p.start.isoformat()} is naive: expected an aware datetime")
    errors += _check_slots(p)
    if not _finite(p.capacity_kwh) or p.capacity_kwh <= 0:
        errors.append(f"capacity_kwh is {p.capacity_kwh!r}: expected a number > 0")
    errors += _check_socs(p)
    if not _finite(p.departure_margin_pct) or p.departure_margin_pct < 0:
        errors.append(f"departure_margin_pct is {p.departure_margin_pct!r}: expected >= 0")
    for name, eta in (
        ("charge_efficiency", p.charge_efficiency),
        ("discharge_efficiency", p.discharge_efficiency),
    ):
        if not _finite(eta) or not 0.0 < eta <= 1.0:
            errors.append(f"{name} is {eta!r}: expected a fraction in (0, 1]")
    for name, rate in (
        ("wear.base_per_kwh", p.wear.base_per_kwh),
        ("wear.per_c_rate_per_kwh", p.wear.per_c_rate_per_kwh),
    ):
        if not _finite(rate) or rate < 0:
            errors.append(f"{name} is {rate!r}: expected a finite number >= 0")
    budget = p.discharge_budget_kwh
    if budget is not None and (not _finite(budget) or budget < 0):
        errors.append(f"discharge_budget_kwh is {budget!r}: expected >= 0 or None")
    if not _finite(p.slot_s) or p.slot_s <= 0:
        errors.append(f"slot_s is {p.slot_s!r}: expected a number of seconds > 0")
    if not _finite(p.soc_step_pct) or not MIN_SOC_STEP_PCT <= p.soc_step_pct <= 10.0:
        errors.append(f"soc_step_pct is {p.soc_step_pct!r}: expected {MIN_SOC_STEP_PCT} to 10")
    if not _finite(p.reserve_lost_s) or p.reserve_lost_s < 0:
        errors.append(f"reserve_lost_s is {p.reserve_lost_s!r}: expected seconds >= 0")
    return errors


def _check_slots(p: PlanProblem) -> list[str]:
    """The per-slot series: one value per slot, numbers, in range."""
    errors: list[str] = []
    count = len(p.import_per_kwh)
    if count == 0:
        errors.append("no slots: import_per_kwh is empty (departure must be after start)")
    if count > MAX_SLOTS:
        errors.append(f"{count} slots: at most {MAX_SLOTS} (a week of 15-minute slots)")
    series: tuple[tuple[str, tuple[float, ...], bool, bool, bool], ...] = (
        # name, values, required, non_negative, allow_inf
        ("import_per_kwh", p.import_per_kwh, True, False, False),
        ("export_per_kwh", p.export_per_kwh, True, False, False),
        ("max_charge_w", p.max_charge_w, True, True, False),
        ("max_discharge_w", p.max_discharge_w, True, True, False),
        ("bonus_per_kwh", p.bonus_per_kwh, False, True, False),
        ("bonus_power_w", p.bonus_power_w, False, True, True),
    )
    for name, values, required, non_negative, allow_inf in series:
        if len(values) != count and (required or values):
            what = "one per slot" if required else "one per slot or none"
            errors.append(f"{name} has {len(values)} values, import_per_kwh {count}: {what}")
        errors += _check_series(name, values, non_negative=non_negative, allow_inf=allow_inf)
    if p.bonus_power_w and not p.bonus_per_kwh:
        errors.append("bonus_power_w without bonus_per_kwh: give both or neither")
    return errors


def _check_socs(p: PlanProblem) -> list[str]:
    """The SoC now, the floor, the ceiling and the target: percentages in a sane order."""
    errors: list[str] = []
    for name, value in (
        ("soc_pct", p.soc_pct),
        ("soc_floor_pct", p.soc_floor_pct),
        ("soc_ceiling_pct", p.soc_ceiling_pct),
    ):
        errors += _check_pct(name, value)
    if errors:
        return errors
    if p.soc_floor_pct > p.soc_ceiling_pct:
        errors.append(
            f"soc_floor_pct {p.soc_floor_pct:g} is above soc_ceiling_pct {p.soc_ceiling_pct:g}"
        )
    if p.target_soc_pct is not None:
        errors += _check_pct("target_soc_pct", p.target_soc_pct)
        if _finite(p.target_soc_pct) and p.target_soc_pct > p.soc_ceiling_pct:
            errors.append(
                f"target_soc_pct {p.target_soc_pct:g} is above soc_ceiling_pct "
                f"{p.soc_ceiling_pct:g}: the plan could never reach it"
            )
    return errors


@dataclass(slots=True)
class _Model:
    """The problem in the DP's units: SoC in percent, energy per slot in kWh."""

    p: PlanProblem
    n: int
    dt_h: float
    cap: float
    eta_c: float
    eta_d: float
    imp: Array
    exp: Array
    bonus: Array
    bonus_kwh: Array  # grid-side export per slot that earns the bonus (inf: all)
    charge_pct: Array  # the most SoC one slot can gain (max charge power)
    discharge_pct: Array  # the most SoC one slot can lose (max discharge power)
    bonus_pct: Array  # the SoC lost by exporting exactly bonus_kwh (nan: no such kink)
    lo: Array  # per slot end k = 0..n: the lowest SoC from which the plan stays feasible
    hi: Array  # the highest reachable SoC within the ceiling
    ceiling_strict: bool  # starts above the ceiling: a charge may never end above it
    greedy_end_pct: float
    target_pct: float | None  # the target the plan holds to at the end (clipped if unreachable)
    _in: list[float] = field(init=False)
    _out: list[float] = field(init=False)
    _out_price: float = field(init=False)
    _bonus: list[float] = field(init=False)
    _bonus_pct: list[float] = field(init=False)
    _quad: float = field(init=False)

    def __post_init__(self) -> None:
        # Money per percent of SoC moved in slot j, as plain floats (indexing numpy arrays
        # element by element is slow): the DP calls reward() hundreds of times per plan.
        per_pct_kwh = self.cap / 100.0
        wear = self.p.wear
        self._in = [float(x) * per_pct_kwh / self.eta_c for x in self.imp]
        self._out = [(float(x) * self.eta_d - wear.base_per_kwh) * per_pct_kwh for x in self.exp]
        self._out_price = self.eta_d * per_pct_kwh  # per unit of the budget's price
        self._bonus = [float(x) * self.eta_d * per_pct_kwh for x in self.bonus]
        self._bonus_pct = [float(x) / self.eta_d / per_pct_kwh for x in self.bonus_kwh]
        self._quad = wear.per_c_rate_per_kwh * per_pct_kwh**2 / (self.dt_h * self.cap)

    def reward(self, j: int, delta_pct: Array, price_per_kwh: float) -> Array:
        """Money earned in slot ``j`` moving SoC by ``delta_pct``; ``price_per_kwh`` is added to
        the wear cost of each grid-side kWh exported (the budget's Lagrange multiplier)."""
        out = np.maximum(-delta_pct, 0.0)
        result: Array = (self._out[j] - price_per_kwh * self._out_price) * out
        result -= self._in[j] * np.maximum(delta_pct, 0.0)
        if self._bonus[j]:
            result += self._bonus[j] * np.minimum(out, self._bonus_pct[j])
        if self._quad:
            result -= self._quad * out * out
        return result

    def reward_rows(self, slots: npt.NDArray[np.intp], delta_pct: Array) -> Array:
        """reward() at no budget price for rows of moves, row i in slot ``slots[i]``."""
        out = np.maximum(-delta_pct, 0.0)
        result: Array = np.take(self._out, slots)[:, None] * out
        result -= np.take(self._in, slots)[:, None] * np.maximum(delta_pct, 0.0)
        bonus = np.take(self._bonus, slots)
        if bonus.any():
            result += bonus[:, None] * np.minimum(out, np.take(self._bonus_pct, slots)[:, None])
        if self._quad:
            result -= self._quad * out * out
        return result


def _model(p: PlanProblem) -> tuple[_Model, list[str]]:
    n = p.slot_count
    dt_h = p.slot_s / 3600.0
    cap = p.capacity_kwh
    eta_c, eta_d = p.charge_efficiency, p.discharge_efficiency
    max_c = np.asarray(p.max_charge_w, dtype=np.float64)
    max_d = np.asarray(p.max_discharge_w, dtype=np.float64)
    bonus = np.asarray(p.bonus_per_kwh or (0.0,) * n, dtype=np.float64)
    bonus_w = np.asarray(p.bonus_power_w or (math.inf,) * n, dtype=np.float64)
    bonus_w = np.minimum(bonus_w, max_d)
    charge_pct = max_c / 1000.0 * dt_h * eta_c / cap * 100.0
    discharge_pct = max_d / 1000.0 * dt_h / eta_d / cap * 100.0
    bonus_kwh = np.where(bonus > 0, bonus_w / 1000.0 * dt_h, 0.0)
    bonus_pct = np.where(
        (bonus > 0) & (bonus_w < max_d), bonus_w / 1000.0 * dt_h / eta_d / cap * 100.0, np.nan
    )
    notes: list[str] = []
    s0 = p.soc_pct
    floor, ceiling = p.soc_floor_pct, p.soc_ceiling_pct
    ceiling_strict = s0 > ceiling
    if s0 < floor:
        notes.append(
            f"SoC {s0:.1f} % is below the floor {floor:g} %: charging flat out to it first"
        )
    if ceiling_strict:
        notes.append(f"SoC {s0:.1f} % is above the ceiling {ceiling:g} %: no charge")
    ceiling_ub = s0 if ceiling_strict else ceiling
    # The highest SoC at each slot end (charging flat out from now) and the lowest (discharging
    # flat out; never from below the floor).
    high = np.empty(n + 1)
    low = np.empty(n + 1)
    high[0] = low[0] = s0
    for j in range(n):
        high[j + 1] = high[j] if high[j] >= ceiling else min(high[j] + charge_pct[j], ceiling)
        low[j + 1] = low[j] if low[j] <= floor else max(low[j] - discharge_pct[j], floor)
    # Below the floor the car charges flat out until it reaches it, like below the departure
    # reserve: the floor is the owner's minimum, and the rule stays convex (no discharge can
    # start below the floor, and a plan can never be below a flat-out charge).
    lower = np.minimum(floor, high)
    target = p.target_soc_pct
    target_pct: float | None = None
    if target is not None:
        target_pct = min(target, float(high[n]))
        lower = np.maximum(lower, np.minimum(_reserve_pct(p, charge_pct, target), high))
        lower[n] = max(lower[n], target_pct)
    # Backwards: the lowest SoC from which every later lower bound can still be met.
    need = lower.copy()
    for k in range(n - 1, -1, -1):
        need[k] = max(lower[k], need[k + 1] - charge_pct[k])
    lo = np.maximum(need, low)
    hi = np.minimum(high, max(ceiling_ub, s0))
    # Rounding: the bounds come from sums taken in different orders.
    lo = np.minimum(lo, hi)
    model = _Model(
        p=p,
        n=n,
        dt_h=dt_h,
        cap=cap,
        eta_c=eta_c,
        eta_d=eta_d,
        imp=np.asarray(p.import_per_kwh, dtype=np.float64),
        exp=np.asarray(p.export_per_kwh, dtype=np.float64),
        bonus=bonus,
        bonus_kwh=np.where(np.isfinite(bonus_kwh), bonus_kwh, np.inf),
        charge_pct=charge_pct,
        discharge_pct=discharge_pct,
        bonus_pct=bonus_pct,
        lo=lo,
        hi=hi,
        ceiling_strict=ceiling_strict,
        greedy_end_pct=float(high[n]),
        target_pct=target_pct,
    )
    return model, notes


def _reserve_pct(p: PlanProblem, charge_pct: Array, target_pct: float) -> Array:
    """The departure reserve at each slot end k = 0..n, as the core computes it
    (controller/core/rules.py departure_reserve_pct), never below it.

    The core allows target - (time left - lost) / (1 + margin) * power / capacity, at the power
    available at that moment. Here the energy chargeable in the slots left counts the charge
    efficiency (the core's figure does not, so this reserve is the higher one) and the lower of
    "the rest of the slots at their own limits" and "all of them at the next slot's limit".
    """
    n = len(charge_pct)
    reserve = np.full(n + 1, target_pct)
    left_pct = np.cumsum(charge_pct[::-1])[::-1]  # chargeable from slot k to the end
    for k in range(n):
        slots_left = n - k
        chargeable = min(float(left_pct[k]), float(charge_pct[k]) * slots_left)
        time_left_s = slots_left * p.slot_s
        usable = max(0.0, time_left_s - p.reserve_lost_s) / time_left_s
        reserve[k] = target_pct - chargeable * usable / (1.0 + p.departure_margin_pct / 100.0)
    return reserve


@dataclass(slots=True)
class _Slot:
    """What one backward step needs that no budget price or value changes: the candidate next
    SoCs of its states, their reward at no price and their export, built once per problem."""

    first: int  # the grid points first..last are the states inside the range
    last: int
    y: Array  # flat: per inner state its kinks and edges, then per edge every candidate
    reward: Array  # at no budget price; -inf where the move is not allowed
    out_pct: Array  # the SoC exported by each move (for the budget price)
    kinks: int  # candidates per inner state
    width: int  # candidates per edge state
    down: int  # grid moves: from -down to +up steps
    up: int
    grid_reward: Array  # per grid move, at no budget price (-inf where not allowed)
    grid_out_pct: Array
    strict_bad: npt.NDArray[np.bool_] | None  # grid moves the start-above-ceiling rule forbids


class _Solver:
    def __init__(self, model: _Model) -> None:
        self.m = model
        self.step = model.p.soc_step_pct
        self.grid = np.arange(0, round(100.0 / self.step) + 1, dtype=np.float64) * self.step
        self.size = len(self.grid)
        self.lo = [float(x) for x in model.lo]
        self.hi = [float(x) for x in model.hi]
        self.up = [float(x) for x in model.charge_pct]
        self.down = [float(x) for x in model.discharge_pct]
        self.bonus = [float(x) for x in model.bonus_pct]
        self.ranges = [self._range(k) for k in range(model.n + 1)]
        self.points = [self._points(k) for k in range(model.n + 1)]
        self.slots = self._build_slots()
        # Every slot's candidates end to end, so that a budget price costs one numpy operation
        # per pass, not one per slot (each slot's arrays are views into these).
        self._reward_all = np.concatenate([slot.reward for slot in self.slots])
        self._out_all = np.concatenate([slot.out_pct for slot in self.slots])
        self._grid_reward_all = np.concatenate([slot.grid_reward for slot in self.slots])
        self._grid_out_all = np.concatenate([slot.grid_out_pct for slot in self.slots])
        self._cuts = np.cumsum([0] + [len(slot.reward) for slot in self.slots]).tolist()
        self._grid_cuts = np.cumsum([0] + [len(slot.grid_reward) for slot in self.slots]).tolist()
        # For the forward pass: per slot the kinks (nan: none) and the range's edges after.
        # For the forward pass: per slot the kinks as offsets (no bonus edge: idle again, a
        # harmless duplicate), and the range's edges after.
        self.kinks = [
            np.array([self.up[j], -self.down[j], 0.0, 0.0 if math.isnan(b) else -b])
            for j, b in enumerate(self.bonus)
        ]
        self.edges = [np.array([self.lo[j + 1], self.hi[j + 1]]) for j in range(model.n)]

    def _range(self, k: int) -> tuple[int, int]:
        """The grid indices strictly inside [lo_k, hi_k] (first > last when none)."""
        lo, hi = self.lo[k], self.hi[k]
        gap = 10 * SOC_TOLERANCE_PCT
        first = math.floor(lo / self.step + 1e-9) + 1
        if first * self.step - lo < gap:
            first += 1
        last = math.ceil(hi / self.step - 1e-9) - 1
        if hi - last * self.step < gap:
            last -= 1
        return max(first, 0), min(last, self.size - 1)

    def _points(self, k: int) -> Array:
        """The SoC points V_k is held on: the range's edges and the grid points inside."""
        first, last = self.ranges[k]
        return np.concatenate(([self.lo[k]], self.grid[first : last + 1], [self.hi[k]]))

    def _build_slots(self) -> list[_Slot]:
        """Every slot's candidates, rewards and exports at once (vectorised over the slots)."""
        m = self.m
        n = m.n
        step = self.step
        up = m.charge_pct
        down = m.discharge_pct
        lo_next, hi_next = m.lo[1:], m.hi[1:]
        # Per slot the reward's kinks (full charge, full discharge, idle, the bonus's power
        # edge; nan: none) and the two edges of the range after.
        columns = [up, -down, np.zeros(n), lo_next, hi_next]
        if not np.isnan(m.bonus_pct).all():
            columns.append(-m.bonus_pct)
        kinks = np.stack(columns, axis=1)
        is_offset = np.array([True, True, True, False, False, True][: len(columns)])
        # Inner states: the grid points strictly inside each slot's range (none at slot 0).
        firsts = np.array([self.ranges[j][0] if j else 0 for j in range(n)])
        lasts = np.array([self.ranges[j][1] if j else -1 for j in range(n)])
        counts = np.maximum(lasts - firsts + 1, 0)
        row_slot = np.repeat(np.arange(n), counts)
        starts = np.cumsum(counts) - counts
        row_index = np.arange(len(row_slot)) - np.repeat(starts - firsts, counts)
        inner_s = self.grid[row_index]
        inner_y = np.where(is_offset, inner_s[:, None] + kinks[row_slot], kinks[row_slot])
        # From a grid point, staying put is the grid move 0 (below): not a kink there.
        inner_y = np.delete(inner_y, 2, axis=1)
        # Edge states (two per slot; slot 0's are both the start): kinks and every grid point
        # in reach (a common width; the power limits below drop the extra ones).
        edge_slot = np.repeat(np.arange(n), 2)
        edge_s = np.stack((m.lo[:-1], m.hi[:-1]), axis=1).ravel()
        edge_s[1] = edge_s[0]
        width = int(np.max(np.floor((up + down) / step))) + 2
        base = np.floor((edge_s - down[edge_slot]) / step - 1e-9) + 1
        edge_grid = (base[:, None] + np.arange(width)[None, :]) * step
        edge_kinks = np.where(is_offset, edge_s[:, None] + kinks[edge_slot], kinks[edge_slot])
        edge_y = np.concatenate((edge_kinks, edge_grid), axis=1)

        inner_y, inner_r = self._allowed_rows(row_slot, inner_s, inner_y)
        inner_out = np.maximum(inner_s[:, None] - inner_y, 0.0)
        edge_y, edge_r = self._allowed_rows(edge_slot, edge_s, edge_y)
        edge_out = np.maximum(edge_s[:, None] - edge_y, 0.0)
        # Grid moves from grid points, -most_down .. +most_up steps, per slot.
        steps_up = np.floor(up / step + 1e-9).astype(np.intp)
        steps_down = np.floor(down / step + 1e-9).astype(np.intp)
        most_down = int(steps_down.max())
        moves = np.arange(-most_down, int(steps_up.max()) + 1, dtype=np.float64) * step
        move_r = m.reward_rows(np.arange(n), np.broadcast_to(moves, (n, len(moves))))
        move_out = np.maximum(-moves, 0.0)
        slots = []
        for j in range(n):
            rows = slice(int(starts[j]), int(starts[j] + counts[j]))
            edges = slice(2 * j, 2 * j + 2)
            cut = slice(most_down - int(steps_down[j]), most_down + int(steps_up[j]) + 1)
            slot_moves = moves[cut]
            strict_bad = self._strict_bad(inner_s[rows], slot_moves) if counts[j] else None
            slots.append(
                _Slot(
                    first=int(firsts[j]),
                    last=int(lasts[j]),
                    y=np.concatenate((inner_y[rows].ravel(), edge_y[edges].ravel())),
                    reward=np.concatenate((inner_r[rows].ravel(), edge_r[edges].ravel())),
                    out_pct=np.concatenate((inner_out[rows].ravel(), edge_out[edges].ravel())),
                    kinks=inner_y.shape[1],
                    width=edge_y.shape[1],
                    down=int(steps_down[j]),
                    up=int(steps_up[j]),
                    grid_reward=move_r[j, cut],
                    grid_out_pct=move_out[cut],
                    strict_bad=strict_bad,
                )
            )
        return slots

    def _allowed_rows(self, slot: npt.NDArray[np.intp], s: Array, y: Array) -> tuple[Array, Array]:
        """Candidates ``y`` (row i: from SoC s[i] in slot[i]) clipped into the range after,
        and their reward at no budget price (-inf where the move is not allowed)."""
        m = self.m
        tol = SOC_TOLERANCE_PCT
        lo, hi = m.lo[1:][slot][:, None], m.hi[1:][slot][:, None]
        delta = y - s[:, None]
        ok = (y >= lo - tol) & (y <= hi + tol)
        ok &= delta <= m.charge_pct[slot][:, None] + tol
        ok &= delta >= -m.discharge_pct[slot][:, None] - tol
        if m.ceiling_strict:
            ok &= (delta <= 0) | (y <= m.p.soc_ceiling_pct + tol)
        y = np.where(ok, np.clip(y, lo, hi), lo)
        reward = np.where(ok, m.reward_rows(slot, y - s[:, None]), -np.inf)
        return y, reward

    def _strict_bad(self, states: Array, moves: Array) -> npt.NDArray[np.bool_] | None:
        """The grid moves the start-above-the-ceiling rule forbids: a charge ending above it."""
        m = self.m
        if not m.ceiling_strict:
            return None
        tol = SOC_TOLERANCE_PCT
        after = states[:, None] + moves[None, :]
        return (moves > 0) & (after > m.p.soc_ceiling_pct + tol)

    def _grid_values(self, k: int, inner: Array) -> Array:
        """V_k on the whole grid: the inner values, -inf outside the range."""
        first, last = self.ranges[k]
        grid_v = np.full(self.size, -np.inf)
        if last >= first:
            grid_v[first : last + 1] = inner
        return grid_v

    def _windows(self, grid_v: Array, first: int, last: int, down: int, up: int) -> Array:
        """Row i - first: V after at grid points i - down .. i + up (-inf off its range)."""
        # Pad so every row's window lies inside the array, then view it with strides (a
        # hand-made sliding window: numpy's helper costs more than the whole slot otherwise).
        low = first - down
        high = last + up + 1
        source = grid_v
        if low < 0 or high > self.size:
            pad_low, pad_high = max(0, -low), max(0, high - self.size)
            source = np.concatenate((np.full(pad_low, -np.inf), source, np.full(pad_high, -np.inf)))
            low += pad_low
        item = source.itemsize
        return np.ndarray(
            (last - first + 1, up + down + 1),
            dtype=np.float64,
            buffer=source,
            offset=low * item,
            strides=(item, item),
        )

    def backward(self, price: float) -> list[Array]:
        """V_k on self.points[k] for every slot end k, with ``price`` per exported kWh."""
        m = self.m
        n = m.n
        per_pct = price * m._out_price
        values: list[Array] = [np.zeros(0)] * (n + 1)
        # At departure: the energy held, valued against the SoC now.
        values[n] = (self.points[n] - m.p.soc_pct) * (m.cap / 100.0 * m.p.end_value())
        grid_v = self._grid_values(n, values[n][1:-1])
        rewards, grid_rewards = self._reward_all, self._grid_reward_all
        if per_pct:
            rewards = rewards - per_pct * self._out_all
            grid_rewards = grid_rewards - per_pct * self._grid_out_all
        cuts, grid_cuts = self._cuts, self._grid_cuts
        for j in range(n - 1, -1, -1):
            slot = self.slots[j]
            q = rewards[cuts[j] : cuts[j + 1]]
            q = q + np.interp(slot.y, self.points[j + 1], values[j + 1])
            split = (slot.last - slot.first + 1) * slot.kinks if slot.last >= slot.first else 0
            edges = q[split:].reshape(-1, slot.width).max(axis=1)
            if j == 0:
                values[0] = np.array([edges[0], edges[0]])
                break
            if split == 0:
                values[j] = edges
                grid_v = self._grid_values(j, np.zeros(0))
                continue
            # Grid moves from grid points: V after at grid point i + d for d from -down to +up
            # steps, read through a sliding window (no interpolation needed).
            windows = self._windows(grid_v, slot.first, slot.last, slot.down, slot.up)
            q_grid = windows + grid_rewards[grid_cuts[j] : grid_cuts[j + 1]]
            if slot.strict_bad is not None:
                q_grid[slot.strict_bad] = -np.inf
            inner = np.maximum(q_grid.max(axis=1), q[:split].reshape(-1, slot.kinks).max(axis=1))
            values[j] = np.concatenate((edges[:1], inner, edges[1:]))
            grid_v = self._grid_values(j, inner)
        return values

    def forward(self, values: list[Array], price: float, budget_kwh: float | None = None) -> Array:
        """The SoC at each slot end, following the best action from the SoC reached; with
        ``budget_kwh``, never exporting more than is left of it."""
        m = self.m
        soc = np.empty(m.n + 1)
        now = m.p.soc_pct
        soc[0] = now
        tol = SOC_TOLERANCE_PCT
        step = self.step
        grid = self.grid
        out_kwh_per_pct = m.cap / 100.0 * m.eta_d
        left_kwh = math.inf if budget_kwh is None else budget_kwh
        ceiling = m.p.soc_ceiling_pct + tol
        # The reward per percent moved, out and in, with the tie-break toward the higher SoC
        # folded in (it is linear in the move, so it shifts both slopes alike).
        out_gain = [x - price * m._out_price - TIE_BREAK_PER_PCT for x in m._out]
        in_cost = [x - TIE_BREAK_PER_PCT for x in m._in]
        for j in range(m.n):
            up, down = self.up[j], self.down[j]
            if budget_kwh is not None:
                down = max(0.0, min(down, left_kwh / out_kwh_per_pct))
            # Every candidate is clipped into the range after and the power limits: one that
            # was outside lands on an edge, which is a candidate already (an edge of the range,
            # or the full charge or discharge), so clipping adds no move.
            low = max(self.lo[j + 1], now - down)
            high = min(self.hi[j + 1], now + up)
            first = max(0, math.floor((now - down) / step - 1e-9) + 1)
            last = min(self.size, math.floor((now + up) / step + 1e-9) + 1)
            y = np.concatenate((self.kinks[j] + now, self.edges[j], grid[first:last]))
            y = np.minimum(np.maximum(y, low), high)
            delta = y - now
            out = np.maximum(-delta, 0.0)
            q = out_gain[j] * out - in_cost[j] * np.maximum(delta, 0.0)
            if m._bonus[j]:
                q += m._bonus[j] * np.minimum(out, m._bonus_pct[j])
            if m._quad:
                q -= m._quad * out * out
            q += np.interp(y, self.points[j + 1], values[j + 1])
            if m.ceiling_strict:  # no charge may end above the ceiling
                q[(delta > 0.0) & (y > ceiling)] = -np.inf
            after = float(y[int(q.argmax())])
            soc[j + 1] = after
            left_kwh -= max(0.0, now - after) * out_kwh_per_pct
            now = after
        return soc

    def with_budget(self, budget_kwh: float) -> Array:
        """The best trajectory that exports at most ``budget_kwh``, with the budget left as a
        second state: levels of a quarter of one grid step's export, each move using the
        levels it needs rounded up (so the values never count on budget the plan lacks; the
        forward pass then tracks the exact kWh left). Not for a start above the ceiling."""
        m = self.m
        n = m.n
        kwh_per_pct = m.cap / 100.0 * m.eta_d
        unit_kwh = self.step * kwh_per_pct / BUDGET_LEVELS_PER_STEP
        levels = math.floor(budget_kwh / unit_kwh + 1e-9) + 1
        rows = np.arange(levels)[:, None]
        values: list[Array] = [np.zeros((0, 0))] * (n + 1)
        end = (self.points[n] - m.p.soc_pct) * (m.cap / 100.0 * m.p.end_value())
        values[n] = np.repeat(end[None, :], levels, axis=0)
        for j in range(n - 1, -1, -1):
            slot = self.slots[j]
            after = values[j + 1]
            inter = np.stack([np.interp(slot.y, self.points[j + 1], row) for row in after])
            # The levels left after each move, linear between two levels (the forward pass
            # keeps the exact budget, so this only guides it).
            source = rows - (slot.out_pct * kwh_per_pct / unit_kwh)[None, :]
            below = np.floor(source + 1e-9)
            share = np.clip(source - below, 0.0, 1.0)
            column = np.arange(len(slot.out_pct))[None, :]
            low_row = np.clip(below, 0, levels - 1).astype(np.intp)
            high_row = np.minimum(low_row + 1, levels - 1)
            q = (1.0 - share) * inter[low_row, column] + share * inter[high_row, column]
            q += slot.reward
            q[source < -1e-9] = -np.inf
            split = (slot.last - slot.first + 1) * slot.kinks if slot.last >= slot.first else 0
            edges = q[:, split:].reshape(levels, -1, slot.width).max(axis=2)
            if j == 0:
                values[0] = edges[:, [0, 0]]
                break
            if split == 0:
                values[j] = edges
                continue
            inner = q[:, :split].reshape(levels, -1, slot.kinks).max(axis=2)
            # Grid moves: V after on the whole grid per level, padded for the shifts.
            first, last = self.ranges[j + 1]
            reach = max(slot.down, slot.up)
            shift = (slot.down + 1) * BUDGET_LEVELS_PER_STEP
            padded = np.full((levels + shift, self.size + 2 * reach), -np.inf)
            if last >= first:
                padded[shift:, reach + first : reach + last + 1] = after[:, 1:-1]
            for index, d in enumerate(range(-slot.down, slot.up + 1)):
                reward = float(slot.grid_reward[index])
                if reward == -np.inf:
                    continue
                lost = max(-d, 0) * BUDGET_LEVELS_PER_STEP
                low = reach + slot.first + d
                term = padded[shift - lost : shift - lost + levels, low : low + inner.shape[1]]
                np.maximum(inner, term + reward, out=inner)
            values[j] = np.concatenate((edges[:, :1], inner, edges[:, 1:]), axis=1)
        return self._forward_with_budget(values, budget_kwh, unit_kwh)

    def _forward_with_budget(self, values: list[Array], budget_kwh: float, unit: float) -> Array:
        """with_budget's forward pass: the best move from the true SoC and the exact kWh left,
        the value after read between the two nearest levels."""
        m = self.m
        soc = np.empty(m.n + 1)
        now = m.p.soc_pct
        soc[0] = now
        kwh_per_pct = m.cap / 100.0 * m.eta_d
        left_kwh = budget_kwh
        levels = values[0].shape[0]
        for j in range(m.n):
            down = max(0.0, min(self.down[j], left_kwh / kwh_per_pct))
            low = max(self.lo[j + 1], now - down)
            high = min(self.hi[j + 1], now + self.up[j])
            first = max(0, math.floor((now - down) / self.step - 1e-9) + 1)
            last = min(self.size, math.floor((now + self.up[j]) / self.step + 1e-9) + 1)
            y = np.concatenate(
                (self.kinks[j] + now, self.edges[j], self.grid[first:last], [now - down])
            )
            y = np.minimum(np.maximum(y, low), high)
            left = left_kwh - np.maximum(now - y, 0.0) * kwh_per_pct
            level = np.clip(left / unit, 0.0, levels - 1.0)
            below = np.floor(level).astype(np.intp)
            above = np.minimum(below + 1, levels - 1)
            share = level - below
            q = m.reward(j, y - now, 0.0) + TIE_BREAK_PER_PCT * y
            points, later = self.points[j + 1], values[j + 1]
            for c in range(len(y)):
                low_v = float(np.interp(y[c], points, later[below[c]]))
                high_v = float(np.interp(y[c], points, later[above[c]]))
                q[c] += (1.0 - float(share[c])) * low_v + float(share[c]) * high_v
            soc_next = float(y[int(q.argmax())])
            soc[j + 1] = soc_next
            left_kwh -= max(0.0, now - soc_next) * kwh_per_pct
            now = soc_next
        return soc


@dataclass(frozen=True, slots=True)
class _Totals:
    value: float
    import_cost: float
    export_revenue: float
    wear_cost: float
    imported_kwh: float
    exported_kwh: float
    end_value: float


def _totals(m: _Model, soc: Array) -> tuple[_Totals, Array]:
    """What the trajectory ``soc`` earns and costs, and its grid-side power per slot."""
    energy_kwh = np.diff(soc) * (m.cap / 100.0)
    grid_in = np.maximum(energy_kwh, 0.0) / m.eta_c
    out = np.maximum(-energy_kwh, 0.0)
    grid_out = out * m.eta_d
    wear = m.p.wear
    wear_cost = (wear.base_per_kwh + wear.per_c_rate_per_kwh * out / (m.dt_h * m.cap)) * out
    revenue = m.exp * grid_out + m.bonus * np.minimum(grid_out, m.bonus_kwh)
    cost = m.imp * grid_in
    power_w = (grid_in - grid_out) / m.dt_h * 1000.0
    totals = _Totals(
        value=float(revenue.sum() - cost.sum() - wear_cost.sum()),
        import_cost=float(cost.sum()),
        export_revenue=float(revenue.sum()),
        wear_cost=float(wear_cost.sum()),
        imported_kwh=float(grid_in.sum()),
        exported_kwh=float(grid_out.sum()),
        end_value=float((soc[-1] - soc[0]) * (m.cap / 100.0) * m.p.end_value()),
    )
    return totals, power_w


@dataclass(frozen=True, slots=True)
class _Trial:
    """One DP pass at a price per exported kWh: its trajectory, true value and export."""

    price: float
    soc: Array
    value: float
    exported_kwh: float
    gross: float  # import cost + export revenue + wear, in magnitude

    def lagrangian(self, price: float) -> float:
        return self.value - price * self.exported_kwh


def _keeps_start_rules(m: _Model, soc: Array) -> bool:
    """A start above the ceiling: no charge ending above it."""
    delta = np.diff(soc)
    ends = soc[1:]
    tol = SOC_TOLERANCE_PCT
    return not (m.ceiling_strict and np.any((delta > tol) & (ends > m.p.soc_ceiling_pct + tol)))


def _follow(m: _Model, wanted: Array, budget_kwh: float) -> Array:
    """The trajectory closest to ``wanted`` slot by slot that keeps every rule: each slot moves
    toward the wanted SoC as far as the power limits, the range, the start-above-the-ceiling
    rule and the budget left allow (a blend of two plans can break that rule)."""
    soc = np.empty(m.n + 1)
    soc[0] = m.p.soc_pct
    out_kwh_per_pct = m.cap / 100.0 * m.eta_d
    left_kwh = budget_kwh
    ceiling = m.p.soc_ceiling_pct
    for j in range(m.n):
        now = float(soc[j])
        low = now - min(float(m.discharge_pct[j]), max(0.0, left_kwh) / out_kwh_per_pct)
        high = now + float(m.charge_pct[j])
        if m.ceiling_strict:  # a charge may not end above the ceiling
            high = min(high, max(now, ceiling))
        low, high = max(low, float(m.lo[j + 1])), min(high, float(m.hi[j + 1]))
        soc[j + 1] = min(max(float(wanted[j + 1]), low), high) if low <= high else now
        left_kwh -= max(0.0, now - float(soc[j + 1])) * out_kwh_per_pct
    return soc


def _trim(m: _Model, soc: Array, budget_kwh: float) -> Array:
    """``soc`` with its least valuable export cut until it fits the budget: each cut keeps
    the energy in the battery from that slot on (within the range), and then buys that much
    less in the dearest charging slots. A repair for plans a blend cannot fix."""
    soc = soc.copy()
    n = m.n
    per_pct_kwh = m.cap / 100.0
    excess_pct = (_totals(m, soc)[0].exported_kwh - budget_kwh) / (per_pct_kwh * m.eta_d)
    wear = m.p.wear.base_per_kwh * per_pct_kwh
    # The discharges as segments: first the part above the event's power window (earning the
    # export price), then the part inside it (earning the bonus too); cheapest cut first.
    segments: list[tuple[float, int, float]] = []  # (value per %, slot, SoC %)
    for j in range(n):
        out_pct = max(0.0, float(soc[j] - soc[j + 1]))
        if out_pct <= 0.0:
            continue
        window_pct = min(out_pct, float(m.bonus_kwh[j]) / m.eta_d / per_pct_kwh)
        plain_value = float(m.exp[j]) * m.eta_d * per_pct_kwh - wear
        segments.append((plain_value, j, out_pct - window_pct))
        bonus_value = plain_value + float(m.bonus[j]) * m.eta_d * per_pct_kwh
        segments.append((bonus_value, j, window_pct))
    segments.sort()
    dearest_first = np.argsort(-m.imp, kind="stable").tolist()
    for _, j, amount_pct in segments:
        if excess_pct <= SOC_TOLERANCE_PCT:
            break
        headroom = float(np.min(m.hi[j + 1 :] - soc[j + 1 :]))
        cut = min(amount_pct, excess_pct, max(0.0, headroom))
        if cut <= 0.0:
            continue
        soc[j + 1 :] += cut
        excess_pct -= cut
        # The energy kept need not be bought: charge less in the dearest slots, before or
        # after, as far as the lower bounds allow (the SoC from that slot on drops).
        moves = np.diff(soc)
        charges = [k for k in dearest_first if moves[k] > 0.0 and k != j]
        kept = cut
        for k in charges:
            if kept <= 0.0:
                break
            room = float(np.min(soc[k + 1 :] - m.lo[k + 1 :]))
            less = min(kept, float(soc[k + 1] - soc[k]), max(0.0, room))
            soc[k + 1 :] -= less
            kept -= less
    return soc


def _without_export(m: _Model) -> Array:
    """A plan that never discharges: idle, charging only as the lower bounds demand."""
    soc = np.empty(m.n + 1)
    soc[0] = m.p.soc_pct
    for k in range(m.n):  # hi never falls, so holding never needs a discharge
        soc[k + 1] = min(max(soc[k], m.lo[k + 1]), m.hi[k + 1])
    return soc


def _trial(m: _Model, price: float, soc: Array) -> _Trial:
    totals = _totals(m, soc)[0]
    gross = abs(totals.import_cost) + abs(totals.export_revenue) + abs(totals.wear_cost)
    return _Trial(price, soc, totals.value + totals.end_value, totals.exported_kwh, gross)


def _blend(m: _Model, over: _Trial, under: _Trial, budget_kwh: float) -> _Trial:
    """The best of ``under`` and blends of the two plans that fit the budget.

    Every rule but the start-above-the-ceiling one is convex in the trajectory, and a slot's
    earnings are concave in its SoC move wherever exporting and charging at once does not pay,
    so the blend in proportion to the exports fits the budget and earns at least the blend of
    the two values. Where a slot's charge and export net out (an event bonus above the import
    price) the blend exports less than the budget: a few bisection steps toward ``over`` use
    the rest."""

    def blend(share: float) -> _Trial:
        soc = share * over.soc + (1.0 - share) * under.soc
        if not _keeps_start_rules(m, soc):
            soc = _follow(m, soc, budget_kwh)
        return _trial(m, over.price, soc)

    low = (budget_kwh - under.exported_kwh) / (over.exported_kwh - under.exported_kwh)
    best = under
    trial = blend(low)
    if trial.exported_kwh > budget_kwh + 1e-6:
        return best
    if trial.value > best.value:
        best = trial
    high = 1.0
    for _ in range(BLEND_STEPS):
        if trial.exported_kwh >= budget_kwh - 1e-6:
            break
        share = 0.5 * (low + high)
        trial = blend(share)
        if trial.exported_kwh <= budget_kwh + 1e-6:
            low = share
            if trial.value > best.value:
                best = trial
        else:
            high = share
    return best


def _fitting(m: _Model, price: float, soc: Array, budget_kwh: float) -> _Trial | None:
    """The trial of ``soc`` if it fits the budget and keeps the start rules, else None."""
    trial = _trial(m, price, soc)
    if trial.exported_kwh <= budget_kwh + BUDGET_FIT_KWH and _keeps_start_rules(m, soc):
        return trial
    return None


def _kelley(plans: list[_Trial], budget_kwh: float) -> tuple[float, _Trial, _Trial, float]:
    """The price that minimises the upper envelope of the plans' lines, value + price *
    (budget - export) (the dual is above each of them), the plan over the budget and the one
    within it that earn the most net of that price (their blend is the best plan if no plan
    at that price beats both), and the envelope's value there.

    Where the envelope is flat at its lowest (a plan that exports the budget exactly), the
    highest such price: above the budget's price the bound grows only by the budget per unit
    of price, below it by the far larger export of the plans over it."""
    value = np.array([p.value for p in plans])
    export = np.array([p.exported_kwh for p in plans])
    # The envelope's corners: where any two lines meet (and price 0).
    with np.errstate(divide="ignore", invalid="ignore"):
        corners = (value[:, None] - value[None, :]) / (export[:, None] - export[None, :])
    prices = np.concatenate(([0.0], corners[np.isfinite(corners) & (corners > 0.0)]))
    envelope = (value[None, :] + prices[:, None] * (budget_kwh - export[None, :])).max(axis=1)
    lowest = float(envelope.min())
    price = float(prices[envelope <= lowest + 1e-9 * (1.0 + abs(lowest))].max())
    net = value - price * export
    over = np.where(export > budget_kwh + BUDGET_FIT_KWH, net, -np.inf)
    under = np.where(export <= budget_kwh + BUDGET_FIT_KWH, net, -np.inf)
    # The first plan is over the budget and the idle plan within it: both exist.
    return price, plans[int(over.argmax())], plans[int(under.argmax())], lowest


def _solve(m: _Model, notes: list[str]) -> Array:
    solver = _Solver(m)

    values_at: dict[float, list[Array]] = {}  # the last pass's values, for the capped pass

    def trial(price: float) -> _Trial:
        values_at.clear()
        values_at[price] = solver.backward(price)
        return _trial(m, price, solver.forward(values_at[price], price))

    budget = m.p.discharge_budget_kwh
    first = trial(0.0)
    if budget is None or first.exported_kwh <= budget + BUDGET_FIT_KWH:
        return first.soc
    # The budget binds. Lagrangian relaxation: charge a price per exported kWh; the higher the
    # price, the less the plan exports. ``over`` exports more than the budget, ``under`` fits.
    # At this price no export pays, not even to make room for a charge that is paid for.
    high_price = (
        float(np.max(np.abs(m.exp + m.bonus)))
        + float(np.max(np.abs(m.imp))) / (m.eta_c * m.eta_d)
        + 1.0
    )
    # To start from below, a plan that exports nothing: no DP pass needed (the search's first
    # price then comes out a little high, and the next plans correct it).
    idle = _trial(m, high_price, _without_export(m))
    # A better plan from below, also without a DP pass: the first plan with its least
    # valuable exports cut to fit. Its value per kWh against the first plan's is close to
    # the budget's price, so the search starts near it, and the best plan starts high.
    trimmed = _fitting(m, high_price, _trim(m, first.soc, budget), budget)
    plans = [first, idle] if trimmed is None else [first, idle, trimmed]
    best = max(plans[1:], key=lambda t: t.value)
    proven = False
    dual = first.value  # the least upper bound so far (at price 0: the plan without a budget)
    tried: set[float] = set()
    over = first
    for _ in range(BUDGET_PASSES + 1):
        # Kelley's cutting plane on the dual: the price where the bound the plans so far
        # allow is lowest, and the two plans that meet there (one over the budget, one not;
        # their blend is the best plan if no plan at that price beats both).
        price, over, under, model = _kelley(plans, budget)
        best = max(best, _blend(m, over, under, budget), key=lambda t: t.value)
        if dual - best.value <= BUDGET_GAP * best.gross:
            proven = True
            break
        if price in tried:  # the same plans again: the search cannot get closer
            break
        tried.add(price)
        candidate = trial(price)
        # No plan earns more than the candidate's value net of the price, plus the price of
        # the budget (weak duality): stop once the best plan is that close.
        bound = candidate.lagrangian(price) + price * budget
        dual = min(dual, bound)
        if dual - best.value <= BUDGET_GAP * max(best.gross, candidate.gross):
            proven = True
            break
        if bound <= model + 1e-9 * (1.0 + abs(bound)):  # no new breakpoint: the bound is exact
            break
        plans.append(candidate)
        if candidate.exported_kwh > budget + BUDGET_FIT_KWH:
            # Its least valuable exports cut: a plan that fits, often better than the blends,
            # and a better plan from below for the next price.
            cut = _fitting(m, price, _trim(m, candidate.soc, budget), budget)
            if cut is not None:
                plans.append(cut)
                best = max(best, cut, key=lambda t: t.value)
    if not proven:
        # The blend was not allowed (a start above the ceiling) or the search stopped short:
        # follow the values at the over plan's price, never exporting more than is left (each
        # plan over the budget was cut to fit already, above).
        values = values_at.get(over.price) or solver.backward(over.price)
        capped = _fitting(m, over.price, solver.forward(values, over.price, budget), budget)
        if capped is not None and capped.value > best.value:
            best = capped
        if dual - best.value > BUDGET_GAP * best.gross and not m.ceiling_strict:
            # A duality gap is left open (a slot's earnings are not concave): the budget left
            # as a second state. Costly, and rare (the search proves most plans).
            exact = _fitting(m, 0.0, solver.with_budget(budget), budget)
            if exact is not None and exact.value > best.value:
                best = exact
    notes.append(
        f"discharge budget {budget:.1f} kWh binds: the plan exports {best.exported_kwh:.1f} kWh"
    )
    return best.soc


def make_plan(problem: PlanProblem) -> Plan:
    """The plan that maximises the owner's net value; raises ValueError if ``problem`` is
    malformed (check_problem's reasons). An unreachable target is not an error: the plan
    charges as fast as it can and says so."""
    errors = check_problem(problem)
    if errors:
        raise ValueError("; ".join(errors))
    model, notes = _model(problem)
    target = problem.target_soc_pct
    reachable = target is None or model.greedy_end_pct >= target - SOC_TOLERANCE_PCT
    if not reachable:
        by = problem.end.astimezone(problem.start.tzinfo)
        notes.append(
            f"target {target:g} % unreachable by {by:%H:%M}: "
            f"{model.greedy_end_pct:.1f} % at most; charging as fast as possible"
        )
    soc = _solve(model, notes)
    totals, power_w = _totals(model, soc)
    step = dt.timedelta(seconds=problem.slot_s)
    bonus = problem.bonus_per_kwh or (0.0,) * model.n
    slots = tuple(
        PlanSlot(
            start=problem.start + j * step,
            end=problem.start + (j + 1) * step,
            power_w=float(power_w[j]),
            soc_end_pct=float(soc[j + 1]),
            import_per_kwh=problem.import_per_kwh[j],
            export_per_kwh=problem.export_per_kwh[j],
            bonus_per_kwh=bonus[j],
        )
        for j in range(model.n)
    )
    return Plan(
        slots=slots,
        value=totals.value,
        end_value=totals.end_value,
        import_cost=totals.import_cost,
        export_revenue=totals.export_revenue,
        wear_cost=totals.wear_cost,
        target_reachable=reachable,
        notes=tuple(notes),
        exported_kwh=totals.exported_kwh,
        imported_kwh=totals.imported_kwh,
    )
