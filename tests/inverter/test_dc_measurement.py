"""The DC output voltage of a 700-series inverter comes from model 714 (DER DC measurement), the
port that is the vehicle's (issue 17): the GB/T voltage match and both connector unlocks wait on
it (docs/vehicle.md)."""

from __future__ import annotations

import asyncio

import pytest

from controller.inverter.sunspec import SunSpecDevice
from controller.inverter.transport import ModbusTransport, TcpEndpoint
from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

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
