"""The demo's summary, verdict and plot, from a recorded night (the full demo runs with
`make demo`). The promises are judged on fabricated plant statuses, and once on a real plant's."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from controller.config import Config, load_config
from controller.economics.receipt import Receipt
from hil.demo import Night, Sample, SimClock, plot, prices_at, promises, summary, verdict
from hil.plant import Plant, PlantConfig

ROOT = Path(__file__).resolve().parents[1]
TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")


@functools.cache
def example() -> Config:
    """config/example.yaml: floor 40 %, ceiling 90 %, departure 80 % at 07:30, 7400 W each way
    (export also capped at 7400 W by the site, import at 11000 W)."""
    return load_config(ROOT / "config/example.yaml")


def night(departure_soc_pct: float = 80.5) -> Night:
    start = dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ)
    samples = [
        Sample(start + dt.timedelta(minutes=10 * i), power, soc, "idle", "fallback")
        for i, (power, soc) in enumerate([(0, 45), (-7400, 42), (0, 40), (3700, 60), (0, 80.5)])
    ]
    return Night(
        samples=samples, interlocks={"soc_floor": "19:40"}, departure_soc_pct=departure_soc_pct
    )


# A night that kept every promise, each figure exactly at its limit (no tolerance needed).
STATUS: dict[str, Any] = {
    "exported_wh": 2000.0,
    "imported_wh": 16000.0,
    "start_soc_pct": 45.0,
    "lowest_soc_pct": 40.0,
    "highest_soc_pct": 80.5,
    "soc_pct": 80.5,
    "largest_charge_w": 7400.0,
    "largest_discharge_w": 7400.0,
    "vehicle_state": "transfer",
    "vehicle_stop_reason": "",
    "power_without_contactors_s": 0.0,
}


# The ledger's receipt for the same night: its kWh agree with the plant's meters (STATUS).
RECEIPT = Receipt(
    session_id="s-1",
    currency="EUR",
    plugged_in_at=dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ),
    ended_at=dt.datetime(2026, 11, 24, 7, 30, tzinfo=TZ),
    charged_kwh=16.1,
    discharged_kwh=1.95,
    import_cost=3.52,
    export_revenue=0.62,
    wear_cost=0.40,
    soc_at_plug_in_pct=45.0,
    soc_at_end_pct=80.0,
    soc_at_departure_pct=80.0,
    target_soc_pct=80.0,
    departure_at=dt.datetime(2026, 11, 24, 7, 30, tzinfo=TZ),
)


def lines_of(text: str) -> dict[str, str]:
    """The promise lines of a summary, by promise name."""
    names = ("floor", "ceiling", "departure", "limits")
    return {
        words[0]: line
        for line in text.splitlines()
        if (words := line.split()) and words[0] in names and len(words) > 1
    }


def test_summary_tells_the_plants_energy_and_the_receipts_money_as_one_story() -> None:
    """The plant metered 2 and 16 kWh, the receipt says 1.95 and 16.1: they agree; the money and
    the owner's line come from the receipt (net 0.62 - 3.52 - 0.40 = -3.30)."""
    text, ok = summary(night(), STATUS, example(), RECEIPT)
    assert ok
    assert "2.00 kWh metered by the plant,   1.95 kWh on the receipt" in text
    assert "16.00 kWh metered by the plant,  16.10 kWh on the receipt" in text
    assert "net for the owner       €-3.30" in text
    assert "one story               yes" in text
    assert "soc_floor (from 19:40)" in text
    assert "result: promises kept" in text
    assert "the owner reads         Charged for €3.30" in text
    assert "BROKEN" not in text


def test_a_receipt_that_disagrees_with_the_plant_or_none_fails_the_demo() -> None:
    """The ledger counting another night's energy (the 1/720 of issue 19) is not one story."""
    from dataclasses import replace  # noqa: PLC0415

    text, ok = summary(night(), STATUS, example(), replace(RECEIPT, charged_kwh=0.046))
    assert not ok
    assert "one story               NO" in text
    text, ok = summary(night(), STATUS, example(), None)
    assert not ok
    assert "receipt                 NONE" in text


def test_summary_names_each_promise_with_its_true_figures() -> None:
    """One line per promise, kept, with the plant's figures and the limit beside each."""
    by_name = lines_of(summary(night(), STATUS, example(), RECEIPT)[0])
    assert set(by_name) == {"floor", "ceiling", "departure", "limits"}
    assert all(line.split()[1] == "kept" for line in by_name.values())
    assert "lowest true SoC 40.00 % (floor 40 %)" in by_name["floor"]
    assert "highest true SoC 80.50 % (ceiling 90 %)" in by_name["ceiling"]
    assert "true SoC at 07:30 80.50 % (target 80 %)" in by_name["departure"]
    assert "largest charge 7400 W (limit 7400 W)" in by_name["limits"]
    assert "largest discharge 7400 W (limit 7400 W)" in by_name["limits"]


# Each promise broken alone, just past its limit: (name, status changes, departure SoC).
BROKEN_ALONE: dict[str, tuple[str, dict[str, float], float]] = {
    "floor, the issue's 39.7 %": ("floor", {"lowest_soc_pct": 39.7}, 80.5),
    "floor by a hair": ("floor", {"lowest_soc_pct": 39.999}, 80.5),
    "ceiling": ("ceiling", {"highest_soc_pct": 90.001}, 80.5),
    "departure": ("departure", {}, 79.999),
    "charge power": ("limits", {"largest_charge_w": 7438.0}, 80.5),
    "discharge power": ("limits", {"largest_discharge_w": 7438.0}, 80.5),
}


@pytest.mark.parametrize("case", list(BROKEN_ALONE))
def test_a_promise_broken_alone_is_named(case: str) -> None:
    """The broken promise is the only one marked BROKEN and the only one the verdict names."""
    name, changes, departure_pct = BROKEN_ALONE[case]
    text, ok = summary(night(departure_pct), STATUS | changes, example(), RECEIPT)
    assert not ok
    by_name = lines_of(text)
    assert by_name[name].split()[1] == "BROKEN"
    assert all(line.split()[1] == "kept" for other, line in by_name.items() if other != name)
    assert f"result: PROMISES BROKEN: {name}" in text.splitlines()[-2]


def test_every_broken_promise_is_named_in_order() -> None:
    """A night that broke the floor and the departure target names both."""
    judged = promises(STATUS | {"lowest_soc_pct": 39.0}, example(), departure_soc_pct=60.0)
    assert verdict(judged) == "result: PROMISES BROKEN: floor, departure"


def test_a_soc_just_below_its_limit_is_never_shown_rounded_onto_it() -> None:
    """39.999 % is shown as 39.99 % beside BROKEN, not as 40.00 % (the floor)."""
    by_name = lines_of(
        summary(night(79.999), STATUS | {"lowest_soc_pct": 39.999}, example(), RECEIPT)[0]
    )
    assert "lowest true SoC 39.99 %" in by_name["floor"]
    assert "true SoC at 07:30 79.99 %" in by_name["departure"]


def test_power_within_the_measurement_tolerance_keeps_the_limits() -> None:
    """7436 W against 7400 W is within the 0.5 % (37 W) tolerance for the power; 7438 W is not."""
    kept = promises(STATUS | {"largest_charge_w": 7436.0}, example())
    assert verdict(kept) == "result: promises kept"
    broken = promises(STATUS | {"largest_charge_w": 7438.0}, example())
    assert verdict(broken) == "result: PROMISES BROKEN: limits"


def test_the_limits_are_the_lower_of_the_charger_and_the_grid_connection() -> None:
    """With a site import limit of 5 kW, charging at 7.4 kW breaks the limits."""
    config = example()
    tight = config.model_copy(
        update={"safety": config.safety.model_copy(update={"grid_import_limit_w": 5000.0})}
    )
    judged = promises(STATUS, tight)
    assert verdict(judged) == "result: PROMISES BROKEN: limits"
    assert "largest charge 7400 W (limit 5000 W)" in judged[-1].figures


def test_a_car_that_arrived_above_the_ceiling_is_said_so_not_failed() -> None:
    """Arriving at 95 % (ceiling 90 %) and never charged higher keeps the ceiling, saying so;
    charged from there to 95.5 % breaks it."""
    arrived = STATUS | {"start_soc_pct": 95.0, "highest_soc_pct": 95.0}
    judged = promises(arrived, example())
    assert verdict(judged) == "result: promises kept"
    assert "the car arrived above it, at 95.00 %" in judged[1].figures
    charged = promises(arrived | {"highest_soc_pct": 95.5}, example())
    assert verdict(charged) == "result: PROMISES BROKEN: ceiling"


def test_a_car_that_arrived_below_the_floor_is_said_so_not_failed() -> None:
    """Arriving at 35 % (floor 40 %) and never discharged lower keeps the floor, saying so;
    discharged from there to 34.9 % breaks it."""
    arrived = STATUS | {"start_soc_pct": 35.0, "lowest_soc_pct": 35.0}
    judged = promises(arrived, example())
    assert verdict(judged) == "result: promises kept"
    assert "the car arrived below it, at 35.00 %" in judged[0].figures
    drained = promises(arrived | {"lowest_soc_pct": 34.9}, example())
    assert verdict(drained) == "result: PROMISES BROKEN: floor"


def test_without_a_departure_only_the_other_promises_count() -> None:
    """No departure configured: the car's final SoC is shown, nothing to break."""
    config = example()
    free = config.model_copy(update={"owner": config.owner.model_copy(update={"departure": None})})
    judged = promises(STATUS | {"soc_pct": 50.0}, free)
    assert verdict(judged) == "result: promises kept"
    assert "no departure set" in judged[2].figures


def test_the_departure_soc_defaults_to_the_plants_soc_now() -> None:
    """Without a recorded departure SoC the plant's present SoC is judged."""
    assert verdict(promises(STATUS | {"soc_pct": 79.9}, example())) == (
        "result: PROMISES BROKEN: departure"
    )


def run_stage(plant: Plant, power_w: float, real_s: float) -> None:
    """The stage at ``power_w`` for ``real_s``, coupled to the battery as the plant does."""
    plant.stage.set_enabled(True, 0.0)
    plant.stage.command(power_w, 0.0)
    plant.stage.advance(1.0)  # ramped up before the battery is coupled
    plant.couple(1.0)
    for step in range(1, 101):
        plant.couple(1.0 + real_s * step / 100)


def test_the_verdict_reads_a_real_plants_status() -> None:
    """A plant rated 11.1 kW, driven at -9 kW from 40.2 % at 3600x for 0.1 s (0.9 kWh): the
    verdict finds the floor crossed and the discharge limit exceeded, from the plant's own keys."""
    plant = Plant(
        PlantConfig(
            soc_pct=40.2,
            capacity_kwh=40.0,
            time_factor=3600,
            max_charge_w=11_100.0,
            max_discharge_w=11_100.0,
        )
    )
    run_stage(plant, -9000.0, 0.1)
    status = plant.status()
    assert status["largest_discharge_w"] == 9000.0
    assert status["largest_charge_w"] == 0.0
    assert status["start_soc_pct"] == 40.2
    judged = promises(status, example(), departure_soc_pct=80.0)
    assert verdict(judged) == "result: PROMISES BROKEN: floor, limits"
    assert "largest discharge 9000 W (limit 7400 W)" in judged[-1].figures


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """The night is drawn into a PNG file."""
    clock = SimClock(dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ), 720.0)
    path = tmp_path / "night.png"
    plot(night(), example(), clock, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_prices_follow_the_chinese_tariff_and_the_event() -> None:
    """config/example-cn.yaml: peak 06-22 buys at 0.617 and sells at 0.85; the 20:00-21:00 event
    adds 3.15 (4 yuan in all); the valley buys at 0.307 and sells at nothing."""
    config = load_config(ROOT / "config/example-cn.yaml")
    shanghai = zoneinfo.ZoneInfo("Asia/Shanghai")
    clock = SimClock(dt.datetime(2026, 12, 3, 18, 0, tzinfo=shanghai), 720.0)
    assert prices_at(config, clock, clock.at(dt.time(19, 0))) == pytest.approx((0.617, 0.85))
    assert prices_at(config, clock, clock.at(dt.time(20, 30))) == pytest.approx((0.617, 4.0))
    assert prices_at(config, clock, clock.at(dt.time(23, 0))) == pytest.approx((0.307, 0.0))
    assert config.economic_tariff().currency == "CNY"
