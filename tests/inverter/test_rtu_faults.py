"""The inverter link under injected faults over Modbus RTU (a socat pty pair): each fault ends
faulted with a reason, no setpoint is written while faulted, and the link recovers by itself;
a serial line that vanishes mid-run takes the link DOWN without taking the daemon with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from controller.core.snapshots import PowerCommand
from controller.daemon import Daemon, ExitCode, Links
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, SerialEndpoint
from controller.links import LinkStatus
from controller.sdnotify import Notifier
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.injections import INJECTIONS
from tests.support import FakeAggregator, FakeVehicle, FixedStep, Journal, make_config

BAUD = 115_200


class CountingTransport(ModbusTransport):
    """The real transport, counting how often it opens the serial port."""

    opens = 0

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        self.opens += 1
        return super()._new_client()


class Rig:
    """The simulated inverter on one end of the pty pair, the link on the other."""

    def __init__(self, pty: PtyPair) -> None:
        self.pty = pty
        self.stage = PowerStage()
        self.sim = InverterSimulator(SunSpec700Profile(self.stage), self.stage)
        self.transport = CountingTransport(
            SerialEndpoint(str(pty.controller_end), baudrate=BAUD),
            1,
            timeout_s=0.3,
            retries=1,
            backoff_initial_s=0.1,
            backoff_max_s=0.4,
        )
        self.link = ModbusInverterLink(
            self.transport,
            SunSpecDriver(self.transport, revert_timeout_s=6),
            poll_interval_s=0.05,
            revert_timeout_s=6,
            retry_interval_s=0.2,
        )

    async def serve(self) -> None:
        """The simulator answers on the inverter's end of the line."""
        await self.sim.start_serial(str(self.pty.inverter_end), baudrate=BAUD)

    def faults(self) -> tuple[str, ...]:
        state = self.link.snapshot()
        return state.faults if state else ()

    def at(self, power_w: float) -> bool:
        """The simulated stage delivers ``power_w``."""
        return abs(self.stage.actual_w - power_w) < 1


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Wait, bounded, until ``predicate`` holds (loose: the machine may be loaded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_rtu_fault_latches_blocks_writes_and_recovers(name: str, pty_pair: PtyPair) -> None:
    """An RTU fault latches with a reason, blocks new setpoints; the link recovers after it."""
    inject, clear, reason = INJECTIONS[name]

    async def scenario() -> None:
        rig = Rig(pty_pair)
        await rig.serve()
        task = asyncio.create_task(rig.link.run(lambda: None))
        try:
            async with asyncio.timeout(60.0):
                await until(lambda: rig.link.status is LinkStatus.UP)
                await rig.link.apply(PowerCommand(-3000.0, enable=True))
                await until(lambda: rig.at(-3000.0))
                inject(rig.sim)
                if name == "stuck setpoint":
                    await rig.link.apply(PowerCommand(-1000.0, enable=True))  # a write notices
                await until(lambda: any(reason in f for f in rig.faults()))
                writes = rig.link.writes
                await rig.link.apply(PowerCommand(-2000.0, enable=True))
                targets: set[float] = set()
                for _ in range(30):  # 0.6 s faulted: the new setpoint must never land
                    targets.add(rig.stage.target_w)
                    await asyncio.sleep(0.02)
                assert rig.link.writes == writes, "a setpoint was written while faulted"
                assert -2000.0 not in targets
                assert rig.faults(), "the fault cleared by itself"  # (its reason may move on)
                clear(rig.sim)
                await until(lambda: rig.faults() == () and rig.link.writes > writes)
                await until(lambda: rig.at(-2000.0))
                assert rig.link.status is LinkStatus.UP
                assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await rig.link.safe_stop()
            await rig.sim.stop()

    asyncio.run(scenario())


def make_daemon(rig: Rig, step: FixedStep) -> Daemon:
    """The real daemon with the RTU inverter link; vehicle and aggregator are stand-ins."""
    journal = Journal()
    return Daemon(
        make_config("control: {tick_s: 0.05, shutdown_timeout_s: 3.0}\n"),
        Links(FakeVehicle(journal), rig.link, FakeAggregator(journal)),
        step,
        Notifier({}),
        handle_signals=False,
    )


async def gone_and_retrying(rig: Rig, task: asyncio.Task[ExitCode]) -> None:
    """The line is gone: DOWN naming the port, no write, reopens spaced by backoff, daemon on."""
    writes = rig.link.writes
    await until(lambda: rig.link.status is LinkStatus.DOWN)
    state = rig.link.snapshot()
    assert state is not None
    assert not state.reachable
    assert str(rig.pty.controller_end) in state.faults[0]
    opens = rig.transport.opens
    reasons: set[str] = set()

    def retried_with_backoff() -> bool:
        reasons.update(rig.faults())
        return rig.transport.opens >= opens + 3 and any("next attempt in" in r for r in reasons)

    await until(retried_with_backoff)
    assert any("cannot connect" in r for r in reasons)
    assert rig.link.status is LinkStatus.DOWN
    assert rig.link.writes == writes, "a setpoint was written with the port gone"
    assert not task.done(), "the daemon ended with the serial port gone"


def test_a_vanished_serial_port_goes_down_retries_and_recovers(pty_pair: PtyPair) -> None:
    """A vanished line: DOWN with a reason, retries with backoff, recovers; the daemon lives."""

    async def scenario() -> None:
        rig = Rig(pty_pair)
        await rig.serve()
        step = FixedStep(-3000.0)
        daemon = make_daemon(rig, step)
        task = asyncio.create_task(daemon.run())
        try:
            async with asyncio.timeout(90.0):
                await until(lambda: rig.at(-3000.0))
                pty_pair.vanish()
                await rig.sim.stop()  # its end of the line is gone too
                await gone_and_retrying(rig, task)
                step.power_w = -1500.0  # what the daemon asks for while the line is gone
                pty_pair.restore()
                await rig.serve()
                await until(lambda: rig.link.status is LinkStatus.UP and rig.faults() == ())
                await until(lambda: rig.at(-1500.0))
                daemon.request_stop()
                assert await task is ExitCode.OK
            assert rig.stage.target_w == 0.0  # the stop sequence reached the inverter
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await rig.sim.stop()

    asyncio.run(scenario())


def test_a_serial_port_that_stays_gone_keeps_the_link_down_and_cancel_ends_it(
    pty_pair: PtyPair,
) -> None:
    """A line that stays gone keeps the link DOWN with its reason; a cancel still ends it."""

    async def scenario() -> None:
        rig = Rig(pty_pair)
        await rig.serve()
        daemon = make_daemon(rig, FixedStep(-3000.0))
        task = asyncio.create_task(daemon.run())
        try:
            async with asyncio.timeout(60.0):
                await until(lambda: rig.at(-3000.0))
                pty_pair.vanish()
                await rig.sim.stop()
                await gone_and_retrying(rig, task)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert rig.link.status is LinkStatus.DOWN
            assert str(rig.pty.controller_end) in rig.faults()[0]
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    logs: list[MutableMapping[str, Any]]
    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    assert any(
        e["event"] == "could not command 0 W; the inverter's revert timer is the fallback"
        for e in logs
    )
