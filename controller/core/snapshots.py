"""Snapshots the links hand to the core, and the command the core hands back.

These frozen dataclasses are the contract between the links (vehicle over CAN, inverter over Modbus,
aggregator over MQTT) and the pure safety core. They carry physical units in their names and the
monotonic time at which they were observed, so the core can judge freshness itself.

Sign convention inside the controller (as OCPP 2.1): ``+`` charges the vehicle (import from the
grid), ``-`` discharges it (export). SunSpec (+ = export) and GB/T current (+ = discharge) are
converted at the link edge, never here.

``None`` means "this link does not report that value", which is different from a value of zero:
the core must treat an absent limit as "no limit reported by this source", never as 0.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from dataclasses import dataclass


class PowerState(enum.StrEnum):
    """What the power stage is doing, as logs, telemetry and ``status`` all print it."""

    IDLE = "idle"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    STOPPING = "stopping"
    FAULT = "fault"


class VehiclePhase(enum.StrEnum):
    """Where the charger-side vehicle session stands, protocol-neutral."""

    UNPLUGGED = "unplugged"
    HANDSHAKE = "handshake"  # CHAdeMO parameter exchange / GB/T CHM..BRO
    READY = "ready"  # parameters agreed, waiting for permission / contactors
    ENERGY_TRANSFER = "energy_transfer"
    STOPPING = "stopping"
    ENDED = "ended"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class VehicleState:
    """The vehicle's BMS as last seen on CAN.

    Limits are the vehicle's own, in the controller's sign-free magnitudes (amps and volts are
    always >= 0); which direction they apply to is in the field name.
    """

    observed_at_s: float  # monotonic clock of the newest frame that built this snapshot
    phase: VehiclePhase
    protocol: str  # "chademo", "gbt27930", "dbc"
    soc_pct: float | None = None
    pack_voltage_v: float | None = None
    pack_current_a: float | None = None  # + into the vehicle
    # Charging: CHAdeMO 0x102 current request / GB/T BCL current demand, and max voltage.
    charge_current_limit_a: float | None = None
    charge_voltage_limit_v: float | None = None
    # Discharging: CHAdeMO 0x200 byte 0 max discharge current, bytes 4-5 min discharge voltage,
    # byte 6 minimum discharge level (SoC).
    discharge_current_limit_a: float | None = None
    discharge_voltage_min_v: float | None = None
    discharge_soc_min_pct: float | None = None
    battery_temp_max_c: float | None = None
    battery_temp_min_c: float | None = None
    cell_voltage_max_v: float | None = None
    cell_voltage_min_v: float | None = None
    capacity_kwh: float | None = None
    charge_permitted: bool = False
    discharge_permitted: bool = False
    stop_requested: bool = False
    # Fault reasons reported by the vehicle or found implausible at the link edge; empty = healthy.
    faults: tuple[str, ...] = ()
    identity: str | None = None  # VIN or protocol-given identity, where the protocol provides one


@dataclass(frozen=True, slots=True)
class InverterState:
    """The bidirectional inverter as last read over Modbus."""

    observed_at_s: float  # monotonic clock when the read completed
    reachable: bool
    enabled: bool = False
    measured_power_w: float | None = None  # + charges the vehicle (converted from SunSpec sign)
    dc_voltage_v: float | None = None
    # Ratings (nameplate or configured), magnitudes >= 0.
    max_charge_power_w: float | None = None
    max_discharge_power_w: float | None = None
    temperature_c: float | None = None
    faults: tuple[str, ...] = ()
    # Lifetime counters from the inverter, where it has them (SunSpec or the register map).
    energy_charged_wh: float | None = None
    energy_discharged_wh: float | None = None
    # How often since start the device was found to have lost its revert settings and had them
    # rewritten (issue 16): each new one is an event for the aggregator.
    revert_rewrites: int = 0


class SetpointMode(enum.StrEnum):
    """What the aggregator asks for."""

    POWER = "power"  # follow power_w
    IDLE = "idle"  # hold at 0 W
    RELEASE = "release"  # hand control back to the local fallback policy


@dataclass(frozen=True, slots=True)
class Setpoint:
    """A validated aggregator setpoint. Expiry is on the monotonic clock."""

    setpoint_id: str
    received_at_s: float  # monotonic
    valid_until_s: float  # monotonic; past it the setpoint is ignored
    mode: SetpointMode
    power_w: float = 0.0  # + charges the vehicle, - discharges it


@dataclass(frozen=True, slots=True)
class PlannedPower:
    """The local plan's power for the slot in force (the ``optimize`` fallback's request)."""

    power_w: float  # + charges the vehicle, - discharges it
    # The slot, in wall time (aware): outside it the plan is not followed. Plans are made on
    # the wall clock (tariffs, departure), so an untrusted clock allows no planned discharge.
    slot_start: dt.datetime
    slot_end: dt.datetime
    note: str  # why, for the log: e.g. "plan 21:00-21:15: discharge at the peak price"

    def __post_init__(self) -> None:
        if not math.isfinite(self.power_w):
            raise ValueError("PlannedPower.power_w: expected a finite value")
        if self.slot_start.utcoffset() is None or self.slot_end.utcoffset() is None:
            raise ValueError("PlannedPower: expected aware slot times")

    def in_force(self, at: dt.datetime) -> bool:
        """Whether the wall time ``at`` (aware) is inside the slot."""
        return self.slot_start <= at < self.slot_end


@dataclass(frozen=True, slots=True)
class PowerCommand:
    """What the single inverter writer puts on the inverter."""

    power_w: float  # + charges the vehicle, - discharges it
    enable: bool  # power stage enabled; False always goes with 0 W

    @staticmethod
    def zero() -> PowerCommand:
        """The always-safe command: 0 W, power stage disabled."""
        return PowerCommand(power_w=0.0, enable=False)
