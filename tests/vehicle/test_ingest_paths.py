"""The per-frame fast paths keep their meaning: lazy snapshots and the repeated-payload decode.

A session builds its ``VehicleState`` only when a step's state is read (or before its inputs
change); the link releases superseded steps. These tests pin that the snapshot is always the one an
eager build at the step would have given, including ``observed_at_s`` and the output measurement
that was current at the step.
"""

from __future__ import annotations

import can
import pytest

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import ProtocolError
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession, ChademoState
from controller.vehicle.dbc import DbcCodec, ImplausibleValueError
from controller.vehicle.frames import CanFrame, LineInputs, LineOutputs
from controller.vehicle.link import CanVehicleLink
from hil.vehicle.traffic import CHADEMO_STATUS, chademo_discharging_round, encode_round

CODEC = DbcCodec.chademo()
HELD = LineInputs(plugged=True, insulation_ok=True, k=True)


def vehicle_frames(*, request_a: float = 0, charged_rate: float = 62) -> list[CanFrame]:
    """One round of a discharging CHAdeMO car's frames."""
    signals = chademo_discharging_round(request_a=request_a, charged_rate=charged_rate)
    return encode_round(CODEC, signals)


def status_frame(**changes: float) -> CanFrame:
    return CanFrame(0x102, CODEC.encode("VEH_102_Status", {**CHADEMO_STATUS, **changes}), False)


def transferring_session() -> ChademoSession:
    """A CHAdeMO session in energy transfer (insulation test 0 s), discharge offered."""
    session = ChademoSession(ChademoChargerConfig(discharge_offered=True, insulation_test_s=0.0))
    session.allow_energy_transfer(True)
    now = 0.0
    for _ in range(6):
        for frame in vehicle_frames():
            session.receive(frame, now)
        session.tick(now, HELD)
        now += 0.05
    assert session.state is ChademoState.ENERGY_TRANSFER
    return session


class _Lines:
    def open(self) -> None:
        """Nothing to acquire."""

    def read(self) -> LineInputs:
        return HELD

    def write(self, outputs: LineOutputs) -> None:
        """Outputs go nowhere."""

    def close(self) -> None:
        """Nothing to release."""


def message(frame: CanFrame) -> can.Message:
    return can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False)


def test_a_held_step_keeps_the_state_of_its_own_time() -> None:
    """A step read after later frames and a new output measurement still shows its own time."""
    session = transferring_session()
    session.set_output(400.0, 10.0, 1.0)
    held = session.receive(status_frame(ChargedRate=50), 1.0)
    later = session.receive(status_frame(ChargedRate=60), 1.2)
    session.set_output(300.0, 10.0, 1.3)
    assert held.state.observed_at_s == 1.0
    assert held.state.soc_pct == 50.0
    assert held.state.pack_voltage_v == 400.0
    assert later.state.observed_at_s == 1.2
    assert later.state.soc_pct == 60.0
    assert later.state.pack_voltage_v == 400.0  # the 300 V came after this step


def test_the_link_snapshot_after_a_frame_reflects_that_frame() -> None:
    """The link's snapshot carries the newest frame's values and time, built when asked."""
    times = iter([2.0, 2.1, 2.2, 2.3])
    session = transferring_session()
    link = CanVehicleLink(
        CanLinkConfig(interface="virtual", channel="t", protocol="chademo"),
        _Lines(),
        session=session,
        clock=lambda: next(times),
    )
    link._on_message(message(status_frame(ChargedRate=40)))
    first = link.snapshot()
    link._on_message(message(status_frame(ChargedRate=41)))
    link._on_message(message(status_frame(ChargedRate=42)))
    second = link.snapshot()
    assert isinstance(first, VehicleState)
    assert isinstance(second, VehicleState)
    assert (first.observed_at_s, first.soc_pct) == (2.0, 40.0)
    assert (second.observed_at_s, second.soc_pct) == (2.2, 42.0)
    assert second.phase is VehiclePhase.ENERGY_TRANSFER


def test_the_link_snapshot_is_not_changed_by_a_later_output_measurement() -> None:
    """update_output after a frame leaves the snapshot as the frame's step made it."""
    session = transferring_session()
    session.set_output(400.0, 10.0, 2.0)
    link = CanVehicleLink(
        CanLinkConfig(interface="virtual", channel="t", protocol="chademo"),
        _Lines(),
        session=session,
        clock=lambda: 2.0,
    )
    link._on_message(message(status_frame()))
    link.update_output(350.0, 10.0)
    state = link.snapshot()
    assert state is not None
    assert state.pack_voltage_v == 400.0


def test_a_permission_change_still_wakes_the_loop() -> None:
    """Charging permission withdrawn by a frame wakes the control loop at once."""
    session = transferring_session()
    link = CanVehicleLink(
        CanLinkConfig(interface="virtual", channel="t", protocol="chademo"),
        _Lines(),
        session=session,
        clock=lambda: 3.0,
    )
    wakes: list[int] = []
    link._wake = lambda: wakes.append(1)
    link._on_message(message(status_frame()))
    assert not wakes
    link._on_message(message(status_frame(StatusChargingEnabled=0)))
    assert wakes
    state = link.snapshot()
    assert state is not None
    assert not state.charge_permitted


def test_a_repeated_payload_decodes_to_the_same_values() -> None:
    """The repeated-payload shortcut gives what a full decode gives; a new payload is decoded."""
    codec = DbcCodec.chademo()
    first = status_frame(ChargedRate=50)
    a = codec.decode_frame(0x102, first.data)
    b = codec.decode_frame(0x102, bytes(bytearray(first.data)))  # equal, not the same object
    assert b.signals == a.signals == DbcCodec.chademo().decode_frame(0x102, first.data).signals
    c = codec.decode_frame(0x102, status_frame(ChargedRate=51).data)
    assert c.signals["ChargedRate"] == 51


def test_a_rejected_payload_is_rejected_every_time() -> None:
    """Errors are never remembered as results: an implausible payload raises on every frame."""
    codec = DbcCodec.chademo()
    good = status_frame().data
    codec.decode_frame(0x102, good)
    bad = bytearray(good)
    bad[1:3] = b"\xff\xff"  # TargetBatteryVoltage 65535 V: outside the DBC range
    for _ in range(2):
        with pytest.raises(ImplausibleValueError):
            codec.decode_frame(0x102, bytes(bad))
    with pytest.raises(ProtocolError):
        codec.decode_frame(0x102, good[:4])
    assert codec.decode_frame(0x102, good).signals["ChargedRate"] == 62
