"""Issue 17: the GB/T 27930 charger's checks, each on a simulated clock.

Item 2: CRO 0x00 while preparing, K1/K2 and CRO 0xAA only on a matching output voltage (GB/T
18487.1 Annex B: within 5 % of BCP's battery voltage), CCS only from the first BCL. Item 3: the
connector lock held until the output is below 60 V. Item 5: the <= 5 A check after CST on
measurements reported after it. Item 7: "not available" is unknown, padding is padding, BSM
status fields named as the standard names them.
"""

from __future__ import annotations

import math

import pytest

from controller.core.snapshots import VehiclePhase
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, LineOutputs
from controller.vehicle.gbt27930 import GbtSession, GbtState
from hil.vehicle import FaultInjection

from .fixtures import recorded as rec
from .test_gbt_session import (
    CCS_ID,
    CHM_ID,
    CODEC,
    CST_ID,
    FAST,
    ConnectorBench,
    bench,
    bms_frame,
    charging,
    recognising,
    send_transfer,
)

CRO_ID = 0x100AF456
CSD_ID = 0x181DF456
BCL_ID = 0x181056F4
BSM_ID = 0x181356F4


def cro_frames(b: ConnectorBench) -> list[tuple[float, int]]:
    """(time, CRO byte 1) of every CRO the charger sent."""
    return [(t, d[0]) for t, d in b.trace.frames(CRO_ID)]


def contactors_closed_at(b: ConnectorBench) -> float | None:
    """When the charger first closed K1/K2."""
    return next((t for t, s in b.trace.steps if s.outputs.contactors), None)


def ready(b: ConnectorBench) -> float:
    """Run until the BMS said BRO 0xAA (the session sends CRO from then on); return when."""
    b.run(5.0, until=lambda _s: b.gbt.state is not GbtState.PARAMETERS and bool(cro_frames(b)))
    assert cro_frames(b), "no CRO: the BMS never said BRO 0xAA"
    return cro_frames(b)[0][0]


# Item 2: CHM, CRO, the voltage match, CCS after BCL.


def test_chm_repeats_every_250_ms_until_a_late_bhm() -> None:
    """CHM goes out every 250 ms while no BHM comes, and stops once one has.

    (This one held before issue 17 too: the charger already repeated CHM until BHM.)"""
    session = GbtSession(FAST)
    chm: list[float] = []
    for i in range(200):
        now = round(i * 0.01, 2)
        if now == 0.8:
            session.receive(rec.GBT_BHM, now)
        step = session.tick(now, LineInputs(plugged=True, insulation_ok=True))
        chm += [now for f in step.frames if f.arbitration_id == CHM_ID]
    assert chm == [0.0, 0.25, 0.5, 0.75]


def test_cro_00_until_the_output_matches_then_aa_with_k1_k2() -> None:
    """After BRO 0xAA: CRO 0x00 at once and every 250 ms, K1/K2 open, while the output reads 0 V;
    once it reads the pack's voltage, K1/K2 close with CRO 0xAA."""
    b = bench()
    b.stuck_voltage_v = 0.0  # the stage has not brought its output up yet
    bro_at = ready(b)
    b.run(1.0)
    assert b.gbt.state is GbtState.CHARGER_READY
    assert contactors_closed_at(b) is None
    early = cro_frames(b)
    assert [v for _, v in early] == [0x00] * len(early)
    assert [round(t - bro_at, 2) for t, _ in early] == [0.0, 0.25, 0.5, 0.75, 1.0]
    b.stuck_voltage_v = None  # now the pack's voltage, within 5 % of BCP's
    matched_at = b.now
    b.run(0.5, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    closed_at = contactors_closed_at(b)
    assert closed_at is not None
    assert closed_at - matched_at <= 0.025  # the next report, then the next tick
    first_aa = next(t for t, v in cro_frames(b) if v == 0xAA)
    assert first_aa == closed_at
    assert all(v == 0x00 for t, v in cro_frames(b) if t < first_aa)


@pytest.mark.parametrize(
    ("stuck_voltage_v", "reporting", "reason"),
    [
        (
            300.0,
            True,
            "output voltage 300.0 V not within 5 % of the BCP battery voltage 350.0 V "
            "(332.5 V to 367.5 V)",
        ),
        (
            368.0,
            True,
            "output voltage 368.0 V not within 5 % of the BCP battery voltage 350.0 V "
            "(332.5 V to 367.5 V)",
        ),
        (
            None,
            False,
            "no fresh output voltage measurement to check against the BCP battery voltage 350.0 V",
        ),
    ],
    ids=["300 V", "5 % and 0.5 V over", "not measured"],
)
def test_no_match_keeps_k1_k2_open_and_stops_after_60_s(
    stuck_voltage_v: float | None, reporting: bool, reason: str
) -> None:
    """An output that never matches (or is never measured): CRO 0x00 only, K1/K2 never close,
    and 60 s after BRO 0xAA the session stops with a fault naming the volts."""
    b = bench()
    b.stuck_voltage_v = stuck_voltage_v
    b.report_output = reporting
    ready(b)
    b.run(62.0, until=lambda s: s.phase is VehiclePhase.FAULT)
    assert b.trace.last.faults == (f"GB/T CRO: not ready within 60 s of BRO 0xAA: {reason}",)
    assert contactors_closed_at(b) is None
    assert {v for _, v in cro_frames(b)} == {0x00}
    assert not b.trace.frames(CCS_ID)


def test_output_at_the_5_percent_edge_matches() -> None:
    """367.5 V against BCP's 350.0 V is within 5 %: K1/K2 close."""
    b = bench()
    b.stuck_voltage_v = 367.5
    ready(b)
    b.run(0.3, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER


def test_ccs_starts_with_the_first_bcl() -> None:
    """After CRO 0xAA the charger repeats CRO 0xAA (every 250 ms) and sends no CCS until the
    first BCL; CCS starts as that BCL arrives."""
    faults = FaultInjection(silence_demand=True)
    b = bench(faults=faults)
    b.run(8.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    started = b.now
    b.run(0.6)
    assert not b.trace.frames(CCS_ID)
    aa = [round(t - started, 2) for t, v in cro_frames(b) if v == 0xAA]
    assert aa == [0.0, 0.25, 0.5]
    faults.silence_demand = False
    b.run(0.3)
    first_bcl = next(t for t, s in b.trace.steps if t > started and s.state.charge_permitted)
    first_ccs = b.trace.frames(CCS_ID)[0][0]
    assert first_ccs == first_bcl
    assert all(t < first_ccs for t, v in cro_frames(b) if v == 0xAA)
    assert b.trace.last.faults == ()


# Item 3: the lock.


@pytest.mark.parametrize(
    ("after_v", "released", "fault"),
    [
        (400.0, False, "still 400.0 V"),
        (60.0, False, "still 60.0 V"),
        (math.nan, False, "not measured"),
        (59.9, True, None),
    ],
    ids=["400 V", "60 V", "unknown", "59.9 V"],
)
def test_lock_held_until_the_output_is_below_60_v(
    after_v: float, released: bool, fault: str | None
) -> None:
    """At the end the auxiliary power goes off but the lock holds until the stage reports the
    output below 60 V; 10 s without that is a fault, and the lock stays held."""
    b = bench()
    charging(b)
    b.session.end(b.now)
    b.run(4.0, until=lambda _s: b.gbt.state is GbtState.STATISTICS)
    b.stuck_voltage_v = after_v
    b.run(4.0, until=lambda s: s.phase in (VehiclePhase.ENDED, VehiclePhase.FAULT))
    ended_at = b.now
    assert b.lines.outputs == LineOutputs(lock=True)
    b.run(10.5)
    if released:
        assert b.lines.outputs == LineOutputs()
        assert b.trace.last.faults == ()
        unlocked = [e.reason for _, e in b.trace.events if "unlocked" in e.reason]
        assert unlocked == ["output 59.9 V, below 60 V: connector unlocked"]
        return
    assert b.lines.outputs == LineOutputs(lock=True)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert b.trace.last.faults == (
        f"GB/T 18487.1: output {fault} 10 s after the session ended; connector kept locked "
        "until it is below 60 V",
    )
    faulted_at = next(t for t, e in b.trace.events if e.kind is EventKind.FAULT)
    assert 10.0 < faulted_at - ended_at <= 10.1
    b.stuck_voltage_v = 12.0  # the output bleeds at last: now the lock may open
    b.run(0.1)
    assert b.lines.outputs == LineOutputs()


def test_lock_waits_for_a_report_after_the_end() -> None:
    """A reading below 60 V from before the end is no evidence: the lock waits for the next."""
    session = recognising()
    step = session.receive(bms_frame("BST", FaultInsulation=1), 1.1)  # a fault: error report
    assert step.state.phase is VehiclePhase.FAULT
    for i in range(1, 31):
        now = round(1.1 + i * 0.05, 2)
        if now == 2.05:  # ERROR_REPORT ends at 2.1: a fresh 0 V, but reported before the end
            session.set_output(0.0, 0.0, now)
        step = session.tick(now, LineInputs(plugged=True, insulation_ok=True))
    assert session.state is GbtState.ENDED
    assert step.outputs == LineOutputs(lock=True)
    session.set_output(3.0, 0.0, 2.7)
    assert session.tick(2.7, LineInputs(plugged=True, insulation_ok=True)).outputs == LineOutputs()


def test_unplugged_reading_does_not_release_the_lock_with_voltage() -> None:
    """The plug input reading "unplugged" (the latch button pressed) while the output is still at
    400 V: the lock holds; it opens and the session resets once the output reads 0 V."""
    b = bench()
    charging(b)
    b.session.end(b.now)
    b.stuck_voltage_v = 400.0
    b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    b.lines.plugged = False
    b.run(1.0)
    assert b.lines.outputs.lock
    b.stuck_voltage_v = 0.0
    b.run(0.1)
    assert b.lines.outputs == LineOutputs()
    assert b.trace.last.phase is VehiclePhase.UNPLUGGED


# Item 5: <= 5 A after CST, on measurements reported after it.


def stop_with_reports_every(b: ConnectorBench, report_every_s: float) -> float:
    """Charge, then stop right after a stage report (at 100 A) with reports every
    ``report_every_s`` from then on; return the stop time."""
    charging(b)
    b.report_every_s = report_every_s
    b.report_phase_s = b.now  # a report at b.now (made in the last step), the next a period on
    b.session.end(b.now)
    return b.now


def test_no_false_cst_fault_when_the_first_report_is_late() -> None:
    """The stage at 0 A at once, but its first report after the stop comes 150 ms later: the
    100 A reading from before the stop is no evidence against it; no fault."""
    b = bench()
    stop = stop_with_reports_every(b, 0.15)
    b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()
    opened = next(t for t, s in b.trace.steps if t > stop and not s.outputs.contactors)
    assert 0.15 <= opened - stop <= 0.17


def test_a_reading_from_before_the_stop_does_not_open_k1_k2() -> None:
    """0 A reported just before the stop and nothing since: not "at or below 5 A" after it."""
    b = bench()
    b.direction = 0  # the stage delivers 0 A throughout
    charging(b)
    b.session.end(b.now)
    stop = b.now
    b.report_output = False
    b.run(0.5)
    assert b.trace.last.faults == (
        "GB/T CST: output current not confirmed at or below 5 A 100 ms after stop "
        "(no current measured since the stop)",
    )
    assert b.lines.outputs.contactors
    b.run(1.7)
    opened = next(t for t, s in b.trace.steps if t > stop and not s.outputs.contactors)
    assert 2.0 <= opened - stop <= 2.1


def test_a_high_reading_from_before_the_100_ms_is_not_called_a_violation() -> None:
    """The stage at 50 A in a report 20 ms after the stop, then silent: at the verdict there is
    no evidence that the current fell in time, nor that it did not; the fault says the current
    was not confirmed, with the last reading, never "above 5 A" at 20 ms."""
    b = bench()
    charging(b)
    b.report_output = False
    b.session.end(b.now)
    stop = b.now
    b.run(0.02)
    reported = b.now
    b.session.set_output(390.0, 50.0, reported)  # + charges the vehicle
    b.run(0.3)
    faults = b.trace.last.faults
    assert faults == (
        "GB/T CST: output current not confirmed at or below 5 A 100 ms after stop (last "
        f"reading 50.0 A, {(reported - stop) * 1000:.0f} ms after stop)",
    )
    assert not any("above 5 A" in f for f in faults)
    at = next(t for t, e in b.trace.events if e.kind is EventKind.FAULT)
    assert 0.2 <= at - stop <= 0.22


def test_current_still_high_after_100_ms_is_a_fault() -> None:
    """A stage still at 50 A when it reports 150 ms after the stop: a fault with the figures."""
    b = bench()
    stop = stop_with_reports_every(b, 0.15)
    b.stuck_current_a = 50.0
    b.run(0.3)
    faults = b.trace.last.faults
    assert faults == ("GB/T CST: output 50.0 A, above 5 A, 150 ms after stop",)
    at = next(t for t, e in b.trace.events if e.kind is EventKind.FAULT)
    assert 0.15 <= at - stop <= 0.161  # the tick after that report
    cst = CODEC.decode("CST", b.trace.frames(CST_ID)[-1][1]).signals
    assert cst["FaultOther"] == 1


# The recorded session, replayed against the checks.


def test_recorded_session_replays_without_a_fault() -> None:
    """The recorded BMS's frames, a stage at the recorded CCS voltage (382.4 V, 1.1 % over BCP's
    378.2 V): CRO 0x00 then 0xAA with K1/K2, CCS from the first BCL, a stop with the stage at
    0 A, BST, BSD, CSD and the lock released at 0 V; no fault."""
    session = recognising()
    session.allow_energy_transfer(True)
    t = 1.0
    for frame in (*rec.GBT_BRM_TRANSFER, *rec.GBT_BCP_TRANSFER):
        if frame.arbitration_id != 0x1CECF456:  # the recorded charger's own frames
            t += 0.01
            session.receive(frame, t)
    session.tick(t + 0.01, LineInputs(plugged=True, insulation_ok=True))  # CML
    session.set_output(382.4, 0.0, 1.5)
    step = session.receive(rec.GBT_BRO_AA, 1.5)
    assert [f.data for f in step.frames if f.arbitration_id == CRO_ID] == [b"\x00"]
    step = session.tick(1.51, LineInputs(plugged=True, insulation_ok=True))
    assert [f.data for f in step.frames if f.arbitration_id == CRO_ID] == [rec.GBT_CRO_AA.data]
    assert step.outputs.contactors
    assert not [f for f in step.frames if f.arbitration_id == CCS_ID]
    step = session.receive(rec.GBT_BCL, 1.53)
    assert [f.arbitration_id for f in step.frames] == [CCS_ID]
    session.receive(rec.GBT_BSM, 1.54)
    for frame in rec.GBT_BCS_TRANSFER:
        if frame.arbitration_id != 0x1CECF456:
            session.receive(frame, 1.55)
    t = 1.55
    for _ in range(20):
        t = round(t + 0.05, 2)
        session.set_output(382.4, 20.0, t)
        session.receive(rec.GBT_BCL, t)
        step = session.tick(t, LineInputs(plugged=True, insulation_ok=True))
    assert step.state.charge_permitted
    session.end(t)
    for i in range(1, 300):
        now = round(t + i * 0.01, 2)
        if i == 5:
            session.receive(rec.GBT_BST, now)
        if i == 30:
            session.receive(rec.GBT_BSD, now)
        session.set_output(0.0 if i > 20 else 382.4, 0.0, now)
        step = session.tick(now, LineInputs(plugged=True, insulation_ok=True))
    assert step.state.faults == ()
    assert session.state is GbtState.ENDED
    assert step.outputs == LineOutputs()


# Item 7: unknown is not a fault; padding; BSM status names.


def bcs_payload(**raw: int) -> bytes:
    """The recorded BCS with bytes replaced: ``RemainingTime`` (bytes 8-9), ``soc`` (byte 7)."""
    packets = [f.data[1:] for f in rec.GBT_BCS_TRANSFER if f.arbitration_id == 0x1CEB56F4]
    payload = bytearray(b"".join(packets)[:9])
    if "remaining_min" in raw:
        payload[7:9] = raw["remaining_min"].to_bytes(2, "little")
    if "soc" in raw:
        payload[6] = raw["soc"]
    return bytes(payload)


@pytest.mark.parametrize("remaining_min", [600, 601, 0xFFFF], ids=["600", "601", "0xFFFF"])
def test_bcs_remaining_time_out_of_range_is_unknown(remaining_min: int) -> None:
    """BCS remaining time 601 min or 0xFFFF (not available) is no fault; the rest still reads."""
    session = recognising()
    send_transfer(session, 0x1100, bcs_payload(remaining_min=remaining_min), 1.1)
    state = session.tick(1.3, LineInputs(plugged=True, insulation_ok=True)).state
    assert state.faults == ()
    assert (state.pack_voltage_v, state.soc_pct) == (378.1, 77)


def test_bcs_soc_not_available_is_unknown_not_bcps() -> None:
    """BCS SoC 0xFF: the SoC reads None (unknown), not BCP's figure from before charging."""
    session = recognising()
    t = 1.0
    for frame in rec.GBT_BCP_TRANSFER:  # SoC 77.6 % in BCP
        if frame.arbitration_id != 0x1CECF456:
            t += 0.01
            session.receive(frame, t)
    send_transfer(session, 0x1100, bcs_payload(soc=0xFF), 1.2)
    state = session.tick(1.4, LineInputs(plugged=True, insulation_ok=True)).state
    assert state.faults == ()
    assert state.soc_pct is None
    assert state.pack_voltage_v == 378.1


@pytest.mark.parametrize("padding", [b"\x00\x00\x00", b"\xff\xff\xff"], ids=["0x00", "0xFF"])
def test_bcl_padded_to_8_bytes_is_read(padding: bytes) -> None:
    """The recorded 5-byte BCL padded to 8 bytes with 0x00 (or 0xFF) is read, not malformed."""
    session = recognising()
    step = session.receive(CanFrame(BCL_ID, rec.GBT_BCL.data + padding, True), 1.1)
    assert session.malformed_frames == 0
    assert step.state.charge_current_limit_a == 20.0


def test_bcl_with_other_trailing_bytes_is_still_malformed() -> None:
    """Bytes past the message that are not padding still make the frame malformed."""
    session = recognising()
    session.receive(CanFrame(BCL_ID, rec.GBT_BCL.data + b"\x00\x12\x00", True), 1.1)
    assert session.malformed_frames == 1


def test_bsm_temperature_not_available_is_unknown() -> None:
    """BSM highest temperature 0xFF (205 degC, out of range: not available): None, no fault."""
    session = recognising()
    data = bytearray(rec.GBT_BSM.data)
    data[1] = 0xFF
    state = session.receive(CanFrame(BSM_ID, bytes(data), True), 1.1).state
    assert state.faults == ()
    assert (state.battery_temp_max_c, state.battery_temp_min_c) == (None, 3)


BSM_STATUS = {
    "cell voltage 01": ({"CellVoltageStatus": 1}, "GB/T BSM: cell voltage too high"),
    "cell voltage 10": ({"CellVoltageStatus": 2}, "GB/T BSM: cell voltage too low"),
    "SoC 10": ({"SocStatus": 2}, "GB/T BSM: SoC too low"),
    "over-current 01": ({"OverCurrentStatus": 1}, "GB/T BSM: charging over-current"),
    "over-current 10": ({"OverCurrentStatus": 2}, "GB/T BSM: charging current untrusted"),
    "temperature 10": ({"TemperatureStatus": 2}, "GB/T BSM: battery temperature untrusted"),
    "insulation 01": ({"InsulationStatus": 1}, "GB/T BSM: insulation fault"),
    "insulation 10": ({"InsulationStatus": 2}, "GB/T BSM: insulation untrusted"),
    "insulation 11": ({"InsulationStatus": 3}, "GB/T BSM: insulation not available"),
    "connector 01": ({"OutputConnectorStatus": 1}, "GB/T BSM: output connector fault"),
    "SoC 11": ({"SocStatus": 3}, None),
    "temperature 11": ({"TemperatureStatus": 3}, None),
}


@pytest.mark.parametrize(("signals", "fault"), BSM_STATUS.values(), ids=BSM_STATUS.keys())
def test_bsm_status_fields_are_named_per_field(
    signals: dict[str, float], fault: str | None
) -> None:
    """Each BSM 2-bit status names what the standard's table says for that field; "11" is a
    fault only for insulation and the output connector."""
    session = recognising()
    state = session.receive(bms_frame("BSM", **signals), 1.1).state
    assert state.faults == ((fault,) if fault else ())


def with_bcp(replacement: bytes, *, at: slice) -> GbtSession:
    """A recognising session given the recorded BRM, then the recorded BCP with ``at`` replaced."""
    session = recognising()
    send_transfer(
        session,
        0x0200,
        b"".join(f.data[1:] for f in rec.GBT_BRM_TRANSFER if f.arbitration_id == 0x1CEB56F4)[:49],
        1.1,
    )
    bcp = bytearray(
        b"".join(f.data[1:] for f in rec.GBT_BCP_TRANSFER if f.arbitration_id == 0x1CEB56F4)[:13]
    )
    bcp[at] = replacement
    send_transfer(session, 0x0600, bytes(bcp), 1.3)
    return session


def test_bcp_energy_not_available_is_unknown() -> None:
    """BCP nominal energy 0xFFFF: capacity unknown, no fault; the session goes on to CML."""
    session = with_bcp(b"\xff\xff", at=slice(4, 6))
    state = session.tick(1.4, LineInputs(plugged=True, insulation_ok=True)).state
    assert state.faults == ()
    assert state.capacity_kwh is None
    assert session.state is GbtState.PARAMETERS


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("BHM", CanFrame(0x182756F4, b"\xff\xff", True)),
        ("BCL", CanFrame(BCL_ID, b"\xff\xff" + rec.GBT_BCL.data[2:], True)),
    ],
    ids=["BHM voltage", "BCL voltage demand"],
)
def test_not_available_in_a_signal_the_charger_acts_on_is_a_fault(
    name: str, frame: CanFrame
) -> None:
    """0xFFFF where the charger needs the figure (BHM's voltage limit, BCL's demand): a fault."""
    session = recognising()
    state = session.receive(frame, 1.1).state
    assert state.phase is VehiclePhase.FAULT
    assert state.faults[0].startswith(f"implausible value: {name}.")


def test_bcp_battery_voltage_not_available_is_a_fault() -> None:
    """BCP's battery voltage (bytes 12-13) is what the output is checked against: 0xFFFF faults."""
    session = with_bcp(b"\xff\xff", at=slice(11, 13))
    assert session.faults == ("implausible value: BCP.PresentVoltage = 6553.5 above 1000",)
