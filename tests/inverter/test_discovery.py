"""SunSpec discovery as pysunspec2 does it (issue 16, item 5): every base address is tried after
any failure at the one before, and a model's ID and L come in one request. Over TCP and RTU
against the simulator, and against in-memory devices for the request counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.sunspec import END_MODEL_ID, SunSpecDevice
from controller.inverter.transport import (
    ModbusTransport,
    NotConnectedError,
    SerialEndpoint,
    TcpEndpoint,
)
from hil.inverter.field import field_device
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.memory_device import model_block, sunspec_device

CHAIN_700 = [1, 701, 702, 704, 713, 714]
TIMEOUT_S = 0.3


@pytest.fixture(params=["tcp", "rtu"])
def link(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pty(link: str, request: pytest.FixtureRequest) -> PtyPair | None:
    if link != "rtu":
        return None
    pair: PtyPair = request.getfixturevalue("pty_pair")
    return pair


@asynccontextmanager
async def served(
    sim: InverterSimulator, link: str, pty: PtyPair | None, *, retries: int = 1
) -> AsyncIterator[ModbusTransport]:
    """The simulator listening on ``link``, and a transport to it."""
    if link == "tcp":
        port = await sim.start_tcp()
        transport = ModbusTransport(
            TcpEndpoint("127.0.0.1", port), 1, timeout_s=TIMEOUT_S, retries=retries
        )
    else:
        assert pty is not None
        await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
        endpoint = SerialEndpoint(str(pty.controller_end), baudrate=115_200)
        transport = ModbusTransport(endpoint, 1, timeout_s=TIMEOUT_S, retries=retries)
    try:
        yield transport
    finally:
        await transport.close()
        await sim.stop()


@pytest.mark.parametrize("base", [0, 50000])
def test_discovery_finds_the_chain_at_base_0_and_50000(
    base: int, link: str, pty: PtyPair | None
) -> None:
    """A device whose chain starts at 0 or 50000 (exception 2 at the bases before) is found."""

    async def scenario() -> None:
        sim = field_device(SunSpec700Profile, PowerStage(), base=base)
        async with served(sim, link, pty) as transport:
            device = await SunSpecDevice.discover(transport)
            assert device.base == base
            assert device.model_ids == CHAIN_700
            assert (await device.read(1)).text("Mn") == "V2G Labs"

    asyncio.run(scenario())


def test_discovery_moves_on_when_the_device_is_silent_at_40000(
    link: str, pty: PtyPair | None
) -> None:
    """A device that answers nothing at 40000 (no reply, not even an exception) is found at 0."""

    async def scenario() -> None:
        sim = field_device(SunSpec700Profile, PowerStage(), base=0, silent_at_40000=True)
        async with served(sim, link, pty, retries=0) as transport:
            device = await SunSpecDevice.discover(transport)
            assert device.base == 0
            assert device.model_ids == CHAIN_700
            assert sim.silenced == 1  # asked once at 40000 (retries=0), then at 0

    asyncio.run(scenario())


def test_discovery_reads_each_model_header_in_one_request() -> None:
    """Marker, one request per model (ID and L together), the end marker: 7 for 5 models."""
    transport = sunspec_device(40000, [model_block(m) for m in CHAIN_700])
    device = asyncio.run(SunSpecDevice.discover(transport))
    assert device.model_ids == CHAIN_700
    assert transport.requests == 1 + len(CHAIN_700) + 1  # it was 1 + 2 x 5 + 1 = 12


def test_discovery_accepts_an_end_marker_without_length() -> None:
    """A chain ending in 0xFFFF with no L register after it (exception 2 for the two-register
    read) ends cleanly: the ID is read alone."""
    transport = sunspec_device(40000, [model_block(m) for m in CHAIN_700], end=False)
    end_address = max(transport.registers) + 1
    transport.load(end_address, [END_MODEL_ID])  # nothing at end_address + 1
    device = asyncio.run(SunSpecDevice.discover(transport))
    assert device.model_ids == CHAIN_700
    assert transport.requests == 1 + len(CHAIN_700) + 2


def test_discovery_moves_on_after_a_foreign_marker_and_reports_every_base() -> None:
    """Another device's registers at 40000 and nothing at 50000: found at 0; with no marker
    anywhere the error names what each base held."""
    transport = sunspec_device(0, [model_block(1), model_block(704)])
    transport.load(40000, [0x1234, 0x5678])
    assert asyncio.run(SunSpecDevice.discover(transport)).base == 0

    nowhere = sunspec_device(0, [])
    nowhere.registers = {40000: 0x1234, 40001: 0x5678}
    with pytest.raises(InverterLinkError, match="no SunSpec marker") as caught:
        asyncio.run(SunSpecDevice.discover(nowhere))
    message = str(caught.value)
    assert "40000: 0x1234 0x5678" in message
    assert "0: exception 2" in message
    assert "50000: exception 2" in message


def test_discovery_stops_at_once_when_nothing_can_be_connected() -> None:
    """No device at the address: the connect failure is the error, not three probes' worth."""

    async def scenario() -> None:
        transport = ModbusTransport(TcpEndpoint("127.0.0.1", 9), 1, timeout_s=TIMEOUT_S)
        with pytest.raises(NotConnectedError, match="cannot connect"):
            await SunSpecDevice.discover(transport)
        assert transport.requests == 0
        await transport.close()

    asyncio.run(scenario())


def test_an_end_marker_at_the_last_register_is_read_alone() -> None:
    """A chain whose end marker sits at register 65535 ends there (one register read)."""
    common = model_block(1)
    filler = 0xFFFF - (50000 + 2 + len(common)) - 2  # a vendor model up to register 65534
    transport = sunspec_device(50000, [common, [64120, filler, *[0] * filler]], end=False)
    transport.load(0xFFFF, [END_MODEL_ID])
    assert asyncio.run(SunSpecDevice.discover(transport)).model_ids == [1, 64120]

    transport.load(0xFFFF, [1])  # a model ID with no room for its L
    with pytest.raises(ProtocolError, match="no room for its length"):
        asyncio.run(SunSpecDevice.discover(transport))
