"""Count MQTT traffic on the wire: a loopback TCP proxy that parses each packet's fixed header.

``MqttMeter`` reads one direction of one connection as a byte stream and counts every MQTT
packet by type (with its bytes, framing included) and every PUBLISH by its topic's last level
(``telemetry``, ``ack``, ...), following MQTT 5 topic aliases. ``CountingProxy`` sits between
a client and the broker and feeds a meter per direction. Shared by ``bench/bytes.py`` (one
charger's bytes per day); nothing here knows the charger.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# MQTT 5.0 §2.1.2, table 2-1: the control packet type is the fixed header's high nibble.
PACKET_TYPES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}
_CONNECT, _PUBLISH = 1, 3
_TOPIC_ALIAS = 0x23  # MQTT 5.0 §3.3.2.3.4
# MQTT 5.0 §2.2.2.2: the properties a PUBLISH may carry, by how their value is encoded.
_FIXED_SIZE = {0x01: 1, 0x02: 4, 0x23: 2}  # payload format, message expiry, topic alias
_PREFIXED = {0x03, 0x08, 0x09}  # content type, response topic, correlation data: 2-byte length
_VARIABLE = {0x0B}  # subscription identifier: a variable byte integer
_PAIR = {0x26}  # user property: two length-prefixed strings


def _varint(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """A variable byte integer (MQTT 5.0 §1.5.5) at ``start``: (value, bytes used), or None
    when the data ends before it does."""
    value = 0
    for used in range(4):
        if start + used >= len(data):
            return None
        byte = data[start + used]
        value |= (byte & 0x7F) << (7 * used)
        if not byte & 0x80:
            return value, used + 1
    raise ValueError("malformed variable byte integer: more than 4 bytes (MQTT 5.0 §1.5.5)")


@dataclass
class Tally:
    count: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "bytes": self.bytes}


@dataclass
class MqttMeter:
    """One direction of one connection. ``now`` stamps each PUBLISH (any clock the caller
    likes: the bench's simulated one)."""

    now: Callable[[], float] = lambda: 0.0
    protocol_level: list[int] = field(default_factory=lambda: [5])  # shared by both directions
    total_bytes: int = 0
    by_type: dict[str, Tally] = field(default_factory=dict)
    by_topic: dict[str, Tally] = field(default_factory=dict)
    publish_times: list[tuple[float, str]] = field(default_factory=list)
    packet_times: list[float] = field(default_factory=list)
    malformed: str | None = None  # why parsing stopped (the stream is not MQTT)
    _buffer: bytearray = field(default_factory=bytearray)
    _aliases: dict[int, str] = field(default_factory=dict)

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        if self.malformed is not None:
            return  # lost the packet boundaries: only bytes are counted from here on
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            try:
                length = _varint(buffer, 1)
            except ValueError as exc:
                self.malformed = f"{exc}, after {self.total_bytes - len(buffer)} bytes"
                buffer.clear()
                return
            if length is None:
                return
            remaining, used = length
            size = 1 + used + remaining
            if len(buffer) < size:
                return
            self._packet(bytes(buffer[:size]), 1 + used)
            del buffer[:size]

    def _packet(self, packet: bytes, body_at: int) -> None:
        kind = packet[0] >> 4
        name = PACKET_TYPES.get(kind, f"type {kind}")
        self.by_type.setdefault(name, Tally()).add(len(packet))
        now_s = self.now()
        self.packet_times.append(now_s)
        if kind == _CONNECT and len(packet) > body_at + 6:
            # §3.1.2.2: after the protocol name "MQTT" (2 + 4 bytes), the level: 4 or 5.
            self.protocol_level[0] = packet[body_at + 6]
        elif kind == _PUBLISH:
            topic = self._topic(packet, body_at)
            self.by_topic.setdefault(topic, Tally()).add(len(packet))
            self.publish_times.append((now_s, topic))

    def _topic(self, packet: bytes, at: int) -> str:
        """The last level of a PUBLISH's topic (§3.3.2.1), resolving a topic alias."""
        qos = (packet[0] >> 1) & 0x03
        length = int.from_bytes(packet[at : at + 2], "big")
        topic = packet[at + 2 : at + 2 + length].decode("utf-8", errors="replace")
        at += 2 + length + (2 if qos else 0)
        if self.protocol_level[0] == 5:
            alias = self._alias(packet, at)
            if alias is not None:
                if topic:
                    self._aliases[alias] = topic
                else:
                    topic = self._aliases.get(alias, f"alias {alias}")
        return topic.rsplit("/", 1)[-1]

    @staticmethod
    def _alias(packet: bytes, at: int) -> int | None:
        """The Topic Alias property of a PUBLISH (§3.3.2.3), if it has one."""
        header = _varint(packet, at)
        if header is None:
            return None
        length, used = header
        at += used
        end = at + length
        while at < end:
            prop = packet[at]
            at += 1
            if prop == _TOPIC_ALIAS:
                return int.from_bytes(packet[at : at + 2], "big")
            if prop in _FIXED_SIZE:
                at += _FIXED_SIZE[prop]
            elif prop in _PREFIXED:
                at += 2 + int.from_bytes(packet[at : at + 2], "big")
            elif prop in _PAIR:
                for _ in range(2):
                    at += 2 + int.from_bytes(packet[at : at + 2], "big")
            elif prop in _VARIABLE:
                value = _varint(packet, at)
                if value is None:
                    return None
                at += value[1]
            else:
                return None  # not a PUBLISH property: stop reading rather than guess
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "bytes": self.total_bytes,
            "malformed": self.malformed,
            "packets": sum(t.count for t in self.by_type.values()),
            "by_type": {name: t.as_dict() for name, t in sorted(self.by_type.items())},
            "publish_by_topic": {name: t.as_dict() for name, t in sorted(self.by_topic.items())},
        }


@dataclass
class Connection:
    """The two meters of one proxied connection: ``up`` is client to broker."""

    up: MqttMeter
    down: MqttMeter
    reads: Counter[str] = field(default_factory=Counter)  # socket reads per direction


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of a broker; every connection gets its two meters.
    An async context manager; ``port`` is where clients connect."""

    def __init__(self, broker_port: int, *, now: Callable[[], float] = lambda: 0.0) -> None:
        self.broker_port = broker_port
        self.now = now
        self.connections: list[Connection] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a server callback runs in a task
        self._tasks.add(task)
        level = [5]
        meters = Connection(
            MqttMeter(now=self.now, protocol_level=level),
            MqttMeter(now=self.now, protocol_level=level),
        )
        self.connections.append(meters)
        try:
            broker_reader, broker_writer = await asyncio.open_connection(
                "127.0.0.1", self.broker_port
            )
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        for stream in (writer, broker_writer):
            sock = stream.get_extra_info("socket")
            if sock is not None:  # as the link and the broker do: no Nagle delay in between
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                self._pump(reader, broker_writer, meters.up, meters, "up"),
                self._pump(broker_reader, writer, meters.down, meters, "down"),
            )
        finally:
            for stream in (writer, broker_writer):
                stream.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        meter: MqttMeter,
        connection: Connection,
        direction: str,
    ) -> None:
        try:
            while data := await reader.read(65536):
                connection.reads[direction] += 1
                meter.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.close()
