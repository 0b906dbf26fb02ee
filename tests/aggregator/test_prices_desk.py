"""The price desk (controller/aggregator/prices.py), sans-IO: payload bytes and a clock in, the
book and one ack out. Every rejection leaves the book, its version and the replay memory as
they were."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.aggregator.disabled import DisabledAggregator
from controller.aggregator.messages import MAX_PRICE_SCHEDULE_PAYLOAD_BYTES, PriceAckMessage
from controller.aggregator.prices import PriceDesk, PriceLimits, PriceOutcome, PriceTopic
from controller.economics.tariff import PeakEvent, PriceSlot

NOW = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)
QUARTER = dt.timedelta(minutes=15)


def at(minutes: float) -> str:
    return (NOW + dt.timedelta(minutes=minutes)).isoformat()


def schedule_body(
    schedule_id: str = "s-1",
    *,
    count: int = 8,
    start_min: float = 0,
    issued_min: float = 0,
    price: Any = 0.25,
    currency: str = "EUR",
) -> dict[str, Any]:
    return {
        "id": schedule_id,
        "issued_at": at(issued_min),
        "currency": currency,
        "slots": [
            {
                "start": at(start_min + 15 * i),
                "end": at(start_min + 15 * (i + 1)),
                "import_per_kwh": price,
                "export_per_kwh": 0.1,
            }
            for i in range(count)
        ],
    }


def event_body(
    event_id: str = "ev-1", start_min: float = 60, end_min: float = 180
) -> dict[str, Any]:
    return {
        "id": event_id,
        "issued_at": at(0),
        "start": at(start_min),
        "end": at(end_min),
        "bonus_per_kwh": 2.0,
        "power_w": 5000,
    }


def cancel_body(message_id: str, cancels: str) -> dict[str, Any]:
    return {"id": message_id, "issued_at": at(0), "cancels": cancels}


def new_desk() -> PriceDesk:
    return PriceDesk(PriceLimits(currency="EUR", clock_skew_s=30.0))


def send(
    desk: PriceDesk,
    body: dict[str, Any] | bytes,
    topic: PriceTopic = "price_schedule",
    *,
    now: dt.datetime = NOW,
    retained: bool = False,
) -> PriceOutcome:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return desk.receive(topic, payload, retained=retained, wall_now=now)


def state(desk: PriceDesk) -> tuple[object, ...]:
    book = desk.book
    return (
        book.version,
        book.current_slots(NOW),
        book.events(NOW),
        book.schedule_id,
        book.schedule_issued_at,
        tuple(desk._accepted_ids),
    )


def test_an_accepted_schedule_is_in_the_book_and_acked_with_the_version() -> None:
    """An accepted schedule: its slots in the book, version 1, an accepted ack that says so."""
    desk = new_desk()
    outcome = send(desk, schedule_body())
    assert outcome.accepted
    assert json.loads(outcome.ack.to_json()) == {
        "type": "price_ack",
        "id": "s-1",
        "topic": "price_schedule",
        "accepted": True,
        "at": "2025-03-14T12:00:00Z",
        "version": 1,
    }
    slots = desk.book.current_slots(NOW)
    assert len(slots) == 8
    assert slots[0] == PriceSlot(NOW, NOW + QUARTER, 0.25, 0.1)
    # Slots that ended leave the answer by themselves, without a version change.
    assert len(desk.book.current_slots(NOW + 2 * QUARTER)) == 6
    assert desk.book.version == 1


def reject_after_accept(
    body: dict[str, Any] | bytes, topic: PriceTopic = "price_schedule", **kw: Any
) -> str:
    """Send ``body`` after an accepted schedule and event; it must be rejected and change nothing.
    Returns the reason."""
    desk = new_desk()
    assert send(desk, schedule_body("s-0")).accepted
    assert send(desk, event_body("ev-0", 300, 360), "price_event").accepted
    before = state(desk)
    outcome = send(desk, copy.deepcopy(body) if isinstance(body, dict) else body, topic, **kw)
    assert not outcome.accepted
    assert outcome.ack.accepted is False
    assert outcome.ack.version is None
    assert state(desk) == before, "a rejected message changed the book"
    assert outcome.reason is not None
    return outcome.reason


def with_slot(body: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    body["slots"][index].update(changes)
    return body


def test_each_bad_schedule_is_rejected_with_its_reason_and_changes_nothing() -> None:
    """Gap, overlap, negative and zero length, NaN in every spelling, expired, replay, stale,
    future, currency, oversize, malformed, retained, shape: each its own reason."""
    cases: dict[str, tuple[dict[str, Any] | bytes, str]] = {
        "gap": (
            with_slot(schedule_body("s-2"), 3, start=at(50)),
            "slot 3: gap after slot 2: nothing from 2025-03-14T12:45:00+00:00 to "
            "2025-03-14T12:50:00+00:00",
        ),
        "overlap": (
            with_slot(schedule_body("s-2"), 3, start=at(40)),
            "slot 3: overlaps slot 2: starts 2025-03-14T12:40:00+00:00",
        ),
        "negative length": (
            with_slot(schedule_body("s-2", count=1), 0, end=at(-15)),
            "slot 0: ends at 2025-03-14T11:45:00+00:00, not after its start "
            "2025-03-14T12:00:00+00:00 (length -900 s)",
        ),
        "zero length": (
            with_slot(schedule_body("s-2", count=1), 0, end=at(0)),
            "(length 0 s)",
        ),
        "NaN as a string": (
            schedule_body("s-2", price="NaN"),
            "slots.0.import_per_kwh: input should be a valid number, found 'NaN'",
        ),
        "null price": (
            schedule_body("s-2", price=None),
            "slots.0.import_per_kwh: input should be a valid number, found None",
        ),
        "NaN token": (
            json.dumps(schedule_body("s-2", price=float("nan"))).encode(),
            "malformed JSON: NaN is not a number JSON allows",
        ),
        "Infinity token": (
            json.dumps(schedule_body("s-2", price=float("inf"))).encode(),
            "malformed JSON: Infinity is not a number JSON allows",
        ),
        "1e999": (
            json.dumps(schedule_body("s-2")).replace("0.25", "1e999", 1).encode(),
            "slots.0.import_per_kwh: input should be a finite number",
        ),
        "too dear": (schedule_body("s-2", price=250.0), "import_per_kwh 250 is beyond ±100"),
        "expired": (
            schedule_body("s-2", start_min=-240, count=16),
            "expired: the last slot ended at 2025-03-14T12:00:00+00:00, before now "
            "(2025-03-14T12:00:00+00:00)",
        ),
        "replay": (schedule_body("s-0"), "replayed id: 's-0' was already accepted"),
        "stale": (
            schedule_body("s-2", issued_min=-5),
            "stale: issued_at 2025-03-14T11:55:00+00:00 is before that of schedule 's-0' "
            "(2025-03-14T12:00:00+00:00), accepted last",
        ),
        "future": (schedule_body("s-2", issued_min=1), "issued in the future"),
        "currency": (
            schedule_body("s-2", currency="CNY"),
            "currency 'CNY', but this site uses 'EUR'",
        ),
        "too many slots": (schedule_body("s-2", count=673), "slots: list should have at most 672"),
        "oversize": (
            b'{"id": "s-2", "pad": "' + b"x" * 270_000 + b'"}',
            "payload too large: 270024 bytes, at most 262144",
        ),
        "malformed": (b'{"id": "s-2", "slots": [', "malformed JSON: Expecting value at offset 24"),
        "not UTF-8": (b"\xff\xfe", "payload is not UTF-8 text (byte 0)"),
        "duplicate key": (b'{"id": "s-2", "id": "s-3"}', "malformed JSON: duplicate key 'id'"),
        "not an object": (b"[1, 2]", "expected a JSON object"),
        "unknown field": ({**schedule_body("s-2"), "tz": "UTC"}, "unknown field 'tz'"),
        "naive time": (
            with_slot(schedule_body("s-2"), 0, start="2025-03-14T12:00:00"),
            "slots.0.start: input should have timezone info",
        ),
        "no slots": (schedule_body("s-2", count=0), "slots: list should have at least 1 item"),
    }
    for name, (body, expected) in cases.items():
        reason = reject_after_accept(body)
        assert expected in reason, f"{name}: {reason!r}"
    retained = reject_after_accept(schedule_body("s-2"), retained=True)
    assert retained.startswith("retained message")


def test_a_rejected_ack_names_the_id_when_it_can_be_read() -> None:
    """The ack echoes a readable id, and null for an unreadable payload."""
    desk = new_desk()
    assert send(desk, with_slot(schedule_body("s-9"), 1, start=at(20))).ack.id == "s-9"
    assert send(desk, b"{nonsense").ack.id is None
    assert send(desk, {"id": "bad id with spaces"}).ack.id is None


def test_a_later_schedule_replaces_prices_from_its_start_only() -> None:
    """A new schedule overrides from its first slot; earlier prices before that are kept, the
    one running across its start cut there."""
    desk = new_desk()
    assert send(desk, schedule_body("today", count=8)).accepted  # 12:00-14:00 at 0.25
    tomorrow = schedule_body("later", count=4, start_min=70, issued_min=0, price=0.5)
    assert send(desk, tomorrow).accepted  # 13:10-14:10 at 0.5
    slots = desk.book.current_slots(NOW)
    assert [(s.start, s.end, s.import_per_kwh) for s in slots[3:6]] == [
        (NOW + 3 * QUARTER, NOW + dt.timedelta(minutes=60), 0.25),
        (NOW + dt.timedelta(minutes=60), NOW + dt.timedelta(minutes=70), 0.25),  # cut
        (NOW + dt.timedelta(minutes=70), NOW + dt.timedelta(minutes=85), 0.5),
    ]
    assert slots[-1].end == NOW + dt.timedelta(minutes=130)
    assert (desk.book.version, desk.book.schedule_id) == (2, "later")


def test_events_are_accepted_cancelled_and_checked() -> None:
    """An event joins the book; its cancellation removes it; overlaps, unknown cancels, replays
    and bad events are rejected and change nothing."""
    desk = new_desk()
    assert send(desk, event_body("ev-1", 60, 180), "price_event").accepted
    (event,) = desk.book.events(NOW)
    assert event == PeakEvent(
        "ev-1", NOW + dt.timedelta(hours=1), NOW + dt.timedelta(hours=3), 2.0, 5000.0
    )
    assert desk.book.version == 1
    before = state(desk)
    reasons = [
        send(desk, event_body("ev-2", 170, 200), "price_event").reason,
        send(desk, cancel_body("c-1", "ev-9"), "price_event").reason,
        send(desk, event_body("ev-1", 300, 400), "price_event").reason,
        send(desk, event_body("ev-3", 400, 300), "price_event").reason,
        send(desk, {**event_body("ev-4"), "bonus_per_kwh": "NaN"}, "price_event").reason,
        send(desk, {**event_body("ev-4"), "cancels": "ev-1"}, "price_event").reason,
        send(desk, {"id": "ev-5", "issued_at": at(0), "start": at(60)}, "price_event").reason,
        send(desk, event_body("ev-6", -120, -60), "price_event").reason,
    ]
    assert state(desk) == before
    assert reasons == [
        "overlaps event 'ev-1' (2025-03-14T13:00:00+00:00 to 2025-03-14T15:00:00+00:00); "
        "cancel that one first",
        "no event 'ev-9' in force to cancel",
        "replayed id: 'ev-1' was already accepted",
        "ends at 2025-03-14T17:00:00+00:00, not after its start 2025-03-14T18:40:00+00:00 "
        "(length -6000 s)",
        "bonus_per_kwh: input should be a valid number, found 'NaN'",
        "a cancellation gives only 'cancels', found ['start', 'end', 'bonus_per_kwh', 'power_w']",
        "an event needs start, end and bonus_per_kwh; missing ['end', 'bonus_per_kwh']",
        "expired: ended at 2025-03-14T11:00:00+00:00, before now (2025-03-14T12:00:00+00:00)",
    ]
    cancelled = send(desk, cancel_body("c-1", "ev-1"), "price_event")
    assert cancelled.accepted
    assert cancelled.ack.version == 2
    assert desk.book.events(NOW) == ()
    assert send(desk, cancel_body("c-2", "ev-1"), "price_event").reason == (
        "no event 'ev-1' in force to cancel"
    )


def test_events_in_force_are_bounded() -> None:
    """At most max_events in force: the next is rejected."""
    desk = PriceDesk(PriceLimits(currency="EUR", clock_skew_s=30.0, max_events=2))
    assert send(desk, event_body("ev-1", 10, 20), "price_event").accepted
    assert send(desk, event_body("ev-2", 20, 30), "price_event").accepted
    assert send(desk, event_body("ev-3", 30, 40), "price_event").reason == (
        "too many events: 2 in force, at most 2"
    )


def test_replay_memory_is_bounded_and_shared_by_both_topics() -> None:
    """An id accepted on one topic is a replay on the other; the oldest ids are forgotten."""
    desk = PriceDesk(PriceLimits(currency="EUR", clock_skew_s=30.0, remembered_ids=2))
    assert send(desk, event_body("x-1", 10, 20), "price_event").accepted
    assert send(desk, schedule_body("x-1")).reason == "replayed id: 'x-1' was already accepted"
    assert send(desk, event_body("x-2", 20, 30), "price_event").accepted
    assert send(desk, event_body("x-3", 30, 40), "price_event").accepted
    assert list(desk._accepted_ids) == ["x-2", "x-3"]


def test_restore_rebuilds_the_book_and_the_replay_memory() -> None:
    """The accepted messages as the ledger kept them rebuild the same book, and their ids are
    replays afterwards; ended events and bodies that no longer parse are skipped."""
    live = new_desk()
    kept: list[tuple[str, bytes]] = []
    for topic, body in [
        ("price_schedule", schedule_body("s-1")),
        ("price_event", event_body("ev-1", 30, 60)),
        ("price_event", event_body("ev-2", 90, 120)),
        ("price_event", cancel_body("c-1", "ev-2")),
        ("price_schedule", schedule_body("s-2", start_min=45, count=4, price=0.3)),
    ]:
        payload = json.dumps(body).encode()
        assert live.receive(topic, payload, retained=False, wall_now=NOW).accepted  # type: ignore[arg-type]
        kept.append((topic, payload))
    restored = new_desk()
    assert restored.restore([*kept, ("price_schedule", b"{broken")], NOW) == 5
    assert restored.book.current_slots(NOW) == live.book.current_slots(NOW)
    assert restored.book.events(NOW) == live.book.events(NOW)
    assert restored.book.version > 0
    assert send(restored, schedule_body("s-1", issued_min=0)).reason == (
        "replayed id: 's-1' was already accepted"
    )
    later = NOW + dt.timedelta(hours=2)
    assert new_desk().restore(kept, later) == 2  # both events had ended by then: the schedules


@given(st.binary(max_size=512), st.sampled_from(["price_schedule", "price_event"]), st.booleans())
def test_any_bytes_get_exactly_one_ack_and_never_an_error(
    payload: bytes, topic: PriceTopic, retained: bool
) -> None:
    """Whatever arrives, the desk answers with one valid ack; garbage changes nothing."""
    desk = new_desk()
    outcome = desk.receive(topic, payload, retained=retained, wall_now=NOW)
    assert PriceAckMessage.model_validate_json(outcome.ack.to_json()) == outcome.ack
    assert outcome.ack.topic == topic
    if not outcome.accepted:
        assert outcome.reason
        assert desk.book.version == 0


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "start": st.integers(-60, 600),
                "length": st.integers(-30, 120),
                "price": st.floats(allow_nan=True, allow_infinity=True),
            }
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_slot_list_is_accepted_only_when_sound(raw: list[dict[str, Any]]) -> None:
    """A schedule is accepted only if its slots are contiguous, finite and not all ended; an
    accepted one is in the book exactly."""
    body = {
        "id": "s-h",
        "issued_at": at(0),
        "currency": "EUR",
        "slots": [
            {
                "start": at(r["start"]),
                "end": at(r["start"] + r["length"]),
                "import_per_kwh": r["price"],
                "export_per_kwh": 0.0,
            }
            for r in raw
        ],
    }
    desk = new_desk()
    outcome = send(desk, json.dumps(body).encode())
    starts = [r["start"] for r in raw]
    ends = [r["start"] + r["length"] for r in raw]
    sound = (
        all(r["length"] > 0 for r in raw)
        and all(e == s for e, s in zip(ends, starts[1:], strict=False))
        and all(abs(r["price"]) <= 100 for r in raw)  # NaN compares False
        and ends[-1] > 0
    )
    assert outcome.accepted == sound, outcome.reason
    if sound:
        assert len(desk.book.current_slots(NOW - dt.timedelta(hours=2))) == len(raw)


def test_a_site_without_an_aggregator_has_an_empty_book() -> None:
    """The disabled link offers the same ``prices``: empty, version 0."""
    book = DisabledAggregator().prices
    assert (book.version, book.current_slots(NOW), book.events(NOW)) == (0, (), ())


def test_a_week_schedule_fits_the_size_cap_and_is_accepted() -> None:
    """672 slots with long prices fit in the 256 KiB cap, even indented by 4, and are accepted."""
    body = schedule_body("week", count=672, price=0.123456789)
    payload = json.dumps(body, indent=4).encode()
    assert len(payload) < MAX_PRICE_SCHEDULE_PAYLOAD_BYTES
    outcome = send(new_desk(), payload)
    assert outcome.accepted, outcome.reason


def test_the_book_is_never_changed_in_place_while_another_thread_reads_it() -> None:
    """The ledger's storage thread reads the book (receipts) while the event loop changes it:
    a reader holding the old slots and events must see them unchanged after a change."""
    import datetime as dt  # noqa: PLC0415

    from controller.aggregator.prices import PriceBook  # noqa: PLC0415
    from controller.economics.schedule import PriceSchedule  # noqa: PLC0415
    from controller.economics.tariff import PeakEvent, PriceSlot  # noqa: PLC0415

    now = dt.datetime(2026, 12, 3, 18, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    book = PriceBook()
    book.add_event(PeakEvent("dr-1", now, now + hour, 3.0), now)
    book.apply_schedule(
        PriceSchedule("s-1", "CNY", (PriceSlot(now, now + hour, 0.6, 0.8),), now), now
    )
    events_before, slots_before = book._events, book._index
    events_copy, slots_copy = dict(events_before), slots_before
    book.add_event(PeakEvent("dr-2", now + hour, now + 2 * hour, 2.0), now)
    book.cancel_event("dr-1", now)
    book.apply_schedule(
        PriceSchedule("s-2", "CNY", (PriceSlot(now, now + hour, 0.5, 0.9),), now), now
    )
    assert events_before == events_copy
    assert slots_before is slots_copy
    assert slots_before[0][0].export_per_kwh == 0.8
    assert [e.event_id for e in book.events(now)] == ["dr-2"]
    assert book.current_slots(now)[0].export_per_kwh == 0.9
