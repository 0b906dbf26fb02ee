"""The bounded outbound queue between the control loop and the MQTT connection.

``report()`` and the setpoint handler put messages here without waiting; the link's sender
task publishes them (QoS 1, one at a time) while connected. Messages wait here across a lost
connection and go out after the reconnect.

Overflow policy (nothing here grows without bound):

* acks and events are kept in order (acks first when sending: they are what the aggregator is
  waiting for), ``capacity`` of them together at most. When full, the oldest *event* is dropped
  first; only when there are no events left is the oldest *ack* dropped. Every drop is counted
  (``dropped``) so the link can log it and report it in a ``messages_dropped`` event;
* status and telemetry are coalesced: only the latest of each is kept, since a newer one
  replaces an older one completely. Nothing is "lost" by coalescing.

Send order: acks, then events, then status, then telemetry.

With a durable outbox (``durable_outbox.py``, store and forward) only acks and status come
through here (and telemetry or events whose database write failed); the link sends the
stored records after them.

A message leaves the queue only when ``done()`` says it was published (``peek`` then
``done``), so a publish interrupted by a lost connection is retried after the reconnect
(at-least-once, like QoS 1 itself).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class Kind(enum.StrEnum):
    ACK = "ack"
    EVENT = "event"
    STATUS = "status"
    TELEMETRY = "telemetry"


_KEPT = (Kind.ACK, Kind.EVENT)
_LATEST = (Kind.STATUS, Kind.TELEMETRY)


@dataclass(frozen=True, slots=True, eq=False)
class Outgoing:
    """One message to publish (compared by identity: two equal payloads are two messages)."""

    kind: Kind
    topic: str
    payload: bytes
    retain: bool = False
    after_seq: int = 0  # an ack: sent once this storage job (its audit line) was processed


class Outbox:
    """Bounded, prioritised; see the module docstring for the overflow policy."""

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, found {capacity}")
        self.capacity = capacity
        self._kept: dict[Kind, deque[Outgoing]] = {kind: deque() for kind in _KEPT}
        self._latest: dict[Kind, Outgoing | None] = dict.fromkeys(_LATEST)
        self.dropped: dict[Kind, int] = dict.fromkeys(_KEPT, 0)

    def __len__(self) -> int:
        kept = sum(len(queue) for queue in self._kept.values())
        return kept + sum(item is not None for item in self._latest.values())

    def put(self, item: Outgoing) -> Outgoing | None:
        """Queue a message; returns the message dropped to make room, if one was."""
        dropped: Outgoing | None = None
        if item.kind in _LATEST:
            self._latest[item.kind] = item
        else:
            if sum(len(queue) for queue in self._kept.values()) >= self.capacity:
                victim_kind = Kind.EVENT if self._kept[Kind.EVENT] else Kind.ACK
                dropped = self._kept[victim_kind].popleft()
                self.dropped[victim_kind] += 1
            self._kept[item.kind].append(item)
        return dropped

    def peek(self, skip: Callable[[Outgoing], bool] | None = None) -> Outgoing | None:
        """The next message to send, left in the queue until ``done``. With ``skip``, a kind
        whose next message it skips is passed over (order within a kind is kept)."""
        for kind in _KEPT:
            if self._kept[kind]:
                head = self._kept[kind][0]
                if skip is None or not skip(head):
                    return head
        for kind in _LATEST:
            latest = self._latest[kind]
            if latest is not None and (skip is None or not skip(latest)):
                return latest
        return None

    def done(self, item: Outgoing) -> None:
        """``item`` was published: remove it (unless it was already replaced or dropped)."""
        if item.kind in _LATEST:
            if self._latest[item.kind] is item:
                self._latest[item.kind] = None
            return
        queue = self._kept[item.kind]
        if queue and queue[0] is item:
            queue.popleft()

    def pending(self, kind: Kind) -> list[Outgoing]:
        """What waits of one kind, oldest first."""
        if kind in _LATEST:
            latest = self._latest[kind]
            return [] if latest is None else [latest]
        return list(self._kept[kind])
