"""The simulated year's scenarios: one plug-in per night, the tariff, and the peak events.

Everything is drawn from one seeded ``random.Random``, so a seed names a year exactly:

* a plug-in every evening from ``FIRST_DAY``, in Asia/Shanghai: arrival uniform 17:00-21:00,
  departure uniform 06:30-08:30 the next morning, arrival SoC uniform 25-75 %. Times fall on a
  ``GRID_MIN`` grid from midnight, like the tariff's bands and the events' quarter hours, so a
  simulation stepping a divisor of it sees every price change at a step;
* about ``EVENTS_PER_YEAR`` peak events on random evenings: start 17:00-20:00 on a quarter
  hour, 1-2 h long, a bonus of CNY 2.15-3.15 per kWh exported on top of the peak export price
  of 0.85 (3-4 in all; Shenzhen's May 2024 event paid 4, config/example-cn.yaml), half of
  them only up to a requested power of 3.5 kW. Each is announced 1-4 h before it starts (the
  ``optimize`` strategy sees it from then on; the perfect-foresight optimum sees it at arrival).
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from dataclasses import dataclass

from controller.economics.tariff import PriceSlot

SITE_ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
FIRST_DAY = dt.date(2026, 1, 1)
EVENTS_PER_YEAR = 60
DAYS_PER_YEAR = 365

GRID_MIN = 3
ARRIVAL_EARLIEST = dt.time(17, 0)
ARRIVAL_SPAN_MIN = 4 * 60  # 17:00-21:00
DEPARTURE_EARLIEST = dt.time(6, 30)
DEPARTURE_SPAN_MIN = 2 * 60  # 06:30-08:30
ARRIVAL_SOC_RANGE_PCT = (25.0, 75.0)
EVENT_EARLIEST = dt.time(17, 0)
EVENT_START_QUARTERS = 12  # starts 17:00, 17:15, ... 20:00
EVENT_QUARTERS_RANGE = (4, 8)  # 1-2 h
EVENT_BONUS_RANGE_PER_KWH = (2.15, 3.15)
EVENT_POWER_W = 3_500.0  # the power window of the events that have one: half the charger
ANNOUNCE_LEAD_RANGE_MIN = (60, 240)


@dataclass(frozen=True, slots=True)
class Event:
    """A peak event and when it is announced. Times are aware, in the site's zone."""

    event_id: str
    start: dt.datetime
    end: dt.datetime
    bonus_per_kwh: float
    power_w: float | None  # the bonus applies to export up to this power; None: to all
    announced_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Night:
    """One plug-in: arrival to departure, aware datetimes in the site's zone."""

    index: int
    arrival: dt.datetime
    departure: dt.datetime
    arrival_soc_pct: float
    events: tuple[Event, ...]  # the peak events of this evening (some end before arrival)

    @property
    def hours(self) -> float:
        return (self.departure - self.arrival).total_seconds() / 3600.0


def _local(day: dt.date, minutes_after: dt.time, minutes: int) -> dt.datetime:
    base = dt.datetime.combine(day, minutes_after, tzinfo=SITE_ZONE)
    return base + dt.timedelta(minutes=minutes)


def make_events(rng: random.Random, days: int) -> list[Event]:
    """``EVENTS_PER_YEAR`` events on distinct evenings of a 365-day year; those of the first
    ``days`` days are returned (a shorter run keeps the same events as the year)."""
    chosen = sorted(rng.sample(range(DAYS_PER_YEAR), EVENTS_PER_YEAR))
    events: list[Event] = []
    for day_index in chosen:
        start_quarter = rng.randrange(EVENT_START_QUARTERS + 1)
        quarters = rng.randint(*EVENT_QUARTERS_RANGE)
        bonus = round(rng.uniform(*EVENT_BONUS_RANGE_PER_KWH), 2)
        power_w = EVENT_POWER_W if rng.random() < 0.5 else None
        lead_min = rng.randint(*ANNOUNCE_LEAD_RANGE_MIN)
        if day_index >= days:
            continue
        day = FIRST_DAY + dt.timedelta(days=day_index)
        start = _local(day, EVENT_EARLIEST, 15 * start_quarter)
        events.append(
            Event(
                event_id=f"event-{day.isoformat()}",
                start=start,
                end=start + dt.timedelta(minutes=15 * quarters),
                bonus_per_kwh=bonus,
                power_w=power_w,
                announced_at=start - dt.timedelta(minutes=lead_min),
            )
        )
    return events


def make_nights(nights: int, seed: int) -> list[Night]:
    """The year's plug-ins (the first ``nights`` of them), reproducible from ``seed``."""
    if not 1 <= nights <= DAYS_PER_YEAR:
        raise ValueError(f"nights: expected 1..{DAYS_PER_YEAR}, found {nights}")
    rng = random.Random(seed)  # noqa: S311  a simulation, not secrets
    events = make_events(random.Random(rng.random()), nights)  # noqa: S311
    out: list[Night] = []
    for index in range(nights):
        day = FIRST_DAY + dt.timedelta(days=index)
        arrival_min = GRID_MIN * rng.randrange(ARRIVAL_SPAN_MIN // GRID_MIN + 1)
        departure_min = GRID_MIN * rng.randrange(DEPARTURE_SPAN_MIN // GRID_MIN + 1)
        arrival = _local(day, ARRIVAL_EARLIEST, arrival_min)
        departure = _local(day + dt.timedelta(days=1), DEPARTURE_EARLIEST, departure_min)
        soc_pct = round(rng.uniform(*ARRIVAL_SOC_RANGE_PCT), 1)
        evening = tuple(e for e in events if e.start.date() == day)
        out.append(Night(index, arrival, departure, soc_pct, evening))
    return out


# --- the tariff -----------------------------------------------------------------------------------

# config/example-cn.yaml's tariff (sources named there), in CNY per kWh: (start, end, import,
# export, name), local time, every day of the year. Import: Shanghai's residential peak/valley
# price (first tier); export: CNY 0.85 in the peak (State Grid Jiangsu's residential V2G pilot),
# nothing in the valley. tests/bench/test_year.py checks these against the example config.
TARIFF_BANDS: tuple[tuple[dt.time, dt.time, float, float, str], ...] = (
    (dt.time(6, 0), dt.time(22, 0), 0.617, 0.85, "peak"),
    (dt.time(22, 0), dt.time(0, 0), 0.307, 0.0, "valley"),
    (dt.time(0, 0), dt.time(6, 0), 0.307, 0.0, "valley"),
)
PEAK_BAND = "peak"


def band_slots(start: dt.datetime, end: dt.datetime) -> list[tuple[PriceSlot, str]]:
    """The tariff's bands over [start, end), each with its name (no DST in Asia/Shanghai)."""
    out: list[tuple[PriceSlot, str]] = []
    day = start.astimezone(SITE_ZONE).date() - dt.timedelta(days=1)
    while dt.datetime.combine(day, dt.time(0, 0), tzinfo=SITE_ZONE) < end:
        for band_start, band_end, import_per_kwh, export_per_kwh, name in TARIFF_BANDS:
            edge0 = dt.datetime.combine(day, band_start, tzinfo=SITE_ZONE)
            edge1 = dt.datetime.combine(day, band_end, tzinfo=SITE_ZONE)
            if band_end == dt.time(0, 0):
                edge1 += dt.timedelta(days=1)
            if edge1 <= start or edge0 >= end:
                continue
            slot = PriceSlot(max(edge0, start), min(edge1, end), import_per_kwh, export_per_kwh)
            out.append((slot, name))
        day += dt.timedelta(days=1)
    return sorted(out, key=lambda pair: pair[0].start)
