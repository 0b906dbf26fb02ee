"""Battery wear: capacity lost per cycle, counted by rainflow, priced (docs/economics.md).

The chain, each step a pure function of its arguments:

1. ``rainflow(soc_pct)``: a SoC trace becomes half and full cycles (ASTM E1049-85 rainflow), each
   with its depth and mean SoC.
2. ``WearModel.life_efc(depth, mean_soc, c_rate, temp_c)``: the equivalent full cycles (EFC, NREL
   BLAST-Lite's unit: the sum of ``|dSoC|`` over 2) after which cycling alone would take the pack to
   ``end_of_life_fade_pct`` if every cycle looked like this one. The cycle-fade laws per chemistry
   come from NREL's BLAST-Lite (named at ``_nmc_fade_coefficient`` and ``_lfp_fade_coefficient``);
   both have the form ``fade = k(stress) * EFC**p``.
3. Linear damage (Palmgren-Miner, the rule rainflow counting is made for): a cycle of ``d`` EFC
   uses ``d / life_efc`` of the pack's life, so its fade is ``end_of_life_fade_pct * d / life_efc``
   and its cost ``replacement_cost * d / life_efc``. This spreads the replacement over the life
   evenly: a power law with ``p < 1`` fades faster when new, and the even spread is its average.
4. ``WearModel.rate(depth, mean_soc)``: money per kWh discharged, ``base + slope * c_rate``, a
   least-squares line through the model's cost over 0.1-1 C, for the planner.

Not modelled (docs/economics.md "What it leaves out"): calendar ageing, the pack's real
temperature, resistance growth, the knee at end of life, and the BMS's hidden buffer (SoC here
is the SoC the vehicle reports).
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Bounds for the owner's configuration (issue 19): a car or van pack, a pack price, a fade limit.
CAPACITY_MIN_KWH = 5.0
CAPACITY_MAX_KWH = 250.0
# The fade at which the owner would replace the pack (default 20 %, issue 19's figure); the fits'
# data stop far below 50 %, so a larger figure would price nothing real.
END_OF_LIFE_FADE_MAX_PCT = 50.0
# The temperatures the fits below were cycled at are 10-45 degC (LFP) and 10-60 degC (NMC),
# BLAST-Lite ``experimental_range``; outside this wider band we refuse rather than extrapolate far.
TEMP_MIN_C = -30.0
TEMP_MAX_C = 60.0
# Beyond 3 C neither fit was tested (LFP: 0.65 C charge, 1 C discharge; NMC: 1 C), and a V2G
# charger on a car pack is far below it.
C_RATE_MAX = 3.0
# The C-rate span over which ``rate`` linearises the cost (issue 19: "around 0.1-1 C").
RATE_FIT_C_MIN = 0.1
RATE_FIT_C_MAX = 1.0

_KELVIN = 273.15
_GAS_CONSTANT = 8.3144  # J/(mol K), as BLAST-Lite's Arrhenius terms use it


class Chemistry(enum.StrEnum):
    NMC = "nmc"
    LFP = "lfp"


class WearParameterError(ValueError):
    """A wear model, a cycle or a SoC trace that cannot be priced; ``reasons`` says each fault."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons))


@dataclass(frozen=True, slots=True)
class WearRate:
    """What the planner charges itself for taking energy out of the battery.

    Money per kWh discharged *from the battery* (before the inverter's losses) at a C-rate of
    ``c_rate`` (power / capacity): ``base_per_kwh + per_c_rate_per_kwh * c_rate``. The recharge
    that a discharge makes necessary is part of the cycle this pays for.
    """

    base_per_kwh: float
    per_c_rate_per_kwh: float = 0.0

    def per_kwh(self, c_rate: float) -> float:
        return self.base_per_kwh + self.per_c_rate_per_kwh * abs(c_rate)


@dataclass(frozen=True, slots=True)
class Cycle:
    """One rainflow range: its depth and mean as fractions of capacity, counted 0.5 or 1.0."""

    depth_frac: float
    mean_soc_frac: float
    count: float  # 0.5 (half cycle) or 1.0 (full cycle)

    @property
    def equivalent_full_cycles(self) -> float:
        """BLAST-Lite's EFC (sum of |dSoC| / 2): a full cycle of depth d moves 2d, a half d."""
        return self.count * self.depth_frac


@dataclass(frozen=True, slots=True)
class WearCost:
    """The wear of one SoC trace (a session, a simulated year)."""

    fade_pct: float  # capacity lost, % of the new pack's capacity
    cost: float  # in the replacement cost's currency
    equivalent_full_cycles: float
    cycles: int  # ranges rainflow counted; a half cycle counts one


# --- cycle counting ------------------------------------------------------------------------------


def check_soc_trace(soc_pct: Sequence[float]) -> list[str]:
    """Reasons a SoC trace (percent) cannot be counted; empty when it can. Names the first few
    bad samples by index (a long bad trace need not list them all)."""
    values = np.asarray(soc_pct, dtype=float)
    with np.errstate(invalid="ignore"):  # NaN compares False; it is caught by isfinite
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0.0) | (values > 100.0))
    reasons: list[str] = []
    for index in bad[:5]:
        value = float(values[index])
        if math.isfinite(value):
            reasons.append(f"soc_pct[{index}] = {value:g} is outside 0..100 %")
        else:
            reasons.append(f"soc_pct[{index}] is {value}: not a number")
    if len(bad) > 5:
        reasons.append(f"({len(bad) - 5} more bad samples)")
    return reasons


def turning_points(soc_pct: Sequence[float]) -> list[float]:
    """The trace's peaks and valleys, with its first and last points (ASTM E1049-85's
    reversals: where the slope changes sign; a flat run is one point)."""
    values = np.asarray(soc_pct, dtype=float)
    if values.size == 0:
        return []
    # Drop repeats, then keep the ends and every point where the direction turns.
    moved = values[np.concatenate(([True], np.diff(values) != 0.0))]
    rising = np.diff(moved) > 0.0
    turns = np.concatenate(([True], rising[1:] != rising[:-1], [True]))
    if moved.size == 1:
        turns = turns[:1]
    return [float(v) for v in moved[turns]]


def rainflow(soc_pct: Sequence[float]) -> list[Cycle]:
    """Half and full cycles of a SoC trace (percent), by ASTM E1049-85 rainflow counting.

    The standard's steps, on the turning points: read the next point; with X the newest range and
    Y the one before it, while ``X >= Y``: if Y holds the starting point, count Y as a half cycle
    and drop its first point (the start moves on), else count Y as a full cycle and drop both its
    points. At the end each range left is a half cycle. Cycles come in the order counted.

    Raises ``WearParameterError`` for NaN or values outside 0..100 %.
    """
    reasons = check_soc_trace(soc_pct)
    if reasons:
        raise WearParameterError(reasons)
    cycles: list[Cycle] = []
    stack: list[float] = []  # stack[0] is the starting point S while it has not been discarded

    def count(first: float, second: float, times: float) -> None:
        cycles.append(
            Cycle(abs(second - first) / 100.0, (first + second) / 200.0, times),
        )

    for point in turning_points(soc_pct):
        stack.append(point)
        while len(stack) >= 3:
            newest = abs(stack[-1] - stack[-2])
            previous = abs(stack[-2] - stack[-3])
            if newest < previous:
                break
            if len(stack) == 3:  # Y = (stack[0], stack[1]) holds the starting point
                count(stack[0], stack[1], 0.5)
                del stack[0]
            else:
                count(stack[-3], stack[-2], 1.0)
                del stack[-3:-1]
    for first, second in itertools.pairwise(stack):
        count(first, second, 0.5)
    return cycles


# --- the cycle-fade laws -------------------------------------------------------------------------


def _arrhenius(temp_k: float, activation_j_per_mol: float) -> float:
    """BLAST-Lite's Arrhenius factor, 1 at 25 degC."""
    return math.exp(-(activation_j_per_mol / _GAS_CONSTANT) * (1.0 / temp_k - 1.0 / 298.15))


# NMC: the NMC622/graphite 50 Ah DENSO EV cell model of Smith et al., J. Electrochem. Soc. 168
# (2021) 100530, doi:10.1149/1945-7111/ac2ebd, with the parameter values NREL's BLAST-Lite
# implements it with (blast/models/nmc622_gr_DENSO50Ah_2021.py, commit 143df55a): cycle fade
# q = b1t * b1N * b1N_4 * EFC**0.5, where b1t is the calendar rate (SoC polynomial, Arrhenius
# 37 kJ/mol) and b1N the cycling stress sqrt(DoD * C_charge) * (1 + 2.1 SoC) plus a DoD**6 term.
# Its tests cycled 10-60 degC, DoD 10-100 %, always at 50 % mean SoC and 1 C discharge, with
# the charge rate varied: the SoC effect on cycling is the calendar term's, and the C-rate is
# the charging one (here the cycle's one C-rate stands for both: an assumption, ours).
_NMC_B1T = (-0.000197, 0.0101, -0.0157, 0.00835, -4.06e-6, 3.32e-5)  # b1t_0..b1t_5
_NMC_B1T_EA = 37000.0  # J/mol
_NMC_B1N = (3.24, 2.1, -0.099, 1.44, 0.985)  # b1N_0..b1N_4
_NMC_B1N_EA = (-58000.0, -13000.0)  # J/mol: b1N_Ea_1, b1N_Ea_2 (faster fade when colder)
_NMC_POWER = 0.5  # fade grows with the square root of EFC


def _nmc_fade_coefficient(depth: float, mean_soc: float, c_rate: float, temp_k: float) -> float:
    b0, b1, b2, b3, b4, b5 = _NMC_B1T
    s = mean_soc
    b1t = _arrhenius(temp_k, _NMC_B1T_EA) * (
        b0 + b1 * s + b2 * s**2 + b3 * s**3 + b4 * s * temp_k + b5 * max(0.0, temp_k - 328.15)
    )
    n0, n1, n2, n3, n4 = _NMC_B1N
    stress = math.sqrt(depth * c_rate)
    b1n = max(0.0, n0 * _arrhenius(temp_k, _NMC_B1N_EA[0]) * stress * (1.0 + n1 * s) + n2)
    b1n += n3 * _arrhenius(temp_k, _NMC_B1N_EA[1]) * depth**6
    return b1t * b1n * n4


# LFP: the large-format (>250 Ah) prismatic LFP/graphite cell model fitted by NREL (P. Gasper) to
# the ageing data of doi:10.1016/j.est.2023.109042, as BLAST-Lite implements it
# (blast/models/lfp_gr_250AhPrismatic_2019.py, commit 039b74dc): cycle fade q = kcyc * EFC**0.828
# with kcyc = (p4 + p5 DoD + p6 C) * (exp(p7 / T) + exp(-p8 / T)). C is BLAST-Lite's mean
# |dSoC/dt| while cycling (charge and discharge alike). No SoC term: the data showed cycling fade
# nearly the same at every mean SoC, temperature and rate tested (BLAST-Lite's notes); DoD was
# tested at 80-100 % only, so shallower cycles are the fit's extrapolation.
_LFP_P4, _LFP_P5, _LFP_P6 = 4.38e-08, 1.55e-08, 1.68e-07
_LFP_P7, _LFP_P8 = 2.19e03, 1.55e05  # K
_LFP_POWER = 0.828


def _lfp_fade_coefficient(depth: float, mean_soc: float, c_rate: float, temp_k: float) -> float:
    del mean_soc  # the fit has no SoC term (see above)
    temperature = math.exp(_LFP_P7 / temp_k) + math.exp(-_LFP_P8 / temp_k)
    return (_LFP_P4 + _LFP_P5 * depth + _LFP_P6 * c_rate) * temperature


def _check_stress(depth: float, mean_soc: float, c_rate: float, temp_c: float) -> list[str]:
    reasons: list[str] = []
    if not (math.isfinite(depth) and 0.0 <= depth <= 1.0):
        reasons.append(f"depth_frac = {depth} must be within 0..1")
    if not (math.isfinite(mean_soc) and 0.0 <= mean_soc <= 1.0):
        reasons.append(f"mean_soc_frac = {mean_soc} must be within 0..1")
    if not (math.isfinite(c_rate) and 0.0 <= c_rate <= C_RATE_MAX):
        reasons.append(f"c_rate = {c_rate} must be within 0..{C_RATE_MAX:g} C (magnitude)")
    if not (math.isfinite(temp_c) and TEMP_MIN_C <= temp_c <= TEMP_MAX_C):
        reasons.append(
            f"temp_c = {temp_c} must be within {TEMP_MIN_C:g}..{TEMP_MAX_C:g} degC",
        )
    return reasons


# --- the model -----------------------------------------------------------------------------------


def check_wear(
    chemistry: object,
    capacity_kwh: float,
    replacement_cost: float,
    end_of_life_fade_pct: float = 20.0,
) -> list[str]:
    """Reasons a wear configuration is unusable; empty when it is good (the config uses this)."""
    reasons: list[str] = []
    if chemistry not in tuple(Chemistry):
        known = ", ".join(c.value for c in Chemistry)
        reasons.append(f"chemistry {chemistry!r} is not one of {known}")
    if not (math.isfinite(capacity_kwh) and CAPACITY_MIN_KWH <= capacity_kwh <= CAPACITY_MAX_KWH):
        reasons.append(
            f"capacity_kwh = {capacity_kwh} must be within "
            f"{CAPACITY_MIN_KWH:g}..{CAPACITY_MAX_KWH:g} kWh",
        )
    if not math.isfinite(replacement_cost):
        reasons.append(f"replacement_cost = {replacement_cost} is not a number")
    elif replacement_cost < 0:
        reasons.append(f"replacement_cost = {replacement_cost:g} is negative")
    if not (math.isfinite(end_of_life_fade_pct) and end_of_life_fade_pct > 0):
        reasons.append(f"end_of_life_fade_pct = {end_of_life_fade_pct} must be above 0 %")
    elif end_of_life_fade_pct > END_OF_LIFE_FADE_MAX_PCT:
        reasons.append(
            f"end_of_life_fade_pct = {end_of_life_fade_pct:g} is above "
            f"{END_OF_LIFE_FADE_MAX_PCT:g} %: the fade laws are fitted to far less",
        )
    return reasons


@dataclass(frozen=True, slots=True)
class WearModel:
    """Capacity fade and its cost for one pack. Raises ``WearParameterError`` (with every reason)
    for a bad configuration."""

    chemistry: Chemistry
    capacity_kwh: float
    replacement_cost: float  # money for a new pack (the owner's currency)
    end_of_life_fade_pct: float = 20.0  # the pack is worn out at this capacity loss

    def __post_init__(self) -> None:
        reasons = check_wear(
            self.chemistry, self.capacity_kwh, self.replacement_cost, self.end_of_life_fade_pct
        )
        if reasons:
            raise WearParameterError(reasons)
        # A config may hand over the plain string ("nmc"); keep the enum so checks are by identity.
        object.__setattr__(self, "chemistry", Chemistry(self.chemistry))

    def life_efc(
        self,
        depth_frac: float,
        mean_soc_frac: float = 0.5,
        c_rate: float = 0.1,
        temp_c: float = 25.0,
    ) -> float:
        """Equivalent full cycles to end of life by cycling alone, every cycle like this one
        (``math.inf`` when the law gives no fade)."""
        reasons = _check_stress(depth_frac, mean_soc_frac, c_rate, temp_c)
        if reasons:
            raise WearParameterError(reasons)
        temp_k = temp_c + _KELVIN
        if self.chemistry is Chemistry.NMC:
            k = _nmc_fade_coefficient(depth_frac, mean_soc_frac, c_rate, temp_k)
            power = _NMC_POWER
        else:
            k = _lfp_fade_coefficient(depth_frac, mean_soc_frac, c_rate, temp_k)
            power = _LFP_POWER
        if k <= 0.0:
            # NMC's calendar polynomial dips below zero for a mean SoC under about 2 % (b1t_0 < 0);
            # a cycle there does not heal the pack: no fade (our guard, not the source's).
            return math.inf
        # Solve end_of_life = k * EFC**power for EFC.
        return float((self.end_of_life_fade_pct / 100.0 / k) ** (1.0 / power))

    def cycle_fade_pct(self, cycle: Cycle, c_rate: float = 0.1, temp_c: float = 25.0) -> float:
        """Capacity lost to one rainflow cycle, % of the new capacity (linear damage)."""
        if cycle.depth_frac == 0.0:
            return 0.0
        life = self.life_efc(cycle.depth_frac, cycle.mean_soc_frac, c_rate, temp_c)
        return self.end_of_life_fade_pct * cycle.equivalent_full_cycles / life

    def cost_of_fade(self, fade_pct: float) -> float:
        """The replacement cost spread evenly over the fade the pack may lose."""
        return self.replacement_cost * fade_pct / self.end_of_life_fade_pct

    def trace_cost(
        self, soc_pct: Sequence[float], c_rate: float = 0.1, temp_c: float = 25.0
    ) -> WearCost:
        """Rainflow-count a SoC trace (percent) and price each cycle at one C-rate.

        Raises ``WearParameterError`` for a bad trace, C-rate or temperature."""
        reasons = _check_stress(0.0, 0.0, c_rate, temp_c)
        if reasons:
            raise WearParameterError(reasons)
        cycles = rainflow(soc_pct)
        fade_pct = sum(self.cycle_fade_pct(cycle, c_rate, temp_c) for cycle in cycles)
        return WearCost(
            fade_pct=fade_pct,
            cost=self.cost_of_fade(fade_pct),
            equivalent_full_cycles=sum(cycle.equivalent_full_cycles for cycle in cycles),
            cycles=len(cycles),
        )

    def cost_per_kwh(
        self,
        depth_frac: float = 0.5,
        mean_soc_frac: float = 0.5,
        c_rate: float = 0.1,
        temp_c: float = 25.0,
    ) -> float:
        """Money per kWh discharged in full cycles of this depth: one cycle costs
        ``replacement * depth / life_efc`` and discharges ``depth * capacity``."""
        life = self.life_efc(depth_frac, mean_soc_frac, c_rate, temp_c)
        return self.replacement_cost / (life * self.capacity_kwh)

    def rate(
        self, depth_frac: float = 0.5, mean_soc_frac: float = 0.5, temp_c: float = 25.0
    ) -> WearRate:
        """The planner's wear price: ``cost_per_kwh`` as a line in the C-rate, fitted by least
        squares over 0.1-1 C, with the base and slope held at zero or above (a price is never
        negative; the NMC law's square root bends the line's foot below zero)."""
        c_rates = np.linspace(RATE_FIT_C_MIN, RATE_FIT_C_MAX, 19)
        costs = np.array(
            [self.cost_per_kwh(depth_frac, mean_soc_frac, float(c), temp_c) for c in c_rates]
        )
        slope, base = (float(v) for v in np.polyfit(c_rates, costs, 1))
        if base < 0.0:  # refit through the origin
            base = 0.0
            slope = float(np.dot(c_rates, costs) / np.dot(c_rates, c_rates))
        if slope < 0.0:  # cannot happen with these laws (cost rises with C); keep it a price
            slope, base = 0.0, float(costs.mean())
        return WearRate(base_per_kwh=base, per_c_rate_per_kwh=slope)


def sanity_table(capacity_kwh: float = 60.0, replacement_cost: float = 60000.0) -> str:
    """The figures docs/economics.md quotes: cost per kWh discharged and cycles to end of life,
    per chemistry, depth and C-rate, at 50 % mean SoC and 25 degC (text, for a terminal)."""
    lines = [
        f"{capacity_kwh:g} kWh pack, replacement {replacement_cost:,.0f}, end of life at 20 % fade,"
        " mean SoC 50 %, 25 degC",
        f"{'chem':<5}{'depth':>6}{'C-rate':>8}{'per kWh':>10}{'EFC to EOL':>12}{'cycles':>9}",
    ]
    for chemistry in Chemistry:
        model = WearModel(chemistry, capacity_kwh, replacement_cost)
        for depth in (0.2, 0.5, 0.8, 1.0):
            for c_rate in (0.1, 0.5, 1.0):
                life = model.life_efc(depth, 0.5, c_rate)
                per_kwh = model.cost_per_kwh(depth, 0.5, c_rate)
                lines.append(
                    f"{chemistry.value:<5}{depth:>6.0%}{c_rate:>8.1f}{per_kwh:>10.3f}"
                    f"{life:>12,.0f}{life / depth:>9,.0f}"
                )
        for depth in (0.2, 0.5, 0.8):
            fit = model.rate(depth)
            lines.append(
                f"{chemistry.value:<5}{depth:>6.0%}  rate(): {fit.base_per_kwh:.4f} + "
                f"{fit.per_c_rate_per_kwh:.4f} * C per kWh"
            )
    return "\n".join(lines)
