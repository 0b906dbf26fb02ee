"""The vehicle's side of CHAdeMO (with V2H discharge), sans-IO, for the simulator and tests.

Sequence (vehicle view): wake on d1 -> send 0x100/0x101/0x102 (0x200/0x201 when discharge-capable)
every 100 ms -> on the charger's 0x109 set 0x102.5 bit0 and pull k -> on d2 close the contactor
(0x102.5 bit3 = 0) -> request current (charge) or hold 0 A (discharge) -> at the target SoC, the
discharge floor or an injected stop request clear 0x102.5 bit0 -> once the charger's output is
<= 5 A and 0x109.5 bit0 is clear, open the contactor and release k; 0x102.5 bit3 = 1 once its
welding detection is done (``welding_detection_s`` later) -> done when d1 goes off.

A charger that falls silent (no 0x109 for 1 s) while the car is enabled, transferring or stopping
is gone: the car opens its contactor, releases k and is done. A done car handshakes again as soon
as a charger talks to it with d1 on: a daemon that restarted (after SIGKILL d1 stays on and 0x109
resumes after a gap; after a clean exit d1 goes off and on again), or a new plug-in.

A discharge-capable car announces 0 A in 0x200 byte 0 until it has seen the charger's 0x208, then
at most the charger's available input current (0x208 byte 3), as the recorded Leaf ZE0 does
(``FF`` first, then ``F0`` = 15 A against the charger's 15 A).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from controller.errors import ProtocolError
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame
from controller.vehicle.protocols.chademo import (
    CHARGER_CAPABILITY_ID,
    CHARGER_IDS,
    CHARGER_STATUS_ID,
    DISCHARGE_STATUS_ID,
    PERIOD_S,
    STOP_CURRENT_A,
    VEHICLE_STATUS_ID,
)
from hil.vehicle.battery import BatteryModel
from hil.vehicle.faults import FaultInjection
from hil.vehicle.lines import VehicleSideLines

CONTACTOR_DELAY_S = 0.2  # how long the simulated contactor takes to close after d2
STANDALONE_D2_DELAY_S = 1.5  # without lines: assume d2 this long after the charger locks
CHARGER_SILENT_S = 1.0  # the vehicle stops when 0x109 is this old
HIGH_TEMPERATURE_C = 50.0


class ChademoVehicleState(enum.Enum):
    """Where the simulated car stands."""

    ASLEEP = "asleep"
    AWAKE = "awake"
    ENABLED = "enabled"
    TRANSFER = "transfer"
    STOPPING = "stopping"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class ChademoVehicleConfig:
    """The car's fixed characteristics."""

    mode: str = "charge"  # "charge" or "discharge"
    target_soc_pct: float = 80.0
    max_charge_current_a: int = 100
    min_battery_voltage_v: int = 250
    max_battery_voltage_v: int = 435
    target_voltage_v: int = 410
    discharge_capable: bool = True
    max_discharge_current_a: int = 50
    min_discharge_voltage_v: int = 250
    min_discharge_level_pct: int = 30
    protocol_number: int = 2
    # How long after its contactor opens the car reports 0x102.5 bit3 = 1 (welding detection
    # done); the recorded Leafs took 2.1 s and 2.9 s; math.inf: never (a welded contactor).
    welding_detection_s: float = 0.0


@dataclass(slots=True)
class _Charger:
    """What the charger last said."""

    available_current_a: float = 0.0
    output_current_a: float = 0.0
    discharge_current_a: float = 0.0
    input_current_a: float | None = None  # 0x208 byte 3, once seen
    charging: bool = False
    locked: bool = False
    stop_control: bool = True
    fault: bool = False
    last_109_s: float | None = None
    locked_since_s: float | None = None
    was_charging: bool = False
    seen: set[int] = field(default_factory=set)


class ChademoVehicle:
    """A CHAdeMO car with a battery, optionally wired to the charger's lines."""

    protocol = "chademo"

    def __init__(
        self,
        battery: BatteryModel | None = None,
        faults: FaultInjection | None = None,
        *,
        config: ChademoVehicleConfig | None = None,
        lines: VehicleSideLines | None = None,
    ) -> None:
        self.battery = battery or BatteryModel()
        self.faults = faults or FaultInjection()
        self.config = config or ChademoVehicleConfig()
        self.lines = lines
        self.state = ChademoVehicleState.ASLEEP
        self._codec = DbcCodec.chademo()
        self._charger = _Charger()
        self._next_send_s = 0.0
        self._last_tick_s: float | None = None
        self._enabled = False
        self._contactor_closed = False
        self._contactor_opened_s: float | None = None  # when it last opened; None: never closed
        self._d2_since_s: float | None = None
        self._now_s = 0.0
        self.stop_reason = ""
        self.handshakes = 0  # times the car gave its permission (k and 0x102.5 bit0)

    def __repr__(self) -> str:
        return (
            f"ChademoVehicle(state={self.state}, soc={self.battery.soc_pct:.1f} %, "
            f"current={self.battery.current_a:.1f} A)"
        )

    @property
    def next_deadline_s(self) -> float:
        """When ``tick`` next has frames to send (or, asleep, next looks at d1)."""
        return self._next_send_s

    @property
    def contactor_closed(self) -> bool:
        """The car's main contactor (what a charger's output sees of the pack)."""
        return self._contactor_closed

    @property
    def contactors_closed(self) -> bool:
        """The plant's name for it, shared with the GB/T car (K5/K6)."""
        return self._contactor_closed

    def receive(self, frame: CanFrame, now: float) -> None:
        """A frame from the charger; anything the DBC rejects is ignored."""
        if frame.is_extended_id or frame.arbitration_id not in CHARGER_IDS:
            return
        try:
            s = self._codec.decode_frame(frame.arbitration_id, frame.data).signals
        except ProtocolError:
            return
        c = self._charger
        c.seen.add(frame.arbitration_id)
        if frame.arbitration_id == CHARGER_CAPABILITY_ID:
            c.available_current_a = s["AvailableOutputCurrent"]
        elif frame.arbitration_id == CHARGER_STATUS_ID:
            c.output_current_a = s["PresentOutputCurrent"]
            c.charging = bool(s["StatusCharging"])
            c.was_charging = c.was_charging or c.charging
            c.locked = bool(s["StatusConnectorLocked"])
            c.stop_control = bool(s["StatusStopControl"])
            c.fault = bool(s["StatusChargerFault"] or s["StatusChargingSystemFault"])
            c.last_109_s = now
            if c.locked and c.locked_since_s is None:
                c.locked_since_s = now
        elif frame.arbitration_id == DISCHARGE_STATUS_ID:
            c.discharge_current_a = s["PresentDischargeCurrent"]
            c.input_current_a = s["AvailableInputCurrent"]

    def tick(self, now: float) -> tuple[CanFrame, ...]:
        """Advance the car and the battery; return the frames due now."""
        dt = 0.0 if self._last_tick_s is None else now - self._last_tick_s
        self._last_tick_s = now
        self._now_s = now
        current = 0.0
        if self._contactor_closed:
            current = self._charger.output_current_a - self._charger.discharge_current_a
        self.battery.step(current, dt)
        self._advance(now)
        if now < self._next_send_s:
            return ()
        self._next_send_s = max(self._next_send_s + PERIOD_S, now + PERIOD_S / 2)
        # Asleep, or done with d1 off, the car is quiet (and looks at d1 every 100 ms).
        quiet = self.state is ChademoVehicleState.ASLEEP or (
            self.state is ChademoVehicleState.DONE and not self._d1()
        )
        if quiet or self.faults.silence:
            return ()
        return self._frames()

    def _d1(self) -> bool:
        return True if self.lines is None else self.lines.outputs.d1

    def _d2(self, now: float) -> bool:
        if self.lines is not None:
            return self.lines.outputs.d2
        locked = self._charger.locked_since_s
        return locked is not None and now - locked >= STANDALONE_D2_DELAY_S

    def _set_k(self, value: bool) -> None:
        if self.lines is not None:
            self.lines.k = value

    def _advance(self, now: float) -> None:  # noqa: PLR0912  one branch per vehicle state
        c = self._charger
        st = self.state
        silent = c.last_109_s is None or now - c.last_109_s > CHARGER_SILENT_S
        if st is ChademoVehicleState.ASLEEP:
            if self._d1():
                self.state = ChademoVehicleState.AWAKE
                self._next_send_s = now
        elif st is ChademoVehicleState.AWAKE:
            if c.last_109_s is not None:
                self._enabled = True
                self._set_k(True)
                self.state = ChademoVehicleState.ENABLED
                self.handshakes += 1
        elif st is ChademoVehicleState.ENABLED:
            if silent:
                self._done(now, "charger silent before transfer")
                return
            if self._d2(now):
                self._d2_since_s = self._d2_since_s or now
                if now - self._d2_since_s >= CONTACTOR_DELAY_S:
                    self._contactor_closed = True
                    self.state = ChademoVehicleState.TRANSFER
            if not self._d1():
                self._stop("d1 off before transfer")
        elif st is ChademoVehicleState.TRANSFER:
            if self.faults.open_contactor:
                self._open_contactor(now)
            reason = self._stop_reason(now)
            if reason:
                self._stop(reason)
        elif st is ChademoVehicleState.STOPPING:
            low = c.output_current_a <= STOP_CURRENT_A and c.discharge_current_a <= STOP_CURRENT_A
            if (low and not c.charging) or silent:
                self._open_contactor(now)
                self._set_k(False)
                if silent:
                    self._done(now, self.stop_reason or "charger silent")
                elif not self._d1():
                    self._done(now, self.stop_reason)
        elif st is ChademoVehicleState.DONE and self._d1() and c.last_109_s is not None:
            # A charger talks to a done car with d1 on: it restarted (or a new plug-in).
            self._handshake_again(now)

    def _open_contactor(self, now: float) -> None:
        if self._contactor_closed:
            self._contactor_closed = False
            self._contactor_opened_s = now

    def _done(self, now: float, reason: str) -> None:
        """Contactor open, k released; forget the charger: a later 0x109 is a new one."""
        self._open_contactor(now)
        self._set_k(False)
        self._enabled = False
        self.stop_reason = reason
        self._charger = _Charger()
        self.state = ChademoVehicleState.DONE

    def _handshake_again(self, now: float) -> None:
        self._d2_since_s = None
        self._contactor_opened_s = None  # the last stop's welding detection is over
        self._enabled = False
        self.state = ChademoVehicleState.AWAKE
        self._next_send_s = now
        self._advance(now)  # the 0x109 that woke it is the charger's answer: enable at once

    def _stop_reason(self, now: float) -> str:
        c = self._charger
        cfg = self.config
        soc = self.battery.soc_pct
        reasons = (
            (self.faults.stop_request, "stop request injected"),
            (cfg.mode == "charge" and soc >= cfg.target_soc_pct, "target SoC reached"),
            (
                cfg.mode == "discharge" and soc <= cfg.min_discharge_level_pct,
                "minimum discharge level reached",
            ),
            (c.fault, "charger reports a fault"),
            (c.was_charging and c.stop_control, "charger stopped"),
            (c.last_109_s is None or now - c.last_109_s > CHARGER_SILENT_S, "charger silent"),
        )
        return next((text for hit, text in reasons if hit), "")

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self._enabled = False
        self.state = ChademoVehicleState.STOPPING

    def _request_a(self) -> int:
        if self.state is not ChademoVehicleState.TRANSFER or self.config.mode != "charge":
            return 0
        return int(min(self.config.max_charge_current_a, self._charger.available_current_a))

    def _max_discharge_a(self) -> float:
        offered = self._charger.input_current_a
        return 0.0 if offered is None else min(self.config.max_discharge_current_a, offered)

    def _fault_bits(self) -> int:
        bits = self.faults.bms_fault_bits & 0x1F
        if self.faults.over_temperature or self.battery.temperature_c > HIGH_TEMPERATURE_C:
            bits |= 0x08  # CHAdeMO 0x102 byte 4 bit 3: high battery temperature
        return bits

    def _frames(self) -> tuple[CanFrame, ...]:
        cfg = self.config
        frames = [
            self._encode(
                "VEH_100_BatteryLimits",
                {
                    "MinChargeCurrent": 0,
                    "MinBatteryVoltage": cfg.min_battery_voltage_v,
                    "MaxBatteryVoltage": cfg.max_battery_voltage_v,
                    "ChargedRateReference": 100,
                },
            ),
            self._encode(
                "VEH_101_ChargingTime",
                {
                    "MaxChargingTime10s": 2550,
                    "MaxChargingTimeMin": 60,
                    "EstimatedChargingTime": 30,
                    "RatedBatteryCapacity": round(self.battery.capacity_kwh, 1),
                },
            ),
        ]
        status = self._status_frame()
        if status is not None:
            frames.append(status)
        if cfg.discharge_capable:
            frames.append(
                self._encode(
                    "VEH_200_DischargeLimits",
                    {
                        "MaxDischargeCurrent": self._max_discharge_a(),
                        "MinDischargeVoltage": cfg.min_discharge_voltage_v,
                        "MinDischargeLevel": cfg.min_discharge_level_pct,
                        "MaxRemainingCapacityForCharging": 100,
                    },
                )
            )
            frames.append(
                self._encode(
                    "VEH_201_DischargeInfo",
                    {
                        "V2hSequenceControlNumber": 2,
                        "DischargeCompletionTime": 0,
                        "AvailableVehicleEnergy": round(
                            self.battery.capacity_kwh * self.battery.soc_pct / 100.0, 1
                        ),
                    },
                )
            )
        return tuple(frames)

    def _status_frame(self) -> CanFrame | None:
        cfg = self.config
        if self.faults.silence_demand:
            return None
        if self.faults.garbage:
            return CanFrame(VEHICLE_STATUS_ID, b"\xff" * 8, is_extended_id=False)
        enabled = self._enabled and not self.faults.stop_request
        bits = self._fault_bits()
        data = self._codec.encode(
            "VEH_102_Status",
            {
                "ProtocolNumber": cfg.protocol_number,
                "TargetBatteryVoltage": cfg.target_voltage_v,
                "ChargingCurrentRequest": self._request_a(),
                "FaultBatteryOverVoltage": bits & 1,
                "FaultBatteryUnderVoltage": bits >> 1 & 1,
                "FaultCurrentDeviation": bits >> 2 & 1,
                "FaultHighBatteryTemperature": bits >> 3 & 1,
                "FaultVoltageDeviation": bits >> 4 & 1,
                "StatusChargingEnabled": int(enabled),
                "StatusNotInPark": int(self.faults.not_in_park),
                "StatusChargingSystemFault": 0,
                "StatusContactorOpen": int(self._reports_contactor_open()),
                "StatusStopBeforeCharging": 0,
                "StatusBit6Undocumented": 0,
                "StatusDischargeCompatible": int(cfg.discharge_capable),
                "ChargedRate": round(self.battery.soc_pct),
            },
        )
        if self.faults.wrong_dlc:
            data = data[:7]
        return CanFrame(VEHICLE_STATUS_ID, data, is_extended_id=False)

    def _reports_contactor_open(self) -> bool:
        """0x102.5 bit3: the contactor is open (and, after it was closed, the welding detection
        is done)."""
        if self._contactor_closed:
            return False
        opened = self._contactor_opened_s
        return opened is None or self._now_s - opened >= self.config.welding_detection_s

    def _encode(self, name: str, signals: dict[str, float]) -> CanFrame:
        data = self._codec.encode(name, signals)
        return CanFrame(self._codec.frame_id(name), data, is_extended_id=False)
