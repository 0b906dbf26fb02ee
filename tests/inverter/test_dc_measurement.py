"""The DC output voltage of a 700-series inverter comes from model 714 (DER DC measurement), the
port that is the vehicle's (issue 17): the GB/T voltage match and both connector unlocks wait on
it (docs/vehicle.md)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog

from controller.core.snapshots import InverterState
from controller.inverter.drivers import SunSpecDriver, vehicle_port
from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.sunspec_models import model_def
from controller.inverter.transport import ModbusTransport, TcpEndpoint
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from hil.inverter.sunspec_image import END_MARKER, SunSpecImage
from tests.inverter.memory_device import MemoryTransport

# -- the simulator ------------------------------------------------------------------------------


def test_the_simulator_714_port_follows_the_stage() -> None:
    """The 700 profile's 714 has one port, typed EV (by the JSON's symbols), whose DCV at
    DCV_SF -1 reads 380 V until the plant sets the stage's DC voltage, then follows it."""
    stage = PowerStage()
    profile = SunSpec700Profile(stage)
    image = profile.image
    definition = image.definitions[714]
    assert image.get_raw(714, "NPrt") == 1
    assert image.registers[image.model_address[714] - image.base + 1] == definition.length + 25
    port_type = image.get_raw(714, "Prt[0].PrtTyp")
    assert isinstance(port_type, int)
    assert definition.point("Prt[0].PrtTyp").symbols[port_type] == "EV"
    assert image.get_raw(714, "DCV_SF") == -1
    profile.refresh(stage, 0.0)
    assert image.get_value(714, "Prt[0].DCV") == pytest.approx(380.0)
    for volts in (352.4, 12.3, 0.0):
        stage.dc_voltage_v = volts
        profile.refresh(stage, 1.0)
        assert image.get_raw(714, "Prt[0].DCV") == round(volts * 10)


def test_the_simulator_serves_714_over_modbus() -> None:
    """Over TCP, discovery finds 714 after 713, and its port's DCV register carries the stage's
    voltage as the plant sets it."""

    async def scenario() -> None:
        stage = PowerStage(dc_voltage_v=401.7)
        sim = InverterSimulator(SunSpec700Profile(stage), stage)
        port = await sim.start_tcp()
        transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1, timeout_s=1.0)
        try:
            device = await SunSpecDevice.discover(transport)
            assert device.model_ids[-2:] == [713, 714]
            values = (await device.read_models({714: ("NPrt", "Prt[0].DCV")}))[714]
            assert values.repeat_count() == 1
            assert values.value("Prt[0].DCV") == pytest.approx(401.7)
            stage.dc_voltage_v = 55.0
            values = (await device.read_models({714: ("Prt[0].DCV",)}))[714]
            assert values.value("Prt[0].DCV") == pytest.approx(55.0)
        finally:
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())


# -- the driver ---------------------------------------------------------------------------------

EV, ESS, PV, BIDIR = 2, 1, 0, 5  # 714 PrtTyp values (pysunspec2 model_714.json)
NO_DC_VOLTAGE = "SunSpec 714 gives no DC voltage"


class RecordingTransport(MemoryTransport):
    """Also notes every read, (address, count)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int]] = []

    async def read_holding(self, address: int, count: int) -> list[int]:
        self.reads.append((address, count))
        return await super().read_holding(address, count)


def port_block(
    ports: list[tuple[int | None, float | None]],
    *,
    dcv_sf: int = -1,
    declared: int | None = None,
    length: int | None = None,
) -> list[int]:
    """714 with one port per (PrtTyp, volts) (None: not implemented), DCV at ``dcv_sf``; NPrt
    and L overridden when given."""
    image = SunSpecImage(0, [714], repeats={714: len(ports)})
    for sf in ("DCA_SF", "DCW_SF", "DCWH_SF", "Tmp_SF"):
        image.set_raw(714, sf, 0)
    image.set_raw(714, "DCV_SF", dcv_sf)
    for index, (kind, volts) in enumerate(ports):
        if kind is not None:
            image.set_raw(714, f"Prt[{index}].PrtTyp", kind)
        if volts is not None:
            image.set_value(714, f"Prt[{index}].DCV", volts)
    if declared is not None:
        image.set_raw(714, "NPrt", declared)
    block = image.registers[2:-2]
    if length is not None:
        block = [714, length, *block[2 : length + 2], *[0] * max(0, length + 2 - len(block))]
    return block


def device_with(block: list[int] | None) -> RecordingTransport:
    """The simulator's 700 chain with its 714 replaced by ``block`` (or left out)."""
    stage = PowerStage()
    profile = SunSpec700Profile(stage)
    profile.refresh(stage, 0.0)
    image = profile.image
    chain = image.registers[: image.model_address[714] - image.base]
    transport = RecordingTransport()
    transport.load(profile.start_address, [*chain, *(block or []), *END_MARKER])
    return transport


def polled(
    transport: MemoryTransport,
) -> tuple[InverterState, InverterState, list[MutableMapping[str, Any]]]:
    """Setup, then two polls of the real driver; what it logged."""
    driver = SunSpecDriver(transport, revert_timeout_s=10)

    async def scenario() -> tuple[InverterState, InverterState]:
        await driver.setup()
        return await driver.read(0.0), await driver.read(1.0)

    with structlog.testing.capture_logs() as logs:
        first, second = asyncio.run(scenario())
    return first, second, logs


def test_the_700_driver_reports_the_ev_port_voltage() -> None:
    """Of three ports (PV 600 V, EV 352.4 V, ESS 48 V, at DCV_SF -1) the EV port's DCV is the
    DC voltage, scaled, in every poll; the choice is logged once at setup."""
    transport = device_with(port_block([(PV, 600.0), (EV, 352.4), (ESS, 48.0)]))
    first, second, logs = polled(transport)
    assert first.dc_voltage_v == pytest.approx(352.4)
    assert second.dc_voltage_v == pytest.approx(352.4)
    assert first.faults == ()
    chosen = [e for e in logs if e["event"] == "DC voltage from SunSpec 714"]
    assert [(e["port"], e["port_type"], e["ports"]) for e in chosen] == [(1, "EV", 3)]


def test_a_scale_factor_applies() -> None:
    """DCV_SF -2 and 0 scale the register (37512 at -2 is 375.12 V; 401 at 0 is 401 V)."""
    for dcv_sf, volts in ((-2, 375.12), (0, 401.0)):
        first, _, _ = polled(device_with(port_block([(EV, volts)], dcv_sf=dcv_sf)))
        assert first.dc_voltage_v == pytest.approx(volts)


def test_the_simulator_voltage_reaches_the_driver() -> None:
    """The simulator's own 714 (one EV port) gives its stage's voltage to the driver."""
    stage = PowerStage(dc_voltage_v=399.5)
    profile = SunSpec700Profile(stage)
    profile.refresh(stage, 0.0)
    transport = MemoryTransport()
    transport.load(profile.start_address, profile.registers)
    first, _, _ = polled(transport)
    assert first.dc_voltage_v == pytest.approx(399.5)


def test_a_poll_reads_714_only_up_to_the_port_and_stays_two_requests() -> None:
    """With 714 the simulator chain's poll is still 2 requests, and it reads 714 only up to the
    vehicle port's DCV (32 registers from the ID when it is the first of three ports)."""
    transport = device_with(port_block([(EV, 352.4), (PV, 600.0), (ESS, 48.0)]))
    driver = SunSpecDriver(transport, revert_timeout_s=10)

    async def scenario() -> int:
        await driver.setup()
        transport.reads.clear()
        before = transport.requests
        state = await driver.read(0.0)
        assert state.dc_voltage_v == pytest.approx(352.4)
        return transport.requests - before

    assert asyncio.run(scenario()) == 2
    poll_end = max(address + count for address, count in transport.reads)
    device = asyncio.run(SunSpecDevice.discover(transport))
    assert poll_end == device.block(714).address + model_def(714).point("Prt[0].DCV").offset + 1


def test_not_implemented_is_unknown_not_zero() -> None:
    """A port DCV of 0xFFFF (not implemented) is None, not 0 V and not 6553.5 V; the rest of
    the state is read as ever."""
    first, _, _ = polled(device_with(port_block([(EV, None)])))
    assert first.dc_voltage_v is None
    assert first.faults == ()
    assert first.max_charge_power_w == 7400.0


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (port_block([]), "it has no DC ports (NPrt 0)"),
        (port_block([(EV, 352.4)], length=50), "L=50 does not hold"),
        (port_block([(EV, 352.4)], length=30), "L=30 does not hold"),
        (port_block([(EV, 352.4)], length=10), "L=10 does not hold"),
        (port_block([(EV, 352.4)], declared=2), "NPrt = 2 but L=43 holds 1"),
        (port_block([(EV, 352.4)], declared=0), "NPrt = 0 but L=43 holds 1"),
        (port_block([(EV, 352.4)], dcv_sf=-0x8000), "scale factor not implemented"),
        (port_block([(EV, 352.4), (EV, 12.0)]), "none of its 2 DC ports"),
        (port_block([(PV, 600.0)]), "none of its 1 DC ports (PrtTyp ['PV'])"),
    ],
    ids=[
        "no-ports",
        "partial-port",
        "short-port",
        "short-fixed-part",
        "nprt-above-l",
        "nprt-below-l",
        "dcv-sf-not-implemented",
        "two-ev-ports",
        "pv-only",
    ],
)
def test_a_714_that_gives_no_port_is_no_voltage_never_a_fault(
    block: list[int], reason: str
) -> None:
    """No ports, an L that does not fit, an NPrt that disagrees with L, a DCV_SF not
    implemented, two EV ports or only PV: no DC voltage (None), logged once at setup with the
    reason; setup and polls succeed and the inverter is not faulted."""
    first, second, logs = polled(device_with(block))
    assert (first.dc_voltage_v, second.dc_voltage_v) == (None, None)
    assert first.faults == second.faults == ()
    warnings = [e for e in logs if e["event"] == NO_DC_VOLTAGE]
    assert len(warnings) == 1
    assert reason in warnings[0]["reason"]


def test_without_714_there_is_no_voltage_and_no_warning() -> None:
    """A chain without 714 reads as before: no DC voltage, nothing logged about it."""
    first, _, logs = polled(device_with(None))
    assert first.dc_voltage_v is None
    assert not [e for e in logs if e["event"] == NO_DC_VOLTAGE]


def test_an_implausible_port_voltage_is_unknown() -> None:
    """A port DCV beyond the 1500 V band (60000 at DCV_SF -1 = 6000 V) is screened to None."""
    first, _, _ = polled(device_with(port_block([(EV, 6000.0)])))
    assert first.dc_voltage_v is None


@pytest.mark.parametrize(
    ("types", "port"),
    [
        (["EV"], 0),
        ([None], 0),  # an only port whose type is not implemented
        (["BIDIR"], 0),
        (["PV", "EV", "ESS"], 1),
        (["ESS", "PV"], 0),
        (["PV", "BIDIR"], 1),  # the only port that is not PV
        (["EV", "EV"], None),  # two outlets: which is ours cannot be told
        (["ESS", "ESS", "PV"], None),
        (["EV", "EV", "ESS"], None),  # an ambiguous EV is not replaced by the ESS port
        (["PV"], None),
        (["BIDIR", "DC_DC"], None),
        ([], None),
    ],
)
def test_which_port_is_the_vehicle(types: list[str | None], port: int | None) -> None:
    """EV ports first, then ESS, then any port not PV; one candidate is the port, several none."""
    assert vehicle_port(types) == port
