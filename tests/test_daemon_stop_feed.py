"""While the stop sequence ends the vehicle session, the daemon passes each new inverter reading
on to the vehicle link, as its control cycle did (issue 17): never a reading the stop found
already there, never the same reading twice, and nothing once the session's step is over."""

from __future__ import annotations

import asyncio
import math

import pytest

from controller.core.snapshots import InverterState
from controller.daemon import Daemon, ExitCode, Links, measured_output
from controller.sdnotify import Notifier
from tests.support import (
    FakeAggregator,
    FakeInverter,
    FakeVehicle,
    FixedStep,
    Journal,
    make_config,
    until,
)

BEFORE = InverterState(1.0, True, measured_power_w=-3000.0, dc_voltage_v=400.0)
AFTER = InverterState(2.0, True, measured_power_w=0.0, dc_voltage_v=390.0)
LATER = InverterState(3.0, True, measured_power_w=0.0, dc_voltage_v=5.0)


class ReadingInverter(FakeInverter):
    """An inverter whose latest reading the test sets."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.state: InverterState | None = BEFORE

    def snapshot(self) -> InverterState | None:
        return self.state


class EndingVehicle(FakeVehicle):
    """A session that takes its time to end; records what it is told once the stop began."""

    def __init__(self, journal: Journal, inverter: ReadingInverter) -> None:
        super().__init__(journal)
        self.inverter = inverter
        self.stopping = False
        # (whether the session's step was over, volts, amps) for each reading passed on
        self.after_stop: list[tuple[bool, float, float]] = []
        self.step_over = False

    def allow_energy_transfer(self, allowed: bool) -> None:
        super().allow_energy_transfer(allowed)
        self.stopping = self.stopping or not allowed

    def update_output(self, voltage_v: float, current_a: float) -> None:
        super().update_output(voltage_v, current_a)
        if self.stopping:
            self.after_stop.append((self.step_over, voltage_v, current_a))

    async def end_session(self) -> None:
        await super().end_session()
        await asyncio.sleep(0.2)  # ten looks of the feed at the reading the stop found
        self.inverter.state = AFTER
        await asyncio.sleep(0.2)  # ten more at the one new reading
        self.step_over = True


@pytest.mark.timeout(20)
def test_the_stop_passes_each_new_reading_on_once_and_only_during_the_session_step() -> None:
    """The reading there when the stop began is not passed on, a new one once, none after."""
    journal = Journal()
    inverter = ReadingInverter(journal)
    vehicle = EndingVehicle(journal, inverter)
    daemon = Daemon(
        make_config("control: {tick_s: 0.02, shutdown_timeout_s: 3.0}\n"),
        Links(vehicle, inverter, FakeAggregator(journal)),
        FixedStep(),
        Notifier({}),
        handle_signals=False,
    )

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        assert await until(lambda: daemon.cycles >= 3)
        daemon.request_stop()
        assert await task is ExitCode.OK
        inverter.state = LATER  # after the stop sequence: nobody may pass it on
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert vehicle.after_stop == [(False, *measured_output(AFTER))]
    assert journal.events == ["inverter.safe_stop", "vehicle.end_session", "aggregator.offline"]


def test_the_vehicle_is_told_only_what_the_stage_measured() -> None:
    """Volts as measured and amps from power over volts (+ charges); unknown is NaN."""
    assert measured_output(BEFORE) == (400.0, -7.5)
    assert measured_output(None) == pytest.approx((math.nan, math.nan), nan_ok=True)
    unreachable = InverterState(1.0, False, measured_power_w=0.0, dc_voltage_v=400.0)
    assert measured_output(unreachable) == pytest.approx((math.nan, math.nan), nan_ok=True)
    no_volts = InverterState(1.0, True, measured_power_w=0.0)
    assert measured_output(no_volts) == pytest.approx((math.nan, math.nan), nan_ok=True)
