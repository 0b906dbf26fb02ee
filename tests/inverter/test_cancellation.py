"""A cancelled inverter link ends, whatever state its Modbus request is in.

The daemon stops by cancelling its links. On Python 3.11 pymodbus's ``wait_for`` returns the reply
instead of raising when a cancel lands in the same loop pass as the reply (CPython gh-86296); the
link then polled on and the stop never returned (issue 13: the 'late reply' hang). These tests hit
that pass exactly: the client's own receive hook cancels the requesting task as the reply's bytes
come in, before pymodbus hands the reply to the waiting request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from controller.core.snapshots import PowerCommand
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from controller.links import LinkStatus
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.support import until

BOUND_S = 10.0  # generous: only a link that ignores the cancel gets near it
RTU_BAUD = 57_600


class CancelOnReply(ModbusTransport):
    """A transport whose client, when armed, cancels a task as the next reply's bytes arrive.

    ``target`` None cancels the task that made the request, in the reply's own loop pass. A
    ``target`` task (the link's run task) is cancelled instead and the reply handed on one pass
    later: the TaskGroup then cancels its children in the very pass the reply completes their
    request, which is how the daemon's stop met a late reply."""

    def __init__(self, endpoint: TcpEndpoint | SerialEndpoint, **kwargs: float) -> None:
        super().__init__(endpoint, 1, **kwargs)  # type: ignore[arg-type]
        self.armed = False
        self.target: asyncio.Task[None] | None = None
        self.cancels = 0
        self._requester: asyncio.Task[object] | None = None

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        client = super()._new_client()
        protocol = client.ctx
        deliver = protocol.data_received

        def on_data(data: bytes) -> None:
            if not (data and self.armed):
                deliver(data)
                return
            self.armed = False
            self.cancels += 1
            if self.target is None:
                assert self._requester is not None
                self._requester.cancel()
                deliver(data)
            else:
                self.target.cancel()
                asyncio.get_running_loop().call_soon(deliver, data)

        protocol.data_received = on_data  # type: ignore[method-assign]
        return client

    async def read_registers(self, address: int, count: int, *, function: int = 3) -> list[int]:
        self._requester = asyncio.current_task()
        return await super().read_registers(address, count, function=function)


@contextlib.asynccontextmanager
async def simulator(
    transport_kind: str, directory: Path
) -> AsyncIterator[tuple[InverterSimulator, TcpEndpoint | SerialEndpoint]]:
    stage = PowerStage()
    sim = InverterSimulator(SunSpec700Profile(stage), stage)
    if transport_kind == "tcp":
        port = await sim.start_tcp()
        try:
            yield sim, TcpEndpoint("127.0.0.1", port)
        finally:
            await sim.stop()
        return
    with PtyPair(directory) as pty:
        await sim.start_serial(str(pty.inverter_end), baudrate=RTU_BAUD)
        try:
            yield sim, SerialEndpoint(str(pty.controller_end), baudrate=RTU_BAUD)
        finally:
            await sim.stop()


async def discharging(
    transport: ModbusTransport, sim: InverterSimulator, power_w: float
) -> tuple[ModbusInverterLink, asyncio.Task[None]]:
    """A running link that has the inverter at ``power_w``."""
    link = ModbusInverterLink(
        transport,
        SunSpecDriver(transport, revert_timeout_s=6),
        poll_interval_s=0.05,
        revert_timeout_s=6,
        retry_interval_s=0.2,
    )
    run = asyncio.create_task(link.run(lambda: None))
    assert await until(lambda: link.status is LinkStatus.UP, BOUND_S)
    await link.apply(PowerCommand(power_w, enable=True))
    assert await until(lambda: abs(sim.stage.target_w - power_w) < 1, BOUND_S)
    return link, run


@pytest.mark.parametrize("transport_kind", ["tcp", "rtu"])
def test_request_cancelled_as_its_reply_arrives_ends_cancelled(
    transport_kind: str, tmp_path: Path
) -> None:
    """A read cancelled in the very pass its reply arrives raises CancelledError, not the reply."""

    async def scenario() -> None:
        async with simulator(transport_kind, tmp_path) as (sim, endpoint):
            transport = CancelOnReply(endpoint, timeout_s=1.0)
            assert await transport.read_holding(40000, 2)  # connected, answering
            transport.armed = True
            request = asyncio.create_task(transport.read_holding(40000, 2))
            async with asyncio.timeout(BOUND_S):
                await asyncio.wait({request})
            assert transport.cancels == 1
            assert request.cancelled(), f"the cancel was lost: the read returned {request!r}"
            # The transport is usable afterwards: the next request reconnects and answers.
            assert await transport.read_holding(40000, 2)
            await transport.close()
            assert sim.requests >= 3

    asyncio.run(scenario())


@pytest.mark.parametrize("transport_kind", ["tcp", "rtu"])
def test_link_cancelled_as_a_reply_arrives_stops_and_is_left_at_zero(
    transport_kind: str, tmp_path: Path
) -> None:
    """A link cancelled as a reply arrives ends; the daemon's stop (cancel, then safe_stop)
    returns and leaves the inverter at 0 W."""

    async def scenario() -> None:
        async with simulator(transport_kind, tmp_path) as (sim, endpoint):
            transport = CancelOnReply(endpoint, timeout_s=1.0, retries=1)
            link, run = await discharging(transport, sim, -3000.0)
            # The daemon's stop cancels the link as the next reply arrives.
            transport.target = run
            transport.armed = True
            async with asyncio.timeout(BOUND_S):
                await asyncio.wait({run})
            assert run.cancelled()
            async with asyncio.timeout(BOUND_S):
                await link.safe_stop()
            assert sim.stage.target_w == 0.0

    asyncio.run(scenario())


@pytest.mark.parametrize("transport_kind", ["tcp", "rtu"])
def test_link_cancelled_while_a_request_waits_for_a_slow_reply_ends(
    transport_kind: str, tmp_path: Path
) -> None:
    """A link cancelled while a request is outstanding (the inverter answers late) ends promptly
    and its stop still commands 0 W once the inverter answers again."""

    async def scenario() -> None:
        async with simulator(transport_kind, tmp_path) as (sim, endpoint):
            transport = ModbusTransport(endpoint, 1, timeout_s=2.0, retries=0)
            link, run = await discharging(transport, sim, -2000.0)
            sim.reply_delay_s = 1.5  # every request now sits outstanding
            served = sim.requests
            assert await until(lambda: sim.requests > served, BOUND_S)
            assert transport.requests > 0
            run.cancel()
            async with asyncio.timeout(BOUND_S):
                await asyncio.wait({run})
            assert run.cancelled()
            sim.reply_delay_s = 0.0
            async with asyncio.timeout(BOUND_S):
                await link.safe_stop()
            assert sim.stage.target_w == 0.0

    asyncio.run(scenario())
