"""The bounded outbox's drop policy and the reconnect backoff, pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.aggregator.backoff import backoff_delay_s
from controller.aggregator.outbox import Kind, Outbox, Outgoing


def item(kind: Kind, payload: bytes = b"x") -> Outgoing:
    return Outgoing(kind, f"t/{kind}", payload, retain=kind is Kind.STATUS)


def drain(outbox: Outbox) -> list[Outgoing]:
    sent = []
    while (next_item := outbox.peek()) is not None:
        sent.append(next_item)
        outbox.done(next_item)
    return sent


def test_send_order_is_acks_events_status_telemetry() -> None:
    """Acks go first, then events, then the latest status and the latest telemetry."""
    outbox = Outbox(capacity=10)
    telemetry = item(Kind.TELEMETRY)
    status = item(Kind.STATUS)
    event = item(Kind.EVENT)
    first_ack, second_ack = item(Kind.ACK, b"1"), item(Kind.ACK, b"2")
    for message in (telemetry, status, event, first_ack, second_ack):
        outbox.put(message)
    assert drain(outbox) == [first_ack, second_ack, event, status, telemetry]
    assert len(outbox) == 0


def test_status_and_telemetry_are_coalesced_to_the_latest() -> None:
    """A newer telemetry or status replaces the queued one; nothing else is dropped."""
    outbox = Outbox(capacity=2)
    for n in range(100):
        outbox.put(item(Kind.TELEMETRY, str(n).encode()))
        outbox.put(item(Kind.STATUS, str(n).encode()))
    assert [m.payload for m in drain(outbox)] == [b"99", b"99"]
    assert outbox.dropped == {Kind.ACK: 0, Kind.EVENT: 0}


def test_overflow_drops_the_oldest_event_before_any_ack() -> None:
    """When acks and events fill the outbox, events go first, then the oldest acks."""
    outbox = Outbox(capacity=3)
    outbox.put(item(Kind.EVENT, b"e1"))
    outbox.put(item(Kind.ACK, b"a1"))
    outbox.put(item(Kind.EVENT, b"e2"))
    dropped = outbox.put(item(Kind.ACK, b"a2"))
    assert dropped is not None
    assert dropped.payload == b"e1"
    dropped = outbox.put(item(Kind.ACK, b"a3"))
    assert dropped is not None
    assert dropped.payload == b"e2"
    dropped = outbox.put(item(Kind.ACK, b"a4"))
    assert dropped is not None
    assert dropped.payload == b"a1"
    assert [m.payload for m in drain(outbox)] == [b"a2", b"a3", b"a4"]
    assert outbox.dropped == {Kind.ACK: 1, Kind.EVENT: 2}


def test_a_message_stays_queued_until_done() -> None:
    """peek does not remove: a publish interrupted by a lost connection is retried."""
    outbox = Outbox()
    ack = item(Kind.ACK)
    outbox.put(ack)
    assert outbox.peek() is ack
    assert outbox.peek() is ack
    outbox.done(ack)
    assert outbox.peek() is None


def test_done_ignores_a_replaced_telemetry() -> None:
    """Telemetry replaced while being published stays queued (the newer one is still owed)."""
    outbox = Outbox()
    old, new = item(Kind.TELEMETRY, b"old"), item(Kind.TELEMETRY, b"new")
    outbox.put(old)
    in_flight = outbox.peek()
    outbox.put(new)
    assert in_flight is old
    outbox.done(in_flight)
    assert outbox.peek() is new


def test_capacity_must_be_positive() -> None:
    """An outbox that can hold nothing is a configuration bug."""
    with pytest.raises(ValueError, match="capacity"):
        Outbox(capacity=0)


def test_backoff_doubles_up_to_the_cap() -> None:
    """Without jitter the ceiling doubles per attempt and stops at the cap."""
    ceilings = [backoff_delay_s(n, 1.0, 60.0, 1.0) for n in range(9)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff_delay_s(10_000, 1.0, 60.0, 1.0) == 60.0


@given(
    st.integers(min_value=0, max_value=10_000),
    st.floats(min_value=0.1, max_value=60),
    st.floats(min_value=0.1, max_value=3600),
    st.floats(min_value=0, max_value=1),
)
def test_backoff_with_jitter_stays_between_half_and_the_ceiling(
    attempt: int, initial_s: float, max_s: float, random01: float
) -> None:
    """Jitter scales the wait into [ceiling / 2, ceiling], never above the cap."""
    ceiling_s = min(max_s, initial_s * 2.0 ** min(attempt, 64))
    delay_s = backoff_delay_s(attempt, initial_s, max_s, random01)
    assert ceiling_s / 2 <= delay_s <= ceiling_s
    assert delay_s <= max_s


def test_backoff_rejects_a_negative_attempt() -> None:
    """A negative attempt number is a caller bug."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay_s(-1, 1.0, 60.0, 0.5)
