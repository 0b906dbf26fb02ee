"""A late reply never answers the next request, whatever ``retries`` is (issue 16, item 8).

RTU frames carry no transaction id and a read reply no address, only a byte count: two reads of
as many registers at different addresses look alike on the wire. With retries=0 the second read
used to return the first one's registers. Over the socat pty pair (and TCP, where a dropped
connection takes the late reply with it), and with bytes injected into the line by hand.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersResponse,
)

from controller.errors import InverterLinkError
from controller.inverter.transport import (
    ModbusTransport,
    SerialEndpoint,
    TcpEndpoint,
    reply_mismatch,
)
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

TIMEOUT_S = 0.3
BAUD = 115_200
# What the simulator holds at 40000.. (SunSpec700Profile): 'SunS', model 1's ID and L, 'V2'.
MARKER = [0x5375, 0x6E53]
MODEL_1_HEADER = [1, 66]
MANUFACTURER_START = [0x5632, 0x4720]  # "V2G " of "V2G Labs"


@asynccontextmanager
async def simulated(
    link: str, pty: PtyPair | None, retries: int
) -> AsyncIterator[tuple[InverterSimulator, ModbusTransport]]:
    stage = PowerStage()
    sim = InverterSimulator(SunSpec700Profile(stage), stage)
    if link == "tcp":
        port = await sim.start_tcp()
        endpoint: TcpEndpoint | SerialEndpoint = TcpEndpoint("127.0.0.1", port)
    else:
        assert pty is not None
        await sim.start_serial(str(pty.inverter_end), baudrate=BAUD)
        endpoint = SerialEndpoint(str(pty.controller_end), baudrate=BAUD)
    transport = ModbusTransport(endpoint, 1, timeout_s=TIMEOUT_S, retries=retries)
    try:
        yield sim, transport
    finally:
        await transport.close()
        await sim.stop()


async def outcome(read: Awaitable[list[int]]) -> list[int] | str:
    """The registers read, or "no valid reply" when the read timed out."""
    try:
        return await read
    except InverterLinkError as exc:
        return "no valid reply" if "no valid reply" in str(exc) else str(exc)


@pytest.mark.parametrize(
    ("link", "delay_s", "retries"),
    [
        ("rtu", 0.45, 0),
        ("rtu", 0.8, 0),  # later than the old fixed guard: this one returned 'SunS' for 40002
        ("rtu", 0.45, 1),
        ("rtu", 0.8, 2),
        ("tcp", 0.8, 0),
    ],
)
def test_a_late_reply_never_answers_the_next_request(
    link: str, delay_s: float, retries: int, request: pytest.FixtureRequest
) -> None:
    """Replies after their timeout; two reads of 2 registers at 40000 and 40002: each fails or
    returns its own registers, the second never the first one's; the line answers rightly once
    replies are on time again."""
    pty: PtyPair | None = request.getfixturevalue("pty_pair") if link == "rtu" else None

    async def scenario() -> None:
        async with simulated(link, pty, retries) as (sim, transport):
            assert await transport.read_holding(40000, 2) == MARKER  # connected
            sim.reply_delay_s = delay_s
            for address, expected in ((40000, MARKER), (40002, MODEL_1_HEADER)):
                answer = await outcome(transport.read_holding(address, 2))
                # Too late is no answer, and that is a right one; another's registers are not.
                assert answer in (expected, "no valid reply"), f"{address} answered {answer}"
            sim.reply_delay_s = 0.0
            assert await transport.read_holding(40004, 2) == MANUFACTURER_START
            assert await transport.read_holding(40002, 2) == MODEL_1_HEADER
            if link == "rtu":
                assert transport.late_replies >= 1  # seen and discarded, not taken

    asyncio.run(scenario())


def test_bytes_waiting_before_a_request_are_drained(pty_pair: PtyPair) -> None:
    """A complete reply frame already waiting in the tty when a request goes out (a late reply
    the event loop has not read yet) is discarded, not taken as the answer."""

    async def scenario() -> None:
        async with simulated("rtu", pty_pair, 0) as (_sim, transport):
            assert await transport.read_holding(40002, 2) == MODEL_1_HEADER
            stale = FramerRTU(DecodePDU(False)).buildFrame(
                ReadHoldingRegistersResponse(registers=[0xDEAD, 0xBEEF], dev_id=1)
            )
            line = os.open(pty_pair.inverter_end, os.O_WRONLY | os.O_NOCTTY)
            try:
                os.write(line, stale)  # as if the inverter had answered something late
            finally:
                os.close(line)
            # Block the loop on purpose: socat delivers the bytes, nobody reads them yet.
            time.sleep(0.2)  # noqa: ASYNC251
            assert await transport.read_holding(40002, 2) == MODEL_1_HEADER
            assert transport.drained_bytes >= len(stale)

    asyncio.run(scenario())


def test_a_reply_must_match_its_request() -> None:
    """Unit, function (of an exception reply too), the byte count of a read, the echo of a
    write: any difference means someone else's reply."""

    def read_reply(registers: list[int], dev_id: int = 1) -> ReadHoldingRegistersResponse:
        return ReadHoldingRegistersResponse(registers=registers, dev_id=dev_id)

    assert reply_mismatch(read_reply([1, 2]), 1, 3, 40000, 2) is None
    assert reply_mismatch(read_reply([1, 2]), 1, 3, 40000, 3) == (
        "asked for 3 registers, reply has 2"
    )
    assert reply_mismatch(read_reply([1, 2], dev_id=2), 1, 3, 40000, 2) == "reply from unit 2"
    assert reply_mismatch(read_reply([1, 2]), 1, 4, 40000, 2) == "reply has function 3"
    assert reply_mismatch(ExceptionResponse(3, 2), 1, 3, 40000, 2) is None
    assert reply_mismatch(ExceptionResponse(16, 2), 1, 3, 40000, 2) == "reply has function 144"
    echo = WriteMultipleRegistersResponse(address=40024, count=2, dev_id=1)
    assert reply_mismatch(echo, 1, 16, 40024, 2) is None
    assert reply_mismatch(echo, 1, 16, 40026, 2) == "write reply for 2 registers at 40024"
    assert reply_mismatch(echo, 1, 16, 40024, 3) == "write reply for 2 registers at 40024"
