"""Tariffs: day types, seasons, holidays, midnight-crossing bands, DST, per-slot prices, and the
checks that refuse a bad tariff, a bad pushed schedule or a bad peak event with a reason."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import zoneinfo

import pytest

from controller.economics.tariff import (
    ALL_DAY_TYPES,
    ALL_MONTHS,
    Band,
    DayType,
    PeakEvent,
    PriceSlot,
    Tariff,
    TariffPeriod,
    check_tariff,
    slot_prices,
)

AMS = zoneinfo.ZoneInfo("Europe/Amsterdam")
SHA = zoneinfo.ZoneInfo("Asia/Shanghai")
UTC = dt.UTC
WEEKDAYS = frozenset({DayType.WEEKDAY})
WEEKEND = frozenset({DayType.WEEKEND, DayType.HOLIDAY})


def t(text: str) -> dt.time:
    return dt.time.fromisoformat(text)


def band(start: str, end: str, import_per_kwh: float, export_per_kwh: float = 0.0) -> Band:
    return Band(t(start), t(end), import_per_kwh, export_per_kwh)


def night_day(night: float = 0.20, day: float = 0.30) -> tuple[Band, ...]:
    return (band("07:00", "23:00", day, day / 2), band("23:00", "07:00", night, night / 2))


def local(  # noqa: PLR0917  # a datetime's own fields
    zone: zoneinfo.ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone)


# A two-season, weekday/weekend tariff with a holiday: summer (Apr-Sep) weekdays have a
# midday solar valley; weekends and holidays are one flat price all year.
SUMMER = frozenset(range(4, 10))
WINTER = ALL_MONTHS - SUMMER
SEASONAL = Tariff(
    "EUR",
    (
        TariffPeriod(
            SUMMER,
            WEEKDAYS,
            (
                band("00:00", "11:00", 0.25),
                band("11:00", "15:00", 0.10),
                band("15:00", "00:00", 0.35),
            ),
        ),
        TariffPeriod(WINTER, WEEKDAYS, night_day()),
        TariffPeriod(ALL_MONTHS, WEEKEND, (band("00:00", "00:00", 0.18),)),
    ),
    holidays=frozenset({dt.date(2026, 12, 25)}),
)


# --- day types, seasons, holidays ---------------------------------------------------------------


def test_weekday_and_weekend_have_their_own_bands() -> None:
    """A Monday noon in summer is in the solar valley; the Saturday noon is the weekend price."""
    assert SEASONAL.price_at(local(AMS, 2026, 6, 1, 12)).import_per_kwh == 0.10
    assert SEASONAL.price_at(local(AMS, 2026, 6, 6, 12)).import_per_kwh == 0.18


def test_season_chooses_the_period() -> None:
    """The same weekday hour costs the winter day price in January, the summer valley in June."""
    assert SEASONAL.price_at(local(AMS, 2026, 1, 5, 12)).import_per_kwh == 0.30
    assert SEASONAL.price_at(local(AMS, 2026, 6, 1, 12)).import_per_kwh == 0.10


def test_listed_holiday_is_priced_as_holiday() -> None:
    """Christmas 2026 is a Friday, but listed as a holiday it takes the holiday price."""
    christmas = local(AMS, 2026, 12, 25, 12)
    assert SEASONAL.day_type(christmas.date()) is DayType.HOLIDAY
    assert SEASONAL.price_at(christmas).import_per_kwh == 0.18
    assert SEASONAL.price_at(local(AMS, 2026, 12, 24, 12)).import_per_kwh == 0.30


def test_price_slot_carries_the_true_band_edges() -> None:
    """price_at gives the band's own start and end, not just the price."""
    slot = SEASONAL.price_at(local(AMS, 2026, 6, 1, 12, 34))
    assert slot.start == local(AMS, 2026, 6, 1, 11)
    assert slot.end == local(AMS, 2026, 6, 1, 15)


def test_flat_tariff_prices_every_hour_the_same() -> None:
    """Tariff.flat: one price each way, at any hour of any day."""
    flat = Tariff.flat("CNY", 0.6, 0.4)
    for hour in (0, 7, 13, 23):
        slot = flat.price_at(local(SHA, 2026, 2, 14, hour))
        assert (slot.import_per_kwh, slot.export_per_kwh) == (0.6, 0.4)


def test_naive_datetime_is_refused() -> None:
    """A time without a zone cannot be placed in a local tariff."""
    with pytest.raises(ValueError, match="aware datetime"):
        SEASONAL.price_at(dt.datetime(2026, 6, 1, 12))


# --- midnight-crossing bands --------------------------------------------------------------------


def test_band_crossing_midnight_covers_both_ends_of_the_day() -> None:
    """23:00-07:00 is the night price at 23:30 and at 03:00."""
    tariff = Tariff("EUR", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, night_day()),))
    assert tariff.price_at(local(AMS, 2026, 1, 5, 23, 30)).import_per_kwh == 0.20
    assert tariff.price_at(local(AMS, 2026, 1, 6, 3)).import_per_kwh == 0.20
    assert tariff.price_at(local(AMS, 2026, 1, 6, 7)).import_per_kwh == 0.30


def test_night_band_is_one_slot_across_midnight() -> None:
    """The night band's slot runs from 23:00 to 07:00 the next morning, in one piece."""
    tariff = Tariff("EUR", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, night_day()),))
    slot = tariff.price_at(local(AMS, 2026, 1, 6, 3))
    assert slot.start == local(AMS, 2026, 1, 5, 23)
    assert slot.end == local(AMS, 2026, 1, 6, 7)


def test_hours_after_midnight_take_the_prices_of_their_own_day() -> None:
    """Friday's night band runs into Saturday only as far as Saturday's own bands say."""
    tariff = Tariff(
        "EUR",
        (
            TariffPeriod(ALL_MONTHS, WEEKDAYS, night_day()),
            TariffPeriod(ALL_MONTHS, WEEKEND, (band("00:00", "00:00", 0.15),)),
        ),
    )
    friday_night = tariff.price_at(local(AMS, 2026, 1, 9, 23, 30))
    assert friday_night.import_per_kwh == 0.20
    assert friday_night.end == local(AMS, 2026, 1, 10, 0)
    assert tariff.price_at(local(AMS, 2026, 1, 10, 3)).import_per_kwh == 0.15


def test_slots_are_contiguous_and_cut_at_band_edges() -> None:
    """slots() covers the interval without a gap, clipped to it, edges at band edges."""
    start, end = local(AMS, 2026, 1, 5, 12), local(AMS, 2026, 1, 7, 12)
    slots = SEASONAL.slots(start, end)
    assert slots[0].start == start
    assert slots[-1].end == end
    for before, after in itertools.pairwise(slots):
        assert before.end == after.start
    assert [s.start.astimezone(AMS).hour for s in slots[1:]] == [23, 7, 23, 7]


# --- DST ----------------------------------------------------------------------------------------


def hourly_tariff() -> Tariff:
    """A tariff with an edge every hour, priced by the hour of the day."""
    bands = tuple(
        Band(dt.time(h), dt.time((h + 1) % 24), float(h), 0.0, f"h{h}") for h in range(24)
    )
    return Tariff("EUR", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, bands),))


def test_spring_forward_day_has_23_hours_of_slots() -> None:
    """Last Sunday of March in Amsterdam: 92 quarter-hours from midnight to midnight, the 02:00
    band skipped, every other hour at its own price."""
    tariff = hourly_tariff()
    start = local(AMS, 2026, 3, 29, 0)
    day_s = local(AMS, 2026, 3, 30, 0).timestamp() - start.timestamp()
    assert day_s == 23 * 3600
    prices = slot_prices(tariff, start, int(day_s // 900))
    hours = [prices.import_per_kwh[i] for i in range(0, 92, 4)]
    assert hours == [0.0, 1.0, *[float(h) for h in range(3, 24)]]
    # 03:00 local is 01:00 UTC: the band starts exactly at the jump.
    assert tariff.price_at(local(AMS, 2026, 3, 29, 3)).start == dt.datetime(
        2026, 3, 29, 1, tzinfo=UTC
    )


def test_fall_back_day_has_25_hours_of_slots() -> None:
    """Last Sunday of October: 100 quarter-hours; the 02:00 band spans both 02:00 hours."""
    tariff = hourly_tariff()
    start = local(AMS, 2026, 10, 25, 0)
    day_s = local(AMS, 2026, 10, 26, 0).timestamp() - start.timestamp()
    assert day_s == 25 * 3600
    prices = slot_prices(tariff, start, int(day_s // 900))
    hours = [prices.import_per_kwh[i] for i in range(0, 100, 4)]
    assert hours == [0.0, 1.0, 2.0, 2.0, *[float(h) for h in range(3, 24)]]
    second_0230 = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC).astimezone(AMS)
    slot = tariff.price_at(second_0230)
    assert slot.end.timestamp() - slot.start.timestamp() == 2 * 3600


def test_night_band_across_a_dst_change_lasts_its_real_time() -> None:
    """23:00-07:00 over the spring-forward night lasts 7 real hours, over fall-back 9."""
    tariff = Tariff("EUR", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, night_day()),))
    spring = tariff.price_at(local(AMS, 2026, 3, 29, 4))
    autumn = tariff.price_at(local(AMS, 2026, 10, 25, 4))
    assert spring.end.timestamp() - spring.start.timestamp() == 7 * 3600
    assert autumn.end.timestamp() - autumn.start.timestamp() == 9 * 3600


def test_edge_inside_the_skipped_hour_falls_on_the_jump() -> None:
    """A band edge at 02:30, a time that does not exist on the spring day, is the jump itself."""
    tariff = Tariff(
        "EUR",
        (
            TariffPeriod(
                ALL_MONTHS,
                ALL_DAY_TYPES,
                (band("02:30", "12:00", 1.0), band("12:00", "02:30", 2.0)),
            ),
        ),
    )
    slot = tariff.price_at(local(AMS, 2026, 3, 29, 5))
    assert slot.start == dt.datetime(2026, 3, 29, 1, tzinfo=UTC)


# --- per-slot prices ----------------------------------------------------------------------------


def test_slot_with_a_band_edge_inside_gets_the_time_weighted_mean() -> None:
    """A 15-min slot from 22:50: 10 min at the day price, 5 min at the night price."""
    tariff = Tariff("EUR", (TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, night_day()),))
    prices = slot_prices(tariff, local(AMS, 2026, 1, 5, 22, 50), 2)
    assert prices.import_per_kwh[0] == pytest.approx((10 * 0.30 + 5 * 0.20) / 15)
    assert prices.export_per_kwh[0] == pytest.approx((10 * 0.15 + 5 * 0.10) / 15)
    assert prices.import_per_kwh[1] == pytest.approx(0.20)


def test_pushed_slots_override_the_tariff_where_they_cover() -> None:
    """A pushed price from 12:05 to 12:35 replaces the tariff there, and only there."""
    tariff = Tariff.flat("EUR", 0.30, 0.10)
    start = local(AMS, 2026, 1, 5, 12)
    pushed = [PriceSlot(local(AMS, 2026, 1, 5, 12, 5), local(AMS, 2026, 1, 5, 12, 35), 0.90, 0.80)]
    prices = slot_prices(tariff, start, 4, pushed=pushed)
    assert prices.import_per_kwh[0] == pytest.approx((5 * 0.30 + 10 * 0.90) / 15)
    assert prices.import_per_kwh[1] == pytest.approx(0.90)
    assert prices.export_per_kwh[2] == pytest.approx((5 * 0.80 + 10 * 0.10) / 15)
    assert prices.import_per_kwh[3] == pytest.approx(0.30)


def test_pushed_slot_names_its_event() -> None:
    """A pushed slot set by a peak event carries the event's id into the slots it covers."""
    start = local(SHA, 2026, 7, 15, 19)
    pushed = [PriceSlot(start, start + dt.timedelta(hours=1), 0.6, 4.0, event_id="dr-7")]
    prices = slot_prices(Tariff.flat("CNY", 0.6, 0.4), start, 6, pushed=pushed)
    assert prices.event_ids == ("dr-7",) * 4 + (None, None)


def test_peak_event_bonus_weighted_by_overlap_with_its_power_cap() -> None:
    """An event from 19:05 to 19:30 gives 2/3 of its bonus to the first slot, all of it to the
    second, none after; under its 3 kW cap; with its id."""
    start = local(SHA, 2026, 7, 15, 19)
    event = PeakEvent(
        "sz-2024-07",
        local(SHA, 2026, 7, 15, 19, 5),
        local(SHA, 2026, 7, 15, 19, 30),
        bonus_per_kwh=3.0,
        power_w=3000.0,
    )
    prices = slot_prices(Tariff.flat("CNY", 0.6, 0.4), start, 3, events=[event])
    assert prices.bonus_per_kwh == pytest.approx((2.0, 3.0, 0.0))
    assert prices.bonus_power_w == (3000.0, 3000.0, 0.0)
    assert prices.event_ids == ("sz-2024-07", "sz-2024-07", None)
    assert prices.export_per_kwh == pytest.approx((0.4, 0.4, 0.4))


def test_peak_event_without_power_cap_applies_to_all_export() -> None:
    """An event without power_w has an infinite cap."""
    start = local(SHA, 2026, 7, 15, 19)
    event = PeakEvent("e", start, start + dt.timedelta(minutes=15), bonus_per_kwh=1.0)
    prices = slot_prices(Tariff.flat("CNY", 0.6, 0.4), start, 1, events=[event])
    assert math.isinf(prices.bonus_power_w[0])


def test_overlapping_events_add_bonuses_under_the_smaller_cap() -> None:
    """Two events on one slot: bonuses add up; the cap is the smaller; the larger names it."""
    start = local(SHA, 2026, 7, 15, 19)
    end = start + dt.timedelta(minutes=15)
    events = [PeakEvent("a", start, end, 1.0, 5000.0), PeakEvent("b", start, end, 2.0, 2000.0)]
    prices = slot_prices(Tariff.flat("CNY", 0.6, 0.4), start, 1, events=events)
    assert prices.bonus_per_kwh[0] == pytest.approx(3.0)
    assert prices.bonus_power_w[0] == 2000.0
    assert prices.event_ids[0] == "b"


def test_slot_prices_of_zero_slots_are_empty() -> None:
    """No slots asked, none given."""
    prices = slot_prices(Tariff.flat("EUR", 0.3, 0.1), local(AMS, 2026, 1, 5, 0), 0)
    assert prices.import_per_kwh == ()


# --- checking a tariff --------------------------------------------------------------------------


def test_valid_tariff_has_no_problems() -> None:
    """The seasonal example passes its own check."""
    assert check_tariff(SEASONAL.currency, SEASONAL.periods) == []


def test_gap_between_bands_is_named_with_its_hours() -> None:
    """Bands that leave 12:00-13:00 uncovered are refused with those hours."""
    period = TariffPeriod(
        ALL_MONTHS, ALL_DAY_TYPES, (band("00:00", "12:00", 1), band("13:00", "00:00", 1))
    )
    assert check_tariff("EUR", [period]) == ["periods[0].bands: gap: no band covers 12:00-13:00"]


def test_gap_at_the_end_of_the_day_is_named() -> None:
    """Bands that stop at 22:00 leave 22:00-24:00 uncovered."""
    period = TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, (band("00:00", "22:00", 1),))
    assert check_tariff("EUR", [period]) == ["periods[0].bands: gap: no band covers 22:00-24:00"]


def test_overlapping_bands_are_named_with_the_hours() -> None:
    """A night band 22:00-07:00 over a day band 07:00-23:00 overlaps 22:00-23:00."""
    period = TariffPeriod(
        ALL_MONTHS, ALL_DAY_TYPES, (band("07:00", "23:00", 1), band("22:00", "07:00", 1))
    )
    assert check_tariff("EUR", [period]) == [
        "periods[0].bands[1]: overlap: 22:00-23:00 is covered by bands[0] too"
    ]


def test_nan_and_infinite_prices_are_refused() -> None:
    """A NaN import price and an infinite export price are each named."""
    period = TariffPeriod(
        ALL_MONTHS, ALL_DAY_TYPES, (Band(t("00:00"), t("00:00"), math.nan, math.inf),)
    )
    assert check_tariff("EUR", [period]) == [
        "periods[0].bands[0].import_per_kwh: expected a finite price, found nan",
        "periods[0].bands[0].export_per_kwh: expected a finite price, found inf",
    ]


def test_empty_band_is_refused() -> None:
    """A band from 08:00 to 08:00 is empty (only 00:00-00:00 means a whole day)."""
    period = TariffPeriod(
        ALL_MONTHS, ALL_DAY_TYPES, (band("00:00", "00:00", 1), band("08:00", "08:00", 1))
    )
    problems = check_tariff("EUR", [period])
    assert problems == [
        "periods[0].bands[1]: empty band: start and end are both 08:00 (00:00-00:00 is a whole day)"
    ]


def test_uncovered_month_and_day_type_is_refused() -> None:
    """Weekends in summer covered by no period are named by day type and months."""
    periods = [
        TariffPeriod(ALL_MONTHS, WEEKDAYS, (band("00:00", "00:00", 1),)),
        TariffPeriod(WINTER, WEEKEND, (band("00:00", "00:00", 1),)),
    ]
    assert check_tariff("EUR", periods) == [
        "periods: no period covers weekend days in months 4, 5, 6, 7, 8, 9",
        "periods: no period covers holiday days in months 4, 5, 6, 7, 8, 9",
    ]


def test_doubly_covered_month_and_day_type_is_refused() -> None:
    """Two periods that both cover weekdays in January are named together."""
    periods = [
        TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, (band("00:00", "00:00", 1),)),
        TariffPeriod(frozenset({1}), WEEKDAYS, (band("00:00", "00:00", 2),)),
    ]
    assert check_tariff("EUR", periods) == [
        "periods[1]: periods[0] and periods[1] both cover weekday days in months 1; expected one"
    ]


def test_bad_currency_and_no_periods_are_refused() -> None:
    """A currency that is not an ISO 4217 code, and an empty tariff, are named."""
    assert check_tariff("euro", []) == [
        "currency: expected an ISO 4217 code such as 'EUR', found 'euro'",
        "periods: expected at least one period, found none",
    ]


def test_invalid_tariff_cannot_be_built() -> None:
    """Tariff() refuses what check_tariff finds, with the reason."""
    period = TariffPeriod(ALL_MONTHS, ALL_DAY_TYPES, (band("00:00", "12:00", 1),))
    with pytest.raises(ValueError, match="gap: no band covers 12:00-24:00"):
        Tariff("EUR", (period,))
