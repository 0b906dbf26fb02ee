"""Inverter drivers: what a power command means in each register dialect.

Every driver converts the sign at this edge: inside the controller + charges the vehicle; in
SunSpec (701 W, 704 WSet, 103 W) + is generation, i.e. export, i.e. discharging the vehicle.
Every write is read back and compared (``SetpointNotTakenError`` otherwise); nothing is assumed.
Every command re-arms the inverter's own revert timer, so a silent controller leaves the inverter
at 0 W after ``revert_timeout_s``.

The revert timer is proven, not assumed (issue 16, item 2): the read-back of every command (the
link re-sends it every third of the revert time) also covers the timer, its enable and the
revert value armed at setup (704 WSetRvrt..WSetRvrtTms, 124 InOutWRte_RvrtTms, a map's timeout
register), in one block read where they lie next to the setpoint. A device that lost them has
them rewritten, with a log line (``RevertProof``); one that will not keep them (the rewrite reads
back wrong, or they are lost again at the next command) is a fault with that reason.

Encoding rounds toward zero (``codec.toward_zero``): a setpoint never exceeds the command, and
so never the core's cap (issue 16, item 9).

A command whose registers cannot hold it (a scale factor inside SunSpec's -10..10 that overflows
the point, e.g. WSet_SF -6 at 3 kW) is refused with a ProtocolError before anything is written.
Every reading passes a plausibility screen (``PlausibilityScreen``) before it becomes an
``InverterState``: a value outside its physical band is unknown (None), never a measurement
(issue 16, items 4 and 12).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import structlog

from controller.core.snapshots import InverterState
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import check_scale_factor, decode, toward_zero
from controller.inverter.sunspec import ModelValues, SetpointNotTakenError, SunSpecDevice
from controller.inverter.sunspec_models import GroupLayoutError, UnknownPointError
from controller.inverter.transport import ModbusTransport

log = structlog.get_logger(component="inverter")

ENABLED = 1
DISABLED = 0
WSET_MOD_WATTS = 1  # 704 WSetMod: 0 percent of WMax, 1 watts
INVST_FAULT = 6  # 701 InvSt symbol FAULT
ST103_FAULT = 7  # 103 St symbol FAULT
CONN_CONNECTED = 1  # 701 ConnSt
STA713_ERROR = 2  # 713 Sta
STATE802_FAULT = 99  # 802 State
STORCTL_CHARGE_AND_DISCHARGE = 0b11  # 124 StorCtl_Mod: both rate controls active

# Physical bands for measured values (issue 16, item 12). A value outside is a broken sensor, a
# wrong scale factor or a corrupt register (-4.6e11 C and 12 MW were seen inside the legal int
# range), never a measurement: it becomes None, so it cannot feed the wear count or the ledger.
# The core's range for any temperature (core/rules.py TEMPERATURE_RANGE_C; a test keeps them
# equal): a reading the core would judge implausible is also a fault here (see the screen).
TEMPERATURE_BAND_C = (-60.0, 150.0)
RATING_MARGIN = 1.2  # measured |W| may exceed the rating by meter error and transients, not more
MAX_POWER_W = 400_000.0  # no charger this controller drives is larger (config: powers le=400 kW)
MAX_DC_VOLTAGE_V = 1500.0  # the low-voltage directive's DC ceiling (as core/rules.py)
TEMPERATURE_IMPLAUSIBLE = "inverter temperature reading implausible (outside -60..150 C)"

# What a poll uses of each model (their scale factors are added): read together in as few
# requests as the chain allows (``SunSpecDevice.read_models``; issue 16, item 6). A slow device
# (600 ms a reply) must have its snapshot read within the core's 3 s: two requests, not four.
POLL_POINTS_700: dict[int, tuple[str, ...]] = {
    701: ("InvSt", "ConnSt", "Alrm", "W", "TmpCab", "TotWhInj", "TotWhAbs"),
    703: ("ES",),
    704: ("WSetEna",),
    713: ("Sta",),
    802: ("State", "Evt1"),
}
POLL_POINTS_100 = ("St", "Evt1", "W", "DCV", "TmpCab", "WH")  # of 101, 102 or 103 alike
# 714 (DER DC measurement) adds the vehicle port's DCV, the port chosen at setup
# (``vehicle_port``): read from 714's ID up to that point, DCV_SF on the way (32 registers for
# the first port).
DC_MODEL = 714


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    manufacturer: str
    model: str
    serial: str
    version: str
    profile: str  # "sunspec-700", "sunspec-100" or the register map's name
    models: tuple[int, ...] = ()


class InverterDriver(Protocol):
    """One register dialect. All methods raise InverterLinkError (or a subclass) on failure."""

    proof: RevertProof  # the revert settings' proof, counting rewrites across setups

    async def setup(self) -> DeviceInfo:
        """Identify the device, read its ratings and arm its revert timer."""
        ...

    async def read(self, now_s: float) -> InverterState:
        """Read measurements, state and faults."""
        ...

    async def command(self, power_w: float, enable: bool) -> None:
        """Write the setpoint (+ charges the vehicle) and power-stage enable; verified."""
        ...


def vehicle_port(types: Sequence[str | None]) -> int | None:
    """Which of model 714's DC ports is the vehicle's, from their PrtTyp symbol names (None: not
    implemented or a value the definition does not name); None when no port can be told. Pure.

    The ports typed EV; where there are none, those typed ESS (a charger may call the car's pack
    an energy storage system); where there are none, every port not typed PV (a solar string's
    voltage is never the vehicle's), which takes in an only port of a generic type. The first of
    these that is not empty decides: one port is the vehicle's; more than one is none at all.
    Two outlets of one kind cannot be told apart from the model, and the voltage of the wrong
    one could release a connector lock under voltage (GB/T below 60 V, CHAdeMO at 10 V or less)
    or let GB/T close its contactors on another car's voltage: unknown (None) holds both
    (docs/vehicle.md)."""
    tiers = (
        [index for index, kind in enumerate(types) if kind == "EV"],
        [index for index, kind in enumerate(types) if kind == "ESS"],
        [index for index, kind in enumerate(types) if kind != "PV"],
    )
    candidates = next((tier for tier in tiers if tier), [])
    return candidates[0] if len(candidates) == 1 else None


def _dc_port_points(device: SunSpecDevice) -> tuple[str, ...]:
    """What setup reads of 714 to choose the vehicle's port: NPrt, DCV_SF and the PrtTyp of
    every port its L holds; nothing when the device has no 714 it can use (logged)."""
    if not device.has(DC_MODEL):
        return ()
    block = device.block(DC_MODEL)
    definition = block.definition
    if definition is None:  # discovery has logged it
        return ()
    try:
        ports = definition.repeats_in(block.length)
        return (
            "NPrt",
            "DCV_SF",
            *(definition.repeat_name(index, "PrtTyp") for index in range(ports)),
        )
    except (GroupLayoutError, UnknownPointError) as exc:
        _no_dc_voltage(str(exc))
        return ()


def _vehicle_dc_voltage_point(values: ModelValues) -> str | None:
    """The name of the vehicle port's DCV in 714 (``Prt[0].DCV``), from what setup read
    (``_dc_port_points``); None, logged, when 714 cannot give it."""
    definition = values.definition
    try:
        ports = values.repeat_count()  # L and NPrt agree
        check_scale_factor(values.integer("DCV_SF"))  # static: not implemented is no voltage
        types = [_symbol(values, definition.repeat_name(i, "PrtTyp")) for i in range(ports)]
        port = vehicle_port(types)
        point = None if port is None else definition.repeat_name(port, "DCV")
    except ProtocolError as exc:  # GroupLayoutError, UnknownPointError, a bad DCV_SF
        _no_dc_voltage(str(exc))
        return None
    if port is None:
        _no_dc_voltage(
            f"none of its {ports} DC ports (PrtTyp {types}) is the vehicle's"
            if ports
            else "it has no DC ports (NPrt 0)"
        )
        return None
    log.info("DC voltage from SunSpec 714", port=port, port_type=types[port], ports=ports)
    return point


def _symbol(values: ModelValues, name: str) -> str | None:
    """An enum point's symbol name; None when not implemented or not named by the definition."""
    raw = values.integer(name)
    return None if raw is None else _symbols(values, name).get(raw)


def _no_dc_voltage(reason: str) -> None:
    log.warning("SunSpec 714 gives no DC voltage", reason=reason)


def _bit_names(value: int | None, symbols: dict[int, str]) -> list[str]:
    if not value:
        return []
    return [symbols.get(bit, f"bit {bit}") for bit in range(32) if value >> bit & 1]


def _identity(common: ModelValues, profile: str, models: list[int]) -> DeviceInfo:
    return DeviceInfo(
        manufacturer=common.text("Mn") or "?",
        model=common.text("Md") or "?",
        serial=common.text("SN") or "?",
        version=common.text("Vr") or "?",
        profile=profile,
        models=tuple(models),
    )


class PlausibilityScreen:
    """Sets measured values outside their physical band to None (unknown) before they become
    state; each point is logged the first time it is set aside, not on every poll (``rejected``
    counts them).

    - Power: the rating of the direction it flows (the other direction's, or ``rated_power_w``
      from config, where the device reports none) x RATING_MARGIN, never beyond MAX_POWER_W.
      The core counts the larger of command and measurement, so unknown loses no protection.
    - Temperature: TEMPERATURE_BAND_C, and out of it also a fault. The core treats a temperature
      outside its range as "allows nothing" but None as "not reported, full power"
      (core/rules.py derate_fraction), so None alone would turn a broken sensor's 0 W into full
      power.
    - Energy counters never below 0 (acc32/acc64 are unsigned); the ledger judges their steps
      (ledger/accounting.py counter_step). DC voltage 0..MAX_DC_VOLTAGE_V.
    - Ratings are not measurements and pass unchanged: the core already reads a rating that is
      not a finite number >= 0 as "permits nothing" (core/rules.py cap_value), which None would
      loosen. They set the power band only when finite and above 0.
    """

    def __init__(self, rated_power_w: float | None = None) -> None:
        self.rated_power_w = rated_power_w
        self.rejected: dict[str, int] = {}

    def band(self, point: str, value: float | None, low: float, high: float) -> float | None:
        """``value`` if it is a finite number within low..high, else None (logged once)."""
        if value is None:
            return None
        if math.isfinite(value) and low <= value <= high:
            return value
        count = self.rejected.get(point, 0)
        if count == 0:
            log.warning(
                "implausible inverter reading taken as unknown",
                point=point,
                value=value,
                band=f"{low:g}..{high:g}",
            )
        self.rejected[point] = count + 1
        return None

    def power_limit_w(
        self, power_w: float, charge_w: float | None, discharge_w: float | None
    ) -> float:
        """The largest plausible |power| in the direction of ``power_w`` (+ charges)."""
        own, other = (charge_w, discharge_w) if power_w > 0 else (discharge_w, charge_w)
        usable = [r for r in (own, other, self.rated_power_w) if r is not None and _rating(r)]
        return min(MAX_POWER_W, usable[0] * RATING_MARGIN) if usable else MAX_POWER_W

    def screen(self, state: InverterState) -> InverterState:
        """The state with every implausible measured value replaced by None."""
        power_w = state.measured_power_w
        limit_w = MAX_POWER_W
        if power_w is not None and math.isfinite(power_w):
            limit_w = self.power_limit_w(
                power_w, state.max_charge_power_w, state.max_discharge_power_w
            )
        temperature_c = self.band("temperature_c", state.temperature_c, *TEMPERATURE_BAND_C)
        faults = state.faults
        if temperature_c is None and state.temperature_c is not None:
            faults = (*faults, TEMPERATURE_IMPLAUSIBLE)
        return dataclasses.replace(
            state,
            measured_power_w=self.band("measured_power_w", power_w, -limit_w, limit_w),
            dc_voltage_v=self.band("dc_voltage_v", state.dc_voltage_v, 0.0, MAX_DC_VOLTAGE_V),
            temperature_c=temperature_c,
            faults=faults,
            energy_charged_wh=self.band(
                "energy_charged_wh", state.energy_charged_wh, 0.0, math.inf
            ),
            energy_discharged_wh=self.band(
                "energy_discharged_wh", state.energy_discharged_wh, 0.0, math.inf
            ),
        )


def _rating(value: float) -> bool:
    """A rating that can bound a measurement: a finite number above 0."""
    return math.isfinite(value) and value > 0


def _encodable(device: SunSpecDevice, model_id: int, values: Mapping[str, int], what: str) -> None:
    """Refuse a command whose raw values do not fit their points, before anything is written.

    SunSpec allows any scale factor in -10..10, so a legal SF can overflow a point: WSet_SF -6
    puts 3 kW at 3e9, beyond int32 (704 WSet); InOutWRte_SF -3 puts 100 % at 100000, beyond int16
    (124 InWRte/OutWRte)."""
    try:
        device.encode_points(model_id, values)
    except ProtocolError as exc:
        raise ProtocolError(f"{what} refused: {exc}") from None


class RevertNotKeptError(InverterLinkError):
    """The device does not keep its revert settings: a rewrite read back wrong, or they were
    lost again at the command after they had been rewritten."""


class RevertProof:
    """The bookkeeping of the revert proof, shared by every driver: which of the settings armed
    at setup a read-back shows lost, the log line, and when losing them is a fault.

    Lost once: rewritten (the caller writes them back, verified, then calls ``rewritten``),
    logged, counted in ``rewrites`` once the rewrite is verified. Lost again at the very next
    command: the device does not keep them, a ``RevertNotKeptError``; so is a rewrite that reads
    back wrong (the caller maps it). A command that finds them intact ends the streak. Besides
    the revert timer, the 124 control mode (StorCtl_Mod) is proven this way."""

    def __init__(self) -> None:
        self.rewrites = 0
        self._streak = 0

    def reset(self) -> None:
        """Setup armed them anew."""
        self._streak = 0

    def rewritten(self) -> None:
        """The lost settings were written back and read back as armed."""
        self.rewrites += 1

    def check(self, where: str, lost: Mapping[str, object], armed: Mapping[str, object]) -> None:
        """``lost``: each lost setting with the value the device held instead. Raises
        RevertNotKeptError when they were lost at the previous command too; else logs."""
        if not lost:
            self._streak = 0
            return
        if self._streak:
            raise RevertNotKeptError(
                f"revert timer not kept: {where} {', '.join(lost)} lost again one command after "
                f"being rewritten (found {dict(lost)})"
            )
        self._streak += 1
        log.warning(
            "inverter lost its revert settings; rewriting them",
            where=where,
            found=dict(lost),
            armed={name: armed[name] for name in lost},
        )


def _exact(values: ModelValues, name: str) -> Fraction | None:
    """A point in engineering units as an exact fraction (raw x 10^SF); None if absent."""
    raw = values.raw(name)
    if not isinstance(raw, int):
        return None
    return Fraction(raw) * Fraction(10) ** values.scale_factor(name)


def _exact_power(power_w: float) -> Fraction:
    """A commanded power as the exact number it was written as (``codec.toward_zero``)."""
    if not math.isfinite(power_w):
        raise ProtocolError(f"{power_w} W refused: not a finite number")
    return Fraction(repr(power_w))


class _SunSpecDriverBase:
    """What both SunSpec dialects keep: the transport, the revert time, the discovered device
    (given, or discovered at setup), the ratings read at setup and the revert settings armed
    there (``_armed``), which every command's read-back proves still held."""

    def __init__(
        self,
        transport: ModbusTransport,
        revert_timeout_s: float,
        device: SunSpecDevice | None = None,
        screen: PlausibilityScreen | None = None,
        proof: RevertProof | None = None,
    ) -> None:
        self._transport = transport
        self._revert_timeout_s = revert_timeout_s
        self._device = device
        self._screen = screen or PlausibilityScreen()
        self._proof = proof or RevertProof()
        self._armed: dict[str, int] = {}
        # The stage's enable (703 ES, 123 Conn) as last written and verified; None: unknown,
        # written with the next command. Rewritten only when it changes or a poll found it
        # changed: at 600 ms a reply every request of a heartbeat counts (issue 16, HIL).
        self._enable_written: int | None = None
        self._max_charge_w: float | None = None
        self._max_discharge_w: float | None = None

    async def _arm(
        self, model_id: int, armed: Mapping[str, int], also: Mapping[str, int] | None = None
    ) -> None:
        """Write the revert settings (with ``also``, verified) and remember them for the proof."""
        await self.device.write_verified(model_id, {**(also or {}), **armed})
        self._armed = dict(armed)
        self._enable_written = None
        self._proof.reset()

    async def _write_enable(self, model_id: int, point: str, value: int) -> None:
        """Write the stage's enable (verified) unless it already holds ``value``."""
        if self._enable_written == value or not self.device.has(model_id):
            return
        self._enable_written = None  # unknown until the write is verified
        await self.device.write_verified(model_id, {point: value})
        self._enable_written = value

    def _enable_seen(self, held: int | None) -> None:
        """A poll read the enable: if it is not what was written, write it with the next
        command (the device, or someone else, changed it)."""
        if held != self._enable_written:
            self._enable_written = None

    async def _write_proven(self, model_id: int, values: Mapping[str, int]) -> None:
        """Write ``values``, then one read spanning them and the armed revert settings: the
        written registers must read back as written (``SetpointNotTakenError`` otherwise), the
        armed ones as armed, or they are rewritten (``RevertProof``)."""
        device = self.device
        runs = device.encode_points(model_id, values)
        armed = {
            name: device.encode_points(model_id, {name: raw}) for name, raw in self._armed.items()
        }
        for address, registers in runs:
            await self._transport.write_registers(address, registers)
        every = runs + [run for point_runs in armed.values() for run in point_runs]
        start = min(address for address, _ in every)
        end = max(address + len(registers) for address, registers in every)
        block = await self._transport.read_holding(start, end - start)

        def held(address: int, count: int) -> list[int]:
            return block[address - start : address - start + count]

        for address, registers in runs:
            readback = held(address, len(registers))
            if readback != registers:
                raise SetpointNotTakenError(
                    f"model {model_id} at {address}: wrote {registers}, read back {readback}"
                )
        definition = device.block(model_id).definition
        if definition is None:  # encode_points has refused it already
            raise ProtocolError(f"model {model_id} has no definition")
        lost: dict[str, object] = {}
        for name, point_runs in armed.items():
            ((address, registers),) = point_runs
            if held(address, len(registers)) != registers:
                point = definition.point(name)
                lost[name] = decode(held(address, len(registers)), point.reg_type)
        self._proof.check(f"model {model_id}", lost, self._armed)
        if lost:
            try:
                await device.write_verified(model_id, {name: self._armed[name] for name in lost})
            except SetpointNotTakenError as exc:
                raise RevertNotKeptError(f"revert timer not kept: {exc}") from None
            self._proof.rewritten()

    @property
    def device(self) -> SunSpecDevice:
        if self._device is None:
            raise InverterLinkError("driver used before setup")
        return self._device

    async def _discover(self) -> SunSpecDevice:
        return self._device or await SunSpecDevice.discover(self._transport)


class SunSpec700Driver(_SunSpecDriverBase):
    """IEEE 1547-2018 DER models: 701 measurements, 702 capacity, 704 controls, 703 and 713, and
    714 DC measurement for the vehicle port's DC voltage (``vehicle_port``)."""

    _wset_sf = 0
    _dc_voltage_point: str | None = None  # 714's DCV of the vehicle's port (``Prt[0].DCV``)

    async def setup(self) -> DeviceInfo:
        device = await self._discover()
        missing = [m for m in (1, 701, 704) if not device.has(m)]
        if missing:
            raise InverterLinkError(f"SunSpec 700-series control needs models {missing}")
        self._device = device
        wanted: dict[int, tuple[str, ...] | None] = {1: None, 704: ("WSet",)}
        if device.has(702):
            wanted[702] = ("WMaxRtg", "WChaRteMaxRtg", "WDisChaRteMaxRtg")
        if dc_points := _dc_port_points(device):
            wanted[DC_MODEL] = dc_points
        models = await device.read_models(wanted)
        info = _identity(models[1], "sunspec-700", device.model_ids)
        self._dc_voltage_point = (
            _vehicle_dc_voltage_point(models[DC_MODEL]) if DC_MODEL in models else None
        )
        if device.has(702):
            capacity = models[702]
            rating = capacity.value("WMaxRtg")
            self._max_charge_w = capacity.value("WChaRteMaxRtg") or rating
            self._max_discharge_w = capacity.value("WDisChaRteMaxRtg") or rating
        self._wset_sf = models[704].scale_factor("WSet")
        # Revert: after WSetRvrtTms without a write, WSet returns to WSetRvrt = 0 W, the
        # reversion function enabled (WSetEnaRvrt). Every command's read-back proves them
        # (offsets 22..32: WSetEna, WSetMod, WSet, WSetRvrt, WSetPct*, WSetEnaRvrt, WSetRvrtTms).
        await self._arm(
            704,
            {"WSetRvrt": 0, "WSetEnaRvrt": ENABLED, "WSetRvrtTms": round(self._revert_timeout_s)},
            also={"WSetMod": WSET_MOD_WATTS},
        )
        await self.command(0.0, enable=False)
        return info

    async def read(self, now_s: float) -> InverterState:
        device = self.device
        wanted = {m: points for m, points in POLL_POINTS_700.items() if device.has(m)}
        dc_point = self._dc_voltage_point
        if dc_point is not None:
            wanted[DC_MODEL] = (dc_point,)
        models = await device.read_models(wanted)
        meas = models[701]
        ctl = models[704]
        faults = [
            f"alarm {name}" for name in _bit_names(meas.integer("Alrm"), _symbols(meas, "Alrm"))
        ]
        if meas.integer("InvSt") == INVST_FAULT:
            faults.insert(0, "inverter state FAULT")
        watts = meas.value("W")
        enabled = ctl.integer("WSetEna") == ENABLED and meas.integer("ConnSt") in (
            CONN_CONNECTED,
            None,
        )
        if 703 in models:
            enabled = enabled and models[703].integer("ES") == ENABLED
            self._enable_seen(models[703].integer("ES"))
        if 713 in models and models[713].integer("Sta") == STA713_ERROR:
            faults.append("storage status ERROR")  # 713 Sta: 0 OK, 1 WARNING, 2 ERROR
        if 802 in models:
            battery = models[802]
            if battery.integer("State") == STATE802_FAULT:
                faults.append("battery state FAULT")
            alarms = battery.integer("Evt1") or 0
            faults.extend(
                f"battery {name}"
                for name in _bit_names(alarms, _symbols(battery, "Evt1"))
                if name.endswith(("_ALARM", "_ERROR", "GROUND_FAULT"))  # warnings are not faults
            )
        state = InverterState(
            observed_at_s=now_s,
            reachable=True,
            enabled=enabled,
            measured_power_w=None if watts is None else -watts,  # SunSpec + = export
            dc_voltage_v=None if dc_point is None else models[DC_MODEL].value(dc_point),
            max_charge_power_w=self._max_charge_w,
            max_discharge_power_w=self._max_discharge_w,
            temperature_c=meas.value("TmpCab"),
            faults=tuple(faults),
            energy_charged_wh=meas.value("TotWhAbs"),
            energy_discharged_wh=meas.value("TotWhInj"),
        )
        return self._screen.screen(state)

    async def command(self, power_w: float, enable: bool) -> None:
        device = self.device
        what = f"{power_w:.0f} W at WSet_SF {self._wset_sf}"
        export_w = _exact_power(-power_w if enable else 0.0)  # SunSpec + = export
        # Toward zero: 7450 W at WSet_SF 2 is 7400 W, never 7500 W (issue 16, item 9).
        wset = toward_zero(export_w, self._wset_sf)
        values = {"WSetEna": ENABLED, "WSetMod": WSET_MOD_WATTS, "WSet": wset}
        _encodable(device, 704, values, what)
        if enable:
            await self._write_enable(703, "ES", ENABLED)
        # WSet is written even when unchanged: each write restarts the revert timer. Its
        # read-back proves the mode, the enable and the revert settings too.
        await self._write_proven(704, values)
        if not enable:
            await self._write_enable(703, "ES", DISABLED)


class SunSpec100Driver(_SunSpecDriverBase):
    """The older inverter and storage models: 103 measurements, 120/121 ratings, 123, 124.

    Model 124's rates, as the SunSpec definition gives them (pysunspec2 model_124.json, "Basic
    Storage Controls", whose reference is "Storage Ref 3: 8.7.4.2"):

    - InWRte "Percent of max charging rate", unit "% WChaMax": the charge limit;
    - OutWRte "Percent of max discharge rate", unit "% WDisChaMax": the discharge limit;
    - StorCtl_Mod bit 0 CHARGE / bit 1 DISCHARGE activate them.

    They are limits, not setpoints: the device runs anywhere in the window
    -OutWRte x WDisChaMax <= P <= InWRte x WChaMax (+ charges), and a negative rate moves the
    other edge past 0 (a negative OutWRte is a minimum charge, a negative InWRte a minimum
    discharge). A power is therefore forced by pinning both edges on it (issue 16, item 10):
    charging at P, InWRte = P / WChaMax and OutWRte = -P / WDisChaMax; discharging at D,
    OutWRte = D / WDisChaMax and InWRte = -D / WChaMax; 0 W, both 0.

    Model 124 names WDisChaMax as OutWRte's unit but defines no such point. Its value is taken
    from the nameplate, model 120 MaxDisChaRte ("maximum rate of energy transfer out of the
    storage device"), where the device has it, else WChaMax (the only base 124 carries).

    Both rates round toward zero: neither edge exceeds the command, so the power that results
    never does (5000 W with WChaMax 9000 W at SF 0 is 55 % = 4950 W, not 56 % = 5040 W).
    """

    _inverter_model = 103
    _charge_base_w = Fraction(0)  # WChaMax: 100 % of InWRte
    _discharge_base_w = Fraction(0)  # WDisChaMax: 100 % of OutWRte
    _rate_sf = 0

    async def setup(self) -> DeviceInfo:
        device = await self._discover()
        inverter_model = next((m for m in (103, 102, 101) if device.has(m)), None)
        if inverter_model is None or not device.has(124) or not device.has(1):
            raise InverterLinkError(
                f"SunSpec 100-series control needs models 1, 101/102/103 and 124; "
                f"found {device.model_ids}"
            )
        self._device = device
        self._inverter_model = inverter_model
        wanted: dict[int, tuple[str, ...] | None] = {1: None, 124: ("WChaMax", "InWRte")}
        if device.has(120):
            wanted[120] = ("MaxChaRte", "MaxDisChaRte")
        models = await device.read_models(wanted)
        info = _identity(models[1], "sunspec-100", device.model_ids)
        storage = models[124]
        charge_base = _exact(storage, "WChaMax")
        if charge_base is None or charge_base <= 0:
            found = None if charge_base is None else float(charge_base)
            raise ProtocolError(f"124 WChaMax must be a positive rating, found {found}")
        self._charge_base_w = self._discharge_base_w = charge_base
        self._rate_sf = storage.scale_factor("InWRte")
        self._max_charge_w = self._max_discharge_w = float(charge_base)
        if device.has(120):
            nameplate = models[120]
            self._max_charge_w = nameplate.value("MaxChaRte") or float(charge_base)
            self._max_discharge_w = nameplate.value("MaxDisChaRte") or float(charge_base)
            discharge_base = _exact(nameplate, "MaxDisChaRte")
            if discharge_base is not None and discharge_base > 0:
                self._discharge_base_w = discharge_base
        await self._arm(124, {"InOutWRte_RvrtTms": round(self._revert_timeout_s)})
        await self.command(0.0, enable=False)
        return info

    async def read(self, now_s: float) -> InverterState:
        device = self.device
        wanted: dict[int, tuple[str, ...]] = {self._inverter_model: POLL_POINTS_100}
        if device.has(123):
            wanted[123] = ("Conn",)
        models = await device.read_models(wanted)
        meas = models[self._inverter_model]
        faults = [
            f"event {name}" for name in _bit_names(meas.integer("Evt1"), _symbols(meas, "Evt1"))
        ]
        if meas.integer("St") == ST103_FAULT:
            faults.insert(0, "inverter state FAULT")
        enabled = True
        if 123 in models:
            enabled = models[123].integer("Conn") == ENABLED
            self._enable_seen(models[123].integer("Conn"))
        watts = meas.value("W")
        state = InverterState(
            observed_at_s=now_s,
            reachable=True,
            enabled=enabled,
            measured_power_w=None if watts is None else -watts,  # SunSpec + = export
            dc_voltage_v=meas.value("DCV"),
            max_charge_power_w=self._max_charge_w,
            max_discharge_power_w=self._max_discharge_w,
            temperature_c=meas.value("TmpCab"),
            faults=tuple(faults),
            # 103 has one lifetime counter (WH, energy delivered to AC): the discharge side.
            energy_discharged_wh=meas.value("WH"),
        )
        return self._screen.screen(state)

    def _rates(self, power_w: float) -> tuple[int, int, str]:
        """(InWRte, OutWRte) raw values that pin the window on ``power_w`` (+ charges), and the
        command described for a refusal. Raises ProtocolError beyond the direction's base."""
        power = _exact_power(power_w)
        charge_pct = abs(power) * 100 / self._charge_base_w
        discharge_pct = abs(power) * 100 / self._discharge_base_w
        own_pct, base, name = (
            (charge_pct, self._charge_base_w, "WChaMax")
            if power > 0
            else (discharge_pct, self._discharge_base_w, "WDisChaMax")
        )
        if own_pct > 100:
            raise ProtocolError(
                f"{abs(power_w):.0f} W exceeds the storage's {name} {float(base):.0f} W"
            )
        what = f"{power_w:.0f} W ({float(own_pct):g} %) at InOutWRte_SF {self._rate_sf}"
        charge_raw = toward_zero(charge_pct, self._rate_sf)
        discharge_raw = toward_zero(discharge_pct, self._rate_sf)
        if power > 0:
            return charge_raw, -discharge_raw, what  # at most P, at least P
        if power < 0:
            return -charge_raw, discharge_raw, what  # discharging at most D, at least D
        return 0, 0, what

    async def command(self, power_w: float, enable: bool) -> None:
        device = self.device
        in_raw, out_raw, what = self._rates(power_w if enable else 0.0)
        values = {"OutWRte": out_raw, "InWRte": in_raw}
        # Both limits active (StorCtl_Mod), pinned on the command (see the class docstring);
        # both at 0 hold the stage at 0 W. The mode is written with the first command after
        # setup and then proven like the revert timer: a heartbeat is the rates' write and one
        # read-back (offsets 5..15) of StorCtl_Mod, the rates and InOutWRte_RvrtTms.
        mode_armed = "StorCtl_Mod" in self._armed
        if not mode_armed:
            values = {"StorCtl_Mod": STORCTL_CHARGE_AND_DISCHARGE, **values}
        _encodable(device, 124, values, what)
        if enable:
            await self._write_enable(123, "Conn", ENABLED)
        # Each write of the rates restarts InOutWRte_RvrtTms.
        await self._write_proven(124, values)
        if not mode_armed:
            self._armed["StorCtl_Mod"] = STORCTL_CHARGE_AND_DISCHARGE
        if not enable:
            await self._write_enable(123, "Conn", DISABLED)


class SunSpecDriver:
    """Discovers the device and drives it with the 700-series models when it has 704, else with
    the 100-series storage models (124). Rediscovers on every setup: an inverter whose firmware
    was updated may present another chain."""

    def __init__(
        self,
        transport: ModbusTransport,
        revert_timeout_s: float,
        *,
        rated_power_w: float | None = None,
    ) -> None:
        self._transport = transport
        self._revert_timeout_s = revert_timeout_s
        self._active: SunSpec700Driver | SunSpec100Driver | None = None
        # One screen across setups, so an implausible point is logged once, not once per setup.
        self._screen = PlausibilityScreen(rated_power_w)
        self.proof = RevertProof()  # counts every rewrite of lost revert settings, across setups

    async def setup(self) -> DeviceInfo:
        device = await SunSpecDevice.discover(self._transport)
        active: SunSpec700Driver | SunSpec100Driver
        if device.has(704):
            active = SunSpec700Driver(
                self._transport, self._revert_timeout_s, device, self._screen, self.proof
            )
        elif device.has(124):
            active = SunSpec100Driver(
                self._transport, self._revert_timeout_s, device, self._screen, self.proof
            )
        else:
            raise InverterLinkError(
                f"no SunSpec power control model (704 or 124) in chain {device.model_ids}"
            )
        self._active = active
        return await active.setup()

    def _driver(self) -> SunSpec700Driver | SunSpec100Driver:
        if self._active is None:
            raise InverterLinkError("driver used before setup")
        return self._active

    async def read(self, now_s: float) -> InverterState:
        return await self._driver().read(now_s)

    async def command(self, power_w: float, enable: bool) -> None:
        await self._driver().command(power_w, enable)


def _symbols(values: ModelValues, name: str) -> dict[int, str]:
    return values.definition.point(name).symbols
