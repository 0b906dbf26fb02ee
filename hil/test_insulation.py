"""HIL: the insulation monitor (issue 17, item 1) with the real daemon, the plant and mosquitto.

The plant's simulated IMD drives the board's ``insulation_ok`` line from the insulation resistance
it measures. A charger whose IMD reports a fault never closes its contactors; an insulation fault
while a CHAdeMO car discharges stops the power as a fault. Assertions are on the plant.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from hil.conftest import make_setup, running
from hil.harness import AggregatorClient, setpoint
from hil.mosquitto import Mosquitto
from hil.test_scenarios import charger_online, discharging, plant_until, play

pytestmark = pytest.mark.hil

FAULTY_OHM = 20_000  # below 100 ohm/V of the charger's 500 V (50 kohm): an IMD alarm


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["chademo", "gbt27930"])
def test_an_insulation_fault_at_plug_in_never_energises_the_output(
    short_dir: Path, broker: Mosquitto, protocol: str
) -> None:
    """The IMD reports a fault from the start: the insulation test fails with its reason after
    the 10 s timeout, the contactors never close and no energy moves, whatever is asked."""
    setup = dataclasses.replace(
        make_setup(short_dir, broker, protocol, "tcp"),
        plant_extra=("--insulation-ohm", str(FAULTY_OHM)),
    )
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await charger_online(aggregator)
            await aggregator.publish("setpoint", setpoint("discharge-1", -3000.0, ttl_s=120))
            for _ in range(150):  # 15 s: past the insulation timeout
                status = rig.plant.status()
                assert status["insulation_ok"] is False
                assert status["contactors_closed"] is False
                assert status["actual_w"] == 0.0
                await asyncio.sleep(0.1)
            assert "insulation test failed" in rig.daemon.log_file.read_text(encoding="utf-8")
            status = rig.plant.status()
            assert status["exported_wh"] == 0.0
            assert status["imported_wh"] == 0.0

        play(rig, scenario)


@pytest.mark.timeout(120)
def test_an_insulation_fault_mid_discharge_stops_the_power(
    short_dir: Path, broker: Mosquitto
) -> None:
    """CHAdeMO discharging at 3 kW; the insulation fails: 0 W within 1.5 s (0.5 s IMD response,
    then the fault stop), the contactors open, and power stays off."""
    setup = make_setup(short_dir, broker, "chademo", "tcp")
    with running(setup, soc_pct=70, mode="discharge") as rig:

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            assert rig.plant.status()["insulation_ok"] is True
            rig.plant.client.request({"cmd": "insulation", "set": {"resistance_ohm": FAULTY_OHM}})
            assert await plant_until(rig, lambda s: s["actual_w"] == 0.0, 1.5)
            assert await plant_until(rig, lambda s: not s["contactors_closed"], 10.0)
            for _ in range(10):
                await asyncio.sleep(0.1)
                assert rig.plant.status()["actual_w"] == 0.0
            log = rig.daemon.log_file.read_text(encoding="utf-8")
            assert "insulation monitor alarm" in log

        play(rig, scenario)
