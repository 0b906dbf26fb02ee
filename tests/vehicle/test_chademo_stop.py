"""Issue 17: the CHAdeMO stop sequence: the 0.5 s current check, welding detection, the lock."""

from __future__ import annotations

import math

from controller.core.snapshots import VehiclePhase
from controller.vehicle.chademo import UNLOCK_TIMEOUT_S, ChademoSession, ChademoState
from controller.vehicle.frames import LineOutputs
from controller.vehicle.protocols.chademo import WELDING_DETECTION_S
from hil.vehicle.chademo_ev import ChademoVehicleConfig

from .test_chademo_session import (
    CODEC,
    ChademoBench,
    bench,
    bit0_cleared_at,
    record_vehicle_frames,
    session_of,
    transferring,
)


def lock_bits(b: ChademoBench, after_s: float) -> list[tuple[float, int]]:
    """0x109 byte 5 bit 2 (connector locked) as sent after ``after_s``."""
    return [
        (t, int(CODEC.decode("CHG_109_Status", data).signals["StatusConnectorLocked"]))
        for t, data in b.trace.frames(0x109)
        if t > after_s
    ]


class Watch:
    """Follows the bench step by step: the lock output against the measured output voltage."""

    def __init__(self, b: ChademoBench) -> None:
        self.b = b
        self.unlocked_live: list[tuple[float, float]] = []  # lock off with > 10 V on the output
        self.unlocked_at: float | None = None

    def run(self, duration_s: float) -> None:
        b = self.b
        end = b.now + duration_s
        while b.now < end - 1e-9:
            b.run(0.01)
            if not b.lines.outputs.lock:
                if self.unlocked_at is None:
                    self.unlocked_at = b.now
                if b.output_voltage_v > 10.0:
                    self.unlocked_live.append((b.now, b.output_voltage_v))


# Item 3: the connector stays locked while the output is live.


def test_connector_unlocks_only_once_the_output_is_at_most_10_v() -> None:
    """A normal stop: the lock holds until a measurement taken after the contactors opened reads
    <= 10 V (the plain 500 ms after d2 left 33 V on the output), and a 0x109 with bit 2 clear goes
    out before d1 goes off."""
    b = bench()
    transferring(b)
    stop = b.now
    b.session.end(b.now)
    watch = Watch(b)
    watch.run(3.0)
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()
    assert watch.unlocked_live == []
    assert watch.unlocked_at is not None
    d2_off = next(t for t, s in b.trace.steps if t > stop and not s.outputs.d2)
    d1_off = next(t for t, s in b.trace.steps if t > stop and not s.outputs.d1)
    assert watch.unlocked_at - d2_off > 0.5  # later than the plain 500 ms
    assert d1_off - d2_off >= 0.5
    bits = lock_bits(b, stop)
    assert bits[0][1] == 1
    assert 0 in {bit for t, bit in bits if t < d1_off}
    assert b.lines.outputs == LineOutputs()


def test_output_that_stays_live_keeps_the_connector_locked_with_a_fault() -> None:
    """A stage that keeps reporting 400 V after the contactors opened: never unlocked; 10 s later a
    fault with its reason, d1 off, still locked; released once the output is measured dead."""
    b = bench()
    transferring(b)
    stuck = 400.0

    def live_output() -> None:
        b.session.set_output(stuck, 0.0, b.now)

    b.report_output = False
    b.session.end(b.now)
    watch = Watch(b)
    opened: float | None = None
    while b.now < 30.0 and session_of(b).state is not ChademoState.ENDED:
        live_output()
        watch.run(0.01)
        if opened is None and not b.lines.outputs.contactors:
            opened = b.now
    assert opened is not None
    assert watch.unlocked_at is None
    state = b.trace.last
    assert state.phase is VehiclePhase.FAULT
    assert state.faults == (
        "CHAdeMO: output not confirmed at or below 10 V 10 s after the contactors opened "
        "(400 V measured); the connector stays locked",
    )
    assert UNLOCK_TIMEOUT_S < b.now - opened <= UNLOCK_TIMEOUT_S + 0.02
    assert b.lines.outputs == LineOutputs(lock=True)
    # Unplugged (plug detect says so) with the output still live: the lock stays, no new session.
    b.lines.plugged = False
    for _ in range(50):
        live_output()
        watch.run(0.01)
    assert b.lines.outputs == LineOutputs(lock=True)
    assert watch.unlocked_at is None
    # The output measured dead at last: the lock lets go, and the unplugged session resets.
    stuck = 4.0
    for _ in range(5):
        live_output()
        watch.run(0.01)
    assert b.lines.outputs == LineOutputs()
    assert session_of(b).state is ChademoState.IDLE


def test_unknown_output_voltage_never_unlocks() -> None:
    """No measurement after the contactors opened (the last one predates them): still locked."""
    b = bench()
    transferring(b)
    b.session.end(b.now)
    b.run(3.0, until=lambda _s: session_of(b).state is ChademoState.STOP_D1)
    b.report_output = False
    b.run(UNLOCK_TIMEOUT_S + 1.0)
    assert b.lines.outputs == LineOutputs(lock=True)
    assert any(
        "(no fresh measurement); the connector stays locked" in f for f in b.trace.last.faults
    )


# Item 4: welding detection is a result.


def test_no_welding_detection_result_is_a_fault_and_the_lines_still_go_off() -> None:
    """The car never reports 0x102.5 bit3 = 1 after the stop: 4 s after the output reached 5 A the
    session faults with that reason, opens its contactors and d2, and unlocks only a dead output."""
    b = bench(vehicle_config=ChademoVehicleConfig(welding_detection_s=math.inf))
    transferring(b)
    b.session.end(b.now)
    b.run(1.0, until=lambda _s: session_of(b).state is ChademoState.STOP_VEHICLE_CONTACTOR)
    low_at = b.now
    watch = Watch(b)
    watch.run(WELDING_DETECTION_S + 2.0)
    state = b.trace.last
    assert state.phase is VehiclePhase.FAULT
    assert state.faults == (
        "CHAdeMO 0x102 byte 5 bit 3: vehicle contactor not confirmed open (welding detection) "
        "within 4 s of the output at or below 5 A",
    )
    opened = next(t for t, s in b.trace.steps if t > low_at and not s.outputs.contactors)
    assert WELDING_DETECTION_S < opened - low_at <= WELDING_DETECTION_S + 0.02
    assert not b.lines.outputs.d2
    assert watch.unlocked_live == []
    status = CODEC.decode("CHG_109_Status", b.trace.frames(0x109)[-1][1]).signals
    assert status["StatusChargingSystemFault"] == 1


def test_welding_detection_within_4_s_is_a_normal_end() -> None:
    """The car's bit 3 after 2.9 s (the recorded ZE0's time): normal end, no fault."""
    b = bench(vehicle_config=ChademoVehicleConfig(welding_detection_s=2.9))
    transferring(b)
    b.session.end(b.now)
    b.run(6.0, until=lambda s: s.phase is VehiclePhase.ENDED)
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()


# Item 5: "<= 5 A within 0.5 s" is timed from the vehicle's stop, with measurements after it.


def test_current_check_is_timed_from_the_vehicles_stop() -> None:
    """The charger's stop control, then the car's bit0; the stage falls to 0 A 0.4 s after the
    car's bit0, more than 0.5 s after the charger's own stop (the recorded ZE1 charger: 0.6 s after
    its stop control, 0.33 s after the car's bit0): no fault, a normal end."""
    b = bench()
    transferring(b)
    seen = record_vehicle_frames(b)
    stop = b.now
    b.session.end(b.now)
    b.stuck_current_a = 30.0
    fell_at: float | None = None
    while b.now < stop + 3.0 and b.trace.last.phase is not VehiclePhase.ENDED:
        b.run(0.01)
        cleared = [t for t, f in seen if f.arbitration_id == 0x102 and not f.data[5] & 1]
        if fell_at is None and cleared and b.now - cleared[0] >= 0.4:
            fell_at = b.now
            b.stuck_current_a = None
    assert fell_at is not None
    assert fell_at - stop > 0.5
    assert b.trace.last.phase is VehiclePhase.ENDED
    assert b.trace.last.faults == ()


def test_a_measurement_from_before_the_stop_is_not_the_current_after_it() -> None:
    """The stage at 50 A just before the stop and then silent (the daemon stopping): the fault says
    the current is unconfirmed, not that it was above 5 A; and a low reading from before the stop
    never lets the charging flag clear."""
    b = bench()
    transferring(b)
    seen = record_vehicle_frames(b)
    b.report_output = False
    b.session.set_output(390.0, 50.0, b.now)
    b.session.end(b.now)
    b.run(1.0)
    assert b.trace.last.faults == (
        "CHAdeMO: output current not confirmed at or below 5 A 0.5 s after stop (no fresh "
        "measurement since the vehicle's k / 0x102.5 bit0)",
    )
    assert bit0_cleared_at(seen) < b.now

    quiet = bench()
    quiet.direction = 0  # 0 A before the stop
    transferring(quiet)
    quiet.report_output = False
    quiet.session.set_output(390.0, 2.0, quiet.now)
    quiet.session.end(quiet.now)
    quiet.run(0.3)
    assert session_of(quiet).state is ChademoState.STOP_CURRENT
    status = CODEC.decode("CHG_109_Status", quiet.trace.frames(0x109)[-1][1]).signals
    assert status["StatusCharging"] == 1  # 0x109.5 bit0 waits for a reading after the stop
    quiet.report_output = True
    quiet.run(0.1)
    assert session_of(quiet).state is not ChademoState.STOP_CURRENT


def test_k_released_is_the_reference_too() -> None:
    """k released by the car after the charger's stop (bit0 still set) starts the 0.5 s."""
    b = bench()
    transferring(b)
    b.stuck_current_a = 30.0
    session = session_of(b)
    assert isinstance(session, ChademoSession)
    b.session.end(b.now)
    b.run(0.05)
    b.lines.k = False
    released = b.now
    b.run(0.6)
    fault_at = b.trace.first_time(lambda s: s.phase is VehiclePhase.FAULT)
    assert fault_at is not None
    assert 0.5 < fault_at - released <= 0.52
