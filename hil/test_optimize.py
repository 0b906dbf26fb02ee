"""HIL: the ``optimize`` fallback with the real daemon, plant and broker (issue 19).

The charger plans the night against the tariff on its own: it sells in the evening peak above
the floor, and when the aggregator pushes a price schedule that pays nothing for export it
re-plans at once and stops selling. The plan is published in telemetry. CHAdeMO (both directions
in one session) over Modbus TCP; site time Europe/Amsterdam, 60x simulated clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from hil.conftest import make_setup, running
from hil.harness import AggregatorClient, until
from hil.mosquitto import Mosquitto
from hil.test_scenarios import charger_online, plant_until, play

pytestmark = pytest.mark.hil

EVENING = "2026-11-24T19:30:00+01:00"
# Peak 17:00-21:00 sells at 0.90 and buys at 0.60; the night buys at 0.20 and sells at nothing:
# a spread far above the wear and the conversion losses.
TARIFF = """\
tariff:
  currency: EUR
  periods:
    - bands:
        - {start: "07:00", end: "17:00", import_per_kwh: 0.40, export_per_kwh: 0.10}
        - {start: "17:00", end: "21:00", import_per_kwh: 0.60, export_per_kwh: 0.90}
        - {start: "21:00", end: "07:00", import_per_kwh: 0.20, export_per_kwh: 0.0}
economics: {battery_chemistry: lfp, battery_replacement_cost: 6000}
"""
OPTIMIZE = "{policy: optimize, charge_power_w: 3700, discharge_power_w: 3700}"


def latest_plan(aggregator: AggregatorClient) -> dict[str, Any] | None:
    for message in reversed(aggregator.on("telemetry")):
        plan: dict[str, Any] | None = message.json().get("plan")
        if plan is not None:
            return plan
    return None


@pytest.mark.timeout(150)
def test_the_plan_sells_at_the_peak_and_replans_when_the_aggregator_pushes_prices(
    short_dir: Path, broker: Mosquitto
) -> None:
    setup = dataclasses.replace(
        make_setup(short_dir, broker, "chademo", "tcp"), fallback=OPTIMIZE, extra_yaml=TARIFF
    )
    with running(setup, soc_pct=70, mode="charge", time_factor=60, clock_start=EVENING) as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await charger_online(aggregator)
            assert await plant_until(rig, lambda s: s["actual_w"] < -1000, 40), (
                "the plan never sold at the evening peak"
            )
            assert await until(lambda: latest_plan(aggregator) is not None, 10), "no plan sent"
            plan = latest_plan(aggregator)
            assert plan is not None
            assert plan["power_w"][0] < 0
            assert plan["target_reachable"] is True
            telemetry = aggregator.on("telemetry")[-1].json()
            assert telemetry["source"] == "fallback"
            # The site's (simulated) time, as the daemon sees it, from its telemetry.
            now = dt.datetime.fromisoformat(telemetry["at"])
            # Slots on the quarter-hour grid, as an aggregator sends them.
            start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
            start -= dt.timedelta(minutes=30)
            schedule = {
                "id": "prices-1",
                "issued_at": (now - dt.timedelta(minutes=1)).isoformat(),
                "currency": "EUR",
                "slots": [
                    {
                        "start": (start + dt.timedelta(minutes=15 * k)).isoformat(),
                        "end": (start + dt.timedelta(minutes=15 * (k + 1))).isoformat(),
                        "import_per_kwh": 0.20,
                        "export_per_kwh": 0.0,
                    }
                    for k in range(48)
                ],
            }
            await aggregator.publish("price_schedule", schedule)
            assert await until(lambda: bool(aggregator.on("price_ack")), 10), "no price_ack"
            ack = aggregator.on("price_ack")[-1].json()
            assert ack["accepted"] is True, ack
            # Export pays nothing now: the new plan stops selling.
            assert await plant_until(rig, lambda s: s["actual_w"] >= -50, 20), (
                "still selling after the export price fell to 0"
            )

            # The plan made for the new prices (later ones may follow as the SoC moves off it);
            # its record may wait up to telemetry_min_interval_s (1 s) for the rate limit.
            def replanned_plans() -> list[dict[str, Any]]:
                return [
                    p
                    for m in aggregator.on("telemetry")
                    if (p := m.json().get("plan")) is not None and p["reason"] == "new prices"
                ]

            assert await until(lambda: bool(replanned_plans()), 5), (
                "no plan made for the new prices was published"
            )
            replanned = replanned_plans()
            assert replanned[0]["plan_number"] > plan["plan_number"]
            assert min(replanned[0]["power_w"]) >= 0, replanned[0]

        play(rig, scenario)
