"""The content checks of pushed prices (controller/economics/schedule.py): pure, no broker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.economics.schedule import (
    MAX_SLOTS,
    PriceSchedule,
    check_event,
    check_schedule,
)
from controller.economics.tariff import PeakEvent, PriceSlot

NOW = dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.UTC)
QUARTER = dt.timedelta(minutes=15)


def slots(count: int, start: dt.datetime = NOW, length: dt.timedelta = QUARTER) -> list[PriceSlot]:
    return [
        PriceSlot(start + i * length, start + (i + 1) * length, 0.25 + i / 100, 0.10)
        for i in range(count)
    ]


def schedule(items: list[PriceSlot], currency: str = "EUR") -> PriceSchedule:
    return PriceSchedule("s-1", currency, tuple(items), NOW)


def event(**changes: object) -> PeakEvent:
    base = PeakEvent("ev-1", NOW + dt.timedelta(hours=6), NOW + dt.timedelta(hours=8), 1.5, 6000.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_contiguous_schedule_is_fit() -> None:
    """A week of contiguous 15-minute slots in the site's currency has no problem."""
    assert check_schedule(schedule(slots(MAX_SLOTS)), NOW, "EUR") == []


def test_a_gap_is_named_with_both_ends() -> None:
    """A slot that starts after its neighbour ended is a gap, and says where."""
    items = slots(4)
    items[2] = dataclasses.replace(items[2], start=items[2].start + dt.timedelta(minutes=5))
    (problem,) = check_schedule(schedule(items), NOW, "EUR")
    assert problem == (
        "slot 2: gap after slot 1: nothing from 2025-03-14T12:30:00+00:00 to "
        "2025-03-14T12:35:00+00:00"
    )


def test_an_overlap_is_named() -> None:
    """A slot that starts before its neighbour ended is an overlap."""
    items = slots(4)
    items[3] = dataclasses.replace(items[3], start=items[3].start - dt.timedelta(minutes=5))
    assert check_schedule(schedule(items), NOW, "EUR") == [
        "slot 3: overlaps slot 2: starts 2025-03-14T12:40:00+00:00, before that one ends "
        "(2025-03-14T12:45:00+00:00)"
    ]


@pytest.mark.parametrize("length_s", [0, -900])
def test_a_slot_of_zero_or_negative_length_is_refused(length_s: int) -> None:
    """A slot whose end is not after its start is refused, with its length."""
    items = slots(1)
    items[0] = dataclasses.replace(items[0], end=items[0].start + dt.timedelta(seconds=length_s))
    problems = check_schedule(schedule(items), NOW, "EUR")
    assert any("not after its start" in p and f"(length {length_s} s)" in p for p in problems)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 100.01, -250.0])
@pytest.mark.parametrize("field", ["import_per_kwh", "export_per_kwh"])
def test_a_price_not_finite_or_out_of_range_is_refused(field: str, value: float) -> None:
    """NaN, infinities and prices beyond ±100 per kWh are refused, naming the field."""
    items = slots(3)
    changes: dict[str, Any] = {field: value}
    items[1] = dataclasses.replace(items[1], **changes)
    (problem,) = check_schedule(schedule(items), NOW, "EUR")
    assert problem.startswith(f"slot 1: {field}")


def test_negative_prices_within_range_are_fit() -> None:
    """Negative prices happen (surplus solar): within range they are fit."""
    items = [dataclasses.replace(s, import_per_kwh=-0.05, export_per_kwh=-0.02) for s in slots(2)]
    assert check_schedule(schedule(items), NOW, "EUR") == []


def test_an_ended_schedule_is_expired_but_a_partly_ended_one_is_fit() -> None:
    """Every slot ended: expired. Some slots still to come: fit."""
    ended = slots(4, start=NOW - 4 * QUARTER)
    (problem,) = check_schedule(schedule(ended), NOW, "EUR")
    assert problem.startswith("expired: the last slot ended at 2025-03-14T12:00:00+00:00")
    assert check_schedule(schedule(slots(8, start=NOW - 4 * QUARTER)), NOW, "EUR") == []


def test_a_schedule_starting_beyond_seven_days_is_refused() -> None:
    """The first slot may start at most 7 days ahead."""
    far = slots(2, start=NOW + dt.timedelta(days=7, minutes=1))
    assert check_schedule(schedule(far), NOW, "EUR")[0].startswith("starts 2025-03-21T12:01")
    assert check_schedule(schedule(slots(2, start=NOW + dt.timedelta(days=7))), NOW, "EUR") == []


def test_another_currency_too_many_or_no_slots_are_refused() -> None:
    """Currency must be the site's; 1 to 672 slots."""
    assert check_schedule(schedule(slots(2), "CNY"), NOW, "EUR") == [
        "currency 'CNY', but this site uses 'EUR'"
    ]
    assert check_schedule(schedule(slots(MAX_SLOTS + 1)), NOW, "EUR") == ["673 slots, at most 672"]
    assert check_schedule(schedule([]), NOW, "EUR") == ["no slots"]


def test_naive_times_are_refused_not_compared() -> None:
    """A naive time is a problem to report, never a TypeError from comparing it."""
    items = slots(3)
    items[1] = dataclasses.replace(items[1], start=items[1].start.replace(tzinfo=None))
    naive_issue = PriceSchedule("s", "EUR", tuple(slots(1)), NOW.replace(tzinfo=None))
    assert check_schedule(schedule(items), NOW, "EUR") == [
        "slot 1: start and end need a UTC offset"
    ]
    assert check_schedule(naive_issue, NOW, "EUR") == ["issued_at needs a UTC offset"]
    with pytest.raises(ValueError, match="aware"):
        check_schedule(schedule(slots(1)), NOW.replace(tzinfo=None), "EUR")


def test_many_problems_are_cut_to_the_first_five() -> None:
    """A broken long schedule is described by its first few problems, not 672 of them."""
    items = [dataclasses.replace(s, import_per_kwh=float("nan")) for s in slots(50)]
    assert len(check_schedule(schedule(items), NOW, "EUR")) == 5


def test_an_event_is_fit_and_each_flaw_is_named() -> None:
    """A peak event: fit as given; each flaw gives its own sentence."""
    assert check_event(event(), NOW) == []
    assert check_event(event(power_w=None), NOW) == []
    assert check_event(event(end=NOW + dt.timedelta(hours=6)), NOW)[0].startswith(
        "ends at 2025-03-14T18:00:00+00:00, not after its start"
    )
    assert check_event(event(start=NOW - dt.timedelta(hours=3), end=NOW), NOW)[0].startswith(
        "expired: ended at 2025-03-14T12:00:00+00:00"
    )
    assert check_event(event(bonus_per_kwh=float("nan")), NOW) == [
        "bonus_per_kwh is nan, not a finite number"
    ]
    assert check_event(event(bonus_per_kwh=-1.0), NOW)[0].startswith("bonus_per_kwh -1 is negative")
    assert check_event(event(bonus_per_kwh=101.0), NOW)[0].startswith("bonus_per_kwh 101 is beyond")
    assert check_event(event(power_w=0.0), NOW)[0].startswith("power_w 0.0: expected")
    assert check_event(event(power_w=float("inf")), NOW)[0].startswith("power_w inf: expected")
    far = NOW + dt.timedelta(days=8)
    assert check_event(event(start=far, end=far + QUARTER), NOW)[0].startswith("starts 2025-03-22")
    assert check_event(event(start=NOW.replace(tzinfo=None)), NOW) == [
        "start and end need a UTC offset"
    ]


_times = st.datetimes(
    min_value=dt.datetime(2025, 3, 1), max_value=dt.datetime(2025, 4, 1), timezones=st.just(dt.UTC)
) | st.datetimes(min_value=dt.datetime(2025, 3, 1), max_value=dt.datetime(2025, 4, 1))
_prices = st.floats(allow_nan=True, allow_infinity=True)


@given(
    st.lists(st.builds(PriceSlot, _times, _times, _prices, _prices), max_size=8),
    st.sampled_from(["EUR", "CNY"]),
)
def test_any_schedule_gets_a_list_of_sentences_never_an_error(
    items: list[PriceSlot], currency: str
) -> None:
    """Whatever the slots (naive, NaN, reversed), the answer is a list of strings."""
    problems = check_schedule(schedule(items, currency), NOW, "EUR")
    assert all(isinstance(p, str) and p for p in problems)
    if not problems:  # fit: contiguous, in order, finite, in range, not ended
        assert all(a.end == b.start for a, b in itertools.pairwise(items))
        assert items[-1].end > NOW
