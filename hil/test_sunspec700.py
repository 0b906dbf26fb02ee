"""HIL: a session on an inverter driven through the SunSpec 700-series models (issue 17).

The sessions decide on the output's DC voltage (GB/T's ±5 % match before K1/K2, the 60 V and 10 V
unlocks). A 700-series inverter gives it in model 714 (the vehicle port's ``DCV``); before 714 was
read, GB/T never started there and CHAdeMO ended with the lock held and a fault. Here both run to
a 3 kW discharge on the plant's 700-series profile and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hil.conftest import make_setup, running
from hil.harness import AggregatorClient
from hil.mosquitto import Mosquitto
from hil.test_scenarios import discharging, play, stop_cleanly

pytestmark = pytest.mark.hil


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["gbt27930", "chademo"])
def test_a_700_series_inverter_runs_a_session_and_stops_it_cleanly(
    short_dir: Path, broker: Mosquitto, protocol: str
) -> None:
    setup = dataclasses.replace(
        make_setup(short_dir, broker, protocol, "tcp"), plant_extra=("--profile", "sunspec-700")
    )
    with running(setup, soc_pct=70, mode="discharge") as rig:
        assert rig.plant.status()["inverter"] == "sunspec-700"

        async def scenario(aggregator: AggregatorClient) -> None:
            await discharging(rig, aggregator)
            status = rig.plant.status()
            assert status["contactors_closed"] is True
            assert status["output_voltage_v"] > 300

        play(rig, scenario)
        stop_cleanly(rig)
        status = rig.plant.status()
        assert status["actual_w"] == 0.0
        assert status["contactors_closed"] is False
