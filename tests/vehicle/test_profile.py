"""The generic DBC profile (vehicle.protocol: dbc) against the example stationary pack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import can
import cantools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import ConfigError
from controller.links import LinkStatus
from controller.vehicle.canbus import CanLinkConfig, to_message
from controller.vehicle.factory import load_profile
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, Step
from controller.vehicle.lines import UnwiredLines
from controller.vehicle.link import CanVehicleLink
from controller.vehicle.profile import DbcProfileSession

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "bms" / "example-pack.yaml"
EXAMPLE_DBC = REPO / "config" / "bms" / "example-pack.dbc"


def _load_dbc() -> cantools.database.can.Database:
    db = cantools.database.load_file(str(EXAMPLE_DBC), strict=True)
    assert isinstance(db, cantools.database.can.Database)
    return db


DB = _load_dbc()
IDLE = LineInputs()

HEALTHY: dict[str, dict[str, float]] = {
    "BMS_Status": {
        "StateOfCharge": 55.0,
        "PackVoltage": 380.0,
        "PackCurrent": -20.0,  # the pack's sign: - = charging
        "ChargeEnable": 1,
        "DischargeEnable": 1,
        "StopRequest": 0,
        "AliveCounter": 0,
    },
    "BMS_Limits": {
        "MaxChargeCurrent": 50.0,
        "MaxDischargeCurrent": 40.0,
        "MaxChargeVoltage": 420.0,
        "MinDischargeVoltage": 300.0,
    },
    "BMS_Cells": {
        "MaxCellVoltage": 3.35,
        "MinCellVoltage": 3.3,
        "MaxCellTemperature": 30,
        "MinCellTemperature": 25,
    },
    "BMS_Faults": {"FaultCode": 0, "InsulationWarning": 0},
}


def frame(name: str, **changes: float) -> CanFrame:
    """A frame of the example pack: healthy values with ``changes`` (range not enforced)."""
    message = DB.get_message_by_name(name)
    data = message.encode({**HEALTHY[name], **changes}, strict=False)
    return CanFrame(message.frame_id, bytes(data), is_extended_id=False)


def session() -> DbcProfileSession:
    """A fresh session on the example profile."""
    return DbcProfileSession(*load_profile(EXAMPLE))


def healthy(s: DbcProfileSession, now: float = 0.0) -> Step:
    """Every message once, healthy."""
    step = s.tick(now, IDLE)
    for name in HEALTHY:
        step = s.receive(frame(name), now)
    return step


def test_healthy_pack_reads_as_energy_transfer_with_its_values() -> None:
    """All four messages fresh and plausible: ENERGY_TRANSFER with the pack's values and limits."""
    state = healthy(session(), 0.5).state
    assert state.phase is VehiclePhase.ENERGY_TRANSFER
    assert state.protocol == "dbc"
    assert state.observed_at_s == 0.5
    assert (state.soc_pct, state.pack_voltage_v) == (55.0, 380.0)
    assert state.pack_current_a == 20.0  # negated: + charges the pack
    assert (state.charge_current_limit_a, state.discharge_current_limit_a) == (50.0, 40.0)
    assert (state.charge_voltage_limit_v, state.discharge_voltage_min_v) == (420.0, 300.0)
    assert (state.cell_voltage_max_v, state.cell_voltage_min_v) == (3.35, 3.3)
    assert (state.battery_temp_max_c, state.battery_temp_min_c) == (30, 25)
    assert state.capacity_kwh == 30.0
    assert state.identity == "ExamplePack HV-30"
    assert state.charge_permitted
    assert state.discharge_permitted
    assert state.faults == ()


def test_phase_before_and_during_the_first_messages() -> None:
    """No frame yet: UNPLUGGED; some messages seen: HANDSHAKE; none sends anything."""
    s = session()
    first = s.tick(0.0, IDLE)
    assert first.state.phase is VehiclePhase.UNPLUGGED
    assert first.frames == ()
    step = s.receive(frame("BMS_Status"), 0.1)
    assert step.state.phase is VehiclePhase.HANDSHAKE
    assert not step.state.charge_permitted


def test_a_stale_message_is_a_fault_and_withdraws_its_values() -> None:
    """BMS_Status silent past its 1 s deadline: FAULT with the reason, SoC withdrawn; then fresh."""
    s = session()
    healthy(s, 0.0)
    assert s.next_deadline_s <= 1.01
    step = s.tick(1.05, IDLE)
    assert step.state.phase is VehiclePhase.FAULT
    assert "BMS_Status not received for more than 1 s" in step.state.faults
    assert step.state.soc_pct is None
    assert step.state.battery_temp_max_c == 30  # BMS_Cells (3 s) is still fresh
    assert any(e.kind is EventKind.FAULT and e.safety_relevant for e in step.events)
    assert not step.state.charge_permitted
    s.receive(frame("BMS_Status"), 1.1)
    step = s.receive(frame("BMS_Limits"), 1.1)
    assert step.state.phase is VehiclePhase.ENERGY_TRANSFER
    assert step.state.faults == ()


def test_a_pack_that_never_speaks_is_stale_but_not_in_a_session() -> None:
    """Silence from the start gives stale reasons but no session (no snapshot is published)."""
    s = session()
    s.tick(0.0, IDLE)
    step = s.tick(3.5, IDLE)
    assert step.state.phase is VehiclePhase.UNPLUGGED
    assert len(step.state.faults) == 4
    assert s.valid_frames == 0


def test_value_outside_the_dbc_range_is_a_fault_not_a_value() -> None:
    """SoC 150 % (DBC range 0..100) faults with the value and never reaches the snapshot."""
    s = session()
    healthy(s)
    step = s.receive(frame("BMS_Status", StateOfCharge=150.0), 0.1)
    assert step.state.soc_pct is None
    assert step.state.phase is VehiclePhase.FAULT
    assert any("implausible soc_pct" in f and "150" in f for f in step.state.faults)
    step = s.receive(frame("BMS_Status", StateOfCharge=60.0), 0.2)
    assert step.state.soc_pct == 60.0
    assert step.state.faults == ()


def test_value_below_the_profiles_minimum_is_a_fault() -> None:
    """A pack voltage below the profile's 250 V minimum is implausible, with the bounds named."""
    s = session()
    healthy(s)
    state = s.receive(frame("BMS_Status", PackVoltage=240.0), 0.1).state
    assert state.pack_voltage_v is None
    assert state.faults == (
        "implausible pack_voltage_v 240: expected 250 to 450 (BMS_Status.PackVoltage)",
    )


def test_bms_fault_code_is_a_fault_with_its_value_table_name() -> None:
    """FaultCode 3 faults with the DBC's name for it; 0 clears it."""
    s = session()
    healthy(s)
    state = s.receive(frame("BMS_Faults", FaultCode=3), 0.1).state
    assert state.faults == ("BMS: BMS fault code (over-temperature)",)
    assert state.phase is VehiclePhase.FAULT
    state = s.receive(frame("BMS_Faults", FaultCode=0, InsulationWarning=1), 0.2).state
    assert state.faults == ("BMS: insulation resistance low (InsulationWarning = 1)",)


def test_minimum_above_maximum_is_a_fault() -> None:
    """A lowest cell voltage above the highest cannot be true."""
    s = session()
    healthy(s)
    state = s.receive(frame("BMS_Cells", MinCellVoltage=3.4), 0.1).state
    assert state.faults == ("implausible cell_voltage_min_v 3.4 above cell_voltage_max_v 3.35",)


def test_flags_give_permissions_and_stop_request() -> None:
    """ChargeEnable 0 forbids charging only; StopRequest 1 is a stop request."""
    s = session()
    healthy(s)
    state = s.receive(frame("BMS_Status", ChargeEnable=0, StopRequest=1), 0.1).state
    assert not state.charge_permitted
    assert state.discharge_permitted
    assert state.stop_requested


def test_contactors_follow_permission_while_healthy() -> None:
    """The contactors output closes only when allowed and healthy, and opens on a stale message."""
    s = session()
    assert not healthy(s).outputs.contactors
    s.allow_energy_transfer(True)
    assert s.tick(0.1, IDLE).outputs.contactors
    assert not s.tick(1.2, IDLE).outputs.contactors


def test_end_stops_until_allowed_again() -> None:
    """end() reads ENDED with the contactors open; a later permission resumes."""
    s = session()
    healthy(s)
    s.allow_energy_transfer(True)
    step = s.end(0.1)
    assert step.state.phase is VehiclePhase.ENDED
    assert not step.outputs.contactors
    s.allow_energy_transfer(True)
    assert s.tick(0.2, IDLE).state.phase is VehiclePhase.ENERGY_TRANSFER


def test_charger_fault_holds() -> None:
    """A charger fault (its board lines failed) holds while the pack stays healthy."""
    s = session()
    healthy(s)
    s.charger_fault("charger board lines failed: gone", 0.1)
    step = healthy(s, 0.2)
    assert step.state.phase is VehiclePhase.FAULT
    assert step.state.faults == ("charger board lines failed: gone",)


def test_malformed_and_unknown_frames_change_nothing() -> None:
    """A short frame is counted with its reason; an unknown or 29-bit ID is dropped quietly."""
    s = session()
    before = healthy(s).state
    step = s.receive(CanFrame(0x711, b"\x01\x02", is_extended_id=False), 0.1)
    assert [e.kind for e in step.events] == [EventKind.MALFORMED_FRAME]
    assert s.malformed_frames == 1
    assert "2 bytes, expected 8" in s.last_malformed_reason
    assert step.state == before
    s.receive(CanFrame(0x715, bytes(8), is_extended_id=False), 0.1)
    s.receive(CanFrame(0x711, bytes(8), is_extended_id=True), 0.1)
    assert s.unknown_frames == 2


@given(
    frame_id=st.sampled_from([0x711, 0x712, 0x713, 0x714]),
    payload=st.binary(min_size=0, max_size=8),
)
def test_any_payload_is_state_a_malformed_frame_or_a_fault(frame_id: int, payload: bytes) -> None:
    """Any payload on any profile ID never crashes, and never yields an out-of-range value."""
    s = session()
    healthy(s)
    step = s.receive(CanFrame(frame_id, payload, is_extended_id=False), 0.1)
    state = step.state
    kinds = {e.kind for e in step.events}
    assert kinds <= {EventKind.MALFORMED_FRAME, EventKind.FAULT, EventKind.PHASE_CHANGED}
    assert state.soc_pct is None or 0 <= state.soc_pct <= 100
    assert state.pack_voltage_v is None or 250 <= state.pack_voltage_v <= 450
    for limit in (state.charge_current_limit_a, state.discharge_current_limit_a):
        assert limit is None or limit >= 0
    if state.phase is VehiclePhase.ENERGY_TRANSFER:
        assert state.faults == ()


# --- the profile file ---------------------------------------------------------------------------


def write_profile(tmp_path: Path, text: str, dbc: str | None = None) -> Path:
    """A profile (and optionally its own DBC) in a temporary folder."""
    (tmp_path / "pack.dbc").write_text(dbc if dbc is not None else EXAMPLE_DBC.read_text())
    path = tmp_path / "pack.yaml"
    path.write_text(text)
    return path


def profile_problems(path: Path) -> list[tuple[int | None, str, str]]:
    """Every problem load_profile reports, as (line, key, message)."""
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_example_profile_loads_with_its_dbc() -> None:
    """config/bms/example-pack.yaml loads; its DBC loads in cantools strictly."""
    profile, codec = load_profile(EXAMPLE)
    assert set(profile.messages) == set(codec.message_names)
    assert session().receive_ids == {(0x711, False), (0x712, False), (0x713, False), (0x714, False)}


def test_names_not_in_the_dbc_are_located_in_the_profile(tmp_path: Path) -> None:
    """A misspelt message and signal are reported at their lines, with what the DBC has."""
    path = write_profile(
        tmp_path,
        "dbc_file: pack.dbc\n"
        "messages:\n"
        "  BMS_Status:\n"
        "    deadline_s: 1\n"
        "    values:\n"
        "      soc_pct: StateOfCharg\n"
        "  BMS_Limit:\n"
        "    deadline_s: 1\n",
    )
    found = profile_problems(path)
    assert [(line, key) for line, key, _ in found] == [
        (6, "messages.BMS_Status.values.soc_pct"),
        (7, "messages.BMS_Limit"),
    ]
    assert "expected one of: StateOfCharge" in found[0][2]
    assert "BMS_Limits" in found[1][2]


def test_profile_schema_mistakes_are_all_reported(tmp_path: Path) -> None:
    """Unknown fields, a field fed twice and no SoC are all reported with their lines."""
    path = write_profile(
        tmp_path,
        "dbc_file: pack.dbc\n"
        "messages:\n"
        "  BMS_Status:\n"
        "    deadline_s: 1\n"
        "    values: {pack_voltage_v: PackVoltage, state_of_charge: StateOfCharge}\n",
    )
    found = profile_problems(path)
    assert found[0][:2] == (5, "messages.BMS_Status.values.state_of_charge")
    path = write_profile(
        tmp_path,
        "dbc_file: pack.dbc\n"
        "messages:\n"
        "  BMS_Status:\n"
        "    deadline_s: 1\n"
        "    values: {pack_voltage_v: PackVoltage}\n"
        "  BMS_Limits:\n"
        "    deadline_s: 0\n"
        "    values: {pack_voltage_v: MaxChargeVoltage}\n",
    )
    found = profile_problems(path)
    assert (7, "messages.BMS_Limits.deadline_s") in [(line, key) for line, key, _ in found]
    path = write_profile(
        tmp_path,
        "dbc_file: pack.dbc\n"
        "messages:\n"
        "  BMS_Status:\n"
        "    deadline_s: 1\n"
        "    values: {pack_voltage_v: PackVoltage}\n"
        "  BMS_Limits:\n"
        "    deadline_s: 1\n"
        "    values: {pack_voltage_v: MaxChargeVoltage}\n",
    )
    messages = [message for _, _, message in profile_problems(path)]
    assert any("found pack_voltage_v in BMS_Status and BMS_Limits" in m for m in messages)
    assert any("feeding soc_pct" in m for m in messages)


def test_signal_without_a_range_needs_one_in_the_profile(tmp_path: Path) -> None:
    """A signal the DBC leaves unbounded is refused unless the profile bounds it."""
    dbc = EXAMPLE_DBC.read_text().replace(
        'StateOfCharge : 0|16@1+ (0.1,0) [0|100] "%"', 'StateOfCharge : 0|16@1+ (0.1,0) [0|0] "%"'
    )
    base = "dbc_file: pack.dbc\nmessages:\n  BMS_Status:\n    deadline_s: 1\n    values:\n"
    path = write_profile(tmp_path, base + "      soc_pct: StateOfCharge\n", dbc)
    found = profile_problems(path)
    assert found[0][1] == "messages.BMS_Status.values.soc_pct"
    assert "has no range in the DBC" in found[0][2]
    path = write_profile(
        tmp_path, base + "      soc_pct: {signal: StateOfCharge, min: 0, max: 100}\n", dbc
    )
    profile, codec = load_profile(path)
    s = DbcProfileSession(profile, codec)
    state = s.receive(frame("BMS_Status", StateOfCharge=120.0), 0.0).state
    assert state.soc_pct is None
    assert any("expected 0 to 100" in f for f in state.faults)


def test_missing_dbc_file_is_located_at_dbc_file(tmp_path: Path) -> None:
    """A DBC file that is not there is reported at the profile's dbc_file key."""
    path = tmp_path / "pack.yaml"
    path.write_text(
        "dbc_file: nowhere.dbc\nmessages:\n  M:\n    deadline_s: 1\n    values: {soc_pct: S}\n"
    )
    found = profile_problems(path)
    assert found[0][:2] == (1, "dbc_file")
    assert "nowhere.dbc" in found[0][2]


# --- on a bus -----------------------------------------------------------------------------------


class ManualClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class TickedSession(DbcProfileSession):
    """The profile session, remembering the clock of its latest tick."""

    ticked_at_s: float | None = None

    def tick(self, now: float, inputs: LineInputs) -> Step:
        self.ticked_at_s = now
        return super().tick(now, inputs)


def test_profile_on_a_virtual_bus_goes_stale_when_the_pack_stops() -> None:
    """Over python-can's virtual bus the link reads the pack, and once the pack is silent the
    link, ticking on its own clock, faults past the 1 s deadline and not before it."""
    channel = f"pack-{uuid.uuid4().hex}"
    config = CanLinkConfig(
        interface="virtual", channel=channel, protocol="dbc", bitrate_bps=500_000
    )
    clock = ManualClock()
    ticked = TickedSession(*load_profile(EXAMPLE))
    link = CanVehicleLink(config, UnwiredLines(), session=ticked, clock=clock)
    wakes: list[float] = []

    async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.01)

    async def ticked_at(now_s: float) -> VehicleState:
        """Move the link's clock to ``now_s`` and wait for the link to tick at it."""
        clock.now_s = now_s
        await eventually(lambda: ticked.ticked_at_s == now_s)
        state = link.snapshot()
        assert state is not None
        return state

    def transferring(state: VehicleState | None) -> bool:
        return state is not None and state.phase is VehiclePhase.ENERGY_TRANSFER

    async def main() -> None:
        bus = can.Bus(interface="virtual", channel=channel)
        task = asyncio.create_task(link.run(lambda: wakes.append(clock())))
        try:
            await eventually(lambda: link.status is LinkStatus.UP)  # its bus is open
            for name in HEALTHY:  # the pack speaks once, at 0 s on the link's clock
                bus.send(to_message(frame(name)))
            await eventually(lambda: transferring(link.snapshot()))
            state = link.snapshot()
            assert state is not None
            assert state.soc_pct == 55.0
            woken = len(wakes)
            state = await ticked_at(0.9)
            assert state.phase is VehiclePhase.ENERGY_TRANSFER  # not stale yet
            assert len(wakes) == woken
            state = await ticked_at(1.1)
            assert state.phase is VehiclePhase.FAULT
            assert "BMS_Status not received for more than 1 s" in state.faults
            assert state.soc_pct is None
            assert wakes[woken:]  # the fault woke the loop, in the tick that found it
            assert all(t == 1.1 for t in wakes[woken:])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            bus.shutdown()

    asyncio.run(main())
