"""Failover across a broker cluster (issue 20): the charger's real aggregator link against two
RabbitMQ 3.10 nodes joined in one cluster (hil/rabbitmq.py), node A its broker and node B the
one address in ``broker.failover``.

RabbitMQ 3.10 drops an MQTT 5 CONNECT without a CONNACK (hil/test_rabbitmq_cluster.py), so the
link, configured for MQTT 5 as by default, must fall back to 3.1.1 by itself. Node A stops
while the link is connected to it: the link reconnects to B within its backoff, setpoints and
acks keep flowing through B, no telemetry or event record is lost (the sender's record_id
sequence arrives without a gap), and B holds the retained status and "online" availability,
which the charger published again on connecting to B (RabbitMQ keeps retained messages per node:
what A held went with it).

The aggregator's side is a paho client through aiomqtt on MQTT 3.1.1, connected to B from the
start, so the test sees what an aggregator on the surviving node sees. The control loop is a
stub: it reports the setpoint in force as applied, every 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
import pytest

from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config
from controller.core.snapshots import PowerState
from controller.links import LinkStatus
from hil.rabbitmq import RabbitCluster, missing_reason
from tests.aggregator.support import (
    PREFIX,
    LinkRunner,
    make_config,
    make_link,
    report,
    setpoint,
    until,
)

pytestmark = [
    pytest.mark.hil,
    pytest.mark.slow,
]

log = logging.getLogger(__name__)

RECORD_TOPICS = ("telemetry", "event", "session")
REPORT_EVERY_S = 0.1
# From A's stop to the link up on B: the backoff (0.1 s, doubling, capped at 0.5 s) with a
# refused connect to A in between, on a loaded machine.
FAILOVER_WITHIN_S = 5.0


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class RabbitAggregator:
    """The aggregator on MQTT 3.1.1 (RabbitMQ 3.10 speaks nothing newer), subscribed to
    everything under the charger's prefix at QoS 1."""

    def __init__(self, port: int, identifier: str) -> None:
        self.port = port
        self.identifier = identifier
        self.received: list[Message] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RabbitAggregator]:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._run(subscribed))
        try:
            await asyncio.wait_for(subscribed.wait(), 10.0)
            yield self
        finally:
            self._task.cancel()
            # gather, not suppress: a cancel aimed at this caller must not be swallowed.
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, subscribed: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.identifier,
            protocol=aiomqtt.ProtocolVersion.V311,
            timeout=5,
        ) as client:
            await client.subscribe(f"{PREFIX}/#", qos=1)
            self._client = client
            subscribed.set()
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                self.received.append(Message(message.topic.value, data, bool(message.retain)))

    async def publish(self, suffix: str, payload: dict[str, Any]) -> None:
        assert self._client is not None
        await self._client.publish(f"{PREFIX}/{suffix}", json.dumps(payload).encode(), qos=1)

    def on(self, suffix: str) -> list[Message]:
        return [m for m in self.received if m.topic == f"{PREFIX}/{suffix}"]

    def acks(self, setpoint_id: str) -> list[dict[str, Any]]:
        return [a for a in (m.json() for m in self.on("ack")) if a["id"] == setpoint_id]

    def record_seqs(self) -> list[int]:
        """The sequence numbers of the records received (``<writer>-<n>``), in arrival order."""
        topics = {f"{PREFIX}/{t}" for t in RECORD_TOPICS}
        ids = [m.json()["record_id"] for m in self.received if m.topic in topics]
        return [int(str(record_id).rsplit("-", 1)[1]) for record_id in ids]


async def retained_on(port: int, suffix: str, timeout_s: float = 5.0) -> Message:
    """The retained message a new 3.1.1 subscriber on ``port`` receives for ``suffix``."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"retained-{suffix}", protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        await client.subscribe(f"{PREFIX}/{suffix}", qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                return Message(message.topic.value, data, bool(message.retain))
    raise AssertionError(f"no retained message on {suffix}")


class StubControlLoop:
    """Reports the setpoint in force as applied, every ``REPORT_EVERY_S``: what the daemon's
    control loop tells the link, without the daemon."""

    def __init__(self, link: MqttAggregatorLink) -> None:
        self.link = link
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            in_force = self.link.setpoint()
            if in_force is not None and time.monotonic() < in_force.valid_until_s:
                power_w = in_force.power_w
                state = PowerState.DISCHARGING if power_w < 0 else PowerState.CHARGING
                self.link.report(
                    report(in_force.setpoint_id, power_w, state=state, source="aggregator")
                )
            else:
                self.link.report(report(None, 0.0, source="fallback"))
            await asyncio.sleep(REPORT_EVERY_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self._run())
        try:
            yield
        finally:
            self._task.cancel()
            # gather, not suppress: a cancel aimed at this caller must not be swallowed.
            await asyncio.gather(self._task, return_exceptions=True)


def gapless(seqs: list[int]) -> bool:
    """Every sequence number from 1 to the highest received at least once (redeliveries
    allowed: QoS 1 is at least once)."""
    return bool(seqs) and sorted(set(seqs)) == list(range(1, max(seqs) + 1))


@pytest.fixture
def cluster() -> Iterator[RabbitCluster]:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)  # a failure under CI=true (conftest.py)
    # Not started yet: its ports are chosen, so the test builds its config (which fails fast
    # while the config has no failover list) before paying for the nodes' start.
    unstarted = RabbitCluster(nodes=2)
    try:
        yield unstarted
    finally:
        unstarted.close()
    assert unstarted.leftover_pids() == []


def failover_config(primary_port: int, failover_port: int) -> Config:
    """The test config (fast reconnects, 1 s telemetry), MQTT 5 as by default, with B listed
    as the failover address."""
    return make_config(
        primary_port,
        broker_extra=f", failover: [{{host: 127.0.0.1, port: {failover_port}}}]",
    )


@pytest.mark.timeout(120)
def test_the_link_fails_over_to_the_other_node_and_loses_nothing(cluster: RabbitCluster) -> None:
    port_a, port_b = cluster.mqtt_port(0), cluster.mqtt_port(1)
    config = failover_config(port_a, port_b)
    assert config.aggregator.broker is not None
    assert config.aggregator.broker.protocol == "5"
    cluster.start()

    async def scenario() -> None:
        link = make_link(config)
        aggregator = RabbitAggregator(port_b, "aggregator-on-b")
        async with aggregator.running(), LinkRunner(link):
            async with StubControlLoop(link).running():
                # MQTT 5 gets no CONNACK from RabbitMQ 3.10: the link falls back to 3.1.1, on A.
                assert await until(lambda: link.status is LinkStatus.UP, 20.0), link.reason
                assert link.protocol == "3.1.1"
                assert link.connects == 1

                await aggregator.publish("setpoint", setpoint("sp-on-a", -2000.0))
                assert await until(lambda: bool(aggregator.acks("sp-on-a")), 5.0)
                ack = aggregator.acks("sp-on-a")[-1]
                assert (ack["accepted"], ack["applied_power_w"]) == (True, -2000.0)
                assert await until(lambda: len(aggregator.on("telemetry")) >= 2, 5.0)

                # A stops (off the loop: the link must see it happen). Timed from the start of
                # the stop, when A closes its clients' connections.
                stopping_s = time.monotonic()
                await asyncio.to_thread(cluster.stop_node, 0)
                assert await until(
                    lambda: link.status is LinkStatus.UP and link.connects == 2,
                    FAILOVER_WITHIN_S,
                ), f"not up on B {FAILOVER_WITHIN_S} s after A began to stop: {link.reason}"
                log.info("failover to node B in %.2f s", time.monotonic() - stopping_s)
                assert link.protocol == "3.1.1"

                telemetry_before = len(aggregator.on("telemetry"))
                await aggregator.publish("setpoint", setpoint("sp-on-b", 1500.0))
                assert await until(lambda: bool(aggregator.acks("sp-on-b")), 5.0)
                ack = aggregator.acks("sp-on-b")[-1]
                assert (ack["accepted"], ack["applied_power_w"]) == (True, 1500.0)
                assert await until(
                    lambda: len(aggregator.on("telemetry")) >= telemetry_before + 2, 5.0
                )

            # The control loop has stopped: everything queued goes out and B acknowledges it,
            # and the records the aggregator holds then run 1, 2, ... without a gap.
            assert await until(lambda: len(link.outbox) == 0, 5.0)
            assert await until(lambda: gapless(aggregator.record_seqs()), 3.0), (
                f"records lost: {sorted(set(aggregator.record_seqs()))}"
            )

        # B holds the charger's retained state, published again on connecting to B.
        online = await retained_on(port_b, "availability")
        assert (online.payload, online.retain) == (b"online", True)
        status = await retained_on(port_b, "status")
        assert status.retain
        assert status.json()["setpoint_id"] == "sp-on-b"

    asyncio.run(scenario())
