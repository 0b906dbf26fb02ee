"""A GB/T BMS that paces its transport packets slowly (issue 17, item 6), through GbtSession."""

from __future__ import annotations

import pytest

from controller.vehicle import j1939_tp as tp
from controller.vehicle.frames import CanFrame, EventKind, LineInputs, Step
from controller.vehicle.gbt27930 import GbtSession

from .test_gbt_session import CRM_ID, recognising, recorded_brm

TP_CM_FROM_BMS, TP_DT_FROM_BMS, TP_CM_FROM_CHARGER = 0x1CEC56F4, 0x1CEB56F4, 0x1CECF456
TICK_S = 0.05


def play_paced(session: GbtSession, pgn: int, payload: bytes, t: float, gap_s: float) -> list[Step]:
    """The BMS's RTS at ``t``, then a data packet every ``gap_s``; the session ticks every 50 ms
    and at its deadlines in between, as the link does. Returns every step."""
    steps: list[Step] = []
    rts = tp.Rts(len(payload), tp.packets_for(len(payload)), pgn)
    steps.append(session.receive(CanFrame(TP_CM_FROM_BMS, tp.encode_cm(rts), True), t))
    for packet in tp.split_payload(payload):
        arrival = t + gap_s
        while (at := min(t + TICK_S, session.next_deadline_s)) < arrival:
            t = max(at, t + 1e-3)
            steps.append(session.tick(t, LineInputs(plugged=True, insulation_ok=True)))
        t = arrival
        steps.append(session.receive(CanFrame(TP_DT_FROM_BMS, tp.encode_dt(packet), True), t))
    return steps


@pytest.mark.timeout(30)
@pytest.mark.parametrize("gap_s", [0.12, 0.15, 0.2])
def test_brm_paced_below_t1_completes_without_a_mid_window_cts(gap_s: float) -> None:
    """BRM packets 120-200 ms apart: one CTS, EndOfMsgAck, CRM 0xAA, no transport note."""
    session = recognising()
    steps = play_paced(session, 0x0200, recorded_brm(), 1.1, gap_s)
    frames = [f for s in steps for f in s.frames]
    to_bms = [f.data[0] for f in frames if f.arbitration_id == TP_CM_FROM_CHARGER]
    assert to_bms == [0x11, 0x13]  # CTS, EndOfMsgAck
    assert (frames[-1].arbitration_id, frames[-1].data[0]) == (CRM_ID, 0xAA)
    assert not [e for s in steps for e in s.events if e.kind is EventKind.TRANSPORT]
    assert steps[-1].state.identity == "L1NSPGH98NA196202"
