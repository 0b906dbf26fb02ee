"""The ledger on a real SQLite file: sessions, commits, restarts, trips, audit, days."""

from __future__ import annotations

import ast
import datetime as dt
import math
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.snapshots import VehiclePhase
from controller.ledger.ledger import RESUME_GRACE_S, Ledger
from controller.links import SetpointAudit
from controller.storage.db import LedgerError, open_database, transaction
from tests.ledger.support import (
    START,
    TARIFF,
    TZ,
    VIN,
    TableOutbox,
    inverter,
    make_ledger,
    read,
    report,
    vehicle,
)

SESSION_KEYS = {
    "session_id", "protocol", "vehicle_id", "started_at", "ended_at", "soc_start_pct",
    "soc_end_pct", "charged_kwh", "discharged_kwh", "energy_source", "import_cost",
    "export_value", "net_value", "currency", "end_reason", "receipt",
}  # fmt: skip


def totals(path: Path) -> dict[str, float]:
    return {r["channel"]: r["total_wh"] for r in read(path, "SELECT * FROM ledger_meters")}


def test_counter_session_closes_with_its_outbox_row_in_one_transaction(tmp_path: Path) -> None:
    """Counter energy goes to the session; unplugging closes it with the aggregator's body."""
    path = tmp_path / "ledger.sqlite"
    conn = open_database(path)
    outbox = TableOutbox(conn)
    ledger = Ledger(conn, tariff=make_ledger.__globals__["TARIFF"], max_power_w=7400, outbox=outbox)
    ledger.record(vehicle(VehiclePhase.HANDSHAKE), inverter(1000, 500), report(0))
    for i in range(1, 101):  # 10 s at 3.6 kW charging: 10 Wh
        ledger.record(vehicle(soc_pct=50 + i / 100), inverter(1000 + i / 10, 500), report(i / 10))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(1010, 500), report(10.1))
    sessions = read(path, "SELECT * FROM ledger_sessions")
    assert len(sessions) == 1
    s = sessions[0]
    assert s["ended_at"] is not None
    assert s["end_reason"] == "unplugged"
    assert math.isclose(s["charged_wh"], 10.0)
    assert s["outbox_id"] is not None
    rows = read(path, "SELECT * FROM test_outbox")
    assert [r["kind"] for r in rows] == ["session"]
    body = ast.literal_eval(rows[0]["body"])
    assert set(body) == SESSION_KEYS
    assert body["vehicle_id"] == VIN
    assert body["protocol"] == "gbt27930"
    assert body["energy_source"] == "inverter_counters"
    assert math.isclose(body["charged_kwh"], 0.010)
    assert body["discharged_kwh"] == 0.0
    assert math.isclose(body["import_cost"], 0.0025)
    assert body["net_value"] == body["export_value"] - body["import_cost"]
    assert body["soc_start_pct"] == 50.0
    assert body["soc_end_pct"] == 51.0
    assert dt.datetime.fromisoformat(body["ended_at"]).utcoffset() is not None


def test_a_failed_outbox_insert_keeps_the_session_open_in_the_file(tmp_path: Path) -> None:
    """Session close and outbox row are one transaction: neither is written without the other."""
    path = tmp_path / "ledger.sqlite"
    conn = open_database(path)
    outbox = TableOutbox(conn)
    ledger = Ledger(conn, tariff=make_ledger.__globals__["TARIFF"], max_power_w=7400, outbox=outbox)
    ledger.record(vehicle(), inverter(0, 0), report(0))
    outbox.fail = True
    with pytest.raises(LedgerError, match="outbox refused"):
        ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(5, 0), report(1))
    assert read(path, "SELECT ended_at FROM ledger_sessions")[0]["ended_at"] is None
    outbox.fail = False
    ledger.record(None, inverter(5, 0), report(2))  # the next commit retries the close
    assert read(path, "SELECT end_reason FROM ledger_sessions")[0]["end_reason"] == "unplugged"
    assert len(read(path, "SELECT * FROM test_outbox")) == 1


def test_cycles_are_not_committed_until_the_interval(tmp_path: Path) -> None:
    """No fsync per 100 ms cycle: counter energy waits for the periodic commit."""
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path, commit_interval_s=30)
    ledger.record(vehicle(), inverter(0, 0), report(0))  # session opened: committed
    for i in range(1, 200):  # 19.9 s
        ledger.record(vehicle(), inverter(i, 0), report(i / 10))
    assert totals(path)["charged"] == 0.0
    ledger.record(vehicle(), inverter(200, 0), report(30.0))
    assert totals(path)["charged"] == 200.0


def test_restart_after_a_kill_resumes_the_session_and_loses_no_counter_energy(
    tmp_path: Path,
) -> None:
    """Uncommitted counter energy is credited after a restart; the open session resumes."""
    path = tmp_path / "ledger.sqlite"
    first = make_ledger(path)
    first.record(vehicle(), inverter(100, 50), report(0))
    for i in range(1, 50):
        first.record(vehicle(), inverter(100 + i, 50 + i / 2), report(i / 10))
    session_id = first.open_session_id
    del first  # SIGKILL: nothing flushed
    second = make_ledger(path)
    assert second.open_session_id == session_id
    second.record(vehicle(), inverter(160, 80), report(0, start=START + dt.timedelta(seconds=8)))
    second.flush()
    rows = read(path, "SELECT * FROM ledger_sessions")
    assert len(rows) == 1
    assert rows[0]["charged_wh"] == 60.0
    assert rows[0]["discharged_wh"] == 30.0
    assert totals(path) == {"charged": 60.0, "discharged": 30.0}


def test_restart_with_another_vehicle_closes_the_old_session(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = make_ledger(path)
    first.record(vehicle(), inverter(0, 0), report(0))
    old = first.open_session_id
    second = make_ledger(path)
    second.record(vehicle(identity="OTHERVIN"), inverter(0, 0), report(5))
    assert second.open_session_id not in (None, old)
    closed = read(path, "SELECT end_reason FROM ledger_sessions WHERE session_id = ?", old)
    assert closed[0]["end_reason"] == "another vehicle (OTHERVIN)"


def test_restart_after_the_car_left_closes_after_the_grace(tmp_path: Path) -> None:
    """Unplugged seen only after a restart: closed once it lasts, at the last known time."""
    path = tmp_path / "ledger.sqlite"
    first = make_ledger(path)
    first.record(vehicle(), inverter(0, 0), report(0))
    second = make_ledger(path)
    later = START + dt.timedelta(hours=2)
    second.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(0, start=later))
    still_open = second.open_session_id
    assert still_open is not None  # the link may not have read the lines yet
    second.record(
        vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(RESUME_GRACE_S, start=later)
    )
    assert second.open_session_id is None
    row = read(path, "SELECT ended_at, end_reason FROM ledger_sessions")[0]
    assert row["end_reason"] == "unplugged while the controller was down"
    assert dt.datetime.fromisoformat(row["ended_at"]) == START


def test_integrated_power_where_the_inverter_has_no_counter(tmp_path: Path) -> None:
    """SunSpec 103 has only a discharge counter: charging is integrated from measured power."""
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    for i in range(0, 11):  # 1 s at 3600 W after the first reading: 1 Wh
        ledger.record(vehicle(), inverter(None, 20, power_w=3600, at_s=i / 10), report(i / 10))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(None, 20), report(1.05))
    row = read(path, "SELECT * FROM ledger_sessions")[0]
    assert math.isclose(row["charged_wh"], 1.0)
    assert row["energy_source"] == "integrated_power"


def test_stale_inverter_integrates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    for i in range(0, 100):
        ledger.record(vehicle(), inverter(None, None, power_w=3600, at_s=0), report(i / 10))
    assert ledger.totals_wh()[0] < 3.1 * 3600 / 3600  # only the first 3 s of freshness


def test_daily_totals_split_at_local_midnight(tmp_path: Path) -> None:
    """Energy goes to the local day it was read in (Europe/Amsterdam), committed at midnight."""
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    before = dt.datetime(2026, 11, 23, 23, 59, 55, tzinfo=TZ)
    for i in range(0, 101):  # 23:59:55 .. 00:00:05, 1 Wh a second
        ledger.record(vehicle(), inverter(0, i / 10), report(i / 10, start=before))
    days = {r["day"]: r["discharged_wh"] for r in read(path, "SELECT * FROM ledger_days")}
    # Read up to 23:59:59.9 (committed when the day changed), then from 00:00:00.0 on.
    assert math.isclose(days["2026-11-23"], 4.9)
    ledger.flush()
    days = {r["day"]: r["discharged_wh"] for r in read(path, "SELECT * FROM ledger_days")}
    assert math.isclose(days["2026-11-24"], 5.1)
    assert ledger.discharged_wh_on(dt.date(2026, 11, 24)) == pytest.approx(5.1)


def test_trips_recorded_once_and_cleared_also_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    ledger.record(vehicle(), inverter(0, 0), report(0))
    for i in range(1, 20):
        ledger.record(vehicle(), inverter(0, 0), report(i / 10, faults=("emergency stop",)))
    again = make_ledger(path)  # restarted while the cause is still there
    again.record(vehicle(), inverter(0, 0), report(3, faults=("emergency stop",)))
    trips = read(path, "SELECT * FROM ledger_trips")
    assert [(t["cause"], t["cleared_at"]) for t in trips] == [("emergency stop", None)]
    assert trips[0]["session_id"] == ledger.open_session_id
    again.record(vehicle(), inverter(0, 0), report(4))
    assert read(path, "SELECT cleared_at FROM ledger_trips")[0]["cleared_at"] is not None


def test_audit_entries_are_committed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    at = START.astimezone(dt.UTC)
    ledger.audit(SetpointAudit(at, "sp-1", "accepted", requested_w=-3000))
    ledger.audit(SetpointAudit(at, None, "rejected", reason="not JSON"))
    ledger.audit(SetpointAudit(at, "sp-1", "applied", requested_w=-3000, applied_w=-2500,
                               reason="soc_floor"))  # fmt: skip
    rows = read(path, "SELECT setpoint_id, action, applied_w, reason FROM ledger_audit")
    assert [tuple(r) for r in rows] == [
        ("sp-1", "accepted", None, None),
        (None, "rejected", None, "not JSON"),
        ("sp-1", "applied", -2500.0, "soc_floor"),
    ]


def test_a_locked_file_fails_the_commit_and_the_next_one_catches_up(tmp_path: Path) -> None:
    """A commit that fails keeps everything in memory; nothing is lost or counted twice."""
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path, commit_interval_s=1)
    ledger._conn.execute("PRAGMA busy_timeout = 10")
    ledger.record(vehicle(), inverter(0, 0), report(0))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(LedgerError, match="commit failed"):
        ledger.record(vehicle(), inverter(7, 0), report(1.5))
    ledger.audit(SetpointAudit(START, "sp-2", "accepted"))  # never raises
    blocker.execute("ROLLBACK")
    blocker.close()
    ledger.record(vehicle(), inverter(9, 0), report(3))
    assert totals(path)["charged"] == 9.0
    assert len(read(path, "SELECT * FROM ledger_audit")) == 1


def test_counter_reset_and_rejected_jump_are_logged_in_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    ledger.record(vehicle(), inverter(5000, 0), report(0))
    ledger.record(vehicle(), inverter(5002, 0), report(1))
    ledger.record(vehicle(), inverter(3, 0), report(2))  # inverter replaced
    ledger.record(vehicle(), inverter(4, 0), report(3))
    ledger.record(vehicle(), inverter(900_000, 0), report(4))  # misread
    ledger.record(vehicle(), inverter(900_001, 0), report(5))
    ledger.flush()
    assert totals(path)["charged"] == 4.0
    events = [r["event"] for r in read(path, "SELECT event FROM ledger_counter_events")]
    assert events == ["base", "base", "reset", "rejected"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    conn = open_database(path)
    with transaction(conn):
        conn.execute("INSERT INTO schema_versions VALUES ('ledger', 99)")
    with pytest.raises(LedgerError, match="newer controller"):
        Ledger(conn, tariff=make_ledger.__globals__["TARIFF"], max_power_w=7400)


@settings(max_examples=40, deadline=None)
@given(
    moves=st.lists(
        st.tuples(
            st.sampled_from(["rise", "rise", "rise", "reset", "jump", "restart", "gap"]),
            st.floats(0, 2),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_lifetime_totals_never_go_backwards(moves: list[tuple[str, float]]) -> None:
    """Whatever the counter and the daemon do, committed and in-memory totals only grow."""
    # A fresh database per example (a function-scoped tmp_path is shared by all examples).
    with tempfile.TemporaryDirectory(prefix="v2g-ledger-") as directory:
        path = Path(directory) / "ledger.sqlite"
        connections: list[sqlite3.Connection] = []

        def start() -> Ledger:
            """The ledger as a (re)started daemon opens it."""
            connections.append(open_database(path))
            return Ledger(connections[-1], tariff=TARIFF, max_power_w=7400, commit_interval_s=1)

        try:
            ledger = start()
            raw, at_s, last = 1000.0, 0.0, (0.0, 0.0)
            committed = (0.0, 0.0)
            for kind, amount in moves:
                at_s += 0.5
                if kind == "rise":
                    raw += amount
                elif kind == "reset":
                    raw = amount
                elif kind == "jump":
                    raw += 1e7
                elif kind == "restart":
                    ledger = start()
                elif kind == "gap":
                    ledger.record(None, None, report(at_s))
                    continue
                ledger.record(vehicle(), inverter(raw, raw / 2), report(at_s))
                now = ledger.totals_wh()
                assert now[0] >= last[0]
                assert now[1] >= last[1]
                last = now
                on_disk = totals(path)
                disk = (on_disk.get("charged", 0.0), on_disk.get("discharged", 0.0))
                assert disk[0] >= committed[0]
                assert disk[1] >= committed[1]
                committed = disk
        finally:
            for conn in connections:
                conn.close()
