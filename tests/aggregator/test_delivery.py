"""Delivery that means delivered (issue 20, finding 1), and topic aliases.

With MQTT 5 the broker's PUBACK says whether anyone got the message: reason 16 "no matching
subscribers" (MQTT 5.0 §3.4.2.1) means it went to nobody. After a broker restart the charger
may reconnect before the aggregator's consumer has subscribed again: its records must then
stay in the outbox and go out again once someone listens, not be deleted as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.messages import EventBody
from controller.aggregator.outbox import Kind, Outgoing
from controller.aggregator.sender import Sender
from controller.aggregator.topics import Topics
from controller.core.snapshots import PowerState
from controller.links import LinkStatus
from controller.storage.db import open_database
from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    PREFIX,
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    now_utc,
    report,
    setpoint,
    until,
)


async def put_events(link: MqttAggregatorLink, count: int, tag: str) -> None:
    """Store ``count`` events in the link's durable outbox, on the link's storage thread (the
    only thread that may use its SQLite connection while the link runs)."""
    durable, storage = link.durable, link.storage
    assert durable is not None
    assert storage is not None

    def put() -> None:
        for n in range(count):
            body = EventBody(at=now_utc(), kind="fault_raised", message=f"{tag} {n}")
            durable.put("event", json.loads(body.to_json()))

    await storage.call("test events", put)


async def stored(link: MqttAggregatorLink, kind: str | None = None) -> int:
    """How many records the link's durable outbox holds (of ``kind``), read on its thread."""
    durable, storage = link.durable, link.storage
    assert durable is not None
    assert storage is not None
    return await storage.call(
        "test count", lambda: len(durable) if kind is None else durable.count(kind)
    )


async def until_stored(
    link: MqttAggregatorLink, want: Callable[[int], bool], timeout_s: float
) -> bool:
    """Poll ``stored(link)`` until ``want`` holds for it (False after ``timeout_s``)."""
    deadline_s = time.monotonic() + timeout_s
    while not want(await stored(link)):
        if time.monotonic() > deadline_s:
            return False
        await asyncio.sleep(0.02)
    return True


def event_messages(aggregator: Aggregator, tag: str) -> list[str]:
    return [
        str(m.json()["message"])
        for m in aggregator.on("event")
        if str(m.json()["message"]).startswith(tag)
    ]


def test_records_delivered_to_no_subscriber_stay_until_one_listens(
    tmp_path: Path, need_mosquitto: None
) -> None:
    """The issue's finding: the broker restarts, the charger is back before the aggregator's
    consumer, and its 8 stored records get PUBACK reason 16. They stay in the outbox and reach
    the consumer once it subscribes; none is lost, none deleted while nobody got it."""
    broker = Mosquitto(tmp_path)
    durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))

    async def scenario() -> None:
        link = make_link(make_config(broker.port), durable=durable)
        async with LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            broker.stop()
            assert await until(lambda: running.status is LinkStatus.DOWN, 5.0)
            await put_events(link, 8, "during the outage")
            broker.start()
            # The charger is back first; nobody subscribes to its topics yet.
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            # Published and answered "no matching subscribers": the event topic is held.
            assert await until(lambda: link.held_for_s(f"{PREFIX}/event") > 0, 10.0)
            assert await stored(link) >= 8, "records delivered to nobody were deleted"
            async with Aggregator(broker.port) as aggregator:
                assert await until(
                    lambda: len(event_messages(aggregator, "during the outage")) >= 8, 10.0
                ), aggregator.received
                assert await until_stored(link, lambda n: n == 0, 5.0)
                got = event_messages(aggregator, "during the outage")
                assert sorted(got) == sorted(f"during the outage {n}" for n in range(8))

    try:
        broker.start()
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_in_memory_event_delivered_to_no_subscriber_is_kept(broker: Mosquitto) -> None:
    """Without a durable outbox, an event from memory that reached nobody stays queued and is
    sent again; the retained status, which the broker keeps for the next subscriber, is not
    held back by it."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        async with LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            link.report(report(faults=("vehicle: isolation fault",), state=PowerState.FAULT))
            assert await until(lambda: link.held_for_s(f"{PREFIX}/event") > 0, 10.0)
            assert link.outbox.pending(Kind.EVENT), "an event delivered to nobody was dropped"
            # Retained, so delivered for the broker keeps it; and not held up by the event.
            assert await until(lambda: not link.outbox.pending(Kind.STATUS), 10.0)
            async with Aggregator(broker.port) as aggregator:
                assert await until(lambda: bool(aggregator.on("event")), 10.0)
                raised = [m.json() for m in aggregator.on("event")]
                assert any(e["kind"] == "fault_raised" for e in raised)
                assert any(m.retain for m in aggregator.on("status"))
                assert await until(lambda: not link.outbox.pending(Kind.EVENT), 5.0)

    asyncio.run(scenario())


def test_delivered_records_are_deleted_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    """With a subscriber, stored records go at once and are deleted (no hold)."""
    durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port), durable=durable)
            async with LinkRunner(link) as running:
                assert await until(lambda: running.status is LinkStatus.UP, 5.0)
                await put_events(link, 20, "live")
                assert await until(lambda: len(event_messages(aggregator, "live")) == 20, 10.0)
                assert await until_stored(link, lambda n: n == 0, 5.0)
                assert link.held_for_s(f"{PREFIX}/event") == 0  # never held back

    asyncio.run(scenario())


class CountingProxy:
    """A TCP proxy on loopback that keeps every byte the client sent."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bytearray | None
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if keep is not None:
                        keep.extend(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, self.sent)),
            asyncio.create_task(pipe(up_reader, writer, None)),
        ):
            self._tasks.add(task)


def test_topic_names_go_over_the_wire_once_per_connection(broker: Mosquitto) -> None:
    """MQTT 5 topic aliases (§3.3.2.3.4; mosquitto allows 10): the telemetry topic's name is
    sent once, later publishes carry the two-byte alias, and the aggregator sees the full
    topic on every message."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator, CountingProxy(broker.port) as proxy:
            link = make_link(make_config(proxy.port))
            async with LinkRunner(link) as running:
                assert await until(lambda: running.status is LinkStatus.UP, 5.0)
                for n in range(1, 6):
                    link.report(report(soc_pct=50.0 + 5 * n))
                    assert await until(
                        functools.partial(lambda want: len(aggregator.on("telemetry")) >= want, n),
                        3.0,
                    )
                    await asyncio.sleep(1.05)  # the rate limit
                assert len(aggregator.on("telemetry")) >= 5
        topic = f"{PREFIX}/telemetry".encode()
        assert bytes(proxy.sent).count(topic) == 1

    asyncio.run(scenario())


def test_records_the_broker_refuses_are_kept_until_it_takes_them(
    tmp_path: Path, need_mosquitto: None
) -> None:
    """A broker whose ACL denies the charger the event topic answers PUBACK 0x87 "not
    authorized" (mosquitto does, MQTT 5.0 §3.4.2.1): the stored events stay, and go out once
    the ACL allows them (reloaded by SIGHUP), none lost."""
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic read #\ntopic write {PREFIX}/availability\ntopic write {PREFIX}/status\n"
    )
    broker = Mosquitto(tmp_path, acl_file=acl)
    durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port), durable=durable)
            async with LinkRunner(link) as running:
                assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
                await put_events(link, 5, "denied")
                assert await until(lambda: link.held_for_s(f"{PREFIX}/event") > 0, 10.0)
                assert await stored(link) == 5, "records the broker refused were deleted"
                assert not event_messages(aggregator, "denied")
                acl.write_text("topic readwrite #\n")
                broker.reload()
                assert await until(lambda: len(event_messages(aggregator, "denied")) == 5, 10.0)
                assert await until_stored(link, lambda n: n == 0, 5.0)

    try:
        broker.start()
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_the_hold_backs_off_per_topic_and_ends_on_a_delivery() -> None:
    """Each refusal in a row doubles the topic's hold (1 s, 2 s, 4 s ... with jitter in
    [0.5, 1)); other topics are not held; a delivery ends it; an ack is dropped, never held."""
    clock = [1000.0]
    sender = Sender(
        Topics.under(PREFIX),
        telemetry_period_s=10.0,
        wall=now_utc,
        random01=lambda: 1.0,  # the longest wait of each step
        hold_clock=lambda: clock[0],
    )
    event = Outgoing(Kind.EVENT, f"{PREFIX}/event", b"{}")
    holds_s = []
    for _ in range(4):
        sender.undelivered(event, 16)
        holds_s.append(sender.held_for_s(f"{PREFIX}/event"))
    assert holds_s == [1.0, 2.0, 4.0, 8.0]
    assert sender.held_for_s(f"{PREFIX}/telemetry") == 0
    assert sender.hold_ends_in_s() == 8.0
    telemetry = Outgoing(Kind.TELEMETRY, f"{PREFIX}/telemetry", b"{}")
    sender.undelivered(telemetry, 16)  # held 1 s
    clock[0] += 2.0  # the telemetry hold ended; the event's has 6 s left
    assert sender.hold_ends_in_s() == 6.0
    sender.sent(event)
    assert sender.held_for_s(f"{PREFIX}/event") == 0
    assert sender.hold_ends_in_s() is None  # the telemetry's ended: nothing left to wait for
    ack = Outgoing(Kind.ACK, f"{PREFIX}/ack", b"{}")
    sender.outbox.put(ack)
    sender.undelivered(ack, 16)
    assert sender.outbox.pending(Kind.ACK) == []
    assert sender.held_for_s(f"{PREFIX}/ack") == 0


def test_a_topic_nobody_subscribes_to_does_not_hold_up_the_others(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """An aggregator that consumes telemetry and acks but not events: the stored events stay
    (their topic held, tried again later), while telemetry and setpoint acks flow."""
    durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port), durable=durable)
            async with LinkRunner(link) as running:
                assert await until(lambda: running.status is LinkStatus.UP, 5.0)
                # A second aggregator-side client takes the events away from the first: with
                # the first unsubscribed from them, nobody listens to the event topic.
                assert aggregator._client is not None
                await aggregator._client.unsubscribe(f"{PREFIX}/#")
                await aggregator._client.subscribe(f"{PREFIX}/telemetry", qos=1)
                await aggregator._client.subscribe(f"{PREFIX}/ack", qos=1)
                await put_events(link, 3, "unheard")
                assert await until(lambda: link.held_for_s(f"{PREFIX}/event") > 0, 10.0)
                before = len(aggregator.on("telemetry"))
                link.report(report(soc_pct=80.0))
                assert await until(lambda: len(aggregator.on("telemetry")) > before, 10.0)
                await aggregator.publish("setpoint", setpoint("sp-heard", 1000.0))
                assert await until(lambda: link.setpoint() is not None, 5.0)
                link.report(report("sp-heard", 1000.0, source="aggregator"))
                assert (await aggregator.ack("sp-heard"))["accepted"] is True
                assert await stored(link, "event") >= 3  # the unheard ones, the source change

    asyncio.run(scenario())
