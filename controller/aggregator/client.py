"""The aiomqtt client as the aggregator link uses it, and how its errors read.

* ``new_client``: one ``LinkClient`` per connection, with a clean session (setpoints the
  broker queued while the charger was away are stale), the Last Will, a bounded incoming queue
  (``INCOMING_QUEUE_MAX``: aiomqtt drops newer messages when full and logs it; they go
  unacknowledged, so the aggregator resends) and Nagle's algorithm off;
* ``LinkClient``: aiomqtt's client plus three things aiomqtt does not give: the PUBACK's reason
  code (``publish_acked``: with MQTT 5 the broker says "no matching subscribers" there), topic
  aliases (MQTT 5.0 §3.3.2.3.4: a topic's name goes over the wire once per connection, then a
  two-byte alias), and a connection the broker closes before its CONNACK reported at once as
  ``NoConnackError`` (aiomqtt would wait out its timeout), which is how RabbitMQ 3.10 answers an
  MQTT 5 CONNECT;
* ``ClientLog``: paho-mqtt and aiomqtt log to a private logger; this forwards its warnings and
  errors to structlog and keeps the last one, which often explains a failed connect;
* ``describe`` and ``reason_code``: an aiomqtt error as text, a paho reason code as a number,
  for the ``AggregatorLinkError`` the link raises in their place.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import aiomqtt
import structlog
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.aggregator.messages import AVAILABILITY_OFFLINE
from controller.config import MqttBrokerConfig

log = structlog.get_logger(component="aggregator")

INCOMING_QUEUE_MAX = 32
# MQTT 5.0 §3.4.2.1, PUBACK reason codes: 0x10 "No matching subscribers" (the broker took the
# message and delivered it to nobody); 0x80 and over are errors (the message was not accepted).
PUBACK_SUCCESS = 0x00
PUBACK_NO_MATCHING_SUBSCRIBERS = 0x10
# Topic aliases offered at most, whatever the broker allows (CONNACK Topic Alias Maximum,
# MQTT 5.0 §3.2.2.3.8): the link publishes on a handful of topics.
MAX_TOPIC_ALIASES = 16
RECEIVE_MAXIMUM_DEFAULT = 65_535  # a CONNACK without Receive Maximum (§3.2.2.3.3)


class NoConnackError(aiomqtt.MqttError):
    """The TCP (and TLS) connection was made but the broker sent no CONNACK: it closed the
    connection or let the timeout pass (RabbitMQ 3.10 drops an MQTT 5 CONNECT this way)."""


class LinkClient(aiomqtt.Client):
    """``aiomqtt.Client`` with the PUBACK reason code, topic aliases and a fast ``NoConnackError``
    (see the module docstring). It hooks the paho client's callbacks and calls aiomqtt's own from
    the hooks, so aiomqtt's bookkeeping is unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._v5 = kwargs.get("protocol") is aiomqtt.ProtocolVersion.V5
        self._puback: dict[int, asyncio.Future[int]] = {}
        self._aliases: dict[str, int] = {}
        self._alias_max = 0  # from the CONNACK: 0 (the default) means none (§3.2.2.3.8)
        self.socket_opened = False
        self.connack_received = False
        self.receive_maximum = RECEIVE_MAXIMUM_DEFAULT
        paho = self._client
        # aiomqtt's own callbacks, called from the hooks.
        on_publish = cast(Callable[..., None], paho.on_publish)
        on_connect = cast(Callable[..., None], paho.on_connect)
        on_disconnect = cast(Callable[..., None], paho.on_disconnect)
        on_socket_open = cast(Callable[..., None], paho.on_socket_open)

        def publish_hook(client: Any, userdata: Any, mid: int, code: Any, props: Any) -> None:
            future = self._puback.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(reason_code(code))
            on_publish(client, userdata, mid, code, props)

        def connect_hook(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            self.connack_received = True
            maximum = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
            self._alias_max = min(int(maximum or 0), MAX_TOPIC_ALIASES)
            # The broker's Receive Maximum (§3.2.2.3.3): QoS 1 publishes in flight at once;
            # more is a protocol error (§4.9). paho does not apply it: the link does.
            receive = getattr(props, "ReceiveMaximum", None) if props is not None else None
            if receive:
                self.receive_maximum = int(receive)
            on_connect(client, userdata, flags, code, props)

        def disconnect_hook(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            connected = self._connected
            if self.socket_opened and not self.connack_received and not connected.done():
                # aiomqtt ignores a close before the CONNACK and waits out its timeout.
                connected.set_exception(
                    NoConnackError("the broker closed the connection without a CONNACK")
                )
            on_disconnect(client, userdata, flags, code, props)

        def socket_open_hook(client: Any, userdata: Any, sock: Any) -> None:
            self.socket_opened = True
            on_socket_open(client, userdata, sock)

        paho.on_publish = publish_hook
        paho.on_connect = connect_hook
        paho.on_disconnect = disconnect_hook
        paho.on_socket_open = socket_open_hook

    async def __aenter__(self) -> LinkClient:
        try:
            await super().__aenter__()
        except NoConnackError:
            raise
        except aiomqtt.MqttError as exc:
            if self.socket_opened and not self.connack_received and str(exc) == _TIMED_OUT:
                raise NoConnackError(
                    f"no CONNACK within {self.timeout:g} s of the connection"
                ) from None
            raise
        return self

    @property
    def pending_pubacks(self) -> int:
        """Publishes waiting for their PUBACK."""
        return len(self._puback)

    async def publish_acked(
        self, topic: str, payload: bytes, *, retain: bool, timeout_s: float
    ) -> int:
        """Publish at QoS 1 and wait for the PUBACK; returns its reason code (always 0 with
        MQTT 3.1.1, which has none). Raises ``aiomqtt.MqttError`` when the message could not
        be sent or no PUBACK came within ``timeout_s``."""
        properties: Properties | None = None
        wire_topic = topic
        new_alias: int | None = None
        if self._v5:
            alias = self._aliases.get(topic)
            if alias is not None:
                wire_topic = ""  # the alias stands for the topic (§3.3.2.3.4)
            elif len(self._aliases) < self._alias_max:
                alias = new_alias = len(self._aliases) + 1
            if alias is not None:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.TopicAlias = alias
        info = self._client.publish(wire_topic, payload, 1, retain, properties)
        if info.rc != MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if new_alias is not None:
            # Only once the packet that names the topic is on its way: the broker learns the
            # alias from it, and a later publish may then go by the alias alone.
            self._aliases[topic] = new_alias
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._puback[info.mid] = future
        try:
            # asyncio.timeout, not wait_for: a cancel is never lost to a PUBACK (cancellation.py).
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise aiomqtt.MqttError(_TIMED_OUT) from None
        finally:
            self._puback.pop(info.mid, None)


_TIMED_OUT = "Operation timed out"  # aiomqtt's own text for a wait that timed out


class ClientLog(logging.Handler):
    """The client's private logger (``logger``) forwarded to structlog; ``last`` is the last
    warning or error (e.g. a TLS alert)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None
        self.logger = logging.Logger("controller.aggregator.mqtt", logging.WARNING)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.last = text
        log.warning("mqtt client", detail=text)


def new_client(
    broker: MqttBrokerConfig,
    *,
    client_id: str,
    protocol: aiomqtt.ProtocolVersion,
    username: str | None,
    password: str | None,
    tls_context: ssl.SSLContext | None,
    will_topic: str | None,
    client_log: ClientLog,
    timeout_s: float,
    host: str | None = None,
    port: int | None = None,
) -> LinkClient:
    """A client for one connection (to ``host``:``port``, by default the broker's own); with
    ``will_topic``, the retained "offline" Last Will."""
    v5 = protocol is aiomqtt.ProtocolVersion.V5
    return LinkClient(
        broker.host if host is None else host,
        broker.port if port is None else port,
        username=username,
        password=password,
        logger=client_log.logger,
        identifier=client_id,
        protocol=protocol,
        will=(
            aiomqtt.Will(will_topic, AVAILABILITY_OFFLINE, qos=1, retain=True)
            if will_topic is not None
            else None
        ),
        # A clean session: setpoints queued by the broker while we were away are stale.
        clean_session=None if v5 else True,
        clean_start=True if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        timeout=timeout_s,
        keepalive=broker.keepalive_s,
        max_queued_incoming_messages=INCOMING_QUEUE_MAX,
        tls_context=tls_context,
        # paho leaves Nagle's algorithm on: with the peer's delayed ACK an ack or a small
        # publish can wait up to 40 ms in the kernel (measured by bench/latency.py).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )


def describe(exc: aiomqtt.MqttError) -> str:
    """An aiomqtt error as text, with its cause when that adds something."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


def reason_code(value: object) -> int:
    """A paho reason code (or a 3.1.1 return code) as a number; -1 when it is neither."""
    if isinstance(value, ReasonCode):
        return int(value.value)
    if isinstance(value, int):
        return value
    return -1
