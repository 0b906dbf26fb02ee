"""The store-and-forward outbox: telemetry, events and session records that must reach the
aggregator even across an outage of hours and a power cut, in the ledger's SQLite file.

A record is a *kind* (``telemetry``, ``event``, ``session``) and a JSON body (validated against
``controller.aggregator.messages.RECORD_BODIES`` on the way in, so a bad record fails where it is
made, inside its writer's transaction). The link publishes the body with ``record_id`` added on
the topic named like the kind, oldest first, and deletes the row once the broker acknowledged it
(QoS 1): delivery is at least once, in order of creation.

Record ids: ``<writer>-<seq>``. ``seq`` is the row's ``INTEGER PRIMARY KEY AUTOINCREMENT``, so it
is never reused in a database, even once every row was published and deleted. ``writer`` is 64
random bits drawn each time an outbox is opened (each daemon start). A power cut may roll back
commits made at ``synchronous=NORMAL`` (see below) and so reuse their ``seq``, and a deleted
database starts again at 1, but never under the same ``writer``: an id is unique forever, and an
aggregator may drop any record whose id it has seen.

Durability (the "fsync policy"):

* sessions and events are committed with ``synchronous=FULL`` (``put(..., sync=True)``, or the
  caller's ledger transaction for ``insert``) before they can be published;
* telemetry is committed with ``synchronous=NORMAL`` (``put(..., sync=False)``): no fsync per
  record. The next FULL commit (an event, a session, any ledger write, or ``sync()``, which the
  link calls every ``TELEMETRY_SYNC_S``) makes it durable too. SQLite's WAL recovers a prefix of
  the commits, so a power cut loses at most the telemetry of the last ``TELEMETRY_SYNC_S``
  before it, and never an event or a session, nor anything older;
* deleting published rows runs at NORMAL (``relaxed_sync``): a delete a power cut undoes only
  means a redelivery under the same id.

Bounds (``max_records``, ``max_age_s``; config ``aggregator.outbox_max_records`` and
``outbox_max_age_s``): telemetry and events older than ``max_age_s`` are dropped (``prune``);
session records are never dropped for age, since they carry money. When the table holds more
than ``max_records`` rows it is cut to 99 % of that (so the cut is not repeated on every
insert): the oldest telemetry first, then the oldest events, and the oldest sessions only when
nothing else is left. Every drop is counted per kind in the database (in the same transaction as
the delete); ``report_drops`` turns the counts into one ``records_dropped`` event.

Use one ``DurableOutbox`` per database and process (the app shares it between the ledger and the
link) and one thread: it works on the caller's connection and never awaits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import pydantic

from controller.aggregator.messages import RECORD_BODIES, EventBody, with_record_id
from controller.config import AggregatorConfig
from controller.storage.db import (
    LedgerError,
    relaxed_sync,
    schema_version,
    set_schema_version,
    transaction,
)

COMPONENT: Final = "outbox"
SCHEMA_VERSION: Final = 1
KINDS: Final = ("telemetry", "event", "session")
# Dropped first to last when the record count is over its bound.
DROP_ORDER: Final = ("telemetry", "event", "session")
AGED_KINDS: Final = ("telemetry", "event")  # sessions are never dropped for age
DEFAULT_MAX_RECORDS: Final = 100_000  # 7 days of 10 s telemetry is 60 480, plus events
DEFAULT_MAX_AGE_S: Final = 7 * 24 * 3600.0
TELEMETRY_SYNC_S: Final = 30.0  # the most telemetry a power cut may take, in seconds

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"  # AUTOINCREMENT: a seq is never reused
    " writer TEXT NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('telemetry', 'event', 'session')),"
    " created_at REAL NOT NULL,"  # unix seconds, for the age bound
    " body TEXT NOT NULL)",
    # kind alone: SQLite appends the rowid, so this also orders each kind by seq.
    "CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind)",
    "CREATE INDEX IF NOT EXISTS outbox_created ON outbox (kind, created_at)",
    # Drop counts not yet reported ('dropped.<kind>') and the sync() counter ('syncs').
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One stored record, as the link publishes it."""

    seq: int
    record_id: str
    kind: str
    created_at: float  # unix seconds
    body: str  # JSON object, without record_id

    def payload(self) -> bytes:
        """The published JSON: ``type``, ``record_id``, then the body's fields."""
        return with_record_id(self.record_id, self.body.encode(), self.kind)


class OutboxRecordError(LedgerError, ValueError):
    """A record that cannot be stored: an unknown kind, or a body that does not fit it."""


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _validated(kind: str, body: object) -> str:
    """The body as canonical JSON, or OutboxRecordError saying what is wrong with it."""
    model = RECORD_BODIES.get(kind)
    if model is None:
        expected = ", ".join(KINDS)
        raise OutboxRecordError(f"outbox record kind: expected one of {expected}, found {kind!r}")
    if not isinstance(body, Mapping):
        found = type(body).__name__
        raise OutboxRecordError(f"outbox {kind} record: expected a dict body, found {found}")
    try:
        text = json.dumps(dict(body), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise OutboxRecordError(f"outbox {kind} record: not JSON: {exc}") from None
    try:
        message = model.model_validate_json(text)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise OutboxRecordError(f"outbox {kind} record: {problems}") from None
    return message.to_json().decode()


class DurableOutbox:
    """Records waiting for the aggregator, in SQLite; see the module docstring."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_records < 1:
            raise ValueError(f"max_records: expected at least 1, found {max_records}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s: expected more than 0, found {max_age_s:g}")
        self._conn = conn
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._wall = wall
        self.writer = secrets.token_hex(8)
        self._listeners: list[Callable[[], None]] = []
        self._unsynced = False
        self.ensure_schema(conn)
        # An estimate between exact counts: a caller's rolled-back insert leaves it one high,
        # which only makes the next bound check count exactly.
        self._count = self._exact_count()

    @classmethod
    def from_config(cls, conn: sqlite3.Connection, aggregator: AggregatorConfig) -> DurableOutbox:
        """The outbox with the bounds of ``aggregator.outbox_max_records`` and ``_max_age_s``."""
        return cls(
            conn, max_records=aggregator.outbox_max_records, max_age_s=aggregator.outbox_max_age_s
        )

    @staticmethod
    def ensure_schema(conn: sqlite3.Connection) -> None:
        """Create the outbox tables if missing and record the schema version."""
        try:
            version = schema_version(conn, COMPONENT)
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"outbox schema version {version} is newer than this software "
                    f"({SCHEMA_VERSION}); refusing to touch it"
                )
            if version == SCHEMA_VERSION:
                return
            # Inside the ledger's own schema transaction, join it; otherwise one of our own.
            scope = contextlib.nullcontext(conn) if conn.in_transaction else transaction(conn)
            with scope:
                for statement in _SCHEMA:
                    conn.execute(statement)
                set_schema_version(conn, COMPONENT, SCHEMA_VERSION)
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot create its tables: {exc}") from exc

    # -- writing ------------------------------------------------------------------------------

    def insert(self, kind: str, body: Mapping[str, Any]) -> str:
        """Add a record inside the caller's open transaction (``db.transaction``); returns its
        id. Neither begins nor commits: the caller's commit makes it durable, its rollback
        leaves nothing. Raises OutboxRecordError (a ValueError and a LedgerError) for an unknown
        kind or a body that does not fit, LedgerError when the database fails."""
        text = _validated(kind, body)
        try:
            cursor = self._conn.execute(
                "INSERT INTO outbox (writer, kind, created_at, body) VALUES (?, ?, ?, ?)",
                (self.writer, kind, self._wall(), text),
            )
            seq = cursor.lastrowid
            self._count += 1
            if self._count > self.max_records:
                self._cut_to_bound()
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot store the {kind} record: {exc}") from exc
        for listener in self._listeners:
            listener()
        return f"{self.writer}-{seq}"

    def put(self, kind: str, body: Mapping[str, Any], *, sync: bool = True) -> str:
        """Add a record in a transaction of its own; returns its id. ``sync=False`` commits
        without an fsync (telemetry: see the module docstring)."""
        try:
            if sync:
                with transaction(self._conn):
                    record_id = self.insert(kind, body)
                self._unsynced = False
            else:
                with relaxed_sync(self._conn), transaction(self._conn):
                    record_id = self.insert(kind, body)
                self._unsynced = True
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot store the {kind} record: {exc}") from exc
        return record_id

    def sync(self) -> None:
        """Make every commit so far durable (one fsync), if any was made without one."""
        if not self._unsynced:
            return
        try:
            # A FULL commit syncs the whole WAL, and so every NORMAL commit before it. An empty
            # transaction writes no frame (and syncs nothing), hence the counter touch.
            with transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO outbox_meta (key, value) VALUES ('syncs', 1)"
                    " ON CONFLICT (key) DO UPDATE SET value = value + 1"
                )
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot sync: {exc}") from exc
        self._unsynced = False

    def mark_synced(self) -> None:
        """A FULL commit was just made on this connection by someone else (the ledger's): the
        WAL is on the storage up to it, telemetry committed before it included."""
        self._unsynced = False

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every record added (the link's sender waits on it)."""
        self._listeners.append(listener)

    # -- reading and publishing ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._exact_count()

    def count(self, kind: str) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = ?", (kind,)).fetchone()
        return int(row[0])

    @property
    def busy(self) -> bool:
        """A transaction is open on the connection (a caller's, between insert and commit):
        its rows may still be rolled back, so nothing may be published meanwhile."""
        return self._conn.in_transaction

    def peek(
        self, limit: int = 1, *, after_seq: int = 0, skip_kinds: Collection[str] = ()
    ) -> list[OutboxRecord]:
        """The oldest ``limit`` records (after ``after_seq``, none of ``skip_kinds``), in order
        of creation; they stay until ``mark_published``."""
        skip = sorted(skip_kinds)
        not_in = f" AND kind NOT IN ({', '.join('?' * len(skip))})" if skip else ""
        try:
            rows = self._conn.execute(
                "SELECT seq, writer, kind, created_at, body FROM outbox WHERE seq > ?"  # noqa: S608  placeholders only
                f"{not_in} ORDER BY seq LIMIT ?",
                (after_seq, *skip, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot read: {exc}") from exc
        return [
            OutboxRecord(int(seq), f"{writer}-{seq}", str(kind), float(created_at), str(body))
            for seq, writer, kind, created_at, body in rows
        ]

    def __iter__(self) -> Iterator[OutboxRecord]:
        """Every record, oldest first, read in pages."""
        after = 0
        while True:
            rows = self._conn.execute(
                "SELECT seq, writer, kind, created_at, body FROM outbox WHERE seq > ?"
                " ORDER BY seq LIMIT 500",
                (after,),
            ).fetchall()
            if not rows:
                return
            for seq, writer, kind, created_at, body in rows:
                yield OutboxRecord(
                    int(seq), f"{writer}-{seq}", str(kind), float(created_at), str(body)
                )
                after = int(seq)

    def mark_published(self, records: list[OutboxRecord]) -> None:
        """The broker acknowledged these: delete them. Without an fsync: a power cut that undoes
        the delete causes a redelivery under the same id, which the aggregator drops."""
        if not records:
            return
        try:
            with relaxed_sync(self._conn), transaction(self._conn):
                deleted = self._conn.executemany(
                    "DELETE FROM outbox WHERE seq = ?", [(r.seq,) for r in records]
                ).rowcount
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot delete published records: {exc}") from exc
        self._count = max(0, self._count - max(0, deleted))

    # -- bounds -------------------------------------------------------------------------------

    def prune(self) -> dict[str, int]:
        """Apply both bounds now, in a transaction of its own; what was dropped, per kind."""
        try:
            with transaction(self._conn):
                dropped = self._drop_aged()
                for kind, n in self._cut_to_bound().items():
                    dropped[kind] = dropped.get(kind, 0) + n
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot prune: {exc}") from exc
        return dropped

    def dropped(self) -> dict[str, int]:
        """Records dropped by the bounds and not yet reported, per kind."""
        rows = self._conn.execute(
            "SELECT key, value FROM outbox_meta WHERE key LIKE 'dropped.%' AND value > 0"
        ).fetchall()
        return {str(key).removeprefix("dropped."): int(value) for key, value in rows}

    def report_drops(self, at: dt.datetime) -> str | None:
        """Turn the unreported drop counts into one ``records_dropped`` event, in the same
        transaction that resets them (so a drop is reported exactly once); its id, or None
        when nothing was dropped."""
        try:
            with transaction(self._conn):
                counts = self.dropped()
                if not counts:
                    return None
                total = sum(counts.values())
                detail = ", ".join(f"{counts[k]} {k}" for k in DROP_ORDER if k in counts)
                event = EventBody(
                    at=at,
                    kind="records_dropped",
                    message=f"{total} stored records dropped by the outbox bounds "
                    f"({self.max_records} records, {self.max_age_s:g} s): {detail}",
                    dropped=total,
                )
                self._conn.execute("UPDATE outbox_meta SET value = 0 WHERE key LIKE 'dropped.%'")
                record_id = self.insert("event", json.loads(event.to_json()))
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot report drops: {exc}") from exc
        return record_id

    def _exact_count(self) -> int:
        try:
            row = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(f"outbox: cannot count: {exc}") from exc
        return int(row[0])

    def _count_drops(self, kind: str, n: int) -> None:
        if n > 0:
            self._conn.execute(
                "INSERT INTO outbox_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (f"dropped.{kind}", n),
            )

    def _drop_aged(self) -> dict[str, int]:
        cutoff = self._wall() - self.max_age_s
        dropped: dict[str, int] = {}
        for kind in AGED_KINDS:
            n = self._conn.execute(
                "DELETE FROM outbox WHERE kind = ? AND created_at < ?", (kind, cutoff)
            ).rowcount
            if n > 0:
                dropped[kind] = n
                self._count_drops(kind, n)
        self._count = self._exact_count()
        return dropped

    def _cut_to_bound(self) -> dict[str, int]:
        """Inside the caller's transaction: over ``max_records``, cut to 99 % of it."""
        self._count = self._exact_count()
        dropped: dict[str, int] = {}
        if self._count <= self.max_records:
            return dropped
        excess = self._count - (self.max_records - self.max_records // 100)
        for kind in DROP_ORDER:
            if excess <= 0:
                break
            n = self._conn.execute(
                "DELETE FROM outbox WHERE seq IN"
                " (SELECT seq FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?)",
                (kind, excess),
            ).rowcount
            if n > 0:
                dropped[kind] = n
                self._count_drops(kind, n)
                excess -= n
        self._count = self._exact_count()
        return dropped
