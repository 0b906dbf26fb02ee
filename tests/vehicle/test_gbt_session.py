"""The GB/T 27930 charger session, driven by a simulated clock against the simulated BMS."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase
from controller.vehicle import j1939_tp as tp
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, LineOutputs
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession, GbtState
from hil.vehicle import BatteryModel, FaultInjection, GbtVehicle, SimulatedLines
from hil.vehicle.gbt_ev import VIN, GbtVehicleConfig

from .fixtures import recorded as rec
from .harness import Bench

CODEC = DbcCodec.gbt27930()
FAST = GbtChargerConfig(insulation_test_s=0.3, discharge_offered=True, region_code="123")
CCS_ID = 0x1812F456
CST_ID = 0x101AF456
CEM_ID = 0x081FF456
CHM_ID = 0x1826F456
CRM_ID = 0x1801F456


class ConnectorBench(Bench):
    """The bench with its stage measuring at the charger's output (outside K1/K2), where GB/T
    18487.1 has the charger check the voltage: the pack's voltage while the car's K5/K6 are
    closed (``GbtVehicle.contactors_closed``), else 0 V (the output bled at once), unless
    ``stuck_voltage_v`` says otherwise. It reports every ``report_every_s`` (the bench's 10 ms
    step by default; the daemon reports every 100 ms), at ``report_phase_s`` into the period."""

    def __init__(
        self, session: GbtSession, vehicle: GbtVehicle, lines: SimulatedLines, *, direction: int = 1
    ) -> None:
        super().__init__(session, vehicle, lines, direction=direction)
        self.car = vehicle
        self.gbt = session
        self.stuck_voltage_v: float | None = None
        self.report_every_s = 0.01
        self.report_phase_s = 0.0

    def _power(self) -> None:
        if not self.report_output:
            return
        ticks = round((self.now - self.report_phase_s) / 0.01)
        if ticks % round(self.report_every_s / 0.01) != 0:
            return
        current = self._stage_current_a()
        volts = self.car.battery.voltage_v if self.car.contactors_closed else 0.0
        if self.stuck_voltage_v is not None:
            volts = self.stuck_voltage_v
        self.session.set_output(volts, current, self.now)


def bench(
    *, mode: str = "charge", soc_pct: float = 50.0, faults: FaultInjection | None = None
) -> ConnectorBench:
    """A plugged-in GB/T charger and BMS, with transfer allowed."""
    lines = SimulatedLines(plugged=True)
    vehicle = GbtVehicle(
        BatteryModel(soc_pct=soc_pct), faults, config=GbtVehicleConfig(mode=mode), lines=lines
    )
    session = GbtSession(FAST)
    session.allow_energy_transfer(True)
    return ConnectorBench(session, vehicle, lines, direction=1 if mode == "charge" else -1)


def charging(b: Bench) -> None:
    """Run until energy flows."""
    b.run(8.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.run(0.6)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER


def test_charge_session_from_handshake_to_charging() -> None:
    """CHM/BHM, CRM/BRM, BCP, CML/BRO/CRO lead to charging with the BMS's limits surfaced."""
    b = bench()
    charging(b)
    state = b.trace.last
    assert state.identity == VIN
    assert state.charge_permitted
    assert state.charge_current_limit_a == 100.0
    assert state.charge_voltage_limit_v == 426.1
    assert state.capacity_kwh == 40.0
    assert state.pack_current_a == 100.0  # controller sign: + charges the vehicle
    assert b.lines.outputs == LineOutputs(d1=True, contactors=True, lock=True)
    ccs = CODEC.decode("CCS", b.trace.frames(CCS_ID)[-1][1]).signals
    assert ccs["OutputCurrent"] == -100.0  # GB/T sign on the wire: negative = charging
    assert ccs["ChargingAllowed"] == 1
    soc = b.vehicle.battery.soc_pct
    b.run(1.0)
    assert b.vehicle.battery.soc_pct > soc


def test_ccs_every_50_ms_while_charging() -> None:
    """CCS goes out every 50 ms during charging."""
    b = bench()
    charging(b)
    times = [t for t, _ in b.trace.frames(CCS_ID)][-10:]
    gaps = [round(b2 - a, 3) for a, b2 in itertools.pairwise(times)]
    assert all(0.04 <= g <= 0.06 for g in gaps)


def test_discharge_uses_the_standards_current_sign() -> None:
    """A positive BCL demand is a discharge: limit surfaced, CCS current positive, SoC falls."""
    b = bench(mode="discharge", soc_pct=70.0)
    charging(b)
    state = b.trace.last
    assert state.discharge_permitted
    assert not state.charge_permitted
    assert state.discharge_current_limit_a == 30.0
    assert state.pack_current_a == -30.0
    ccs = CODEC.decode("CCS", b.trace.frames(CCS_ID)[-1][1]).signals
    assert ccs["OutputCurrent"] == 30.0
    soc = b.vehicle.battery.soc_pct
    b.run(1.0)
    assert b.vehicle.battery.soc_pct < soc


def test_discharge_demand_ignored_unless_offered() -> None:
    """Without discharge offered a positive BCL demand permits nothing: the limit reads 0 A."""
    b = bench(mode="discharge", soc_pct=70.0)
    b.session = GbtSession(GbtChargerConfig(insulation_test_s=0.3))
    b.session.allow_energy_transfer(True)
    charging(b)
    state = b.trace.last
    assert not state.discharge_permitted
    assert not state.charge_permitted
    assert state.discharge_current_limit_a == 0.0


def test_charger_normal_stop_exchanges_statistics() -> None:
    """end(): CST manual stop, BST, BSD and CSD, then auxiliary power off."""
    b = bench()
    charging(b)
    b.session.end(b.now)
    b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()
    cst = CODEC.decode("CST", b.trace.frames(CST_ID)[0][1]).signals
    assert (cst["StopManual"], cst["StopFault"]) == (1, 0)
    assert len(b.trace.frames(0x181DF456)) == 4  # CSD
    assert b.lines.outputs == LineOutputs(lock=True)  # until a report shows the output bled
    b.run(0.05)
    assert b.lines.outputs == LineOutputs()


def test_manual_stop_cst_matches_the_recorded_charger() -> None:
    """The manual-stop CST is byte for byte the recorded 04 00 F0 F0."""
    b = bench()
    charging(b)
    b.session.end(b.now)
    b.run(0.05)
    assert b.trace.frames(CST_ID)[0][1] == rec.GBT_CST.data


def test_vehicle_stop_request_ends_normally() -> None:
    """BST from the BMS: stop requested, CST answers 'BMS stopped', statistics, no fault."""
    faults = FaultInjection()
    b = bench(faults=faults)
    charging(b)
    faults.stop_request = True
    b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert any(e.kind is EventKind.STOP_REQUESTED for _, e in b.trace.events)
    assert b.trace.last.stop_requested
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()
    cst = CODEC.decode("CST", b.trace.frames(CST_ID)[0][1]).signals
    assert cst["StopByBms"] == 1


def reconnects(b: Bench) -> list[str]:
    """The reasons of the session's reconnect events."""
    return [
        e.reason for _, e in b.trace.events if e.reason.startswith("GB/T") and "of 3" in e.reason
    ]


def test_bcl_timeout_opens_contactors_then_reconnects() -> None:
    """BCL missing for 1 s stops transfer at once, opens the contactors, then sends CHM again."""
    faults = FaultInjection()
    b = bench(faults=faults)
    charging(b)
    faults.silence_demand = True
    silenced_at = b.now
    b.run(3.0, until=lambda s: s.phase is not VehiclePhase.ENERGY_TRANSFER)
    stopped_at = b.now
    assert 0.9 <= stopped_at - silenced_at <= 1.2
    assert not b.trace.last.charge_permitted
    assert b.trace.last.faults == ()
    b.run(0.5)
    opened = [t for t, s in b.trace.steps if t >= stopped_at and not s.outputs.contactors]
    assert opened
    assert opened[0] - silenced_at <= 1.3
    cem_at, cem = b.trace.frames(CEM_ID)[0]
    assert CODEC.decode("CEM", cem).signals["TimeoutBcl"] == 1
    assert cem_at <= opened[0]
    b.run(2.0)
    chm_again = [t for t, _ in b.trace.frames(CHM_ID) if t > stopped_at]
    assert chm_again
    assert chm_again[0] > opened[0]
    closed_again = [(t, s) for t, s in b.trace.steps if t > opened[0] and s.outputs.contactors]
    assert not closed_again or closed_again[0][0] > chm_again[0]
    assert reconnects(b) == [
        "GB/T BCL not received for more than 1 s; reconnect 1 of 3",
    ]
    faults.silence_demand = False
    charging(b)
    assert b.trace.last.faults == ()
    assert b.lines.outputs.contactors


def test_persistent_bcl_timeout_faults_after_three_reconnects() -> None:
    """A BMS that never sends BCL again is reconnected 3 times, then the session aborts."""
    faults = FaultInjection()
    b = bench(faults=faults)
    charging(b)
    faults.silence_demand = True
    b.run(60.0, until=lambda s: s.phase is VehiclePhase.FAULT)
    assert len(reconnects(b)) == 3
    assert b.trace.last.faults == (
        "GB/T BCL not received for more than 1 s; no communication after 3 reconnects, abort",
    )
    b.run(2.0)
    assert b.lines.outputs == LineOutputs()


def test_bms_silent_in_parameters_reconnects_three_times_then_faults() -> None:
    """No BRO in the parameter phase: CEM, CHM/CRM 0x00 again 3 times, then FAULT and stop."""
    b = bench(faults=FaultInjection(bro_silent=99))
    b.run(60.0, until=lambda s: s.phase is VehiclePhase.FAULT)
    assert reconnects(b) == [
        f"GB/T BRO 0xAA not received in time; reconnect {n} of 3" for n in (1, 2, 3)
    ]
    assert b.trace.last.faults == (
        "GB/T BRO 0xAA not received in time; no communication after 3 reconnects, abort",
    )
    chm_starts = [t for t, _ in b.trace.frames(CHM_ID)]
    assert len([a for a, c in itertools.pairwise(chm_starts) if c - a > 1.0]) == 3
    assert any(d[0] == 0x00 for t, d in b.trace.frames(CRM_ID) if t > chm_starts[-1])
    cems = [CODEC.decode("CEM", d).signals for _, d in b.trace.frames(CEM_ID)]
    assert cems
    assert all(c["TimeoutBro"] == 1 for c in cems)
    assert not any(s.outputs.contactors for _, s in b.trace.steps)
    assert isinstance(b.vehicle, GbtVehicle)
    assert b.vehicle.parameter_phases == 4  # the BMS went through CHM/CRM again each time
    b.run(2.0)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert b.lines.outputs == LineOutputs()


def test_bms_answering_on_the_second_reconnect_charges() -> None:
    """A BMS silent twice in the parameter phase answers on the 2nd reconnect and charges."""
    b = bench(faults=FaultInjection(bro_silent=2))
    b.run(30.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.run(0.6)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert len(reconnects(b)) == 2
    assert b.trace.last.faults == ()
    assert b.trace.last.identity == VIN
    assert b.trace.last.charge_permitted


def test_lost_transport_packet_is_recovered() -> None:
    """A dropped BRM/BCP/BCS packet is asked for again and the session still charges."""
    faults = FaultInjection(tp_drop_packets=frozenset({2}))
    b = bench(faults=faults)
    charging(b)
    assert b.trace.last.identity == VIN
    assert any("asked again" in e.reason for _, e in b.trace.events)


def test_reordered_transport_packets_reassemble() -> None:
    """BRM, BCP and BCS packets sent last-first still reassemble to the right values."""
    faults = FaultInjection(tp_reorder=True)
    b = bench(faults=faults)
    charging(b)
    assert b.trace.last.identity == VIN
    assert b.trace.last.capacity_kwh == 40.0


def test_bsm_over_temperature_stops() -> None:
    """BSM temperature status 'too high' stops the session with its reason."""
    faults = FaultInjection()
    b = bench(faults=faults)
    charging(b)
    faults.over_temperature = True
    b.run(0.5)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert "battery temperature too high" in b.trace.last.faults[0]


def test_garbage_bcl_is_a_fault() -> None:
    """A BCL with an impossible voltage demand faults the session."""
    faults = FaultInjection()
    b = bench(faults=faults)
    charging(b)
    faults.garbage = True
    b.run(0.2)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert b.trace.last.faults[0].startswith("implausible value: BCL")


def plugged() -> GbtSession:
    """A session in the handshake."""
    session = GbtSession(FAST)
    session.tick(0.0, LineInputs(plugged=True, insulation_ok=True))
    return session


def test_recorded_session_frames_give_vehicle_state() -> None:
    """The recorded transfers and BCL/BSM give VIN, BCP limits, BCS values and the sign."""
    session = plugged()
    session.receive(rec.GBT_BHM, 0.1)
    session.tick(0.5, LineInputs(plugged=True, insulation_ok=True))  # insulation test done
    session.tick(1.0, LineInputs(plugged=True, insulation_ok=True))
    sent: list[bytes] = []
    t = 1.0
    for frame in (*rec.GBT_BRM_TRANSFER, *rec.GBT_BCP_TRANSFER, *rec.GBT_BCS_TRANSFER):
        if frame.arbitration_id == 0x1CECF456:
            continue  # the recorded charger's frames: ours are compared below
        t += 0.01
        sent += [f.data for f in session.receive(frame, t).frames if f.arbitration_id == 0x1CECF456]
    recorded_charger = [
        f.data
        for f in (*rec.GBT_BRM_TRANSFER, *rec.GBT_BCP_TRANSFER, *rec.GBT_BCS_TRANSFER)
        if f.arbitration_id == 0x1CECF456
    ]
    assert sent == recorded_charger
    session.receive(rec.GBT_BSM, t)
    state = session.receive(rec.GBT_BCL, t).state
    assert state.identity == "L1NSPGH98NA196202"
    assert state.charge_voltage_limit_v == 426.1
    assert state.capacity_kwh == 55.4
    assert state.pack_voltage_v == 378.1
    assert state.soc_pct == 77
    assert state.cell_voltage_max_v == 3.32
    assert state.charge_current_limit_a == 20.0  # BCL -20.0 A in GB/T sign
    assert (state.battery_temp_max_c, state.battery_temp_min_c) == (4, 3)


def test_bem_timeout_reconnects_three_times_then_faults() -> None:
    """BEM (CRM 0xAA timeout) restarts the handshake without CEM; the 4th BEM aborts."""
    session = plugged()
    t = 0.1
    for n in (1, 2, 3):
        step = session.receive(rec.GBT_BEM_CRM_AA_TIMEOUT, t)
        assert step.state.phase is VehiclePhase.HANDSHAKE
        assert step.state.faults == ()
        assert [e.reason for e in step.events] == [
            f"GB/T BEM: BMS timed out waiting for CRM 0xAA; reconnect {n} of 3"
        ]
        assert not step.outputs.contactors
        assert session.receive(rec.GBT_BEM_CRM_AA_TIMEOUT, t + 0.25).events == ()  # one restart
        t += 1.5
        step = session.tick(t, LineInputs(plugged=True, insulation_ok=True))
        assert session.state is GbtState.HANDSHAKE
        assert [f.arbitration_id for f in step.frames] == [CHM_ID]
        assert CEM_ID not in [f.arbitration_id for f in step.frames]
        t += 0.1
    step = session.receive(rec.GBT_BEM_CRM_AA_TIMEOUT, t)
    assert step.state.phase is VehiclePhase.FAULT
    assert step.state.faults == (
        "GB/T BEM: BMS timed out waiting for CRM 0xAA; no communication after 3 reconnects, abort",
    )


def test_reconnect_count_resets_on_unplug() -> None:
    """The 3 reconnects are counted per plug-in: a new plug-in may reconnect again."""
    session = plugged()
    t = 0.1
    for _ in range(3):
        session.receive(rec.GBT_BEM_CRM_AA_TIMEOUT, t)
        t += 1.5
        session.tick(t, LineInputs(plugged=True, insulation_ok=True))
    for _ in range(40):
        t += 0.05
        session.set_output(0.0, 0.0, t)  # the stage reports the output bled: the lock may open
        session.tick(t, LineInputs(plugged=False))
    assert session.phase is VehiclePhase.UNPLUGGED
    session.tick(t + 0.1, LineInputs(plugged=True, insulation_ok=True))
    step = session.receive(rec.GBT_BEM_CRM_AA_TIMEOUT, t + 0.2)
    assert step.state.faults == ()
    assert "reconnect 1 of 3" in step.events[0].reason


def test_noise_from_other_nodes_is_dropped() -> None:
    """A frame from another J1939 node changes nothing and raises no event."""
    session = plugged()
    step = session.receive(rec.GBT_NOISE, 0.1)
    assert step.events == ()
    assert session.state is GbtState.HANDSHAKE


def test_chm_every_250_ms() -> None:
    """CHM goes out every 250 ms during the handshake, and it is the recorded 01 01 00."""
    session = GbtSession(FAST)
    chm: list[tuple[float, bytes]] = []
    for i in range(101):
        frames = session.tick(i * 0.01, LineInputs(plugged=True, insulation_ok=True)).frames
        chm.extend((round(i * 0.01, 2), f.data) for f in frames if f.arbitration_id == 0x1826F456)
    assert [t for t, _ in chm] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert chm[0][1] == rec.GBT_CHM.data


BMS_IDS = sorted(GbtSession(FAST).accepted_ids)


@given(frame_id=st.sampled_from(BMS_IDS), payload=st.binary(min_size=0, max_size=8))
def test_any_bms_payload_never_crashes_the_session(frame_id: int, payload: bytes) -> None:
    """Any payload on any BMS ID is state, a malformed frame, a transport note or a fault."""
    session = plugged()
    step = session.receive(CanFrame(frame_id, payload, is_extended_id=True), 0.1)
    kinds = {e.kind for e in step.events}
    assert kinds <= {
        EventKind.MALFORMED_FRAME,
        EventKind.FAULT,
        EventKind.PHASE_CHANGED,
        EventKind.TRANSPORT,
        EventKind.STOP_REQUESTED,
    }


# Review findings: BRM length, stop requests, 2-bit status values, pause, freshness, allowance.


def recognising() -> GbtSession:
    """A session past the handshake and insulation test, sending CRM 0x00."""
    session = plugged()
    session.receive(rec.GBT_BHM, 0.1)
    session.tick(0.5, LineInputs(plugged=True, insulation_ok=True))
    session.tick(1.0, LineInputs(plugged=True, insulation_ok=True))
    assert session.state is GbtState.RECOGNITION
    return session


def recorded_brm() -> bytes:
    """The recorded 49-byte BRM payload, reassembled from its data packets."""
    packets = [f.data[1:] for f in rec.GBT_BRM_TRANSFER if f.arbitration_id == 0x1CEB56F4]
    return b"".join(packets)[:49]


def send_transfer(session: GbtSession, pgn: int, payload: bytes, t: float) -> list[CanFrame]:
    """Play one BMS transfer (RTS, then every data packet); return what the charger sent."""
    rts = tp.Rts(len(payload), tp.packets_for(len(payload)), pgn)
    sent = list(session.receive(CanFrame(0x1CEC56F4, tp.encode_cm(rts), True), t).frames)
    for packet in tp.split_payload(payload):
        t += 0.01
        sent += session.receive(CanFrame(0x1CEB56F4, tp.encode_dt(packet), True), t).frames
    return sent


def bms_frame(name: str, **signals: float) -> CanFrame:
    """A BMS message: the recorded BSM, or all signals 0, with the given signals changed."""
    if name == "BSM":
        values = CODEC.decode("BSM", rec.GBT_BSM.data).signals | signals
    else:
        values = dict.fromkeys(CODEC.signal_names(name), 0.0) | signals
    return CanFrame(CODEC.frame_id(name), CODEC.encode(name, values), is_extended_id=True)


def test_41_byte_brm_of_the_table_is_accepted() -> None:
    """A BRM of the table's 41 bytes (no BMS software version) gives the VIN and CRM 0xAA."""
    session = recognising()
    send_transfer(session, 0x0200, recorded_brm()[:41], 1.1)
    assert session.malformed_frames == 0
    assert session.receive(rec.GBT_BSM, 1.2).state.identity == "L1NSPGH98NA196202"
    crm = [
        f
        for t in (1.25, 1.5)
        for f in session.tick(t, LineInputs(plugged=True, insulation_ok=True)).frames
    ]
    assert any(f.arbitration_id == CRM_ID and f.data[0] == 0xAA for f in crm)


def test_crm_aa_goes_out_as_soon_as_brm_completes() -> None:
    """The frame that completes BRM is answered with CRM 0xAA at once, as the recorded charger
    did (1.5 ms after its EndOfMsgAck), not up to a CRM period later."""
    session = recognising()
    sent = send_transfer(session, 0x0200, recorded_brm(), 1.1)
    assert sent[-2].data[0] == 0x13  # EndOfMsgAck
    # CRM 0xAA, charger number 1, region "123" (FAST)
    assert (sent[-1].arbitration_id, sent[-1].data.hex()) == (CRM_ID, "aa01000000313233")


def test_bst_before_parameter_exchange_is_a_stop_request() -> None:
    """BST during recognition: stop requested and the session stops, as later in the session."""
    session = recognising()
    step = session.receive(bms_frame("BST", StopSocReached=1), 1.1)
    assert step.state.stop_requested
    assert EventKind.STOP_REQUESTED in {e.kind for e in step.events}
    assert step.state.phase is VehiclePhase.STOPPING


UNTRUSTED = {
    "BEM CCS untrusted": ("BEM", {"TimeoutCcs": 2}),
    "BST insulation untrusted": ("BST", {"FaultInsulation": 2}),
    "BSM insulation not available": ("BSM", {"InsulationStatus": 3}),
    "BSM connector not available": ("BSM", {"OutputConnectorStatus": 3}),
}


@pytest.mark.parametrize(("name", "signals"), UNTRUSTED.values(), ids=UNTRUSTED.keys())
def test_untrusted_or_unavailable_safety_status_is_a_fault(
    name: str, signals: dict[str, float]
) -> None:
    """BEM/BST '10' (untrusted) and BSM insulation/connector '11' (not available) are faults."""
    session = plugged()
    step = session.receive(bms_frame(name, **signals), 0.1)
    assert step.state.phase is VehiclePhase.FAULT
    assert step.state.faults


def test_bsm_pause_is_time_limited() -> None:
    """BSM 'charging forbidden' pauses; past the pause limit the charger stops with a CST."""
    faults = FaultInjection()
    b = bench(faults=faults)
    b.session = GbtSession(GbtChargerConfig(insulation_test_s=0.3, pause_limit_s=1.0))
    b.session.allow_energy_transfer(True)
    charging(b)
    faults.charging_forbidden = True
    paused = b.now
    b.run(0.5)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert not b.trace.last.charge_permitted
    end = b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED).last
    first_cst = b.trace.frames(CST_ID)[0]
    assert 1.0 <= first_cst[0] - paused <= 1.4
    assert CODEC.decode("CST", first_cst[1]).signals["StopConditionsReached"] == 1
    assert end.phase is VehiclePhase.ENDED
    assert end.faults == ()


def test_zero_measured_current_is_plus_zero() -> None:
    """The recorded BCS with 0 A reads +0.0 A in the controller's sign, not -0.0."""
    session = recognising()
    t = 1.0
    for frame in (*rec.GBT_BRM_TRANSFER, *rec.GBT_BCP_TRANSFER, *rec.GBT_BCS_TRANSFER):
        if frame.arbitration_id != 0x1CECF456:
            t += 0.01
            state = session.receive(frame, t).state
    assert state.pack_current_a == 0.0
    assert math.copysign(1.0, state.pack_current_a) == 1.0


def test_stop_waits_for_a_measured_low_current() -> None:
    """A stage that stops reporting: no assumed 0 A after CST; fault, contactors open at 2 s."""
    b = bench()
    charging(b)
    b.report_output = False
    stop = b.now
    b.session.end(b.now)
    b.run(0.5)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert any("not confirmed" in f for f in b.trace.last.faults)
    assert b.lines.outputs.contactors
    b.run(1.7)
    opened = next(t for t, s in b.trace.steps if t > stop and not s.outputs.contactors)
    assert 2.0 <= opened - stop <= 2.1


def test_transfer_starts_and_holds_while_commanded_power_is_zero() -> None:
    """With transfer allowed and the stage at 0 A the session reaches and keeps charging."""
    b = bench()
    b.direction = 0
    charging(b)
    b.run(3.0)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert b.trace.last.faults == ()
    assert b.trace.last.charge_permitted


def test_withdrawn_allowance_stops_with_cst() -> None:
    """allow_energy_transfer(False) while charging: CST (charger stop), statistics, no fault."""
    b = bench()
    charging(b)
    b.session.allow_energy_transfer(False)
    b.run(0.05)
    assert b.trace.last.phase is VehiclePhase.STOPPING
    end = b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED).last
    cst = CODEC.decode("CST", b.trace.frames(CST_ID)[0][1]).signals
    assert (cst["StopManual"], cst["StopFault"]) == (1, 0)
    assert end.phase is VehiclePhase.ENDED
    assert end.faults == ()
    assert not end.stop_requested


def test_limits_read_zero_amps_before_any_demand() -> None:
    """Before the first BCL both current limits read 0 A, never None ("not reported")."""
    state = recognising().receive(rec.GBT_BSM, 1.1).state
    assert (state.charge_current_limit_a, state.discharge_current_limit_a) == (0.0, 0.0)
