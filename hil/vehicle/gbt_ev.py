"""The BMS's side of GB/T 27930-2015, sans-IO, for the simulator and tests.

CHM -> BHM; CRM 0x00 -> BRM (transport) until CRM 0xAA -> BCP (transport) until CML -> BRO 0x00,
then 0xAA (the vehicle's contactors K5/K6 closed: ``contactors_closed``) until CRO 0xAA (CRO
0x00 is waited through) -> BCL (50 ms), BCS (transport, 250 ms), BSM (250 ms) while charging ->
BST at the target SoC, the discharge floor or an injected stop (or in answer to CST) -> BSD until
CSD; K5/K6 open as the stop ends (STATISTICS). CEM (the charger saw a timeout) puts the BMS back
to waiting for CHM: the charger reconnects. A charger gone silent for 1 s while charging (no CCS)
gets BEM every 250 ms until it handshakes again (CHM, or CRM 0x00), as a charger that restarted
does; so does a charger silent for 5 s in recognition, parameters or ready. A CHM mid-session (the
charger restarted) starts over. Current on the wire follows the standard (negative = charging);
the battery model uses the controller's sign.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from controller.errors import ProtocolError
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame
from controller.vehicle.j1939_tp import TpSender, TpSendResult, decode_cm, encode_cm, encode_dt
from controller.vehicle.protocols.gbt27930 import (
    CCS_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    PERIODS_S,
    PGN_BCP,
    PGN_BCS,
    PGN_BRM,
    READY,
    TP_CM_FROM_BMS,
    TP_CM_FROM_CHARGER,
    TP_DT_FROM_BMS,
)
from hil.vehicle.battery import BatteryModel
from hil.vehicle.faults import FaultInjection
from hil.vehicle.lines import VehicleSideLines

BRO_DELAY_S = 0.2  # the simulated BMS says "not ready" this long before "ready"
BST_AFTER_CST_S = 0.1  # BST repeated this long in answer to CST (the recorded BMS: 10 x 10 ms)
CHARGER_SILENT_S = CCS_TIMEOUT_S  # GB/T 27930 CCS timeout 1 s
CHARGER_WAIT_S = DEFAULT_TIMEOUT_S  # GB/T 27930 timeout for CRM 0xAA, CML and CRO: 5 s
CELLS_IN_SERIES = 108
VIN = "LSIMULATEDV2G0001"


class GbtVehicleState(enum.Enum):
    """Where the simulated BMS stands."""

    ASLEEP = "asleep"
    AWAKE = "awake"
    HANDSHAKE = "handshake"
    RECOGNITION = "recognition"
    PARAMETERS = "parameters"
    READY = "ready"
    CHARGING = "charging"
    STOPPING = "stopping"
    STATISTICS = "statistics"
    DONE = "done"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class GbtVehicleConfig:
    """The BMS's fixed characteristics."""

    mode: str = "charge"  # "charge" or "discharge" (positive BCL current, GB/T sign)
    target_soc_pct: float = 80.0
    max_charge_voltage_v: float = 426.1
    max_charge_current_a: float = 100.0
    discharge_current_a: float = 30.0
    min_discharge_level_pct: float = 30.0


class GbtVehicle:
    """A GB/T 27930 BMS with a battery, optionally wired to the charger's lines."""

    protocol = "gbt27930"

    def __init__(
        self,
        battery: BatteryModel | None = None,
        faults: FaultInjection | None = None,
        *,
        config: GbtVehicleConfig | None = None,
        lines: VehicleSideLines | None = None,
    ) -> None:
        self.battery = battery or BatteryModel()
        self.faults = faults or FaultInjection()
        self.config = config or GbtVehicleConfig()
        self.lines = lines
        self.state = GbtVehicleState.ASLEEP
        self._codec = DbcCodec.gbt27930()
        self._tp = TpSender()
        self._tp_first = False
        self._due: dict[str, float] = {}
        self._since_s = 0.0
        self._last_tick_s: float | None = None
        self._charger_current_a = 0.0  # controller sign
        self._last_ccs_s: float | None = None
        self._last_charger_s = 0.0  # any frame from the charger
        self._aux_lost = False  # the auxiliary supply went off since the BMS last woke
        self._stop_first = ""  # "bms" or "charger"
        self._k5k6 = False  # the vehicle's DC contactors (GB/T 18487.1 K5, K6)
        self._out: list[CanFrame] = []
        self.transfers_done = 0
        self.parameter_phases = 0  # times the BMS reached the parameter phase (sending BRO)
        self.stop_reason = ""

    def __repr__(self) -> str:
        return (
            f"GbtVehicle(state={self.state}, soc={self.battery.soc_pct:.1f} %, "
            f"current={self.battery.current_a:.1f} A)"
        )

    @property
    def contactors_closed(self) -> bool:
        """The vehicle's DC contactors (GB/T 18487.1 K5/K6): closed with the first BRO 0xAA,
        open again once the stop is over (or the BMS starts over). While closed the pack's
        voltage is on the charger's side of the connector; a test's stage measures it there."""
        return self._k5k6

    @property
    def next_deadline_s(self) -> float:
        """When ``tick`` next has frames to send (or a transport timeout)."""
        candidates = [*self._due.values(), (self._last_tick_s or 0.0) + 0.05]
        if (deadline := self._tp.next_deadline_s) is not None:
            candidates.append(deadline)
        return min(candidates)

    # From the charger.

    def receive(self, frame: CanFrame, now: float) -> tuple[CanFrame, ...]:
        """A frame from the charger; returns transport frames to send at once."""
        if not frame.is_extended_id or self.state is GbtVehicleState.ASLEEP:
            return ()
        try:
            if frame.arbitration_id == TP_CM_FROM_CHARGER:
                self._on_tp(self._tp.on_cm(decode_cm(frame.data), now))
            else:
                name = self._codec.name_of(frame.arbitration_id)
                if name in ("CHM", "CRM", "CML", "CTS", "CRO", "CCS", "CST", "CSD", "CEM"):
                    s = self._codec.decode_frame(frame.arbitration_id, frame.data).signals
                    self._on_message(str(name), s, now)
        except ProtocolError:
            pass  # the simulated BMS ignores what it cannot read, as a real one would
        out = tuple(self._out)
        self._out.clear()
        return out

    def _on_message(self, name: str, s: dict[str, float], now: float) -> None:
        st = self.state
        self._last_charger_s = now
        if name == "CHM" and st in _MID_SESSION:
            # A CHM mid-session: the charger restarted and handshakes again; so does the BMS.
            self.stop_reason = "charger restarted (CHM)"
            self._charger_current_a = 0.0
            self._stop_first = ""
            self._enter(GbtVehicleState.HANDSHAKE, now, "BHM")
        elif name == "CHM" and st is GbtVehicleState.AWAKE:
            self._enter(GbtVehicleState.HANDSHAKE, now, "BHM")
        elif name == "CRM" and s["RecognitionResult"] == 0 and st in _BEFORE_RECOGNITION:
            self._enter(GbtVehicleState.RECOGNITION, now, "BRM")
        elif name == "CRM" and s["RecognitionResult"] == READY and st in _BEFORE_PARAMETERS:
            self._enter(GbtVehicleState.PARAMETERS, now, "BCP")
        elif name == "CML" and st is GbtVehicleState.PARAMETERS:
            self._enter(GbtVehicleState.READY, now, "BRO")
        elif name == "CRO" and s["ChargerReady"] == READY and st is GbtVehicleState.READY:
            self._enter(GbtVehicleState.CHARGING, now, "BCL", "BCS", "BSM")
        elif name == "CCS":
            self._last_ccs_s = now
            self._charger_current_a = -s["OutputCurrent"]  # GB/T sign: - = charging
        elif name == "CST" and st in (GbtVehicleState.CHARGING, GbtVehicleState.READY):
            self._stop_first = "charger"
            self.stop_reason = "charger sent CST"
            self._enter(GbtVehicleState.STOPPING, now, "BST")
        elif name == "CST" and st is GbtVehicleState.STOPPING and self._stop_first == "bms":
            self._enter(GbtVehicleState.STATISTICS, now, "BSD")
        elif name == "CSD" and st is GbtVehicleState.STATISTICS:
            self._enter(GbtVehicleState.DONE, now)
        elif name == "CEM" and st is not GbtVehicleState.AWAKE:
            # GB/T 27930: reconnect 3 times, then abort. Wait for CHM / CRM 0x00 again.
            self.stop_reason = "charger sent CEM"
            self._charger_current_a = 0.0
            self._stop_first = ""
            self._enter(GbtVehicleState.AWAKE, now)

    def _on_tp(self, result: TpSendResult) -> None:
        for message in result.send_cm:
            self._out.append(CanFrame(TP_CM_FROM_BMS, encode_cm(message), True))
        packets = list(result.send_dt)
        if self._tp_first and packets:
            self._tp_first = False
            packets = [p for p in packets if p.sequence not in self.faults.tp_drop_packets]
            if self.faults.tp_reorder:
                packets.reverse()
        for packet in packets:
            self._out.append(CanFrame(TP_DT_FROM_BMS, encode_dt(packet), True))
        if result.done:
            self.transfers_done += 1

    # Time.

    def tick(self, now: float) -> tuple[CanFrame, ...]:
        """Advance the BMS and the battery; return the frames due now."""
        dt = 0.0 if self._last_tick_s is None else now - self._last_tick_s
        self._last_tick_s = now
        closed = self.state is GbtVehicleState.CHARGING or self.state is GbtVehicleState.STOPPING
        self.battery.step(self._charger_current_a if closed else 0.0, dt)
        self._advance(now)
        self._on_tp(self._tp.tick(now))
        for name, due in sorted(self._due.items(), key=lambda item: item[1]):
            if now >= due:
                self._due[name] = max(due + PERIODS_S[name], now + PERIODS_S[name] / 2)
                self._emit(name, now)
        out = tuple(self._out)
        self._out.clear()
        return () if self.faults.silence else out

    def _advance(self, now: float) -> None:
        st = self.state
        aux = True if self.lines is None else self.lines.outputs.d1
        if st is GbtVehicleState.ASLEEP and aux:
            self._enter(GbtVehicleState.AWAKE, now)
        elif st in _WAITING and now - max(self._since_s, self._last_charger_s) > CHARGER_WAIT_S:
            # GB/T 27930-2015 10.2: 5 s without CRM 0xAA, CML or CRO is a timeout: BEM, then
            # wait for the charger to handshake again.
            self.stop_reason = f"charger silent in {st}"
            self._enter(GbtVehicleState.AWAKE, now, "BEM")
        elif st is GbtVehicleState.CHARGING:
            reason = self._stop_reason(now)
            if reason == "CCS timeout":
                # GB/T 27930-2015 10.2: the BMS reports a timeout in BEM (250 ms) and waits for
                # the charger to handshake again (a restarted charger starts with CHM).
                self.stop_reason = reason
                self._charger_current_a = 0.0
                self._stop_first = ""
                self._enter(GbtVehicleState.AWAKE, now, "BEM")
            elif reason:
                self.stop_reason = reason
                self._stop_first = "bms"
                self._enter(GbtVehicleState.STOPPING, now, "BST")
        elif (
            st is GbtVehicleState.STOPPING
            and self._stop_first == "charger"
            and now - self._since_s >= BST_AFTER_CST_S
        ):
            self._enter(GbtVehicleState.STATISTICS, now, "BSD")
        if st is not GbtVehicleState.ASLEEP and not aux:
            self._enter(GbtVehicleState.DONE, now)
            self._aux_lost = True
        elif st is GbtVehicleState.DONE and aux and self._aux_lost:
            # The BMS runs on the charger's auxiliary supply (GB/T 18487.1 A+/A-): when a
            # restarted charger switches it on again, the BMS boots and waits for CHM.
            self._aux_lost = False
            self._enter(GbtVehicleState.AWAKE, now)

    def _stop_reason(self, now: float) -> str:
        cfg = self.config
        if self.faults.stop_request:
            return "stop request injected"
        if cfg.mode == "charge" and self.battery.soc_pct >= cfg.target_soc_pct:
            return "target SoC reached"
        if cfg.mode == "discharge" and self.battery.soc_pct <= cfg.min_discharge_level_pct:
            return "minimum discharge level reached"
        if self._last_ccs_s is not None and now - self._last_ccs_s > CHARGER_SILENT_S:
            return "CCS timeout"
        return ""

    def _enter(self, state: GbtVehicleState, now: float, *messages: str) -> None:
        if state in (GbtVehicleState.AWAKE, GbtVehicleState.HANDSHAKE):
            self._tp = TpSender()  # a new handshake: a transfer to the old charger is dead
        self.state = state
        self._since_s = now
        self._due = dict.fromkeys(messages, now)
        if state not in (GbtVehicleState.CHARGING, GbtVehicleState.STOPPING):
            self._k5k6 = False  # READY closes them again with its BRO 0xAA
        if state is GbtVehicleState.READY:
            self.parameter_phases += 1
        if state is GbtVehicleState.CHARGING:
            self._last_ccs_s = now

    # To the charger.

    def _emit(self, name: str, now: float) -> None:
        b = self.battery
        cfg = self.config
        if name == "BHM":
            self._send("BHM", {"MaxChargeVoltage": cfg.max_charge_voltage_v})
        elif name == "BRM":
            self._start_tp(PGN_BRM, self._brm_payload(), now)
        elif name == "BCP":
            payload = self._codec.encode(
                "BCP",
                {
                    "MaxCellVoltage": 4.2,
                    "MaxChargeCurrent": -cfg.max_charge_current_a,
                    "NominalEnergy": b.capacity_kwh,
                    "MaxChargeVoltage": cfg.max_charge_voltage_v,
                    "MaxTemperature": 55,
                    "StateOfCharge": round(b.soc_pct, 1),
                    "PresentVoltage": round(b.voltage_v, 1),
                },
            )
            self._start_tp(PGN_BCP, payload, now)
        elif name == "BRO":
            if self.parameter_phases <= self.faults.bro_silent:
                return  # injected: silent in the parameter phase
            ready = now - self._since_s >= BRO_DELAY_S
            # GB/T 18487.1 B.3.4: the vehicle closes K5/K6 as it declares itself ready.
            self._k5k6 = self._k5k6 or ready
            self._send("BRO", {"BmsReady": READY if ready else 0})
        elif name == "BCL":
            self._send_bcl()
        elif name == "BCS":
            self._start_tp(PGN_BCS, self._bcs_payload(), now)
        elif name == "BSM":
            self._send_bsm()
        elif name == "BST":
            self._send_bst()
        elif name == "BEM":
            self._send("BEM", {**dict.fromkeys(_BEM_FIELDS, 0), "TimeoutCcs": 1})
        elif name == "BSD":
            cell_v = round(b.voltage_v / CELLS_IN_SERIES, 2)
            self._send(
                "BSD",
                {
                    "StopSoc": round(b.soc_pct),
                    "MinCellVoltage": cell_v,
                    "MaxCellVoltage": cell_v,
                    "MinTemperature": round(b.temperature_c),
                    "MaxTemperature": round(b.temperature_c),
                },
            )

    def _send_bcl(self) -> None:
        cfg = self.config
        if self.faults.silence_demand:
            return
        bcl_id = self._codec.frame_id("BCL")
        if self.faults.garbage:
            self._out.append(CanFrame(bcl_id, b"\xff" * 5, True))
            return
        # GB/T 27930 4.5: negative = charging, positive = discharging.
        demand = -cfg.max_charge_current_a if cfg.mode == "charge" else cfg.discharge_current_a
        data = self._codec.encode(
            "BCL",
            {"VoltageDemand": cfg.max_charge_voltage_v, "CurrentDemand": demand, "ChargeMode": 2},
        )
        self._out.append(CanFrame(bcl_id, data[:4] if self.faults.wrong_dlc else data, True))

    def _send_bsm(self) -> None:
        b = self.battery
        hot = self.faults.over_temperature
        self._send(
            "BSM",
            {
                "MaxCellVoltageNumber": 1,
                "MaxTemperature": round(b.temperature_c) + (40 if hot else 0),
                "MaxTemperaturePoint": 1,
                "MinTemperature": round(b.temperature_c),
                "MinTemperaturePoint": 2,
                "CellVoltageStatus": 0,
                "SocStatus": 0,
                "OverCurrentStatus": 0,
                "TemperatureStatus": int(hot),  # GB/T BSM byte 6 bits 7-8: 01 too high
                "InsulationStatus": 0,
                "OutputConnectorStatus": 0,
                "ChargingAllowed": 0 if self.faults.charging_forbidden else 1,
            },
        )

    def _send_bst(self) -> None:
        self._send(
            "BST",
            {
                "StopSocReached": int(self.stop_reason == "target SoC reached"),
                "StopTotalVoltageReached": 0,
                "StopCellVoltageReached": 0,
                "StopByCharger": int(self._stop_first == "charger"),
                **dict.fromkeys(
                    (
                        "FaultInsulation",
                        "FaultConnectorOverTemp",
                        "FaultBmsOverTemp",
                        "FaultConnector",
                        "FaultPackOverTemp",
                        "FaultHvRelay",
                        "FaultDetectionPoint2",
                        "FaultOther",
                        "ErrorCurrent",
                        "ErrorVoltage",
                    ),
                    0,
                ),
            },
        )

    def _brm_payload(self) -> bytes:
        vin = VIN.encode("ascii")
        return self._codec.encode(
            "BRM",
            {
                "ProtocolVersionMinor": 1,
                "ProtocolVersionMajor": 1,
                "BatteryType": 6,
                "RatedCapacity": round(self.battery.capacity_kwh * 1000 / 370, 1),
                "RatedVoltage": 370.0,
                "Manufacturer": int.from_bytes(b"SIM\x00", "little"),
                "PackSerialNumber": 1,
                "ProductionYear": 2024,
                "ProductionMonth": 1,
                "ProductionDay": 1,
                "ChargeCount": 1,
                "PropertyRight": 1,
                "VinPart1": int.from_bytes(vin[:8], "little"),
                "VinPart2": int.from_bytes(vin[8:16], "little"),
                "VinPart3": vin[16],
                "BmsSoftwareSerial": 1,
                "BmsSoftwareDay": 1,
                "BmsSoftwareMonth": 1,
                "BmsSoftwareYear": 2024,
            },
        )

    def _bcs_payload(self) -> bytes:
        b = self.battery
        return self._codec.encode(
            "BCS",
            {
                "MeasuredVoltage": round(b.voltage_v, 1),
                "MeasuredCurrent": round(-b.current_a, 1),  # GB/T sign
                "MaxCellVoltage": round(b.voltage_v / CELLS_IN_SERIES, 2),
                "MaxCellGroup": 1,
                "StateOfCharge": round(b.soc_pct),
                "RemainingTime": 60,
            },
        )

    def _start_tp(self, pgn: int, payload: bytes, now: float) -> None:
        if self._tp.busy:
            return  # the previous transfer of this BMS is still open: skip this period
        self._tp_first = True
        self._on_tp(self._tp.start(pgn, payload, now))

    def _send(self, name: str, signals: dict[str, float]) -> None:
        data = self._codec.encode(name, signals)
        self._out.append(CanFrame(self._codec.frame_id(name), data, True))


_BEM_FIELDS = (
    "TimeoutCrm00",
    "TimeoutCrmAA",
    "TimeoutCtsCml",
    "TimeoutCro",
    "TimeoutCcs",
    "TimeoutCst",
    "TimeoutCsd",
)
_MID_SESSION = frozenset(
    {
        GbtVehicleState.RECOGNITION,
        GbtVehicleState.PARAMETERS,
        GbtVehicleState.READY,
        GbtVehicleState.CHARGING,
    }
)
_WAITING = _MID_SESSION - {GbtVehicleState.CHARGING}
_BEFORE_RECOGNITION = frozenset({GbtVehicleState.AWAKE, GbtVehicleState.HANDSHAKE})
_BEFORE_PARAMETERS = _BEFORE_RECOGNITION | {GbtVehicleState.RECOGNITION}
