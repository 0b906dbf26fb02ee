"""GB/T 27930-2015 charger-side session, sans-IO, with J1939-21 transport for BRM, BCP and BCS.

Phases (charger view)::

    IDLE --plugged--> HANDSHAKE (auxiliary power on; CHM every 250 ms until BHM, or 5 s)
         --> INSULATION_TEST (passed: the insulation monitor's OK held for insulation_test_s
         from the test's start; the OK falling, or no hold within insulation_timeout_s: a fault)
         --> RECOGNITION (CRM 0x00 until BRM, then CRM 0xAA at once)
         --BCP--> PARAMETERS (CTS 500 ms, CML 250 ms; BRO 0xAA within 60 s)
         --BRO 0xAA--> CHARGER_READY (CRO 0x00 at once and every 250 ms; K1/K2 close and CRO
         0xAA once transfer is allowed and the measured output voltage is fresh and within
         +-5 % of BCP's battery voltage; neither within 60 s of BRO: a fault naming the volts)
         --> CHARGING (CRO 0xAA every 250 ms until the first BCL, then CCS every 50 ms;
         BCL 50 ms / 1 s, BCS 250 ms / 5 s, BSM 250 ms / 5 s)
         --BST, end(), allow_energy_transfer(False), a BSM pause past its limit, or fault-->
         STOPPING (CST every 10 ms; output <= 5 A within 100 ms of the first CST, judged on
         measurements reported after it)
         --BST and <= 5 A--> STATISTICS (BSD within 10 s, then CSD) --> ENDED (auxiliary power
         off; the connector stays locked until a measurement reported since shows the output
         below 60 V; not within 10 s: a fault, and it stays locked)
    timeouts: a missed BMS message (CEM with its flag) or a BEM (the BMS missed ours) stops energy
         transfer first (CHARGING: CST, contactors open once <= 5 A), then RECONNECT (CEM every
         250 ms for 1 s, if the charger saw the timeout) --> HANDSHAKE again (CHM, CRM 0x00),
         contactors open throughout; after 3 reconnects in one plug-in the next timeout is a fault
    faults: CEM (charger saw a timeout) every 250 ms for 1 s after the stop, then ENDED (FAULT)

A BST at any point before the stop is the BMS's stop request. Two-bit status values: BST and BEM
"01" and "10" (untrusted) are faults, as are BSM "01"/"10" (each named as GB/T 27930 names it for
that field) and, for insulation and the output connector, "11" (not available). STOPPING waits
for a measurement (``set_output``) reported after the stop of at most 5 A; unknown, stale or from
before the stop is not low (a charger fault once 100 ms have passed and the evidence is in,
contactors open at 2 s).

What the BMS sends is read through the DBC's ranges: a value outside its range (a J1939 "not
available" 0xFF / 0xFFFF included) in a signal the charger acts on (BHM, BCL, BCP's limits and
battery voltage) is a fault; in an informational one (BCS, BSM temperatures, BSD, BRM, BCP's
energy and SoC) it is unknown (None), never a fault and never a stale value. A frame longer than
its message whose extra bytes are all 0xFF or all 0x00 is padded, not malformed.

Current follows the standard's sign on the wire (0.1 A/bit, -400 A, negative = charging, positive
= discharging, clause 4.5) and the controller's sign in ``VehicleState`` (+ charges the vehicle):
the conversion happens here and nowhere else. A positive BCL current demand is a discharge demand,
honoured only when the charger offers discharge.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import ProtocolError
from controller.vehicle import j1939_tp as tp
from controller.vehicle.dbc import DbcCodec, ImplausibleValueError, SignalValues
from controller.vehicle.frames import CanFrame, EventKind, LineOutputs, SessionEvent
from controller.vehicle.protocols.gbt27930 import (
    BCL_TIMEOUT_S,
    BCS_TIMEOUT_S,
    BMS_IDS,
    BRM_TABLE_BYTES,
    BRO_READY_S,
    BSM_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    MAX_RECONNECTS,
    NOT_READY,
    OPTIONAL_TP_PGNS,
    PERIODS_S,
    READY,
    STATISTICS_TIMEOUT_S,
    STOP_CURRENT_S,
    TP_CM_FROM_BMS,
    TP_CM_FROM_CHARGER,
    TP_DT_FROM_BMS,
    TP_MESSAGES,
)
from controller.vehicle.session import ChargerSession, check_transition

# The protocol's facts (ids, PGNs, periods, timeouts) are in controller/vehicle/protocols/; what
# follows are this charger's own rules and choices.
# Project choice: after GB/T 27930's 100 ms (STOP_CURRENT_S), how long the verdict waits for the
# stage's first report since the CST when none has come yet (the daemon reports the stage every
# 100 ms cycle).
STOP_REPORT_ALLOWANCE_S = 0.1
STOP_CURRENT_GIVE_UP_S = 2.0  # project choice: open contactors even if the stage never reports it
# GB/T 18487.1-2015 Annex B (B.3.4; tested as GB/T 34657.1 "charging ready"): K1/K2 close only
# when the voltage outside them is within +-5 % of the battery voltage the BMS sent in BCP
# (bytes 12-13) and within the charger's output range; otherwise charging is not allowed.
VOLTAGE_MATCH_FRACTION = 0.05
# GB/T 18487.1: the electronic lock is released only once the output is below 60 V DC.
UNLOCK_BELOW_V = 60.0
UNLOCK_TIMEOUT_S = 10.0  # project choice: a fault if the output is not below 60 V by then
CEM_AFTER_FAULT_S = 1.0  # project choice: CEM is repeated this long before auxiliary power goes off
RECONNECT_WAIT_S = 1.0  # project choice: CEM repeated (or a quiet pause) this long before CHM again
CST_MIN_S = 0.1  # project choice: CST for at least 100 ms (10 frames) before moving on
CSD_REPEATS = 4  # project choice: CSD four times (1 s), as the recorded charger did
TICK_S = 0.05  # longest sleep while a session is open

# GB/T 27930-2015 BSM 2-bit status fields, 00 normal, and what "01" and "10" mean for each as
# the standard's table names them; any "01"/"10" stops charging.
_BSM_STATUS = {
    "CellVoltageStatus": ("cell voltage too high", "cell voltage too low"),  # byte 6 bits 1-2
    "SocStatus": ("SoC too high", "SoC too low"),  # byte 6 bits 3-4
    "OverCurrentStatus": ("charging over-current", "charging current untrusted"),  # bits 5-6
    "TemperatureStatus": ("battery temperature too high", "battery temperature untrusted"),  # 7-8
    "InsulationStatus": ("insulation fault", "insulation untrusted"),  # byte 7 bits 1-2
    "OutputConnectorStatus": ("output connector fault", "output connector untrusted"),  # bits 3-4
}
# "11" is not defined for them (J1939: not available): unknown, except where not knowing is
# unsafe (project choice): insulation and the output connector.
_BSM_NOT_AVAILABLE = {
    "InsulationStatus": "insulation not available",
    "OutputConnectorStatus": "output connector not available",
}
# Signals the charger acts on: out of their DBC range (a "not available" included) they fault the
# session. Any other signal out of range is unknown: absent from the decoded values.
_ACTED_ON = {
    "BHM": frozenset({"MaxChargeVoltage"}),  # the voltage limit (insulation test, charging)
    "BCP": frozenset({"MaxChargeCurrent", "MaxChargeVoltage", "PresentVoltage"}),
    "BCL": frozenset({"VoltageDemand", "CurrentDemand", "ChargeMode"}),
}
# GB/T 27930 BST bytes 2-4: fault and error reasons.
_BST_FAULTS = {
    "FaultInsulation": "insulation fault",
    "FaultConnectorOverTemp": "output connector over-temperature",
    "FaultBmsOverTemp": "BMS component or connector over-temperature",
    "FaultConnector": "charging connector fault",
    "FaultPackOverTemp": "battery pack over-temperature",
    "FaultHvRelay": "high-voltage relay fault",
    "FaultDetectionPoint2": "detection point 2 voltage fault",
    "FaultOther": "other fault",
    "ErrorCurrent": "current too high",
    "ErrorVoltage": "voltage abnormal",
}
_BEM_TIMEOUTS = {
    "TimeoutCrm00": "CRM 0x00",
    "TimeoutCrmAA": "CRM 0xAA",
    "TimeoutCtsCml": "CTS/CML",
    "TimeoutCro": "CRO",
    "TimeoutCcs": "CCS",
    "TimeoutCst": "CST",
    "TimeoutCsd": "CSD",
}
_CEM_FIELDS = (
    "TimeoutBrm",
    "TimeoutBcp",
    "TimeoutBro",
    "TimeoutBcs",
    "TimeoutBcl",
    "TimeoutBst",
    "TimeoutBsd",
)


class GbtState(enum.StrEnum):
    """The charger's position in the GB/T 27930 sequence."""

    IDLE = "idle"
    HANDSHAKE = "handshake"
    INSULATION_TEST = "insulation_test"
    RECOGNITION = "recognition"
    PARAMETERS = "parameters"
    CHARGER_READY = "charger_ready"
    CHARGING = "charging"
    STOPPING = "stopping"
    STATISTICS = "statistics"
    ERROR_REPORT = "error_report"
    RECONNECT = "reconnect"
    ENDED = "ended"


class StopReason(enum.StrEnum):
    """Why the charger stops: what CST byte 1 tells the BMS (GB/T 27930 CST)."""

    NONE = ""  # not stopping (yet)
    CONDITIONS = "conditions"  # CST byte 1 bits 1-2: the charging conditions are reached
    MANUAL = "manual"  # bits 3-4: stopped by hand (the charger ends the session)
    FAULT = "fault"  # bits 5-6: a fault
    BMS = "bms"  # bits 7-8: the BMS stopped (BST)


# Every state change the session may make (the phases at the top), checked on each one. Before
# CHARGING a stop ends the exchange at once (STOPPING, or ERROR_REPORT after a fault) and a
# communication timeout reconnects (RECONNECT); in CHARGING both go through STOPPING first, for
# the current to fall. ENDED -> IDLE is the unplug (``_reset``).
_S = GbtState
_BEFORE_CHARGING_EXITS = frozenset({_S.STOPPING, _S.ERROR_REPORT, _S.RECONNECT})
TRANSITIONS: Mapping[GbtState, frozenset[GbtState]] = {
    _S.IDLE: frozenset({_S.HANDSHAKE}),
    _S.HANDSHAKE: _BEFORE_CHARGING_EXITS | {_S.INSULATION_TEST},
    _S.INSULATION_TEST: _BEFORE_CHARGING_EXITS | {_S.RECOGNITION},
    _S.RECOGNITION: _BEFORE_CHARGING_EXITS | {_S.PARAMETERS},
    _S.PARAMETERS: _BEFORE_CHARGING_EXITS | {_S.CHARGER_READY},
    _S.CHARGER_READY: _BEFORE_CHARGING_EXITS | {_S.CHARGING},
    _S.CHARGING: frozenset({_S.STOPPING}),
    _S.STOPPING: frozenset({_S.STATISTICS, _S.ERROR_REPORT, _S.RECONNECT}),
    _S.STATISTICS: frozenset({_S.ENDED, _S.ERROR_REPORT}),
    _S.ERROR_REPORT: frozenset({_S.ENDED}),
    _S.RECONNECT: frozenset({_S.HANDSHAKE, _S.STOPPING, _S.ERROR_REPORT}),
    _S.ENDED: frozenset({_S.IDLE}),
}

_PHASE = {
    GbtState.IDLE: VehiclePhase.UNPLUGGED,
    GbtState.HANDSHAKE: VehiclePhase.HANDSHAKE,
    GbtState.INSULATION_TEST: VehiclePhase.HANDSHAKE,
    GbtState.RECOGNITION: VehiclePhase.HANDSHAKE,
    GbtState.PARAMETERS: VehiclePhase.HANDSHAKE,
    GbtState.CHARGER_READY: VehiclePhase.READY,
    GbtState.CHARGING: VehiclePhase.ENERGY_TRANSFER,
    GbtState.STOPPING: VehiclePhase.STOPPING,
    GbtState.STATISTICS: VehiclePhase.STOPPING,
    GbtState.ERROR_REPORT: VehiclePhase.FAULT,
    GbtState.RECONNECT: VehiclePhase.HANDSHAKE,
    GbtState.ENDED: VehiclePhase.ENDED,
}


@dataclass(frozen=True, slots=True)
class GbtChargerConfig:
    """What the charger announces in CRM and CML."""

    max_output_voltage_v: float = 750.0  # CML bytes 1-2
    min_output_voltage_v: float = 150.0  # CML bytes 3-4
    max_output_current_a: float = 250.0  # CML bytes 5-6, magnitude (sent as charging, negative)
    min_output_current_a: float = 0.0  # CML bytes 7-8, magnitude
    charger_number: int = 1  # CRM bytes 2-5, CSD bytes 5-8
    region_code: str = "000"  # CRM bytes 6-8, three ASCII characters
    discharge_offered: bool = False  # honour a positive (discharge) BCL current demand
    # Insulation test: the monitor's OK held this long from the test's start passes it; without
    # that within insulation_timeout_s, the session fails (session.insulation_test_result).
    insulation_test_s: float = 1.0
    insulation_timeout_s: float = 10.0
    # Project choice (the facts give no limit): a BSM "charging forbidden" pause longer than this
    # ends the session with CST "conditions reached".
    pause_limit_s: float = 600.0


@dataclass(slots=True)
class _Bms:
    """The latest values from the BMS."""

    bhm_max_voltage_v: float | None = None
    vin: str | None = None
    max_cell_voltage_v: float | None = None
    max_charge_current_a: float | None = None  # magnitude, from BCP
    nominal_energy_kwh: float | None = None
    max_charge_voltage_v: float | None = None
    bcp_soc_pct: float | None = None
    bcp_voltage_v: float | None = None  # BCP bytes 12-13: the battery voltage before charging
    voltage_demand_v: float | None = None
    current_demand_a: float | None = None  # controller sign: + charge, - discharge
    measured_voltage_v: float | None = None
    measured_current_a: float | None = None  # controller sign
    cell_voltage_max_v: float | None = None
    soc_pct: float | None = None
    bcs_seen: bool = False  # from the first BCS on, its SoC (or None) is the SoC, not BCP's
    temp_max_c: float | None = None
    temp_min_c: float | None = None
    charging_allowed: bool = False
    bro_ready: bool = False


class GbtSession(ChargerSession):
    """Charger side of one GB/T 27930-2015 session at a time."""

    protocol = "gbt27930"

    def __init__(
        self, config: GbtChargerConfig | None = None, *, dbc_dir: str | Path | None = None
    ) -> None:
        super().__init__(DbcCodec.gbt27930(dbc_dir), extended_ids=True)
        self.config = config or GbtChargerConfig()
        region = self.config.region_code.encode("ascii")
        if len(region) != 3:
            raise ProtocolError("GB/T region code must be three ASCII characters")
        self._region = int.from_bytes(region, "little")
        self._output_reports = 0  # set_output calls so far: which measurement came after what
        self._reset()

    def _reset(self) -> None:
        """A new plug-in: everything, including the reconnect count."""
        self._reset_common()
        self.state = GbtState.IDLE
        self._since_s = 0.0
        self._due: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self._last_tick_s = 0.0
        self._cem: dict[str, int] = {}
        self._reconnects = 0  # GB/T 27930: reconnect 3 times, then abort (per plug-in)
        self._energy_wh = 0.0
        self._outputs = LineOutputs()
        # ENDED with the connector still locked: since when, and whether that was reported.
        self._unlock_from_s: float | None = None
        self._unlock_from_report = 0
        self._unlock_faulted = False
        self._reset_communication()

    def _reset_communication(self) -> None:
        """What a reconnect starts afresh: the BMS's values and the exchange's progress."""
        self._bms = _Bms()
        self._tp = tp.TpReceiver(frozenset(TP_MESSAGES) | OPTIONAL_TP_PGNS)
        self._last_seen.clear()
        self._cem.clear()
        self._crm_result = NOT_READY
        self._crm_ready_s = 0.0
        self._stop_reason = StopReason.NONE
        self._paused_since_s: float | None = None
        self._bst_seen = False
        self._bsd_seen = False
        self._csd_sent = 0
        self._charging_started_s: float | None = None
        self._reconnect_why = ""  # set while a reconnect is under way
        # The stop's reference event (the first CST): when, and the reports made before it.
        self._stop_at_s = 0.0
        self._stop_report = 0
        self._stop_current_faulted = False

    def __repr__(self) -> str:
        return (
            f"GbtSession(state={self.state}, phase={self.phase}, faults={self.faults}, "
            f"{self._tp!r})"
        )

    @property
    def accepted_ids(self) -> frozenset[int]:
        """The BMS's IDs, including its J1939 transport frames."""
        return BMS_IDS

    def set_output(self, voltage_v: float, current_a: float, now_s: float) -> None:
        """The power stage's measured output (see ``ChargerSession.set_output``), counted so the
        stop and the unlock can tell a report made after their event from one made before."""
        super().set_output(voltage_v, current_a, now_s)
        self._output_reports += 1

    @property
    def next_deadline_s(self) -> float:
        """The earliest periodic frame, transport timeout or poll."""
        candidates = [self._last_tick_s + (TICK_S if self.state is not GbtState.IDLE else 0.1)]
        candidates.extend(self._due.values())
        if (tp_deadline := self._tp.next_deadline_s) is not None:
            candidates.append(tp_deadline)
        return min(candidates)

    # Vehicle frames.

    def _on_frame(self, frame: CanFrame, now_s: float) -> None:
        if self.state in (GbtState.IDLE, GbtState.ENDED):
            return
        fid = frame.arbitration_id
        if fid == TP_CM_FROM_BMS:
            self._handle_tp(self._tp.on_cm(tp.decode_cm(frame.data), now_s), now_s)
            return
        if fid == TP_DT_FROM_BMS:
            self._handle_tp(self._tp.on_dt(tp.decode_dt(frame.data), now_s), now_s)
            return
        name = self._codec.name_of(fid)
        if name is None:
            raise ProtocolError(f"unknown ID 0x{fid:X}")
        data = _unpadded(frame.data, self._codec.length(name), limit=8)
        self._on_message(name, self._checked(name, fid, data), now_s)

    def _checked(self, name: str, frame_id: int, data: bytes) -> SignalValues:
        """The message's values; out of range, a signal the charger acts on raises
        ``ImplausibleValueError`` (a fault), any other is left out (unknown)."""
        try:
            return self._codec.decode_frame(frame_id, data).signals
        except ImplausibleValueError:
            decoded, rejected = self._codec.decode_checked(frame_id, data)
        acted_on = _ACTED_ON.get(name, frozenset())
        bad = [reason for signal, reason in rejected.items() if signal in acted_on]
        if bad:
            raise ImplausibleValueError("; ".join(bad))
        return decoded.signals

    def _handle_tp(self, result: tp.TpResult, now_s: float) -> None:
        for message in result.send:
            self._send_raw(TP_CM_FROM_CHARGER, tp.encode_cm(message))
        for problem in result.problems:
            self._events.append(SessionEvent(EventKind.TRANSPORT, problem))
        if result.completed is not None:
            pgn, payload = result.completed
            name = TP_MESSAGES.get(pgn)
            if name is not None:  # BMV/BMT/BSP are optional and carry nothing the core uses
                full = self._codec.length(name)
                if name == "BRM" and BRM_TABLE_BYTES <= len(payload) < full:
                    payload += b"\xff" * (full - len(payload))
                payload = _unpadded(payload, full, limit=None)
                signals = self._checked(name, self._codec.frame_id(name), payload)
                self._on_message(name, signals, now_s)

    def _on_message(self, name: str, s: SignalValues, now_s: float) -> None:  # noqa: PLR0912  one branch per message
        b = self._bms
        self._last_seen[name] = now_s
        self._seen(now_s)
        if name == "BHM":
            b.bhm_max_voltage_v = s["MaxChargeVoltage"]
        elif name == "BRM":
            self._on_brm(s, now_s)
        elif name == "BCP":
            self._on_bcp(s, now_s)
        elif name == "BRO":
            b.bro_ready = s["BmsReady"] == READY
            if b.bro_ready and self.state is GbtState.PARAMETERS:
                self._enter(GbtState.CHARGER_READY, now_s, "BRO 0xAA: BMS ready, CRO 0x00")
                self._unschedule("CTS", "CML")
                # GB/T 27930 CRO: 0x00 (not ready) at once and every 250 ms while the charger
                # prepares; 0xAA only once the output matches the battery (_advance).
                self._send_now("CRO", now_s)
        elif name == "BCL":
            self._on_bcl(s, now_s)
        elif name == "BCS":
            # GB/T 27930 BCS: informational; a value out of range (0xFFFF: not available, a
            # remaining time over 600 min) is unknown, not a fault.
            b.bcs_seen = True
            b.measured_voltage_v = s.get("MeasuredVoltage")
            current = s.get("MeasuredCurrent")
            b.measured_current_a = None if current is None else _controller_sign(current)
            b.cell_voltage_max_v = s.get("MaxCellVoltage")
            b.soc_pct = s.get("StateOfCharge")
        elif name == "BSM":
            self._on_bsm(s, now_s)
        elif name == "BST":
            self._on_bst(s, now_s)
        elif name == "BSD":
            self._bsd_seen = True
            # The final figures where available; the last BCS values stand otherwise.
            if (stop_soc := s.get("StopSoc")) is not None:
                b.soc_pct = stop_soc
            if (cell_v := s.get("MaxCellVoltage")) is not None:
                b.cell_voltage_max_v = cell_v
        elif name == "BEM":
            missed = [text for field, text in _BEM_TIMEOUTS.items() if s[field] == 1]
            if missed:
                # A charger timeout: reconnect (no CEM: the charger saw no timeout itself).
                self._lost(f"GB/T BEM: BMS timed out waiting for {', '.join(missed)}", now_s)
            # "10": the BMS cannot vouch for the flag; a BEM is an error report, so a fault.
            untrusted = [text for field, text in _BEM_TIMEOUTS.items() if s[field] == 2]
            if untrusted:
                self._fault(f"GB/T BEM: untrusted timeout flag for {', '.join(untrusted)}", now_s)

    def _on_bcl(self, s: SignalValues, now_s: float) -> None:
        b = self._bms
        b.voltage_demand_v = s["VoltageDemand"]
        b.current_demand_a = _controller_sign(s["CurrentDemand"])
        limit = b.max_charge_voltage_v or b.bhm_max_voltage_v
        if limit is not None and b.voltage_demand_v > limit:
            self._fault(
                f"implausible BCL voltage demand {b.voltage_demand_v} V above the BMS's "
                f"maximum {limit} V",
                now_s,
            )
            return
        if self.state is GbtState.CHARGING and "CCS" not in self._due:
            # GB/T 27930 charging phase: the charger answers the BMS's demand; CRO 0xAA (sent
            # until now) gives way to CCS from the first BCL on, as the recorded charger did.
            self._unschedule("CRO")
            self._send_now("CCS", now_s)

    def _on_brm(self, s: SignalValues, now_s: float) -> None:
        self._bms.vin = _vin(s)
        if self.state is GbtState.RECOGNITION and self._crm_result != READY:
            self._crm_result = READY
            self._crm_ready_s = now_s
            # CRM 0xAA at once: the BMS repeats BRM until it arrives (within 5 s).
            self._send_now("CRM", now_s)

    def _on_bcp(self, s: SignalValues, now_s: float) -> None:
        b = self._bms
        b.max_cell_voltage_v = s.get("MaxCellVoltage")
        b.max_charge_current_a = max(0.0, -s["MaxChargeCurrent"])  # GB/T sign: - = charging
        b.nominal_energy_kwh = s.get("NominalEnergy")
        b.max_charge_voltage_v = s["MaxChargeVoltage"]
        b.bcp_soc_pct = s.get("StateOfCharge")
        b.bcp_voltage_v = s["PresentVoltage"]  # bytes 12-13, checked before K1/K2 close
        if self.state is GbtState.RECOGNITION and self._crm_result == READY:
            self._enter(GbtState.PARAMETERS, now_s, "BCP received")
            self._schedule(now_s, "CTS", "CML")
            self._unschedule("CRM")

    def _on_bsm(self, s: SignalValues, now_s: float) -> None:
        b = self._bms
        # Bytes 2 and 4, 1 degC/bit, -50 degC, -50..+200 degC: 0xFF (not available) is unknown.
        b.temp_max_c = s.get("MaxTemperature")
        b.temp_min_c = s.get("MinTemperature")
        bad: list[str] = []
        for field, (high, low) in _BSM_STATUS.items():
            value = s.get(field)
            if value == 1:
                bad.append(high)
            elif value == 2:  # the 2-bit value "10"
                bad.append(low)
            elif value == 3 and field in _BSM_NOT_AVAILABLE:  # "11"
                bad.append(_BSM_NOT_AVAILABLE[field])
        if bad:
            # GB/T 27930 BSM: any fault status stops the charger.
            self._fault(f"GB/T BSM: {', '.join(bad)}", now_s)
        # All normal with "forbidden" pauses the charger (for at most ``pause_limit_s``).
        b.charging_allowed = s.get("ChargingAllowed") == 1

    def _on_bst(self, s: SignalValues, now_s: float) -> None:
        self._bst_seen = True
        # GB/T 27930 BST bytes 2-4: "01" fault; "10" untrusted, which is no assurance either.
        faults = [
            text + (" (untrusted)" if s[field] == 2 else "")
            for field, text in _BST_FAULTS.items()
            if s[field] in (1, 2)
        ]
        if faults:
            self._fault(f"GB/T BST: BMS stopped for {', '.join(faults)}", now_s)
            return
        if self.state in _BEFORE_STOP:
            reasons = [
                text
                for field, text in (
                    ("StopSocReached", "target SoC reached"),
                    ("StopTotalVoltageReached", "total voltage reached"),
                    ("StopCellVoltageReached", "cell voltage reached"),
                    ("StopByCharger", "charger stopped"),
                )
                if s[field] == 1
            ]
            self._stop_requested(f"GB/T BST: BMS stops ({', '.join(reasons) or 'no reason'})")
            self._stop_reason = StopReason.BMS
            self._begin_stop(now_s, "BST received")

    # Time.

    def _on_tick(self, now_s: float) -> None:
        dt = max(0.0, now_s - self._last_tick_s) if self._last_tick_s else 0.0
        self._last_tick_s = now_s
        if self.state is GbtState.IDLE:
            if self._inputs.plugged:
                self._enter(GbtState.HANDSHAKE, now_s, "plugged in, auxiliary power on")
                self._outputs = LineOutputs(d1=True, lock=True)
                self._schedule(now_s, "CHM")
                self._send_due(now_s)
            return
        if not self._inputs.plugged:
            if self.state is GbtState.ENDED and self._unlock_from_s is None:
                check_transition(TRANSITIONS, self.state, GbtState.IDLE, self.protocol)
                self._reset()
                self._set_phase(VehiclePhase.UNPLUGGED, now_s, "connector unplugged")
                self._last_tick_s = now_s
                return
            if self.state is not GbtState.ENDED:
                self._fault("connector unplugged during the session", now_s)
            # ENDED with the lock still held: the plug input (CC1) may read "unplugged" with the
            # plug's latch button pressed; the lock waits for the output to fall below 60 V.
        volts, amps = self._measured_voltage_v(), self._measured_current_a()
        if self.state is GbtState.CHARGING and volts is not None and amps is not None and amps > 0:
            self._energy_wh += volts * amps * dt / 3600.0
        self._handle_tp(self._tp.tick(now_s), now_s)
        self._check_timeouts(now_s)
        self._advance(now_s)
        self._send_due(now_s)

    def _advance(self, now_s: float) -> None:  # noqa: PLR0912  one branch per state reads best
        st = self.state
        elapsed = now_s - self._since_s
        if st is GbtState.HANDSHAKE:
            if "BHM" in self._last_seen or elapsed > DEFAULT_TIMEOUT_S:
                # A 2011-edition BMS sends no BHM: go on after the default timeout.
                self._enter(GbtState.INSULATION_TEST, now_s, "BHM received, insulation test")
                self._unschedule("CHM")
        elif st is GbtState.INSULATION_TEST:
            # GB/T 18487.1 B.3.2: the insulation check before recognition, judged on the
            # insulation monitor's OK. (The standard then separates the IMD from the DC circuit:
            # during charging the BMS reports insulation in BSM, so the OK is not watched after.)
            verdict = self._insulation_test(
                self._since_s,
                now_s,
                self.config.insulation_test_s,
                self.config.insulation_timeout_s,
            )
            if verdict is True:
                self._enter(GbtState.RECOGNITION, now_s, "insulation test passed, CRM 0x00")
                self._crm_result = NOT_READY
                self._schedule(now_s, "CRM")
            elif isinstance(verdict, str):
                self._fault(f"GB/T: {verdict}", now_s)
        elif st is GbtState.CHARGER_READY:
            self._advance_ready(elapsed, now_s)
        elif st is GbtState.CHARGING:
            if not self._allowed:
                self._stop_reason = StopReason.MANUAL
                self._begin_stop(now_s, "the charger no longer allows energy transfer")
            else:
                self._check_pause(now_s)
        elif st is GbtState.STOPPING:
            self._advance_stopping(elapsed, now_s)
        elif st is GbtState.STATISTICS:
            if self._bsd_seen and "CSD" not in self._due and self._csd_sent == 0:
                self._schedule(now_s, "CSD")
            if self._csd_sent >= CSD_REPEATS:
                self._end(now_s, "statistics exchanged")
            elif elapsed > STATISTICS_TIMEOUT_S and not self._bsd_seen:
                self._cem["TimeoutBsd"] = 1
                self._fault("GB/T BSD not received within 10 s", now_s)
        elif st is GbtState.ERROR_REPORT and elapsed >= CEM_AFTER_FAULT_S:
            self._end(now_s, "error reported")
        elif st is GbtState.RECONNECT and elapsed >= RECONNECT_WAIT_S:
            self._restart(now_s)
        elif st is GbtState.ENDED:
            self._advance_unlock(now_s)

    def _voltage_mismatch(self) -> str | None:
        """Why K1/K2 may not close yet, or None: GB/T 18487.1 B.3.4, the measured output (the
        voltage outside K1/K2) fresh, within +-5 % of BCP's battery voltage (bytes 12-13) and
        within the charger's output range."""
        battery_v = self._bms.bcp_voltage_v
        if battery_v is None:
            return "no BCP battery voltage to check the output against"
        volts = self._measured_voltage_v()
        if volts is None:
            return (
                f"no fresh output voltage measurement to check against the BCP battery voltage "
                f"{battery_v:.1f} V"
            )
        low_v = battery_v * (1.0 - VOLTAGE_MATCH_FRACTION)
        high_v = battery_v * (1.0 + VOLTAGE_MATCH_FRACTION)
        if not low_v <= volts <= high_v:
            return (
                f"output voltage {volts:.1f} V not within 5 % of the BCP battery voltage "
                f"{battery_v:.1f} V ({low_v:.1f} V to {high_v:.1f} V)"
            )
        cfg = self.config
        if not cfg.min_output_voltage_v <= volts <= cfg.max_output_voltage_v:
            return (
                f"output voltage {volts:.1f} V outside the charger's range "
                f"{cfg.min_output_voltage_v:g} V to {cfg.max_output_voltage_v:g} V"
            )
        return None

    def _advance_ready(self, elapsed: float, now_s: float) -> None:
        """CRO 0x00 until energy transfer is allowed, the BMS still says BRO 0xAA and the output
        matches the battery; then K1/K2 close with CRO 0xAA. GB/T 27930 BRO/CRO: 60 s."""
        mismatch = self._voltage_mismatch()
        if self._allowed and self._bms.bro_ready and mismatch is None:
            volts = self._measured_voltage_v() or 0.0
            self._outputs = LineOutputs(d1=True, contactors=True, lock=True)
            self._enter(
                GbtState.CHARGING,
                now_s,
                f"CRO 0xAA: output {volts:.1f} V matches the BCP battery voltage "
                f"{self._bms.bcp_voltage_v or 0.0:.1f} V, K1/K2 closed",
            )
            self._charging_started_s = now_s
            self._last_seen.pop("BCL", None)
            self._last_seen.pop("BCS", None)
            self._last_seen.pop("BSM", None)
            # CRO 0xAA (the state is CHARGING now) is repeated until the first BCL, which starts
            # CCS (_on_bcl).
            self._send_now("CRO", now_s)
        elif elapsed > BRO_READY_S:
            if not self._allowed:
                why = "the charger did not allow energy transfer"
            elif not self._bms.bro_ready:
                why = "the BMS withdrew BRO 0xAA"
            else:
                why = mismatch or ""
            self._fault(f"GB/T CRO: not ready within 60 s of BRO 0xAA: {why}", now_s)

    def _advance_stopping(self, elapsed: float, now_s: float) -> None:
        current_low = self._stop_current_low()
        if not current_low and not self._stop_current_faulted:
            # GB/T 27930: after CST, output <= 5 A within 100 ms. Only a measurement reported
            # after the first CST is evidence; the verdict waits for one (up to one report
            # interval past the 100 ms) instead of taking a reading from before the stop.
            amps = self._current_since_stop_a()
            at_s = self._output_at_s or 0.0
            late = amps is not None and at_s > self._stop_at_s + STOP_CURRENT_S
            if late or elapsed > STOP_CURRENT_S + STOP_REPORT_ALLOWANCE_S:
                self._stop_current_faulted = True
                self._charger_fault = True
                if amps is None:
                    self._fault(
                        "GB/T CST: output current not confirmed at or below 5 A 100 ms after "
                        "stop (no current measured since the stop)",
                        now_s,
                    )
                elif not late:
                    # The last reading predates the 100 ms: no evidence of a violation, and
                    # none that the current fell in time.
                    self._fault(
                        "GB/T CST: output current not confirmed at or below 5 A 100 ms after "
                        f"stop (last reading {abs(amps):.1f} A, "
                        f"{(at_s - self._stop_at_s) * 1000.0:.0f} ms after stop)",
                        now_s,
                    )
                else:
                    self._fault(
                        f"GB/T CST: output {abs(amps):.1f} A, above 5 A, "
                        f"{(at_s - self._stop_at_s) * 1000.0:.0f} ms after stop",
                        now_s,
                    )
        if (current_low and elapsed >= CST_MIN_S) or elapsed > STOP_CURRENT_GIVE_UP_S:
            self._outputs = LineOutputs(d1=True, lock=True)
            if self._faults:
                self._enter(GbtState.ERROR_REPORT, now_s, "contactors open after a fault")
                self._unschedule("CST")
            elif self._reconnect_why:
                self._start_reconnect(now_s)
            elif self._bst_seen:
                self._enter(GbtState.STATISTICS, now_s, "BST and CST exchanged")
                self._unschedule("CST")
            elif elapsed > DEFAULT_TIMEOUT_S:
                self._cem["TimeoutBst"] = 1
                self._fault("GB/T BST not received within 5 s of CST", now_s)

    def _current_since_stop_a(self) -> float | None:
        """The stage's current (+ charges), fresh and reported after the stop began; else None."""
        if self._output_reports <= self._stop_report or self._output_at_s is None:
            return None
        if self._output_at_s < self._stop_at_s:
            return None
        return self._measured_current_a()

    def _stop_current_low(self) -> bool:
        """Safe to open K1/K2: they are open already, or a fresh measurement reported since the
        stop shows at most 5 A. Unknown, or known only from before the stop, is never low."""
        if not self._outputs.contactors:
            return True
        return self._current_since_stop_a() is not None and self._output_current_low()

    def _advance_unlock(self, now_s: float) -> None:
        """ENDED: the lock is released once a fresh measurement reported since the end shows
        the output below 60 V (GB/T 18487.1); never on a voltage present or unknown. Not within
        ``UNLOCK_TIMEOUT_S``: a fault, and the lock stays (until such a measurement comes)."""
        since_s = self._unlock_from_s
        if since_s is None:
            return
        volts = self._measured_voltage_v()
        reported = self._output_reports > self._unlock_from_report
        if reported and volts is not None and volts < UNLOCK_BELOW_V:
            self._unlock_from_s = None
            self._outputs = LineOutputs()
            self._events.append(
                SessionEvent(
                    EventKind.PHASE_CHANGED,
                    f"output {volts:.1f} V, below {UNLOCK_BELOW_V:g} V: connector unlocked",
                )
            )
            return
        if not self._unlock_faulted and now_s - since_s > UNLOCK_TIMEOUT_S:
            self._unlock_faulted = True
            what = "not measured" if volts is None or not reported else f"still {volts:.1f} V"
            self._fault(
                f"GB/T 18487.1: output {what} {UNLOCK_TIMEOUT_S:g} s after the session ended; "
                f"connector kept locked until it is below {UNLOCK_BELOW_V:g} V",
                now_s,
            )

    def _check_pause(self, now_s: float) -> None:
        """GB/T 27930 BSM: all normal with "charging forbidden" pauses, for ``pause_limit_s``."""
        if "BSM" not in self._last_seen or self._bms.charging_allowed:
            self._paused_since_s = None
            return
        if self._paused_since_s is None:
            self._paused_since_s = now_s
        elif now_s - self._paused_since_s > self.config.pause_limit_s:
            self._stop_reason = StopReason.CONDITIONS
            self._begin_stop(
                now_s, f"BSM: charging forbidden for more than {self.config.pause_limit_s:g} s"
            )

    def _check_timeouts(self, now_s: float) -> None:
        st = self.state
        elapsed = now_s - self._since_s
        if (
            st is GbtState.RECOGNITION
            and "BRM" not in self._last_seen
            and elapsed > DEFAULT_TIMEOUT_S
        ):
            self._timeout("TimeoutBrm", "BRM", now_s)
        elif (
            st is GbtState.RECOGNITION
            and self._crm_result == READY
            and now_s - self._crm_ready_s > DEFAULT_TIMEOUT_S
        ):
            self._timeout("TimeoutBcp", "BCP", now_s)
        elif st is GbtState.PARAMETERS:
            bro = self._last_seen.get("BRO")
            if elapsed > BRO_READY_S or (bro is None and elapsed > DEFAULT_TIMEOUT_S):
                self._timeout("TimeoutBro", "BRO 0xAA", now_s)
        elif st is GbtState.CHARGING:
            started = self._charging_started_s or now_s
            for name, field, limit in (
                ("BCL", "TimeoutBcl", BCL_TIMEOUT_S),  # GB/T 27930 BCL timeout 1 s
                ("BCS", "TimeoutBcs", BCS_TIMEOUT_S),  # GB/T 27930 BCS timeout 5 s
                ("BSM", None, BSM_TIMEOUT_S),  # GB/T 27930 default timeout 5 s
            ):
                last = self._last_seen.get(name, started)
                if now_s - last > limit:
                    if field is not None:
                        self._cem[field] = 1
                    self._lost(f"GB/T {name} not received for more than {limit:g} s", now_s)
                    break

    def _timeout(self, field: str, what: str, now_s: float) -> None:
        self._cem[field] = 1
        self._lost(f"GB/T {what} not received in time", now_s)

    def _lost(self, what: str, now_s: float) -> None:
        """A communication timeout: stop any transfer at once, then reconnect, or abort."""
        if self._reconnect_why:
            return  # one restart per timeout; a BEM repeated meanwhile is the same timeout
        if self.state not in _BEFORE_STOP:
            self._fault(what, now_s)  # the session is ending anyway: report, no reconnect
            return
        if self._reconnects >= MAX_RECONNECTS:
            # GB/T 27930: reconnect 3 times, then abort
            self._fault(f"{what}; no communication after {MAX_RECONNECTS} reconnects, abort", now_s)
            return
        self._reconnects += 1
        self._reconnect_why = f"{what}; reconnect {self._reconnects} of {MAX_RECONNECTS}"
        self._events.append(SessionEvent(EventKind.PHASE_CHANGED, self._reconnect_why))
        if self.state is GbtState.CHARGING:
            # GB/T 27930 BCL/CCS: stop at once. CST, 0 A, contactors open at <= 5 A; then RECONNECT.
            self._stop_reason = StopReason.FAULT
            self._begin_stop(now_s, f"{what}: energy transfer stopped before reconnecting")
            if self._cem:
                self._schedule(now_s, "CEM")  # the BMS learns of the timeout at once
        else:
            self._start_reconnect(now_s)

    def _start_reconnect(self, now_s: float) -> None:
        """No energy transfer, contactors open; CEM (if the charger saw the timeout) for 1 s."""
        self._due.clear()
        self._outputs = LineOutputs(d1=True, lock=True)
        self._enter(GbtState.RECONNECT, now_s, self._reconnect_why)
        if self._cem:
            self._schedule(now_s, "CEM")

    def _restart(self, now_s: float) -> None:
        """GB/T 27930: communication again from the handshake (CHM, then CRM 0x00)."""
        self._due.clear()
        self._reset_communication()
        self._outputs = LineOutputs(d1=True, lock=True)
        self._enter(GbtState.HANDSHAKE, now_s, f"reconnect {self._reconnects}: CHM again")
        self._schedule(now_s, "CHM")

    def _enter(self, state: GbtState, now_s: float, why: str) -> None:
        check_transition(TRANSITIONS, self.state, state, self.protocol)
        self.state = state
        self._since_s = now_s
        phase = _PHASE[state]
        if self._faults and phase in (VehiclePhase.STOPPING, VehiclePhase.ENDED):
            phase = VehiclePhase.FAULT
        self._set_phase(phase, now_s, why)

    def _end(self, now_s: float, why: str) -> None:
        if not self._faults:
            self._reconnects = 0  # a completed session: a new one may reconnect 3 times again
        self._due.clear()
        # Auxiliary power off; the lock is held until the output is below 60 V (_advance_unlock).
        self._outputs = LineOutputs(lock=True)
        self._unlock_from_s = now_s
        self._unlock_from_report = self._output_reports
        self._enter(GbtState.ENDED, now_s, f"{why}; auxiliary power off")
        self._advance_unlock(now_s)

    def _begin_stop(self, now_s: float, why: str) -> None:
        # GB/T 27930: the stop's reference event is the first CST (sent now): the <= 5 A within
        # 100 ms rule counts from here, on measurements reported after it.
        self._stop_at_s = now_s
        self._stop_report = self._output_reports
        if self.state is GbtState.CHARGING:
            self._unschedule("CCS", "CRO")
            self._enter(GbtState.STOPPING, now_s, why)
            self._schedule(now_s, "CST")
        elif self.state in (
            GbtState.HANDSHAKE,
            GbtState.INSULATION_TEST,
            GbtState.RECOGNITION,
            GbtState.PARAMETERS,
            GbtState.CHARGER_READY,
            GbtState.RECONNECT,
        ):
            self._due.clear()
            self._outputs = LineOutputs(d1=True, lock=True)
            if self._faults:
                self._enter(GbtState.ERROR_REPORT, now_s, why)
            else:
                self._enter(GbtState.STOPPING, now_s, why)
                self._schedule(now_s, "CST")

    def _on_fault(self, now_s: float) -> None:
        if self._stop_reason is StopReason.NONE:
            self._stop_reason = StopReason.FAULT
        if self.state in (GbtState.IDLE, GbtState.ENDED, GbtState.ERROR_REPORT):
            self._set_phase(VehiclePhase.FAULT, now_s, self._faults[-1])
            return
        if self.state is GbtState.STATISTICS:
            self._due.clear()
            self._enter(GbtState.ERROR_REPORT, now_s, self._faults[-1])
            return
        if self.state is not GbtState.STOPPING:
            self._begin_stop(now_s, self._faults[-1])
        self._set_phase(VehiclePhase.FAULT, now_s, self._faults[-1])
        if self._cem:
            self._schedule(now_s, "CEM")

    def _on_end(self, now_s: float) -> None:
        if self.state in (GbtState.IDLE, GbtState.ENDED, GbtState.STATISTICS):
            return
        if self.state is GbtState.ERROR_REPORT:
            return
        self._reconnect_why = ""  # the charger ends the session: no reconnect
        if self.state is GbtState.STOPPING:
            return
        self._stop_reason = StopReason.MANUAL
        self._begin_stop(now_s, "charger ends the session")

    # Charger frames.

    def _schedule(self, now_s: float, *names: str) -> None:
        for name in names:
            self._due[name] = now_s

    def _unschedule(self, *names: str) -> None:
        for name in names:
            self._due.pop(name, None)

    def _send_due(self, now_s: float) -> None:
        for name, due in sorted(self._due.items(), key=lambda item: item[1]):
            if now_s >= due:
                self._send_message(name)
                period = PERIODS_S[name]
                self._due[name] = max(due + period, now_s + period / 2)

    def _send_now(self, name: str, now_s: float) -> None:
        """Send ``name`` at once; its next period counts from now."""
        self._send_message(name)
        self._due[name] = now_s + PERIODS_S[name]

    def _send_message(self, name: str) -> None:
        cfg = self.config
        if name == "CHM":
            self._send("CHM", {"ProtocolVersionMinor": 1, "ProtocolVersionMajor": 1})
        elif name == "CRM":
            self._send(
                "CRM",
                {
                    "RecognitionResult": self._crm_result,
                    "ChargerNumber": cfg.charger_number,
                    "RegionCode": self._region,
                },
            )
        elif name == "CTS":
            # The session reads no wall clock: all 0xFF (not available), as the recorded charger.
            self._send_raw(self._codec.frame_id("CTS"), b"\xff" * 7)
        elif name == "CML":
            self._send(
                "CML",
                {
                    "MaxOutputVoltage": cfg.max_output_voltage_v,
                    "MinOutputVoltage": cfg.min_output_voltage_v,
                    "MaxOutputCurrent": -cfg.max_output_current_a,  # GB/T sign: - = charging
                    "MinOutputCurrent": -cfg.min_output_current_a,
                },
            )
        elif name == "CRO":
            self._send(
                "CRO", {"ChargerReady": READY if self.state is GbtState.CHARGING else NOT_READY}
            )
        elif name == "CCS":
            self._send(
                "CCS",
                {
                    "OutputVoltage": _clip(self._reported_voltage_v(), 0.0, 1000.0),
                    "OutputCurrent": _clip(-self._reported_current_a(), -400.0, 400.0),
                    "ChargingTime": min(600, int(self._charging_minutes())),
                    "ChargingAllowed": int(self._transfer_allowed()),
                },
            )
        elif name == "CST":
            self._send(
                "CST",
                {
                    "StopConditionsReached": int(self._stop_reason is StopReason.CONDITIONS),
                    "StopManual": int(self._stop_reason is StopReason.MANUAL),
                    "StopFault": int(self._stop_reason is StopReason.FAULT),
                    "StopByBms": int(self._stop_reason is StopReason.BMS),
                    "FaultChargerOverTemp": 0,
                    "FaultConnector": 0,
                    "FaultChargerInternalOverTemp": 0,
                    "FaultEnergyTransfer": 0,
                    "FaultEmergencyStop": 0,
                    "FaultOther": int(self._charger_fault),
                    "ErrorCurrentMismatch": 0,
                    "ErrorVoltage": 0,
                },
            )
        elif name == "CSD":
            self._csd_sent += 1
            self._send(
                "CSD",
                {
                    "ChargingTime": min(600, int(self._charging_minutes())),
                    "EnergyOutput": min(1000.0, round(self._energy_wh / 1000.0, 1)),
                    "ChargerNumber": cfg.charger_number,
                },
            )
        elif name == "CEM":
            self._send("CEM", {field: self._cem.get(field, 0) for field in _CEM_FIELDS})

    def _charging_minutes(self) -> float:
        if self._charging_started_s is None:
            return 0.0
        return max(0.0, self._last_tick_s - self._charging_started_s) / 60.0

    def _transfer_allowed(self) -> bool:
        return (
            self.state is GbtState.CHARGING
            and self._allowed
            and self._bms.charging_allowed
            and not self._faults
        )

    # Snapshot.

    def _permitted(self) -> tuple[bool, bool]:
        # Computed on every step (the link wakes the core when they change), without the
        # snapshot.
        b = self._bms
        demand = b.current_demand_a
        if demand is None or not (
            self.state is GbtState.CHARGING and b.charging_allowed and not self._faults
        ):
            return False, False
        return demand > 0, self.config.discharge_offered and demand < 0

    def _state(self) -> VehicleState:
        b = self._bms
        demand = b.current_demand_a
        # 0 A (not None, which would mean "no limit reported") until the BMS demands current,
        # and for discharge unless it is offered.
        charge_limit = 0.0
        discharge_limit = 0.0
        if demand is not None:
            charge_limit = max(0.0, demand)
            if b.max_charge_current_a is not None:
                charge_limit = min(charge_limit, b.max_charge_current_a)
            if self.config.discharge_offered:
                discharge_limit = max(0.0, -demand)
        charge_permitted, discharge_permitted = self._permitted()
        return VehicleState(
            observed_at_s=self._observed_s,
            phase=self.phase,
            protocol=self.protocol,
            soc_pct=b.soc_pct if b.bcs_seen else b.bcp_soc_pct,
            pack_voltage_v=b.measured_voltage_v,
            pack_current_a=b.measured_current_a,
            charge_current_limit_a=charge_limit,
            charge_voltage_limit_v=b.max_charge_voltage_v or b.bhm_max_voltage_v,
            discharge_current_limit_a=discharge_limit,
            battery_temp_max_c=b.temp_max_c,
            battery_temp_min_c=b.temp_min_c,
            cell_voltage_max_v=b.cell_voltage_max_v,
            capacity_kwh=b.nominal_energy_kwh,
            charge_permitted=charge_permitted,
            discharge_permitted=discharge_permitted,
            stop_requested=self._stop_reason is StopReason.BMS,
            faults=self.faults,
            identity=b.vin,
        )


_BEFORE_STOP = frozenset(
    {
        GbtState.HANDSHAKE,
        GbtState.INSULATION_TEST,
        GbtState.RECOGNITION,
        GbtState.PARAMETERS,
        GbtState.CHARGER_READY,
        GbtState.CHARGING,
    }
)


def _controller_sign(gbt_current_a: float) -> float:
    """GB/T 27930 4.5 current (+ discharges) in the controller's sign (+ charges); never -0.0."""
    return 0.0 - gbt_current_a


def _unpadded(data: bytes, length: int, *, limit: int | None) -> bytes:
    """``data`` cut to the message's ``length`` when every byte past it is padding: all 0xFF
    (GB/T 27930: unused bits are 1) or all 0x00 (BMSs pad so too), up to ``limit`` bytes in all
    (8 for one CAN frame, None for a transport message); otherwise unchanged (the codec decides)."""
    excess = data[length:]
    if not excess or (limit is not None and len(data) > limit):
        return data
    if excess[0] in (0x00, 0xFF) and excess.count(excess[0]) == len(excess):
        return data[:length]
    return data


def _vin(s: SignalValues) -> str | None:
    """BRM bytes 25-41: the VIN, ASCII; None when it is not printable."""
    parts = (s.get("VinPart1"), s.get("VinPart2"), s.get("VinPart3"))
    if parts[0] is None or parts[1] is None or parts[2] is None:
        return None
    raw = (
        int(parts[0]).to_bytes(8, "little")
        + int(parts[1]).to_bytes(8, "little")
        + int(parts[2]).to_bytes(1, "little")
    )
    text = raw.rstrip(b"\xff\x00").decode("ascii", errors="replace")
    return text if text and text.isprintable() and text.isalnum() else None


def _clip(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, round(value, 1)))
