"""The aggregator link: MQTT to the aggregator's broker, on aiomqtt (which drives paho-mqtt).

Satisfies ``controller.links.AggregatorLink``. One connection at a time, owned by ``run()``:

* connect with MQTT 5 (or 3.1.1 when ``broker.protocol`` says so, or when an MQTT 5 CONNECT is
  refused with "unsupported protocol version": the link then stays on 3.1.1), a clean session,
  the configured keepalive, TLS (CA, optional client certificate and key) and username and
  password (read from ``password_file`` on every connect, so a rotated password is picked up);
* Last Will: ``offline``, retained, QoS 1, on the availability topic; on connect the link
  subscribes to the setpoint topic at QoS 1 (MQTT 5: "retain as published", so a retained
  setpoint is recognisable even when it arrives live), then publishes ``online``, retained;
* a lost or refused connection makes the link ``DOWN`` (with ``reason``), and it reconnects by
  itself after a capped exponential backoff with jitter (``backoff.py``); a connection that
  stayed up for ``STABLE_SESSION_S`` resets the backoff;
* every setpoint is validated (``validation.py``) and answered on the ack topic. An accepted one
  becomes ``setpoint()`` at once and wakes the control loop; its ack waits for the first
  ``report()`` that follows it, so it can say what power was applied and which limit bound;
* ``report()`` never waits: it records the report, queues acks, events, status and telemetry in
  the bounded outbox (``outbox.py``), and the link's sender task publishes them while connected.

Store and forward: given a ``DurableOutbox`` (``durable_outbox.py``, in the ledger's SQLite
file), telemetry (every record, no longer coalesced), events and the ledger's session
records go through it instead: they survive an outage and a restart and are published oldest
first, up to ``PUBLISH_WINDOW`` in flight, each deleted once the broker acknowledged it. Acks
(meaningful only live) and the retained status (re-sent on every connect) stay in memory and go
first. Telemetry is committed without an fsync; ``sync()`` every ``TELEMETRY_SYNC_S`` bounds
what a power cut can take (policy in ``durable_outbox.py``). A database that fails is logged
and the message goes through the in-memory outbox instead: live delivery never depends on the
disk. Every payload of the three kinds carries a ``record_id``.

Audit: an optional ``AuditSink`` hears of every setpoint accepted, rejected (with the reason)
and applied (the power of its ack and the binding limit); a failing sink is logged, never
allowed to break the link.

Bounded queues: incoming setpoints waiting to be validated (``INCOMING_QUEUE_MAX``; aiomqtt
drops newer messages when full and logs it; they go unacknowledged, so the aggregator resends),
the outbox (``OUTBOX_CAPACITY``, policy in ``outbox.py``), accepted setpoints awaiting their ack
(``MAX_AWAITING_ACK``; the oldest is acked without an applied power when full), and the replay
memory in the validator.

Loss of the aggregator: ``setpoint()`` keeps returning the last accepted setpoint; once its
validity runs out the core ignores it and its fallback policy takes over. Nothing here needs an
operator: the link reconnects, republishes ``online`` and the status, and carries on.

TLS and the password file (``tls.py``): the context and the password are built afresh on every
connect, and before each TLS connect the link performs the handshake once itself with asyncio
(paho would leak the socket of a failed one): a broker certificate the CA does not vouch for is
then reported cleanly (``reason``).

Every aiomqtt/paho exception is translated into ``AggregatorLinkError`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.aggregator.backoff import backoff_delay_s
from controller.aggregator.durable_outbox import TELEMETRY_SYNC_S, DurableOutbox, OutboxRecord
from controller.aggregator.messages import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    EventBody,
    TelemetryBody,
    with_record_id,
)
from controller.aggregator.outbox import Kind, Outbox, Outgoing
from controller.aggregator.telemetry import (
    TelemetryGate,
    events_between,
    status_key,
    status_message,
    telemetry_message,
)
from controller.aggregator.tls import check_handshake, read_password, tls_context
from controller.aggregator.tracker import ACK_WAIT_S, AuditLine, Output, SetpointTracker
from controller.aggregator.validation import Rejected, SetpointLimits
from controller.cancellation import cancel_requests, guarded, raise_if_cancelled_since
from controller.config import AggregatorConfig, Config
from controller.core.snapshots import Setpoint
from controller.errors import AggregatorLinkError
from controller.links import AuditSink, ControlReport, LinkStatus, SetpointAudit, Wake
from controller.storage.db import LedgerError
from controller.storage.writer import StorageThread

log = structlog.get_logger(component="aggregator")
_T = TypeVar("_T")

CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + CONNACK, and each SUBACK/PUBACK
STABLE_SESSION_S = 30.0  # a connection up this long resets the reconnect backoff
HOUSEKEEPING_S = 0.2  # periodic telemetry and overdue acks are looked at this often
INCOMING_QUEUE_MAX = 32
OUTBOX_CAPACITY = 256
# Stored records in flight at once: within paho's inflight limit (20), and aiomqtt logs a
# warning above 10 pending publishes.
PUBLISH_WINDOW = 10
PRUNE_EVERY_S = 60.0  # the durable outbox's age bound is applied this often
_UNSUPPORTED_PROTOCOL_V5 = 0x84  # MQTT 5 CONNACK reason "Unsupported Protocol Version"
_UNSUPPORTED_PROTOCOL_V311 = 0x01  # MQTT 3.1.1 CONNACK return code 1
_SUBACK_FAILURE = 0x80


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the link uses, under the configured prefix."""

    setpoint: str  # in: aggregator -> charger
    ack: str
    status: str  # retained
    telemetry: str
    availability: str  # retained; also the Last Will
    event: str
    session: str  # the ledger's session records

    def for_record(self, kind: str) -> str:
        """The topic of a stored record's kind."""
        return {"telemetry": self.telemetry, "event": self.event, "session": self.session}[kind]

    @classmethod
    def under(cls, prefix: str) -> Topics:
        base = prefix.rstrip("/")
        return cls(
            setpoint=f"{base}/setpoint",
            ack=f"{base}/ack",
            status=f"{base}/status",
            telemetry=f"{base}/telemetry",
            availability=f"{base}/availability",
            event=f"{base}/event",
            session=f"{base}/session",
        )


class _ClientLog(logging.Handler):
    """paho-mqtt and aiomqtt log to a private logger: forward warnings and errors to structlog,
    and keep the last one, which often explains a failed connect (e.g. a TLS alert)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.last = text
        log.warning("mqtt client", detail=text)


def _describe(exc: aiomqtt.MqttError) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def _code(value: object) -> int:
    if isinstance(value, ReasonCode):
        return int(value.value)
    if isinstance(value, int):
        return value
    return -1


class MqttAggregatorLink:
    """Satisfies ``controller.links.AggregatorLink``; see the module docstring."""

    name = "aggregator"

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        topic_prefix: str,
        client_id: str,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utc_now,
        random01: Callable[[], float] = random.random,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        ack_wait_s: float = ACK_WAIT_S,
        durable: DurableOutbox | None = None,
        audit: AuditSink | None = None,
        storage: StorageThread | None = None,
    ) -> None:
        if config.broker is None:
            raise ValueError("the aggregator config has no broker section")
        self._config = config
        self._broker = config.broker
        self.topics = Topics.under(topic_prefix)
        self.client_id = client_id
        self._monotonic = monotonic
        self._wall = wall
        self._random01 = random01
        self._connect_timeout_s = connect_timeout_s
        self._protocol = (
            aiomqtt.ProtocolVersion.V5
            if self._broker.protocol == "5"
            else aiomqtt.ProtocolVersion.V311
        )
        self._tracker = SetpointTracker(
            SetpointLimits(
                max_abs_power_w=config.max_abs_power_w,
                max_ttl_s=config.max_setpoint_ttl_s,
                clock_skew_s=config.clock_skew_tolerance_s,
            ),
            ack_wait_s=ack_wait_s,
        )
        self._outbox = Outbox(OUTBOX_CAPACITY)
        self._gate = TelemetryGate(period_s=config.telemetry_period_s)
        self._client_log = _ClientLog()
        self._client_logger = logging.Logger("controller.aggregator.mqtt", logging.WARNING)
        self._client_logger.addHandler(self._client_log)
        self._status = LinkStatus.STARTING
        self._reason: str | None = None
        self._wake: Wake = lambda: None
        self._client: aiomqtt.Client | None = None
        self._stopping = False
        self._retry_now = False
        self._up_since_s: float | None = None
        self._down_since_s: float | None = None
        self._latest_report: ControlReport | None = None
        self._status_key: tuple[object, ...] | None = None
        self._unreported_drops = 0
        self._durable = durable
        self._audit = audit
        # Every use of the durable outbox runs on the storage thread (the app's, shared with the
        # ledger; or one of the link's own), never on the event loop (issue 15).
        self._owns_storage = storage is None and durable is not None
        self._storage = StorageThread(name="outbox") if self._owns_storage else storage
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick = asyncio.Event()  # something was queued: wakes the sender
        self._storage_error: str | None = None  # the storage failure last reported as an event
        if durable is not None:
            durable.add_listener(self._kick_from_storage)
        # Published stored records whose delete failed: skipped, and deleted later.
        self._published: list[OutboxRecord] = []
        # Ids of records that never touch the database (no durable outbox, or it failed).
        self._writer = secrets.token_hex(8)
        self._record_seq = itertools.count(1)
        self.connects = 0

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        durable: DurableOutbox | None = None,
        audit: AuditSink | None = None,
        storage: StorageThread | None = None,
    ) -> MqttAggregatorLink:
        broker = config.aggregator.broker
        client_id = broker.client_id if broker is not None and broker.client_id else None
        return cls(
            config.aggregator,
            topic_prefix=config.topic_prefix,
            client_id=client_id or f"v2g-{config.site.site_id}-{config.site.charger_id}",
            durable=durable,
            audit=audit,
            storage=storage,
        )

    # -- AggregatorLink -----------------------------------------------------------------------

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def reason(self) -> str | None:
        """Why the link is down (or why the last attempt failed); None while up."""
        return self._reason

    @property
    def protocol(self) -> str:
        """The MQTT version in use: "5" or "3.1.1"."""
        return "5" if self._protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"

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

    @property
    def accepted(self) -> int:
        """Setpoints accepted since start."""
        return self._tracker.accepted

    @property
    def rejected(self) -> int:
        """Setpoint payloads rejected since start."""
        return self._tracker.rejected

    def setpoint(self) -> Setpoint | None:
        return self._tracker.setpoint

    def report(self, report: ControlReport) -> None:
        """Record a control cycle's outcome; queues acks, events, status and telemetry."""
        self._emit(self._tracker.report(report, wall_now=self._wall()))
        previous, self._latest_report = self._latest_report, report
        for event in events_between(previous, report):
            self._record_event(event)
        if self._gate.due(report, report.monotonic_s):
            self._queue_telemetry(report, report.monotonic_s)
        key = status_key(report)
        if key != self._status_key:
            self._status_key = key
            self._queue_status(report)

    async def publish_offline(self) -> None:
        """Publish the retained "offline" (over the live connection, or a short one of its own)
        and stop reconnecting. Raises AggregatorLinkError if the broker cannot be reached."""
        self._stopping = True
        topic = self.topics.availability
        client = self._client
        cancels_before = cancel_requests()
        try:
            if client is not None:
                await guarded(
                    client.publish(
                        topic,
                        AVAILABILITY_OFFLINE,
                        qos=1,
                        retain=True,
                        timeout=self._connect_timeout_s,
                    )
                )
            else:
                context = self._tls_context()
                password = self._password()
                if context is not None:
                    await self._check_tls(context)
                async with self._new_client(context, password, will=False) as one_shot:
                    raise_if_cancelled_since(cancels_before)
                    await guarded(
                        one_shot.publish(
                            topic,
                            AVAILABILITY_OFFLINE,
                            qos=1,
                            retain=True,
                            timeout=self._connect_timeout_s,
                        )
                    )
        except aiomqtt.MqttError as exc:
            raise_if_cancelled_since(cancels_before)
            raise AggregatorLinkError(f"could not publish offline: {_describe(exc)}") from None
        log.info("availability published", availability="offline")

    async def run(self, wake: Wake) -> None:
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._connect_loop(), name="aggregator-connect")
                tasks.create_task(self._housekeeping(), name="aggregator-housekeeping")
        finally:
            # Stopping (or crashing): the telemetry committed without an fsync goes to disk.
            self._durable_sync()
            if self._owns_storage and self._storage is not None:
                self._storage.close()

    # -- connection ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self._broker.host}:{self._broker.port}"

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            if self._stopping:
                await asyncio.Event().wait()  # offline was published: stay quiet until stopped
            try:
                await self._session()
            except AggregatorLinkError as exc:
                self._went_down(str(exc))
            up_since_s, self._up_since_s = self._up_since_s, None
            if up_since_s is not None and self._monotonic() - up_since_s >= STABLE_SESSION_S:
                attempt = 0
            if self._retry_now:
                self._retry_now = False
                continue
            delay_s = backoff_delay_s(
                attempt,
                self._config.reconnect_initial_s,
                self._config.reconnect_max_s,
                self._random01(),
            )
            attempt += 1
            log.info("reconnecting", in_s=round(delay_s, 2), attempt=attempt, broker=self._where)
            await asyncio.sleep(delay_s)

    def _tls_context(self) -> ssl.SSLContext | None:
        return tls_context(self._config.tls) if self._config.tls is not None else None

    def _password(self) -> str | None:
        path = self._config.password_file
        return read_password(path) if path is not None else None

    def _new_client(
        self, context: ssl.SSLContext | None, password: str | None, *, will: bool
    ) -> aiomqtt.Client:
        v5 = self._protocol is aiomqtt.ProtocolVersion.V5
        return aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            username=self._config.username,
            password=password,
            logger=self._client_logger,
            identifier=self.client_id,
            protocol=self._protocol,
            will=(
                aiomqtt.Will(self.topics.availability, AVAILABILITY_OFFLINE, qos=1, retain=True)
                if will
                else None
            ),
            # A clean session: setpoints queued by the broker while we were away are stale.
            clean_session=None if v5 else True,
            clean_start=True if v5 else MQTT_CLEAN_START_FIRST_ONLY,
            timeout=self._connect_timeout_s,
            keepalive=self._broker.keepalive_s,
            max_queued_incoming_messages=INCOMING_QUEUE_MAX,
            tls_context=context,
            # paho leaves Nagle's algorithm on: with the peer's delayed ACK an ack or a small
            # publish can wait up to 40 ms in the kernel (measured by bench/latency.py).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )

    async def _check_tls(self, context: ssl.SSLContext) -> None:
        await check_handshake(
            self._broker.host, self._broker.port, context, timeout_s=self._connect_timeout_s
        )

    async def _session(self) -> None:
        """One connection, from connect to loss. Always ends by raising."""
        context = self._tls_context()
        password = self._password()
        if context is not None:
            await self._check_tls(context)
        protocol = self._protocol
        client = self._new_client(context, password, will=True)
        self._client_log.last = None
        cancels_before = cancel_requests()
        try:
            async with client:
                # aiomqtt waits for CONNACK, SUBACK and PUBACK with wait_for, which can lose a
                # cancel that lands with the reply (controller/cancellation.py).
                raise_if_cancelled_since(cancels_before)
                await self._subscribe(client)
                await guarded(
                    client.publish(
                        self.topics.availability,
                        AVAILABILITY_ONLINE,
                        qos=1,
                        retain=True,
                        timeout=self._connect_timeout_s,
                    )
                )
                self._came_up(client)
                try:
                    await self._serve(client)
                finally:
                    self._client = None
        except MqttConnectError as exc:
            raise self._refused(exc, protocol) from None
        except aiomqtt.MqttError as exc:
            raise_if_cancelled_since(cancels_before)
            raise AggregatorLinkError(self._failure(exc)) from None

    def _refused(self, exc: MqttConnectError, protocol: aiomqtt.ProtocolVersion) -> Exception:
        code = _code(exc.rc)
        if protocol is aiomqtt.ProtocolVersion.V5 and code in (
            _UNSUPPORTED_PROTOCOL_V5,
            _UNSUPPORTED_PROTOCOL_V311,
        ):
            self._protocol = aiomqtt.ProtocolVersion.V311
            self._retry_now = True
            log.warning("broker does not speak MQTT 5; falling back to 3.1.1", broker=self._where)
            return AggregatorLinkError(
                f"{self._where} refused MQTT 5 (unsupported protocol version); using MQTT 3.1.1"
            )
        return AggregatorLinkError(f"{self._where} refused the connection: {exc}")

    def _failure(self, exc: aiomqtt.MqttError) -> str:
        if self._up_since_s is not None:
            return f"connection to {self._where} lost: {_describe(exc)}"
        text = f"cannot connect to {self._where}: {_describe(exc)}"
        detail = self._client_log.last
        if detail and detail not in text:
            text = f"{text}; {detail}"
        return text

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topic = self.topics.setpoint
        if self._protocol is aiomqtt.ProtocolVersion.V5:
            # Retain-as-published: a retained setpoint keeps its flag even when it arrives live.
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            granted = await guarded(
                client.subscribe(topic, options=options, timeout=self._connect_timeout_s)
            )
        else:
            granted = await guarded(client.subscribe(topic, qos=1, timeout=self._connect_timeout_s))
        codes = [_code(code) for code in granted]
        if not codes or codes[0] >= _SUBACK_FAILURE:
            raise AggregatorLinkError(
                f"{self._where} refused the subscription to {topic} (codes {codes})"
            )
        if codes[0] < 1:
            log.warning("broker granted only QoS 0 for setpoints", topic=topic)

    def _came_up(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.connects += 1
        now_s = self._monotonic()
        self._up_since_s = now_s
        previous = self._status
        self._status = LinkStatus.UP
        self._reason = None
        log.info(
            "connected to the aggregator's broker",
            broker=self._where,
            protocol=self.protocol,
            tls=self._config.tls is not None,
            client_id=self.client_id,
            setpoint_topic=self.topics.setpoint,
        )
        if self._down_since_s is not None:
            down_s = max(0.0, now_s - self._down_since_s)
            self._down_since_s = None
            self._record_event(
                EventBody(
                    at=self._wall(),
                    kind="link_restored",
                    message=f"link to the aggregator restored after {down_s:.1f} s",
                    down_s=round(down_s, 3),
                )
            )
        self._report_drops()
        if self._latest_report is not None:
            # The broker may have lost the retained status (a restart without persistence).
            self._queue_status(self._latest_report)
        if previous is not LinkStatus.UP:
            self._wake()

    def _went_down(self, reason: str) -> None:
        previous = self._status
        self._status = LinkStatus.DOWN
        self._reason = reason
        if previous is LinkStatus.UP:
            self._down_since_s = self._monotonic()
            log.warning("aggregator link lost; reconnecting", reason=reason)
        else:
            if self._down_since_s is None:
                self._down_since_s = self._monotonic()
            log.warning("cannot reach the aggregator's broker", reason=reason)
        if previous is not LinkStatus.DOWN:
            self._wake()

    async def _serve(self, client: aiomqtt.Client) -> None:
        receiver = asyncio.create_task(self._receive(client), name="aggregator-receive")
        sender = asyncio.create_task(self._send(client), name="aggregator-send")
        tasks = (receiver, sender)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the connection
        raise AggregatorLinkError(f"connection to {self._where} ended")

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value != self.topics.setpoint:
                log.debug("message on an unexpected topic ignored", topic=message.topic.value)
                continue
            self._on_setpoint(message.payload, retained=bool(message.retain))

    async def _send(self, client: aiomqtt.Client) -> None:
        """Acks and status (in memory) first, then the stored records in order of creation."""
        while True:
            item = self._outbox.peek()
            if item is not None:
                if item.after_seq and self._storage is not None:
                    # An ack that says "accepted" goes out once the setpoint's audit line was
                    # written (or its write failed and was logged): docs/ledger.md, "Audit".
                    await self._storage.processed(item.after_seq)
                await guarded(
                    client.publish(
                        item.topic,
                        item.payload,
                        qos=1,
                        retain=item.retain,
                        timeout=self._connect_timeout_s,
                    )
                )
                self._outbox.done(item)
                if self._unreported_drops and not self._outbox.pending(Kind.ACK):
                    dropped, self._unreported_drops = self._unreported_drops, 0
                    self._record_event(
                        EventBody(
                            at=self._wall(),
                            kind="messages_dropped",
                            message=f"{dropped} acks or events dropped: the outbox was full",
                            dropped=dropped,
                        )
                    )
                continue
            records = await self._stored_to_send()
            if records:
                await self._publish_stored(client, records)
                continue
            self._kick.clear()
            if self._durable is None:
                await self._kick.wait()
            else:
                # Also polls: rows of a caller's open transaction become sendable on its commit.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOUSEKEEPING_S):
                        await self._kick.wait()

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
        # Called on the storage thread after a record was stored: wake the sender.
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(self._kick.set)

    async def _stored_to_send(self) -> list[OutboxRecord]:
        after_seq = self._published[-1].seq if self._published else 0
        records = await self._with_durable(
            "stored records cannot be read; retrying",
            lambda durable: durable.peek(PUBLISH_WINDOW, after_seq=after_seq),
        )
        return records or []

    async def _publish_stored(self, client: aiomqtt.Client, records: list[OutboxRecord]) -> None:
        """Publish a window of stored records at once (paho sends them in this order) and
        delete them once every one was acknowledged; on a failure none is deleted, and the
        ones that did arrive are sent again after the reconnect under the same id."""
        results = await asyncio.gather(
            *(
                guarded(
                    client.publish(
                        self.topics.for_record(record.kind),
                        record.payload(),
                        qos=1,
                        timeout=self._connect_timeout_s,
                    )
                )
                for record in records
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._published.extend(records)
        await self._delete_published()

    async def _delete_published(self) -> None:
        published = list(self._published)

        def delete(durable: DurableOutbox) -> bool:
            durable.mark_published(published)
            return True

        if not published:
            return
        if await self._with_durable("published records not deleted; retrying", delete):
            del self._published[: len(published)]

    # -- setpoints and acks -------------------------------------------------------------------

    def _on_setpoint(self, payload: bytes, *, retained: bool) -> None:
        received = self._tracker.receive(
            payload, retained=retained, wall_now=self._wall(), monotonic_now_s=self._monotonic()
        )
        outcome = received.outcome
        if isinstance(outcome, Rejected):
            log.warning("setpoint rejected", setpoint_id=outcome.setpoint_id, reason=outcome.reason)
            self._emit(received.outputs)
            return
        self._emit(received.outputs)
        setpoint = outcome.setpoint
        if self._storage is not None:
            # The audit sink handed its line to the storage thread: the ack will wait for it.
            self._tracker.audit_posted(setpoint.setpoint_id, self._storage.posted_seq)
        log.info(
            "setpoint accepted",
            setpoint_id=setpoint.setpoint_id,
            mode=str(setpoint.mode),
            power_w=setpoint.power_w,
            valid_until=outcome.valid_until.isoformat(),
            valid_for_s=round(setpoint.valid_until_s - setpoint.received_at_s, 3),
        )
        self._wake()

    def _ack_overdue(self, now_s: float) -> None:
        """Ack setpoints no control cycle followed within ``ack_wait_s``."""
        self._emit(self._tracker.overdue(now_s, wall_now=self._wall()))

    def _emit(self, outputs: Iterable[Output]) -> None:
        """Queue the tracker's acks and hand its audit lines to the sink, in order."""
        for output in outputs:
            if isinstance(output, AuditLine):
                self._audit_line(output.line)
                continue
            self._queue(
                Kind.ACK, self.topics.ack, output.message.to_json(), after_seq=output.after_seq
            )
            self._audit_line(output.audit)

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

    # -- outbound -----------------------------------------------------------------------------

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

    def _record_event(self, event: EventBody) -> None:
        self._record("event", event)

    def _record(self, kind: str, body: EventBody | TelemetryBody) -> None:
        """A telemetry or event record: stored when there is a durable outbox (events with an
        fsync, telemetry without), else queued in memory with an id of the link's own."""
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
            self.topics.for_record(kind),
            with_record_id(self._new_record_id(), data),
        )

    def _queue_telemetry(self, report: ControlReport, now_s: float) -> None:
        self._record("telemetry", telemetry_message(report))
        self._gate.sent(report, now_s)

    def _durable_sync(self) -> None:
        self._post_durable("stored telemetry not synced", lambda durable: durable.sync())

    def _queue_status(self, report: ControlReport) -> None:
        payload = status_message(report).to_json()
        self._queue(Kind.STATUS, self.topics.status, payload, retain=True)

    async def _housekeeping(self) -> None:
        synced_s = pruned_s = self._monotonic()
        self._durable_prune()
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now_s = self._monotonic()
            self._ack_overdue(now_s)
            report = self._latest_report
            if report is not None and self._gate.periodic_due(now_s):
                self._queue_telemetry(report, now_s)
            await self._delete_published()
            self._report_storage_health()
            if now_s - synced_s >= TELEMETRY_SYNC_S:
                synced_s = now_s
                self._durable_sync()
            if now_s - pruned_s >= PRUNE_EVERY_S:
                pruned_s = now_s
                self._durable_prune()
                if self._status is LinkStatus.UP:
                    self._report_drops()  # drops while a long backlog drains

    def _report_drops(self) -> None:
        at = self._wall()
        self._post_durable(
            "stored records dropped, but the count was not reported",
            lambda durable: durable.report_drops(at),
        )

    def _durable_prune(self) -> None:
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
            self._record_event(EventBody(at=self._wall(), kind="storage_failed", message=message))
        elif previous is not None:
            self._record_event(
                EventBody(
                    at=self._wall(), kind="storage_restored", message="durable writes work again"
                )
            )
