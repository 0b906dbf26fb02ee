"""A simulated year of plug-ins (issue 19): the owner's money and promises, policy by policy.

    python -m bench.year                      # 365 nights, seed 19: bench/year.json, year.png
    python -m bench.year --nights 14 --seed 3 --out /tmp/year

Every night a car arrives (17:00-21:00, 25-75 %) and leaves the next morning (06:30-08:30) with
a target of 80 %; a peak/valley tariff and about 60 peak events a year set the prices
(``bench/yearnights.py``). Each policy (``bench/yearstrategies.py``) drives the real core
(``controller.core.safety.decide``) against the plant of ``bench/yearplant.py`` in simulated
time, one decision every ``STEP_S``: no sleeping and no IO but the files written at the end.

Per night and policy the accounting takes the power that truly flowed at the grid: import cost
and export revenue at the band's price, a peak event's bonus on export up to its power window,
and the battery's wear cost from the true SoC trace (``WearModel.trace_cost``). The promises are
judged on the true SoC: at departure against the target, and at every step against the floor.
Every night starts from the same state for every policy, and the plant's noise is the same
sequence for all of them (one generator per night), so differences are the policies'.
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import datetime as dt
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from bench.yearnights import (
    GRID_MIN,
    PEAK_BAND,
    SITE_ZONE,
    TARIFF_BANDS,
    Night,
    band_slots,
    make_nights,
)
from bench.yearplant import Plant, PlantConfig
from bench.yearstrategies import (
    ASSUMED_EFFICIENCY,
    CHEMISTRY,
    MAX_POWER_W,
    REPLACEMENT_COST,
    SOC_FLOOR_PCT,
    TARGET_SOC_PCT,
    WEAR_BUDGET_KWH_PER_DAY,
    AtOnce,
    FixedWindows,
    Observation,
    Planned,
    Strategy,
    wear_model,
)
from controller.core.safety import CoreState, Inputs, Now, decide
from controller.core.snapshots import InverterState, VehiclePhase, VehicleState

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench"
STEP_S = 180.0
DEFAULT_SEED = 19
CURRENCY = "CNY"
# Generous vehicle limits: the charger's 7 kW binds, not the car (CHAdeMO cars ask 100+ A).
VEHICLE_CURRENT_LIMIT_A = 125.0

# The wear cost of a night: its true SoC trace (%) and the C-rate the battery moved at.
WearCost = Callable[[Sequence[float], float], float]
# The C-rate priced when nothing moved (the trace then has no cycles: any value gives 0).
IDLE_C_RATE = 0.1


# --- prices of a night ----------------------------------------------------------------------------


class NightPrices:
    """The tariff's bands and the night's events, looked up by time (seconds since the epoch)."""

    def __init__(self, night: Night) -> None:
        bands = band_slots(night.arrival, night.departure)
        self._starts_s = [slot.start.timestamp() for slot, _ in bands]
        self._bands = bands
        self._events = [
            (e.start.timestamp(), e.end.timestamp(), e.bonus_per_kwh, e.power_w)
            for e in night.events
        ]

    def at(self, t_s: float) -> tuple[float, float, bool]:
        """Import and export price per kWh at ``t_s``, and whether it is in a peak band."""
        slot, name = self._bands[bisect.bisect_right(self._starts_s, t_s) - 1]
        return slot.import_per_kwh, slot.export_per_kwh, name == PEAK_BAND

    def event_at(self, t_s: float) -> tuple[float, float] | None:
        """The bonus per kWh and its power window (W; inf: none) of an event running at
        ``t_s``."""
        for start_s, end_s, bonus, power_w in self._events:
            if start_s <= t_s < end_s:
                return bonus, math.inf if power_w is None else power_w
        return None


# --- one night ------------------------------------------------------------------------------------


@dataclass(slots=True)
class NightResult:
    """What one policy did on one night. Money in ``CURRENCY``, energy in kWh."""

    night: int
    strategy: str
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    import_cost: float = 0.0
    export_revenue: float = 0.0
    bonus_revenue: float = 0.0
    wear_cost: float = 0.0
    battery_in_kwh: float = 0.0
    battery_out_kwh: float = 0.0
    peak_import_kwh: float = 0.0
    peak_export_kwh: float = 0.0
    event_export_kwh: float = 0.0
    arrival_soc_pct: float = 0.0
    departure_soc_pct: float = 0.0
    target_met: bool = False
    floor_breach_steps: int = 0  # steps that discharged with the true SoC ending below the floor
    min_soc_discharging_pct: float = math.inf  # lowest true SoC after a discharging step
    decisions: int = 0
    plans: int = 0  # plans the strategy made (planning strategies)

    @property
    def net(self) -> float:
        return self.export_revenue + self.bonus_revenue - self.import_cost - self.wear_cost


@dataclass(slots=True)
class Trace:
    """One night step by step (for the plot)."""

    hours: list[float] = field(default_factory=list)  # since arrival
    power_w: list[float] = field(default_factory=list)
    soc_pct: list[float] = field(default_factory=list)
    import_per_kwh: list[float] = field(default_factory=list)
    export_per_kwh: list[float] = field(default_factory=list)  # event bonus included


def simulate_night(
    night: Night,
    strategy: Strategy,
    *,
    plant_config: PlantConfig,
    step_s: float,
    noise_seed: str,
    wear_cost: WearCost,
    trace: Trace | None = None,
) -> NightResult:
    """Drive one plug-in through the core and the plant, and account for it."""
    policy = strategy.policy(night)
    session = strategy.session(night, policy)
    plant = Plant(plant_config, night.arrival_soc_pct, random.Random(noise_seed))  # noqa: S311  a simulation
    prices = NightPrices(night)
    result = NightResult(night.index, strategy.name, arrival_soc_pct=night.arrival_soc_pct)
    state = CoreState()
    soc_trace = [plant.soc_pct]
    moving_steps = 0
    steps = round((night.departure - night.arrival).total_seconds() / step_s)
    hours_per_step = step_s / 3600.0
    capacity_kwh = plant_config.capacity_kwh
    start_s = night.arrival.timestamp()
    for k in range(steps):
        now_s = k * step_s
        wall = night.arrival + dt.timedelta(seconds=now_s)
        reported_pct = plant.reported_soc_pct
        vehicle = VehicleState(
            observed_at_s=now_s,
            phase=VehiclePhase.ENERGY_TRANSFER,
            protocol="chademo",
            soc_pct=reported_pct,
            pack_voltage_v=plant_config.pack_voltage_v,
            charge_current_limit_a=VEHICLE_CURRENT_LIMIT_A,
            discharge_current_limit_a=VEHICLE_CURRENT_LIMIT_A,
            capacity_kwh=capacity_kwh,
            charge_permitted=True,
            discharge_permitted=True,
        )
        inverter = InverterState(
            observed_at_s=now_s,
            reachable=True,
            enabled=True,
            measured_power_w=plant.measured_power_w,
            dc_voltage_v=plant_config.pack_voltage_v,
        )
        seen = Observation(
            wall=wall,
            reported_soc_pct=reported_pct,
            true_soc_pct=plant.soc_pct,
            capacity_kwh=capacity_kwh,
            # As the daemon passes it: the core's count, if it is of today.
            discharged_today_kwh=(
                state.discharged_today_wh / 1000.0 if state.wear_day == wall.date() else 0.0
            ),
            departure_at=state.departure_at,
        )
        inputs = Inputs(vehicle=vehicle, inverter=inverter, plan=session.plan(seen))
        decision, state = decide(inputs, state, Now(monotonic_s=now_s, wall=wall), policy)
        flow = plant.step(decision.command.power_w, step_s)
        _account(result, prices, start_s + now_s, flow.power_w, hours_per_step)
        if flow.battery_delta_kwh >= 0:
            result.battery_in_kwh += flow.battery_delta_kwh
        else:
            result.battery_out_kwh -= flow.battery_delta_kwh
            result.min_soc_discharging_pct = min(result.min_soc_discharging_pct, plant.soc_pct)
            if plant.soc_pct < SOC_FLOOR_PCT:
                result.floor_breach_steps += 1
        soc_trace.append(plant.soc_pct)
        moving_steps += flow.battery_delta_kwh != 0.0
        if trace is not None:
            import_price, export_price, _ = prices.at(start_s + now_s)
            event = prices.event_at(start_s + now_s)
            trace.hours.append(now_s / 3600.0)
            trace.power_w.append(flow.power_w)
            trace.soc_pct.append(plant.soc_pct)
            trace.import_per_kwh.append(import_price)
            trace.export_per_kwh.append(export_price + (event[0] if event else 0.0))
    result.decisions = steps
    result.plans = session.replans
    result.departure_soc_pct = plant.soc_pct
    result.target_met = plant.soc_pct >= TARGET_SOC_PCT
    # The mean C-rate while energy moved (the wear model prices a trace at one C-rate).
    moved_h = moving_steps * hours_per_step
    throughput_kwh = result.battery_in_kwh + result.battery_out_kwh
    c_rate = throughput_kwh / moved_h / capacity_kwh if moved_h > 0 else IDLE_C_RATE
    result.wear_cost = wear_cost(soc_trace, c_rate)
    return result


def _account(
    result: NightResult, prices: NightPrices, t_s: float, power_w: float, hours: float
) -> None:
    import_price, export_price, peak = prices.at(t_s)
    energy_kwh = abs(power_w) / 1000.0 * hours
    if power_w >= 0:
        result.import_kwh += energy_kwh
        result.import_cost += energy_kwh * import_price
        if peak:
            result.peak_import_kwh += energy_kwh
        return
    result.export_kwh += energy_kwh
    result.export_revenue += energy_kwh * export_price
    if peak:
        result.peak_export_kwh += energy_kwh
    event = prices.event_at(t_s)
    if event is not None:
        bonus_per_kwh, window_w = event
        result.event_export_kwh += energy_kwh
        result.bonus_revenue += min(-power_w, window_w) / 1000.0 * hours * bonus_per_kwh


# --- the year -------------------------------------------------------------------------------------

STRATEGY_NAMES = ("optimize", "at_once", "fixed_windows", "foresight")
LABELS = {
    "optimize": "optimize (planner + core)",
    "at_once": "(a) charge at once",
    "fixed_windows": "(b) fixed windows",
    "foresight": "(c) perfect foresight",
}
# The figures summed over the nights (energy in kWh, money in CURRENCY).
_SUMMED = (
    "import_kwh",
    "export_kwh",
    "import_cost",
    "export_revenue",
    "bonus_revenue",
    "wear_cost",
    "battery_in_kwh",
    "battery_out_kwh",
    "peak_import_kwh",
    "peak_export_kwh",
    "event_export_kwh",
)


def make_strategy(name: str, step_s: float, plant: PlantConfig) -> Strategy:
    """The strategy called ``name`` (one of ``STRATEGY_NAMES``)."""
    if name == "optimize":
        return Planned(step_s, plant)
    if name == "foresight":
        return Planned(step_s, plant, foresight=True)
    if name == "at_once":
        return AtOnce(step_s)
    if name == "fixed_windows":
        return FixedWindows(step_s)
    raise ValueError(f"strategy: expected one of {', '.join(STRATEGY_NAMES)}, found {name!r}")


def wear_cost_fn(plant_config: PlantConfig) -> WearCost:
    """The battery's wear cost of a night from its true SoC trace."""
    model = wear_model(plant_config)
    return lambda trace, c_rate: model.trace_cost(trace, c_rate=c_rate).cost


def _noise_seed(seed: int, night: Night) -> str:
    # One noise sequence per night, the same for every strategy (common random numbers).
    return f"{seed}-{night.index}"


def _run_nights(
    indices: Sequence[int], nights: int, seed: int, step_s: float, names: Sequence[str]
) -> tuple[list[NightResult], float]:
    """Simulate the nights ``indices`` of the year ``(nights, seed)`` under every strategy; the
    results and the CPU time it took (this process)."""
    started_s = time.process_time()
    plant_config = PlantConfig()
    wear = wear_cost_fn(plant_config)
    year = make_nights(nights, seed)
    strategies = [make_strategy(name, step_s, plant_config) for name in names]
    results = [
        simulate_night(
            year[index],
            strategy,
            plant_config=plant_config,
            step_s=step_s,
            noise_seed=_noise_seed(seed, year[index]),
            wear_cost=wear,
        )
        for index in indices
        for strategy in strategies
    ]
    return results, time.process_time() - started_s


def _quiet_logs() -> None:
    """Only warnings and errors: a year makes some 4,000 plans, each one an info line
    (``plan made``) that a charger logs a few times a night. In the worker processes and the
    command line only: a caller's own logging (a test's) is left as it is."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _simulate_all(
    nights: int, seed: int, step_s: float, names: Sequence[str], workers: int
) -> tuple[list[NightResult], float]:
    """Every night under every strategy, shared among ``workers`` processes; the results and
    the CPU time of all processes (the run time depends on what else the machine runs)."""
    if workers <= 1:
        return _run_nights(range(nights), nights, seed, step_s, names)
    chunks = [list(range(w, nights, workers)) for w in range(workers)]
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, initializer=_quiet_logs
    ) as pool:
        futures = [pool.submit(_run_nights, chunk, nights, seed, step_s, names) for chunk in chunks]
        parts = [future.result() for future in futures]
    return [r for results, _ in parts for r in results], sum(cpu_s for _, cpu_s in parts)


def summarise(results: Sequence[NightResult], nights: int) -> dict[str, Any]:
    """One strategy's figures: totals over the nights, scaled to a year."""
    per_year = 365.0 / nights
    totals = {key: sum(getattr(r, key) for r in results) for key in _SUMMED}
    net = sum(r.net for r in results)
    throughput_kwh = totals["battery_in_kwh"] + totals["battery_out_kwh"]
    capacity_kwh = PlantConfig().capacity_kwh
    missed = [r.night for r in results if not r.target_met]
    below = [r.night for r in results if r.floor_breach_steps]
    lowest = min(r.min_soc_discharging_pct for r in results)
    return {
        "net_value_per_year": round(net * per_year, 2),
        "import_cost_per_year": round(totals["import_cost"] * per_year, 2),
        "export_revenue_per_year": round(totals["export_revenue"] * per_year, 2),
        "event_bonus_per_year": round(totals["bonus_revenue"] * per_year, 2),
        "wear_cost_per_year": round(totals["wear_cost"] * per_year, 2),
        "import_kwh_per_year": round(totals["import_kwh"] * per_year, 1),
        "export_kwh_per_year": round(totals["export_kwh"] * per_year, 1),
        "battery_throughput_kwh_per_year": round(throughput_kwh * per_year, 1),
        "equivalent_full_cycles_per_year": round(
            throughput_kwh / (2.0 * capacity_kwh) * per_year, 1
        ),
        "peak_import_kwh_per_year": round(totals["peak_import_kwh"] * per_year, 1),
        "peak_export_kwh_per_year": round(totals["peak_export_kwh"] * per_year, 1),
        "event_export_kwh_per_year": round(totals["event_export_kwh"] * per_year, 1),
        "target_met_pct": round(100.0 * (len(results) - len(missed)) / len(results), 2),
        "nights_target_missed": missed,
        "departure_soc_pct_min": round(min(r.departure_soc_pct for r in results), 2),
        "departure_soc_pct_mean": round(sum(r.departure_soc_pct for r in results) / nights, 2),
        "nights_below_floor": below,
        "steps_below_floor": sum(r.floor_breach_steps for r in results),
        "lowest_soc_discharging_pct": None if math.isinf(lowest) else round(lowest, 2),
        "decisions": sum(r.decisions for r in results),
        "plans_per_night": round(sum(r.plans for r in results) / nights, 2),
    }


def example_night(year: Sequence[Night]) -> Night:
    """The night the plot shows: the first with a peak event while the car is plugged in."""
    for night in year:
        if any(e.start >= night.arrival for e in night.events):
            return night
    return year[0]


def run(
    nights: int = 365,
    seed: int = DEFAULT_SEED,
    *,
    step_s: float = STEP_S,
    workers: int = 1,
    strategies: Sequence[str] = STRATEGY_NAMES,
) -> dict[str, Any]:
    """Simulate ``nights`` plug-ins of the year ``seed`` under each strategy; the figures."""
    if not step_s > 0 or (GRID_MIN * 60) % step_s:
        raise ValueError(
            f"step_s: expected a divisor of the scenarios' {GRID_MIN * 60} s grid, found {step_s}"
        )
    started = time.perf_counter()
    year = make_nights(nights, seed)
    results, cpu_s = _simulate_all(nights, seed, step_s, strategies, workers)
    run_time_s = time.perf_counter() - started
    by_name = {name: [r for r in results if r.strategy == name] for name in strategies}
    for rows in by_name.values():
        rows.sort(key=lambda r: r.night)
    figures = {name: summarise(rows, nights) for name, rows in by_name.items()}
    plant = PlantConfig()
    return {
        "nights": nights,
        "seed": seed,
        "step_s": step_s,
        "first_night": year[0].arrival.date().isoformat(),
        "zone": str(SITE_ZONE),
        "currency": CURRENCY,
        "workers": workers,
        "run_time_s": round(run_time_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "plant": asdict(plant),
        "owner": {
            "soc_floor_pct": SOC_FLOOR_PCT,
            "target_soc_pct": TARGET_SOC_PCT,
            "max_power_w": MAX_POWER_W,
            "wear_budget_kwh_per_day": WEAR_BUDGET_KWH_PER_DAY,
        },
        "battery": {
            "chemistry": str(CHEMISTRY),
            "replacement_cost": REPLACEMENT_COST,
            "planner_efficiency": ASSUMED_EFFICIENCY,
        },
        "tariff": [
            {
                "start": f"{start:%H:%M}",
                "end": f"{end:%H:%M}",
                "import_per_kwh": import_price,
                "export_per_kwh": export_price,
                "band": name,
            }
            for start, end, import_price, export_price, name in TARIFF_BANDS
        ],
        "peak_events": sum(len(n.events) for n in year),
        "peak_events_while_plugged_in": sum(
            1 for n in year for e in n.events if e.end > n.arrival and e.start < n.departure
        ),
        "strategies": {name: {"label": LABELS[name], **figures[name]} for name in strategies},
        "comparison": _comparison(figures, run_time_s),
        "net_per_night": {name: [round(r.net, 2) for r in rows] for name, rows in by_name.items()},
        "example_night": example_night(year).index,
    }


def _comparison(figures: dict[str, dict[str, Any]], run_time_s: float) -> dict[str, Any]:
    """The goals of issue 19, judged on the figures.

    The owner pays for the night's driving energy whatever the policy, so a net value is
    mostly negative and a ratio of two of them means nothing. A policy's *value* is its net
    value over charging at once (a): what it earns and saves by when it charges and what it
    sells. ``optimize_pct_of_foresight`` is optimize's value as a share of the foresight
    bound's (c).
    """
    out: dict[str, Any] = {"run_time_s": {"value": round(run_time_s, 1), "goal_at_most": 120}}
    for name, f in figures.items():
        out[f"{name}_target_met_pct"] = {"value": f["target_met_pct"], "goal_at_least": 100}
        out[f"{name}_nights_below_floor"] = {
            "value": len(f["nights_below_floor"]),
            "goal_at_most": 0,
        }
    if "at_once" in figures:
        base = figures["at_once"]["net_value_per_year"]
        for name, f in figures.items():
            if name != "at_once":
                value = round(f["net_value_per_year"] - base, 2)
                out[f"{name}_value_over_at_once_per_year"] = {"value": value}
        if "optimize" in figures and "foresight" in figures:
            best = figures["foresight"]["net_value_per_year"] - base
            mine = figures["optimize"]["net_value_per_year"] - base
            out["optimize_pct_of_foresight"] = {
                "value": None if best <= 0 else round(100.0 * mine / best, 1),
                "goal_at_least": 95,
            }
        if "optimize" in figures and "fixed_windows" in figures:
            out["optimize_over_fixed_windows_per_year"] = {
                "value": round(
                    figures["optimize"]["net_value_per_year"]
                    - figures["fixed_windows"]["net_value_per_year"],
                    2,
                ),
                "goal_at_least": 0,
            }
    for item in out.values():
        value, low, high = item["value"], item.get("goal_at_least"), item.get("goal_at_most")
        item["met"] = (
            None
            if value is None or (low is None and high is None)
            else (low is None or value >= low) and (high is None or value <= high)
        )
    return out


# --- outputs --------------------------------------------------------------------------------------


def example_traces(report: dict[str, Any]) -> tuple[Night, dict[str, Trace]]:
    """The example night of ``report``, step by step under each strategy."""
    nights, seed, step_s = report["nights"], report["seed"], report["step_s"]
    night = make_nights(nights, seed)[report["example_night"]]
    plant_config = PlantConfig()
    wear = wear_cost_fn(plant_config)
    traces: dict[str, Trace] = {}
    for name in report["strategies"]:
        trace = Trace()
        simulate_night(
            night,
            make_strategy(name, step_s, plant_config),
            plant_config=plant_config,
            step_s=step_s,
            noise_seed=_noise_seed(seed, night),
            wear_cost=wear,
            trace=trace,
        )
        traces[name] = trace
    return night, traces


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Cumulative net value per strategy over the year, and the example night."""
    import matplotlib as mpl  # noqa: PLC0415  # only the CLI draws; the tests need not

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    night, traces = example_traces(report)
    fig, (year_ax, price_ax, soc_ax) = plt.subplots(3, 1, figsize=(12, 11))
    outside = {"fontsize": "small", "loc": "upper left", "bbox_to_anchor": (1.08, 1.0)}
    for name, values in report["net_per_night"].items():
        running, total = [], 0.0
        for value in values:
            total += value
            running.append(total)
        year_ax.plot(range(1, len(running) + 1), running, label=LABELS[name])
    year_ax.set_xlabel("night")
    year_ax.set_ylabel(f"cumulative net value ({report['currency']})")
    year_ax.set_title(f"{report['nights']} nights, seed {report['seed']}")
    year_ax.axhline(0.0, color="grey", linewidth=0.5)
    year_ax.legend(**outside)

    first = next(iter(traces.values()))
    local = night.arrival.astimezone(SITE_ZONE)
    hours = first.hours
    price_ax.step(hours, first.import_per_kwh, where="post", color="black", label="import price")
    price_ax.step(
        hours, first.export_per_kwh, where="post", color="grey", label="export price (+ bonus)"
    )
    price_ax.set_ylabel(f"{report['currency']}/kWh")
    price_ax.set_title(
        f"night {night.index + 1}: {local:%Y-%m-%d %H:%M} to "
        f"{night.departure.astimezone(SITE_ZONE):%H:%M}, arrival {night.arrival_soc_pct:g} %"
    )
    power_ax = price_ax.twinx()
    for name, trace in traces.items():
        power_ax.plot(hours, [p / 1000.0 for p in trace.power_w], label=LABELS[name])
        soc_ax.plot(hours, trace.soc_pct, label=LABELS[name])
    power_ax.set_ylabel("power at the grid (kW, + charges)")
    power_ax.legend(**outside)
    price_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.08, 0.35))
    soc_ax.axhline(SOC_FLOOR_PCT, color="red", linestyle="--", label="floor")
    soc_ax.axhline(TARGET_SOC_PCT, color="green", linestyle="--", label="departure target")
    soc_ax.set_xlabel(f"hours since arrival ({local:%H:%M})")
    soc_ax.set_ylabel("true SoC (%)")
    soc_ax.legend(**outside)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The year's figures as a Markdown section (for docs/performance.md)."""
    currency = report["currency"]
    comparison = report["comparison"]
    lines = [
        "## A simulated year (issue 19)",
        "",
        f"`python -m bench.year --nights {report['nights']} --seed {report['seed']}`: "
        f"{report['nights']} plug-ins from {report['first_night']} ({report['zone']}), "
        f"{report['peak_events']} peak events ({report['peak_events_while_plugged_in']} while "
        f"plugged in), a decision every {report['step_s']:g} s of simulated time, "
        f"{report['run_time_s']} s on {report['workers']} process(es) ({report['cpu_s']} s of "
        f"CPU; load average {report['load_average_at_end'][0]:g} at the end). Money in "
        f"{currency} per year; value is the net value over charging at once.",
        "",
        "| policy | net value | value | wear cost | event bonus | throughput | peak export "
        "| event export | target met | nights below floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = report["strategies"].get("at_once", {}).get("net_value_per_year")
    for f in report["strategies"].values():
        value = "" if base is None else f"{f['net_value_per_year'] - base:,.0f}"
        lines.append(
            f"| {f['label']} | {f['net_value_per_year']:,.0f} | {value} "
            f"| {f['wear_cost_per_year']:,.0f} | {f['event_bonus_per_year']:,.0f} "
            f"| {f['battery_throughput_kwh_per_year']:,.0f} kWh "
            f"({f['equivalent_full_cycles_per_year']:g} cycles) "
            f"| {f['peak_export_kwh_per_year']:,.0f} kWh "
            f"| {f['event_export_kwh_per_year']:,.0f} kWh "
            f"| {f['target_met_pct']:g} % | {len(f['nights_below_floor'])} |"
        )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    goals = (
        ("optimize_target_met_pct", "optimize: departure target met (goal 100 %)", "%"),
        (
            "optimize_nights_below_floor",
            "optimize: nights with the true SoC below the floor (goal 0)",
            "",
        ),
        (
            "optimize_pct_of_foresight",
            "optimize's value as a share of perfect foresight's (goal >= 95 %)",
            "%",
        ),
        (
            "optimize_over_fixed_windows_per_year",
            "optimize over the fixed windows (goal >= 0)",
            f" {currency}",
        ),
        ("run_time_s", "run time (goal <= 120 s)", " s"),
    )
    for key, label, unit in goals:
        item = comparison.get(key)
        if item is not None:
            met = {True: "met", False: "NOT met", None: ""}[item["met"]]
            lines.append(f"| {label} | {item['value']}{unit} | {met} |")
    return "\n".join(lines) + "\n"


def _print_summary(report: dict[str, Any]) -> None:
    currency = report["currency"]
    print(
        f"{report['nights']} nights, seed {report['seed']}, step {report['step_s']:g} s, "
        f"{report['peak_events']} peak events, {report['run_time_s']} s "
        f"({report['cpu_s']} s of CPU in {report['workers']} processes, load average "
        f"{report['load_average_at_end'][0]:g})"
    )
    for f in report["strategies"].values():
        print(
            f"  {f['label']:<28} net {f['net_value_per_year']:>9.2f} {currency}/year  "
            f"wear {f['wear_cost_per_year']:>7.2f}  target met {f['target_met_pct']:g} %  "
            f"below floor {len(f['nights_below_floor'])} nights  "
            f"throughput {f['battery_throughput_kwh_per_year']:g} kWh  "
            f"peak export {f['peak_export_kwh_per_year']:g} kWh"
        )
    for key, item in report["comparison"].items():
        if key.startswith("optimize_") or key.endswith("_per_year"):
            met = "" if item["met"] is None else f" (goal met: {item['met']})"
            print(f"  {key}: {item['value']}{met}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.year", description=__doc__)
    parser.add_argument("--nights", type=int, default=365, help="plug-ins (1..365)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the year's random seed")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where year.json/.png go")
    parser.add_argument("--step-s", type=float, default=STEP_S, help="simulated seconds per step")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes (the nights are shared among them)",
    )
    args = parser.parse_args(argv)
    _quiet_logs()
    try:
        report = run(args.nights, args.seed, step_s=args.step_s, workers=args.workers)
    except ValueError as error:
        print(f"bench.year: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "year.json")
    write_plot(report, args.out / "year.png")
    _print_summary(report)
    print(f"wrote {args.out / 'year.json'} and {args.out / 'year.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
