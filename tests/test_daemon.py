"""The daemon's lifecycle: readiness, watchdog, and a stop sequence that always ends at 0 W."""

from __future__ import annotations

import asyncio
import time

import pytest

from controller.daemon import Daemon, ExitCode, Links
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

STOP_ORDER = ["inverter.safe_stop", "vehicle.end_session", "aggregator.offline"]


class Rig:
    def __init__(self, listener: NotifyListener, watchdog_usec: int | None = None) -> None:
        self.journal = Journal()
        self.vehicle = FakeVehicle(self.journal)
        self.inverter = FakeInverter(self.journal)
        self.aggregator = FakeAggregator(self.journal)
        self.step = FixedStep()
        env = {"NOTIFY_SOCKET": str(listener.path)}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.daemon = Daemon(
            make_config("control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\n"),
            Links(self.vehicle, self.inverter, self.aggregator),
            self.step,
            Notifier(env),
            handle_signals=False,
        )


def test_ready_only_after_every_link_has_reported(listener: NotifyListener) -> None:
    """READY=1 is sent only once every link has reported its state."""
    rig = Rig(listener)
    rig.vehicle.report_up.clear()

    async def scenario() -> ExitCode:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.step.calls >= 5)
        assert not any("READY=1" in m for m in listener.drain())
        rig.vehicle.report_up.set()
        assert await until(lambda: any("READY=1" in m for m in listener.drain()))
        rig.daemon.request_stop()
        return await task

    assert asyncio.run(scenario()) is ExitCode.OK
    ready = next(m for m in listener.drain() if "READY=1" in m)
    assert "vehicle=up inverter=up aggregator=up" in ready


def test_clean_stop_runs_the_stop_sequence_in_order(listener: NotifyListener) -> None:
    """A requested stop sends STOPPING=1, then 0 W, vehicle session end, offline; exit 0."""
    rig = Rig(listener)

    async def scenario() -> ExitCode:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        rig.daemon.request_stop()
        return await task

    assert asyncio.run(scenario()) is ExitCode.OK
    assert rig.journal.events == STOP_ORDER
    assert rig.vehicle.allowed[-1] is False
    assert any(m.startswith("STOPPING=1") for m in listener.drain())
    # The session ends through its protocol: the vehicle link was still running.
    assert rig.vehicle.session_ended_while_running is True


def test_watchdog_pings_come_from_the_control_loop(listener: NotifyListener) -> None:
    """WATCHDOG=1 is sent while cycles complete and stops when the loop hangs."""
    rig = Rig(listener, watchdog_usec=100_000)
    rig.inverter.hang_after_applies = 20

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(rig.inverter.hung.is_set)
        before = sum(m == "WATCHDOG=1" for m in listener.drain())
        await asyncio.sleep(0.5)  # five watchdog periods with the loop stuck in a write
        after = sum(m == "WATCHDOG=1" for m in listener.drain()) - before
        rig.daemon.request_stop()
        assert await task is ExitCode.OK
        return before, after

    before, after = asyncio.run(scenario())
    assert before >= 2
    assert after == 0
    # Even with the loop hung mid-write, the stop sequence reached the inverter.
    assert rig.journal.events == STOP_ORDER


def test_crashed_link_drives_zero_power_then_fails(listener: NotifyListener) -> None:
    """A link that crashes ends at 0 W with the stage disabled, and the daemon exits 1."""
    rig = Rig(listener)
    rig.vehicle.fail_after_s = 0.1
    exit_code = asyncio.run(rig.daemon.run())
    assert exit_code is ExitCode.FAILURE
    assert rig.journal.events == STOP_ORDER
    assert rig.vehicle.allowed[-1] is False


def test_crashed_control_step_drives_zero_power_then_fails(listener: NotifyListener) -> None:
    """A bug in a control cycle ends at 0 W and exit 1, never a half-applied command."""
    rig = Rig(listener)
    rig.step.raise_on_call = 3
    exit_code = asyncio.run(rig.daemon.run())
    assert exit_code is ExitCode.FAILURE
    assert len(rig.inverter.applied) == 2
    assert rig.journal.events == STOP_ORDER


def test_link_that_returns_unexpectedly_is_a_failure(listener: NotifyListener) -> None:
    """A link whose run() ends on its own is treated as a crash."""
    rig = Rig(listener)
    rig.aggregator.return_after_s = 0.05
    assert asyncio.run(rig.daemon.run()) is ExitCode.FAILURE
    assert rig.journal.events == STOP_ORDER


def test_cancelled_daemon_still_stops_the_power_stage(listener: NotifyListener) -> None:
    """Cancelling the daemon's task cannot skip the 0 W stop sequence."""
    rig = Rig(listener)

    async def scenario() -> None:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert rig.journal.events == STOP_ORDER


def test_slow_stop_step_cannot_starve_the_others(listener: NotifyListener) -> None:
    """An inverter that never answers the stop is cut off; the later steps still run in time."""
    rig = Rig(listener)
    rig.inverter.safe_stop_delay_s = 999.0

    async def scenario() -> float:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        started = time.monotonic()
        rig.daemon.request_stop()
        assert await task is ExitCode.OK
        return time.monotonic() - started

    elapsed_s = asyncio.run(scenario())
    assert rig.journal.events == ["vehicle.end_session", "aggregator.offline"]
    assert elapsed_s < 3.0  # budget is 1 s; loose bound


def test_wake_runs_a_cycle_before_the_tick(listener: NotifyListener) -> None:
    """A safety event wakes the control loop at once instead of waiting for the tick."""
    rig = Rig(listener)
    rig.daemon = Daemon(
        make_config("control: {tick_s: 1.0}\n"),
        Links(rig.vehicle, rig.inverter, rig.aggregator),
        rig.step,
        Notifier({}),
        handle_signals=False,
    )

    async def scenario() -> int:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        start = rig.step.calls
        for _ in range(5):
            rig.daemon.wake()
            await asyncio.sleep(0.02)
        woken = rig.step.calls - start
        rig.daemon.request_stop()
        await task
        return woken

    # Five wakes within ~0.1 s of a 1 s tick: each produced its own cycle.
    assert asyncio.run(scenario()) >= 4


def test_every_cycle_is_reported_to_the_aggregator_link(listener: NotifyListener) -> None:
    """The aggregator link hears each cycle's command, so it can ack with the applied power."""
    rig = Rig(listener)

    async def scenario() -> None:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: len(rig.aggregator.reports) >= 3)
        rig.daemon.request_stop()
        await task

    asyncio.run(scenario())
    report = rig.aggregator.reports[-1]
    assert report.commanded_w == rig.step.power_w
    assert report.enabled
    assert report.wall.tzinfo is not None
