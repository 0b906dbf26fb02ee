"""The inverter link under injected faults: each ends faulted with a reason, no setpoint is
written until the inverter recovers, and then it resumes by itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from controller.core.snapshots import PowerCommand
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, TcpEndpoint
from controller.links import LinkStatus
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.injections import INJECTIONS


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


class Rig:
    def __init__(self) -> None:
        self.stage = PowerStage()
        self.sim = InverterSimulator(SunSpec700Profile(self.stage), self.stage)
        self.wakes = 0

    async def start(self) -> ModbusInverterLink:
        port = await self.sim.start_tcp()
        transport = ModbusTransport(
            TcpEndpoint("127.0.0.1", port),
            1,
            timeout_s=0.3,
            retries=1,
            backoff_initial_s=0.1,
            backoff_max_s=0.2,
        )
        self.link = ModbusInverterLink(
            transport,
            SunSpecDriver(transport, revert_timeout_s=6),
            poll_interval_s=0.05,
            revert_timeout_s=6,
            retry_interval_s=0.2,
        )
        self.task = asyncio.create_task(self.link.run(self._wake))
        assert await until(lambda: self.link.status is LinkStatus.UP)
        return self.link

    def _wake(self) -> None:
        self.wakes += 1

    def faults(self) -> tuple[str, ...]:
        state = self.link.snapshot()
        return state.faults if state else ()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.link.safe_stop()
        await self.sim.stop()


async def discharging(rig: Rig) -> ModbusInverterLink:
    link = await rig.start()
    await link.apply(PowerCommand(-3000.0, enable=True))
    assert await until(lambda: abs(rig.stage.actual_w + 3000) < 1)
    return link


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_fault_latches_blocks_writes_and_recovers(name: str) -> None:
    """An injected fault ends in a faulted state with a reason; no setpoints until recovery."""
    inject, clear, reason = INJECTIONS[name]

    async def scenario() -> None:
        rig = Rig()
        link = await discharging(rig)
        inject(rig.sim)
        if name == "stuck setpoint":
            await link.apply(PowerCommand(-1000.0, enable=True))  # a write must notice
        assert await until(lambda: any(reason in f for f in rig.faults())), rig.faults()
        writes = link.writes
        await link.apply(PowerCommand(-2000.0, enable=True))
        await asyncio.sleep(0.6)
        assert link.writes == writes, "a setpoint was written while faulted"
        assert rig.stage.target_w != -2000.0
        clear(rig.sim)
        assert await until(lambda: rig.faults() == () and link.writes > writes, 8.0)
        assert await until(lambda: abs(rig.stage.actual_w + 2000) < 1)
        await rig.stop()

    asyncio.run(scenario())


def test_inverter_that_faults_is_left_at_zero() -> None:
    """A faulted inverter is told 0 W and disabled, so a fault that clears by itself cannot
    bring back the old setpoint before the controller sets it up anew."""

    async def scenario() -> None:
        rig = Rig()
        await discharging(rig)
        rig.sim.trip("grid loss")
        assert await until(lambda: any("FAULT" in f for f in rig.faults()))
        assert await until(lambda: rig.stage.target_w == 0.0)  # held at 0 W (700: WSet 0)
        await rig.stop()

    asyncio.run(scenario())


def test_disconnect_reconnects_without_an_operator() -> None:
    """Dropped TCP connections are re-established and control resumes."""

    async def scenario() -> None:
        rig = Rig()
        link = await discharging(rig)
        rig.sim.disconnect_clients()
        await asyncio.sleep(0.3)
        await link.apply(PowerCommand(-1500.0, enable=True))
        assert await until(lambda: abs(rig.stage.actual_w + 1500) < 1, 8.0)
        assert rig.faults() == ()
        await rig.stop()

    asyncio.run(scenario())


def test_unreachable_inverter_is_down_with_a_reason() -> None:
    """No inverter at the address: the link is DOWN and the snapshot says why."""

    async def scenario() -> None:
        transport = ModbusTransport(TcpEndpoint("127.0.0.1", 1), 1, timeout_s=0.2)
        link = ModbusInverterLink(
            transport, SunSpecDriver(transport, 6), retry_interval_s=0.1, revert_timeout_s=6
        )
        task = asyncio.create_task(link.run(lambda: None))
        assert await until(lambda: link.status is LinkStatus.DOWN)
        state = link.snapshot()
        assert state is not None
        assert not state.reachable
        assert "cannot connect" in state.faults[0]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.safe_stop()

    asyncio.run(scenario())


def test_heartbeat_keeps_the_revert_timer_from_running_out() -> None:
    """While the controller lives, the setpoint is re-sent before the revert timer expires."""

    async def scenario() -> None:
        rig = Rig()
        port = await rig.sim.start_tcp()
        transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1, timeout_s=0.3)
        link = ModbusInverterLink(
            transport, SunSpecDriver(transport, 2), poll_interval_s=0.1, revert_timeout_s=2
        )
        rig.link = link
        rig.task = asyncio.create_task(link.run(lambda: None))
        await link.apply(PowerCommand(-3000.0, enable=True))
        assert await until(lambda: abs(rig.stage.actual_w + 3000) < 1)
        await asyncio.sleep(3.0)  # longer than the 2 s revert time
        assert rig.stage.reverts == 0
        assert abs(rig.stage.actual_w + 3000) < 1
        await rig.stop()
        assert rig.stage.target_w == 0.0  # safe_stop

    asyncio.run(scenario())
