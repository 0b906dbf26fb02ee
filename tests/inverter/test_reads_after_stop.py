"""After ``safe_stop`` the inverter link writes nothing more but keeps reading: the vehicle
session ends on measurements taken after the stop (issue 17). The connection closes when the
link's ``run`` ends, not before."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import pytest

from controller.core.snapshots import InverterState, PowerCommand
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, TcpEndpoint
from controller.links import LinkStatus
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

POLL_S = 0.05
# SunSpec exception 4 (server device failure): every request fails while it is set.
DEVICE_FAILURE = 4


class CountingTransport(ModbusTransport):
    """The real transport, counting every register write it sends."""

    def __init__(self, port: int) -> None:
        super().__init__(
            TcpEndpoint("127.0.0.1", port),
            1,
            timeout_s=0.3,
            retries=0,
            backoff_initial_s=0.05,
            backoff_max_s=0.1,
        )
        self.writes = 0

    async def write_registers(self, address: int, values: Sequence[int]) -> None:
        self.writes += 1
        await super().write_registers(address, values)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


class Rig:
    """A simulated SunSpec 700 inverter and the link polling it."""

    def __init__(self) -> None:
        self.stage = PowerStage()
        self.sim = InverterSimulator(SunSpec700Profile(self.stage), self.stage)

    async def start(self) -> None:
        self.transport = CountingTransport(await self.sim.start_tcp())
        self.link = ModbusInverterLink(
            self.transport,
            SunSpecDriver(self.transport, revert_timeout_s=6),
            poll_interval_s=POLL_S,
            revert_timeout_s=6,
            retry_interval_s=0.2,
        )
        self.task = asyncio.create_task(self.link.run(lambda: None))
        assert await until(lambda: self.link.status is LinkStatus.UP)

    def connected(self) -> bool:
        """Whether the link holds its connection to the device now."""
        return self.transport.connected

    def state(self) -> InverterState:
        state = self.link.snapshot()
        assert state is not None
        return state

    async def cancel(self) -> None:
        """Cancel run and wait for it to end (a run that ended on its own is left as it is)."""
        if self.task.done():
            return
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.mark.timeout(30)
def test_after_safe_stop_readings_go_on_and_nothing_is_written() -> None:
    """After safe_stop the snapshot keeps being renewed (the 0 W reached is seen), a failed read
    is recorded and retried without a new setup, no register is written, and the connection
    stays open until run is cancelled, which closes it."""

    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        try:
            await rig.link.apply(PowerCommand(-3000.0, enable=True))
            assert await until(lambda: abs(rig.stage.actual_w + 3000) < 1)
            await rig.link.safe_stop()
            assert rig.stage.target_w == 0.0
            writes = rig.transport.writes
            stopped_at_s = rig.state().observed_at_s
            # Readings after the stop, and among them the stage at 0 W.
            assert await until(
                lambda: (
                    rig.state().observed_at_s > stopped_at_s and rig.state().measured_power_w == 0.0
                )
            ), "no reading after the stop saw 0 W"
            seen: set[float] = set()
            for _ in range(20):  # 0.4 s: about eight polls
                seen.add(rig.state().observed_at_s)
                await asyncio.sleep(0.02)
            assert len(seen) >= 4, f"only {len(seen)} readings in 0.4 s after the stop"
            await rig.link.apply(PowerCommand(-2000.0, enable=True))  # nothing may follow
            # A device that fails its replies: recorded, retried, never set up again.
            rig.sim.exception_code = DEVICE_FAILURE
            assert await until(lambda: any("read failed" in f for f in rig.state().faults))
            rig.sim.exception_code = None
            assert await until(lambda: rig.state().faults == () and rig.state().reachable)
            await asyncio.sleep(0.2)
            assert rig.transport.writes == writes, "a register was written after safe_stop"
            assert rig.stage.target_w == 0.0
            assert rig.connected(), "the connection closed while run still reads"
            await rig.cancel()
            assert not rig.connected(), "run ended and left the connection open"
            assert await until(lambda: rig.sim.open_connections == 0)
        finally:
            await rig.cancel()
            await rig.sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_safe_stop_after_run_ended_closes_what_it_opened() -> None:
    """The daemon's stop after a crash: run has ended (and closed the connection); safe_stop
    reconnects to write 0 W, then closes the connection again."""

    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        try:
            await rig.link.apply(PowerCommand(-3000.0, enable=True))
            assert await until(lambda: abs(rig.stage.actual_w + 3000) < 1)
            await rig.cancel()
            assert not rig.connected()
            await rig.link.safe_stop()
            assert rig.stage.target_w == 0.0
            assert not rig.connected(), "safe_stop after run left the connection open"
            assert await until(lambda: rig.sim.open_connections == 0)
        finally:
            await rig.cancel()
            await rig.sim.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_crashed_run_closes_the_connection() -> None:
    """A poller that crashes (a bug, not a Modbus failure) ends run with its error, and the
    connection is closed on the way out."""

    async def scenario() -> None:
        rig = Rig()
        await rig.start()
        try:
            assert rig.connected()

            def broken(_now_s: float) -> InverterState:
                raise ZeroDivisionError("driver bug")

            async def read(now_s: float) -> InverterState:
                return broken(now_s)

            rig.link._driver.read = read  # type: ignore[method-assign]  # the injected bug
            with pytest.raises(ExceptionGroup) as info:
                await rig.task
            assert info.group_contains(ZeroDivisionError)
            assert not rig.connected()
            assert await until(lambda: rig.sim.open_connections == 0)
        finally:
            await rig.cancel()
            await rig.sim.stop()

    asyncio.run(scenario())
