"""Cancellation that library calls cannot swallow.

The daemon stops by cancelling its links, so a link task that does not end when cancelled keeps
the whole service from stopping (and a test from ending). On Python 3.11, ``asyncio.wait_for``
returns the awaited result instead of raising when the cancel and the result arrive in the same
pass of the event loop (CPython gh-86296, fixed in 3.12 by rebuilding ``wait_for`` on
``asyncio.timeout``). pymodbus awaits every reply and its connect that way, and aiomqtt awaits
connect, subscribe and publish that way, so a late Modbus reply or a PUBACK landing just as the
link is cancelled used to lose the cancel: the link went on polling and the stop never returned.

The task's own count of pending cancel requests (``Task.cancelling()``) is not touched by
``wait_for``, so a request that came in while the call ran is still visible after it returned.
``guarded`` compares the count before and after the call and raises the lost ``CancelledError``.
Only requests made during the call count: a task that already caught a cancel and now runs its
stop sequence (0 W to the inverter) is not cancelled again by it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


def cancel_requests() -> int:
    """How many cancel requests the current task has pending (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_if_cancelled_since(requests_before: int) -> None:
    """Raise ``CancelledError`` if the current task was asked to cancel since the count was
    ``requests_before`` and nothing delivered it."""
    if cancel_requests() > requests_before:
        raise asyncio.CancelledError


async def guarded(call: Awaitable[_T]) -> _T:
    """Await a library call; a cancel it swallowed is raised here instead of lost."""
    requests_before = cancel_requests()
    result = await call
    raise_if_cancelled_since(requests_before)
    return result
