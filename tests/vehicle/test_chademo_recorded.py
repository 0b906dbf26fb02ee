"""Issue 17: the two whole recorded Leaf sessions replayed against the charger session.

The car's frames are the recorded ones at their recorded times; the power stage reports the
recorded charger's 0x109 output every 100 ms (a daemon cycle); the charger allows transfer when
the recorded charger locked the connector and stops when it set stop control. k follows the car's
0x102.5 bit0 (the car pulls k with its permission and releases it with its stop).
"""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

import pytest

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession
from controller.vehicle.frames import CanFrame, LineInputs, LineOutputs, Step
from tests.ledger.support import inverter, make_ledger, read, report

from .fixtures.chademo_sessions import ZE0_SESSION, ZE1_SESSION, RecordedSession

# The recorded chargers' 0x108/0x208 (ZE0: 500 V, 15 A, discharge 15 A, 250 V; ZE1: 500 V, 31 A,
# no discharge), with an insulation test ending about 1 s before the car closed its contactor.
CONFIGS = {
    "ZE0": ChademoChargerConfig(
        available_output_current_a=15,
        discharge_offered=True,
        available_input_voltage_v=500,
        available_input_current_a=15,
        lower_threshold_voltage_v=250,
        insulation_test_s=3.7,
    ),
    "ZE1": ChademoChargerConfig(available_output_current_a=31, insulation_test_s=0.3),
}
SESSIONS = [ZE0_SESSION, ZE1_SESSION]
TICK_S = 0.05
CYCLE_S = 0.1


@dataclasses.dataclass
class Replay:
    """What the charger did while the recorded session played."""

    session: ChademoSession
    steps: list[tuple[float, Step]]
    reports: list[tuple[float, VehicleState]]  # the snapshot a daemon cycle read, every 100 ms


def _vehicle_stream(rec: RecordedSession) -> list[tuple[float, CanFrame]]:
    """Each vehicle ID every 100 ms from its first frame, with its latest recorded payload."""
    stream: list[tuple[float, CanFrame]] = []
    for fid in dict.fromkeys(f.arbitration_id for _, f in rec.vehicle):
        changes = [(t, f) for t, f in rec.vehicle if f.arbitration_id == fid]
        times = [t for t, _ in changes]
        n = 0
        while (at := round(changes[0][0] + n * CYCLE_S, 3)) <= rec.end_s:
            stream.append((at, changes[bisect.bisect_right(times, at + 0.005) - 1][1]))
            n += 1
    return sorted(stream, key=lambda item: item[0])


def _output_at(rec: RecordedSession, at: float) -> tuple[float, float]:
    index = bisect.bisect_right([t for t, _, _ in rec.output], at) - 1
    _, volts, amps = rec.output[max(0, index)]
    return volts, amps


def replay(rec: RecordedSession) -> Replay:
    """Play ``rec`` against a fresh session (ticks every 50 ms, reports every 100 ms)."""
    session = ChademoSession(CONFIGS[rec.name])
    out = Replay(session, [], [])
    frames = _vehicle_stream(rec)
    k = False
    permitted_once = False
    allowed = stopped = False
    i = 0
    n = 0
    while (now := round(n * 0.01, 3)) <= rec.end_s:
        n += 1
        while i < len(frames) and frames[i][0] <= now:
            at, frame = frames[i]
            i += 1
            if frame.arbitration_id == 0x102:
                enabled = bool(frame.data[5] & 1)
                permitted_once = permitted_once or enabled
                k = enabled  # pulled with 0x102.5 bit0, released with it
            out.steps.append((at, session.receive(frame, at)))
        if not allowed and now >= rec.locked_s:
            allowed = True
            session.allow_energy_transfer(True)
        if not stopped and now >= rec.stop_s:
            stopped = True
            out.steps.append((now, session.end(now)))
        if round(now / CYCLE_S, 6).is_integer():
            session.set_output(*_output_at(rec, now), now)
        if round(now / TICK_S, 6).is_integer():
            out.steps.append(
                (now, session.tick(now, LineInputs(plugged=True, insulation_ok=True, k=k)))
            )
        if round(now / CYCLE_S, 6).is_integer():
            out.reports.append((now, out.steps[-1][1].state))
    assert permitted_once
    return out


@pytest.mark.parametrize("rec", SESSIONS, ids=lambda r: r.name)
def test_recorded_sessions_replay_to_a_normal_end(rec: RecordedSession) -> None:
    """Start to stop without a fault: transfer, the stop within 0.5 s of the car's bit0 (the ZE1
    charger took 0.6 s from its own stop control), welding detection, unlock at <= 10 V."""
    run = replay(rec)
    faults = {f for _, s in run.steps for f in s.state.faults}
    assert faults == set()
    phases = [s.state.phase for _, s in run.steps]
    assert VehiclePhase.ENERGY_TRANSFER in phases
    assert phases[-1] is VehiclePhase.ENDED
    assert run.steps[-1][1].outputs == LineOutputs()
    # The connector unlocked only once the recorded output was at most 10 V.
    unlocked_at = next(
        t for t, s in run.steps if t > rec.stop_s and not s.outputs.lock and s.outputs.d1
    )
    assert _output_at(rec, unlocked_at)[0] <= 10


@pytest.mark.parametrize("rec", SESSIONS, ids=lambda r: r.name)
def test_recorded_sessions_publish_the_real_soc_first(rec: RecordedSession) -> None:
    """The start-up values (0x100 byte 6 = F0 with 03, then 1 % for 2 s) are never published: the
    first SoC is the car's real one, once it has given its permission."""
    run = replay(rec)
    published = [(t, s.state.soc_pct) for t, s in run.steps if s.state.soc_pct is not None]
    assert published[0][1] == rec.soc_pct
    assert {soc for _, soc in published} == {rec.soc_pct}
    bit0_at = next(t for t, f in rec.vehicle if f.arbitration_id == 0x102 and f.data[5] & 1)
    assert published[0][0] >= bit0_at


@pytest.mark.parametrize("rec", SESSIONS, ids=lambda r: r.name)
def test_the_ledger_opens_the_session_with_the_first_plausible_soc(
    rec: RecordedSession, tmp_path: Path
) -> None:
    """The ledger opens the session at the handshake (SoC unknown) and records the first
    plausible SoC as the session's start, not the start-up 1.2 % / 1 %."""
    run = replay(rec)
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    for at, state in run.reports:
        ledger.record(state, inverter(0, 0), report(at))  # CHAdeMO: no identity
    end = rec.end_s + 0.1
    unplugged = VehicleState(observed_at_s=end, phase=VehiclePhase.UNPLUGGED, protocol="chademo")
    ledger.record(unplugged, inverter(0, 0), report(end))
    rows = read(path, "SELECT soc_start_pct, soc_end_pct FROM ledger_sessions")
    assert [(r["soc_start_pct"], r["soc_end_pct"]) for r in rows] == [(rec.soc_pct, rec.soc_pct)]
    assert run.reports[0][1].soc_pct is None  # opened before any SoC was plausible
