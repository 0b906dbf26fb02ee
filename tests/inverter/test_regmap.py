"""Vendor register maps: the shipped map validates, drives the simulated inverter over TCP and
RTU, and a broken map is rejected with located reasons."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import RegisterMap, load_config, load_register_map
from controller.errors import ConfigError, ProtocolError
from controller.inverter.codec import encode
from controller.inverter.regmap import MAP_TYPES, RegisterMapDriver
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import RegisterMapProfile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage
from tests.inverter.memory_device import MemoryTransport

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


# -- f32 status and fault registers: NaN and infinity are faults, never crashes (issue 16, 4) --

F32_MAP = RegisterMap.model_validate(
    yaml.safe_load(
        """
manufacturer: X
model: F32
registers:
  power: {address: 0, type: f32, unit: W}
  setpoint: {address: 2, type: f32, access: rw, unit: W}
  enable: {address: 4, type: f32, access: rw}
  heartbeat: {address: 6, type: u16, access: rw, unit: s}
  status: {address: 8, type: f32}
  fault: {address: 10, type: f32}
  temp: {address: 12, type: f32, unit: degC}
  e_in: {address: 14, type: f32, unit: Wh}
  e_out: {address: 16, type: f32, unit: Wh}
  dcv: {address: 18, type: f32, unit: V}
  rated_in: {address: 20, type: f32, unit: W}
  rated_out: {address: 22, type: f32, unit: W}
roles:
  measured_power: {register: power, sign: export_positive}
  setpoint: {register: setpoint, sign: import_positive}
  enable: {register: enable}
  heartbeat: {register: heartbeat, kind: timeout}
  status: {register: status, names: {0: standby, 1: running, 3: fault}, fault_values: [3]}
  fault: {register: fault, names: {1: overtemperature}}
  temperature: temp
  energy_charged: e_in
  energy_discharged: e_out
  dc_voltage: dcv
  max_charge_power: rated_in
  max_discharge_power: rated_out
"""
    )
)
F32_NAMES = [name for name, r in F32_MAP.registers.items() if r.type == "f32"]
HEALTHY_F32 = dict.fromkeys(F32_NAMES, 0.0) | {"enable": 1.0, "temp": 35.0}


def f32_device(values: dict[str, float]) -> MemoryTransport:
    transport = MemoryTransport()
    transport.load(0, [0] * 24)  # the gap after the u16 heartbeat reads as 0
    for name, register in F32_MAP.registers.items():
        value = values.get(name, 0.0)
        transport.load(register.address, encode(value, MAP_TYPES[register.type]))
    return transport


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2.5])
@pytest.mark.parametrize("register", ["status", "fault", "enable"])
def test_f32_state_registers_that_are_no_number_are_faults(register: str, bad: float) -> None:
    """A status, fault or enable register holding NaN, inf or a fraction names no state: the
    read reports a fault naming the register (int() raised ValueError / OverflowError)."""
    driver = RegisterMapDriver(f32_device(HEALTHY_F32 | {register: bad}), F32_MAP, 10)
    state = asyncio.run(driver.read(0.0))
    assert len(state.faults) == 1
    assert state.faults[0].startswith(f"{register} register {register}: {bad:g} is not")
    assert not state.enabled or register != "enable"


@settings(max_examples=300)
@given(st.fixed_dictionaries({name: st.floats(width=32) for name in F32_NAMES}))
def test_any_f32_values_read_without_crashing(values: dict[str, float]) -> None:
    """Any float32 in any register (NaN, infinities, huge) reads as a state, never an
    exception; every measured value in it is finite (ratings pass as read: the core reads a
    rating that is not a finite number as "permits nothing"), and a register naming no state
    is a fault."""
    state = asyncio.run(RegisterMapDriver(f32_device(values), F32_MAP, 10).read(0.0))
    for value in (
        state.measured_power_w,
        state.temperature_c,
        state.dc_voltage_v,
        state.energy_charged_wh,
        state.energy_discharged_wh,
    ):
        assert value is None or math.isfinite(value)
    for name in ("status", "fault"):
        if not (math.isfinite(values[name]) and values[name].is_integer()):
            assert any(f.startswith(f"{name} register") for f in state.faults)


@pytest.mark.parametrize(
    ("register_type", "scale", "power_w"),
    [("f32", 1e-40, 3000.0), ("i16", 0.001, 3000.0), ("f32", 1.0, 1e39), ("i32", 1.0, math.nan)],
)
def test_setpoint_the_register_cannot_hold_is_refused(
    register_type: str, scale: float, power_w: float
) -> None:
    """A setpoint that overflows its register at the map's scale, or is not finite, is refused
    with a ProtocolError before anything is written (round() raised OverflowError)."""
    registers = F32_MAP.registers | {
        "setpoint": F32_MAP.registers["setpoint"].model_copy(
            update={"type": register_type, "scale": scale}
        )
    }
    register_map = F32_MAP.model_copy(update={"registers": registers})
    transport = f32_device(HEALTHY_F32)
    driver = RegisterMapDriver(transport, register_map, 10)
    with pytest.raises(ProtocolError, match="setpoint"):
        asyncio.run(driver.command(power_w, enable=True))
    assert all(address != 2 for address, _ in transport.writes)
