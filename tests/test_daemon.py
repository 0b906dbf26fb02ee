"""The daemon's lifecycle: readiness, watchdog, and a stop sequence that always ends at 0 W."""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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

T = TypeVar("T")


class _Clock:
    """Virtual seconds: they pass only when every task waits on a timer."""

    def __init__(self) -> None:
        self.now_s = 0.0


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps: when nothing is ready, the clock jumps to the loop's next timer."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0 if timeout is not None else 1.0)
        if not ready and timeout is not None:
            self._clock.now_s += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, for code that waits on timers and events only (any real
    I/O is polled, never waited for): sleeps, timeouts and ``loop.time()`` take no real time."""

    def __init__(self) -> None:
        self._clock = _Clock()
        super().__init__(_JumpingSelector(self._clock))

    def time(self) -> float:
        return self._clock.now_s


def run_on_virtual_time(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a VirtualTimeLoop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def loop_time() -> float:
    """The running loop's clock, as the daemon's monotonic clock."""
    return asyncio.get_running_loop().time()


class Rig:
    def __init__(
        self,
        listener: NotifyListener,
        watchdog_usec: int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
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
            monotonic=monotonic,
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
    """An inverter that never answers the stop is cut off; the later steps still run, and the
    sequence ends within its 1 s budget (timed on virtual time, so load cannot stretch it)."""
    rig = Rig(listener, monotonic=loop_time)
    rig.inverter.safe_stop_delay_s = 999.0

    async def scenario() -> float:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        started = loop_time()
        rig.daemon.request_stop()
        assert await task is ExitCode.OK
        return loop_time() - started

    elapsed_s = run_on_virtual_time(scenario())
    assert rig.journal.events == ["vehicle.end_session", "aggregator.offline"]
    assert elapsed_s <= 1.0  # shutdown_timeout_s, on the loop's virtual clock


def test_wake_runs_a_cycle_before_the_tick(listener: NotifyListener) -> None:
    """A safety event wakes the control loop at once instead of waiting for the tick."""
    rig = Rig(listener)
    rig.daemon = Daemon(
        make_config("control: {tick_s: 1.0}\n"),
        Links(rig.vehicle, rig.inverter, rig.aggregator),
        rig.step,
        Notifier({}),
        monotonic=loop_time,
        handle_signals=False,
    )

    async def scenario() -> list[int]:
        task = asyncio.create_task(rig.daemon.run())
        assert await until(lambda: rig.daemon.ready)
        woken_at = loop_time()
        cycles = []
        for _ in range(5):
            before = rig.step.calls
            rig.daemon.wake()
            for _ in range(100):  # turns of the loop while this task stays ready: no time passes
                if rig.step.calls > before:
                    break
                await asyncio.sleep(0)
            cycles.append(rig.step.calls - before)
        # Not a moment of the loop's clock went by, so none of these cycles was the 1 s tick.
        assert loop_time() == woken_at
        rig.daemon.request_stop()
        await task
        return cycles

    assert run_on_virtual_time(scenario()) == [1, 1, 1, 1, 1]


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
