"""The simulated year (issue 19): its plant, its scenarios, its accounting, and a short year that
keeps every promise."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from bench import year, yearstrategies
from bench.yearnights import EVENTS_PER_YEAR, SITE_ZONE, Event, Night, make_nights
from bench.yearplant import Plant, PlantConfig
from controller.config import load_config
from controller.control import policy_from_config
from controller.core.policy import FallbackMode, FallbackPolicy, OwnerPolicy, Policy

SHORT_NIGHTS = 7
SHORT_SEED = 25  # two peak events start while the car is plugged in (nights 3 and 5)


@pytest.fixture(scope="module")
def short_year() -> dict[str, Any]:
    return year.run(SHORT_NIGHTS, SHORT_SEED)


# --- the plant ----------------------------------------------------------------------------------


def test_plant_follows_a_command_one_step_late_within_the_noise() -> None:
    """The inverter delivers the previous step's command, within +-1 %."""
    plant = Plant(PlantConfig(), 50.0, random.Random(1))  # noqa: S311
    first = plant.step(5_000.0, 60.0)
    assert first.power_w == 0.0
    for _ in range(50):
        flow = plant.step(5_000.0, 60.0)
        assert 4_950.0 <= flow.power_w <= 5_050.0


def test_plant_charges_and_discharges_through_its_true_efficiency() -> None:
    """Charging stores power x 0.91; discharging takes power / 0.91 from the battery."""
    config = PlantConfig(noise_frac=0.0)
    plant = Plant(config, 50.0, random.Random(1))  # noqa: S311
    plant.step(3_600.0, 3600.0)
    flow = plant.step(-3_600.0, 3600.0)
    assert flow.battery_delta_kwh == pytest.approx(3.6 * 0.91)
    flow = plant.step(0.0, 3600.0)
    assert flow.battery_delta_kwh == pytest.approx(-3.6 / 0.91)
    assert plant.soc_pct == pytest.approx(50.0 + 100 * (3.6 * 0.91 - 3.6 / 0.91) / 60.0)


def test_plant_reports_the_soc_truncated_and_one_step_old() -> None:
    """The car reports whole percent, rounded down, as it was a step ago."""
    plant = Plant(PlantConfig(noise_frac=0.0), 50.7, random.Random(1))  # noqa: S311
    assert plant.reported_soc_pct == 50.0
    plant.step(7_000.0, 600.0)
    plant.step(7_000.0, 600.0)  # 1.17 kWh in: true SoC 52.64 %
    assert plant.soc_pct == pytest.approx(50.7 + 100 * 7.0 * 0.91 / 6 / 60)
    assert plant.reported_soc_pct == 50.0  # the SoC before this step
    plant.step(0.0, 600.0)
    assert plant.reported_soc_pct == math.floor(50.7 + 100 * 7.0 * 0.91 / 6 / 60)


def test_plant_battery_stops_at_empty_and_full() -> None:
    """The BMS takes nothing beyond full: the grid power shrinks to what it took."""
    plant = Plant(PlantConfig(noise_frac=0.0), 99.9, random.Random(1))  # noqa: S311
    plant.step(7_000.0, 3600.0)
    flow = plant.step(0.0, 3600.0)
    assert plant.soc_pct == pytest.approx(100.0)
    assert flow.power_w == pytest.approx(0.06 / 0.91 * 1000.0)


def test_plant_refuses_a_bad_configuration() -> None:
    """A bad efficiency is a clear error, not a strange year."""
    with pytest.raises(ValueError, match="charge_efficiency"):
        PlantConfig(charge_efficiency=1.2)


# --- the scenarios ------------------------------------------------------------------------------


def test_a_seed_names_one_year() -> None:
    """The same seed gives the same nights; another seed other nights."""
    assert make_nights(30, 4) == make_nights(30, 4)
    assert make_nights(30, 4) != make_nights(30, 5)


def test_nights_are_drawn_in_the_promised_ranges() -> None:
    """Arrival 17:00-21:00, departure 06:30-08:30 the next day, arrival SoC 25-75 %."""
    for night in make_nights(365, 19):
        arrival = night.arrival.astimezone(SITE_ZONE)
        departure = night.departure.astimezone(SITE_ZONE)
        assert dt.time(17) <= arrival.time() <= dt.time(21)
        assert dt.time(6, 30) <= departure.time() <= dt.time(8, 30)
        assert departure.date() == arrival.date() + dt.timedelta(days=1)
        # On the 3-minute grid, so a step that divides it meets every price edge.
        assert arrival.minute % 3 == 0
        assert departure.minute % 3 == 0
        assert 25.0 <= night.arrival_soc_pct <= 75.0


def test_the_year_has_its_peak_events_announced_hours_ahead() -> None:
    """About 60 events a year, evenings, 1-2 h, announced 1-4 h before they start."""
    nights = make_nights(365, 19)
    events = [e for night in nights for e in night.events]
    assert len(events) == EVENTS_PER_YEAR
    for event in events:
        assert dt.time(17) <= event.start.astimezone(SITE_ZONE).time() <= dt.time(20)
        assert dt.timedelta(hours=1) <= event.end - event.start <= dt.timedelta(hours=2)
        assert dt.timedelta(hours=1) <= event.start - event.announced_at <= dt.timedelta(hours=4)
        assert 2.0 <= event.bonus_per_kwh <= 4.0


def test_a_short_run_is_the_start_of_the_year() -> None:
    """The first nights of a short run are the year's first nights, events included."""
    assert make_nights(20, 19) == make_nights(365, 19)[:20]


def test_bad_night_counts_are_refused() -> None:
    """0 or 400 nights is an error that says what is allowed."""
    for nights in (0, 400):
        with pytest.raises(ValueError, match=r"nights: expected 1\.\.365"):
            make_nights(nights, 1)


# --- the accounting -----------------------------------------------------------------------------


def _evening(event_power_w: float | None) -> Night:
    start = dt.datetime(2026, 3, 2, 19, 0, tzinfo=SITE_ZONE)
    event = Event(
        "e1",
        start,
        start + dt.timedelta(hours=1),
        3.0,
        event_power_w,
        start - dt.timedelta(hours=2),
    )
    return Night(0, start - dt.timedelta(hours=1), start + dt.timedelta(hours=12), 50.0, (event,))


def test_export_in_an_event_earns_the_bonus_up_to_its_power_window() -> None:
    """6 kW out for an hour in a 5 kW event at 3 CNY: 0.85 x 6 kWh + 3 x 5 kWh."""
    night = _evening(5_000.0)
    prices = year.NightPrices(night)
    result = year.NightResult(0, "test")
    t0_s = night.events[0].start.timestamp()
    for minute in range(60):
        year._account(result, prices, t0_s + 60 * minute, -6_000.0, 1 / 60)
    assert result.export_kwh == pytest.approx(6.0)
    assert result.export_revenue == pytest.approx(6.0 * 0.85)
    assert result.bonus_revenue == pytest.approx(5.0 * 3.0)
    assert result.peak_export_kwh == pytest.approx(6.0)
    assert result.event_export_kwh == pytest.approx(6.0)


def test_the_accounting_prices_are_the_planners_tariff() -> None:
    """The bench charges the owner what the planner's Tariff says, at every quarter hour."""
    night = _evening(None)
    prices = year.NightPrices(night)
    tariff = yearstrategies.tariff()
    at = night.arrival
    while at < night.departure:
        import_price, export_price, _ = prices.at(at.timestamp())
        slot = tariff.price_at(at)
        assert (import_price, export_price) == (slot.import_per_kwh, slot.export_per_kwh), at
        at += dt.timedelta(minutes=15)


def test_import_is_charged_at_the_band_in_force() -> None:
    """An hour at 2 kW from 21:30: half peak (0.617), half valley (0.307)."""
    night = _evening(None)
    prices = year.NightPrices(night)
    result = year.NightResult(0, "test")
    t0_s = dt.datetime(2026, 3, 2, 21, 30, tzinfo=SITE_ZONE).timestamp()
    for minute in range(60):
        year._account(result, prices, t0_s + 60 * minute, 2_000.0, 1 / 60)
    assert result.import_cost == pytest.approx(1.0 * 0.617 + 1.0 * 0.307)
    assert result.peak_import_kwh == pytest.approx(1.0)
    assert result.bonus_revenue == 0.0


# --- what the planning strategies know -----------------------------------------------------------


def _seen(night: Night, at: dt.datetime) -> yearstrategies.Observation:
    return yearstrategies.Observation(
        wall=at,
        reported_soc_pct=60.0,
        true_soc_pct=60.7,
        capacity_kwh=60.0,
        discharged_today_kwh=0.0,
        departure_at=None,
    )


def _bonus_slots(session: yearstrategies.Session) -> int:
    assert isinstance(session, yearstrategies.PlannedSession)
    plan = session.keeper.plan
    assert plan is not None
    return sum(1 for slot in plan.slots if slot.bonus_per_kwh > 0)


def test_optimize_learns_of_an_event_when_it_is_announced() -> None:
    """Before the announcement the plan has no bonus; from it on, the event's slots do."""
    night = _evening(5_000.0)  # arrival 18:00, event 19:00-20:00 announced at 17:00
    night = replace(
        night,
        events=(replace(night.events[0], announced_at=night.arrival + dt.timedelta(minutes=30)),),
    )
    strategy = yearstrategies.Planned(year.STEP_S, PlantConfig())
    session = strategy.session(night, strategy.policy(night))
    session.plan(_seen(night, night.arrival))
    assert _bonus_slots(session) == 0
    session.plan(_seen(night, night.arrival + dt.timedelta(minutes=30)))
    assert _bonus_slots(session) == 4


def test_foresight_knows_every_event_at_plug_in() -> None:
    """The bound plans with the night's events from the first step."""
    night = _evening(5_000.0)
    night = replace(
        night,
        events=(replace(night.events[0], announced_at=night.arrival + dt.timedelta(minutes=30)),),
    )
    strategy = yearstrategies.Planned(year.STEP_S, PlantConfig(), foresight=True)
    session = strategy.session(night, strategy.policy(night))
    session.plan(_seen(night, night.arrival))
    assert _bonus_slots(session) == 4


# --- a short year -------------------------------------------------------------------------------


def test_short_year_keeps_the_departure_promise_every_night(short_year: dict[str, Any]) -> None:
    """Every policy leaves the car at the target or above, every night (true SoC)."""
    for name, figures in short_year["strategies"].items():
        assert figures["target_met_pct"] == 100.0, name
        assert figures["nights_target_missed"] == [], name
        assert figures["departure_soc_pct_min"] >= 80.0, name


def test_short_year_never_discharges_below_the_floor(short_year: dict[str, Any]) -> None:
    """The true SoC never ends a discharging step below the 40 % floor."""
    for name, figures in short_year["strategies"].items():
        assert figures["nights_below_floor"] == [], name
        assert figures["steps_below_floor"] == 0, name
        lowest = figures["lowest_soc_discharging_pct"]
        assert lowest is None or lowest >= yearstrategies.SOC_FLOOR_PCT, name


def test_short_year_optimize_beats_the_fixed_windows(short_year: dict[str, Any]) -> None:
    """The planner earns the owner at least what the fixed windows do, and all three policies
    that move energy by the clock beat charging at once."""
    figures = short_year["strategies"]
    assert (
        figures["optimize"]["net_value_per_year"] >= figures["fixed_windows"]["net_value_per_year"]
    )
    for name in ("optimize", "fixed_windows", "foresight"):
        assert figures[name]["net_value_per_year"] > figures["at_once"]["net_value_per_year"]
    assert short_year["comparison"]["optimize_over_fixed_windows_per_year"]["met"] is True


def test_short_year_optimize_sells_into_the_announced_events(short_year: dict[str, Any]) -> None:
    """Told of an event 1-4 h ahead, the planner exports during it and earns its bonus."""
    assert short_year["peak_events_while_plugged_in"] >= 2
    optimize = short_year["strategies"]["optimize"]
    assert optimize["event_export_kwh_per_year"] > 0
    assert optimize["event_bonus_per_year"] > 0
    assert short_year["strategies"]["at_once"]["event_bonus_per_year"] == 0


def test_short_year_fixed_windows_discharge_at_the_peak(short_year: dict[str, Any]) -> None:
    """The fixed-window policy exports in the evening peak; charging at once never exports."""
    assert short_year["strategies"]["fixed_windows"]["peak_export_kwh_per_year"] > 0
    assert short_year["strategies"]["at_once"]["export_kwh_per_year"] == 0


def test_short_year_report_has_its_stable_shape(short_year: dict[str, Any]) -> None:
    """The JSON keys the docs and the lead read, for every strategy."""
    assert short_year["nights"] == SHORT_NIGHTS
    assert short_year["seed"] == SHORT_SEED
    assert set(short_year["strategies"]) == set(year.STRATEGY_NAMES)
    for figures in short_year["strategies"].values():
        for key in (
            "net_value_per_year",
            "wear_cost_per_year",
            "battery_throughput_kwh_per_year",
            "peak_export_kwh_per_year",
            "event_export_kwh_per_year",
            "target_met_pct",
            "nights_below_floor",
        ):
            assert key in figures
    assert len(short_year["net_per_night"]["fixed_windows"]) == SHORT_NIGHTS
    plans = {name: f["plans_per_night"] for name, f in short_year["strategies"].items()}
    assert plans["optimize"] >= 1
    assert plans["foresight"] >= 1
    assert plans["at_once"] == plans["fixed_windows"] == 0
    assert short_year["comparison"]["run_time_s"]["value"] > 0
    assert short_year["cpu_s"] > 0
    json.dumps(short_year)  # plain data only


def test_short_year_renders_its_section_for_the_docs(short_year: dict[str, Any]) -> None:
    """The Markdown section names the command, every policy and every goal."""
    text = year.markdown(short_year)
    assert f"python -m bench.year --nights {SHORT_NIGHTS} --seed {SHORT_SEED}" in text
    for name in year.STRATEGY_NAMES:
        assert f"| {year.LABELS[name]} |" in text
    assert "share of perfect foresight" in text
    assert "run time" in text


def test_cli_writes_the_json_and_the_plot(tmp_path: Path) -> None:
    """`python -m bench.year --nights 1` writes year.json and a PNG."""
    assert year.main(["--nights", "1", "--out", str(tmp_path), "--workers", "1"]) == 0
    report = json.loads((tmp_path / "year.json").read_text(encoding="utf-8"))
    assert report["nights"] == 1
    assert (tmp_path / "year.png").read_bytes()[:4] == b"\x89PNG"


def test_a_step_off_the_scenario_grid_is_refused() -> None:
    """A step that does not divide the 3-minute grid would miss price edges: refused."""
    with pytest.raises(ValueError, match="step_s: expected a divisor"):
        year.run(1, 1, step_s=100.0)


def test_cli_refuses_bad_input_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """A night count outside 1..365 is refused with the allowed range, no traceback."""
    assert year.main(["--nights", "0", "--workers", "1"]) == 2
    assert "nights: expected 1..365" in capsys.readouterr().err


# --- the judges ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reckless:
    """A policy that breaks both promises: discharge all night down to a 5 % floor."""

    name: str = "reckless"

    def policy(self, night: Night) -> Policy:
        base = yearstrategies.base_policy(night, year.STEP_S)
        return replace(
            base,
            owner=OwnerPolicy(soc_floor_pct=5.0, departure=None),
            fallback=FallbackPolicy(
                mode=FallbackMode.TIME_OF_USE,
                peak_windows=yearstrategies.WHOLE_DAY,
                discharge_power_w=yearstrategies.MAX_POWER_W,
            ),
        )

    def session(self, night: Night, policy: Policy) -> yearstrategies.Session:
        return yearstrategies.AtOnce(year.STEP_S).session(night, policy)


def _simulate(
    strategy: yearstrategies.Strategy, trace: year.Trace | None = None
) -> year.NightResult:
    night = make_nights(1, 3)[0]
    return year.simulate_night(
        night,
        strategy,
        plant_config=PlantConfig(),
        step_s=year.STEP_S,
        noise_seed="3-0",
        wear_cost=lambda soc, c_rate: 0.0,
        trace=trace,
    )


def test_the_judges_see_a_broken_promise() -> None:
    """A policy that drains the car is caught: below the floor, and short at departure."""
    result = _simulate(_Reckless())
    assert result.floor_breach_steps > 0
    assert result.min_soc_discharging_pct < yearstrategies.SOC_FLOOR_PCT
    assert not result.target_met


def test_the_ramp_does_not_stall_at_the_simulated_step() -> None:
    """Charging at once runs at full power from the third step (the first decision has no
    interval to ramp over, the inverter follows a step late), not 2 kW more per step."""
    trace = year.Trace()
    _simulate(yearstrategies.AtOnce(year.STEP_S), trace)
    assert trace.power_w[:2] == [0.0, 0.0]
    assert trace.power_w[2] == pytest.approx(yearstrategies.MAX_POWER_W, rel=0.011)


# --- the example config -------------------------------------------------------------------------

EXAMPLE_CN = Path(__file__).resolve().parents[2] / "config" / "example-cn.yaml"


def test_the_year_is_the_shanghai_example_configs() -> None:
    """The year's promises, limits, fixed windows, tariff and battery are those of
    config/example-cn.yaml (the bench reads no file; this catches a drift)."""
    config = load_config(EXAMPLE_CN)
    theirs = policy_from_config(config)
    night = make_nights(1, 1)[0]
    ours = yearstrategies.base_policy(night, year.STEP_S)
    for section, names in (
        ("owner", ("soc_floor_pct", "soc_ceiling_pct", "departure_margin_pct")),
        ("site", ("grid_import_limit_w", "grid_export_limit_w")),
        ("safety", ("max_charge_power_w", "max_discharge_power_w", "soc_resolution_pct")),
        ("wear", ("max_discharge_kwh_per_day", "max_cycles_per_day")),
    ):
        for name in names:
            mine = getattr(getattr(ours, section), name)
            assert mine == getattr(getattr(theirs, section), name), f"{section}.{name}"
    assert theirs.owner.departure is not None
    assert theirs.owner.departure.target_soc_pct == yearstrategies.TARGET_SOC_PCT
    assert ours.battery_capacity_default_kwh == theirs.battery_capacity_default_kwh
    assert PlantConfig().capacity_kwh == theirs.battery_capacity_default_kwh
    fixed = yearstrategies.FixedWindows(year.STEP_S).policy(night).fallback
    assert fixed.cheap_windows == theirs.fallback.cheap_windows
    assert fixed.peak_windows == theirs.fallback.peak_windows
    assert fixed.charge_power_w == theirs.fallback.charge_power_w
    assert fixed.discharge_power_w == theirs.fallback.discharge_power_w
    economics = config.economics
    assert economics.battery_chemistry == yearstrategies.CHEMISTRY
    assert economics.battery_replacement_cost == yearstrategies.REPLACEMENT_COST
    assert economics.charge_efficiency_pct == yearstrategies.ASSUMED_EFFICIENCY * 100
    assert economics.discharge_efficiency_pct == yearstrategies.ASSUMED_EFFICIENCY * 100
    tariff, example = yearstrategies.tariff(), config.economic_tariff()
    assert tariff.currency == example.currency == year.CURRENCY
    at = dt.datetime(2026, 7, 15, 0, 0, tzinfo=SITE_ZONE)
    for _ in range(96):
        mine_slot, their_slot = tariff.price_at(at), example.price_at(at)
        assert mine_slot.import_per_kwh == their_slot.import_per_kwh, at
        assert mine_slot.export_per_kwh == their_slot.export_per_kwh, at
        at += dt.timedelta(minutes=15)
