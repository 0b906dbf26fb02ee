"""The owner's receipt: arithmetic, JSON round trip, checks, and the one-line message."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import zoneinfo
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.economics.receipt import Receipt, Refusal, money, owner_message

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
PLUG_IN = dt.datetime(2026, 11, 23, 18, 40, tzinfo=SHANGHAI)
DEPARTURE = dt.datetime(2026, 11, 24, 7, 30, tzinfo=SHANGHAI)
UNPLUG = dt.datetime(2026, 11, 24, 7, 42, tzinfo=SHANGHAI)


def receipt(**changes: Any) -> Receipt:
    base = Receipt(
        session_id="s-1",
        currency="CNY",
        plugged_in_at=PLUG_IN,
        ended_at=UNPLUG,
        charged_kwh=30.0,
        discharged_kwh=25.0,
        import_cost=9.0,
        export_revenue=33.5,
        wear_cost=1.1,
        soc_at_plug_in_pct=62.0,
        soc_at_end_pct=81.0,
        soc_at_departure_pct=81.0,
        target_soc_pct=80.0,
        departure_at=DEPARTURE,
        refusals=(Refusal("soc_floor", 2, "soc_floor discharge <= 0 W (floor 40 %)"),),
        peak_event_kwh=10.0,
    )
    return dataclasses.replace(base, **changes)


def test_net_is_export_revenue_less_import_cost_less_wear() -> None:
    """net = export revenue - import cost - wear cost."""
    r = receipt()
    assert math.isclose(r.net, 33.5 - 9.0 - 1.1)
    assert r.target_met is True
    assert r.refusal_count == 2


def test_the_message_for_an_earning_night_names_earnings_wear_soc_and_time() -> None:
    """The issue's example, to the character."""
    r = receipt(import_cost=9.0, export_revenue=33.5, wear_cost=1.1)
    assert owner_message(r) == "Earned ¥23.40 tonight after ¥1.10 battery wear; 81 % at 07:30"


def test_a_night_that_cost_money_says_charged_for() -> None:
    """A negative net is never shown as earnings."""
    r = receipt(export_revenue=0.0, discharged_kwh=0.0, import_cost=11.9, wear_cost=0.4)
    assert owner_message(r) == (
        "Charged for ¥12.30 tonight including ¥0.40 battery wear; 81 % at 07:30"
    )


def test_a_missed_target_is_named() -> None:
    """The SoC at departure below the target: the message says by how much it fell short."""
    r = receipt(soc_at_departure_pct=74.0, soc_at_end_pct=74.0)
    assert r.target_met is False
    assert owner_message(r).endswith("; 74 % at 07:30, short of the 80 % target")


def test_half_a_percent_below_target_reads_as_met() -> None:
    """Vehicles report whole percent: 79.6 % shows as 80 % and meets an 80 % target."""
    assert receipt(soc_at_departure_pct=79.6).target_met is True
    assert receipt(soc_at_departure_pct=79.4).target_met is False


def test_a_car_that_left_before_departure_is_not_judged() -> None:
    """Unplugged at 06:10, before the 07:30 departure: the SoC at unplugging is shown, and the
    target, not yet due, is neither met nor missed."""
    left = dt.datetime(2026, 11, 24, 6, 10, tzinfo=SHANGHAI)
    r = receipt(ended_at=left, soc_at_departure_pct=None, soc_at_end_pct=70.0)
    assert r.judged_soc == (70.0, left)
    assert r.left_early
    assert r.target_met is None
    assert owner_message(r).endswith("; 70 % at 06:10, before the 07:30 departure")


def test_without_a_target_nothing_is_met_or_missed() -> None:
    """No departure target: target_met is None and the message reports the SoC at unplugging."""
    r = receipt(target_soc_pct=None, departure_at=None, soc_at_departure_pct=None)
    assert r.target_met is None
    assert owner_message(r).endswith("; 81 % at 07:42")


def test_an_unknown_soc_is_said_so() -> None:
    """A car that never reported its SoC: no target judgement, no invented number."""
    r = receipt(soc_at_end_pct=None, soc_at_departure_pct=None, soc_at_plug_in_pct=None)
    assert r.target_met is None
    assert owner_message(r).endswith("; SoC not reported at 07:42")


def test_no_wear_leaves_the_wear_clause_out() -> None:
    """Without wear the message does not mention it."""
    assert owner_message(receipt(wear_cost=0.0)) == "Earned ¥24.50 tonight; 81 % at 07:30"


@pytest.mark.parametrize(
    ("currency", "expected"),
    [
        ("CNY", "¥23.40"),
        ("EUR", "€23.40"),
        ("USD", "$23.40"),
        ("GBP", "£23.40"),
        ("CHF", "23.40 CHF"),
    ],
)
def test_currency_symbols(currency: str, expected: str) -> None:
    """Known currencies use their symbol, any other its ISO code."""
    assert money(23.4, currency) == expected
    assert owner_message(receipt(currency=currency)).startswith(f"Earned {expected} ")


def test_a_daytime_session_is_today() -> None:
    """A plug-in at 09:00 that ends at 16:00 the same day was not 'tonight'."""
    r = receipt(
        plugged_in_at=dt.datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI),
        ended_at=dt.datetime(2026, 11, 24, 16, 0, tzinfo=SHANGHAI),
        departure_at=None,
        soc_at_departure_pct=None,
        target_soc_pct=None,
    )
    assert " today" in owner_message(r)


def test_json_round_trip() -> None:
    """from_json(to_json()) gives the same receipt, and the JSON carries the derived fields."""
    r = receipt()
    data = json.loads(json.dumps(r.to_json()))
    assert Receipt.from_json(data) == r
    assert data["net"] == round(r.net, 6)
    assert data["target_met"] is True
    assert data["owner_message"] == owner_message(r)
    assert data["refusals"] == [
        {"reason": "soc_floor", "count": 2, "example": "soc_floor discharge <= 0 W (floor 40 %)"}
    ]


@given(
    charged=st.floats(0, 200),
    discharged=st.floats(0, 200),
    import_cost=st.floats(-50, 500),
    export_revenue=st.floats(-50, 500),
    wear=st.floats(0, 100),
    soc=st.none() | st.floats(0, 100),
)
def test_any_valid_receipt_round_trips(
    *,
    charged: float,
    discharged: float,
    import_cost: float,
    export_revenue: float,
    wear: float,
    soc: float | None,
) -> None:
    """Every valid receipt survives JSON (to 6 decimals) and gives a one-line message."""
    r = receipt(
        charged_kwh=charged,
        discharged_kwh=discharged,
        import_cost=import_cost,
        export_revenue=export_revenue,
        wear_cost=wear,
        soc_at_departure_pct=soc,
    )
    back = Receipt.from_json(json.loads(json.dumps(r.to_json())))
    assert math.isclose(back.net, r.net, abs_tol=1e-5)
    assert back.soc_at_departure_pct == soc
    message = owner_message(back)
    assert "\n" not in message
    assert message.startswith("Earned " if round(back.net, 2) >= 0 else "Charged for ")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"currency": "yuan"}, "currency"),
        ({"charged_kwh": -1.0}, "charged_kwh"),
        ({"wear_cost": math.nan}, "wear_cost"),
        ({"import_cost": math.inf}, "import_cost"),
        ({"soc_at_end_pct": 101.0}, "soc_at_end_pct"),
        ({"ended_at": PLUG_IN - dt.timedelta(minutes=1)}, "before plugged_in_at"),
        ({"plugged_in_at": dt.datetime(2026, 11, 23, 18, 0)}, "UTC offset"),
        ({"refusals": (Refusal("soc_floor", 0),)}, "refusals"),
    ],
)
def test_bad_figures_are_refused_with_a_reason(changes: dict[str, Any], fragment: str) -> None:
    """A receipt that cannot be true is a ValueError naming the field."""
    with pytest.raises(ValueError, match=fragment):
        receipt(**changes)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "expected a JSON object"),
        ({"currency": "CNY"}, "missing field 'session_id'"),
        ({**receipt().to_json(), "charged_kwh": "30"}, "expected a number"),
        ({**receipt().to_json(), "ended_at": "tomorrow"}, "unexpected content"),
        ({**receipt().to_json(), "refusals": [{"reason": "x", "count": 1.5}]}, "whole count"),
    ],
)
def test_from_json_refuses_bad_input_with_a_reason(data: object, fragment: str) -> None:
    """Bad stored JSON is a ValueError that says what is wrong, never a traceback of a KeyError."""
    with pytest.raises(ValueError, match=fragment) as info:
        Receipt.from_json(data)
    assert str(info.value).startswith("receipt: ")
