"""The durable store-and-forward outbox: order, ids, transactions, bounds, reopening."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from controller.aggregator.durable_outbox import DurableOutbox, OutboxRecord, OutboxRecordError
from controller.aggregator.messages import TOPIC_MODELS
from controller.config import parse_config
from controller.storage.db import LedgerError, open_database, transaction

AT = dt.datetime(2025, 3, 14, 18, 30, tzinfo=dt.UTC)


def telemetry(n: int = 0) -> dict[str, Any]:
    return {
        "at": (AT + dt.timedelta(seconds=10 * n)).isoformat(),
        "state": "discharging",
        "source": "aggregator",
        "setpoint_id": "sp-1",
        "enabled": True,
        "commanded_power_w": -2000.0 - n,
        "measured_power_w": None,
        "soc_pct": 60.0,
        "voltage_v": 380.0,
        "binding_limit": None,
        "limits": [],
        "faults": [],
        "flexibility": {
            "max_charge_power_w": 7400.0,
            "max_discharge_power_w": 7400.0,
            "soc_floor_pct": 40.0,
            "energy_above_floor_wh": 9000.0,
        },
    }


def event(n: int = 0) -> dict[str, Any]:
    return {"at": AT, "kind": "fault_raised", "message": f"fault {n}", "fault": f"f{n}"}


def session(n: int = 0) -> dict[str, Any]:
    return {
        "session_id": f"s-{n}",
        "protocol": "chademo",
        "vehicle_id": None,
        "started_at": AT,
        "ended_at": AT + dt.timedelta(hours=3),
        "soc_start_pct": 80.0,
        "soc_end_pct": 50.0,
        "charged_kwh": 0.0,
        "discharged_kwh": 10.5,
        "energy_source": "inverter_counters",
        "import_cost": 0.0,
        "export_value": 3.15,
        "net_value": 3.15,
        "currency": "EUR",
        "end_reason": "vehicle stop request",
    }


BODIES = {"telemetry": telemetry, "event": event, "session": session}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def open_outbox(path: Path, **kwargs: Any) -> DurableOutbox:
    return DurableOutbox(open_database(path), **kwargs)


def drain(outbox: DurableOutbox) -> list[OutboxRecord]:
    sent: list[OutboxRecord] = []
    while records := outbox.peek(3):
        sent.extend(records)
        outbox.mark_published(records)
    return sent


def test_records_come_out_oldest_first_with_their_id_in_the_payload(tmp_path: Path) -> None:
    """Mixed kinds keep their order of creation; each payload is its body plus record_id and
    validates against the topic's schema model."""
    outbox = open_outbox(tmp_path / "l.sqlite")
    made = [
        outbox.put(kind, BODIES[kind](n), sync=kind != "telemetry")
        for n, kind in enumerate(["telemetry", "event", "telemetry", "session", "telemetry"])
    ]
    assert len(outbox) == 5
    assert [r.record_id for r in outbox] == made
    sent = drain(outbox)
    assert [r.record_id for r in sent] == made
    assert [r.kind for r in sent] == ["telemetry", "event", "telemetry", "session", "telemetry"]
    for record in sent:
        payload = json.loads(record.payload())
        assert list(payload)[:2] == ["type", "record_id"]
        assert payload["record_id"] == record.record_id
        TOPIC_MODELS[record.kind].model_validate_json(record.payload())
    assert len(outbox) == 0
    assert outbox.peek() == []


def test_a_record_stays_until_marked_published(tmp_path: Path) -> None:
    """peek does not remove; only mark_published does (at least once)."""
    outbox = open_outbox(tmp_path / "l.sqlite")
    first = outbox.put("event", event())
    assert [r.record_id for r in outbox.peek()] == [first]
    assert [r.record_id for r in outbox.peek()] == [first]
    second = outbox.put("event", event(1))
    assert [r.record_id for r in outbox.peek(5, after_seq=outbox.peek()[0].seq)] == [second]
    outbox.mark_published(outbox.peek())
    assert [r.record_id for r in outbox.peek(5)] == [second]


def test_ids_are_unique_across_reopen_and_a_recreated_database(tmp_path: Path) -> None:
    """Ids never repeat: not after a reopen, not after every row was deleted, not in a new file."""
    path = tmp_path / "l.sqlite"
    seen: set[str] = set()
    for _ in range(3):
        outbox = open_outbox(path)
        for n in range(5):
            seen.add(outbox.put("event", event(n)))
        drain(outbox)
        seen.add(outbox.put("event", event()))  # after the table was emptied
        drain(outbox)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    outbox = open_outbox(path)
    seen.add(outbox.put("event", event()))
    assert len(seen) == 3 * 6 + 1


def test_records_survive_a_reopen_in_order(tmp_path: Path) -> None:
    """What was stored before a restart is there after it, oldest first, with the same ids."""
    path = tmp_path / "l.sqlite"
    first = open_outbox(path)
    made = [first.put("telemetry", telemetry(n), sync=False) for n in range(3)]
    made.append(first.put("session", session()))
    first.sync()
    first._conn.close()
    again = open_outbox(path)
    assert [r.record_id for r in again] == made
    later = again.put("event", event())
    assert [r.record_id for r in drain(again)] == [*made, later]


def test_insert_joins_the_callers_transaction(tmp_path: Path) -> None:
    """insert() neither begins nor commits: a rolled-back caller leaves nothing, a committed one
    leaves the row."""
    conn = open_database(tmp_path / "l.sqlite")
    conn.execute("CREATE TABLE ledger_sessions (session_id TEXT)")
    outbox = DurableOutbox(conn)

    def write_then_fail() -> None:
        with transaction(conn):
            conn.execute("INSERT INTO ledger_sessions VALUES ('s-0')")
            outbox.insert("session", session())
            assert outbox.busy  # its row may still be rolled back: nothing is published
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert len(outbox) == 0
    assert conn.execute("SELECT COUNT(*) FROM ledger_sessions").fetchone()[0] == 0
    with transaction(conn):
        conn.execute("INSERT INTO ledger_sessions VALUES ('s-1')")
        record_id = outbox.insert("session", session(1))
    assert [r.record_id for r in outbox] == [record_id]
    assert not outbox.busy


def test_schema_can_be_ensured_inside_the_ledgers_transaction(tmp_path: Path) -> None:
    """ensure_schema joins an open transaction, and is idempotent."""
    conn = open_database(tmp_path / "l.sqlite")
    with transaction(conn):
        DurableOutbox.ensure_schema(conn)
    DurableOutbox.ensure_schema(conn)
    assert (
        conn.execute("SELECT version FROM schema_versions WHERE component = 'outbox'").fetchone()[0]
        == 1
    )


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("sessions", session(), "kind: expected one of telemetry, event, session"),
        ("session", [1, 2], "expected a dict body, found list"),
        ("session", {**session(), "charged_kwh": float("nan")}, "not JSON"),
        ("session", {**session(), "currency": "eur"}, "currency: String should match"),
        ("session", {**session(), "started_at": dt.datetime(2025, 3, 14)}, "started_at"),
        ("session", {**session(), "record_id": "x"}, "record_id: Extra inputs"),
        ("event", {**event(), "kind": "nope"}, "kind: Input should be"),
        ("telemetry", {"at": object()}, "not JSON"),
    ],
)
def test_a_bad_record_is_refused_with_a_reason(
    tmp_path: Path, kind: str, body: Any, message: str
) -> None:
    """A record that does not fit its kind is refused where it is made, saying why, and
    nothing is stored."""
    outbox = open_outbox(tmp_path / "l.sqlite")
    with pytest.raises(OutboxRecordError, match=message):
        outbox.put(kind, body)
    with pytest.raises(ValueError, match=message), transaction(outbox._conn):
        outbox.insert(kind, body)
    assert len(outbox) == 0


def test_over_the_record_bound_telemetry_goes_first_then_events_never_sessions(
    tmp_path: Path,
) -> None:
    """Over max_records the oldest telemetry is dropped first, then events; sessions stay."""
    outbox = open_outbox(tmp_path / "l.sqlite", max_records=100)
    sessions = [outbox.put("session", session(n)) for n in range(10)]
    events = [outbox.put("event", event(n)) for n in range(30)]
    for n in range(200):
        outbox.put("telemetry", telemetry(n), sync=False)
    assert len(outbox) <= 100
    assert outbox.count("session") == 10
    assert outbox.count("event") == 30
    kept = [r for r in outbox if r.kind == "telemetry"]
    assert [json.loads(r.body)["commanded_power_w"] for r in kept] == [
        -2000.0 - n for n in range(200 - len(kept), 200)
    ]  # the newest telemetry survived
    dropped_telemetry = outbox.dropped()["telemetry"]
    assert dropped_telemetry == 200 - len(kept)
    # Only sessions and events left: events go next, the sessions still stay.
    for n in range(80):
        outbox.put("event", event(100 + n))
    assert len(outbox) <= 100
    assert [r.record_id for r in outbox if r.kind == "session"] == sessions
    assert events[0] not in {r.record_id for r in outbox}
    assert outbox.count("telemetry") == 0
    assert set(outbox.dropped()) == {"telemetry", "event"}


def test_sessions_are_dropped_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    """A table of nothing but sessions over the bound loses its oldest sessions, counted."""
    outbox = open_outbox(tmp_path / "l.sqlite", max_records=10)
    made = [outbox.put("session", session(n)) for n in range(12)]
    assert len(outbox) <= 10
    assert [r.record_id for r in outbox] == made[12 - len(outbox) :]
    assert outbox.dropped() == {"session": 12 - len(outbox)}


def test_age_bound_drops_old_telemetry_and_events_but_never_sessions(tmp_path: Path) -> None:
    """prune() drops telemetry and events older than max_age_s; sessions are kept."""
    clock = Clock()
    outbox = open_outbox(tmp_path / "l.sqlite", max_age_s=3600.0, wall=clock)
    old_session = outbox.put("session", session())
    outbox.put("telemetry", telemetry(), sync=False)
    outbox.put("event", event())
    clock.now += 3000
    young = outbox.put("telemetry", telemetry(1), sync=False)
    clock.now += 1000
    assert outbox.prune() == {"telemetry": 1, "event": 1}
    assert [r.record_id for r in outbox] == [old_session, young]
    assert outbox.prune() == {}


def test_drops_are_reported_once_in_a_records_dropped_event(tmp_path: Path) -> None:
    """report_drops turns the counts into one event (at the end of the queue) and resets them;
    the counts survive a reopen until reported."""
    path = tmp_path / "l.sqlite"
    outbox = open_outbox(path, max_records=10)
    for n in range(15):
        outbox.put("telemetry", telemetry(n), sync=False)
    outbox.sync()
    dropped = outbox.dropped()["telemetry"]
    outbox._conn.close()
    again = open_outbox(path, max_records=10)
    assert again.dropped() == {"telemetry": dropped}
    drain(again)  # (with a full table the event itself would push out one more record)
    record_id = again.report_drops(AT)
    assert record_id is not None
    [last] = list(again)
    assert last.record_id == record_id
    body = json.loads(last.body)
    assert (body["kind"], body["dropped"]) == ("records_dropped", dropped)
    assert f"{dropped} telemetry" in body["message"]
    assert again.dropped() == {}
    assert again.report_drops(AT) is None


def test_sync_and_listeners(tmp_path: Path) -> None:
    """Listeners hear of every record; sync() after NORMAL commits does one FULL commit."""
    outbox = open_outbox(tmp_path / "l.sqlite")
    heard: list[int] = []
    outbox.add_listener(lambda: heard.append(1))
    outbox.put("telemetry", telemetry(), sync=False)
    outbox.put("event", event())
    assert len(heard) == 2
    outbox.put("telemetry", telemetry(), sync=False)
    outbox.sync()
    outbox.sync()  # nothing unsynced: no write
    syncs = outbox._conn.execute("SELECT value FROM outbox_meta WHERE key = 'syncs'").fetchone()
    assert syncs[0] == 1


def test_a_failing_database_is_a_ledger_error(tmp_path: Path) -> None:
    """A write that SQLite refuses (here: a caller's transaction open on another connection
    holds the write lock) is a LedgerError with the reason, not a traceback."""
    path = tmp_path / "l.sqlite"
    outbox = open_outbox(path)
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    other.execute("PRAGMA busy_timeout = 50")
    other.execute("BEGIN IMMEDIATE")
    outbox._conn.execute("PRAGMA busy_timeout = 50")
    with pytest.raises(LedgerError, match="outbox: cannot store the event record: database is"):
        outbox.put("event", event())
    other.execute("ROLLBACK")
    other.close()


def test_bounds_come_from_the_config() -> None:
    """from_config takes aggregator.outbox_max_records and outbox_max_age_s."""
    config = parse_config(
        "site: {site_id: s, charger_id: c}\n"
        "vehicle: {protocol: chademo}\n"
        "inverter: {transport: tcp, tcp: {host: 192.0.2.1}}\n"
        "aggregator:\n"
        "  broker: {host: b.example}\n"
        "  outbox_max_records: 5000\n"
        "  outbox_max_age_s: 86400\n"
    )
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER)")
    outbox = DurableOutbox.from_config(conn, config.aggregator)
    assert (outbox.max_records, outbox.max_age_s) == (5000, 86400.0)
    with pytest.raises(ValueError, match="max_records: expected at least 1, found 0"):
        DurableOutbox(conn, max_records=0)
