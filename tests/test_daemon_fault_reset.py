"""The board's reset button reaches the core: one press is one ``reset_faults``, held down it asks
nothing more, and a button already down when the daemon starts asks nothing at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from controller.daemon import Daemon, ExitCode, Links
from controller.sdnotify import Notifier
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.frames import LineInputs
from controller.vehicle.link import CanVehicleLink
from hil.vehicle import SimulatedLines
from tests.support import FakeAggregator, FakeInverter, FakeVehicle, FixedStep, Journal, make_config

CONFIG = "control: {tick_s: 0.05, shutdown_timeout_s: 1.0}\n"


@dataclass(frozen=True)
class Answer:
    accepted: bool
    reason: str


class LatchingStep(FixedStep):
    """A control step that keeps a latch: it counts the resets it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.resets = 0

    def reset_faults(self) -> Answer:
        self.resets += 1
        return Answer(accepted=True, reason="every cause is gone")


class CountingLines(SimulatedLines):
    """The board's lines in memory, counting the link's reads."""

    def __init__(self) -> None:
        super().__init__(plugged=False)
        self.reads = 0

    def read(self) -> LineInputs:
        self.reads += 1
        return super().read()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (bounded) until ``predicate`` holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def run_daemon(
    lines: CountingLines,
    step: LatchingStep,
    scenario: Callable[[Daemon], Awaitable[None]],
) -> list[MutableMapping[str, Any]]:
    """The daemon on a real vehicle link over the virtual bus (nobody plugged in), with ``lines``
    as its board; returns what it logged."""
    journal = Journal()
    config = CanLinkConfig(
        interface="virtual", channel=f"reset-{uuid.uuid4().hex}", protocol="chademo"
    )
    vehicle = CanVehicleLink(config, lines)
    daemon = Daemon(
        make_config(CONFIG),
        Links(vehicle, FakeInverter(journal), FakeAggregator(journal)),
        step,
        Notifier({}),
        handle_signals=False,
    )

    async def main() -> ExitCode:
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.ready)
            await scenario(daemon)
        finally:
            daemon.request_stop()
        return await task

    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(main()) is ExitCode.OK
    return logs


async def cycles_pass(daemon: Daemon, lines: CountingLines, count: int = 3) -> None:
    """Until the link has read the lines and the daemon has run ``count`` more times each."""
    reads, cycles = lines.reads + count, daemon.cycles + count
    await until(lambda: lines.reads >= reads and daemon.cycles >= cycles)


@pytest.mark.timeout(30)
def test_a_press_resets_once_and_holding_it_down_does_not_repeat() -> None:
    """Released -> pressed calls reset_faults once; held over many cycles, no more; released and
    pressed again, once more. The log names the button as the source."""
    lines = CountingLines()
    step = LatchingStep()

    async def scenario(daemon: Daemon) -> None:
        await cycles_pass(daemon, lines)
        assert step.resets == 0
        lines.fault_reset = True
        await until(lambda: step.resets >= 1)
        await cycles_pass(daemon, lines, 10)  # held down
        assert step.resets == 1
        lines.fault_reset = False
        await cycles_pass(daemon, lines)
        assert step.resets == 1  # a release asks nothing
        lines.fault_reset = True
        await until(lambda: step.resets >= 2)
        await cycles_pass(daemon, lines)
        assert step.resets == 2

    logs = run_daemon(lines, step, scenario)
    resets = [entry for entry in logs if entry["event"] == "fault reset"]
    assert [(entry["source"], entry["accepted"]) for entry in resets] == [
        ("reset button", True),
        ("reset button", True),
    ]


@pytest.mark.timeout(30)
def test_a_button_down_at_start_resets_nothing() -> None:
    """A button held (or stuck) when the daemon starts is no press: no reset, however long."""
    lines = CountingLines()
    lines.fault_reset = True
    step = LatchingStep()

    async def scenario(daemon: Daemon) -> None:
        await cycles_pass(daemon, lines, 10)
        assert step.resets == 0

    logs = run_daemon(lines, step, scenario)
    assert not any(entry["event"] == "fault reset" for entry in logs)


class ButtonVehicle(FakeVehicle):
    """A vehicle link whose reset button presses the test sets directly."""

    def __init__(self, journal: Journal, presses: int = 0) -> None:
        super().__init__(journal)
        self.presses = presses

    def fault_reset_presses(self) -> int:
        return self.presses


@pytest.mark.timeout(30)
def test_presses_between_two_cycles_ask_one_reset_and_old_presses_none() -> None:
    """Presses the link counted before the daemon was made are not acted on; three presses
    between two cycles (a slow inverter write) make one reset, not zero and not three."""
    journal = Journal()
    vehicle = ButtonVehicle(journal, presses=4)
    step = LatchingStep()
    daemon = Daemon(
        make_config(CONFIG),
        Links(vehicle, FakeInverter(journal), FakeAggregator(journal)),
        step,
        Notifier({}),
        handle_signals=False,
    )

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: daemon.cycles >= 3)
            assert step.resets == 0
            vehicle.presses += 3
            cycles = daemon.cycles
            await until(lambda: daemon.cycles >= cycles + 3)
            assert step.resets == 1
        finally:
            daemon.request_stop()
        assert await task is ExitCode.OK

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_vehicle_link_without_a_button_is_fine() -> None:
    """A link that reads no reset button (no board lines) leaves SIGUSR1 as the only way."""
    journal = Journal()
    step = LatchingStep()
    daemon = Daemon(
        make_config(CONFIG),
        Links(FakeVehicle(journal), FakeInverter(journal), FakeAggregator(journal)),
        step,
        Notifier({}),
        handle_signals=False,
    )
    assert daemon.reset_faults() is True
    assert step.resets == 1
