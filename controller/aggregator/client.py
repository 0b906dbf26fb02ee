"""The aiomqtt client as the aggregator link uses it, and how its errors read.

* ``new_client``: one ``aiomqtt.Client`` per connection, with a clean session (setpoints the
  broker queued while the charger was away are stale), the Last Will, a bounded incoming queue
  (``INCOMING_QUEUE_MAX``: aiomqtt drops newer messages when full and logs it; they go
  unacknowledged, so the aggregator resends) and Nagle's algorithm off;
* ``ClientLog``: paho-mqtt and aiomqtt log to a private logger; this forwards its warnings and
  errors to structlog and keeps the last one, which often explains a failed connect;
* ``describe`` and ``reason_code``: an aiomqtt error as text, a paho reason code as a number,
  for the ``AggregatorLinkError`` the link raises in their place.
"""

from __future__ import annotations

import logging
import socket
import ssl

import aiomqtt
import structlog
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.reasoncodes import ReasonCode

from controller.aggregator.messages import AVAILABILITY_OFFLINE
from controller.config import MqttBrokerConfig

log = structlog.get_logger(component="aggregator")

INCOMING_QUEUE_MAX = 32


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
) -> aiomqtt.Client:
    """A client for one connection; with ``will_topic``, the retained "offline" Last Will."""
    v5 = protocol is aiomqtt.ProtocolVersion.V5
    return aiomqtt.Client(
        broker.host,
        broker.port,
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
