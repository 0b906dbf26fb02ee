"""The tariff and economics sections: examples that load, the flat ledger tariff still honoured,
and every tariff mistake reported at its line and key."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import load_config, parse_config
from controller.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"
EXAMPLE_CN = ROOT / "config" / "example-cn.yaml"
AMS = zoneinfo.ZoneInfo("Europe/Amsterdam")
SHA = zoneinfo.ZoneInfo("Asia/Shanghai")

BASE = """\
site:
  site_id: home-1
  charger_id: c1
  timezone: Europe/Amsterdam
vehicle:
  protocol: chademo
inverter:
  transport: tcp
  tcp:
    host: 192.0.2.10
aggregator:
  enabled: false
"""

TARIFF = """\
tariff:
  currency: EUR
  periods:
    - months: [4, 5, 6, 7, 8, 9]
      day_types: [weekday]
      bands:
        - {start: "07:00", end: "23:00", import_per_kwh: 0.30, export_per_kwh: 0.20, name: day}
        - {start: "23:00", end: "07:00", import_per_kwh: 0.20, export_per_kwh: 0.10, name: night}
    - months: [1, 2, 3, 10, 11, 12]
      day_types: [weekday]
      bands:
        - {start: "00:00", end: "00:00", import_per_kwh: 0.28, export_per_kwh: 0.12}
    - day_types: [weekend, holiday]
      bands:
        - {start: "00:00", end: "00:00", import_per_kwh: 0.18, export_per_kwh: 0.08}
  holidays: [2026-05-14]
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first line containing ``fragment``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


# --- the examples -------------------------------------------------------------------------------


def test_example_has_the_dutch_double_tariff_and_optimizes() -> None:
    """config/example.yaml: normal rate on working days, off-peak at night, weekends and holidays;
    the fallback optimizes."""
    config = load_config(EXAMPLE)
    tariff = config.economic_tariff()
    assert config.fallback.policy == "optimize"
    assert tariff.currency == "EUR"
    assert tariff.price_at(dt.datetime(2026, 11, 23, 12, tzinfo=AMS)).import_per_kwh == 0.24337
    assert tariff.price_at(dt.datetime(2026, 11, 23, 23, 30, tzinfo=AMS)).import_per_kwh == 0.22295
    assert tariff.price_at(dt.datetime(2026, 11, 21, 12, tzinfo=AMS)).import_per_kwh == 0.22295
    # King's Day 2026 is a Monday, priced off-peak as a listed holiday.
    assert tariff.price_at(dt.datetime(2026, 4, 27, 12, tzinfo=AMS)).import_per_kwh == 0.22295
    assert config.economics.battery_chemistry == "nmc"


def test_chinese_example_has_peak_valley_prices_and_a_peak_event() -> None:
    """config/example-cn.yaml: a V2H (CHAdeMO) car, Shanghai time, 峰谷 prices in CNY, a 4 yuan/kWh
    event."""
    config = load_config(EXAMPLE_CN)
    assert config.vehicle.protocol == "chademo"  # both directions in one session
    assert config.site.timezone == "Asia/Shanghai"
    assert config.fallback.policy == "optimize"
    assert config.economics.battery_chemistry == "lfp"
    tariff = config.economic_tariff()
    assert tariff.currency == "CNY"
    peak = tariff.price_at(dt.datetime(2026, 7, 15, 19, tzinfo=SHA))
    valley = tariff.price_at(dt.datetime(2026, 7, 15, 23, tzinfo=SHA))
    assert (peak.import_per_kwh, peak.export_per_kwh) == (0.617, 0.85)
    assert (valley.import_per_kwh, valley.export_per_kwh) == (0.307, 0.0)
    (event,) = config.peak_events()
    assert event.bonus_per_kwh + peak.export_per_kwh == pytest.approx(4.0)
    assert event.power_w == 7000.0
    assert event.start == dt.datetime(2026, 7, 15, 19, tzinfo=SHA)


@pytest.mark.parametrize("example", [EXAMPLE, EXAMPLE_CN])
def test_check_config_accepts_both_examples(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`v2g-controller check-config` says OK for each shipped example."""
    assert main(["check-config", str(example)]) == 0
    assert "OK" in capsys.readouterr().out


# --- the flat ledger tariff ---------------------------------------------------------------------


def test_flat_ledger_tariff_alone_becomes_a_flat_tariff() -> None:
    """An older config with only ledger.tariff prices every hour at its two prices."""
    config = parse_config(
        BASE + "ledger:\n  tariff: {currency: GBP, import_price_per_kwh: 0.24, "
        "export_price_per_kwh: 0.15}\n"
    )
    tariff = config.economic_tariff()
    assert tariff.currency == "GBP"
    for hour in (3, 12, 19):
        slot = tariff.price_at(dt.datetime(2026, 1, 10, hour, tzinfo=AMS))
        assert (slot.import_per_kwh, slot.export_per_kwh) == (0.24, 0.15)
    assert config.peak_events() == ()


def test_no_tariff_at_all_is_the_default_flat_one() -> None:
    """Without any tariff the documented flat defaults apply."""
    slot = parse_config(BASE).economic_tariff().price_at(dt.datetime(2026, 1, 10, tzinfo=AMS))
    assert (slot.import_per_kwh, slot.export_per_kwh) == (0.25, 0.30)


def test_both_tariffs_are_refused_naming_both_keys() -> None:
    """The top-level tariff and ledger.tariff together are refused at ledger.tariff's line."""
    text = BASE + TARIFF + "ledger:\n  tariff: {currency: EUR}\n"
    assert problems(text) == [
        (
            line_of(text, "  tariff: {currency: EUR}"),
            "ledger.tariff",
            "found both the top-level 'tariff:' and 'ledger.tariff:'; expected one: keep "
            "'tariff:' and delete 'ledger.tariff:' (the older flat tariff)",
        )
    ]


def test_seasonal_tariff_loads_into_the_economics_tariff() -> None:
    """Seasons, day types and holidays reach the economics tariff."""
    tariff = parse_config(BASE + TARIFF).economic_tariff()
    assert tariff.price_at(dt.datetime(2026, 6, 1, 12, tzinfo=AMS)).import_per_kwh == 0.30
    assert tariff.price_at(dt.datetime(2026, 6, 1, 2, tzinfo=AMS)).import_per_kwh == 0.20
    assert tariff.price_at(dt.datetime(2026, 1, 5, 12, tzinfo=AMS)).import_per_kwh == 0.28
    assert tariff.price_at(dt.datetime(2026, 5, 14, 12, tzinfo=AMS)).import_per_kwh == 0.18
    assert tariff.holidays == frozenset({dt.date(2026, 5, 14)})


# --- tariff mistakes, located -------------------------------------------------------------------


def test_gap_between_bands_is_reported_at_the_bands_line() -> None:
    """A night band ending at 06:00 leaves 06:00-07:00 uncovered: reported at 'bands:'."""
    text = BASE + TARIFF.replace('{start: "23:00", end: "07:00"', '{start: "23:00", end: "06:00"')
    assert problems(text) == [
        (
            line_of(text, "      bands:"),
            "tariff.periods[0].bands",
            "gap: no band covers 06:00-07:00",
        )
    ]


def test_overlap_is_reported_at_the_overlapping_band() -> None:
    """A night band from 22:00 overlaps the day band: reported at the night band's line."""
    text = BASE + TARIFF.replace('{start: "23:00", end: "07:00"', '{start: "22:00", end: "07:00"')
    assert problems(text) == [
        (
            line_of(text, "name: night"),
            "tariff.periods[0].bands[1]",
            "overlap: 22:00-23:00 is covered by bands[0] too",
        )
    ]


def test_uncovered_and_doubly_covered_days_are_reported() -> None:
    """Summer weekends without a period, and a winter weekday period twice, are each named."""
    text = BASE + TARIFF.replace("day_types: [weekend, holiday]", "day_types: [holiday]").replace(
        "- months: [1, 2, 3, 10, 11, 12]", "- months: [1, 2, 3, 9, 10, 11, 12]"
    )
    assert problems(text) == [
        (
            line_of(text, "- months: [1, 2, 3, 9"),
            "tariff.periods[1]",
            "periods[0] and periods[1] both cover weekday days in months 9; expected one",
        ),
        (
            line_of(text, "  periods:"),
            "tariff.periods",
            "no period covers weekend days in months 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
        ),
    ]


def test_nan_price_is_reported_at_its_key() -> None:
    """import_per_kwh: .nan is refused at its line."""
    text = BASE + TARIFF.replace("import_per_kwh: 0.28", "import_per_kwh: .nan")
    assert problems(text) == [
        (
            line_of(text, ".nan"),
            "tariff.periods[1].bands[0].import_per_kwh",
            "expected a finite price, found nan",
        )
    ]


def test_empty_band_is_reported() -> None:
    """A band from 12:00 to 12:00 is empty."""
    text = BASE + TARIFF.replace(
        '        - {start: "00:00", end: "00:00", import_per_kwh: 0.28, export_per_kwh: 0.12}',
        '        - {start: "00:00", end: "00:00", import_per_kwh: 0.28, export_per_kwh: 0.12}\n'
        '        - {start: "12:00", end: "12:00", import_per_kwh: 0.28, export_per_kwh: 0.12}',
    )
    assert (
        line_of(text, '"12:00", end: "12:00"'),
        "tariff.periods[1].bands[1]",
        "empty band: start and end are both 12:00 (00:00-00:00 is a whole day)",
    ) in problems(text)


def test_schema_mistakes_are_each_located() -> None:
    """Month 13, an hour 25, a lowercase currency and an impossible holiday, all at once."""
    text = BASE + TARIFF.replace("currency: EUR", "currency: eur").replace(
        "- months: [4, 5", "- months: [13, 5"
    ).replace('{start: "07:00", end: "23:00"', '{start: "25:00", end: "23:00"').replace(
        "holidays: [2026-05-14]", 'holidays: ["2026-02-30"]'
    )
    found = {(line, path) for line, path, _ in problems(text)}
    assert found == {
        (line_of(text, "currency: eur"), "tariff.currency"),
        (line_of(text, "months: [13"), "tariff.periods[0].months"),
        (line_of(text, '"25:00"'), "tariff.periods[0].bands[0].start"),
        (line_of(text, "holidays:"), "tariff.holidays[0]"),
    }


def test_unknown_key_in_a_period_suggests_the_right_one() -> None:
    """A misspelt key inside a list item gets a 'did you mean'."""
    text = BASE + TARIFF.replace("      day_types: [weekday]\n", "      day_type: [weekday]\n", 1)
    assert (
        line_of(text, "day_type: [weekday]"),
        "tariff.periods[0].day_type",
        "unknown key; did you mean 'day_types'?",
    ) in problems(text)


EVENT = """\
  events:
    - id: dr-1
      start: "2026-07-15T19:00:00+02:00"
      end: "2026-07-15T20:00:00+02:00"
      bonus_per_kwh: 0.5
      power_w: 5000
"""


def test_configured_event_becomes_a_peak_event() -> None:
    """A configured event keeps its times, bonus and power cap."""
    (event,) = parse_config(BASE + TARIFF + EVENT).peak_events()
    assert event.event_id == "dr-1"
    assert event.end - event.start == dt.timedelta(hours=1)
    assert (event.bonus_per_kwh, event.power_w) == (0.5, 5000.0)


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            '+02:00"\n      end',
            '"\n      end',
            "start",
            "expected a date and time with its UTC offset",
        ),
        ("T20:00:00", "T18:00:00", "", "expected end after start"),
        ("power_w: 5000", "power_w: 0", "power_w", "greater than 0"),
        ("bonus_per_kwh: 0.5", "bonus_per_kwh: .inf", "bonus_per_kwh", "finite number"),
    ],
)
def test_bad_event_is_refused_at_its_line(old: str, new: str, key: str, expected: str) -> None:
    """A naive start, an end before the start, a zero power cap, an infinite bonus."""
    text = BASE + TARIFF + EVENT.replace(old, new)
    ((line, path, message),) = problems(text)
    assert path == ("tariff.events[0]." + key).rstrip(".")
    assert expected in message
    assert line == (line_of(text, f"      {key}:") if key else line_of(text, "- id: dr-1"))


# --- economics and the fallback policy ----------------------------------------------------------


def test_economics_defaults() -> None:
    """Without an economics section: NMC, 8000, 92 % each way, 16 slots, 2 % re-plan."""
    economics = parse_config(BASE).economics
    assert economics.battery_chemistry == "nmc"
    assert economics.battery_replacement_cost == 8000.0
    assert (economics.charge_efficiency_pct, economics.discharge_efficiency_pct) == (92.0, 92.0)
    assert economics.plan_slots_published == 16
    assert economics.replan_soc_deviation_pct == 2.0


def test_economics_out_of_range_values_are_located() -> None:
    """An efficiency below 50 %, a zero battery cost and an unknown chemistry are each refused."""
    text = BASE + (
        "economics:\n"
        "  battery_chemistry: nca\n"
        "  battery_replacement_cost: 0\n"
        "  charge_efficiency_pct: 40\n"
    )
    assert {(line, path) for line, path, _ in problems(text)} == {
        (line_of(text, "battery_chemistry"), "economics.battery_chemistry"),
        (line_of(text, "battery_replacement_cost"), "economics.battery_replacement_cost"),
        (line_of(text, "charge_efficiency_pct"), "economics.charge_efficiency_pct"),
    }


def test_fallback_policy_optimize_is_accepted_and_listed() -> None:
    """optimize is a fallback policy; an unknown one is refused with the three choices."""
    assert parse_config(BASE + "fallback: {policy: optimize}\n").fallback.policy == "optimize"
    ((_, path, message),) = problems(BASE + "fallback: {policy: smart}\n")
    assert path == "fallback.policy"
    assert "'optimize'" in message
    assert "'time_of_use'" in message
