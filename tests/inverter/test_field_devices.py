"""The simulator's field devices (issue 16): a full 100-series chain with communication, status
and MPPT models and a vendor model; an inverter that serves one TCP connection only."""

from __future__ import annotations

import asyncio

import pytest
from pymodbus.client import AsyncModbusTcpClient

from controller.errors import InverterLinkError
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.field import (
    IP_ADDRESS,
    MAC,
    MPPT_INPUTS,
    MPPT_MODULE_LENGTH,
    VENDOR_LENGTH,
    VENDOR_MODEL,
    FieldChain100Profile,
)
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

MARKER = [0x5375, 0x6E53]
FIELD_CHAIN = [1, 11, 12, 103, 120, 121, 122, 123, 124, 160, VENDOR_MODEL]


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_a_field_chain_sets_up_commands_and_reads(
    link: str, request: pytest.FixtureRequest
) -> None:
    """Models 1, 11, 12, 103, 120-124, 160 with two inputs and a vendor model: discovery lists
    them with the device's lengths, the communication models decode, and the 100-series driver
    sets up, commands and reads as on the bare chain."""
    pty: PtyPair | None = request.getfixturevalue("pty_pair") if link == "rtu" else None

    async def scenario() -> None:
        stage = PowerStage()
        sim = InverterSimulator(FieldChain100Profile(stage), stage)
        if link == "tcp":
            port = await sim.start_tcp()
            transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1, timeout_s=1.0)
        else:
            assert pty is not None
            await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
            endpoint = SerialEndpoint(str(pty.controller_end), baudrate=115_200)
            transport = ModbusTransport(endpoint, 1, timeout_s=1.0)
        try:
            device = await SunSpecDevice.discover(transport)
            assert device.model_ids == FIELD_CHAIN
            assert device.block(160).length == 8 + MPPT_INPUTS * MPPT_MODULE_LENGTH
            assert device.block(VENDOR_MODEL).length == VENDOR_LENGTH
            assert device.block(VENDOR_MODEL).definition is None
            comms = await device.read_models({11: None, 12: None, 160: ("N",)})
            assert comms[11].text("MAC") == MAC
            assert comms[12].text("Addr") == IP_ADDRESS
            assert comms[160].integer("N") == MPPT_INPUTS
            driver = SunSpecDriver(transport, revert_timeout_s=10)
            info = await driver.setup()
            assert info.profile == "sunspec-100"
            assert info.models == tuple(FIELD_CHAIN)
            await driver.command(-2000.0, enable=True)
            assert stage.target_w == pytest.approx(-2000.0, abs=10)
            state = await driver.read(0.0)
            assert state.faults == ()
            assert state.enabled
            await driver.command(0.0, enable=False)
            assert stage.target_w == 0.0
        finally:
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())


async def one_connection_device(
    policy: str,
) -> tuple[InverterSimulator, ModbusTransport, AsyncModbusTcpClient]:
    """A device that serves one TCP connection, our transport, and another Modbus client (a
    monitoring logger) pointed at the same device, not yet connected."""
    stage = PowerStage()
    sim = InverterSimulator(SunSpec700Profile(stage), stage)
    sim.max_connections = 1
    sim.extra_connection = "refuse" if policy == "refuse" else "replace"
    port = await sim.start_tcp()
    transport = ModbusTransport(
        TcpEndpoint("127.0.0.1", port), 1, timeout_s=0.3, retries=1, backoff_initial_s=0.05
    )
    logger = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
    return sim, transport, logger


def test_one_connection_only_a_newcomer_is_refused_until_the_holder_leaves() -> None:
    """While another client holds the only connection the link cannot get an answer (an
    error, never a hang); once it leaves, the link connects and reads."""

    async def scenario() -> None:
        sim, transport, logger = await one_connection_device("refuse")
        try:
            assert await logger.connect()
            with pytest.raises(InverterLinkError, match="closed the connection"):
                await transport.read_holding(40000, 2)
            assert sim.connections_refused >= 1
            assert sim.open_connections == 1  # the logger's
            logger.close()
            await asyncio.sleep(0.2)  # the device notices; the link's backoff (0.05 s) passes
            assert await transport.read_holding(40000, 2) == MARKER
            assert sim.open_connections == 1
        finally:
            logger.close()
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())


def test_one_connection_only_the_link_reconnects_without_holding_two() -> None:
    """After a timeout the link drops its connection before opening the next: a device that
    refuses a second connection still answers it, and never holds two of ours."""

    async def scenario() -> None:
        sim, transport, logger = await one_connection_device("refuse")
        try:
            assert await transport.read_holding(40000, 2) == MARKER
            for _ in range(5):
                sim.drop_replies = True
                with pytest.raises(InverterLinkError, match="no valid reply"):
                    await transport.read_holding(40000, 2)
                sim.drop_replies = False
                assert await transport.read_holding(40002, 2) == [1, 66]
            assert sim.connections_refused == 0
            assert sim.connections >= 6  # one per timeout, each after the last was closed
        finally:
            logger.close()
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())


def test_one_connection_only_a_newcomer_replaces_the_link_which_takes_it_back() -> None:
    """A device that drops the older connection for a newer one: when another client connects
    the link's connection goes; its next request reconnects (within its retries) and reads."""

    async def scenario() -> None:
        sim, transport, logger = await one_connection_device("replace")
        try:
            assert await transport.read_holding(40000, 2) == MARKER
            assert await logger.connect()
            await asyncio.sleep(0.1)
            assert sim.connections_dropped == 1
            assert await transport.read_holding(40002, 2) == [1, 66]
            assert sim.connections_dropped == 2  # the logger's, for ours
            assert sim.open_connections == 1
        finally:
            logger.close()
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())
