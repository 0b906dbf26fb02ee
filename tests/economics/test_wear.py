"""The battery wear model (controller/economics/wear.py, docs/economics.md "Battery wear").

Rainflow counting is checked against ASTM E1049-85's worked example and hand-counted traces; the
fade laws against the directions their sources show (deeper, faster, fuller costs more) and
against public cycle-life figures; the money against the replacement cost it spreads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.economics.wear import (
    Chemistry,
    Cycle,
    WearCost,
    WearModel,
    WearParameterError,
    WearRate,
    check_wear,
    rainflow,
    turning_points,
)

CNY_PACK = 60000.0  # a 60 kWh pack, issue 19's sanity figures
EUR_PACK = 8000.0


def model(chemistry: Chemistry, replacement_cost: float = CNY_PACK) -> WearModel:
    return WearModel(chemistry, capacity_kwh=60.0, replacement_cost=replacement_cost)


def ranges(cycles: list[Cycle]) -> dict[float, float]:
    """Cycle counts per range, in SoC percent points."""
    counts: dict[float, float] = {}
    for cycle in cycles:
        depth_pct = round(cycle.depth_frac * 100, 9)
        counts[depth_pct] = counts.get(depth_pct, 0.0) + cycle.count
    return counts


def strictly_increasing(values: Sequence[float]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


# --- rainflow -------------------------------------------------------------------------------------


def test_rainflow_counts_the_astm_e1049_example() -> None:
    """ASTM E1049-85's rainflow example (-2, 1, -3, 5, -1, 3, -4, 4, -2), hand-counted by its
    rules: ranges 3: 0.5, 4: 1.5, 6: 0.5, 8: 1.0, 9: 0.5 cycles (shifted by 50 to be a SoC)."""
    trace = [50 + v for v in (-2, 1, -3, 5, -1, 3, -4, 4, -2)]
    cycles = rainflow(trace)
    assert ranges(cycles) == {3: 0.5, 4: 1.5, 6: 0.5, 8: 1.0, 9: 0.5}
    # The only full cycle is -1..3, mean 1 (SoC 51 %).
    [full] = [c for c in cycles if c.count == 1.0]
    assert full.depth_frac == pytest.approx(0.04)
    assert full.mean_soc_frac == pytest.approx(0.51)


def test_rainflow_finds_a_full_cycle_inside_a_discharge() -> None:
    """0 -> 60 -> 40 -> 50 -> 10: the 40..50 wiggle is a full cycle; 0..60 and 60..10 halves."""
    cycles = rainflow([0, 60, 40, 50, 10])
    assert [(round(c.depth_frac, 9), c.mean_soc_frac, c.count) for c in cycles] == [
        (0.1, 0.45, 1.0),
        (0.6, 0.3, 0.5),
        (0.5, 0.35, 0.5),
    ]


def test_rainflow_of_repeated_swings_is_half_cycles_from_the_start() -> None:
    """20, 80, 20, 80, 20: each swing holds the starting point, so four half cycles of 60."""
    cycles = rainflow([20, 80, 20, 80, 20])
    assert ranges(cycles) == {60: 2.0}
    assert all(c.count == 0.5 and c.mean_soc_frac == pytest.approx(0.5) for c in cycles)


def test_turning_points_drop_flat_runs_and_keep_the_ends() -> None:
    """Repeated and still-rising samples are not reversals; the first and last points are."""
    assert turning_points([50, 50, 60, 70, 70, 65, 65, 80]) == [50, 70, 65, 80]
    assert turning_points([40, 40, 40]) == [40]
    assert turning_points([]) == []


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=60))
def test_rainflow_conserves_the_swing_of_the_trace(trace: list[float]) -> None:
    """Every rainflow count accounts for the trace's travel once: sum 2 * count * depth equals
    the sum of |dSoC| (so EFC = travel / 2, BLAST-Lite's definition)."""
    travel_frac = sum(abs(b - a) for a, b in itertools.pairwise(trace)) / 100.0
    cycles = rainflow(trace)
    assert sum(2 * c.count * c.depth_frac for c in cycles) == pytest.approx(travel_frac, abs=1e-9)
    assert all(c.count in (0.5, 1.0) and 0.0 < c.depth_frac <= 1.0 for c in cycles)
    assert all(0.0 <= c.mean_soc_frac <= 1.0 for c in cycles)


def test_rainflow_refuses_a_bad_trace_with_the_sample_named() -> None:
    """A NaN or an out-of-range SoC is refused with its index, not counted."""
    with pytest.raises(WearParameterError, match=r"soc_pct\[2\] is nan"):
        rainflow([50.0, 60.0, math.nan])
    with pytest.raises(WearParameterError, match=r"soc_pct\[1\] = 101.5 is outside 0..100"):
        rainflow([50.0, 101.5])
    with pytest.raises(WearParameterError, match=r"soc_pct\[0\] = -1 is outside"):
        model(Chemistry.NMC).trace_cost([-1.0, 50.0])


# --- trace cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chemistry", list(Chemistry))
@pytest.mark.parametrize("trace", [[], [55.0], [55.0] * 500])
def test_a_flat_trace_costs_nothing(chemistry: Chemistry, trace: list[float]) -> None:
    """No SoC movement: no cycle, no fade, no money."""
    assert model(chemistry).trace_cost(trace) == WearCost(0.0, 0.0, 0.0, 0)


@pytest.mark.parametrize("chemistry", list(Chemistry))
def test_a_discharge_and_recharge_costs_its_cycle(chemistry: Chemistry) -> None:
    """80 -> 50 -> 80 is two half cycles of 30 % around 65 %: 0.3 EFC, priced at the cost per
    kWh of that cycle times the 18 kWh discharged."""
    pack = model(chemistry)
    cost = pack.trace_cost([80.0, 70.0, 60.0, 50.0, 60.0, 70.0, 80.0], c_rate=0.2)
    assert cost.cycles == 2
    assert cost.equivalent_full_cycles == pytest.approx(0.3)
    assert cost.cost == pytest.approx(pack.cost_per_kwh(0.3, 0.65, 0.2) * 0.3 * 60.0)
    assert cost.fade_pct == pytest.approx(20.0 * cost.cost / CNY_PACK)


@pytest.mark.parametrize("chemistry", list(Chemistry))
def test_cost_is_linear_in_the_replacement_cost(chemistry: Chemistry) -> None:
    """Twice the pack price, twice the wear cost and rate; the fade does not depend on money."""
    trace = [30.0, 90.0, 40.0, 70.0, 20.0, 85.0]
    cheap, dear, free = (model(chemistry, cost) for cost in (EUR_PACK, 2 * EUR_PACK, 0.0))
    a, b = cheap.trace_cost(trace, 0.3), dear.trace_cost(trace, 0.3)
    assert b.cost == pytest.approx(2 * a.cost)
    assert b.fade_pct == pytest.approx(a.fade_pct)
    assert dear.rate().base_per_kwh == pytest.approx(2 * cheap.rate().base_per_kwh)
    assert dear.rate().per_c_rate_per_kwh == pytest.approx(2 * cheap.rate().per_c_rate_per_kwh)
    assert free.trace_cost(trace).cost == 0.0
    assert cheap.cost_of_fade(20.0) == EUR_PACK  # the whole pack at end of life


# --- directions of the fade laws ------------------------------------------------------------------


@pytest.mark.parametrize("chemistry", list(Chemistry))
def test_deeper_cycles_wear_more(chemistry: Chemistry) -> None:
    """Per cycle and per kWh discharged, a deeper cycle (same mean SoC) costs more."""
    pack = model(chemistry)
    depths = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    fades = [pack.cycle_fade_pct(Cycle(d, 0.5, 1.0), 0.3) for d in depths]
    per_kwh = [pack.cost_per_kwh(d, 0.5, 0.3) for d in depths]
    assert strictly_increasing(fades)
    assert strictly_increasing(per_kwh)


@pytest.mark.parametrize("chemistry", list(Chemistry))
def test_a_higher_c_rate_costs_more(chemistry: Chemistry) -> None:
    """Faster cycling wears more, in the law, the trace cost and the planner's rate."""
    pack = model(chemistry)
    costs = [pack.cost_per_kwh(0.5, 0.5, c) for c in (0.05, 0.1, 0.3, 0.5, 1.0, 2.0)]
    assert strictly_increasing(costs)
    trace = [80.0, 30.0, 80.0]
    assert pack.trace_cost(trace, c_rate=0.5).cost > pack.trace_cost(trace, c_rate=0.1).cost
    assert pack.rate().per_c_rate_per_kwh > 0


def test_a_high_soc_window_wears_nmc_more() -> None:
    """NMC (Smith 2021): the same 20 % cycle around 80 % SoC costs more than around 50 %;
    the LFP fit has no SoC term, so there it costs the same."""
    nmc, lfp = model(Chemistry.NMC), model(Chemistry.LFP)
    assert nmc.cost_per_kwh(0.2, 0.8, 0.2) > 1.1 * nmc.cost_per_kwh(0.2, 0.5, 0.2)
    assert lfp.cost_per_kwh(0.2, 0.8, 0.2) == lfp.cost_per_kwh(0.2, 0.5, 0.2)


def test_a_cycle_near_empty_never_heals_the_pack() -> None:
    """The NMC calendar polynomial is negative below about 2 % SoC; a cycle there costs 0."""
    nmc = model(Chemistry.NMC)
    assert nmc.cycle_fade_pct(Cycle(0.02, 0.01, 1.0)) == 0.0
    assert nmc.trace_cost([0.0, 2.0, 0.0]).cost == 0.0
    assert nmc.cycle_fade_pct(Cycle(0.02, 0.05, 1.0)) > 0.0


@pytest.mark.parametrize("depth", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("c_rate", [0.2, 0.5, 1.0])
def test_lfp_wears_cheaper_than_nmc_at_equal_pack_cost(depth: float, c_rate: float) -> None:
    """Per kWh, LFP is cheaper than NMC for half-deep and deeper cycles at 0.2 C and above
    (below, the NMC law's sqrt(DoD * C) makes shallow slow NMC cycles cheaper: see the doc)."""
    assert model(Chemistry.LFP).cost_per_kwh(depth, 0.5, c_rate) < model(
        Chemistry.NMC
    ).cost_per_kwh(depth, 0.5, c_rate)
    assert model(Chemistry.LFP).rate(depth).per_kwh(c_rate) < model(Chemistry.NMC).rate(
        depth
    ).per_kwh(c_rate)


def test_cycle_life_agrees_with_public_figures_at_80_percent_depth() -> None:
    """LFP: several thousand cycles at 80 % DoD (0.5 C: about 4,750); NMC: of the order of
    1,000 (0.5 C: about 1,380; 1 C: about 710): the figures in docs/economics.md."""
    nmc, lfp = model(Chemistry.NMC), model(Chemistry.LFP)
    assert 3000 < lfp.life_efc(0.8, 0.5, 0.5) / 0.8 < 6000
    assert 2000 < lfp.life_efc(0.8, 0.5, 1.0) / 0.8 < 3500
    assert 1000 < nmc.life_efc(0.8, 0.5, 0.5) / 0.8 < 2000
    assert 500 < nmc.life_efc(0.8, 0.5, 1.0) / 0.8 < 1000


# --- the planner's rate ---------------------------------------------------------------------------


@pytest.mark.parametrize("chemistry", list(Chemistry))
@pytest.mark.parametrize("depth", [0.2, 0.5, 0.8])
def test_the_rate_follows_the_law_over_0_1_to_1_c(chemistry: Chemistry, depth: float) -> None:
    """The planner's line stays within 12 % of the model between 0.2 and 1 C (25 % at 0.1 C,
    where the NMC law bends) and is never negative."""
    pack = model(chemistry)
    fit = pack.rate(depth)
    assert fit.base_per_kwh >= 0
    assert fit.per_c_rate_per_kwh > 0
    for c_rate in (0.2, 0.3, 0.5, 0.7, 1.0):
        exact = pack.cost_per_kwh(depth, 0.5, c_rate)
        assert fit.per_kwh(c_rate) == pytest.approx(exact, rel=0.12)
    assert fit.per_kwh(0.1) == pytest.approx(pack.cost_per_kwh(depth, 0.5, 0.1), rel=0.25)
    assert fit.per_kwh(-0.5) == fit.per_kwh(0.5)  # a discharge's C-rate may come signed


def test_wear_rate_keeps_its_shape_for_the_planner() -> None:
    """WearRate is base + slope * |C|, with the slope optional."""
    assert WearRate(0.1).per_kwh(0.7) == 0.1
    assert WearRate(0.1, 0.5).per_kwh(-0.2) == pytest.approx(0.2)


# --- configuration --------------------------------------------------------------------------------


def test_a_good_configuration_has_no_reasons() -> None:
    """A 60 kWh NMC pack at 60,000, worn out at 20 %, passes; a plain string chemistry is taken."""
    assert check_wear("nmc", 60.0, 60000.0, 20.0) == []
    assert WearModel("lfp", 60.0, 1.0).chemistry is Chemistry.LFP  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("nmc", 60.0, -1.0), "replacement_cost = -1 is negative"),
        (("nmc", 60.0, math.nan), "replacement_cost = nan is not a number"),
        (("nmc", 4.9, 1000.0), "capacity_kwh = 4.9 must be within 5..250 kWh"),
        (("nmc", 250.5, 1000.0), "capacity_kwh = 250.5 must be within 5..250 kWh"),
        (("nmc", math.nan, 1000.0), "capacity_kwh = nan must be within 5..250 kWh"),
        (("lead-acid", 60.0, 1000.0), "chemistry 'lead-acid' is not one of nmc, lfp"),
        (("lfp", 60.0, 1000.0, 0.0), "end_of_life_fade_pct = 0.0 must be above 0 %"),
        (("lfp", 60.0, 1000.0, math.inf), "end_of_life_fade_pct = inf must be above 0 %"),
        (
            ("lfp", 60.0, 1000.0, 60.0),
            "end_of_life_fade_pct = 60 is above 50 %: the fade laws are fitted to far less",
        ),
    ],
)
def test_bad_configurations_are_refused_with_a_reason(
    args: tuple[object, ...], reason: str
) -> None:
    """Each bad value gets its own reason, and the model refuses to be built."""
    assert check_wear(*args) == [reason]  # type: ignore[arg-type]
    with pytest.raises(WearParameterError) as refused:
        WearModel(*args)  # type: ignore[arg-type]
    assert refused.value.reasons == (reason,)


def test_every_fault_is_reported_at_once() -> None:
    """A configuration with three faults lists three reasons."""
    with pytest.raises(WearParameterError) as refused:
        WearModel(Chemistry.NMC, capacity_kwh=1.0, replacement_cost=-5.0, end_of_life_fade_pct=-1)
    assert len(refused.value.reasons) == 3


@pytest.mark.parametrize(
    ("c_rate", "temp_c", "reason"),
    [
        (-0.1, 25.0, "c_rate = -0.1 must be within 0..3 C"),
        (math.nan, 25.0, "c_rate = nan must be within 0..3 C"),
        (3.5, 25.0, "c_rate = 3.5 must be within 0..3 C"),
        (0.2, 70.0, "temp_c = 70.0 must be within -30..60 degC"),
        (0.2, math.nan, "temp_c = nan must be within -30..60 degC"),
    ],
)
def test_bad_stress_is_refused_with_a_reason(c_rate: float, temp_c: float, reason: str) -> None:
    """A C-rate or temperature the laws cannot take is refused, for a trace and for a cycle."""
    pack = model(Chemistry.LFP)
    with pytest.raises(WearParameterError, match=reason):
        pack.trace_cost([80.0, 40.0], c_rate=c_rate, temp_c=temp_c)
    with pytest.raises(WearParameterError, match=reason):
        pack.cycle_fade_pct(Cycle(0.4, 0.6, 0.5), c_rate=c_rate, temp_c=temp_c)
