"""SunSpec discovery and control against the simulated inverter, over TCP and over RTU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from controller.errors import InverterLinkError
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import Profile, SunSpec100Profile, SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

PROFILES: dict[str, tuple[Callable[[PowerStage], Profile], list[int]]] = {
    "sunspec-700": (SunSpec700Profile, [1, 701, 702, 704, 713, 714]),
    "sunspec-100": (SunSpec100Profile, [1, 103, 120, 121, 123, 124]),
}


@asynccontextmanager
async def simulated(
    profile_name: str, link: str, pty: PtyPair | None
) -> AsyncIterator[tuple[InverterSimulator, ModbusTransport]]:
    stage = PowerStage()
    sim = InverterSimulator(PROFILES[profile_name][0](stage), stage)
    if link == "tcp":
        port = await sim.start_tcp()
        transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1, timeout_s=1.0)
    else:
        assert pty is not None
        await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
        transport = ModbusTransport(
            SerialEndpoint(str(pty.controller_end), baudrate=115_200), 1, timeout_s=1.0
        )
    try:
        yield sim, transport
    finally:
        await transport.close()
        await sim.stop()


def run_on(
    profile_name: str,
    link: str,
    pty: PtyPair | None,
    body: Callable[[InverterSimulator, ModbusTransport], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with simulated(profile_name, link, pty) as (sim, transport):
            await body(sim, transport)

    asyncio.run(main())


@pytest.fixture(params=["tcp", "rtu"])
def link(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pty(link: str, request: pytest.FixtureRequest) -> PtyPair | None:
    if link != "rtu":
        return None
    pair: PtyPair = request.getfixturevalue("pty_pair")
    return pair


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_discovery_finds_the_model_chain(profile_name: str, link: str, pty: PtyPair | None) -> None:
    """Discovery finds 'SunS' at 40000 and walks the chain to 0xFFFF."""

    async def body(sim: InverterSimulator, transport: ModbusTransport) -> None:
        device = await SunSpecDevice.discover(transport)
        assert device.base == 40000
        assert device.model_ids == PROFILES[profile_name][1]

    run_on(profile_name, link, pty, body)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
@pytest.mark.parametrize("power_w", [-3000.0, 2500.0])
def test_setpoint_written_read_back_and_reached(
    profile_name: str, link: str, pty: PtyPair | None, power_w: float
) -> None:
    """A setpoint is written, verified by read-back, and the stage reaches it (sign converted)."""

    async def body(sim: InverterSimulator, transport: ModbusTransport) -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=10)
        info = await driver.setup()
        assert info.profile == profile_name
        assert info.manufacturer == "V2G Labs"
        await driver.command(power_w, enable=True)
        deadline = time.monotonic() + 5
        state = await driver.read(time.monotonic())
        while time.monotonic() < deadline:
            state = await driver.read(time.monotonic())
            if state.measured_power_w is not None and abs(state.measured_power_w - power_w) < 10:
                break
            await asyncio.sleep(0.05)
        assert state.measured_power_w is not None
        # 100-series rates are in tenths of a percent of WChaMax: within 0.1 % of 7400 W.
        assert abs(state.measured_power_w - power_w) < 10
        assert abs(sim.stage.actual_w - power_w) < 10
        assert state.enabled
        assert state.faults == ()
        await driver.command(0.0, enable=False)
        assert sim.stage.target_w == 0.0

    run_on(profile_name, link, pty, body)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_revert_timer_armed_at_setup(profile_name: str) -> None:
    """Setup arms the inverter's revert timer: left alone, the stage returns to 0 W by itself."""

    async def body(sim: InverterSimulator, transport: ModbusTransport) -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=1)
        await driver.setup()
        assert sim.stage.revert_timeout_s == 1
        await driver.command(-4000.0, enable=True)
        await asyncio.sleep(0.3)
        assert sim.stage.actual_w < -3000
        await transport.close()  # the controller goes silent
        await asyncio.sleep(1.5)
        assert sim.stage.actual_w == 0.0
        assert sim.stage.reverts == 1

    run_on(profile_name, "tcp", None, body)


def test_storage_error_is_a_fault() -> None:
    """Model 713 Sta ERROR, where present, is reported as an inverter fault."""

    async def body(sim: InverterSimulator, transport: ModbusTransport) -> None:
        driver = SunSpecDriver(transport, revert_timeout_s=10)
        await driver.setup()
        assert (await driver.read(time.monotonic())).faults == ()
        profile = sim.profile
        assert isinstance(profile, SunSpec700Profile)
        profile.image.set_raw(713, "Sta", 2)
        assert (await driver.read(time.monotonic())).faults == ("storage status ERROR",)

    run_on("sunspec-700", "tcp", None, body)


def test_late_reply_is_never_the_answer_to_the_next_request(link: str, pty: PtyPair | None) -> None:
    """A reply that arrives after its timeout is discarded, not given to the next request."""

    async def body(sim: InverterSimulator, transport: ModbusTransport) -> None:
        transport.timeout_s = 0.3
        transport.retries = 0
        sim.reply_delay_s = 0.5
        with pytest.raises(InverterLinkError, match="no valid reply"):
            await transport.read_holding(40000, 2)  # 'SunS', answered too late
        sim.reply_delay_s = 0.0
        model_header = await transport.read_holding(40002, 2)
        assert model_header == [1, 66]  # model 1's ID and L, not the late 'SunS'

    run_on("sunspec-700", link, pty, body)
