"""A simulated inverter of any profile on TCP or on RTU (a socat pty pair), with the controller's
transport, driver and (optionally) link pointed at it: the rig of the revert-proof, not-following
and 124-window tests."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.config import load_register_map
from controller.inverter.drivers import InverterDriver, SunSpecDriver
from controller.inverter.following import FollowingBand
from controller.inverter.link import ModbusInverterLink
from controller.inverter.regmap import RegisterMapDriver
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import (
    Profile,
    RegisterMapProfile,
    SunSpec100Profile,
    SunSpec700Profile,
)
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage, StageRatings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MAP = ROOT / "config" / "inverters" / "v2glabs-bd7.yaml"
BAUD = 115_200

PROFILES: dict[str, Callable[[PowerStage], Profile]] = {
    "sunspec-700": SunSpec700Profile,
    "sunspec-100": SunSpec100Profile,
    "map": lambda stage: RegisterMapProfile(load_register_map(SHIPPED_MAP), stage),
}


@dataclass
class Device:
    sim: InverterSimulator
    stage: PowerStage
    transport: ModbusTransport
    driver: SunSpecDriver | RegisterMapDriver

    @property
    def profile(self) -> Profile:
        return self.sim.profile


def driver_for(
    profile_name: str, transport: ModbusTransport, revert_timeout_s: float
) -> SunSpecDriver | RegisterMapDriver:
    if profile_name == "map":
        return RegisterMapDriver(transport, load_register_map(SHIPPED_MAP), revert_timeout_s)
    return SunSpecDriver(transport, revert_timeout_s)


@contextlib.asynccontextmanager
async def device(
    profile: str | Callable[[PowerStage], Profile],
    link: str,
    directory: Path,
    *,
    revert_timeout_s: float = 3.0,
    ratings: StageRatings | None = None,
    profile_name: str | None = None,
) -> AsyncIterator[Device]:
    """The simulated device (``profile`` a name of PROFILES or a factory, then ``profile_name``
    says which driver) answering on ``link`` ("tcp" or "rtu")."""
    stage = PowerStage(ratings or StageRatings())
    factory = PROFILES[profile] if isinstance(profile, str) else profile
    name = profile if isinstance(profile, str) else profile_name or "sunspec-100"
    sim = InverterSimulator(factory(stage), stage)
    with contextlib.ExitStack() as stack:
        if link == "tcp":
            port = await sim.start_tcp()
            endpoint: TcpEndpoint | SerialEndpoint = TcpEndpoint("127.0.0.1", port)
        else:
            if shutil.which("socat") is None:
                pytest.skip("socat is not installed (make test installs it)")
            pty = stack.enter_context(PtyPair(directory))
            await sim.start_serial(str(pty.inverter_end), baudrate=BAUD)
            endpoint = SerialEndpoint(str(pty.controller_end), baudrate=BAUD)
        transport = ModbusTransport(endpoint, 1, timeout_s=0.5, retries=1)
        try:
            yield Device(sim, stage, transport, driver_for(name, transport, revert_timeout_s))
        finally:
            await transport.close()
            await sim.stop()


def link_for(
    dev: Device,
    revert_timeout_s: float,
    following: FollowingBand | None = None,
) -> ModbusInverterLink:
    driver: InverterDriver = dev.driver
    return ModbusInverterLink(
        dev.transport,
        driver,
        poll_interval_s=0.05,
        revert_timeout_s=revert_timeout_s,
        retry_interval_s=0.2,
        following=following,
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``predicate`` came true within ``timeout_s`` (loose: the machine may be loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def faults(link: ModbusInverterLink) -> tuple[str, ...]:
    state = link.snapshot()
    return state.faults if state else ()
