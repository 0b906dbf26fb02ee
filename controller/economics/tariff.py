"""Prices per time band: the configured tariff, schedules pushed by the aggregator, peak events.

Sign and units: prices are money per kWh in ``currency`` at the grid connection; import is what
the owner pays per kWh taken from the grid, export what the owner is paid per kWh given back.

A ``Tariff`` is written in local wall-clock time, the way utilities publish them: periods chosen by
month (season) and day type (weekday, weekend, listed holiday), each with bands that cover the 24
hours of a day exactly once. A band may cross midnight (22:00-06:00): it then covers the end and
the start of *each* day of its period, and the hours after midnight take the prices of the day they
fall in (so Saturday 00:00-06:00 is priced by Saturday's period). Every local edge becomes an
instant through the zone of the datetimes given (``zoneinfo``): on a 23 h day an edge inside the
skipped hour falls on the jump itself, on a 25 h day an edge in the repeated hour is its first
occurrence, and a band spans the real time between its edges. Slot edges come back in UTC, so
that subtracting and comparing them is exact (Python compares and subtracts two datetimes of one
zoneinfo zone by wall clock, wrong across a DST change); ``.astimezone(zone)`` shows them.

``slot_prices`` turns the tariff, any pushed schedule and any peak events into one price per
planner slot (15 min). Pushed data is vetted before it gets here: ``economics/schedule.py``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_DAY_S = 86_400

Where = tuple[str | int, ...]


class DayType(enum.StrEnum):
    """How a utility classes a calendar day; a listed holiday wins over the day of the week."""

    WEEKDAY = "weekday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


ALL_DAY_TYPES = frozenset(DayType)
ALL_MONTHS = frozenset(range(1, 13))


@dataclass(frozen=True, slots=True)
class PriceSlot:
    """One stretch of constant prices, [start, end), aware datetimes."""

    start: dt.datetime
    end: dt.datetime
    import_per_kwh: float
    export_per_kwh: float
    # The peak event that set the export price in this slot, if any (receipts name it).
    event_id: str | None = None
    # A peak event's requested discharge power here (W, magnitude): the event's bonus export
    # price applies up to this power; None: no power window (the price applies to all export).
    event_power_w: float | None = None


@dataclass(frozen=True, slots=True)
class PeakEvent:
    """A demand-response event: a bonus on top of the export price while it runs, optionally only
    for export up to a requested power."""

    event_id: str
    start: dt.datetime
    end: dt.datetime
    bonus_per_kwh: float  # added to the export price for export inside [start, end)
    power_w: float | None = None  # the bonus applies up to this export power (magnitude); None: all


@dataclass(frozen=True, slots=True)
class Band:
    """Prices from ``start`` to ``end`` local time. ``end`` 00:00 means midnight; ``start`` after
    ``end`` crosses midnight; 00:00-00:00 is the whole day."""

    start: dt.time
    end: dt.time
    import_per_kwh: float
    export_per_kwh: float
    name: str = ""

    def pieces_s(self) -> tuple[tuple[int, int], ...]:
        """The band as [from, to) seconds of the local day (two pieces if it crosses midnight)."""
        start_s = _seconds(self.start)
        end_s = _seconds(self.end) or _DAY_S
        if start_s < end_s:
            return ((start_s, end_s),)
        if start_s == end_s:
            return ()
        return ((start_s, _DAY_S), (0, end_s))

    @property
    def crosses_midnight(self) -> bool:
        return len(self.pieces_s()) == 2


@dataclass(frozen=True, slots=True)
class TariffPeriod:
    """The bands that apply on the days of ``day_types`` in ``months`` (1-12)."""

    months: frozenset[int]
    day_types: frozenset[DayType]
    bands: tuple[Band, ...]


# One stretch of a local day: [from, to) seconds of the day, and its band.
_Piece = tuple[int, int, Band]


@dataclass(frozen=True, slots=True)
class Tariff:
    """A complete time-of-use tariff; construction refuses an incomplete or ambiguous one."""

    currency: str
    periods: tuple[TariffPeriod, ...]
    holidays: frozenset[dt.date] = frozenset()

    def __post_init__(self) -> None:
        problems = check_tariff(self.currency, self.periods)
        if problems:
            raise ValueError("invalid tariff: " + "; ".join(problems))

    @classmethod
    def flat(cls, currency: str, import_per_kwh: float, export_per_kwh: float) -> Tariff:
        """One price each way, all day, every day."""
        band = Band(dt.time(0), dt.time(0), import_per_kwh, export_per_kwh, "flat")
        return cls(currency, (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, (band,)),))

    def day_type(self, day: dt.date) -> DayType:
        if day in self.holidays:
            return DayType.HOLIDAY
        return DayType.WEEKEND if day.weekday() >= 5 else DayType.WEEKDAY

    def period_for(self, day: dt.date) -> TariffPeriod:
        kind = self.day_type(day)
        for period in self.periods:
            if day.month in period.months and kind in period.day_types:
                return period
        raise AssertionError("unreachable: check_tariff guarantees one period per day")

    def price_at(self, at: dt.datetime) -> PriceSlot:
        """The band in force at ``at`` (aware; its zone is the site's), with the band's true edges:
        a band crossing midnight runs on into the next day when that day continues it."""
        zone = _zone_of(at, "at")
        day = at.astimezone(zone).date()
        at_utc = at.astimezone(dt.UTC)
        for slot in self._merged(day - dt.timedelta(days=1), day + dt.timedelta(days=1), zone):
            if slot.start <= at_utc < slot.end:
                return slot
        raise AssertionError("unreachable: the bands of a day cover it")

    def slots(self, start: dt.datetime, end: dt.datetime) -> list[PriceSlot]:
        """Contiguous slots covering [start, end) in the zone of ``start``, cut at band edges (the
        first and last are clipped to ``start`` and ``end``)."""
        zone = _zone_of(start, "start")
        _zone_of(end, "end")
        start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        if end <= start:
            return []
        first = start.astimezone(zone).date() - dt.timedelta(days=1)
        last = end.astimezone(zone).date() + dt.timedelta(days=1)
        out: list[PriceSlot] = []
        for slot in self._merged(first, last, zone):
            if slot.end <= start or slot.start >= end:
                continue
            out.append(_clip(slot, max(slot.start, start), min(slot.end, end)))
        return out

    def _merged(self, first: dt.date, last: dt.date, zone: dt.tzinfo) -> list[PriceSlot]:
        """Slots of the local days first..last, a midnight-crossing band joined across midnight
        when the next day continues it with the same band."""
        out: list[PriceSlot] = []
        bands: list[Band] = []
        day = first
        while day <= last:
            for from_s, to_s, band in self._pieces(day):
                start = _instant(day, from_s, zone)
                end = _instant(day, to_s, zone)
                if end <= start:
                    continue  # an edge pair inside a skipped DST hour
                joins = (
                    out
                    and from_s == 0
                    and band.crosses_midnight
                    and bands[-1] == band
                    and out[-1].end == start
                )
                if joins:
                    out[-1] = _clip(out[-1], out[-1].start, end)
                else:
                    out.append(PriceSlot(start, end, band.import_per_kwh, band.export_per_kwh))
                    bands.append(band)
            day += dt.timedelta(days=1)
        return out

    def _pieces(self, day: dt.date) -> list[_Piece]:
        period = self.period_for(day)
        return sorted(
            (from_s, to_s, band) for band in period.bands for from_s, to_s in band.pieces_s()
        )


def _seconds(time: dt.time) -> int:
    return time.hour * 3600 + time.minute * 60 + time.second


def _clock(seconds: int) -> str:
    return "24:00" if seconds == _DAY_S else f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _zone_of(at: dt.datetime, name: str) -> dt.tzinfo:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name}: expected an aware datetime (with a time zone), found {at}")
    return at.tzinfo


def _instant(day: dt.date, seconds: int, zone: dt.tzinfo) -> dt.datetime:
    """The first instant (UTC) at which the local clock in ``zone`` reads ``day`` + ``seconds``.

    An ambiguous time (the repeated hour of a 25 h day) is its first occurrence; a time that does
    not exist (the skipped hour of a 23 h day) is the moment of the jump.
    """
    wall = dt.datetime.combine(day, dt.time(0)) + dt.timedelta(seconds=seconds)
    first = wall.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # Not a real local time: fold 0 and fold 1 bracket the jump; find the jump to the second.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    low, high = min(first, other), max(first, other)
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def _clip(slot: PriceSlot, start: dt.datetime, end: dt.datetime) -> PriceSlot:
    return PriceSlot(
        start, end, slot.import_per_kwh, slot.export_per_kwh, slot.event_id, slot.event_power_w
    )


# --- checking a tariff --------------------------------------------------------------------------


def tariff_problems(currency: str, periods: Sequence[TariffPeriod]) -> list[tuple[Where, str]]:
    """Every problem of a tariff, each with where it is (``("periods", 1, "bands", 0)``)."""
    found: list[tuple[Where, str]] = []
    if len(currency) != 3 or not currency.isascii() or not currency.isupper():
        found.append(
            (("currency",), f"expected an ISO 4217 code such as 'EUR', found {currency!r}")
        )
    if not periods:
        found.append((("periods",), "expected at least one period, found none"))
    for p, period in enumerate(periods):
        found += _period_problems(("periods", p), period)
    found += _coverage_problems(periods)
    return found


def check_tariff(currency: str, periods: Sequence[TariffPeriod]) -> list[str]:
    """Every problem of a tariff as text: gaps or overlaps between a period's bands, a month and
    day type that no period or two periods cover, NaN or infinite prices, empty bands."""
    return [f"{_dotted(where)}: {message}" for where, message in tariff_problems(currency, periods)]


def _dotted(where: Where) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _period_problems(where: Where, period: TariffPeriod) -> list[tuple[Where, str]]:
    found: list[tuple[Where, str]] = []
    if not period.months:
        found.append(((*where, "months"), "expected at least one month, found none"))
    wrong = sorted(m for m in period.months if not 1 <= m <= 12)
    if wrong:
        found.append(((*where, "months"), f"expected months 1-12, found {wrong}"))
    if not period.day_types:
        found.append(((*where, "day_types"), "expected at least one day type, found none"))
    if not period.bands:
        found.append(((*where, "bands"), "expected bands covering the day, found none"))
        return found
    for b, band in enumerate(period.bands):
        found += _band_problems((*where, "bands", b), band)
    return found + _day_cover_problems(where, period.bands)


def _band_problems(where: Where, band: Band) -> list[tuple[Where, str]]:
    found: list[tuple[Where, str]] = []
    for name in ("import_per_kwh", "export_per_kwh"):
        value = getattr(band, name)
        if not math.isfinite(value):
            found.append(((*where, name), f"expected a finite price, found {value}"))
    if not band.pieces_s():
        found.append(
            (
                where,
                f"empty band: start and end are both {band.start:%H:%M} (00:00-00:00 is a "
                "whole day)",
            )
        )
    return found


def _day_cover_problems(where: Where, bands: Sequence[Band]) -> list[tuple[Where, str]]:
    """Gaps and overlaps in a day laid out by ``bands``."""
    found: list[tuple[Where, str]] = []
    pieces = sorted(
        (from_s, to_s, b) for b, band in enumerate(bands) for from_s, to_s in band.pieces_s()
    )
    reached_s, last_band = 0, 0
    for from_s, to_s, b in pieces:
        if from_s > reached_s:
            found.append(
                ((*where, "bands"), f"gap: no band covers {_clock(reached_s)}-{_clock(from_s)}")
            )
        elif from_s < reached_s:
            found.append(
                (
                    (*where, "bands", b),
                    f"overlap: {_clock(from_s)}-{_clock(min(to_s, reached_s))} is covered by "
                    f"bands[{last_band}] too",
                )
            )
        if to_s > reached_s:
            reached_s, last_band = to_s, b
    if pieces and reached_s < _DAY_S:
        found.append(((*where, "bands"), f"gap: no band covers {_clock(reached_s)}-24:00"))
    return found


def _coverage_problems(periods: Sequence[TariffPeriod]) -> list[tuple[Where, str]]:
    """Each (month, day type) must be covered by exactly one period; reported per day type."""
    found: list[tuple[Where, str]] = []
    for kind in DayType:
        uncovered: list[int] = []
        doubled: dict[tuple[int, ...], list[int]] = {}
        for month in range(1, 13):
            covering = tuple(
                p
                for p, period in enumerate(periods)
                if month in period.months and kind in period.day_types
            )
            if not covering:
                uncovered.append(month)
            elif len(covering) > 1:
                doubled.setdefault(covering, []).append(month)
        if uncovered and periods:
            found.append(
                (("periods",), f"no period covers {kind} days in months {_months(uncovered)}")
            )
        for covering, months in doubled.items():
            names = " and ".join(f"periods[{p}]" for p in covering)
            found.append(
                (
                    ("periods", covering[-1]),
                    f"{names} both cover {kind} days in months {_months(months)}; expected one",
                )
            )
    return found


def _months(months: Iterable[int]) -> str:
    return ", ".join(str(m) for m in months)


# --- prices per planner slot --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotPrices:
    """One value per planner slot. ``bonus_per_kwh`` is a peak event's bonus on the export price
    (time-weighted over the slot), for export up to ``bonus_power_w`` (W; inf: no cap; 0 where
    no event runs); ``event_ids`` names the event (or the pushed slot's event) of each slot."""

    import_per_kwh: tuple[float, ...]
    export_per_kwh: tuple[float, ...]
    bonus_per_kwh: tuple[float, ...]
    bonus_power_w: tuple[float, ...]
    event_ids: tuple[str | None, ...]


def slot_prices(  # noqa: PLR0917  # the planner's agreed signature
    tariff: Tariff,
    start: dt.datetime,
    n_slots: int,
    slot_s: float = 900.0,
    pushed: Sequence[PriceSlot] = (),
    events: Sequence[PeakEvent] = (),
) -> SlotPrices:
    """The price of each of ``n_slots`` slots of ``slot_s`` from ``start`` (aware; local times in
    its zone). Pushed slots (validated, non-overlapping) override the tariff where they cover it;
    where prices change inside a slot the slot gets their time-weighted mean. A peak event adds
    its bonus to the slots it overlaps, weighted by the overlap; where two events overlap one
    slot their bonuses add up, under the smaller power cap, named after the larger contribution.
    """
    _zone_of(start, "start")
    if n_slots < 0 or not slot_s > 0:
        raise ValueError(f"expected n_slots >= 0 and slot_s > 0, found {n_slots} and {slot_s}")
    t0 = start.timestamp()
    edges = [t0 + i * slot_s for i in range(n_slots + 1)]
    imports, exports, event_ids = _blend(tariff, start, edges, pushed)
    bonus = [0.0] * n_slots
    power_w = [0.0] * n_slots
    largest = [0.0] * n_slots
    has_event = [False] * n_slots
    for event in events:
        e0, e1 = event.start.timestamp(), event.end.timestamp()
        cap_w = math.inf if event.power_w is None else event.power_w
        for i in range(max(0, bisect.bisect_right(edges, e0) - 1), n_slots):
            if edges[i] >= e1:
                break
            overlap_s = min(e1, edges[i + 1]) - max(e0, edges[i])
            if overlap_s <= 0:
                continue
            share = event.bonus_per_kwh * overlap_s / slot_s
            power_w[i] = min(power_w[i], cap_w) if has_event[i] else cap_w
            bonus[i] += share
            if not has_event[i] or abs(share) > largest[i]:
                largest[i] = abs(share)
                event_ids[i] = event.event_id
            has_event[i] = True
    return SlotPrices(
        tuple(imports), tuple(exports), tuple(bonus), tuple(power_w), tuple(event_ids)
    )


def _blend(
    tariff: Tariff, start: dt.datetime, edges: list[float], pushed: Sequence[PriceSlot]
) -> tuple[list[float], list[float], list[str | None]]:
    """Time-weighted import and export price per slot (slot i is [edges[i], edges[i+1]) in
    seconds since the epoch), pushed slots over the tariff; and the pushed event of each slot."""
    n_slots = len(edges) - 1
    if n_slots == 0:
        return [], [], []
    slot_s = edges[1] - edges[0]
    # A real-time sum (a wall-clock one is wrong across DST); the tariff keeps start's zone.
    end = start.astimezone(dt.UTC) + dt.timedelta(seconds=edges[-1] - edges[0])
    tariff_slots = tariff.slots(start, end)
    covering = sorted((s for s in pushed if s.end > start and s.start < end), key=lambda s: s.start)
    cuts = set(edges)
    cuts.update(s.start.timestamp() for s in tariff_slots)
    for s in covering:
        cuts.update((s.start.timestamp(), s.end.timestamp()))
    points = sorted(c for c in cuts if edges[0] <= c <= edges[-1])
    tariff_starts = [s.start.timestamp() for s in tariff_slots]
    pushed_starts = [s.start.timestamp() for s in covering]
    import_sum = [0.0] * n_slots
    export_sum = [0.0] * n_slots
    votes: list[dict[str, float]] = [{} for _ in range(n_slots)]
    for a, b in itertools.pairwise(points):
        slot = min(bisect.bisect_right(edges, a) - 1, n_slots - 1)
        source = tariff_slots[bisect.bisect_right(tariff_starts, a) - 1]
        k = bisect.bisect_right(pushed_starts, a) - 1
        if k >= 0 and covering[k].end.timestamp() > a:
            source = covering[k]
            if source.event_id is not None:
                votes[slot][source.event_id] = votes[slot].get(source.event_id, 0.0) + (b - a)
        import_sum[slot] += source.import_per_kwh * (b - a)
        export_sum[slot] += source.export_per_kwh * (b - a)
    return (
        [total / slot_s for total in import_sum],
        [total / slot_s for total in export_sum],
        [max(v, key=v.__getitem__) if v else None for v in votes],
    )
