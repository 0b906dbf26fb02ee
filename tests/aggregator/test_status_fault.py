"""A status never says "fault" without naming one (issue 20, finding 4: at start the retained
status showed ``state: fault`` with ``faults: []`` until the inverter's first snapshot).

The reports come from the real safety core (``CoreControlStep``) and reach the aggregator over a
real mosquitto as the link publishes them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from controller.aggregator.link import MqttAggregatorLink
from controller.control import CoreControlStep, policy_from_config
from controller.core.snapshots import InverterState, VehiclePhase, VehicleState
from controller.links import ControlReport
from hil.mosquitto import Mosquitto
from tests.aggregator.support import Aggregator, LinkRunner, make_config, make_link, now_utc, until


def vehicle(observed_at_s: float) -> VehicleState:
    return VehicleState(
        observed_at_s=observed_at_s,
        phase=VehiclePhase.ENERGY_TRANSFER,
        protocol="chademo",
        soc_pct=70.0,
        pack_voltage_v=380.0,
        charge_current_limit_a=30.0,
        charge_voltage_limit_v=410.0,
        discharge_current_limit_a=30.0,
        discharge_voltage_min_v=250.0,
        capacity_kwh=40.0,
        charge_permitted=True,
        discharge_permitted=True,
    )


def inverter(observed_at_s: float, *, reachable: bool = True) -> InverterState:
    return InverterState(
        observed_at_s=observed_at_s,
        reachable=reachable,
        enabled=True,
        measured_power_w=0.0,
        max_charge_power_w=7400.0,
        max_discharge_power_w=7400.0,
    )


def test_status_over_mqtt_names_the_fault_whenever_it_says_fault(broker: Mosquitto) -> None:
    """The daemon's first cycles (a car in session, no inverter snapshot yet), an unreachable or
    stale inverter and stale vehicle data: each status that says "fault" names why, in words
    that do not change with the data's age; once the data is fresh the status is clear."""
    step = CoreControlStep(policy_from_config(make_config(broker.port)))

    def cycle(
        link: MqttAggregatorLink,
        car: VehicleState | None,
        stage: InverterState | None,
        now_s: float,
    ) -> ControlReport:
        report = ControlReport(now_s, now_utc(), step(car, stage, None, now_s, now_utc()))
        link.report(report)
        return report

    async def next_status(aggregator: Aggregator, seen: int) -> dict[str, Any]:
        """The first status the aggregator received after the ``seen`` it had."""
        assert await until(lambda: len(aggregator.on("status")) > seen)
        status: dict[str, Any] = aggregator.on("status")[seen].json()
        return status

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            now_s = time.monotonic()
            # The daemon's first cycle: the car is in session, the inverter not read yet.
            seen = len(aggregator.on("status"))
            cycle(link, vehicle(now_s), None, now_s)
            status = await next_status(aggregator, seen)
            assert (status["state"], status["faults"]) == ("fault", ["no inverter data"])

            seen = len(aggregator.on("status"))
            cycle(link, vehicle(now_s + 0.01), inverter(now_s + 0.01), now_s + 0.01)
            status = await next_status(aggregator, seen)
            assert (status["state"], status["faults"]) == ("idle", [])

            # (vehicle data age, inverter data age, inverter reachable) -> the fault named
            cases = [
                (0.0, 0.0, False, "inverter unreachable"),
                (0.0, 8.0, True, "inverter data stale"),
                (8.0, 0.0, True, "vehicle data stale"),
            ]
            for n, (vehicle_age_s, inverter_age_s, reachable, named) in enumerate(cases):
                at_s = now_s + 10.0 * (n + 1)
                car = vehicle(at_s - vehicle_age_s)
                stage = inverter(at_s - inverter_age_s, reachable=reachable)
                seen = len(aggregator.on("status"))
                faulty = cycle(link, car, stage, at_s)
                status = await next_status(aggregator, seen)
                assert (status["state"], status["faults"]) == ("fault", [named])
                older = cycle(link, car, stage, at_s + 0.5)  # the same data, older
                assert older.faults == faulty.faults
                seen = len(aggregator.on("status"))
                cycle(link, vehicle(at_s + 1.0), inverter(at_s + 1.0), at_s + 1.0)
                status = await next_status(aggregator, seen)
                assert (status["state"], status["faults"]) == ("idle", [])

            for message in aggregator.on("status") + aggregator.on("telemetry"):
                record = message.json()
                assert record["state"] != "fault" or record["faults"], record

    asyncio.run(scenario())
