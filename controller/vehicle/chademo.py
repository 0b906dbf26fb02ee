"""CHAdeMO charger-side session (with the V2H discharge frames), sans-IO.

Sequence, as implemented by public charger-side code (the full specification is not public)::

    IDLE --plugged--> WAIT_VEHICLE (d1 on; 0x108/0x109 every 100 ms)
         --k and 0x102.5 bit0 within 8 s--> WAIT_PERMISSION (phase READY)
         --allow_energy_transfer(True)--> INSULATION_TEST (connector locked)
         --insulation monitor OK--> WAIT_VEHICLE_CONTACTOR (d2 and output contactors on, within
         20 s of d1)
         --0x102.5 bit3 = 0 within 4 s--> ENERGY_TRANSFER (0x109.5 bit0 on, stop control off)
         --stop (vehicle, charger or fault)--> STOP_CURRENT (stop control on, core goes to 0 W)
         --measured output <= 5 A--> STOP_VEHICLE_CONTACTOR (0x109.5 bit0 off)
         --0x102.5 bit3 = 1 (welding detection done)--> STOP_D1 (contactors and d2 off)
         --output <= 10 V: unlocked; 500 ms after d2--> ENDED (d1 off) --unplugged--> IDLE

Stops:

* the vehicle: 0x102.5 bit0 = 0 at any time from its first permission (WAIT_PERMISSION) to the end
  of transfer, k released before d2, 0x102.5 bit4 (stop before charging), bit1 (not in Park) and
  bit3 back to 1 (contactor opened) during transfer; each sets ``stop_requested``;
* the charger: ``end()``, or ``allow_energy_transfer(False)`` from the insulation test on;
* faults: 0x102.4 flags and bit2, k released after d2, timeouts, implausible or inconsistent
  values, a failed insulation test, an insulation monitor alarm from d2 until the current is
  down. They take the same stop path and end in FAULT.

The insulation test passes only on a measurement: the insulation monitor's OK input
(``LineInputs.insulation_ok``) held without a break for ``insulation_test_s`` from the test's
start. The OK falling during the test, or no such hold within ``insulation_timeout_s`` (and in
time for d2 within 20 s of d1), fails the session with the reason; d2 never comes on.

STOP_CURRENT waits for a fresh measurement (``set_output``) of at most 5 A taken after the stop
began; an unknown, stale or older current is not low. The protocol's "<= 5 A within 0.5 s" is
timed from the vehicle's stop (k released or 0x102.5 bit0 cleared, the first of them), not from
the charger's own stop: 0.5 s after it without such a measurement is a charger fault. At 2 s
after its own stop the charger gives up waiting: it opens its contactors and d2 at once (STOP_D1).

STOP_VEHICLE_CONTACTOR waits up to 4 s for the vehicle's welding detection (0x102.5 bit3 = 1);
without it the session ends in a fault, its contactors and d2 open and the connector stays locked
until the output is dead. The connector lock (0x109.5 bit2) is held from the insulation test
until a fresh measurement taken after the contactors opened reads at most 10 V; 10 s after the
contactors opened without one it is a fault, d1 goes off and the connector stays locked (it is
released once such a measurement arrives), never released with voltage present or unknown.

The SoC (0x102 byte 6 over 0x100 byte 6) is published once it is plausible and stable: the
vehicle has given its permission (k and 0x102.5 bit0: the recorded Leafs send start-up values
before that), the reading is a percentage and 3 consecutive 0x102 agree within 1 % over at least
200 ms. From then on every reading that is a percentage is published.

The pack voltage (``VehicleState.pack_voltage_v``; CHAdeMO cars do not send it) is the stage's
measured output voltage while it is fresh and both the charger's and the vehicle's contactors are
closed; otherwise None.

0x109 bytes 6-7 (remaining charging time) count the vehicle's maximum charging time (0x101 byte 1
in 10 s, or byte 2 in minutes when byte 1 is 0xFF) down while energy flows, in the vehicle's unit.

When discharge is offered, 0x109 byte 4 bit 0 is set and 0x208/0x209 are sent with every
0x108/0x109 (a vehicle faults on the bit without them).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.vehicle.dbc import DbcCodec, SignalValues
from controller.vehicle.frames import CanFrame, LineOutputs
from controller.vehicle.protocols.chademo import (
    BATTERY_LIMITS_ID,
    CHARGING_TIME_ID,
    CURRENT_REQUEST_TIMEOUT_S,
    D2_AFTER_D1_S,
    D2_TO_D1_S,
    DISCHARGE_LIMITS_ID,
    FIRST_REQUEST_S,
    PERIOD_S,
    STOP_CURRENT_S,
    UNLOCK_VOLTAGE_V,
    VEHICLE_CONTACTOR_S,
    VEHICLE_IDS,
    VEHICLE_RESPONSE_S,
    VEHICLE_STATUS_ID,
    WELDING_DETECTION_S,
)
from controller.vehicle.session import ChargerSession, check_transition

# The protocol's facts (ids, the 100 ms period, the sequence's limits) are in
# controller/vehicle/protocols/chademo.py; what follows are this charger's own rules and choices.
OTHER_MESSAGE_TIMEOUT_S = 2.0  # project choice for 0x100/0x101/0x200 (sent every 100 ms)
# CHAdeMO: "after k drops, current <= 5 A within 0.5 s" (STOP_CURRENT_S) is timed from the
# vehicle's stop (k released or 0x102.5 bit0 cleared), never from the charger's own stop control.
# The recorded ZE1 charger reached 0 A 0.6 s after its stop control but 0.33 s after the car
# cleared bit0.
# Project choice: without a fresh reading of <= 5 A this long after the stop, the charger opens its
# own contactors and d2 (a charger fault) instead of waiting for the vehicle's contactor.
STOP_CURRENT_GIVE_UP_S = 2.0
# CHAdeMO: welding detection within 4 s (WELDING_DETECTION_S); the recorded Leafs took 2.9 s (ZE0)
# and 2.1 s (ZE1). Without it the session ends in a fault. The connector stays locked until the
# output is at most 10 V (UNLOCK_VOLTAGE_V; both recorded chargers unlock at 3 V, after bit3).
# Project choice: how long after the contactors opened the output may take to fall to 10 V before
# that is a fault (the connector then stays locked and d1 goes off).
UNLOCK_TIMEOUT_S = 10.0
# CHAdeMO 0x102 byte 6: the SoC is taken once the vehicle has given its permission (k and 0x102.5
# bit0; both recorded Leafs send 0x100 byte 6 = F0 with byte 6 = 03, then 1 % for 2 s, before
# their real SoC, all before bit0; public charger code also reads it only once k is on), and then
# once SOC_STABLE_FRAMES consecutive 0x102 agree within SOC_STABLE_PCT over SOC_STABLE_S or more.
SOC_STABLE_FRAMES = 3
SOC_STABLE_PCT = 1.0
SOC_STABLE_S = 0.2
# CHAdeMO 0x109 byte 3 is 1 A/bit: energy flows (the remaining time counts down) while the fresh
# measured current would read at least 1 A there.
FLOWING_CURRENT_A = 0.5

# CHAdeMO 0x102 byte 4 fault flags: any of them stops the charger.
_VEHICLE_FAULT_FLAGS = {
    "FaultBatteryOverVoltage": "battery over-voltage",
    "FaultBatteryUnderVoltage": "battery under-voltage",
    "FaultCurrentDeviation": "battery current deviation",
    "FaultHighBatteryTemperature": "high battery temperature",
    "FaultVoltageDeviation": "battery voltage deviation",
}


class ChademoState(enum.StrEnum):
    """The charger's position in the CHAdeMO sequence."""

    IDLE = "idle"
    WAIT_VEHICLE = "wait_vehicle"
    WAIT_PERMISSION = "wait_permission"
    INSULATION_TEST = "insulation_test"
    WAIT_VEHICLE_CONTACTOR = "wait_vehicle_contactor"
    ENERGY_TRANSFER = "energy_transfer"
    STOP_CURRENT = "stop_current"
    STOP_VEHICLE_CONTACTOR = "stop_vehicle_contactor"
    STOP_D1 = "stop_d1"
    ENDED = "ended"


# Every state change the session may make (the sequence at the top), checked on each one. Stops:
# before d2 the contactors are open, so a stop goes straight to STOP_D1; from d2 on it waits for
# the current (STOP_CURRENT). ENDED -> IDLE is the unplug (``_reset``).
_S = ChademoState
TRANSITIONS: Mapping[ChademoState, frozenset[ChademoState]] = {
    _S.IDLE: frozenset({_S.WAIT_VEHICLE}),
    _S.WAIT_VEHICLE: frozenset({_S.WAIT_PERMISSION, _S.STOP_D1}),
    _S.WAIT_PERMISSION: frozenset({_S.INSULATION_TEST, _S.STOP_D1}),
    _S.INSULATION_TEST: frozenset({_S.WAIT_VEHICLE_CONTACTOR, _S.STOP_D1}),
    _S.WAIT_VEHICLE_CONTACTOR: frozenset({_S.ENERGY_TRANSFER, _S.STOP_CURRENT}),
    _S.ENERGY_TRANSFER: frozenset({_S.STOP_CURRENT}),
    _S.STOP_CURRENT: frozenset({_S.STOP_VEHICLE_CONTACTOR, _S.STOP_D1}),
    _S.STOP_VEHICLE_CONTACTOR: frozenset({_S.STOP_D1}),
    _S.STOP_D1: frozenset({_S.ENDED}),
    _S.ENDED: frozenset({_S.IDLE}),
}

_PHASE = {
    ChademoState.IDLE: VehiclePhase.UNPLUGGED,
    ChademoState.WAIT_VEHICLE: VehiclePhase.HANDSHAKE,
    ChademoState.WAIT_PERMISSION: VehiclePhase.READY,
    ChademoState.INSULATION_TEST: VehiclePhase.READY,
    ChademoState.WAIT_VEHICLE_CONTACTOR: VehiclePhase.READY,
    ChademoState.ENERGY_TRANSFER: VehiclePhase.ENERGY_TRANSFER,
    ChademoState.STOP_CURRENT: VehiclePhase.STOPPING,
    ChademoState.STOP_VEHICLE_CONTACTOR: VehiclePhase.STOPPING,
    ChademoState.STOP_D1: VehiclePhase.STOPPING,
    ChademoState.ENDED: VehiclePhase.ENDED,
}


@dataclass(frozen=True, slots=True)
class ChademoChargerConfig:
    """What the charger announces in 0x108/0x109 and, when discharge is offered, 0x208/0x209.

    The threshold voltages are the charger's own bounds; what is sent follows the vehicle as the
    recorded chargers do: 0x108 bytes 4-5 = min(threshold, 0x100 maximum battery voltage), 0x208
    bytes 6-7 = max(lower threshold, 0x200 minimum discharge voltage).
    """

    available_output_voltage_v: int = 500  # 0x108 bytes 1-2
    available_output_current_a: int = 125  # 0x108 byte 3
    threshold_voltage_v: int = 500  # 0x108 bytes 4-5, at most
    welding_detection: bool = True  # 0x108 byte 0
    protocol_number: int = 2  # 0x109 byte 0: 1.0.x
    discharge_offered: bool = False  # 0x109 byte 4 bit 0 with 0x208/0x209
    available_input_voltage_v: int = 150  # 0x208 bytes 1-2
    # 0x208 byte 3; None: the output current rating when discharge is offered (``input_current_a``)
    available_input_current_a: int | None = None
    lower_threshold_voltage_v: int = 150  # 0x208 bytes 6-7, at least
    sequence_control_number: int = 2  # 0x209 byte 0
    # Insulation test: the monitor's OK held this long from the test's start passes it; without
    # that within insulation_timeout_s, the session fails (session.insulation_test_result).
    insulation_test_s: float = 1.0
    insulation_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        current = self.available_input_current_a
        if current is not None and not 0 <= current <= 255:
            raise ValueError(f"available_input_current_a: expected 0..255 A, found {current}")
        if self.discharge_offered and self.input_current_a == 0:
            # CHAdeMO 0x208 byte 3: 0 A available input current tells the vehicle "no discharge".
            raise ValueError(
                "available_input_current_a: 0 A with discharge offered tells the vehicle that "
                "no discharge is possible (0x208 byte 3)"
            )

    @property
    def input_current_a(self) -> int:
        """0x208 byte 3 as sent: the configured value, else the output rating if discharging."""
        if self.available_input_current_a is not None:
            return self.available_input_current_a
        return self.available_output_current_a if self.discharge_offered else 0


@dataclass(slots=True)
class _Vehicle:
    """The latest values from the vehicle's frames."""

    min_charge_current_a: float | None = None
    min_battery_voltage_v: float | None = None
    max_battery_voltage_v: float | None = None
    charged_rate_reference: float | None = None
    capacity_kwh: float | None = None
    # 0x101 byte 1 x 10 s, or byte 2 x 1 min when byte 1 = 0xFF; None before 0x101.
    max_charging_time_s: float | None = None
    max_charging_time_in_min: bool = False  # the vehicle gave it in minutes (byte 1 = 0xFF)
    protocol_number: int | None = None
    target_voltage_v: float | None = None
    current_request_a: float | None = None
    charged_rate: float | None = None
    enabled: bool = False
    contactor_open: bool = True
    discharge_compatible: bool = False
    max_discharge_current_a: float | None = None
    min_discharge_voltage_v: float | None = None
    min_discharge_level_pct: float | None = None


class ChademoSession(ChargerSession):
    """Charger side of one CHAdeMO session at a time."""

    protocol = "chademo"

    def __init__(
        self, config: ChademoChargerConfig | None = None, *, dbc_dir: str | Path | None = None
    ) -> None:
        super().__init__(DbcCodec.chademo(dbc_dir), extended_ids=False)
        self.config = config or ChademoChargerConfig()
        self._available_current_a = float(self.config.available_output_current_a)
        self._reset()

    def _reset(self) -> None:
        self._reset_common()
        self.state = ChademoState.IDLE
        self._vehicle = _Vehicle()
        self._since_s = 0.0  # when the present state was entered
        self._d1_on_s = 0.0
        self._next_send_s = 0.0
        self._last_seen: dict[int, float] = {}
        self._stop_started_s = 0.0
        # The vehicle's stop (k released, 0x102.5 bit0 cleared, or its own stop request or fault
        # flag): the reference of the 0.5 s current check. None: not (yet) seen.
        self._vehicle_stop_s: float | None = None
        self._contactors_opened_s = 0.0  # when STOP_D1 opened the contactors and d2
        self._unlocked_reported = False  # a 0x109 with bit2 (locked) cleared has gone out
        self._charging_flag = False
        self._stop_requested_by_vehicle = False
        self._had_request = False
        self._vehicle_permitted = False  # k and 0x102.5 bit0 seen together (WAIT_PERMISSION)
        # SoC: the run of consecutive 0x102 readings within SOC_STABLE_PCT of each other.
        self._soc_reading: float | None = None  # the newest 0x102 reading, %
        self._soc_run_frames = 0
        self._soc_run_since_s = 0.0
        self._soc_settled = False  # a plausible and stable SoC has been published
        self._energy_flow_s = 0.0  # time in energy transfer with current flowing
        self._last_tick_s: float | None = None
        self._outputs = LineOutputs()

    def __repr__(self) -> str:
        return f"ChademoSession(state={self.state}, phase={self.phase}, faults={self.faults})"

    @property
    def accepted_ids(self) -> frozenset[int]:
        """The vehicle's IDs."""
        return VEHICLE_IDS

    @property
    def next_deadline_s(self) -> float:
        """Frames go out every 100 ms while d1 is on; otherwise poll the plug at the same rate."""
        return self._next_send_s

    # Vehicle frames.

    def _on_frame(self, frame: CanFrame, now_s: float) -> None:
        if self.state in (ChademoState.IDLE, ChademoState.ENDED):
            return  # no session: frames from a vehicle we did not wake are not state
        s = self._decode(frame).signals
        v = self._vehicle
        fid = frame.arbitration_id
        self._last_seen[fid] = now_s
        self._seen(now_s)
        if fid == BATTERY_LIMITS_ID:
            v.min_charge_current_a = s["MinChargeCurrent"]
            v.min_battery_voltage_v = s["MinBatteryVoltage"]
            v.max_battery_voltage_v = s["MaxBatteryVoltage"]
            v.charged_rate_reference = s["ChargedRateReference"]
        elif fid == CHARGING_TIME_ID:
            capacity = s["RatedBatteryCapacity"]
            v.capacity_kwh = capacity if capacity > 0 else None
            # CHAdeMO 0x101 byte 1: maximum charging time, 10 s/bit; 0xFF: byte 2, 1 min/bit.
            tens = round(s["MaxChargingTime10s"] / 10)
            v.max_charging_time_in_min = tens == 0xFF
            v.max_charging_time_s = 60.0 * s["MaxChargingTimeMin"] if tens == 0xFF else 10.0 * tens
        elif fid == VEHICLE_STATUS_ID:
            self._on_status(s, now_s)
        elif fid == DISCHARGE_LIMITS_ID:
            v.max_discharge_current_a = s["MaxDischargeCurrent"]
            v.min_discharge_voltage_v = s["MinDischargeVoltage"]
            v.min_discharge_level_pct = _min_discharge_level(
                s["MinDischargeLevel"], s["MaxRemainingCapacityForCharging"]
            )
        self._check_plausible(now_s)

    def _on_status(self, s: SignalValues, now_s: float) -> None:
        v = self._vehicle
        v.protocol_number = int(s["ProtocolNumber"])
        v.target_voltage_v = s["TargetBatteryVoltage"]
        v.current_request_a = s["ChargingCurrentRequest"]
        v.charged_rate = s["ChargedRate"]
        was_enabled = v.enabled
        v.enabled = bool(s["StatusChargingEnabled"])
        v.contactor_open = bool(s["StatusContactorOpen"])
        v.discharge_compatible = bool(s["StatusDischargeCompatible"])
        self._follow_soc(now_s)
        # CHAdeMO 0x102 byte 4 fault flags and byte 5 bit 2: the charger must stop (the vehicle
        # stops: the reference of the 0.5 s current check).
        for signal, text in _VEHICLE_FAULT_FLAGS.items():
            if s[signal]:
                self._note_vehicle_stop(now_s)
                self._fault(f"CHAdeMO 0x102 byte 4: vehicle reports {text}", now_s)
        if s["StatusChargingSystemFault"]:
            self._note_vehicle_stop(now_s)
            self._fault("CHAdeMO 0x102 byte 5 bit 2: vehicle charging-system fault", now_s)
        if s["StatusStopBeforeCharging"] and self.state in _BEFORE_TRANSFER:
            self._vehicle_stop("CHAdeMO 0x102 byte 5 bit 4: vehicle stop before charging", now_s)
        elif s["StatusNotInPark"] and self.state in _RUNNING:
            self._vehicle_stop("CHAdeMO 0x102 byte 5 bit 1: vehicle not in Park", now_s)
        elif not v.enabled and self.state in _PERMITTED:
            # CHAdeMO: "the charger must stop if ... 0x102 byte5 bit0 is 0": a level, checked
            # from the vehicle's first permission to the end of transfer, never only an edge.
            why = (
                "cleared: vehicle stop request" if was_enabled else "0: vehicle withdrew permission"
            )
            self._vehicle_stop(f"CHAdeMO 0x102 byte 5 bit 0 {why}", now_s)
        elif v.contactor_open and self.state is ChademoState.ENERGY_TRANSFER:
            # CHAdeMO 0x102 byte 5 bit 3 back to 1: the vehicle contactor opened under transfer.
            self._vehicle_stop("CHAdeMO 0x102 byte 5 bit 3: vehicle contactor opened", now_s)
        elif not v.enabled and self.state in _STOPPING:
            # The vehicle answers the charger's stop: 0x102.5 bit0 cleared.
            self._note_vehicle_stop(now_s)

    def _follow_soc(self, now_s: float) -> None:
        """Track the run of 0x102 SoC readings that agree within SOC_STABLE_PCT (see top)."""
        reading = self._raw_soc_pct()
        previous = self._soc_reading
        self._soc_reading = reading
        if reading is None or not 0 <= reading <= 100:
            self._soc_run_frames = 0
        elif (
            previous is not None
            and self._soc_run_frames
            and abs(reading - previous) <= SOC_STABLE_PCT
        ):
            self._soc_run_frames += 1
        else:
            self._soc_run_frames = 1
            self._soc_run_since_s = now_s
        self._settle_soc(now_s)

    def _settle_soc(self, now_s: float) -> None:
        if (
            not self._soc_settled
            and self._vehicle_permitted
            and self._soc_run_frames >= SOC_STABLE_FRAMES
            and now_s - self._soc_run_since_s >= SOC_STABLE_S - 1e-9
        ):
            self._soc_settled = True

    def _check_plausible(self, now_s: float) -> None:
        """Values that cannot be true, or contradict each other, are faults (and never widen a
        reported limit: an impossible SoC reads None, limits are capped by the charger's)."""
        v = self._vehicle
        soc = self._raw_soc_pct()
        if soc is not None and soc > 100:
            self._fault(f"implausible SoC {soc:.1f} % (0x102 byte 6 over 0x100 byte 6)", now_s)
        low, high = v.min_battery_voltage_v, v.max_battery_voltage_v
        if low is not None and high is not None and low >= high:
            self._fault(
                f"implausible minimum battery voltage {low:g} V not below the maximum battery "
                f"voltage {high:g} V (0x100 bytes 2-3 vs 4-5)",
                now_s,
            )
        target = v.target_voltage_v
        if target is not None:
            if target == 0:
                self._fault("implausible target voltage 0 V (0x102 bytes 1-2)", now_s)
            elif high and target > high:
                self._fault(
                    f"implausible target voltage {target:g} V above the maximum battery voltage "
                    f"{high:g} V (0x102 vs 0x100)",
                    now_s,
                )
            elif low is not None and target < low:
                self._fault(
                    f"implausible target voltage {target:g} V below the minimum battery voltage "
                    f"{low:g} V (0x102 vs 0x100)",
                    now_s,
                )
        if self._discharge_in_play():
            self._check_discharge_limits(now_s)

    def _discharge_in_play(self) -> bool:
        """Discharge is offered, the vehicle says it can, and its 0x200 has arrived."""
        return (
            self.config.discharge_offered
            and self._vehicle.discharge_compatible
            and DISCHARGE_LIMITS_ID in self._last_seen
        )

    def _check_discharge_limits(self, now_s: float) -> None:
        # An all-zero 0x200 would read 255 A (inverted byte 0), 0 V and 0 %: the most permissive
        # limits there are. The vehicle answers the charger's 0x208 (the recorded ZE0 ramps 0x200
        # byte 0 from 0 A up to the charger's 15 A and no further).
        v = self._vehicle
        offered = self.config.input_current_a
        if v.max_discharge_current_a is not None and v.max_discharge_current_a > offered:
            self._fault(
                f"implausible maximum discharge current {v.max_discharge_current_a:g} A above the "
                f"charger's available input current {offered} A (0x200 byte 0 vs 0x208 byte 3)",
                now_s,
            )
        low, high = v.min_discharge_voltage_v, v.max_battery_voltage_v
        if low is not None and low == 0:
            self._fault("implausible minimum discharge voltage 0 V (0x200 bytes 4-5)", now_s)
        elif low is not None and high is not None and low >= high:
            self._fault(
                f"implausible minimum discharge voltage {low:g} V not below the maximum battery "
                f"voltage {high:g} V (0x200 vs 0x100)",
                now_s,
            )

    def _raw_soc_pct(self) -> float | None:
        # CHAdeMO 0x102 byte 6: SoC = byte6 / (0x100 byte 6), a plain % when that is 100.
        v = self._vehicle
        if v.charged_rate is None or not v.charged_rate_reference:
            return None
        return round(v.charged_rate * 100.0 / v.charged_rate_reference, 1)

    def _soc_pct(self) -> float | None:
        """The SoC as published: None until it is plausible and stable (see top), and when it
        is not a possible percentage (that is a fault)."""
        soc = self._soc_reading
        if not self._soc_settled or soc is None:
            return None
        return soc if 0 <= soc <= 100 else None

    # Time.

    def _on_tick(self, now_s: float) -> None:
        self._count_energy_flow(now_s)
        if not self._inputs.plugged and self.state is not ChademoState.IDLE:
            if self.state is ChademoState.ENDED:
                self._advance(now_s)  # a connector still locked is released only when dead
                if self._outputs.lock:
                    return
                check_transition(TRANSITIONS, self.state, ChademoState.IDLE, self.protocol)
                self._reset()
                self._set_phase(VehiclePhase.UNPLUGGED, now_s, "connector unplugged")
                self._next_send_s = now_s + PERIOD_S
                return
            if self.state is not ChademoState.STOP_D1:
                self._fault("connector unplugged during the session", now_s)
        self._advance(now_s)
        if now_s >= self._next_send_s:
            if self._outputs.d1:
                self._send_periodic()
            # Catch up without bursts after a late tick.
            self._next_send_s = max(self._next_send_s + PERIOD_S, now_s + PERIOD_S / 2)

    def _advance(self, now_s: float) -> None:
        st = self.state
        if st is ChademoState.IDLE:
            if self._inputs.plugged:
                self._d1_on_s = now_s
                self._enter(ChademoState.WAIT_VEHICLE, now_s, "plugged in, d1 on")
                self._outputs = LineOutputs(d1=True)
                self._next_send_s = now_s
            return
        # Unplugged (or lines unread, which read as unplugged) is its own fault: no insulation
        # alarm is inferred from an input that was not read.
        if (
            st in _INSULATION_WATCHED
            and self._inputs.plugged
            and (alarm := self._insulation_alarm()) is not None
        ):
            self._fault(f"CHAdeMO: {alarm}", now_s)  # latched once; the stop goes on below
            st = self.state
        if st in _RUNNING:
            self._check_timeouts(now_s)
            if self.state is not st:
                return
            self._advance_start(st, now_s - self._since_s, now_s)
        else:
            self._advance_stop(st, now_s - self._since_s, now_s)

    def _count_energy_flow(self, now_s: float) -> None:
        """Time in energy transfer with current flowing (0x109 bytes 6-7 count down by it)."""
        last, self._last_tick_s = self._last_tick_s, now_s
        if last is None or self.state is not ChademoState.ENERGY_TRANSFER:
            return
        current = self._measured_current_a()
        if current is not None and abs(current) >= FLOWING_CURRENT_A:
            self._energy_flow_s += max(0.0, now_s - last)

    def _stopped_by_lines_or_charger(self, st: ChademoState, now_s: float) -> bool:
        """k released, or the charger side no longer willing: stop; True if it did."""
        if st in _AFTER_D2 and not self._inputs.k:
            self._note_vehicle_stop(now_s)
            self._fault(f"CHAdeMO: k line dropped after d2 ({st})", now_s)
        elif st in _BEFORE_D2 and not self._inputs.k:
            self._vehicle_stop(
                "CHAdeMO: k line released before d2: vehicle withdrew permission", now_s
            )
        elif st in _NEED_ALLOWED and not self._allowed:
            self._begin_stop(now_s, "the charger no longer allows energy transfer")
        else:
            return False
        return True

    def _advance_start(self, st: ChademoState, elapsed: float, now_s: float) -> None:
        v = self._vehicle
        if self._stopped_by_lines_or_charger(st, now_s):
            return
        if st is ChademoState.WAIT_VEHICLE:
            if self._inputs.k and v.enabled and BATTERY_LIMITS_ID in self._last_seen:
                self._enter(ChademoState.WAIT_PERMISSION, now_s, "k and 0x102.5 bit0 set")
                self._vehicle_permitted = True
                self._settle_soc(now_s)
            elif elapsed > VEHICLE_RESPONSE_S:
                self._fault("CHAdeMO: no k / 0x102.5 bit0 within 8 s of d1", now_s)
        elif st is ChademoState.WAIT_PERMISSION:
            self._advance_permission(now_s)
        elif st is ChademoState.INSULATION_TEST:
            self._advance_insulation(now_s)
        elif st is ChademoState.WAIT_VEHICLE_CONTACTOR:
            if not v.contactor_open:
                self._enter(ChademoState.ENERGY_TRANSFER, now_s, "vehicle contactor closed")
                self._charging_flag = True
            elif elapsed > VEHICLE_CONTACTOR_S:
                self._fault("CHAdeMO: 0x102.5 bit3 not cleared within 4 s of d2", now_s)
        elif st is ChademoState.ENERGY_TRANSFER:
            self._had_request = self._had_request or bool(v.current_request_a)
            if not (self._had_request or self._discharge_possible()) and elapsed > FIRST_REQUEST_S:
                self._fault(
                    "CHAdeMO: no current request within 4 s of the vehicle contactor", now_s
                )

    def _advance_insulation(self, now_s: float) -> None:
        # CHAdeMO's insulation test step, judged on the insulation monitor's OK (IEC 61851-23).
        verdict = self._insulation_test(
            self._since_s, now_s, self.config.insulation_test_s, self.config.insulation_timeout_s
        )
        if verdict is True:
            self._enter(ChademoState.WAIT_VEHICLE_CONTACTOR, now_s, "insulation test passed, d2 on")
            self._outputs = LineOutputs(d1=True, d2=True, contactors=True, lock=True)
        elif isinstance(verdict, str):
            self._fault(f"CHAdeMO: {verdict}", now_s)
        elif now_s - self._d1_on_s > D2_AFTER_D1_S:
            # CHAdeMO: d2 on within 20 s of d1; the test had not passed by then (its monitor
            # was not at fault: the time left for it was too short).
            self._fault("CHAdeMO: d2 not on within 20 s of d1 (insulation test not passed)", now_s)

    def _advance_permission(self, now_s: float) -> None:
        if self._target_incompatible():
            self._fault(
                f"CHAdeMO 0x109.5 bit3: target {self._vehicle.target_voltage_v} V above available "
                f"{self.config.available_output_voltage_v} V",
                now_s,
            )
        elif self._allowed:
            self._enter(ChademoState.INSULATION_TEST, now_s, "energy transfer allowed")
            self._outputs = LineOutputs(d1=True, lock=True)
        elif now_s - self._d1_on_s > D2_AFTER_D1_S:
            self._fault("CHAdeMO: d2 not on within 20 s of d1 (transfer not allowed)", now_s)

    def _advance_stop(self, st: ChademoState, elapsed: float, now_s: float) -> None:
        if st is ChademoState.STOP_CURRENT:
            if not self._inputs.k:
                self._note_vehicle_stop(now_s)  # CHAdeMO: k released, the vehicle's stop
            self._advance_stop_current(elapsed, now_s)
        elif st is ChademoState.STOP_VEHICLE_CONTACTOR:
            if self._vehicle.contactor_open or not self._inputs.plugged:
                self._open_contactors(now_s, "vehicle contactor open (0x102.5 bit3)")
            elif elapsed > WELDING_DETECTION_S:
                # CHAdeMO 0x102.5 bit3: welding detection is a result; without it the vehicle's
                # contactor may be closed (welded): fault, d2 off, the connector stays locked
                # until the output is measured dead.
                self._fault(
                    "CHAdeMO 0x102 byte 5 bit 3: vehicle contactor not confirmed open (welding "
                    f"detection) within {WELDING_DETECTION_S:g} s of the output at or below 5 A",
                    now_s,
                )
                self._open_contactors(now_s, "no welding detection result: contactors and d2 off")
        elif st is ChademoState.STOP_D1:
            self._advance_unlock(elapsed, now_s)
        elif st is ChademoState.ENDED and self._outputs.lock and self._output_dead():
            self._outputs = LineOutputs()  # output measured dead at last: the lock lets go

    def _advance_stop_current(self, elapsed: float, now_s: float) -> None:
        if self._current_low_since(self._stop_started_s):
            # CHAdeMO: 0x109.5 bit0 is cleared once current is <= 5 A (measured, fresh, and
            # taken after the stop began).
            self._charging_flag = False
            self._enter(ChademoState.STOP_VEHICLE_CONTACTOR, now_s, "output at or below 5 A")
        elif elapsed > STOP_CURRENT_GIVE_UP_S:
            self._charger_fault = True
            self._fault("CHAdeMO: output not confirmed at or below 5 A 2 s after stop", now_s)
            self._charging_flag = False
            self._open_contactors(now_s, "2 s without <= 5 A: contactors and d2 off")
        elif (stopped_s := self._vehicle_stop_s) is not None and now_s - stopped_s > STOP_CURRENT_S:
            # CHAdeMO: after k drops (the vehicle's stop), current <= 5 A within 0.5 s; only a
            # measurement taken after that stop counts (an older one may predate the 0 W).
            self._charger_fault = True
            if self._current_since_a(stopped_s) is not None:
                self._fault(
                    "CHAdeMO: output above 5 A 0.5 s after stop (timed from the vehicle's k / "
                    "0x102.5 bit0)",
                    now_s,
                )
            else:
                self._fault(
                    "CHAdeMO: output current not confirmed at or below 5 A 0.5 s after stop "
                    "(no fresh measurement since the vehicle's k / 0x102.5 bit0)",
                    now_s,
                )

    def _current_low_since(self, since_s: float) -> bool:
        """The contactors are open, or a fresh measurement taken after ``since_s`` reads at
        most 5 A (unknown, stale or older is never low)."""
        if not self._outputs.contactors:
            return True
        return self._reported_since(since_s) and self._output_current_low()

    def _open_contactors(self, now_s: float, why: str) -> None:
        """STOP_D1: contactors and d2 off, d1 and the lock as they are."""
        self._enter(ChademoState.STOP_D1, now_s, why)
        self._outputs = LineOutputs(d1=self._outputs.d1, lock=self._outputs.lock)
        self._contactors_opened_s = now_s
        self._unlocked_reported = False

    def _output_dead(self) -> bool:
        """CHAdeMO 0x109.5 bit2: a fresh measurement taken since the contactors opened reads at
        most 10 V. Unknown, stale or older is never dead."""
        volts = self._voltage_since_v(self._contactors_opened_s)
        return volts is not None and abs(volts) <= UNLOCK_VOLTAGE_V

    def _advance_unlock(self, elapsed: float, now_s: float) -> None:
        """STOP_D1: unlock once the output is dead, d1 off 500 ms after d2 (and after a 0x109
        has told the vehicle the connector is unlocked)."""
        if self._outputs.lock:
            if self._output_dead():
                self._outputs = LineOutputs(d1=self._outputs.d1)
            elif elapsed > UNLOCK_TIMEOUT_S:
                self._charger_fault = True
                volts = self._voltage_since_v(self._contactors_opened_s)
                seen = f"{volts:g} V measured" if volts is not None else "no fresh measurement"
                self._fault(
                    f"CHAdeMO: output not confirmed at or below {UNLOCK_VOLTAGE_V:g} V "
                    f"{UNLOCK_TIMEOUT_S:g} s after the contactors opened ({seen}); the "
                    "connector stays locked",
                    now_s,
                )
                self._enter(ChademoState.ENDED, now_s, "d1 off, connector stays locked")
                self._outputs = LineOutputs(lock=True)
            return
        if elapsed >= D2_TO_D1_S and (self._unlocked_reported or not self._outputs.d1):
            self._enter(ChademoState.ENDED, now_s, "d1 off, connector unlocked")
            self._outputs = LineOutputs()

    def _check_timeouts(self, now_s: float) -> None:
        expected = {
            BATTERY_LIMITS_ID: OTHER_MESSAGE_TIMEOUT_S,
            CHARGING_TIME_ID: OTHER_MESSAGE_TIMEOUT_S,
        }
        # CHAdeMO: stop if the 0x102 current request is not refreshed for > 1 s.
        expected[VEHICLE_STATUS_ID] = CURRENT_REQUEST_TIMEOUT_S
        if self.config.discharge_offered:
            expected[DISCHARGE_LIMITS_ID] = OTHER_MESSAGE_TIMEOUT_S
        for fid, limit in expected.items():
            seen = self._last_seen.get(fid)
            if seen is not None and now_s - seen > limit:
                self._fault(f"CHAdeMO 0x{fid:X} not received for more than {limit:g} s", now_s)

    def _enter(self, state: ChademoState, now_s: float, why: str) -> None:
        check_transition(TRANSITIONS, self.state, state, self.protocol)
        self.state = state
        self._since_s = now_s
        phase = _PHASE[state]
        if self._faults and phase in (VehiclePhase.STOPPING, VehiclePhase.ENDED):
            phase = VehiclePhase.FAULT
        self._set_phase(phase, now_s, why)

    def _note_vehicle_stop(self, now_s: float) -> None:
        """The vehicle stopped (the reference of the 0.5 s current check): the first time."""
        if self._vehicle_stop_s is None:
            self._vehicle_stop_s = now_s

    def _vehicle_stop(self, reason: str, now_s: float) -> None:
        self._note_vehicle_stop(now_s)
        self._stop_requested_by_vehicle = True
        self._stop_requested(reason)
        self._begin_stop(now_s, reason)

    def _begin_stop(self, now_s: float, why: str) -> None:
        if self.state in _BEFORE_ENERGISED:
            self._open_contactors(now_s, why)
        elif self.state in (ChademoState.WAIT_VEHICLE_CONTACTOR, ChademoState.ENERGY_TRANSFER):
            self._enter(ChademoState.STOP_CURRENT, now_s, why)
            self._stop_started_s = now_s

    def _on_fault(self, now_s: float) -> None:
        if self.state in _STOPPING or self.state in (ChademoState.IDLE, ChademoState.ENDED):
            self._set_phase(VehiclePhase.FAULT, now_s, self._faults[-1])
            return
        self._begin_stop(now_s, self._faults[-1])
        self._set_phase(VehiclePhase.FAULT, now_s, self._faults[-1])

    def _on_end(self, now_s: float) -> None:
        if self.state not in _STOPPING and self.state not in (
            ChademoState.IDLE,
            ChademoState.ENDED,
        ):
            self._begin_stop(now_s, "charger ends the session")

    # Charger frames.

    def _target_incompatible(self) -> bool:
        target = self._vehicle.target_voltage_v
        return target is not None and target > self.config.available_output_voltage_v

    def _discharge_possible(self) -> bool:
        v = self._vehicle
        return (
            self.config.discharge_offered
            and v.discharge_compatible
            and bool(v.max_discharge_current_a)
        )

    def _threshold_voltage_v(self) -> int:
        # CHAdeMO 0x108 bytes 4-5: the recorded charger sends the vehicle's 0x100 maximum (435 V).
        vehicle_max = self._vehicle.max_battery_voltage_v
        if not vehicle_max:
            return self.config.threshold_voltage_v
        return min(self.config.threshold_voltage_v, round(vehicle_max))

    def _lower_threshold_voltage_v(self) -> int:
        # CHAdeMO 0x208 bytes 6-7: the recorded charger sends the vehicle's 0x200 minimum (250 V).
        vehicle_min = self._vehicle.min_discharge_voltage_v or 0
        return max(self.config.lower_threshold_voltage_v, round(vehicle_min))

    def _remaining_time(self) -> tuple[int, int]:
        """0x109 bytes 6-7 as the DBC signals (seconds in 10 s steps, minutes): the vehicle's
        maximum charging time less the time energy has flowed, during energy transfer; 0 else.

        CHAdeMO 0x109 byte 6 is 10 s/bit (0xFF: use byte 7), byte 7 1 min/bit. The vehicle's own
        unit is kept: byte 6 = 0xFF with minutes when 0x101 gave minutes (the recorded 1.0 charger
        sends FF 50 to a ZE1's FF 50, then FF 4F), else both (the recorded 0.9 charger sends
        D7 24: 215 x 10 s, 36 min). Rounded up: the recorded ZE0 charger still sends 60 min 27 s
        into a 60 min session.
        """
        v = self._vehicle
        total_s = v.max_charging_time_s
        if self.state is not ChademoState.ENERGY_TRANSFER or total_s is None:
            return 0, 0
        remaining_s = max(0.0, total_s - self._energy_flow_s)
        minutes = min(255, math.ceil(remaining_s / 60.0 - 1e-9))
        if v.max_charging_time_in_min:
            return 2550, minutes
        return 10 * min(254, math.ceil(remaining_s / 10.0 - 1e-9)), minutes

    def _send_periodic(self) -> None:
        cfg = self.config
        current_a = self._reported_current_a()
        charging_a = max(0.0, current_a)
        discharging_a = max(0.0, -current_a)
        self._send(
            "CHG_108_Capability",
            {
                "WeldingDetectionSupported": int(cfg.welding_detection),
                "AvailableOutputVoltage": cfg.available_output_voltage_v,
                "AvailableOutputCurrent": round(self._available_current_a),
                "ThresholdVoltage": self._threshold_voltage_v(),
            },
        )
        stop_control = self.state is not ChademoState.ENERGY_TRANSFER
        charger_fault = self._charger_fault
        system_fault = bool(self._faults) and not charger_fault
        remaining_10s_s, remaining_min = self._remaining_time()
        if self.state is ChademoState.STOP_D1 and not self._outputs.lock:
            self._unlocked_reported = True
        self._send(
            "CHG_109_Status",
            {
                "ProtocolNumber": cfg.protocol_number,
                "PresentOutputVoltage": _clamp(self._reported_voltage_v(), 0, 1000),
                "PresentOutputCurrent": _clamp(charging_a, 0, 255),
                "DischargeCompatible": int(cfg.discharge_offered),
                "StatusCharging": int(self._charging_flag),
                "StatusChargerFault": int(charger_fault),
                "StatusConnectorLocked": int(self._outputs.lock),
                "StatusBatteryIncompatible": int(self._target_incompatible()),
                "StatusChargingSystemFault": int(system_fault),
                "StatusStopControl": int(stop_control),
                "RemainingTime10s": remaining_10s_s,
                "RemainingTimeMin": remaining_min,
            },
        )
        if cfg.discharge_offered:
            self._send(
                "CHG_208_DischargeStatus",
                {
                    "PresentDischargeCurrent": _clamp(discharging_a, 0, 255),
                    "AvailableInputVoltage": cfg.available_input_voltage_v,
                    "AvailableInputCurrent": cfg.input_current_a,
                    "LowerThresholdVoltage": self._lower_threshold_voltage_v(),
                },
            )
            self._send(
                "CHG_209_DischargeSequence",
                {"SequenceControlNumber": cfg.sequence_control_number, "RemainingDischargeTime": 0},
            )

    # Snapshot.

    def _pack_voltage_v(self) -> float | None:
        """The stage's fresh output voltage while both contactors are closed (CHAdeMO cars do
        not send their pack voltage; d2 + charger contactors, and 0x102.5 bit3 = 0)."""
        if not self._outputs.contactors or self._vehicle.contactor_open:
            return None
        volts = self._measured_voltage_v()
        return volts if volts is not None and volts > 0 else None

    def _charge_voltage_limit_v(self) -> float | None:
        # CHAdeMO 0x102 bytes 1-2 target battery voltage, within 0x100 bytes 4-5 maximum.
        v = self._vehicle
        values = [x for x in (v.target_voltage_v, v.max_battery_voltage_v) if x is not None]
        return min(values) if values else None

    def _discharge_limit_a(self) -> float:
        # CHAdeMO 0x200 byte 0, capped by what this charger announced in 0x208 byte 3. 0 A (not
        # None) when no discharge is possible: None would mean "no limit reported".
        limit = self._vehicle.max_discharge_current_a
        if not self._discharge_possible() or limit is None:
            return 0.0
        return min(limit, float(self.config.input_current_a))

    def _permitted(self) -> tuple[bool, bool]:
        # Computed on every step (the link wakes the core when they change), without the
        # snapshot.
        charge = (
            self.state is ChademoState.ENERGY_TRANSFER
            and not self._faults
            and self._vehicle.enabled
        )
        return charge, charge and self._discharge_possible()

    def _state(self) -> VehicleState:
        v = self._vehicle
        charge_permitted, discharge_permitted = self._permitted()
        return VehicleState(
            observed_at_s=self._observed_s,
            phase=self.phase,
            protocol=self.protocol,
            soc_pct=self._soc_pct(),
            pack_voltage_v=self._pack_voltage_v(),
            pack_current_a=None,
            # CHAdeMO 0x102 byte 3; 0 A until the vehicle has asked for current.
            charge_current_limit_a=v.current_request_a or 0.0,
            charge_voltage_limit_v=self._charge_voltage_limit_v(),
            discharge_current_limit_a=self._discharge_limit_a(),
            discharge_voltage_min_v=v.min_discharge_voltage_v,
            discharge_soc_min_pct=v.min_discharge_level_pct,
            capacity_kwh=v.capacity_kwh,
            charge_permitted=charge_permitted,
            discharge_permitted=discharge_permitted,
            stop_requested=self._stop_requested_by_vehicle,
            faults=self.faults,
        )


_BEFORE_ENERGISED = frozenset(
    {ChademoState.WAIT_VEHICLE, ChademoState.WAIT_PERMISSION, ChademoState.INSULATION_TEST}
)
_BEFORE_TRANSFER = _BEFORE_ENERGISED | {ChademoState.WAIT_VEHICLE_CONTACTOR}
_STOPPING = frozenset(
    {ChademoState.STOP_CURRENT, ChademoState.STOP_VEHICLE_CONTACTOR, ChademoState.STOP_D1}
)
_RUNNING = _BEFORE_TRANSFER | {ChademoState.ENERGY_TRANSFER}
# From the vehicle's first permission (k and 0x102.5 bit0) to the end of transfer.
_PERMITTED = _RUNNING - {ChademoState.WAIT_VEHICLE}
_BEFORE_D2 = frozenset({ChademoState.WAIT_PERMISSION, ChademoState.INSULATION_TEST})
_AFTER_D2 = frozenset({ChademoState.WAIT_VEHICLE_CONTACTOR, ChademoState.ENERGY_TRANSFER})
# From the passed insulation test until the current is down: the output may be live, and an
# insulation monitor alarm stops the session as a fault (IEC 61851-23 insulation monitoring).
_INSULATION_WATCHED = _AFTER_D2 | {ChademoState.STOP_CURRENT}
# States that go on only while the charger side allows energy transfer.
_NEED_ALLOWED = _AFTER_D2 | {ChademoState.INSULATION_TEST}


def _clamp(value: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(value)))


def _min_discharge_level(level: float, ceiling: float) -> float:
    """CHAdeMO 0x200 byte 6 as a %, or NaN when it does not read as one.

    Byte 6 is a % only when byte 7 (maximum remaining capacity for charging, %; 0 = not used)
    reads as one too and byte 6 is not above it: the ZE1's ``0A 64`` is 10 %, but the ZE0's
    ``43 B2`` and the ZE1's first ``1A FF`` are not percentages. NaN is "reported but not
    readable", which the core treats as a floor that permits no discharge (rules.py), never as
    "not reported" (None), which would drop the vehicle's floor altogether.
    """
    readable = level <= 100 if ceiling == 0 else ceiling <= 100 and level <= ceiling
    return float(level) if readable else math.nan
