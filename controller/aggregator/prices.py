"""Prices pushed by the aggregator: payloads in, the price book and one ack per message out.

Sans-IO, like ``tracker.py``: no asyncio, no MQTT, no clock reads (the aware wall clock's "now"
is an argument), no logging. The link hands over each payload of the ``price_schedule`` and
``price_event`` topics (``PriceDesk.receive``), publishes the ack that comes back, stores an
accepted message in the ledger, and wakes the control loop; the daemon reads ``PriceBook``.

Checks, in order (the first that fails is the reason; docs/mqtt.md, "Prices"):

1. size (256 KiB for a schedule, 4 KiB for an event), UTF-8, well-formed JSON without
   duplicate keys or NaN/Infinity (shared with setpoints: ``validation.load_json``);
2. the MQTT retain flag: a retained message is stale by nature and never acted on;
3. shape (``messages.py``): known fields only, strict types (a price is a number, never a
   string or null), an ``id`` from a safe alphabet, times with a UTC offset;
4. replay: an id accepted before, on either topic (the last ``remembered_ids``);
5. ``issued_at`` no more than the clock-skew tolerance ahead of the charger's clock;
6. a schedule: not issued before the schedule accepted last (stale); then
   ``economics.schedule.check_schedule`` (gaps, overlaps, slot lengths, prices, expiry,
   horizon, currency);
7. an event: ``economics.schedule.check_event``, no overlap with another event in force, at
   most ``max_events`` in force; a cancellation: the event it names is in force.

What an accepted message does to the book:

* a schedule replaces the book's slots from its first slot's start onward; slots of earlier
  schedules before that start are kept (a slot running across it is cut there), so a day-ahead
  schedule sent alone does not wipe out the rest of today's prices;
* an event is added; a cancellation removes its event.

Either way ``PriceBook.version`` goes up by one. A rejected message changes nothing (neither the
book, nor its version, nor the replay memory). Memory is bounded: slots of at most two
schedules' worth once ended ones are pruned, ``max_events`` events, ``remembered_ids`` ids.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import pydantic

from controller.aggregator.messages import (
    MAX_PRICE_EVENT_PAYLOAD_BYTES,
    MAX_PRICE_SCHEDULE_PAYLOAD_BYTES,
    PriceAckMessage,
    PriceEventMessage,
    PriceScheduleMessage,
)
from controller.aggregator.validation import (
    RETAINED_REASON,
    clip_reason,
    describe_error,
    load_json,
    readable_id,
)
from controller.economics.schedule import MAX_SLOTS, PriceSchedule, check_event, check_schedule
from controller.economics.tariff import PeakEvent, PriceSlot

PriceTopic = Literal["price_schedule", "price_event"]
MAX_EVENTS = 64
REMEMBERED_IDS = 1024


@dataclass(frozen=True, slots=True)
class PriceLimits:
    """What pushed prices must respect (from the config)."""

    currency: str  # the site's, ISO 4217
    clock_skew_s: float
    remembered_ids: int = REMEMBERED_IDS
    max_events: int = MAX_EVENTS


class PriceBook:
    """The prices the aggregator pushed and the charger accepted; read by the daemon each cycle.

    ``version`` starts at 0 (nothing pushed) and goes up by one with every accepted message, so
    a planner that remembers the version it planned with knows when to plan again. Slots and
    events that ended leave the answers by themselves, without a version change.
    """

    def __init__(self) -> None:
        # The ledger's storage thread reads the book while the event loop changes it: every
        # change builds new objects and swaps the reference (never changed in place), so a
        # reader sees one version or the next, whole.
        # (slots in time order, none overlapping; each slot's end, ascending, for bisect)
        self._index: tuple[tuple[PriceSlot, ...], tuple[dt.datetime, ...]] = ((), ())
        self._events: dict[str, PeakEvent] = {}
        self._version = 0
        self._schedule_id: str | None = None
        self._schedule_issued_at: dt.datetime | None = None

    def __repr__(self) -> str:
        return (
            f"<PriceBook version={self._version} schedule={self._schedule_id!r} "
            f"slots={len(self._index[0])} events={sorted(self._events)!r}>"
        )

    @property
    def version(self) -> int:
        return self._version

    @property
    def schedule_id(self) -> str | None:
        """The schedule accepted last, or None."""
        return self._schedule_id

    @property
    def schedule_issued_at(self) -> dt.datetime | None:
        return self._schedule_issued_at

    def current_slots(self, now: dt.datetime) -> tuple[PriceSlot, ...]:
        """The pushed slots not ended by ``now``, in time order (they may start later than now,
        and there may be gaps between schedules: no pushed price there)."""
        # Read every control cycle: a bisection, not a scan (672 slots: ~1 ms scanned).
        slots, ends = self._index
        return slots[bisect.bisect_right(ends, now) :]

    def events(self, now: dt.datetime) -> tuple[PeakEvent, ...]:
        """The peak events not ended by ``now``, by start time."""
        live = (event for event in self._events.values() if event.end > now)
        return tuple(sorted(live, key=lambda event: (event.start, event.event_id)))

    # -- changes (the desk's) --------------------------------------------------------------------

    def apply_schedule(self, schedule: PriceSchedule, now: dt.datetime) -> None:
        """The schedule's slots replace the book's from its first slot's start onward."""
        cut_at = schedule.slots[0].start
        kept: list[PriceSlot] = []
        for slot in self._index[0]:
            if slot.end <= now or slot.start >= cut_at:
                continue
            if slot.end > cut_at:
                slot = PriceSlot(  # noqa: PLW2901  the earlier slot, cut where the new one starts
                    slot.start, cut_at, slot.import_per_kwh, slot.export_per_kwh
                )
            kept.append(slot)
        # Bounded: earlier schedules keep at most one schedule's worth of slots (the nearest).
        slots = (*kept[:MAX_SLOTS], *schedule.slots)
        self._index = (slots, tuple(slot.end for slot in slots))
        self._schedule_id = schedule.schedule_id
        self._schedule_issued_at = schedule.issued_at
        self._changed(now)

    def add_event(self, event: PeakEvent, now: dt.datetime) -> None:
        self._events = {**self._events, event.event_id: event}
        self._changed(now)

    def cancel_event(self, event_id: str, now: dt.datetime) -> None:
        self._events = {key: e for key, e in self._events.items() if key != event_id}
        self._changed(now)

    def _changed(self, now: dt.datetime) -> None:
        self._version += 1
        self._events = {key: e for key, e in self._events.items() if e.end > now}


@dataclass(frozen=True, slots=True)
class PriceOutcome:
    """What became of one payload: its ack, and whether the book changed."""

    topic: PriceTopic
    accepted: bool
    ack: PriceAckMessage

    @property
    def message_id(self) -> str | None:
        return self.ack.id

    @property
    def reason(self) -> str | None:
        return self.ack.reason


class _Refused(Exception):  # noqa: N818  a control-flow signal inside the desk, never raised out
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _when(moment: dt.datetime) -> str:
    return moment.isoformat()


def _schedule_from(msg: PriceScheduleMessage) -> PriceSchedule:
    return PriceSchedule(
        schedule_id=msg.id,
        currency=msg.currency,
        slots=tuple(
            PriceSlot(s.start, s.end, s.import_per_kwh, s.export_per_kwh) for s in msg.slots
        ),
        issued_at=msg.issued_at,
    )


def _event_from(msg: PriceEventMessage) -> PeakEvent:
    assert msg.start is not None  # noqa: S101  the model requires them of an event
    assert msg.end is not None  # noqa: S101
    assert msg.bonus_per_kwh is not None  # noqa: S101
    return PeakEvent(msg.id, msg.start, msg.end, msg.bonus_per_kwh, msg.power_w)


class PriceDesk:
    """Validates pushed prices, keeps the book, and answers each message; see the module
    docstring."""

    def __init__(self, limits: PriceLimits) -> None:
        self.limits = limits
        self.book = PriceBook()
        self._accepted_ids: OrderedDict[str, None] = OrderedDict()
        self.accepted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<PriceDesk {self.book!r} accepted={self.accepted} rejected={self.rejected}>"

    def receive(
        self, topic: PriceTopic, payload: bytes, *, retained: bool, wall_now: dt.datetime
    ) -> PriceOutcome:
        """One payload of ``topic`` as the broker delivered it."""
        if wall_now.tzinfo is None:
            raise ValueError("wall_now must be timezone-aware")  # a caller bug, not bad input
        max_bytes = (
            MAX_PRICE_SCHEDULE_PAYLOAD_BYTES
            if topic == "price_schedule"
            else MAX_PRICE_EVENT_PAYLOAD_BYTES
        )
        data, problem = load_json(payload, max_bytes)
        if problem is not None:
            return self._reject(topic, problem.setpoint_id, problem.reason, wall_now)
        message_id = readable_id(data)
        if retained:
            return self._reject(topic, message_id, RETAINED_REASON, wall_now)
        if not isinstance(data, dict):
            return self._reject(topic, None, "expected a JSON object", wall_now)
        try:
            if topic == "price_schedule":
                schedule = PriceScheduleMessage.model_validate_json(payload)
                self._take_schedule(schedule, wall_now)
            else:
                event = PriceEventMessage.model_validate_json(payload)
                self._take_event(event, wall_now)
        except pydantic.ValidationError as exc:
            return self._reject(topic, message_id, describe_error(exc), wall_now)
        except _Refused as refused:
            return self._reject(topic, message_id, refused.reason, wall_now)
        assert message_id is not None  # noqa: S101  the model checked the id's alphabet
        self._remember(message_id)
        self.accepted += 1
        ack = PriceAckMessage(
            id=message_id, topic=topic, accepted=True, at=wall_now, version=self.book.version
        )
        return PriceOutcome(topic, accepted=True, ack=ack)

    def restore(self, records: Iterable[tuple[str, bytes]], wall_now: dt.datetime) -> int:
        """Rebuild the book and the replay memory from accepted messages kept in the ledger,
        oldest first, as (topic, body): no ack, and no time check but what has ended (the
        messages were checked when they arrived). Returns how many changed the book; a body
        that no longer parses is skipped."""
        applied = 0
        for topic, body in records:
            try:
                if topic == "price_schedule":
                    schedule = PriceScheduleMessage.model_validate_json(body)
                    self._remember(schedule.id)
                    in_force = self.book.schedule_issued_at
                    if in_force is None or schedule.issued_at >= in_force:
                        self.book.apply_schedule(_schedule_from(schedule), wall_now)
                        applied += 1
                elif topic == "price_event":
                    event = PriceEventMessage.model_validate_json(body)
                    self._remember(event.id)
                    applied += self._restore_event(event, wall_now)
            except pydantic.ValidationError:
                continue
        return applied

    # -- the checks ------------------------------------------------------------------------------

    def _reject(
        self, topic: PriceTopic, message_id: str | None, reason: str, wall_now: dt.datetime
    ) -> PriceOutcome:
        self.rejected += 1
        ack = PriceAckMessage(
            id=message_id, topic=topic, accepted=False, at=wall_now, reason=clip_reason(reason)
        )
        return PriceOutcome(topic, accepted=False, ack=ack)

    def _common(self, message_id: str, issued_at: dt.datetime, wall_now: dt.datetime) -> None:
        if message_id in self._accepted_ids:
            raise _Refused(f"replayed id: {message_id!r} was already accepted")
        if issued_at - wall_now > dt.timedelta(seconds=self.limits.clock_skew_s):
            raise _Refused(
                f"issued in the future: issued_at {_when(issued_at)} is more than "
                f"{self.limits.clock_skew_s:g} s after this charger's clock ({_when(wall_now)})"
            )

    def _take_schedule(self, msg: PriceScheduleMessage, wall_now: dt.datetime) -> None:
        self._common(msg.id, msg.issued_at, wall_now)
        book = self.book
        in_force = book.schedule_issued_at
        if in_force is not None and msg.issued_at < in_force:
            raise _Refused(
                f"stale: issued_at {_when(msg.issued_at)} is before that of schedule "
                f"{book.schedule_id!r} ({_when(in_force)}), accepted last"
            )
        schedule = _schedule_from(msg)
        problems = check_schedule(schedule, wall_now, self.limits.currency)
        if problems:
            raise _Refused("; ".join(problems))
        book.apply_schedule(schedule, wall_now)

    def _take_event(self, msg: PriceEventMessage, wall_now: dt.datetime) -> None:
        self._common(msg.id, msg.issued_at, wall_now)
        book = self.book
        live = {event.event_id: event for event in book.events(wall_now)}
        if msg.cancels is not None:
            if msg.cancels not in live:
                raise _Refused(f"no event {msg.cancels!r} in force to cancel")
            book.cancel_event(msg.cancels, wall_now)
            return
        event = _event_from(msg)
        problems = check_event(event, wall_now)
        if problems:
            raise _Refused("; ".join(problems))
        for other in live.values():
            if event.start < other.end and other.start < event.end:
                raise _Refused(
                    f"overlaps event {other.event_id!r} ({_when(other.start)} to "
                    f"{_when(other.end)}); cancel that one first"
                )
        if len(live) >= self.limits.max_events:
            raise _Refused(
                f"too many events: {len(live)} in force, at most {self.limits.max_events}"
            )
        book.add_event(event, wall_now)

    def _restore_event(self, msg: PriceEventMessage, wall_now: dt.datetime) -> int:
        book = self.book
        if msg.cancels is not None:
            if msg.cancels in {event.event_id for event in book.events(wall_now)}:
                book.cancel_event(msg.cancels, wall_now)
                return 1
            return 0
        event = _event_from(msg)
        if event.end <= wall_now:
            return 0
        book.add_event(event, wall_now)
        return 1

    def _remember(self, message_id: str) -> None:
        self._accepted_ids[message_id] = None
        self._accepted_ids.move_to_end(message_id)
        while len(self._accepted_ids) > self.limits.remembered_ids:
            self._accepted_ids.popitem(last=False)
