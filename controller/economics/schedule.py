"""Price data pushed by the aggregator, checked before it may reach the planner.

Pure: no IO, no clock reads (``now`` is an argument). Each check returns a list of problems, one
readable sentence each, and an empty list when the data is fit for use; the caller (the
aggregator link) refuses data with any problem and changes nothing. What is checked:

* a schedule: at least one slot and at most ``MAX_SLOTS`` (7 days of 15-minute slots); every
  time aware; each slot ends after it starts; slots in time order with no gap and no overlap;
  every price finite and at most ``MAX_ABS_PRICE_PER_KWH`` either way; not every slot ended by
  ``now`` (expired); the first slot starting at most ``HORIZON`` after ``now``; the site's
  currency;
* a peak event: aware times, an end after its start, not ended by ``now``, a start at most
  ``HORIZON`` ahead, a finite bonus from 0 to ``MAX_ABS_PRICE_PER_KWH``, and a requested power
  (if any) finite, positive and at most ``MAX_EVENT_POWER_W``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from controller.economics.tariff import PeakEvent, PriceSlot

HORIZON = dt.timedelta(days=7)
MAX_SLOTS = 7 * 96  # a week of 15-minute slots
# No retail or event price comes near this in any currency the project meets (CNY, EUR): a
# value above it is a unit or decimal-point mistake, never a price to plan against.
MAX_ABS_PRICE_PER_KWH = 100.0
MAX_EVENT_POWER_W = 1_000_000.0  # as the setpoint's absolute bound: no charger is near it
_MAX_PROBLEMS = 5  # a broken schedule of 672 slots is described by its first few problems


@dataclass(frozen=True, slots=True)
class PriceSchedule:
    """Import and export prices per slot from the aggregator, as one message carried them."""

    schedule_id: str
    currency: str  # ISO 4217
    slots: tuple[PriceSlot, ...]  # in time order, contiguous
    issued_at: dt.datetime  # aware


def _aware(moment: dt.datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() is not None


def _price_problem(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"{name} is {value!r}, not a finite number"
    if abs(value) > MAX_ABS_PRICE_PER_KWH:
        return f"{name} {value:g} is beyond ±{MAX_ABS_PRICE_PER_KWH:g} per kWh"
    return None


def _slot_problems(index: int, slot: PriceSlot, previous: PriceSlot | None) -> list[str]:
    where = f"slot {index}"
    if not (_aware(slot.start) and _aware(slot.end)):
        return [f"{where}: start and end need a UTC offset"]
    problems: list[str] = []
    if slot.end <= slot.start:
        length_s = (slot.end - slot.start).total_seconds()
        problems.append(
            f"{where}: ends at {slot.end.isoformat()}, not after its start "
            f"{slot.start.isoformat()} (length {length_s:g} s)"
        )
    for name, value in (
        ("import_per_kwh", slot.import_per_kwh),
        ("export_per_kwh", slot.export_per_kwh),
    ):
        problem = _price_problem(name, value)
        if problem is not None:
            problems.append(f"{where}: {problem}")
    if previous is not None and _aware(previous.end):
        if slot.start < previous.end:
            problems.append(
                f"{where}: overlaps slot {index - 1}: starts {slot.start.isoformat()}, "
                f"before that one ends ({previous.end.isoformat()})"
            )
        elif slot.start > previous.end:
            problems.append(
                f"{where}: gap after slot {index - 1}: nothing from "
                f"{previous.end.isoformat()} to {slot.start.isoformat()}"
            )
    return problems


def check_schedule(schedule: PriceSchedule, now: dt.datetime, currency: str) -> list[str]:
    """What makes ``schedule`` unfit for this site at ``now``; empty when it is fit.

    ``currency`` is the site's (ISO 4217). Slots are numbered from 0 as they are listed.
    """
    if not _aware(now):
        raise ValueError("now must be timezone-aware")  # a caller's bug, not bad input
    problems: list[str] = []
    if schedule.currency != currency:
        problems.append(f"currency {schedule.currency!r}, but this site uses {currency!r}")
    if not _aware(schedule.issued_at):
        problems.append("issued_at needs a UTC offset")
    slots = schedule.slots
    if not slots:
        return [*problems, "no slots"]
    if len(slots) > MAX_SLOTS:
        return [*problems, f"{len(slots)} slots, at most {MAX_SLOTS}"]
    previous: PriceSlot | None = None
    for index, slot in enumerate(slots):
        problems.extend(_slot_problems(index, slot, previous))
        previous = slot
        if len(problems) >= _MAX_PROBLEMS:
            return problems[:_MAX_PROBLEMS]
    if problems:
        return problems
    # Every time is aware and the slots are in order from here on.
    last_end = slots[-1].end
    if last_end <= now:
        problems.append(
            f"expired: the last slot ended at {last_end.isoformat()}, before now "
            f"({now.isoformat()})"
        )
    first_start = slots[0].start
    if first_start - now > HORIZON:
        problems.append(
            f"starts {first_start.isoformat()}, more than {HORIZON.days} days ahead of now "
            f"({now.isoformat()})"
        )
    return problems


def check_event(event: PeakEvent, now: dt.datetime) -> list[str]:
    """What makes the peak event ``event`` unfit at ``now``; empty when it is fit."""
    if not _aware(now):
        raise ValueError("now must be timezone-aware")  # a caller's bug, not bad input
    problems: list[str] = []
    bonus = event.bonus_per_kwh
    problem = _price_problem("bonus_per_kwh", bonus)
    if problem is not None:
        problems.append(problem)
    elif bonus < 0:
        problems.append(f"bonus_per_kwh {bonus:g} is negative; a bonus adds to the export price")
    power_w = event.power_w
    if power_w is not None and not (math.isfinite(power_w) and 0 < power_w <= MAX_EVENT_POWER_W):
        problems.append(
            f"power_w {power_w!r}: expected a discharge power above 0 and at most "
            f"{MAX_EVENT_POWER_W:g} W (a magnitude)"
        )
    if not (_aware(event.start) and _aware(event.end)):
        return [*problems, "start and end need a UTC offset"]
    if event.end <= event.start:
        length_s = (event.end - event.start).total_seconds()
        problems.append(
            f"ends at {event.end.isoformat()}, not after its start {event.start.isoformat()} "
            f"(length {length_s:g} s)"
        )
    elif event.end <= now:
        problems.append(
            f"expired: ended at {event.end.isoformat()}, before now ({now.isoformat()})"
        )
    if event.start - now > HORIZON:
        problems.append(
            f"starts {event.start.isoformat()}, more than {HORIZON.days} days ahead of now "
            f"({now.isoformat()})"
        )
    return problems
