"""Issue 16, item 7: "server device busy" (exception 6) means "try again", not a fault.

Modbus application protocol 1.1b3, section 7: exception 5 (acknowledge) and 6 (server device
busy) tell the client to retry later. The transport retries them with a growing pause for as long
as the request's budget allows; a device that stays busy past it is a fault, with the code in
the reason. Over TCP and over RTU (a socat pty pair), against the simulator's busy injections.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controller.core.snapshots import PowerCommand
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import (
    ModbusExceptionResponse,
    ModbusTransport,
    SerialEndpoint,
    TcpEndpoint,
)
from controller.links import LinkStatus
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.test_link_faults import until

TIMEOUT_S = 0.3
RETRIES = 1  # budget: 0.6 s of busy answers per request


@contextlib.asynccontextmanager
async def rig(
    kind: str, directory: Path
) -> AsyncIterator[tuple[InverterSimulator, ModbusTransport]]:
    stage = PowerStage()
    sim = InverterSimulator(SunSpec700Profile(stage), stage)
    with contextlib.ExitStack() as stack:
        if kind == "tcp":
            port = await sim.start_tcp()
            endpoint: TcpEndpoint | SerialEndpoint = TcpEndpoint("127.0.0.1", port)
        else:
            if shutil.which("socat") is None:
                pytest.skip("socat is not installed (make test installs it)")
            pty = stack.enter_context(PtyPair(directory))
            await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
            endpoint = SerialEndpoint(str(pty.controller_end), baudrate=115_200)
        transport = ModbusTransport(endpoint, 1, timeout_s=TIMEOUT_S, retries=RETRIES)
        try:
            yield sim, transport
        finally:
            await transport.close()
            await sim.stop()


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_a_few_busy_answers_are_retried_not_reported(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(kind, tmp_path) as (sim, transport):
            sim.busy_next = 3
            values = await transport.read_holding(40000, 2)
            assert values == [0x5375, 0x6E53]  # "SunS": the answer after the busy ones
            assert (sim.busy_answers, transport.busy_replies) == (3, 3)
            assert transport.timeouts == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
def test_a_device_that_stays_busy_is_an_error_once_the_budget_is_spent(
    kind: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with rig(kind, tmp_path) as (sim, transport):
            sim.busy_probability = 1.0
            with pytest.raises(
                ModbusExceptionResponse, match=r"exception 6 \(server device busy\)"
            ):
                await transport.read_holding(40000, 2)
            assert transport.busy_replies >= 3  # retried, with pauses, before giving up
            sim.busy_probability = 0.0
            assert await transport.read_holding(40000, 2) == [0x5375, 0x6E53]

    asyncio.run(scenario())


def test_a_link_to_a_busy_device_keeps_following_without_a_fault(tmp_path: Path) -> None:
    """One request in five answered "busy" for seconds: the link never faults and the stage
    follows the command (before, one busy answer latched a fault: 0 W until the next setup)."""

    async def scenario() -> None:
        async with rig("tcp", tmp_path) as (sim, transport):
            link = ModbusInverterLink(
                transport,
                SunSpecDriver(transport, revert_timeout_s=6),
                poll_interval_s=0.05,
                revert_timeout_s=6,
                retry_interval_s=0.2,
            )
            faults: list[tuple[str, ...]] = []
            task = asyncio.create_task(link.run(lambda: None))
            try:
                assert await until(lambda: link.status is LinkStatus.UP)
                sim.busy_probability = 0.2
                for power_w in (-3000.0, -1000.0, 2000.0):
                    await link.apply(PowerCommand(power_w, enable=True))
                    assert await until(_near(sim, power_w), 5.0), sim.stage.actual_w
                    for _ in range(10):
                        state = link.snapshot()
                        if state is not None and state.faults:
                            faults.append(state.faults)
                        await asyncio.sleep(0.05)
                assert sim.busy_answers > 5
                assert faults == []
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(scenario())


def _near(sim: InverterSimulator, power_w: float) -> Callable[[], bool]:
    return lambda: abs(sim.stage.actual_w - power_w) < 1
