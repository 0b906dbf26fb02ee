"""Inverter drivers: what a power command means in each register dialect.

Every driver converts the sign at this edge: inside the controller + charges the vehicle; in
SunSpec (701 W, 704 WSet, 103 W) + is generation, i.e. export, i.e. discharging the vehicle.
Every write is read back and compared (``SetpointNotTakenError`` otherwise); nothing is assumed.
Every command re-arms the inverter's own revert timer, so a silent controller leaves the inverter
at 0 W after ``revert_timeout_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.core.snapshots import InverterState
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import unscaled
from controller.inverter.sunspec import ModelValues, SunSpecDevice
from controller.inverter.transport import ModbusTransport

ENABLED = 1
DISABLED = 0
WSET_MOD_WATTS = 1  # 704 WSetMod: 0 percent of WMax, 1 watts
INVST_FAULT = 6  # 701 InvSt symbol FAULT
ST103_FAULT = 7  # 103 St symbol FAULT
CONN_CONNECTED = 1  # 701 ConnSt
STA713_ERROR = 2  # 713 Sta
STATE802_FAULT = 99  # 802 State
STORCTL_CHARGE_AND_DISCHARGE = 0b11  # 124 StorCtl_Mod: both rate controls active


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

    async def setup(self) -> DeviceInfo:
        """Identify the device, read its ratings and arm its revert timer."""
        ...

    async def read(self, now_s: float) -> InverterState:
        """Read measurements, state and faults."""
        ...

    async def command(self, power_w: float, enable: bool) -> None:
        """Write the setpoint (+ charges the vehicle) and power-stage enable; verified."""
        ...


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


class _SunSpecDriverBase:
    """What both SunSpec dialects keep: the transport, the revert time, the discovered device
    (given, or discovered at setup) and the ratings read at setup."""

    def __init__(
        self,
        transport: ModbusTransport,
        revert_timeout_s: float,
        device: SunSpecDevice | None = None,
    ) -> None:
        self._transport = transport
        self._revert_timeout_s = revert_timeout_s
        self._device = device
        self._max_charge_w: float | None = None
        self._max_discharge_w: float | None = None

    @property
    def device(self) -> SunSpecDevice:
        if self._device is None:
            raise InverterLinkError("driver used before setup")
        return self._device

    async def _discover(self) -> SunSpecDevice:
        return self._device or await SunSpecDevice.discover(self._transport)


class SunSpec700Driver(_SunSpecDriverBase):
    """IEEE 1547-2018 DER models: 701 measurements, 702 capacity, 704 controls, 703 and 713."""

    _wset_sf = 0

    async def setup(self) -> DeviceInfo:
        device = await self._discover()
        missing = [m for m in (1, 701, 704) if not device.has(m)]
        if missing:
            raise InverterLinkError(f"SunSpec 700-series control needs models {missing}")
        self._device = device
        info = _identity(await device.read(1), "sunspec-700", device.model_ids)
        if device.has(702):
            capacity = await device.read(702)
            rating = capacity.value("WMaxRtg")
            self._max_charge_w = capacity.value("WChaRteMaxRtg") or rating
            self._max_discharge_w = capacity.value("WDisChaRteMaxRtg") or rating
        controls = await device.read(704)
        self._wset_sf = controls.scale_factor("WSet")
        # Revert: after WSetRvrtTms without a write, WSet returns to WSetRvrt = 0 W.
        await device.write_verified(
            704,
            {
                "WSetMod": WSET_MOD_WATTS,
                "WSetRvrt": 0,
                "WSetEnaRvrt": ENABLED,
                "WSetRvrtTms": round(self._revert_timeout_s),
            },
        )
        await self.command(0.0, enable=False)
        return info

    async def read(self, now_s: float) -> InverterState:
        device = self.device
        meas = await device.read(701)
        ctl = await device.read(704)
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
        if device.has(703):
            enabled = enabled and (await device.read(703)).integer("ES") == ENABLED
        if device.has(713) and (await device.read(713)).integer("Sta") == STA713_ERROR:
            faults.append("storage status ERROR")  # 713 Sta: 0 OK, 1 WARNING, 2 ERROR
        if device.has(802):
            battery = await device.read(802)
            if battery.integer("State") == STATE802_FAULT:
                faults.append("battery state FAULT")
            alarms = battery.integer("Evt1") or 0
            faults.extend(
                f"battery {name}"
                for name in _bit_names(alarms, _symbols(battery, "Evt1"))
                if name.endswith(("_ALARM", "_ERROR", "GROUND_FAULT"))  # warnings are not faults
            )
        return InverterState(
            observed_at_s=now_s,
            reachable=True,
            enabled=enabled,
            measured_power_w=None if watts is None else -watts,  # SunSpec + = export
            max_charge_power_w=self._max_charge_w,
            max_discharge_power_w=self._max_discharge_w,
            temperature_c=meas.value("TmpCab"),
            faults=tuple(faults),
            energy_charged_wh=meas.value("TotWhAbs"),
            energy_discharged_wh=meas.value("TotWhInj"),
        )

    async def command(self, power_w: float, enable: bool) -> None:
        device = self.device
        wset = unscaled(-power_w if enable else 0.0, self._wset_sf)  # SunSpec + = export
        if enable and device.has(703):
            await device.write_verified(703, {"ES": ENABLED})
        # WSet is written even when unchanged: each write restarts the revert timer.
        await device.write_verified(
            704, {"WSetEna": ENABLED, "WSetMod": WSET_MOD_WATTS, "WSet": wset}
        )
        if not enable and device.has(703):
            await device.write_verified(703, {"ES": DISABLED})


class SunSpec100Driver(_SunSpecDriverBase):
    """The older inverter and storage models: 103 measurements, 120/121 ratings, 123, 124."""

    _inverter_model = 103
    _rate_base_w = 0.0  # 124 WChaMax: the 100 % of InWRte and OutWRte
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
        info = _identity(await device.read(1), "sunspec-100", device.model_ids)
        storage = await device.read(124)
        base = storage.value("WChaMax")
        if not base or base <= 0:
            raise ProtocolError(f"124 WChaMax must be a positive rating, found {base}")
        self._rate_base_w = base
        self._rate_sf = storage.scale_factor("InWRte")
        self._max_charge_w = self._max_discharge_w = base
        if device.has(120):
            nameplate = await device.read(120)
            self._max_charge_w = nameplate.value("MaxChaRte") or base
            self._max_discharge_w = nameplate.value("MaxDisChaRte") or base
        await device.write_verified(124, {"InOutWRte_RvrtTms": round(self._revert_timeout_s)})
        await self.command(0.0, enable=False)
        return info

    async def read(self, now_s: float) -> InverterState:
        device = self.device
        meas = await device.read(self._inverter_model)
        faults = [
            f"event {name}" for name in _bit_names(meas.integer("Evt1"), _symbols(meas, "Evt1"))
        ]
        if meas.integer("St") == ST103_FAULT:
            faults.insert(0, "inverter state FAULT")
        enabled = True
        if device.has(123):
            enabled = (await device.read(123)).integer("Conn") == ENABLED
        watts = meas.value("W")
        return InverterState(
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

    async def command(self, power_w: float, enable: bool) -> None:
        device = self.device
        percent = abs(power_w) / self._rate_base_w * 100.0 if enable else 0.0
        if percent > 100.0:
            raise ProtocolError(
                f"{abs(power_w):.0f} W exceeds the storage rating {self._rate_base_w:.0f} W"
            )
        raw = unscaled(percent, self._rate_sf)
        charging = enable and power_w > 0
        discharging = enable and power_w < 0
        if enable and device.has(123):
            await device.write_verified(123, {"Conn": ENABLED})
        # Both rate controls active: the stage charges at InWRte % or discharges at OutWRte %
        # of WChaMax; both at 0 holds it at 0 W. Each write restarts InOutWRte_RvrtTms.
        await device.write_verified(
            124,
            {
                "StorCtl_Mod": STORCTL_CHARGE_AND_DISCHARGE,
                "OutWRte": raw if discharging else 0,
                "InWRte": raw if charging else 0,
            },
        )
        if not enable and device.has(123):
            await device.write_verified(123, {"Conn": DISABLED})


class SunSpecDriver:
    """Discovers the device and drives it with the 700-series models when it has 704, else with
    the 100-series storage models (124). Rediscovers on every setup: an inverter whose firmware
    was updated may present another chain."""

    def __init__(self, transport: ModbusTransport, revert_timeout_s: float) -> None:
        self._transport = transport
        self._revert_timeout_s = revert_timeout_s
        self._active: SunSpec700Driver | SunSpec100Driver | None = None

    async def setup(self) -> DeviceInfo:
        device = await SunSpecDevice.discover(self._transport)
        active: SunSpec700Driver | SunSpec100Driver
        if device.has(704):
            active = SunSpec700Driver(self._transport, self._revert_timeout_s, device)
        elif device.has(124):
            active = SunSpec100Driver(self._transport, self._revert_timeout_s, device)
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
