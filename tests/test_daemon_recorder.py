"""The daemon's recorder (the energy ledger): called every cycle, flushed on stop, never fatal."""

from __future__ import annotations

import asyncio

from controller.core.snapshots import InverterState, VehicleState
from controller.daemon import Daemon, ExitCode, Links
from controller.links import ControlReport
from controller.sdnotify import Notifier
from tests.support import (
    FakeAggregator,
    FakeInverter,
    FakeVehicle,
    FixedStep,
    Journal,
    NotifyListener,
    make_config,
    until,
)


class FakeRecorder:
    def __init__(self) -> None:
        self.reports: list[ControlReport] = []
        self.flushes = 0
        self.fail = False

    def record(
        self, vehicle: VehicleState | None, inverter: InverterState | None, report: ControlReport
    ) -> None:
        self.reports.append(report)
        if self.fail:
            raise OSError("disk full")

    async def flush(self) -> None:
        self.flushes += 1
        if self.fail:
            raise OSError("disk full")


def _daemon(listener: NotifyListener, recorder: FakeRecorder) -> tuple[Daemon, FakeInverter]:
    journal = Journal()
    inverter = FakeInverter(journal)
    daemon = Daemon(
        make_config("control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\n"),
        Links(FakeVehicle(journal), inverter, FakeAggregator(journal)),
        FixedStep(),
        Notifier({"NOTIFY_SOCKET": str(listener.path)}),
        handle_signals=False,
        recorder=recorder,
    )
    return daemon, inverter


def test_every_cycle_is_recorded_and_the_stop_flushes(listener: NotifyListener) -> None:
    recorder = FakeRecorder()
    daemon, _ = _daemon(listener, recorder)

    async def scenario() -> ExitCode:
        task = asyncio.create_task(daemon.run())
        assert await until(lambda: len(recorder.reports) >= 5)
        daemon.request_stop()
        return await task

    assert asyncio.run(scenario()) is ExitCode.OK
    assert len(recorder.reports) == daemon.cycles
    assert recorder.flushes == 1


def test_a_failing_ledger_never_stops_the_charger(listener: NotifyListener) -> None:
    """Disk full: every record raises, yet the control loop keeps commanding power."""
    recorder = FakeRecorder()
    recorder.fail = True
    daemon, inverter = _daemon(listener, recorder)

    async def scenario() -> ExitCode:
        task = asyncio.create_task(daemon.run())
        assert await until(lambda: len(inverter.applied) >= 20)
        daemon.request_stop()
        return await task

    assert asyncio.run(scenario()) is ExitCode.OK
    assert len(recorder.reports) >= 20
    assert recorder.flushes == 1
