"""The RabbitMQ cluster harness (hil/rabbitmq.py) and the broker facts the link's failover rests on.

Each test starts its own cluster from Debian's rabbitmq-server 3.10 (MQTT plugin), talks to it
with paho-mqtt directly (MQTT 3.1.1, or raw bytes where the point is what is on the wire), and
checks on the way out that no node or epmd process is left. Facts shown here:

* a QoS 1 message published on one node reaches a subscriber on the other;
* with one node of two stopped, the other still takes connections, subscriptions and publishes;
* an MQTT 5 CONNECT is answered by closing the socket, with no CONNACK (3.10 speaks 3.1.1);
* retained messages are kept per node: one published through node A is never seen through
  node B, before or after A stops;
* in a two-node cluster a stopped node cannot bring MQTT back (the plugin's client-ID tracker is a
  Raft cluster of both nodes; with one down it has no majority): ``start_node`` refuses; in a
  cluster of three it rejoins, with the retained messages it held when it stopped (stale if the
  topic was published again through another node meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from hil.rabbitmq import RabbitCluster, missing_reason

pytestmark = [pytest.mark.hil, pytest.mark.slow]

log = logging.getLogger(__name__)

WAIT_S = 5.0  # bounded waits that fail only if the thing never happens


@pytest.fixture
def need_rabbitmq() -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)  # a failure under CI=true (conftest.py)


@pytest.fixture
def cluster(need_rabbitmq: None) -> Iterator[RabbitCluster]:
    with RabbitCluster(nodes=2) as running:
        yield running
    assert_gone(running)


@pytest.fixture
def connect() -> Iterator[Callable[[int, str], Paho]]:
    """Connects paho clients and closes them all at the end (paho would keep reconnecting)."""
    made: list[Paho] = []

    def make(port: int, client_id: str) -> Paho:
        client = Paho(port, client_id)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def assert_gone(cluster: RabbitCluster) -> None:
    """close() stopped every node and the epmd and removed the directory."""
    assert cluster.leftover_pids() == []
    assert not cluster.directory.exists()


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Paho:
    """A paho-mqtt 3.1.1 client on its own network thread, with blocking helpers."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._subscribed = threading.Event()
        self.connack: ReasonCode | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()
        assert self._connected.wait(WAIT_S), f"no CONNACK from port {port}"
        connack: ReasonCode | None = self.connack
        assert connack is not None
        assert not connack.is_failure, connack

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        self.connack = code
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, code: Any, p: Any) -> None:
        self._disconnected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, p: Any) -> None:
        self.granted = [code.value for code in codes]
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, message.retain)
        )

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        result, _ = self._client.subscribe(topic, qos=1)
        assert result is MQTTErrorCode.MQTT_ERR_SUCCESS
        assert self._subscribed.wait(WAIT_S), f"no SUBACK for {topic}"
        assert self.granted == [1], self.granted

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1; returns once the broker's PUBACK arrived."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def next_message(self, timeout_s: float = WAIT_S) -> Received:
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout_s} s") from None

    def wait_disconnected(self, timeout_s: float = WAIT_S) -> bool:
        return self._disconnected.wait(timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def mqtt_connect_packet(protocol_level: int, client_id: bytes) -> bytes:
    """A CONNECT with a clean session and no will or login, as raw bytes.

    MQTT 3.1.1 §3.1.2 and MQTT 5.0 §3.1.2: protocol name "MQTT", level 4 or 5, flags, keepalive;
    MQTT 5.0 adds a properties length (0 here) before the payload (§3.1.2.11)."""
    header = b"\x00\x04MQTT" + bytes([protocol_level, 0x02]) + struct.pack(">H", 30)
    if protocol_level == 5:
        header += b"\x00"
    body = header + struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def answer_to_connect(port: int, protocol_level: int) -> tuple[bytes, float]:
    """What the broker sends back to a CONNECT before it closes (b"" if nothing), and when."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        began_s = time.monotonic()
        sock.sendall(mqtt_connect_packet(protocol_level, b"raw-%d" % protocol_level))
        first = sock.recv(64)
        return first, time.monotonic() - began_s


def test_qos1_crosses_nodes_and_node_b_serves_alone_after_node_a_stops(
    cluster: RabbitCluster, connect: Callable[[int, str], Paho]
) -> None:
    """Publisher on B, subscriber on A: the QoS 1 message arrives. A stopped: its client is
    dropped, and B alone still connects, subscribes and delivers."""
    assert cluster.timings_s["start_s"] > 0
    on_a = connect(cluster.mqtt_port(0), "sub-on-a")
    on_b = connect(cluster.mqtt_port(1), "pub-on-b")
    on_a.subscribe("v2g/test/cross")
    on_b.publish("v2g/test/cross", b"one")
    got = on_a.next_message()
    assert (got.topic, got.payload, got.qos, got.retain) == ("v2g/test/cross", b"one", 1, False)

    stop_s = cluster.stop_node(0)
    assert stop_s == cluster.timings_s["stop_node_0_s"]
    assert on_a.wait_disconnected(), "the client on the stopped node was not dropped"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", cluster.mqtt_port(0)), timeout=WAIT_S).close()

    # The client already on B carries on, and a new one connects and subscribes there.
    fresh = connect(cluster.mqtt_port(1), "sub-on-b-after")
    fresh.subscribe("v2g/test/cross")
    on_b.publish("v2g/test/cross", b"two")
    got = fresh.next_message()
    assert (got.payload, got.qos) == (b"two", 1)
    # It can publish too (to itself through B).
    fresh.publish("v2g/test/cross", b"three")
    assert fresh.next_message().payload == b"three"

    # MQTT cannot come back on A while B alone holds no majority of the client-ID tracker.
    with pytest.raises(RuntimeError, match="majority"):
        cluster.start_node(0)


def test_mqtt5_connect_is_dropped_without_connack(need_rabbitmq: None) -> None:
    """RabbitMQ 3.10 closes the socket on an MQTT 5 CONNECT: no CONNACK (so no reason code
    0x84 "unsupported protocol version", MQTT 5.0 §3.2.2.2) for a client to fall back on.
    paho sees a disconnect; aiomqtt waits out its whole timeout."""
    with RabbitCluster(nodes=1) as single:
        port = single.mqtt_port(0)
        # MQTT 3.1.1 §3.2: CONNACK is 0x20, length 2, flags 0, return code 0 (accepted).
        assert answer_to_connect(port, 4)[0] == b"\x20\x02\x00\x00"
        answer, after_s = answer_to_connect(port, 5)
        assert answer == b"", f"expected the socket closed, got {answer!r}"
        log.info("MQTT 5 CONNECT: socket closed after %.1f ms, no CONNACK", after_s * 1000)

        # paho: no on_connect, an on_disconnect with "unspecified error" instead.
        events: list[str] = []
        dropped = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-v5", protocol=mqtt.MQTTv5)

        def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            events.append(f"connect {code}")

        def on_disconnect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            events.append(f"disconnect {code}")
            dropped.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            assert dropped.wait(WAIT_S)
        finally:
            client.loop_stop()
        assert events == ["disconnect Unspecified error"]

        # aiomqtt (what the link runs on): no MqttConnectError with a code, a timeout instead.
        async def connect_v5() -> None:
            async with aiomqtt.Client(
                "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=1.0
            ):
                pass

        with pytest.raises(aiomqtt.MqttError) as raised:
            asyncio.run(connect_v5())
        assert not isinstance(raised.value, aiomqtt.MqttCodeError)
        assert "timed out" in str(raised.value)
    assert_gone(single)


def test_retained_messages_stay_on_the_node_that_took_them(
    cluster: RabbitCluster, connect: Callable[[int, str], Paho]
) -> None:
    """A retained message published through A is delivered to a new subscriber on A, never to
    one on B (the store is a file on each node), and A's stop does not move it to B. Published
    again through B, B has it."""
    topic = "v2g/test/status"
    publisher_a = connect(cluster.mqtt_port(0), "retain-pub-a")
    publisher_a.publish(topic, b"status-via-a", retain=True)

    reader_a = connect(cluster.mqtt_port(0), "retain-read-a")
    reader_a.subscribe(topic)
    got = reader_a.next_message()
    assert (got.payload, got.retain) == (b"status-via-a", True)

    def first_on_b(client_id: str) -> Received:
        """What a new subscriber on B receives first: a live sentinel published after its
        SUBACK proves the subscription works, so anything retained would have come before."""
        reader = connect(cluster.mqtt_port(1), client_id)
        reader.subscribe(topic)
        connect(cluster.mqtt_port(1), f"{client_id}-sentinel").publish(topic, b"live")
        return reader.next_message()

    first = first_on_b("retain-read-b")
    assert (first.payload, first.retain) == (b"live", False)

    cluster.stop_node(0)
    first = first_on_b("retain-read-b-after")
    assert (first.payload, first.retain) == (b"live", False)

    # What the charger does on reconnecting: publish its retained state again, now through B.
    connect(cluster.mqtt_port(1), "retain-pub-b").publish(topic, b"status-via-b", retain=True)
    reader_b = connect(cluster.mqtt_port(1), "retain-read-b-again")
    reader_b.subscribe(topic)
    got = reader_b.next_message()
    assert (got.payload, got.retain) == (b"status-via-b", True)


@pytest.mark.deep  # about 30 s of Erlang start-up on both cores: make test-deep
@pytest.mark.timeout(240)
def test_a_stopped_node_rejoins_a_three_node_cluster(
    need_rabbitmq: None, connect: Callable[[int, str], Paho]
) -> None:
    """With three nodes the other two keep a majority: node A started again rejoins, and a
    message published on A reaches a subscriber on C. A comes back with the retained messages
    it held when it stopped, stale if the topic moved on through another node meanwhile."""
    topic = "v2g/test/status"
    with RabbitCluster(nodes=3) as trio:
        connect(trio.mqtt_port(0), "retain-pub-a").publish(topic, b"before-the-stop", retain=True)
        trio.stop_node(0)
        connect(trio.mqtt_port(1), "retain-pub-b").publish(topic, b"while-a-was-down", retain=True)
        trio.start_node(0)
        assert trio.timings_s["start_node_0_s"] > 0
        status = json.loads(trio.ctl(trio.nodes[2], "cluster_status", "--formatter", "json"))
        assert sorted(status["running_nodes"]) == sorted(node.name for node in trio.nodes)

        on_c = connect(trio.mqtt_port(2), "sub-on-c")
        on_c.subscribe("v2g/test/rejoin")
        connect(trio.mqtt_port(0), "pub-on-a").publish("v2g/test/rejoin", b"back")
        assert on_c.next_message().payload == b"back"

        reader_a = connect(trio.mqtt_port(0), "retain-read-a")
        reader_a.subscribe(topic)
        got = reader_a.next_message()
        assert (got.payload, got.retain) == (b"before-the-stop", True)
    assert_gone(trio)
