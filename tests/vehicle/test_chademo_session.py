"""The CHAdeMO charger session, driven by a simulated clock against the simulated vehicle."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase
from controller.vehicle.chademo import (
    ChademoChargerConfig,
    ChademoSession,
    ChademoState,
)
from controller.vehicle.dbc import DbcCodec
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, LineOutputs, Step
from hil.vehicle import BatteryModel, ChademoVehicle, FaultInjection, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig

from .fixtures import recorded as rec
from .harness import Bench

CODEC = DbcCodec.chademo()
FAST = ChademoChargerConfig(insulation_test_s=0.3, discharge_offered=True)
# The charger's output capacitance discharging once a contactor opens: the recorded ZE0 charger
# went from 375 V to 1 V in about 0.9 s.
OUTPUT_DECAY_S = 0.2


class ChademoBench(Bench):
    """The bench with the output voltage a CHAdeMO charger measures at its output: the pack's
    while both contactors are closed, else falling as the output capacitance discharges."""

    def __init__(
        self,
        session: ChademoSession,
        vehicle: ChademoVehicle,
        lines: SimulatedLines,
        *,
        direction: int = 1,
    ) -> None:
        super().__init__(session, vehicle, lines, direction=direction)
        self.car = vehicle
        self.output_voltage_v = 0.0

    def _power(self) -> None:
        if self.lines.outputs.contactors and self.car.contactor_closed:
            self.output_voltage_v = self.car.battery.voltage_v
        else:
            self.output_voltage_v *= math.exp(-0.01 / OUTPUT_DECAY_S)
        if not self.report_output:
            return
        current = self._stage_current_a()
        self.session.set_output(self.output_voltage_v, current, self.now)


def bench(
    *,
    mode: str = "charge",
    soc_pct: float = 50.0,
    faults: FaultInjection | None = None,
    config: ChademoChargerConfig = FAST,
    vehicle_config: ChademoVehicleConfig | None = None,
) -> ChademoBench:
    """A plugged-in CHAdeMO charger and car, with transfer allowed."""
    lines = SimulatedLines(plugged=True)
    vehicle = ChademoVehicle(
        BatteryModel(soc_pct=soc_pct),
        faults,
        config=vehicle_config or ChademoVehicleConfig(mode=mode),
        lines=lines,
    )
    session = ChademoSession(config)
    session.allow_energy_transfer(True)
    return ChademoBench(session, vehicle, lines, direction=1 if mode == "charge" else -1)


def transferring(b: Bench) -> None:
    """Run until current flows."""
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENERGY_TRANSFER)
    b.run(0.5)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER


def test_charge_session_reaches_energy_transfer_and_charges() -> None:
    """Plug-in to transfer: d1, k, d2, contactors; the car's request and target are its limits."""
    b = bench()
    transferring(b)
    state = b.trace.last
    assert state.charge_permitted
    assert state.discharge_permitted  # a V2H car at a V2H charger permits both directions
    assert state.charge_current_limit_a == 100
    assert state.charge_voltage_limit_v == 410  # 0x102 target, below the 0x100 maximum 435 V
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
    session.tick(0.0, LineInputs(plugged=True, insulation_ok=True))
    return session


def permitted(session: ChademoSession, frames: tuple[CanFrame, ...], status: CanFrame) -> Step:
    """The vehicle's frames at 0.05 s, its permission (k with 0x102.5 bit0) at 0.1 s, and its
    0x102 twice more 100 ms apart: the SoC is plausible and stable by the last step."""
    for frame in (*frames, status):
        session.receive(frame, 0.05)
    session.tick(0.1, LineInputs(plugged=True, insulation_ok=True, k=True))
    assert session.state is ChademoState.WAIT_PERMISSION
    session.receive(status, 0.15)
    return session.receive(status, 0.25)


def test_recorded_leaf_frames_become_vehicle_state() -> None:
    """The recorded ZE0 frames give SoC 73 %, 14 A, 410 V target, 15 A / 250 V discharge limits."""
    session = plugged_session()
    frames = (rec.ZE0_100, rec.ZE0_101, rec.ZE0_200)
    state = permitted(session, frames, rec.ZE0_102_CHARGING).state
    assert state.soc_pct == 73
    assert state.charge_current_limit_a == 14
    assert state.charge_voltage_limit_v == 410
    assert state.discharge_current_limit_a == 15
    assert state.discharge_voltage_min_v == 250
    assert state.capacity_kwh == 22.2
    assert state.faults == ()
    assert state.observed_at_s == 0.25


def test_soc_uses_the_charged_rate_reference() -> None:
    """0x100 byte 6 = 0xFF and 0x102 byte 6 = 0x91 read as 57 % (protocol 0.9 charger log)."""
    session = plugged_session()
    state = permitted(session, (rec.ZE1_09_100,), rec.ZE1_09_102).state
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
        frames = session.tick(now, LineInputs(plugged=True, insulation_ok=True)).frames
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


# Review findings: permission, limits, freshness, and the charger's own willingness.


def session_of(b: Bench) -> ChademoSession:
    """The bench's session, as the CHAdeMO session it is."""
    assert isinstance(b.session, ChademoSession)
    return b.session


def until_state(b: Bench, state: ChademoState, timeout_s: float = 6.0) -> None:
    """Run until the session is in ``state``."""
    b.run(timeout_s, until=lambda _s: session_of(b).state is state)
    assert session_of(b).state is state


@pytest.mark.parametrize(
    "state",
    [
        ChademoState.WAIT_PERMISSION,
        ChademoState.INSULATION_TEST,
        ChademoState.WAIT_VEHICLE_CONTACTOR,
    ],
    ids=str,
)
def test_permission_withdrawn_before_transfer_stops_the_session(state: ChademoState) -> None:
    """0x102 byte 5 bit 0 cleared at any point before transfer is a stop request: no transfer."""
    faults = FaultInjection()
    b = bench(faults=faults)
    if state is ChademoState.WAIT_PERMISSION:
        b.session.allow_energy_transfer(False)  # hold there
    until_state(b, state)
    d2_was_on = b.lines.outputs.d2
    faults.stop_request = True
    start = len(b.trace.steps)
    b.run(0.3)
    b.session.allow_energy_transfer(True)
    b.run(5.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    after = [step for _, step in b.trace.steps[start:]]
    assert all(step.state.phase is not VehiclePhase.ENERGY_TRANSFER for step in after)
    if not d2_was_on:
        assert not any(step.outputs.d2 or step.outputs.contactors for step in after)
    assert b.trace.last.stop_requested
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()


def test_k_dropped_before_d2_is_a_stop_without_d2() -> None:
    """k released during the insulation test withdraws permission: stop, d2 never on."""
    b = bench()
    until_state(b, ChademoState.INSULATION_TEST)
    b.lines.k = False
    start = len(b.trace.steps)
    b.run(3.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert not any(step.outputs.d2 for _, step in b.trace.steps[start:])
    assert b.trace.last.stop_requested
    assert b.trace.last.phase is VehiclePhase.ENDED


def test_k_dropped_after_d2_faults_before_transfer() -> None:
    """k released once d2 is on is a fault at once, before the vehicle contactor closes."""
    b = bench()
    until_state(b, ChademoState.WAIT_VEHICLE_CONTACTOR)
    b.lines.k = False
    start = len(b.trace.steps)
    b.run(0.1)
    after = [step.state for _, step in b.trace.steps[start:]]
    assert all(s.phase is not VehiclePhase.ENERGY_TRANSFER for s in after)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert any("k line" in f for f in b.trace.last.faults)


def test_vehicle_contactor_opening_during_transfer_stops() -> None:
    """0x102 byte 5 bit 3 back to 1 during transfer stops the session at once."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.open_contactor = True
    b.run(0.15)
    state = b.trace.last
    assert state.phase in (VehiclePhase.STOPPING, VehiclePhase.ENDED)
    assert not state.charge_permitted
    assert state.stop_requested


def test_not_in_park_stops() -> None:
    """0x102 byte 5 bit 1 (shift lever out of Park) stops the session."""
    faults = FaultInjection()
    b = bench(faults=faults)
    transferring(b)
    faults.not_in_park = True
    b.run(0.15)
    state = b.trace.last
    assert state.phase is VehiclePhase.STOPPING
    assert not state.charge_permitted
    assert state.stop_requested


INCONSISTENT = {
    "0x100 minimum not below maximum": (
        [rec.std(0x100, "0000B301B3016400")],
        "minimum battery voltage 435 V not below the maximum battery voltage 435 V",
    ),
    "all-zero 0x200": (
        [rec.std(0x200, "0000000000000000")],
        "maximum discharge current 255 A above the charger's available input current",
    ),
    "all-zero 0x200 voltage": (
        [rec.std(0x200, "0000000000000000")],
        "minimum discharge voltage 0 V",
    ),
    "0x200 minimum discharge voltage at the maximum": (
        [rec.std(0x200, "F0000000B3010A64")],
        "minimum discharge voltage 435 V not below the maximum battery voltage 435 V",
    ),
    "0x102 target 0 V": ([rec.std(0x102, "0200000E00C14900")], "target voltage 0 V"),
    "0x102 target below the minimum": (
        [rec.std(0x100, "00002C01B3016400"), rec.std(0x102, "02FA000E00C14900")],
        "target voltage 250 V below the minimum battery voltage 300 V",
    ),
    "SoC over 100 %": ([rec.std(0x102, "029A010E00C1C800")], "implausible SoC 200"),
}


@pytest.mark.parametrize(("frames", "reason"), INCONSISTENT.values(), ids=INCONSISTENT.keys())
def test_inconsistent_vehicle_limits_are_faults(frames: list[CanFrame], reason: str) -> None:
    """Limits that contradict each other fault the session and never widen what is reported."""
    session = plugged_session()
    for frame in (rec.ZE0_100, rec.ZE0_101, rec.ZE0_102_CHARGING, rec.ZE0_200, *frames):
        state = session.receive(frame, 0.05).state
    assert any(reason in f for f in state.faults), state.faults
    assert state.soc_pct is None or 0 <= state.soc_pct <= 100
    assert state.discharge_current_limit_a is not None
    assert state.discharge_current_limit_a <= FAST.input_current_a


def test_zero_amp_limits_are_reported_as_zero_not_unknown() -> None:
    """0x200 byte 0 = 0xFF, discharge not offered, or no request yet: 0 A, never None."""
    session = plugged_session()
    state = session.receive(rec.ZE1_100, 0.05).state
    assert (state.charge_current_limit_a, state.discharge_current_limit_a) == (0.0, 0.0)
    for frame in (rec.ZE1_102, rec.ZE1_200):
        state = session.receive(frame, 0.05).state
    assert state.discharge_current_limit_a == 0.0
    charge_only = ChademoSession(ChademoChargerConfig(insulation_test_s=0.3))
    charge_only.tick(0.0, LineInputs(plugged=True, insulation_ok=True))
    for frame in (rec.ZE0_100, rec.ZE0_102_CHARGING, rec.ZE0_200):
        state = charge_only.receive(frame, 0.05).state
    assert state.discharge_current_limit_a == 0.0


def test_thresholds_follow_the_vehicle_as_the_recorded_charger_does() -> None:
    """0x108 threshold = the car's 435 V maximum, 0x208 lower threshold = its 250 V minimum."""
    session = plugged_session()
    for frame in (rec.ZE0_100, rec.ZE0_101, rec.ZE0_102_CHARGING, rec.ZE0_200):
        session.receive(frame, 0.05)
    frames = {
        f.arbitration_id: f.data
        for f in session.tick(0.1, LineInputs(plugged=True, insulation_ok=True)).frames
    }
    assert frames[0x108][4:6] == rec.ZE0_108.data[4:6]  # B3 01
    assert frames[0x208][6:8] == rec.ZE0_208.data[6:8]  # FA 00


MIN_LEVELS = {
    "ZE1 0A 64": (rec.ZE1_200, 10.0),
    "ZE0 43 B2": (rec.ZE0_200, math.nan),
    "ZE1 early 1A FF": (rec.ZE1_200_EARLY, math.nan),
    "ZE0 first FF FF": (rec.ZE0_200_FIRST, math.nan),
    "byte 7 not used": (rec.std(0x200, "F0000000FA001E00"), 30.0),
}


@pytest.mark.parametrize(("frame", "expected"), MIN_LEVELS.values(), ids=MIN_LEVELS.keys())
def test_min_discharge_level_is_read_only_as_a_percentage(frame: CanFrame, expected: float) -> None:
    """0x200 byte 6 is a % only when byte 7 reads as one too; otherwise it permits no discharge."""
    session = plugged_session()
    for f in (rec.ZE1_100, rec.ZE1_102, frame):
        state = session.receive(f, 0.05).state
    level = state.discharge_soc_min_pct
    assert level is not None
    assert (math.isnan(level) and math.isnan(expected)) or level == expected


def test_pack_voltage_is_the_fresh_measured_output_with_both_contactors_closed() -> None:
    """CHAdeMO pack voltage: the stage's output once both contactors close, None when stale."""
    b = bench()
    transferring(b)
    before = [s.state for _, s in b.trace.steps if not s.outputs.contactors]
    assert all(s.pack_voltage_v is None for s in before)
    state = b.trace.last
    assert state.pack_voltage_v is not None
    assert abs(state.pack_voltage_v - b.vehicle.battery.voltage_v) < 1.0
    b.report_output = False
    b.run(0.9)
    assert b.trace.last.pack_voltage_v is not None
    b.run(0.3)
    assert b.trace.last.pack_voltage_v is None


def record_vehicle_frames(b: Bench) -> list[tuple[float, CanFrame]]:
    """Every frame the car sends from now on, with its time (all still reach the charger)."""
    seen: list[tuple[float, CanFrame]] = []

    def record(frame: CanFrame) -> bool:
        seen.append((b.now, frame))
        return False

    b.drop_to_charger = record
    return seen


def bit0_cleared_at(seen: list[tuple[float, CanFrame]]) -> float:
    """When the car first sent 0x102 with byte 5 bit 0 (charging enabled) clear."""
    return next(t for t, f in seen if f.arbitration_id == 0x102 and not f.data[5] & 1)


def test_stop_waits_for_a_measured_low_current() -> None:
    """A silent stage is not 0 A: charger fault 0.5 s after the car's stop (its 0x102.5 bit0
    answering the stop control), contactors open 2 s after the charger's stop."""
    b = bench()
    b.report_output = False
    transferring(b)
    seen = record_vehicle_frames(b)
    stop = b.now
    b.session.end(b.now)
    b.run(1.0)
    assert b.trace.last.faults == (
        "CHAdeMO: output current not confirmed at or below 5 A 0.5 s after stop (no fresh "
        "measurement since the vehicle's k / 0x102.5 bit0)",
    )
    fault_at = b.trace.first_time(lambda s: s.phase is VehiclePhase.FAULT)
    assert fault_at is not None
    assert 0.5 < fault_at - bit0_cleared_at(seen) <= 0.52
    b.run(stop + 1.9 - b.now)
    assert b.lines.outputs.contactors  # 1.9 s: still waiting
    b.run(0.3)
    opened = next(t for t, s in b.trace.steps if t > stop and not s.outputs.contactors)
    assert 2.0 <= opened - stop <= 2.1


def test_stale_low_current_is_not_low() -> None:
    """0 A reported more than 1 s ago does not let the contactors open after a stop."""
    b = bench()
    b.direction = 0
    transferring(b)
    b.report_output = False
    b.run(1.5)
    b.session.end(b.now)
    b.run(1.0)
    assert b.lines.outputs.contactors
    assert b.trace.last.phase is VehiclePhase.FAULT


def test_contactors_open_2_s_after_stop_even_if_current_never_falls() -> None:
    """A stage stuck at 100 A: charger fault at 0.5 s, and the contactors open at the 2 s limit."""
    b = bench()
    transferring(b)
    b.stuck_current_a = 100.0
    seen = record_vehicle_frames(b)
    stop = b.now
    b.session.end(b.now)
    b.run(0.9)
    assert b.trace.last.phase is VehiclePhase.FAULT
    assert b.trace.last.faults == (
        "CHAdeMO: output above 5 A 0.5 s after stop (timed from the vehicle's k / 0x102.5 bit0)",
    )
    fault_at = b.trace.first_time(lambda s: s.phase is VehiclePhase.FAULT)
    assert fault_at is not None
    assert 0.5 < fault_at - bit0_cleared_at(seen) <= 0.52
    assert b.lines.outputs.contactors
    b.run(stop + 2.2 - b.now)
    opened = next(t for t, s in b.trace.steps if t > stop and not s.outputs.contactors)
    assert 2.0 <= opened - stop <= 2.1
    status = CODEC.decode("CHG_109_Status", b.trace.frames(0x109)[-1][1]).signals
    assert status["StatusChargerFault"] == 1


def test_transfer_starts_and_holds_while_commanded_power_is_zero() -> None:
    """With transfer allowed and the stage at 0 A the session reaches and keeps energy transfer."""
    b = bench()
    b.direction = 0
    transferring(b)
    b.run(3.0)
    assert b.trace.last.phase is VehiclePhase.ENERGY_TRANSFER
    assert b.trace.last.faults == ()
    assert b.trace.last.charge_permitted


def test_withdrawn_allowance_stops_cleanly() -> None:
    """allow_energy_transfer(False) during transfer: stop control on, then a normal end."""
    b = bench()
    transferring(b)
    b.session.allow_energy_transfer(False)
    b.run(0.15)
    status = CODEC.decode("CHG_109_Status", b.trace.frames(0x109)[-1][1]).signals
    assert status["StatusStopControl"] == 1
    assert b.trace.last.phase is VehiclePhase.STOPPING
    end = b.run(4.0, until=lambda s: s.phase is VehiclePhase.ENDED).last
    assert end.phase is VehiclePhase.ENDED
    assert end.faults == ()
    assert not end.stop_requested
    assert b.lines.outputs == LineOutputs()


def test_discharge_offered_announces_a_nonzero_input_current() -> None:
    """Offering discharge without an input current announces the output rating, never 0 A."""
    session = ChademoSession(ChademoChargerConfig(discharge_offered=True))
    frames = session.tick(0.0, LineInputs(plugged=True, insulation_ok=True)).frames
    sent = next(f for f in frames if f.arbitration_id == 0x208)
    assert (
        CODEC.decode("CHG_208_DischargeStatus", sent.data).signals["AvailableInputCurrent"] == 125
    )
    with pytest.raises(ValueError, match="available_input_current_a"):
        ChademoChargerConfig(discharge_offered=True, available_input_current_a=0)


@given(payload=st.binary(min_size=8, max_size=8))
def test_any_0x200_stays_within_what_the_charger_offers(payload: bytes) -> None:
    """Whatever 0x200 says, the discharge limit stays within 0x208 byte 3 and the floor is a % or
    NaN."""
    session = plugged_session()
    for frame in (rec.ZE0_100, rec.ZE0_102_CHARGING, CanFrame(0x200, payload, False)):
        state = session.receive(frame, 0.05).state
    assert state.discharge_current_limit_a is not None
    assert 0 <= state.discharge_current_limit_a <= FAST.input_current_a
    level = state.discharge_soc_min_pct
    assert level is None or math.isnan(level) or 0 <= level <= 100
