"""Opening the ledger's SQLite database: the one place that sets its pragmas.

* WAL journal: readers (``v2g-controller ledger`` while the daemon runs) never block the writer,
  and a power cut mid-write leaves the last committed state (SQLite's WAL is atomic per commit).
* ``synchronous=FULL``: a ledger commit is on the storage before ``commit()`` returns, so a
  power cut right after it cannot take it back (https://www.sqlite.org/pragma.html#pragma_synchronous).
  Writes that may be repeated without harm (deleting published outbox rows) may lower it for
  their own transaction with :func:`relaxed_sync`.
* ``busy_timeout``: a reader holding the file briefly makes a writer wait, not fail.

Each module creates its own tables (``CREATE TABLE IF NOT EXISTS``) and records its schema
version in ``schema_versions``, so the ledger and the outbox can evolve separately.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from controller.errors import ControllerError

BUSY_TIMEOUT_MS = 5000


class LedgerError(ControllerError):
    """The ledger database cannot be opened or used (path, permissions, corruption)."""


def open_database(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the ledger file with the pragmas above; creates the file if needed.

    ``readonly`` opens an existing file for reading only (the ``ledger`` command), so a
    technician's query can never change or create a ledger.
    """
    path = Path(path)
    try:
        if readonly:
            if not path.exists():
                raise LedgerError(f"ledger {path}: file not found")
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction is explicit (BEGIN ... COMMIT via transaction()).
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(f"ledger {path}: cannot use WAL journal (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {exc}") from exc
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One atomic write: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def relaxed_sync(conn: sqlite3.Connection) -> Iterator[None]:
    """``synchronous=NORMAL`` for writes a power cut may undo without harm, then FULL again.

    In WAL mode NORMAL still never corrupts the file; it may lose the last commits on power loss.
    """
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = FULL")


def schema_version(conn: sqlite3.Connection, component: str) -> int:
    """The schema version a component recorded, 0 when it has created nothing yet."""
    row = conn.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (component,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def set_schema_version(conn: sqlite3.Connection, component: str, version: int) -> None:
    conn.execute(
        "INSERT INTO schema_versions (component, version) VALUES (?, ?)"
        " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        (component, version),
    )
