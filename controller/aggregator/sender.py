"""What the aggregator link publishes, and where it waits: the in-memory outbox or the durable one.

The link's connection owns the MQTT client; the ``Sender`` owns the messages. ``report()``,
events and the setpoint tracker's acks and audit lines (``emit``: each audit line goes to the
audit sink, whose failure is logged and never breaks the link) are put here without waiting,
and the link's publish loop, while connected, asks what to send next and says what the broker
acknowledged::

    item = sender.next_message()           # acks, then events, status, telemetry (memory)
    await sender.ready(item)               # an ack waits for its audit line's storage job
    code = ... publish item ...            # the PUBACK's reason code
    sender.published(item, code)           # delivered, or kept and its topic held
    records = await sender.stored_window() # then up to PUBLISH_WINDOW stored records
    codes = ... publish them all ...
    await sender.stored_outcome(records, codes)  # delete the delivered, hold the others
    await sender.idle(max_wait_s=sender.hold_ends_in_s())  # until something is queued

Delivered means delivered: a message whose PUBACK says "no matching subscribers" (reason 16,
MQTT 5.0 §3.4.2.1) or an error stays where it was, and its topic is held: nothing more goes
there for 1 s, doubling to ``HOLD_MAX_S`` while it goes on, then one message tries again;
other topics go on. The first delivery, or a new connection, ends the hold. A retained
message with reason 16 counts as delivered (the broker keeps it); an ack that reached nobody
is dropped (it means something only live).

Without a durable outbox everything goes through the bounded in-memory ``Outbox``
(``OUTBOX_CAPACITY``, overflow policy in ``outbox.py``); a drop is reported in a
``messages_dropped`` event once the acks waiting behind it went out.

Store and forward: given a ``DurableOutbox`` (``durable_outbox.py``, in the ledger's SQLite
file), telemetry (every record, no longer coalesced), events and the ledger's session records
go through it instead: they survive an outage and a restart and are published oldest first, up
to ``PUBLISH_WINDOW`` in flight, each deleted once the broker acknowledged it. Acks (meaningful
only live) and the retained status (re-sent on every connect) stay in memory and go first.
Telemetry is committed without an fsync; ``sync()`` every ``TELEMETRY_SYNC_S`` bounds what a
power cut can take (policy in ``durable_outbox.py``). A database that fails is logged and the
message goes through the in-memory outbox instead: live delivery never depends on the disk.
Every payload of the three kinds carries a ``record_id``. Every use of the durable outbox runs
on the storage thread (the app's, shared with the ledger, or one of the sender's own), never on
the event loop (issue 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from controller.aggregator.backoff import backoff_delay_s
from controller.aggregator.client import PUBACK_NO_MATCHING_SUBSCRIBERS, PUBACK_SUCCESS
from controller.aggregator.durable_outbox import KINDS as RECORD_KINDS
from controller.aggregator.durable_outbox import TELEMETRY_SYNC_S, DurableOutbox, OutboxRecord
from controller.aggregator.messages import EventBody, TelemetryBody, with_record_id
from controller.aggregator.outbox import Kind, Outbox, Outgoing
from controller.aggregator.telemetry import (
    TelemetryGate,
    events_between,
    status_key,
    status_message,
    telemetry_message,
)
from controller.aggregator.topics import Topics
from controller.aggregator.tracker import AuditLine, Output
from controller.links import AuditSink, ControlReport, SetpointAudit
from controller.storage.db import LedgerError
from controller.storage.writer import StorageThread

log = structlog.get_logger(component="aggregator")
_T = TypeVar("_T")

HOUSEKEEPING_S = 0.2  # periodic telemetry and overdue acks are looked at this often
OUTBOX_CAPACITY = 256
# Stored records in flight at once: within paho's inflight limit (20), and aiomqtt logs a
# warning above 10 pending publishes.
PUBLISH_WINDOW = 10
PRUNE_EVERY_S = 60.0  # the durable outbox's age bound is applied this often
# Holding back messages the broker delivered to no subscriber: the first retry after HOLD_FIRST_S,
# doubling up to HOLD_MAX_S, with jitter (the aggregator's consumer may be reconnecting too).
HOLD_FIRST_S = 1.0
HOLD_MAX_S = 300.0  # a topic nobody ever subscribes to costs one try per 5 minutes


@dataclass(frozen=True, slots=True)
class _Hold:
    until_s: float  # nothing goes to the topic before this (the sender's hold clock)
    count: int  # holds in a row, for the backoff


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Sender:
    """Routes the link's outgoing messages and keeps them until published; see the module
    docstring."""

    def __init__(
        self,
        topics: Topics,
        *,
        telemetry_period_s: float,
        telemetry_min_interval_s: float = 1.0,
        telemetry_idle_period_s: float | None = None,
        wall: Callable[[], dt.datetime],
        durable: DurableOutbox | None = None,
        storage: StorageThread | None = None,
        audit: AuditSink | None = None,
        random01: Callable[[], float] = random.random,
        hold_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topics = topics
        self._audit = audit
        self._wall = wall
        self._outbox = Outbox(OUTBOX_CAPACITY)
        self._gate = TelemetryGate(
            period_s=telemetry_period_s,
            min_interval_s=telemetry_min_interval_s,
            idle_period_s=telemetry_idle_period_s,
        )
        self._latest_report: ControlReport | None = None
        self._status_key: tuple[object, ...] | None = None
        self._unreported_drops = 0
        self._durable = durable
        self._owns_storage = storage is None and durable is not None
        self._storage = StorageThread(name="outbox") if self._owns_storage else storage
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick = asyncio.Event()  # something was queued: wakes the publish loop
        self._storage_error: str | None = None  # the storage failure last reported as an event
        if durable is not None:
            durable.add_listener(self._kick_from_storage)
        # Published stored records whose delete failed: skipped, and deleted later.
        self._published: list[OutboxRecord] = []
        # Ids of records that never touch the database (no durable outbox, or it failed).
        self._writer = secrets.token_hex(8)
        self._record_seq = itertools.count(1)
        self._synced_s = self._pruned_s = 0.0
        # Topics whose last publish was not delivered (PUBACK reason 16 or an error): nothing
        # more goes there until the hold ends (``hold_clock``, real time: it paces retries to
        # the broker), then one message tries again.
        self._holds: dict[str, _Hold] = {}
        self._random01 = random01
        self._hold_clock = hold_clock

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def durable(self) -> DurableOutbox | None:
        return self._durable

    @property
    def storage(self) -> StorageThread | None:
        """The thread every durable outbox call runs on (None without a durable outbox)."""
        return self._storage

    def start(self, now_s: float) -> None:
        """Called by the link's ``run()`` on its event loop: the storage thread may now wake the
        publish loop; the durable outbox is pruned once at once."""
        self._loop = asyncio.get_running_loop()
        self._synced_s = self._pruned_s = now_s
        self._prune()

    def close(self) -> None:
        """Stopping (or crashing): the telemetry committed without an fsync goes to disk, and
        a storage thread of the sender's own stops."""
        self._sync()
        if self._owns_storage and self._storage is not None:
            self._storage.close()

    # -- routing ------------------------------------------------------------------------------

    @property
    def posted_seq(self) -> int:
        """The last storage job handed over (0 without a storage thread): an ack given this
        as ``after_seq`` waits for everything posted so far, such as its audit line."""
        return 0 if self._storage is None else self._storage.posted_seq

    def emit(self, outputs: Iterable[Output]) -> None:
        """The setpoint tracker's acks and audit lines, in order: each ack is queued to go
        before anything else once storage job ``after_seq`` was processed, and each audit
        line handed to the audit sink."""
        for output in outputs:
            if isinstance(output, AuditLine):
                self._audit_line(output.line)
                continue
            payload = output.message.to_json()
            self._queue(Kind.ACK, self._topics.ack, payload, after_seq=output.after_seq)
            self._audit_line(output.audit)

    def queue_ack(self, topic: str, payload: bytes, *, after_seq: int = 0) -> None:
        """An ack of another kind than a setpoint's (a price message's): queued with the acks,
        sent once storage job ``after_seq`` was processed."""
        self._queue(Kind.ACK, topic, payload, after_seq=after_seq)

    def _audit_line(self, line: SetpointAudit) -> None:
        if self._audit is None:
            return
        try:
            self._audit(line)
        except Exception as exc:  # noqa: BLE001  the sink is the ledger's code: never ours to die of
            log.error(
                "setpoint audit not recorded",
                setpoint_id=line.setpoint_id,
                action=line.action,
                error=f"{type(exc).__name__}: {exc}",
            )

    def report(self, report: ControlReport) -> None:
        """A control cycle: the events it brings, telemetry when due, status when it changed."""
        previous, self._latest_report = self._latest_report, report
        for event in events_between(previous, report):
            self.record_event(event)
        if self._gate.due(report, report.monotonic_s):
            self._queue_telemetry(report, report.monotonic_s)
        key = status_key(report)
        if key != self._status_key:
            self._status_key = key
            self._queue_status(report)

    def came_up(self, down_s: float | None) -> None:
        """A connection came up (after ``down_s`` of outage, None for the first): a
        ``link_restored`` event, the stored records the bounds dropped reported, and the status
        again (the broker may have lost the retained one in a restart without persistence).
        Holds end: the new connection may be to another node, with the consumers on it."""
        self._holds.clear()
        if down_s is not None:
            self.record_event(
                EventBody(
                    at=self._wall(),
                    kind="link_restored",
                    message=f"link to the aggregator restored after {down_s:.1f} s",
                    down_s=round(down_s, 3),
                )
            )
        self.report_drops()
        if self._latest_report is not None:
            self._queue_status(self._latest_report)

    def record_event(self, event: EventBody) -> None:
        self._record("event", event)

    def report_drops(self) -> None:
        """Ask the durable outbox to report what its bounds dropped (in a ``records_dropped``
        event)."""
        at = self._wall()
        self._post_durable(
            "stored records dropped, but the count was not reported",
            lambda durable: durable.report_drops(at),
        )

    def _queue(
        self, kind: Kind, topic: str, payload: bytes, *, retain: bool = False, after_seq: int = 0
    ) -> None:
        dropped = self._outbox.put(Outgoing(kind, topic, payload, retain, after_seq))
        self._kick.set()
        if dropped is not None:
            self._unreported_drops += 1
            log.warning(
                "outbox full; dropped the oldest message",
                dropped=str(dropped.kind),
                capacity=self._outbox.capacity,
            )

    def _new_record_id(self) -> str:
        return f"{self._writer}-{next(self._record_seq)}"

    def _record(self, kind: str, body: EventBody | TelemetryBody) -> None:
        """A telemetry or event record: stored when there is a durable outbox (events with an
        fsync, telemetry without), else queued in memory with an id of the sender's own."""
        data = body.to_json()
        durable, storage = self._durable, self._storage
        if durable is not None and storage is not None:
            loop = self._loop or _running_loop()

            def store() -> None:
                # On the storage thread. A record the disk refuses goes out from memory.
                try:
                    durable.put(kind, json.loads(data), sync=kind != "telemetry")
                except LedgerError as exc:
                    storage.record_failure(kind, exc)
                    log.error(
                        "record not stored; sending it from memory only", kind=kind, error=str(exc)
                    )
                    if loop is not None:
                        with contextlib.suppress(RuntimeError):  # the loop is closed
                            loop.call_soon_threadsafe(self._queue_in_memory, kind, data)

            try:
                # Telemetry may be dropped by a storage queue that a stalled disk filled.
                storage.post(kind, store, droppable=kind == "telemetry")
            except LedgerError:
                pass  # the storage thread stopped (the daemon is stopping): send from memory
            else:
                return
        self._queue_in_memory(kind, data)

    def _queue_in_memory(self, kind: str, data: bytes) -> None:
        memory_kind = Kind.TELEMETRY if kind == "telemetry" else Kind.EVENT
        self._queue(
            memory_kind,
            self._topics.for_record(kind),
            with_record_id(self._new_record_id(), data),
        )

    def _queue_telemetry(self, report: ControlReport, now_s: float) -> None:
        self._record("telemetry", telemetry_message(report))
        self._gate.sent(report, now_s)

    def _queue_status(self, report: ControlReport) -> None:
        payload = status_message(report).to_json()
        self._queue(Kind.STATUS, self._topics.status, payload, retain=True)

    # -- publishing ---------------------------------------------------------------------------

    def next_message(self) -> Outgoing | None:
        """The next message from memory (left in the outbox until ``sent``), skipping topics
        on hold."""
        return self._outbox.peek(skip=lambda item: self._held(item.topic))

    def hold_ends_in_s(self) -> float | None:
        """When the next hold still running ends (None: none is; a hold that ended stays
        recorded until a delivery, but has nothing left to wait for)."""
        now_s = self._hold_clock()
        running = [hold.until_s - now_s for hold in self._holds.values() if hold.until_s > now_s]
        return min(running) if running else None

    def held_for_s(self, topic: str) -> float:
        """How much longer nothing goes to ``topic`` (0: not held)."""
        hold = self._holds.get(topic)
        return 0.0 if hold is None else max(0.0, hold.until_s - self._hold_clock())

    def _held(self, topic: str) -> bool:
        return self.held_for_s(topic) > 0

    def published(self, item: Outgoing, code: int) -> None:
        """The broker answered ``item``'s publish with PUBACK reason ``code`` (MQTT 5.0
        §3.4.2.1): success, or "no matching subscribers" for a retained message (the broker
        keeps it for the next subscriber), is delivered; anything else is not."""
        retained_kept = item.retain and code == PUBACK_NO_MATCHING_SUBSCRIBERS
        if code == PUBACK_SUCCESS or retained_kept:
            self.sent(item)
        else:
            self.undelivered(item, code)

    def undelivered(self, item: Outgoing, code: int) -> None:
        """The broker answered ``item`` with ``code``, not success. An ack is dropped: it is
        meaningful only to a consumer listening now (the aggregator sends the setpoint again
        when no ack comes). Anything else stays queued and its topic is held."""
        if item.kind is Kind.ACK:
            self._outbox.done(item)
            log.warning("ack delivered to nobody; dropped", topic=item.topic, puback_reason=code)
            return
        self._hold(item.topic, code, what=str(item.kind))

    def _hold(self, topic: str, code: int, *, what: str, kept: int = 1) -> None:
        """Hold ``topic`` for 1 s, doubling to ``HOLD_MAX_S`` while it goes on (with jitter).
        Reason 16 (no matching subscribers, MQTT 5.0 §3.4.2.1) is a consumer not subscribed
        (yet), e.g. after a broker restart; an error code is the broker refusing."""
        previous = self._holds.get(topic)
        count = 0 if previous is None else previous.count + 1
        delay_s = backoff_delay_s(count, HOLD_FIRST_S, HOLD_MAX_S, self._random01())
        self._holds[topic] = _Hold(self._hold_clock() + delay_s, count)
        if code == PUBACK_NO_MATCHING_SUBSCRIBERS:
            log.warning(
                "the broker delivered it to no subscriber; kept for a retry",
                what=what,
                topic=topic,
                kept=kept,
                retry_in_s=round(delay_s, 2),
                puback_reason=code,
            )
        else:
            log.error(
                "the broker refused it; kept for a retry",
                what=what,
                topic=topic,
                kept=kept,
                retry_in_s=round(delay_s, 2),
                puback_reason=code,
            )

    async def ready(self, item: Outgoing) -> None:
        """Wait until ``item`` may go out: an ack that says "accepted" goes out once the
        setpoint's audit line was written (or its write failed and was logged): docs/ledger.md,
        "Audit"."""
        if item.after_seq and self._storage is not None:
            await self._storage.processed(item.after_seq)

    def sent(self, item: Outgoing) -> None:
        """The broker acknowledged ``item``; once no ack waits, report what the outbox
        dropped."""
        self._outbox.done(item)
        self._holds.pop(item.topic, None)
        if self._unreported_drops and not self._outbox.pending(Kind.ACK):
            dropped, self._unreported_drops = self._unreported_drops, 0
            self.record_event(
                EventBody(
                    at=self._wall(),
                    kind="messages_dropped",
                    message=f"{dropped} acks or events dropped: the outbox was full",
                    dropped=dropped,
                )
            )

    async def stored_window(self, limit: int = PUBLISH_WINDOW) -> list[OutboxRecord]:
        """The next stored records to publish, oldest first, at most ``PUBLISH_WINDOW``
        (after those published but not deleted yet), none of a kind on hold, and only one of
        a kind whose hold just ended (it tries whether someone listens now)."""
        after_seq = self._published[-1].seq if self._published else 0
        held = [kind for kind in RECORD_KINDS if self._held(self._topics.for_record(kind))]
        records = await self._with_durable(
            "stored records cannot be read; retrying",
            lambda durable: durable.peek(limit, after_seq=after_seq, skip_kinds=held),
        )
        window: list[OutboxRecord] = []
        trying: set[str] = set()
        for record in records or []:
            if self._topics.for_record(record.kind) in self._holds:
                if record.kind in trying:
                    continue
                trying.add(record.kind)
            window.append(record)
        return window

    async def stored_outcome(self, records: list[OutboxRecord], codes: list[int]) -> None:
        """What the broker answered each of ``records``: the delivered ones are deleted and
        end their kind's hold; the others stay and hold their kind."""
        delivered: list[OutboxRecord] = []
        refused: dict[str, list[int]] = {}
        for record, code in zip(records, codes, strict=True):
            if code == PUBACK_SUCCESS:
                delivered.append(record)
                self._holds.pop(self._topics.for_record(record.kind), None)
            else:
                refused.setdefault(record.kind, []).append(code)
        for kind, kind_codes in refused.items():
            self._hold(
                self._topics.for_record(kind),
                kind_codes[0],
                what=f"stored {kind} records",
                kept=len(kind_codes),
            )
        if delivered:
            self._published.extend(delivered)
            await self._delete_published()

    async def idle(self, *, max_wait_s: float | None = None) -> None:
        """Nothing to send: wait until something is queued (or stored, or a poll period, or
        ``max_wait_s``)."""
        self._kick.clear()
        # With a durable outbox it also polls: rows of a caller's open transaction become
        # sendable on its commit.
        waits_s = [
            w for w in (max_wait_s, HOUSEKEEPING_S if self._durable else None) if w is not None
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(waits_s) if waits_s else None):
                await self._kick.wait()

    async def _delete_published(self) -> None:
        published = list(self._published)

        def delete(durable: DurableOutbox) -> bool:
            durable.mark_published(published)
            return True

        if not published:
            return
        if await self._with_durable("published records not deleted; retrying", delete):
            del self._published[: len(published)]

    # -- housekeeping -------------------------------------------------------------------------

    async def housekeeping(self, now_s: float, *, connected: bool) -> None:
        """Every ``HOUSEKEEPING_S``: periodic telemetry (and a change that waited for the
        telemetry rate limit), deletes that failed before, storage
        health events, the telemetry sync and the outbox bounds."""
        report = self._latest_report
        if report is not None and self._gate.periodic_due(now_s):
            self._queue_telemetry(report, now_s)
        await self._delete_published()
        self._report_storage_health()
        if now_s - self._synced_s >= TELEMETRY_SYNC_S:
            self._synced_s = now_s
            self._sync()
        if now_s - self._pruned_s >= PRUNE_EVERY_S:
            self._pruned_s = now_s
            self._prune()
            if connected:
                self.report_drops()  # drops while a long backlog drains

    def _sync(self) -> None:
        self._post_durable("stored telemetry not synced", lambda durable: durable.sync())

    def _prune(self) -> None:
        def prune(durable: DurableOutbox) -> None:
            dropped = durable.prune()
            if dropped:
                log.warning(
                    "stored records dropped by the outbox bounds",
                    dropped=dropped,
                    max_records=durable.max_records,
                    max_age_s=durable.max_age_s,
                )

        self._post_durable("stored records not pruned", prune)

    def _report_storage_health(self) -> None:
        """One event when durable writes start failing (disk full, a read-only or dead card)
        and one when they work again; each is sent from memory if the disk refuses it."""
        storage = self._storage
        if storage is None:
            return
        error = storage.failing
        if (error is None) == (self._storage_error is None):
            return  # no change (a new error while failing is in the log, not a new event)
        previous, self._storage_error = self._storage_error, error
        if error is not None:
            message = f"durable writes fail; the charger keeps running on its safety logic: {error}"
            self.record_event(EventBody(at=self._wall(), kind="storage_failed", message=message))
        elif previous is not None:
            self.record_event(
                EventBody(
                    at=self._wall(), kind="storage_restored", message="durable writes work again"
                )
            )

    # -- the storage thread -------------------------------------------------------------------

    async def _with_durable(self, failed: str, call: Callable[[DurableOutbox], _T]) -> _T | None:
        """``call`` on the durable outbox, on the storage thread; None when there is none, and
        a database failure is logged as ``failed`` (each caller retries later): None."""
        durable, storage = self._durable, self._storage
        if durable is None or storage is None:
            return None
        try:
            return await storage.call(failed, lambda: call(durable))
        except LedgerError as exc:
            log.error(failed, error=str(exc))
            return None

    def _post_durable(self, what: str, call: Callable[[DurableOutbox], object]) -> None:
        """Hand ``call`` over to the storage thread without waiting; its failure is logged
        there as ``what``."""
        durable, storage = self._durable, self._storage
        if durable is None or storage is None:
            return

        def run() -> None:
            try:
                call(durable)
            except LedgerError as exc:
                storage.record_failure(what, exc)
                log.error(what, error=str(exc))

        with contextlib.suppress(LedgerError):  # stopped: the stop sequence already synced
            storage.post(what, run, droppable=True)

    def _kick_from_storage(self) -> None:
        # Called on the storage thread after a record was stored: wake the publish loop.
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(self._kick.set)
