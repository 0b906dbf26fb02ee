"""The aggregator link: MQTT to the aggregator's broker, on aiomqtt (which drives paho-mqtt).

Satisfies ``controller.links.AggregatorLink``. This module owns the connection and composes
its parts:

* ``tracker.py``, ``SetpointTracker`` (sans-IO): validates each setpoint payload
  (``validation.py``), keeps the one accepted last and those awaiting their ack, and decides
  every ack and audit line from the ``report()`` calls that follow;
* ``prices.py``, ``PriceDesk`` (sans-IO): validates each price schedule and peak event, keeps
  the ``PriceBook`` the daemon reads (``prices``), and answers each message on ``price_ack``;
* ``sender.py``, ``Sender``: routes acks, events, status and telemetry into the in-memory
  outbox (``outbox.py``) or the durable one (``durable_outbox.py``, store and forward) and
  keeps them until the broker acknowledged them; hands audit lines to the audit sink;
* ``tls.py``: the TLS context, the password file, and the handshake checked before paho connects;
* ``client.py``: the client built for one connection (aiomqtt's, plus the PUBACK reason code,
  topic aliases and a fast "no CONNACK"), its log, its errors as text.

One connection at a time, owned by ``run()``:

* connect to the broker's address, or in turn to each of ``broker.failover`` (a cluster's other
  nodes, or a standby), with MQTT 5 (or 3.1.1 when ``broker.protocol`` says so, or when an
  MQTT 5 CONNECT is refused with "unsupported protocol version" or gets no CONNACK at all: the
  link then stays on 3.1.1 for that address), a clean session,
  the configured keepalive, TLS (CA, optional client certificate and key) and username and
  password (read from ``password_file`` on every connect, so a rotated password is picked up);
* Last Will: ``offline``, retained, QoS 1, on the availability topic; on connect the link
  subscribes to the setpoint, price schedule and price event topics at QoS 1 (MQTT 5: "retain
  as published", so a retained message is recognisable even when it arrives live), then
  publishes ``online``, retained;
* a lost or refused connection makes the link ``DOWN`` (with ``reason``), and it reconnects by
  itself, to the next address: after a lost connection first at a random time within
  ``reconnect_spread_s`` (a fleet that lost its broker together comes back spread out), after
  a failed attempt with a capped exponential backoff with jitter (``backoff.py``); a connection
  that stayed up for ``STABLE_SESSION_S`` resets the backoff;
* the receive loop hands every setpoint to the tracker; an accepted one becomes ``setpoint()``
  at once and wakes the control loop; the acks and audit lines the tracker returns go to the
  sender;
* each price message gets its ack at once (an accepted one once its ledger row was handed to
  the storage thread and written, like a setpoint's audit line); an accepted one changes
  ``prices`` (its ``version`` goes up) and wakes the control loop;
* ``report()`` never waits: the tracker answers the setpoints the cycle followed, the sender
  queues events, status and telemetry, and the publish loop sends them while connected (acks
  first, then events, status and telemetry from memory, then stored records, a window at once);
* a PUBACK with reason 16 ("no matching subscribers", MQTT 5) or an error code leaves the
  message where it was (in memory or stored) and holds back everything but retained messages
  for a while, with backoff (``Sender.hold``): a record is delivered, not only handed over.

Audit: an optional ``AuditSink`` hears of every setpoint accepted, rejected (with the reason)
and applied (the power of its ack and the binding limit); a failing sink is logged, never
allowed to break the link.

Bounded queues: incoming setpoints waiting to be validated (``INCOMING_QUEUE_MAX``,
``client.py``; when full aiomqtt drops newer ones unacknowledged, so the aggregator resends),
the outbox (``sender.py``, policy in ``outbox.py``), accepted setpoints awaiting their ack
(``tracker.py``; the oldest is acked without an applied power when full), and the replay
memory in the validator.

Loss of the aggregator: ``setpoint()`` keeps returning the last accepted setpoint; once its
validity runs out the core ignores it and its fallback policy takes over. Nothing here needs an
operator: the link reconnects, republishes ``online`` and the status, and carries on.

Every aiomqtt/paho exception is translated into ``AggregatorLinkError`` here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import ssl
import time
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Protocol

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.aggregator.backoff import backoff_delay_s
from controller.aggregator.client import (
    ClientLog,
    LinkClient,
    NoConnackError,
    describe,
    new_client,
    reason_code,
)
from controller.aggregator.durable_outbox import DurableOutbox, OutboxRecord
from controller.aggregator.messages import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
)
from controller.aggregator.outbox import Outbox
from controller.aggregator.prices import PriceBook, PriceDesk, PriceLimits, PriceTopic
from controller.aggregator.sender import HOUSEKEEPING_S, PUBLISH_WINDOW, Sender
from controller.aggregator.tls import check_handshake, read_password, tls_context
from controller.aggregator.topics import Topics
from controller.aggregator.tracker import ACK_WAIT_S, SetpointTracker
from controller.aggregator.validation import Rejected, SetpointLimits
from controller.cancellation import cancel_requests, guarded, raise_if_cancelled_since
from controller.config import AggregatorConfig, Config, MqttBrokerConfig
from controller.core.snapshots import Setpoint
from controller.errors import AggregatorLinkError
from controller.links import AuditSink, ControlReport, LinkStatus, Wake
from controller.storage.db import LedgerError
from controller.storage.writer import StorageThread

log = structlog.get_logger(component="aggregator")

CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + CONNACK, and each SUBACK/PUBACK
STABLE_SESSION_S = 30.0  # a connection up this long resets the reconnect backoff
_UNSUPPORTED_PROTOCOL_V5 = 0x84  # MQTT 5 CONNACK reason "Unsupported Protocol Version"
_UNSUPPORTED_PROTOCOL_V311 = 0x01  # MQTT 3.1.1 CONNACK return code 1
_SUBACK_FAILURE = 0x80


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _addresses(broker: MqttBrokerConfig) -> tuple[tuple[str, int], ...]:
    """The broker's address, then its failover addresses (a port left out is the broker's)."""
    failover = [(a.host, broker.port if a.port is None else a.port) for a in broker.failover]
    return ((broker.host, broker.port), *failover)


class PriceStore(Protocol):
    """Where accepted price messages are kept (the ledger's ``record_price_message``). Called
    on the link's storage thread (the ``storage`` given to the link, which must be the one
    that owns the ledger's connection), so it may block on the disk; raises only
    ``LedgerError``. Without a storage thread it is not called."""

    def __call__(
        self, *, received_at: dt.datetime, topic: str, message_id: str, body: bytes, ack: bytes
    ) -> None: ...


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
        currency: str = "EUR",
        price_store: PriceStore | None = None,
        price_wall: Callable[[], dt.datetime] | None = None,
    ) -> None:
        if config.broker is None:
            raise ValueError("the aggregator config has no broker section")
        self._config = config
        self._broker = config.broker
        # Where to connect, in turn: the broker, then its failover addresses.
        self._addresses: tuple[tuple[str, int], ...] = _addresses(config.broker)
        self._address_index = 0
        self.topics = Topics.under(topic_prefix)
        self.client_id = client_id
        self._monotonic = monotonic
        self._wall = wall
        # Prices live on the site's timeline (tariff bands, departure): the daemon's wall clock,
        # which is the simulated one in simulation; setpoints stay on the real clock.
        self._price_wall = wall if price_wall is None else price_wall
        self._random01 = random01
        self._connect_timeout_s = connect_timeout_s
        self._configured_protocol = (
            aiomqtt.ProtocolVersion.V5
            if self._broker.protocol == "5"
            else aiomqtt.ProtocolVersion.V311
        )
        # Per address: a broker found to speak only 3.1.1 stays on it (a cluster's nodes may
        # differ while it is being upgraded).
        self._protocols = [self._configured_protocol] * len(self._addresses)
        self._tracker = SetpointTracker(
            SetpointLimits(
                max_abs_power_w=config.max_abs_power_w,
                max_ttl_s=config.max_setpoint_ttl_s,
                clock_skew_s=config.clock_skew_tolerance_s,
            ),
            ack_wait_s=ack_wait_s,
        )
        self._prices = PriceDesk(
            PriceLimits(currency=currency, clock_skew_s=config.clock_skew_tolerance_s)
        )
        self._price_store = price_store
        self._sender = Sender(
            self.topics,
            telemetry_period_s=config.telemetry_period_s,
            telemetry_min_interval_s=config.telemetry_min_interval_s,
            telemetry_idle_period_s=config.telemetry_idle_period_s,
            wall=wall,
            durable=durable,
            storage=storage,
            audit=audit,
            random01=random01,
        )
        self._client_log = ClientLog()
        self._status = LinkStatus.STARTING
        self._reason: str | None = None
        self._wake: Wake = lambda: None
        self._client: LinkClient | None = None
        self._stopping = False
        self._retry_now = False
        self._fallback_311: int | None = None  # the address on 3.1.1 after a missing CONNACK
        self._up_since_s: float | None = None
        self._down_since_s: float | None = None
        self.connects = 0

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        durable: DurableOutbox | None = None,
        audit: AuditSink | None = None,
        storage: StorageThread | None = None,
        price_store: PriceStore | None = None,
        price_wall: Callable[[], dt.datetime] | None = None,
    ) -> MqttAggregatorLink:
        broker = config.aggregator.broker
        client_id = broker.client_id if broker is not None and broker.client_id else None
        site_tz = zoneinfo.ZoneInfo(config.site.timezone)  # what the link stamps: as the reports
        return cls(
            config.aggregator,
            topic_prefix=config.topic_prefix,
            client_id=client_id or f"v2g-{config.site.site_id}-{config.site.charger_id}",
            wall=lambda: dt.datetime.now(site_tz),
            durable=durable,
            audit=audit,
            storage=storage,
            currency=config.economic_tariff().currency,
            price_store=price_store,
            price_wall=price_wall,
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
    def _protocol(self) -> aiomqtt.ProtocolVersion:
        return self._protocols[self._address_index]

    @property
    def protocol(self) -> str:
        """The MQTT version in use (or to be tried next): "5" or "3.1.1"."""
        return "5" if self._protocol is aiomqtt.ProtocolVersion.V5 else "3.1.1"

    def held_for_s(self, topic: str) -> float:
        """How much longer nothing goes to ``topic``: its last message reached no subscriber
        or was refused (0: not held)."""
        return self._sender.held_for_s(topic)

    @property
    def broker_address(self) -> str:
        """The address in use (or to be tried next), host:port."""
        return self._where

    @property
    def outbox(self) -> Outbox:
        return self._sender.outbox

    @property
    def durable(self) -> DurableOutbox | None:
        return self._sender.durable

    @property
    def storage(self) -> StorageThread | None:
        """The thread every durable outbox call runs on (None without a durable outbox)."""
        return self._sender.storage

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

    @property
    def prices(self) -> PriceBook:
        """The prices the aggregator pushed and the charger accepted (read each cycle; its
        ``version`` goes up with every change)."""
        return self._prices.book

    @property
    def price_desk(self) -> PriceDesk:
        return self._prices

    def restore_prices(self, records: Iterable[tuple[str, bytes]]) -> int:
        """Before ``run``: rebuild the price book and its replay memory from the accepted price
        messages the ledger kept, oldest first, as (topic, body). Returns how many changed it."""
        return self._prices.restore(records, self._price_wall())

    def report(self, report: ControlReport) -> None:
        """Record a control cycle's outcome; queues acks, events, status and telemetry."""
        self._sender.emit(self._tracker.report(report, wall_now=self._wall()))
        self._sender.report(report)

    async def publish_offline(self) -> None:
        """Publish the retained "offline" (over the live connection, or a short one of its own)
        and stop reconnecting. Raises AggregatorLinkError if the broker cannot be reached."""
        self._stopping = True
        topic = self.topics.availability
        client = self._client
        cancels_before = cancel_requests()
        try:
            if client is not None:
                await self._publish(client, topic, AVAILABILITY_OFFLINE, retain=True)
            else:
                context, password = await self._credentials()
                async with self._new_client(context, password, will=False) as one_shot:
                    raise_if_cancelled_since(cancels_before)
                    await self._publish(one_shot, topic, AVAILABILITY_OFFLINE, retain=True)
        except aiomqtt.MqttError as exc:
            raise_if_cancelled_since(cancels_before)
            raise AggregatorLinkError(f"could not publish offline: {describe(exc)}") from None
        log.info("availability published", availability="offline")

    async def run(self, wake: Wake) -> None:
        self._wake = wake
        self._sender.start(self._monotonic())
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._connect_loop(), name="aggregator-connect")
                tasks.create_task(self._housekeeping(), name="aggregator-housekeeping")
        finally:
            self._sender.close()

    # -- connection ---------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        host, port = self._addresses[self._address_index]
        return f"{host}:{port}"

    async def _connect_loop(self) -> None:
        failed = 0  # attempts failed since a connection last came up
        flaps = 0  # connections lost before they were stable (STABLE_SESSION_S)
        while True:
            if self._stopping:
                await asyncio.Event().wait()  # offline was published: stay quiet until stopped
            try:
                await self._session()
            except AggregatorLinkError as exc:
                self._went_down(str(exc))
            up_since_s, self._up_since_s = self._up_since_s, None
            if self._retry_now:  # the same address again at once, on MQTT 3.1.1
                self._retry_now = False
                continue
            # A 3.1.1 fallback after a missing CONNACK lasts one connection: a close without a
            # CONNACK has other causes too (a load balancer with a dead backend, a broker at
            # its connection limit), and PUBACK reasons are only there with MQTT 5.
            if self._fallback_311 is not None:
                self._protocols[self._fallback_311] = self._configured_protocol
                self._fallback_311 = None
            # The next attempt goes to the next address: the node we were on may be the one
            # that failed, and any node of a cluster (or the standby) serves us as well.
            self._address_index = (self._address_index + 1) % len(self._addresses)
            if up_since_s is not None:
                # A connection that was up is lost. When a broker restarts, its whole fleet
                # gets here at once: the first reconnect is spread out at random, and one that
                # keeps dropping also backs off.
                failed = 0
                stable = self._monotonic() - up_since_s >= STABLE_SESSION_S
                flaps = 0 if stable else flaps + 1
                delay_s = self._random01() * self._config.reconnect_spread_s
                if flaps:
                    delay_s += self._backoff_s(flaps - 1)
            else:
                # Capped exponential backoff with jitter, one step per round of the addresses.
                delay_s = self._backoff_s(failed // len(self._addresses))
                failed += 1
            log.info("reconnecting", in_s=round(delay_s, 2), failed=failed, broker=self._where)
            await asyncio.sleep(delay_s)

    def _backoff_s(self, step: int) -> float:
        return backoff_delay_s(
            step, self._config.reconnect_initial_s, self._config.reconnect_max_s, self._random01()
        )

    async def _credentials(self) -> tuple[ssl.SSLContext | None, str | None]:
        """The TLS context and the password, built afresh for each connect (a rotated password
        or certificate is picked up), with the TLS handshake checked first (``tls.py``)."""
        tls, path = self._config.tls, self._config.password_file
        context = tls_context(tls) if tls is not None else None
        password = read_password(path) if path is not None else None
        if context is not None:
            host, port = self._addresses[self._address_index]
            await check_handshake(host, port, context, timeout_s=self._connect_timeout_s)
        return context, password

    def _new_client(
        self, context: ssl.SSLContext | None, password: str | None, *, will: bool
    ) -> LinkClient:
        host, port = self._addresses[self._address_index]
        return new_client(
            self._broker,
            host=host,
            port=port,
            client_id=self.client_id,
            protocol=self._protocol,
            username=self._config.username,
            password=password,
            tls_context=context,
            will_topic=self.topics.availability if will else None,
            client_log=self._client_log,
            timeout_s=self._connect_timeout_s,
        )

    async def _session(self) -> None:
        """One connection, from connect to loss. Always ends by raising."""
        context, password = await self._credentials()
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
                await self._publish(
                    client, self.topics.availability, AVAILABILITY_ONLINE, retain=True
                )
                self._came_up(client)
                try:
                    await self._serve(client)
                finally:
                    self._client = None
        except MqttConnectError as exc:
            raise_if_cancelled_since(cancels_before)
            raise self._refused(exc, protocol) from None
        except NoConnackError as exc:
            raise_if_cancelled_since(cancels_before)
            raise self._no_connack(exc, protocol) from None
        except aiomqtt.MqttError as exc:
            raise_if_cancelled_since(cancels_before)
            raise AggregatorLinkError(self._failure(exc)) from None

    def _refused(self, exc: MqttConnectError, protocol: aiomqtt.ProtocolVersion) -> Exception:
        code = reason_code(exc.rc)
        if protocol is aiomqtt.ProtocolVersion.V5 and code in (
            _UNSUPPORTED_PROTOCOL_V5,
            _UNSUPPORTED_PROTOCOL_V311,
        ):
            self._protocols[self._address_index] = aiomqtt.ProtocolVersion.V311
            self._retry_now = True
            log.warning("broker does not speak MQTT 5; falling back to 3.1.1", broker=self._where)
            return AggregatorLinkError(
                f"{self._where} refused MQTT 5 (unsupported protocol version); using MQTT 3.1.1"
            )
        return AggregatorLinkError(f"{self._where} refused the connection: {exc}")

    def _no_connack(self, exc: NoConnackError, protocol: aiomqtt.ProtocolVersion) -> Exception:
        """No CONNACK to an MQTT 5 CONNECT: a broker that speaks only 3.1.1 may drop it without
        an answer (RabbitMQ 3.10 does). Try 3.1.1 at once, for this connection only: the next
        connection tries MQTT 5 first again (a missing CONNACK is not a proof)."""
        if protocol is aiomqtt.ProtocolVersion.V5 and self._configured_protocol is protocol:
            self._protocols[self._address_index] = aiomqtt.ProtocolVersion.V311
            self._fallback_311 = self._address_index
            self._retry_now = True
            text = self._failure(exc)
            log.warning("no CONNACK to MQTT 5; trying MQTT 3.1.1", broker=self._where, detail=text)
            return AggregatorLinkError(f"{text} (MQTT 5; trying MQTT 3.1.1)")
        return AggregatorLinkError(self._failure(exc))

    def _failure(self, exc: aiomqtt.MqttError) -> str:
        if self._up_since_s is not None:
            return f"connection to {self._where} lost: {describe(exc)}"
        text = f"cannot connect to {self._where}: {describe(exc)}"
        detail = self._client_log.last
        if detail and detail not in text:
            text = f"{text}; {detail}"
        return text

    async def _subscribe(self, client: LinkClient) -> None:
        # One SUBSCRIBE per topic: setpoints first, so that a broker refusing the price topics
        # is reported by name.
        for topic in (self.topics.setpoint, self.topics.price_schedule, self.topics.price_event):
            await self._subscribe_one(client, topic)

    async def _subscribe_one(self, client: LinkClient, topic: str) -> None:
        if self._protocol is aiomqtt.ProtocolVersion.V5:
            # Retain-as-published: a retained message keeps its flag even when it arrives live.
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            granted = await guarded(
                client.subscribe(topic, options=options, timeout=self._connect_timeout_s)
            )
        else:
            granted = await guarded(client.subscribe(topic, qos=1, timeout=self._connect_timeout_s))
        codes = [reason_code(code) for code in granted]
        if not codes or codes[0] >= _SUBACK_FAILURE:
            raise AggregatorLinkError(
                f"{self._where} refused the subscription to {topic} (codes {codes})"
            )
        if codes[0] < 1:
            log.warning("broker granted only QoS 0", topic=topic)

    def _came_up(self, client: LinkClient) -> None:
        self._client = client
        if self._fallback_311 is not None:
            log.warning(
                "connected with MQTT 3.1.1 after MQTT 5 got no CONNACK; MQTT 5 is tried first "
                "again on the next connection",
                broker=self._where,
            )
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
        down_s = None
        if self._down_since_s is not None:
            down_s = max(0.0, now_s - self._down_since_s)
            self._down_since_s = None
        self._sender.came_up(down_s)
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

    async def _serve(self, client: LinkClient) -> None:
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

    async def _receive(self, client: LinkClient) -> None:
        topics = self.topics
        async for message in client.messages:
            topic = message.topic.value
            if topic == topics.setpoint:
                self._on_setpoint(message.payload, retained=bool(message.retain))
            elif topic == topics.price_schedule:
                self._on_price("price_schedule", message.payload, retained=bool(message.retain))
            elif topic == topics.price_event:
                self._on_price("price_event", message.payload, retained=bool(message.retain))
            else:
                log.debug("message on an unexpected topic ignored", topic=topic)

    async def _send(self, client: LinkClient) -> None:
        """Acks and status (in memory) first, then the stored records in order of creation.
        A topic whose last message reached no subscriber (or was refused) is held for a while;
        the others go on (``Sender.published``, ``Sender.stored_outcome``)."""
        sender = self._sender
        while True:
            item = sender.next_message()
            if item is not None:
                await sender.ready(item)
                code = await self._publish(client, item.topic, item.payload, retain=item.retain)
                sender.published(item, code)
                continue
            # One publish of ours may be in flight beside the window (publish_offline).
            records = await sender.stored_window(min(PUBLISH_WINDOW, client.receive_maximum - 1))
            if records:
                await self._publish_stored(client, records)
                continue
            await sender.idle(max_wait_s=sender.hold_ends_in_s())

    async def _publish(
        self, client: LinkClient, topic: str, payload: bytes, *, retain: bool = False
    ) -> int:
        """One QoS 1 publish, done once the broker acknowledged it; returns the PUBACK's
        reason code (MQTT 5; 0 with 3.1.1)."""
        return await guarded(
            client.publish_acked(topic, payload, retain=retain, timeout_s=self._connect_timeout_s)
        )

    async def _publish_stored(self, client: LinkClient, records: list[OutboxRecord]) -> None:
        """Publish a window of stored records at once (paho sends them in this order) and
        delete those the broker delivered; one it delivered to no subscriber (or refused) is
        kept for a retry after the hold. On a lost connection none is deleted, and the ones
        that did arrive are sent again after the reconnect under the same id."""
        results = await asyncio.gather(
            *(
                self._publish(client, self.topics.for_record(record.kind), record.payload())
                for record in records
            ),
            return_exceptions=True,
        )
        codes: list[int] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            codes.append(result)
        await self._sender.stored_outcome(records, codes)

    # -- setpoints and acks -------------------------------------------------------------------

    def _on_setpoint(self, payload: bytes, *, retained: bool) -> None:
        received = self._tracker.receive(
            payload, retained=retained, wall_now=self._wall(), monotonic_now_s=self._monotonic()
        )
        outcome = received.outcome
        if isinstance(outcome, Rejected):
            log.warning("setpoint rejected", setpoint_id=outcome.setpoint_id, reason=outcome.reason)
            self._sender.emit(received.outputs)
            return
        self._sender.emit(received.outputs)
        setpoint = outcome.setpoint
        # The audit sink handed its line to the storage thread: the ack will wait for it.
        self._tracker.audit_posted(setpoint.setpoint_id, self._sender.posted_seq)
        log.info(
            "setpoint accepted",
            setpoint_id=setpoint.setpoint_id,
            mode=str(setpoint.mode),
            power_w=setpoint.power_w,
            valid_until=outcome.valid_until.isoformat(),
            valid_for_s=round(setpoint.valid_until_s - setpoint.received_at_s, 3),
        )
        self._wake()

    # -- prices -------------------------------------------------------------------------------

    def _on_price(self, topic: PriceTopic, payload: bytes, *, retained: bool) -> None:
        wall_now = self._price_wall()
        outcome = self._prices.receive(topic, payload, retained=retained, wall_now=wall_now)
        ack = outcome.ack.to_json()
        if not outcome.accepted:
            log.warning(
                "price message rejected", topic=topic, id=outcome.message_id, reason=outcome.reason
            )
            self._sender.queue_ack(self.topics.price_ack, ack)
            return
        assert outcome.message_id is not None  # noqa: S101  an accepted message has an id
        after_seq = self._store_price(topic, outcome.message_id, payload, ack, wall_now)
        self._sender.queue_ack(self.topics.price_ack, ack, after_seq=after_seq)
        book = self._prices.book
        log.info(
            "price message accepted",
            topic=topic,
            id=outcome.message_id,
            version=book.version,
            slots=len(book.current_slots(wall_now)),
            events=len(book.events(wall_now)),
        )
        self._wake()

    def _store_price(
        self, topic: str, message_id: str, body: bytes, ack: bytes, received_at: dt.datetime
    ) -> int:
        """Hand an accepted message to the price store on the storage thread; returns the job
        its ack waits for (0: nothing to wait for)."""
        store, storage = self._price_store, self._sender.storage
        if store is None or storage is None:
            return 0

        def run() -> None:
            try:
                store(
                    received_at=received_at, topic=topic, message_id=message_id, body=body, ack=ack
                )
            except LedgerError as exc:
                storage.record_failure("price", exc)
                log.error(
                    "accepted price message not kept in the ledger", id=message_id, error=str(exc)
                )

        try:
            return storage.post("price", run)
        except LedgerError:
            log.error("accepted price message not kept: storage stopped", id=message_id)
            return 0

    def _ack_overdue(self, now_s: float) -> None:
        """Ack setpoints no control cycle followed within ``ack_wait_s``."""
        self._sender.emit(self._tracker.overdue(now_s, wall_now=self._wall()))

    # -- housekeeping -------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now_s = self._monotonic()
            self._ack_overdue(now_s)
            await self._sender.housekeeping(now_s, connected=self._status is LinkStatus.UP)
