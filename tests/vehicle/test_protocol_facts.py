"""The protocol facts (controller/vehicle/protocols/) agree with the DBC files, message by message.

The sessions and the simulated vehicles share these constants, so a wrong one would be wrong on
both sides of every other test; here each is checked against dbc/ (an independent description
of the wire): every CAN id equals the frame id of the DBC message of that name, every DBC message
has its constant, every PGN and period equals the one the DBC's message comment gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType, ModuleType, SimpleNamespace

import cantools
import pytest
from cantools.database.can import Database, Message

from controller.vehicle.protocols import chademo, gbt27930, j1939

DBC_DIR = Path(__file__).resolve().parents[2] / "dbc"


def _load(name: str) -> Database:
    db = cantools.database.load_file(DBC_DIR / name, strict=True)
    assert isinstance(db, Database)
    return db


CHADEMO_DB = _load("chademo.dbc")
GBT_DB = _load("gbt27930.dbc")
# "CHM, PGN 0x2600, 250 ms: ..." in each GB/T message's comment.
GBT_COMMENT = re.compile(r"^(?P<name>\w+), PGN 0x(?P<pgn>[0-9A-F]{4}), (?P<ms>\d+) ms\b")


def id_constants(facts: ModuleType | SimpleNamespace) -> dict[str, int]:
    """The module's CAN id constants: ``*_ID`` and ``TP_*_FROM_*``."""
    return {
        name: value
        for name, value in vars(facts).items()
        if isinstance(value, int) and (name.endswith("_ID") or name.startswith("TP_"))
    }


def id_mismatches(facts: ModuleType | SimpleNamespace, db: Database) -> list[str]:
    """Every way the facts' CAN ids disagree with the DBC: a constant not named in DBC_NAMES, a
    frame id that differs, a DBC message with no constant (a transported one needs its PGN)."""
    problems: list[str] = []
    names: dict[int, str] = dict(facts.DBC_NAMES)
    for constant, value in id_constants(facts).items():
        if value not in names:
            problems.append(f"{constant} = 0x{value:X} has no DBC name in DBC_NAMES")
    transported = set(getattr(facts, "TP_MESSAGES", {}).values())
    for value, name in names.items():
        try:
            message = db.get_message_by_name(name)
        except KeyError:
            problems.append(f"0x{value:X}: no DBC message {name}")
            continue
        if message.frame_id != value:
            problems.append(f"{name}: constant 0x{value:X}, DBC 0x{message.frame_id:X}")
    problems.extend(
        f"DBC message {message.name} has no constant"
        for message in db.messages
        if message.name not in names.values() and message.name not in transported
    )
    return problems


def test_chademo_ids_are_the_dbc_frame_ids() -> None:
    """Every CHAdeMO id constant is the frame id of its DBC message, and every message has one."""
    assert id_mismatches(chademo, CHADEMO_DB) == []


def test_gbt_ids_are_the_dbc_frame_ids() -> None:
    """Every GB/T id constant is the frame id of its DBC message, and every message has one."""
    assert id_mismatches(gbt27930, GBT_DB) == []


def test_a_wrong_id_constant_is_reported() -> None:
    """A constant one bit off (BCL's priority) fails the check, naming the message."""
    wrong = 0x141056F4
    facts = SimpleNamespace(BCL_ID=wrong, DBC_NAMES=MappingProxyType({wrong: "BCL"}))
    assert "BCL: constant 0x141056F4, DBC 0x181056F4" in id_mismatches(facts, GBT_DB)


def test_chademo_senders_match_the_dbc() -> None:
    """VEHICLE_IDS are the messages the DBC has the vehicle send; CHARGER_IDS the charger's."""
    by_sender: dict[str, set[int]] = {"EV": set(), "CHARGER": set()}
    for message in CHADEMO_DB.messages:
        (sender,) = message.senders
        by_sender[sender].add(message.frame_id)
        assert not message.is_extended_frame, message.name
    assert by_sender["EV"] == chademo.VEHICLE_IDS
    assert by_sender["CHARGER"] == chademo.CHARGER_IDS


def test_gbt_bms_ids_are_what_the_bms_sends_as_frames() -> None:
    """BMS_IDS (what the charger listens to) are the BMS's single frames and transport frames."""
    bms = {
        m.frame_id
        for m in GBT_DB.messages
        if m.senders == ["BMS"] and m.name not in gbt27930.TP_MESSAGES.values()
    }
    assert bms == gbt27930.BMS_IDS


@pytest.mark.parametrize("message", GBT_DB.messages, ids=lambda m: m.name)
def test_gbt_ids_carry_the_sender_and_receiver_addresses(message: Message) -> None:
    """Every GB/T id is PDU1 from its sender's address to the other side's (GB/T 27930 clause 7)."""
    (sender,) = message.senders
    source, destination = (
        (gbt27930.BMS_ADDRESS, gbt27930.CHARGER_ADDRESS)
        if sender == "BMS"
        else (gbt27930.CHARGER_ADDRESS, gbt27930.BMS_ADDRESS)
    )
    assert message.is_extended_frame
    assert message.frame_id & 0xFF == source
    assert message.frame_id >> 8 & 0xFF == destination


def _gbt_comments() -> dict[str, re.Match[str]]:
    found = {}
    for message in GBT_DB.messages:
        if (match := GBT_COMMENT.match(message.comment or "")) is not None:
            assert match["name"] == message.name
            found[message.name] = match
    return found


def test_gbt_pgns_are_the_dbc_pgns() -> None:
    """Every PGN constant equals the PF of its DBC message's id and the PGN its comment gives;
    only the optional BMV/BMT/BSP (no DBC message: never decoded) have none."""
    comments = _gbt_comments()
    pgns = {n[4:]: v for n, v in vars(gbt27930).items() if n.startswith("PGN_")}
    for name, pgn in pgns.items():
        if pgn in gbt27930.OPTIONAL_TP_PGNS:
            assert name not in {m.name for m in GBT_DB.messages}
            continue
        frame_id = GBT_DB.get_message_by_name(name).frame_id
        assert (frame_id >> 16 & 0xFF) << 8 == pgn, name
        assert int(comments[name]["pgn"], 16) == pgn, name
    assert set(gbt27930.TP_MESSAGES) <= set(pgns.values())
    for pgn, name in gbt27930.TP_MESSAGES.items():
        assert pgns[name] == pgn


def test_gbt_periods_are_the_dbc_periods() -> None:
    """Every message's period equals the one in its DBC comment, and every message has one."""
    comments = _gbt_comments()
    assert set(gbt27930.PERIODS_S) == set(comments)
    for name, period_s in gbt27930.PERIODS_S.items():
        assert period_s * 1000 == pytest.approx(int(comments[name]["ms"])), name


def test_gbt_transport_ids_are_j1939_tp_ids() -> None:
    """The GB/T transport ids are J1939-21 TP.CM / TP.DT between the charger and the BMS."""
    charger, bms = gbt27930.CHARGER_ADDRESS, gbt27930.BMS_ADDRESS
    prio = j1939.TP_PRIORITY
    assert j1939.pdu1_id(prio, j1939.TP_CM_PF, charger, bms) == gbt27930.TP_CM_FROM_BMS
    assert j1939.pdu1_id(prio, j1939.TP_DT_PF, charger, bms) == gbt27930.TP_DT_FROM_BMS
    assert j1939.pdu1_id(prio, j1939.TP_CM_PF, bms, charger) == gbt27930.TP_CM_FROM_CHARGER
