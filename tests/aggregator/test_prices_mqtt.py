"""Prices pushed over a real mosquitto: each message acked on price_ack, accepted ones in the
link's PriceBook and in the ledger, rejected ones changing nothing; cancellation mid-message."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

from controller.aggregator.link import MqttAggregatorLink, PriceStore
from controller.economics.tariff import PeakEvent
from controller.ledger.accounting import Tariff
from controller.ledger.ledger import Ledger
from controller.links import LinkStatus
from controller.storage.db import open_database
from controller.storage.writer import StorageThread
from hil.mosquitto import Mosquitto
from tests.aggregator.support import Aggregator, LinkRunner, make_config, make_link, now_utc, until
from tests.aggregator.test_cancellation import BOUND_S, cancel_on_reply_link, ends_cancelled

QUARTER = dt.timedelta(minutes=15)


def at(base: dt.datetime, minutes: float) -> str:
    return (base + dt.timedelta(minutes=minutes)).isoformat()


def schedule(
    schedule_id: str, base: dt.datetime, *, count: int = 8, price: Any = 0.25, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": schedule_id,
        "issued_at": base.isoformat(),
        "currency": "EUR",
        "slots": [
            {
                "start": at(base, 15 * i),
                "end": at(base, 15 * (i + 1)),
                "import_per_kwh": price,
                "export_per_kwh": 0.1,
            }
            for i in range(count)
        ],
    }
    body.update(extra)
    return body


def event(event_id: str, base: dt.datetime, start_min: float, end_min: float) -> dict[str, Any]:
    return {
        "id": event_id,
        "issued_at": base.isoformat(),
        "start": at(base, start_min),
        "end": at(base, end_min),
        "bonus_per_kwh": 3.5,
        "power_w": 6000,
    }


def price_acks(aggregator: Aggregator) -> list[dict[str, Any]]:
    return [m.json() for m in aggregator.on("price_ack")]


async def send(
    aggregator: Aggregator, topic: str, body: dict[str, Any] | bytes, **kw: Any
) -> dict[str, Any]:
    """Publish one price message and return its ack (the next one on price_ack)."""
    count = len(price_acks(aggregator))
    await aggregator.publish(topic, body, **kw)
    assert await until(lambda: len(price_acks(aggregator)) > count), "no price ack"
    acks = price_acks(aggregator)
    assert len(acks) == count + 1, f"more than one ack: {acks[count:]}"
    return acks[count]


def test_an_accepted_schedule_is_acked_and_in_the_book(broker: Mosquitto) -> None:
    """A schedule over MQTT: acked accepted with version 1, in the link's book, the loop woken."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port))
            runner = LinkRunner(link)
            async with runner:
                await runner.up()
                wakes = runner.wakes
                base = now_utc()
                ack = await send(aggregator, "price_schedule", schedule("s-1", base))
                assert {k: ack[k] for k in ("id", "topic", "accepted", "version")} == {
                    "id": "s-1",
                    "topic": "price_schedule",
                    "accepted": True,
                    "version": 1,
                }
                assert "reason" not in ack
                assert link.prices.version == 1
                slots = link.prices.current_slots(base)
                assert [s.import_per_kwh for s in slots] == [0.25] * 8
                assert slots[0].start == base
                assert runner.wakes > wakes

    asyncio.run(scenario())


def test_every_bad_message_is_acked_with_its_reason_and_changes_nothing(broker: Mosquitto) -> None:
    """Gap, overlap, negative length, NaN (string, null, 1e999, the NaN token), expired, replay,
    stale, oversize, wrong currency, malformed JSON and a retained one: one rejected ack each,
    with its reason; the book and its version stay as the accepted schedule left them."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port))
            async with LinkRunner(link) as running:
                await LinkRunner(running).up()
                base = now_utc().replace(microsecond=0)
                assert (await send(aggregator, "price_schedule", schedule("s-0", base)))["accepted"]
                before = (link.prices.version, link.prices.current_slots(base))

                def edited(schedule_id: str, index: int, **changes: Any) -> dict[str, Any]:
                    body = schedule(schedule_id, base)
                    body["slots"][index].update(changes)
                    return body

                nan_token = json.dumps(schedule("s-nan", base, price=float("nan"))).encode()
                huge = json.dumps(schedule("s-big", base)).replace("0.25", "1e999", 1).encode()
                cases: list[tuple[dict[str, Any] | bytes, str | None, str]] = [
                    (edited("s-gap", 2, start=at(base, 35)), "s-gap", "gap after slot 1"),
                    (edited("s-ovl", 2, start=at(base, 25)), "s-ovl", "overlaps slot 1"),
                    (edited("s-neg", 7, end=at(base, 90)), "s-neg", "(length -900 s)"),
                    (schedule("s-str", base, price="NaN"), "s-str", "valid number, found 'NaN'"),
                    (schedule("s-null", base, price=None), "s-null", "valid number, found None"),
                    (huge, "s-big", "input should be a finite number"),
                    (nan_token, None, "malformed JSON: NaN is not a number JSON allows"),
                    (
                        schedule("s-old", base - dt.timedelta(hours=3), issued_at=base.isoformat()),
                        "s-old",
                        "expired: the last slot ended at",
                    ),
                    (schedule("s-0", base), "s-0", "replayed id: 's-0' was already accepted"),
                    (
                        schedule("s-stale", base, issued_at=at(base, -1)),
                        "s-stale",
                        "stale: issued_at",
                    ),
                    (
                        schedule("s-cny", base, currency="CNY"),
                        "s-cny",
                        "currency 'CNY', but this site uses 'EUR'",
                    ),
                    (b'{"id": "s-x", "pad": "' + b"x" * 270_000 + b'"}', None, "payload too large"),
                    (b'{"id": "s-broken", "slots": [', None, "malformed JSON: Expecting value"),
                ]
                for body, ack_id, reason in cases:
                    ack = await send(aggregator, "price_schedule", body)
                    assert ack["accepted"] is False
                    assert ack["id"] == ack_id
                    assert reason in ack["reason"], (reason, ack["reason"])
                    assert "version" not in ack
                    assert (link.prices.version, link.prices.current_slots(base)) == before
                ack = await send(aggregator, "price_schedule", schedule("s-ret", base), retain=True)
                assert ack["reason"].startswith("retained message")
                assert (link.prices.version, link.prices.current_slots(base)) == before
                assert link.price_desk.rejected == len(cases) + 1

    asyncio.run(scenario())


def test_events_are_accepted_and_cancelled(broker: Mosquitto) -> None:
    """A peak event joins the book; a cancellation by id removes it; a bad cancel is refused."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port))
            async with LinkRunner(link) as running:
                await LinkRunner(running).up()
                base = now_utc().replace(microsecond=0)
                ack = await send(aggregator, "price_event", event("ev-1", base, 60, 120))
                assert (ack["topic"], ack["accepted"], ack["version"]) == ("price_event", True, 1)
                assert link.prices.events(base) == (
                    PeakEvent(
                        "ev-1",
                        base + dt.timedelta(hours=1),
                        base + dt.timedelta(hours=2),
                        3.5,
                        6000.0,
                    ),
                )
                cancel = {"id": "c-1", "issued_at": base.isoformat(), "cancels": "ev-1"}
                ack = await send(aggregator, "price_event", cancel)
                assert (ack["id"], ack["accepted"], ack["version"]) == ("c-1", True, 2)
                assert link.prices.events(base) == ()
                again = {"id": "c-2", "issued_at": base.isoformat(), "cancels": "ev-1"}
                ack = await send(aggregator, "price_event", again)
                assert ack["reason"] == "no event 'ev-1' in force to cancel"
                assert link.prices.version == 2

    asyncio.run(scenario())


def new_ledger(path: Path) -> Ledger:
    return Ledger(open_database(path), tariff=Tariff("EUR", 0.25, 0.1), max_power_w=7400.0)


def test_accepted_messages_are_kept_in_the_ledger_and_rebuild_the_book(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Accepted price messages are in the ledger (body as received, the ack sent) before their
    ack goes out; rejected ones are not; after a restart the rows rebuild the book, and an id
    seen before is still a replay."""
    path = tmp_path / "ledger.sqlite"

    async def scenario() -> None:
        base = now_utc().replace(microsecond=0)
        schedule_body = json.dumps(schedule("s-1", base)).encode()
        ledger = new_ledger(path)
        store: PriceStore = ledger.record_price_message  # the contract, checked by mypy
        storage = StorageThread(name="prices-under-test")
        try:
            async with Aggregator(broker.port) as aggregator:
                link = make_link(
                    make_config(broker.port),
                    storage=storage,
                    price_store=store,
                )
                async with LinkRunner(link) as running:
                    await LinkRunner(running).up()
                    ack = await send(aggregator, "price_schedule", schedule_body)
                    # The row was written before the ack went out.
                    rows = await storage.call("read", ledger.price_messages)
                    assert [(r.topic, r.message_id, r.body) for r in rows] == [
                        ("price_schedule", "s-1", schedule_body.decode())
                    ]
                    assert json.loads(rows[0].ack) == ack
                    await send(aggregator, "price_event", event("ev-1", base, 30, 60))
                    await send(aggregator, "price_schedule", schedule("s-2", base, currency="CNY"))
                    rows = await storage.call("read", ledger.price_messages)
                    assert [r.message_id for r in rows] == ["s-1", "ev-1"]
                    book = (link.prices.current_slots(base), link.prices.events(base))
        finally:
            storage.close()
            assert storage.stop(5.0)

        # A restart: a new ledger on the same file, a new link restored from its rows.
        restarted = new_ledger(path)
        kept = [(r.topic, r.body.encode()) for r in restarted.price_messages()]
        async with Aggregator(broker.port) as aggregator:
            link = make_link(make_config(broker.port))
            assert link.restore_prices(kept) == 2
            assert (link.prices.current_slots(base), link.prices.events(base)) == book
            async with LinkRunner(link) as running:
                await LinkRunner(running).up()
                ack = await send(aggregator, "price_schedule", schedule_body)
                assert ack["reason"] == "replayed id: 's-1' was already accepted"

    asyncio.run(scenario())


def test_cancelled_while_an_accepted_ack_waits_for_the_disk_ends(broker: Mosquitto) -> None:
    """Cancelled while a price ack waits on a stalled ledger write, the link ends at once; the
    book holds the message (it was accepted), the ack is never sent as if it were stored."""
    release = threading.Event()
    stored: list[str] = []

    def stalled_store(*, message_id: str, **_: Any) -> None:
        release.wait(30.0)  # a disk that does not answer
        stored.append(message_id)

    async def scenario() -> None:
        storage = StorageThread(name="stalled-under-test")
        try:
            async with Aggregator(broker.port) as aggregator:
                config = make_config(broker.port)
                link = make_link(config, storage=storage, price_store=stalled_store)
                run = asyncio.create_task(link.run(lambda: None))
                assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
                base = now_utc()
                await aggregator.publish("price_schedule", schedule("s-1", base))
                assert await until(lambda: link.prices.version == 1)
                await asyncio.sleep(0.2)
                assert price_acks(aggregator) == []  # waiting for the write
                run.cancel()
                await ends_cancelled(run)
                assert price_acks(aggregator) == []
        finally:
            release.set()
            storage.close()
            assert storage.stop(5.0)
        assert stored == ["s-1"]

    asyncio.run(scenario())


def test_cancelled_as_a_price_ack_puback_arrives_ends(broker: Mosquitto) -> None:
    """Cancelled as the PUBACK of a price ack is handled, the link ends cancelled."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            link = cancel_on_reply_link(broker)
            run = asyncio.create_task(link.run(lambda: None))
            assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
            assert await until(lambda: link.outbox.peek() is None)
            link.arm("puback", run)
            await aggregator.publish("price_schedule", schedule("s-1", now_utc()))
            await ends_cancelled(run)
            assert link.cancels == 1
            assert link.prices.version == 1

    asyncio.run(scenario())


def test_price_topics_are_subscribed_under_mqtt_311(broker: Mosquitto) -> None:
    """With MQTT 3.1.1 the price topics are subscribed and answered too."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            config = make_config(broker.port, broker_extra=', protocol: "3.1.1"')
            link: MqttAggregatorLink = make_link(config)
            async with LinkRunner(link) as running:
                await LinkRunner(running).up()
                ack = await send(aggregator, "price_event", event("ev-1", now_utc(), 10, 20))
                assert ack["accepted"] is True

    asyncio.run(scenario())
