"""Driver for non-SunSpec inverters described by a register map file (config/inverters/*.yaml).

The map names each register (address, function, type, word order, scale, access) and which of
them are the setpoint, enable, heartbeat, status and fault registers. Reads are grouped into as
few requests as the addresses allow; every write is read back and compared.

A status, fault or enable register that holds no whole number (an f32 NaN or infinity, 1.5) is
a fault with a reason, never a crash; measured values pass the same plausibility screen as the
SunSpec drivers'; a setpoint the register cannot hold is refused with a ProtocolError
(issue 16, items 4 and 12).

A setpoint is rounded toward zero, never past the command (issue 16, item 9). A "timeout"
heartbeat register is proven on every command: the setpoint's read-back also reads it (one read
where the two lie within a few registers), and a device that lost it has it rewritten, or is
faulted when it will not keep it (``drivers.RevertProof``, issue 16, item 2). A "counter"
heartbeat has no register to prove: the timeout is the device's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from fractions import Fraction

from controller.config import MapRegister, RegisterMap
from controller.core.snapshots import InverterState
from controller.errors import ProtocolError
from controller.inverter.codec import RegType, WordOrder, decode, encode
from controller.inverter.drivers import (
    DeviceInfo,
    PlausibilityScreen,
    RevertNotKeptError,
    RevertProof,
)
from controller.inverter.sunspec import SetpointNotTakenError
from controller.inverter.transport import MAX_READ_REGISTERS, ModbusTransport

MAP_TYPES = {
    "u16": RegType.U16,
    "i16": RegType.I16,
    "u32": RegType.U32,
    "i32": RegType.I32,
    "f32": RegType.F32,
}
_FUNCTIONS = {"holding": 3, "input": 4}
_MAX_GAP = 8  # read across small gaps rather than issue another request


class RegisterMapDriver:
    """Drives an inverter through its vendor register map."""

    def __init__(
        self,
        transport: ModbusTransport,
        register_map: RegisterMap,
        revert_timeout_s: float,
        *,
        rated_power_w: float | None = None,
    ) -> None:
        self._transport = transport
        self._map = register_map
        self._revert_timeout_s = revert_timeout_s
        self._screen = PlausibilityScreen(rated_power_w)
        self.proof = RevertProof()
        self._enable_written: int | None = None  # the enable flag as last written and verified
        self._counter = 0
        roles = register_map.roles
        # The register whose value setup arms and every command proves; None for a counter.
        self._timeout_name = (
            roles.heartbeat.register_name if roles.heartbeat.kind == "timeout" else None
        )
        self._timeout_raw = round(revert_timeout_s)
        wanted = [
            roles.measured_power.register_name,
            roles.setpoint.register_name,
            roles.status.register_name if roles.status else None,
            roles.fault.register_name if roles.fault else None,
            roles.enable.register_name if roles.enable else None,
            roles.energy_charged,
            roles.energy_discharged,
            roles.temperature,
            roles.dc_voltage,
            roles.max_charge_power,
            roles.max_discharge_power,
        ]
        self._read_names = [name for name in wanted if name is not None]
        self._batches = batches(register_map, self._read_names)

    def _register(self, name: str) -> MapRegister:
        return self._map.registers[name]

    def _order(self, register: MapRegister) -> WordOrder:
        return WordOrder(register.word_order or self._map.word_order)

    def _encode(self, name: str, value: float) -> list[int]:
        register = self._register(name)
        raw = value / register.scale
        if not math.isfinite(raw):  # nothing to write; round() would raise on it
            raise ProtocolError(
                f"{name}: {value} / scale {register.scale:g} is not a finite number"
            )
        if register.type != "f32":
            # Toward zero, exactly: a setpoint never exceeds the command (issue 16, item 9).
            raw = math.trunc(Fraction(repr(value)) / Fraction(repr(register.scale)))
        try:
            return encode(raw, MAP_TYPES[register.type], self._order(register))
        except ProtocolError as exc:  # codec.EncodingError: the value does not fit
            raise ProtocolError(f"{name}: {value:g} refused: {exc}") from None

    async def _read_all(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for function, start, count, names in self._batches:
            registers = await self._transport.read_registers(start, count, function=function)
            for name in names:
                register = self._register(name)
                offset = register.address - start
                raw = decode(
                    registers[offset : offset + register.words],
                    MAP_TYPES[register.type],
                    self._order(register),
                )
                if not isinstance(raw, int | float):
                    raise ProtocolError(f"{name}: not a number")
                values[name] = float(raw) * register.scale
        return values

    async def _write_verified(self, name: str, value: float, *, prove: bool = False) -> None:
        """Write one register and read it back; with ``prove``, the same read-back also proves
        the timeout register armed at setup (rewritten when lost, ``RevertProof``)."""
        register = self._register(name)
        registers = self._encode(name, value)
        await self._transport.write_registers(register.address, registers)
        runs = [(register.address, registers)]
        timeout = self._timeout_name if prove else None
        if timeout is not None:
            runs.append((self._register(timeout).address, self._encode(timeout, self._timeout_raw)))
        held = await self._read_runs(runs)
        readback = held(register.address, len(registers))
        if readback != registers:
            raise SetpointNotTakenError(f"{name}: wrote {registers}, read back {readback}")
        if timeout is None:
            return
        address, armed = runs[1]
        found = held(address, len(armed))
        timer = self._register(timeout)
        lost = {} if found == armed else {timeout: decode(found, MAP_TYPES[timer.type])}
        self.proof.check(f"register {timeout}", lost, {timeout: self._timeout_raw})
        if lost:
            try:
                await self._write_verified(timeout, self._timeout_raw)
            except SetpointNotTakenError as exc:
                raise RevertNotKeptError(f"revert timer not kept: {exc}") from None
            self.proof.rewritten()

    async def _read_runs(
        self, runs: list[tuple[int, list[int]]]
    ) -> Callable[[int, int], list[int]]:
        """Read the holding registers of ``runs`` (at most two, apart) in one request where
        ``_MAX_GAP`` registers or fewer lie between them, else one each; returns
        (address, count) -> registers."""
        start = min(address for address, _ in runs)
        end = max(address + len(registers) for address, registers in runs)
        unwanted = end - start - sum(len(registers) for _, registers in runs)
        held: dict[int, int] = {}
        if unwanted <= _MAX_GAP and end - start <= MAX_READ_REGISTERS:
            block = await self._transport.read_holding(start, end - start)
            held.update(zip(range(start, end), block, strict=True))
        else:
            for address, registers in runs:
                block = await self._transport.read_holding(address, len(registers))
                held.update(zip(range(address, address + len(registers)), block, strict=True))
        return lambda address, count: [held[a] for a in range(address, address + count)]

    async def setup(self) -> DeviceInfo:
        await self._read_all()  # every mapped register answers, or the map is wrong
        if self._timeout_name is not None:
            await self._write_verified(self._timeout_name, self._timeout_raw)
        self.proof.reset()
        self._enable_written = None
        await self.command(0.0, enable=False)
        return DeviceInfo(
            manufacturer=self._map.manufacturer,
            model=self._map.model,
            serial="?",
            version="?",
            profile=f"register map {self._map.manufacturer} {self._map.model}",
        )

    async def read(self, now_s: float) -> InverterState:
        values = await self._read_all()
        roles = self._map.roles
        faults: list[str] = []
        if roles.status is not None:
            name = roles.status.register_name
            state = _whole(values[name])
            if state is None:
                faults.append(f"status register {name}: {values[name]:g} is not a state")
            elif state in roles.status.fault_values:
                faults.append(f"inverter state {roles.status.names.get(state, state)}")
        if roles.fault is not None:
            name = roles.fault.register_name
            code = _whole(values[name])
            if code is None:
                faults.append(f"fault register {name}: {values[name]:g} is not a fault code")
            elif code:
                faults.append(f"fault {code} ({roles.fault.names.get(code, 'unknown')})")
        power = values[roles.measured_power.register_name]
        if roles.measured_power.sign == "export_positive":
            power = -power
        enabled = True
        if roles.enable is not None:
            name = roles.enable.register_name
            flag = _whole(values[name])
            if flag is None:
                faults.append(f"enable register {name}: {values[name]:g} is not a whole number")
            enabled = flag == roles.enable.on
            if flag != self._enable_written:
                self._enable_written = None  # changed on the device: written with the next command

        def optional(name: str | None) -> float | None:
            return None if name is None else values[name]

        return self._screen.screen(
            InverterState(
                observed_at_s=now_s,
                reachable=True,
                enabled=enabled,
                measured_power_w=power,
                dc_voltage_v=optional(roles.dc_voltage),
                max_charge_power_w=optional(roles.max_charge_power),
                max_discharge_power_w=optional(roles.max_discharge_power),
                temperature_c=optional(roles.temperature),
                faults=tuple(faults),
                energy_charged_wh=optional(roles.energy_charged),
                energy_discharged_wh=optional(roles.energy_discharged),
            )
        )

    async def command(self, power_w: float, enable: bool) -> None:
        roles = self._map.roles
        setpoint = power_w if enable else 0.0
        if roles.setpoint.sign == "export_positive":
            setpoint = -setpoint
        if not enable:
            await self._write_verified(roles.setpoint.register_name, 0.0, prove=True)
        if roles.enable is not None:
            # Written when it changes (or a poll found it changed), not with every heartbeat:
            # at 600 ms a reply each request stretches the time between two setpoint writes.
            flag = roles.enable.on if enable else roles.enable.off
            if flag != self._enable_written:
                self._enable_written = None
                await self._write_verified(roles.enable.register_name, flag)
                self._enable_written = flag
        if enable:
            await self._write_verified(roles.setpoint.register_name, setpoint, prove=True)
        # A "timeout" heartbeat is restarted by the setpoint write itself; a "counter" one
        # must see a new value with every command.
        if roles.heartbeat.kind == "counter":
            self._counter = (self._counter + 1) % 0x10000
            await self._write_verified(roles.heartbeat.register_name, self._counter)


def _whole(value: float) -> int | None:
    """A status, fault or enable value as an integer; None for NaN, infinities and fractions
    (an f32 register, or a scale that does not divide), which name no state."""
    return int(value) if math.isfinite(value) and value.is_integer() else None


def batches(
    register_map: RegisterMap, names: Iterable[str]
) -> list[tuple[int, int, int, list[str]]]:
    """(function, start, count, names) reads covering ``names`` in few requests."""
    by_function: dict[int, list[tuple[int, int, str]]] = {}
    for name in dict.fromkeys(names):
        register = register_map.registers[name]
        by_function.setdefault(_FUNCTIONS[register.function], []).append(
            (register.address, register.words, name)
        )
    reads: list[tuple[int, int, int, list[str]]] = []
    for function, entries in sorted(by_function.items()):
        entries.sort()
        start, end, members = entries[0][0], entries[0][0] + entries[0][1], [entries[0][2]]
        for address, words, name in entries[1:]:
            if address - end <= _MAX_GAP and address + words - start <= MAX_READ_REGISTERS:
                end = max(end, address + words)
                members.append(name)
            else:
                reads.append((function, start, end - start, members))
                start, end, members = address, address + words, [name]
        reads.append((function, start, end - start, members))
    return reads
