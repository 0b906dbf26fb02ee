"""Vendor register maps: the shipped map validates, drives the simulated inverter over TCP and
RTU, and a broken map is rejected with located reasons."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from controller.config import load_config, load_register_map
from controller.errors import ConfigError
from controller.inverter.regmap import RegisterMapDriver
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import RegisterMapProfile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "inverters" / "v2glabs-bd7.yaml"


def test_shipped_map_is_valid_and_complete() -> None:
    """The shipped map names every role the controller can use."""
    register_map = load_register_map(SHIPPED)
    roles = register_map.roles
    assert roles.enable is not None
    assert roles.status is not None
    assert roles.fault is not None
    assert None not in (
        roles.energy_charged,
        roles.energy_discharged,
        roles.temperature,
        roles.max_charge_power,
        roles.max_discharge_power,
    )


@pytest.mark.parametrize("link", ["tcp", "rtu"])
def test_map_driver_commands_and_reads(link: str, tmp_path: Path) -> None:
    """Through the map: setpoint verified, stage reaches it, energy and faults read back."""
    register_map = load_register_map(SHIPPED)

    async def scenario(pty: PtyPair | None) -> None:
        stage = PowerStage()
        sim = InverterSimulator(RegisterMapProfile(register_map, stage), stage)
        if pty is None:
            port = await sim.start_tcp()
            transport = ModbusTransport(TcpEndpoint("127.0.0.1", port), 1)
        else:
            await sim.start_serial(str(pty.inverter_end), baudrate=57_600)
            transport = ModbusTransport(SerialEndpoint(str(pty.controller_end), baudrate=57_600), 1)
        driver = RegisterMapDriver(transport, register_map, revert_timeout_s=10)
        info = await driver.setup()
        assert info.model == "BD-7"
        assert stage.revert_timeout_s == 10
        await driver.command(-2500.0, enable=True)
        await asyncio.sleep(0.4)
        state = await driver.read(time.monotonic())
        assert state.measured_power_w == pytest.approx(-2500.0)
        assert state.enabled
        assert state.max_discharge_power_w == 7400.0
        assert state.energy_discharged_wh is not None
        sim.trip("overtemperature")
        state = await driver.read(time.monotonic())
        assert state.faults == ("inverter state fault", "fault 1 (overtemperature)")
        assert state.measured_power_w == 0.0
        await driver.command(0.0, enable=False)
        assert not stage.enabled
        await transport.close()
        await sim.stop()

    if link == "tcp":
        asyncio.run(scenario(None))
    else:
        with PtyPair(tmp_path) as pty:
            asyncio.run(scenario(pty))


BROKEN = """\
manufacturer: X
model: Y
registers:
  p: {address: 1, type: i32}
  sp: {address: 10, type: i32, access: r}
  hb: {address: 12, type: u16, access: rw, scale: 0}
roles:
  measured_power: {register: p, sign: export_positive}
  setpoint: {register: sp, sign: import_positive}
  heartbeat: {register: hb, kind: counter}
  temperature: temp
"""


def test_broken_map_reports_each_problem(tmp_path: Path) -> None:
    """A read-only setpoint, an undefined register and a counter without timeout are all
    reported together; a zero scale is reported with its line."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN.replace(", scale: 0", ""))
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    text = str(info.value)
    assert f"{path}:11: roles.temperature: names register 'temp', which is not defined" in text
    assert f"{path}:9: roles.setpoint: expected register 'sp' to be rw, found r" in text
    assert f"{path}:10: roles.heartbeat: kind counter: expected timeout_s" in text
    path.write_text(BROKEN)
    with pytest.raises(ConfigError, match=r"broken.yaml:6: registers.hb: expected a non-zero"):
        load_register_map(path)


def test_config_checks_the_map_it_names(tmp_path: Path) -> None:
    """check-config follows inverter.register_map (relative to the config) and reports its
    problems with the map's own file and line."""
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "broken.yaml").write_text(BROKEN)
    config = tmp_path / "config.yaml"
    config.write_text(
        "site: {site_id: s, charger_id: c}\n"
        "vehicle: {protocol: chademo}\n"
        "inverter: {transport: tcp, tcp: {host: h}, profile: register_map,"
        " register_map: maps/broken.yaml}\n"
        "aggregator: {enabled: false}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert all(p.file.endswith("broken.yaml") for p in info.value.problems)
    (tmp_path / "maps" / "good.yaml").write_text(SHIPPED.read_text())
    config.write_text(config.read_text().replace("broken.yaml", "good.yaml"))
    loaded = load_config(config)
    assert loaded.inverter.register_map == str(tmp_path / "maps" / "good.yaml")
