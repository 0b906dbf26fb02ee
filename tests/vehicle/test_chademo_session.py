"""The CHAdeMO charger session, driven by a simulated clock against the simulated vehicle."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase
from controller.vehicle.chademo import (
    ChademoChargerConfig,
    ChademoSession,
    ChademoState,
)
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, LineOutputs
from hil.vehicle import BatteryModel, ChademoVehicle, FaultInjection, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig

from .fixtures import recorded as rec
from .harness import Bench

CODEC = DbcCodec.chademo()
FAST = ChademoChargerConfig(insulation_test_s=0.3, discharge_offered=True)


def bench(
    *,
    mode: str = "charge",
    soc_pct: float = 50.0,
    faults: FaultInjection | None = None,
    config: ChademoChargerConfig = FAST,
) -> Bench:
    """A plugged-in CHAdeMO charger and car, with transfer allowed."""
    lines = SimulatedLines(plugged=True)
    vehicle = ChademoVehicle(
        BatteryModel(soc_pct=soc_pct),
        faults,
        config=ChademoVehicleConfig(mode=mode),
        lines=lines,
    )
    session = ChademoSession(config)
    session.allow_energy_transfer(True)
    return Bench(session, vehicle, lines, direction=1 if mode == "charge" else -1)


def transferring(b: Bench) -> None:
    """Run until current flows."""
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.run(0.5)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER


def test_charge_session_reaches_energy_transfer_and_charges() -> None:
    """Plug-in to energy transfer: d1, k, d2, contactors; the car's request becomes the limit."""
    b = bench()
    transferring(b)
    state = b.trace.last
    assert state.charge_permitted
    assert state.discharge_permitted  # a V2H car at a V2H charger permits both directions
    assert state.charge_current_limit_a == 100
    assert state.charge_voltage_limit_v == 435
    assert state.soc_pct is not None
    assert state.soc_pct >= 50
    assert b.lines.outputs == LineOutputs(d1=True, d2=True, contactors=True, lock=True)
    soc_before = b.vehicle.battery.soc_pct
    b.run(2.0)
    assert b.vehicle.battery.soc_pct > soc_before
    status = CODEC.decode("CHG_109_Status", b.trace.frames(0x109)[-1][1]).signals
    assert (status["StatusCharging"], status["StatusStopControl"]) == (1, 0)
    assert status["PresentOutputCurrent"] == 100


def test_phases_follow_the_sequence() -> None:
    """The session reports handshake, ready and energy transfer in that order."""
    b = bench()
    transferring(b)
    phases = [
        e.reason.split(":")[0] for _, e in b.trace.events if e.kind is EventKind.PHASE_CHANGED
    ]
    assert phases == ["handshake", "ready", "energy_transfer"]


def test_discharge_session_exports_within_vehicle_limits() -> None:
    """V2H: 0x208/0x209 are sent, the car's 0x200 limits surface and the pack discharges."""
    b = bench(mode="discharge", soc_pct=70.0)
    transferring(b)
    state = b.trace.last
    assert state.discharge_permitted
    assert state.discharge_current_limit_a == 50
    assert state.discharge_voltage_min_v == 250
    assert state.discharge_soc_min_pct == 30
    soc_before = b.vehicle.battery.soc_pct
    b.run(2.0)
    assert b.vehicle.battery.soc_pct < soc_before
    sent_208 = CODEC.decode("CHG_208_DischargeStatus", b.trace.frames(0x208)[-1][1]).signals
    assert sent_208["PresentDischargeCurrent"] == 50
    assert len(b.trace.frames(0x209)) == len(b.trace.frames(0x109))


def test_no_discharge_frames_unless_offered() -> None:
    """Without discharge offered, 0x109 byte 4 bit 0 is clear and 0x208/0x209 are never sent."""
    b = bench(config=ChademoChargerConfig(insulation_test_s=0.3))
    transferring(b)
    assert not b.trace.frames(0x208)
    assert (
        CODEC.decode("CHG_109_Status", b.trace.frames(0x109)[-1][1]).signals["DischargeCompatible"]
        == 0
    )
    assert not b.trace.last.discharge_permitted


def test_charger_normal_stop_ends_with_lines_off() -> None:
    """end(): stop control, current to 0, vehicle contactor opens, d2 then d1 off 500 ms later."""
    b = bench()
    transferring(b)
    step = b.session.end(b.now)
    assert step.state.phase is VehiclePhase.STOPPING
    assert not step.state.charge_permitted
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()
    assert b.lines.outputs == LineOutputs()
    d2_off = next(
        t for t, s in b.trace.steps if s.state.phase is VehiclePhase.STOPPING and not s.outputs.d2
    )
    d1_off = b.trace.first_time(lambda s: s.phase is VehiclePhase.ENDED)
    assert d1_off is not None
    assert d1_off - d2_off >= 0.5


def test_vehicle_stop_request_is_a_normal_stop() -> None:
    """0x102.5 bit0 cleared during transfer: stop requested, session ends without a fault."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.stop_request = True
    b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert any(e.kind is EventKind.STOP_REQUESTED for _, e in b.trace.events)
    assert b.trace.last.stop_requested
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()


def test_current_request_timeout_stops_within_about_one_second() -> None:
    """0x102 missing for more than 1 s faults the session and withdraws permission."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.silence_demand = True
    silenced_at = b.now
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.FAULT)
    fault_at = b.trace.first_time(lambda s: s.phase is VehiclePhase.FAULT)
    assert fault_at is not None
    assert 0.9 <= fault_at - silenced_at <= 1.3
    state = b.trace.last
    assert not state.charge_permitted
    assert any("0x102 not received" in f for f in state.faults)


def test_vehicle_fault_bits_stop_the_session() -> None:
    """A 0x102 byte 4 fault flag (over-temperature) becomes a fault with its reason."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.over_temperature = True
    b.run(0.3)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert b.trace.last.faults == (
        "CHAdeMO 0x102 byte 4: vehicle reports high battery temperature",
    )
    b.run(4.0, until=lambda s: not b.lines.outputs.d1)
    assert b.lines.outputs == LineOutputs()


def test_implausible_frame_is_a_fault_not_state() -> None:
    """0x102 with an impossible target voltage faults the session; the value never shows."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.garbage = True
    b.run(0.3)
    state = b.trace.last
    assert state.phase is VehiclePhase.FAULT
    assert state.faults[0].startswith("implausible value: VEH_102_Status")
    assert state.charge_current_limit_a == 100  # the last valid value, not the garbage


def test_wrong_dlc_is_counted_and_then_times_out() -> None:
    """A short 0x102 is dropped and counted; with no valid 0x102 the 1 s timeout follows."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.wrong_dlc = True
    b.run(0.5)
    assert b.session.malformed_frames >= 4
    assert "7 bytes, expected 8" in b.session.last_malformed_reason
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    after = b.run(1.0).last
    assert after.phase is VehiclePhase.FAULT


def test_unplug_after_end_returns_to_unplugged() -> None:
    """After the session ends, unplugging resets it for the next car."""
    b = bench()
    transferring(b)
    b.session.end(b.now)
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    b.lines.plugged = False
    b.run(0.3)
    assert b.trace.last.phase is VehiclePhase.UNPLUGGED
    assert isinstance(b.session, ChademoSession)
    assert b.session.state is ChademoState.IDLE


def test_transfer_waits_for_permission() -> None:
    """Without allow_energy_transfer the session holds in READY with d2 off."""
    b = bench()
    b.session.allow_energy_transfer(False)
    b.run(3.0)
    assert b.trace.last.phase is VehiclePhase.READY
    assert not b.lines.outputs.d2
    b.session.allow_energy_transfer(True)
    after = b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER).last
    assert after.phase is VehiclePhase.ENERGY_TRANSFER


def plugged_session() -> ChademoSession:
    """A session with d1 on, waiting for the vehicle."""
    session = ChademoSession(FAST)
    session.tick(0.0, LineInputs(plugged=True))
    return session


def test_recorded_leaf_frames_become_vehicle_state() -> None:
    """The recorded ZE0 frames give SoC 73 %, 14 A, 435 V, 15 A / 250 V discharge limits."""
    session = plugged_session()
    for frame in (rec.ZE0_100, rec.ZE0_101, rec.ZE0_200, rec.ZE0_102_CHARGING):
        step = session.receive(frame, 0.05)
    state = step.state
    assert state.soc_pct == 73
    assert state.charge_current_limit_a == 14
    assert state.charge_voltage_limit_v == 435
    assert state.discharge_voltage_min_v == 250
    assert state.capacity_kwh == 22.2
    assert state.faults == ()
    assert state.observed_at_s == 0.05


def test_soc_uses_the_charged_rate_reference() -> None:
    """0x100 byte 6 = 0xFF and 0x102 byte 6 = 0x91 read as 57 % (protocol 0.9 charger log)."""
    session = plugged_session()
    session.receive(rec.ZE1_09_100, 0.1)
    state = session.receive(rec.ZE1_09_102, 0.1).state
    assert state.soc_pct == 56.9


def test_unknown_ids_are_dropped_quietly() -> None:
    """A frame on an ID the session does not read changes nothing and raises no event."""
    session = plugged_session()
    step = session.receive(rec.ZE0_108, 0.1)  # the charger's own ID
    assert step.events == ()
    assert session.unknown_frames == 1


def test_charger_frames_every_100_ms() -> None:
    """With d1 on, 0x108 and 0x109 go out every 100 ms."""
    session = ChademoSession(ChademoChargerConfig())
    times: list[float] = []
    for i in range(101):
        now = i * 0.01
        frames = session.tick(now, LineInputs(plugged=True)).frames
        times.extend(now for frame in frames if frame.arbitration_id == 0x109)
    assert len(times) == 11
    assert all(abs(b - a - 0.1) < 0.011 for a, b in itertools.pairwise(times))


VEHICLE_IDS = sorted({0x100, 0x101, 0x102, 0x110, 0x200, 0x201, 0x700})


@given(
    frame_id=st.sampled_from(VEHICLE_IDS),
    payload=st.binary(min_size=0, max_size=8),
)
def test_any_vehicle_payload_never_crashes_the_session(frame_id: int, payload: bytes) -> None:
    """Any payload on any vehicle ID is state, a counted malformed frame or a fault."""
    session = plugged_session()
    step = session.receive(CanFrame(frame_id, payload, is_extended_id=False), 0.1)
    kinds = {e.kind for e in step.events}
    assert kinds <= {EventKind.MALFORMED_FRAME, EventKind.FAULT, EventKind.PHASE_CHANGED}
    if EventKind.MALFORMED_FRAME in kinds:
        assert session.malformed_frames == 1
