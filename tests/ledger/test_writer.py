"""The storage thread (issue 15): durable writes leave the event loop, in order, batched, bounded.

A job that blocks on a ``threading.Event`` stands for an fsync that takes as long as the test
wants: no wall-clock bound is asserted, only what the event loop could do meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.telemetry import telemetry_message
from controller.ledger.accounting import Tariff
from controller.ledger.ledger import Ledger
from controller.ledger.recorder import ThreadedLedger
from controller.links import LinkStatus, SetpointAudit
from controller.storage.db import open_database
from controller.storage.writer import StorageFullError, StorageStoppedError, StorageThread
from hil.mosquitto import Mosquitto, find_mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    report,
    setpoint,
    until,
)
from tests.aggregator.test_audit import deliver

BOUND_S = 10.0  # generous: only a hang reaches it


def _append(seen: list[tuple[int, int]], n: tuple[int]) -> None:
    seen.append((n[0], threading.get_ident()))


class Gate:
    """A job that holds the storage thread (a slow fsync) until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.opened.wait(BOUND_S)

    async def held(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, BOUND_S)


@pytest.fixture
def storage() -> Iterator[StorageThread]:
    thread = StorageThread(capacity=5, name="storage-under-test")
    yield thread
    thread.stop(BOUND_S)


def test_jobs_run_in_order_on_the_storage_thread(storage: StorageThread) -> None:
    async def scenario() -> None:
        loop_thread = threading.get_ident()
        seen: list[tuple[int, int]] = []
        for n in range(3):
            storage.post("job", functools.partial(_append, seen, (n,)))
        result = await storage.call("read", lambda: len(seen))
        assert result == 3
        assert [n for n, _ in seen] == [0, 1, 2]
        assert all(ident != loop_thread for _, ident in seen)

        def fails() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await storage.call("write", fails)

    asyncio.run(scenario())


def test_the_loop_runs_while_a_write_waits_on_the_disk(storage: StorageThread) -> None:
    """Handing over never waits: with the thread held by a slow "fsync", posting returns at once
    and other tasks run to their end."""
    gate = Gate()

    async def scenario() -> None:
        storage.post("slow fsync", gate)
        await gate.held()
        seqs = [storage.post("cycle", lambda: None, droppable=True) for _ in range(3)]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(20):
                await asyncio.sleep(0)
                ticks += 1

        await ticker()
        assert ticks == 20
        assert storage.pending == 3  # still waiting behind the slow one
        assert seqs == sorted(seqs)
        gate.opened.set()
        await asyncio.wait_for(storage.processed(seqs[-1]), BOUND_S)
        assert storage.pending == 0

    asyncio.run(scenario())


def test_work_that_piles_up_behind_a_slow_write_is_one_batch(storage: StorageThread) -> None:
    """The slower the disk, the fewer commits: what waited goes in one batch (one commit)."""
    gate = Gate()
    hooks: list[int] = []
    storage.after_batch(lambda: hooks.append(storage.batches))

    async def scenario() -> None:
        storage.post("slow fsync", gate)
        await gate.held()
        last = 0
        for _ in range(4):
            last = storage.post("audit", lambda: None)
        gate.opened.set()
        await asyncio.wait_for(storage.processed(last), BOUND_S)

    asyncio.run(scenario())
    assert len(hooks) == 2  # the slow job's batch, then all four together


def test_a_full_queue_drops_the_oldest_droppable_work_first(storage: StorageThread) -> None:
    """Capacity 5: cycles go first, then (none left) the oldest kept job; each drop counted."""
    gate = Gate()
    ran: list[str] = []

    async def scenario() -> None:
        storage.post("slow fsync", gate)
        await gate.held()
        storage.post("cycle", lambda: ran.append("cycle-1"), droppable=True)
        for name in ("audit-1", "audit-2", "audit-3"):
            storage.post("audit", functools.partial(ran.append, name))
        storage.post("cycle", lambda: ran.append("cycle-2"), droppable=True)
        assert storage.pending == 5
        storage.post("audit", lambda: ran.append("audit-4"))  # drops cycle-1
        storage.post("audit", lambda: ran.append("audit-5"))  # drops cycle-2
        dropped_call = asyncio.ensure_future(storage.call("audit", lambda: "audit-1 again"))
        await asyncio.sleep(0)
        storage.post("audit", lambda: ran.append("audit-6"))  # none droppable: audit-1 goes
        assert storage.pending == 5
        gate.opened.set()
        await asyncio.wait_for(storage.drain(), BOUND_S)
        # The call was queued behind audit-1..5, so audit-1 (the oldest) was dropped, not it.
        assert await dropped_call == "audit-1 again"

    asyncio.run(scenario())
    assert ran == ["audit-3", "audit-4", "audit-5", "audit-6"]
    assert storage.dropped == {"cycle": 2, "audit": 2}


def test_a_call_dropped_from_a_full_queue_raises(storage: StorageThread) -> None:
    gate = Gate()

    async def scenario() -> None:
        storage.post("slow fsync", gate)
        await gate.held()
        first = asyncio.ensure_future(storage.call("read", lambda: 1))
        await asyncio.sleep(0)
        for _ in range(5):
            storage.post("audit", lambda: None)
        with pytest.raises(StorageFullError, match="storage queue full"):
            await first
        gate.opened.set()
        await asyncio.wait_for(storage.drain(), BOUND_S)

    asyncio.run(scenario())


def test_a_caller_cancelled_mid_request_ends_and_the_thread_carries_on(
    storage: StorageThread,
) -> None:
    """Cancelling a task that awaits a write ends the task at once; the thread later settles
    nothing on the cancelled future, and the next request works."""
    gate = Gate()

    async def scenario() -> None:
        storage.post("slow fsync", gate)
        await gate.held()
        waiting = asyncio.create_task(storage.call("read", lambda: "late"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, BOUND_S)
        processed = asyncio.create_task(storage.processed(storage.posted_seq))
        await asyncio.sleep(0)
        processed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await processed
        gate.opened.set()
        assert await asyncio.wait_for(storage.call("read", lambda: "next"), BOUND_S) == "next"

    asyncio.run(scenario())
    assert storage.failures == 0


def test_failing_writes_are_reported_and_logged_once(
    storage: StorageThread, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async def scenario() -> None:
        assert storage.failing is None
        for _ in range(3):
            storage.post("cycle", refuse, droppable=True)
        await asyncio.wait_for(storage.drain(), BOUND_S)

    asyncio.run(scenario())
    assert storage.failures == 3
    assert storage.failing == "OperationalError: database or disk is full"
    assert capsys.readouterr().out.count("storage write failed; the charger keeps running") == 1


def test_stop_writes_what_is_queued_then_refuses() -> None:
    storage = StorageThread(capacity=10)
    gate = Gate()
    ran: list[int] = []
    storage.post("slow fsync", gate)
    assert gate.entered.wait(BOUND_S)
    storage.post("cycle", lambda: ran.append(1))
    gate.opened.set()
    assert storage.stop(BOUND_S)
    assert ran == [1]
    with pytest.raises(StorageStoppedError):
        storage.post("cycle", lambda: None)


# -- the ledger on the storage thread ---------------------------------------------------------


def _audit(n: int) -> SetpointAudit:
    return SetpointAudit(
        at=dt.datetime(2026, 12, 2, 18, 0, n, tzinfo=dt.UTC),
        setpoint_id=f"sp-{n}",
        action="accepted",
        requested_w=-3000.0,
    )


def _ledger(path: Path) -> tuple[sqlite3.Connection, Ledger]:
    conn = open_database(path)
    return conn, Ledger(conn, tariff=Tariff("EUR", 0.3, 0.2), max_power_w=7400.0)


def test_no_statement_runs_on_the_event_loop_and_audit_lines_share_a_commit(
    tmp_path: Path,
) -> None:
    """Every SQL statement of the ledger runs on the storage thread; 20 audit lines that
    arrive while a commit waits on the disk are written by one COMMIT (one fsync)."""
    conn, ledger = _ledger(tmp_path / "ledger.sqlite")
    statements: list[tuple[str, int]] = []
    conn.set_trace_callback(lambda sql: statements.append((sql, threading.get_ident())))
    storage = StorageThread()
    threaded = ThreadedLedger(ledger, storage)
    gate = Gate()

    async def scenario() -> int:
        storage.post("slow fsync", gate)
        await gate.held()
        for n in range(20):
            threaded.audit(_audit(n))
        gate.opened.set()
        await asyncio.wait_for(threaded.flush(), BOUND_S)
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert storage.stop(BOUND_S)
    assert statements
    assert all(ident != loop_thread for _, ident in statements)
    assert sum(sql == "COMMIT" for sql, _ in statements) == 1
    rows = conn.execute("SELECT setpoint_id FROM ledger_audit ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [f"sp-{n}" for n in range(20)]
    conn.close()


def test_an_accepted_ack_waits_for_its_audit_line(tmp_path: Path) -> None:
    """While the disk holds the audit line of a setpoint, its ack (accepted) is not published;
    it goes out once the line was committed, and the line is then in the database."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    with Mosquitto(tmp_path) as broker:
        _ack_after_audit(tmp_path, broker)


def _ack_after_audit(tmp_path: Path, broker: Mosquitto) -> None:
    path = tmp_path / "ledger.sqlite"
    conn, ledger = _ledger(path)
    durable = DurableOutbox(conn)
    ledger.set_outbox(durable)
    storage = StorageThread()
    threaded = ThreadedLedger(ledger, storage)
    config = make_config(broker.port)
    link = MqttAggregatorLink(
        config.aggregator,
        topic_prefix=config.topic_prefix,
        client_id="c1-audit-first",
        connect_timeout_s=2.0,
        durable=durable,
        audit=threaded.audit,
        storage=storage,
    )
    gate = Gate()

    def audited(setpoint_id: str) -> bool:
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = reader.execute(
                "SELECT COUNT(*) FROM ledger_audit WHERE setpoint_id = ? AND action = 'accepted'",
                (setpoint_id,),
            ).fetchone()
        finally:
            reader.close()
        return bool(row[0])

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator, LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, BOUND_S)
            storage.post("slow fsync", gate)
            await gate.held()
            deliver(link, setpoint("sp-held", -3000.0))
            link.report(report("sp-held", -3000.0, source="aggregator"))
            # Published acks arrive within milliseconds; this one must not, for a while.
            await asyncio.sleep(0.5)
            assert aggregator.acks("sp-held") == []
            assert not audited("sp-held")
            gate.opened.set()
            ack = await aggregator.ack("sp-held", BOUND_S)
            assert ack["accepted"] is True
            assert audited("sp-held")

    asyncio.run(scenario())
    assert storage.stop(BOUND_S)
    conn.close()


def test_a_ledger_commit_spares_the_telemetry_sync_its_fsync(tmp_path: Path) -> None:
    """Telemetry is committed without an fsync; a ledger commit (FULL) after it syncs the WAL,
    so the periodic sync that follows writes nothing (SD cards: fewer fsyncs per hour)."""
    conn, ledger = _ledger(tmp_path / "ledger.sqlite")
    durable = DurableOutbox(conn)
    ledger.set_outbox(durable)
    body = json.loads(telemetry_message(report()).to_json())
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    durable.put("telemetry", body, sync=False)
    durable.sync()
    assert statements.count("COMMIT") == 2  # the put, and the sync's own FULL commit
    durable.put("telemetry", body, sync=False)
    ledger.queue_audit(_audit(1))
    ledger.commit_urgent()
    statements.clear()
    durable.sync()
    assert statements.count("COMMIT") == 0
    conn.close()
