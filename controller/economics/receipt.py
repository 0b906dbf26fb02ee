"""The owner's receipt for one plug-in session, and the one line the owner reads.

Pure: the ledger (``controller/ledger/ledger.py``) gathers the figures while the car is plugged in
and builds a ``Receipt`` when it leaves; this module only holds them, checks them, turns them into
JSON and back, and words the message. Money is in ``currency`` units, energy in kWh at the grid
connection, SoC in percent.

Sign convention: ``net`` is what the session left in the owner's pocket,
``export_revenue - import_cost - wear_cost``; negative when it cost the owner money.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

# Symbols written before the amount; any other currency is written as its code after it.
CURRENCY_SYMBOLS: dict[str, str] = {"CNY": "¥", "EUR": "€", "USD": "$", "GBP": "£"}
# Vehicles report SoC in whole percent (CHAdeMO 0x102 byte 6; GB/T 27930 BCS byte 7, 1 %/bit;
# dbc/): a target within half a percent reads as met on the car's own display, so it is here too.
TARGET_TOLERANCE_PCT = 0.5
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Discharges the core refused or reduced for one reason during a session.

    ``reason`` is the rule of the binding limit (``soc_floor``, ``departure_reserve``, ...),
    ``count`` the episodes (a run of consecutive control cycles cut by that rule counts once),
    ``example`` one binding limit as the core printed it.
    """

    reason: str
    count: int
    example: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What one plug-in session earned or cost the owner, and whether the car was ready.

    ``soc_at_departure_pct`` is the SoC at ``departure_at`` when the car was still plugged in
    then, None when it left earlier (the SoC at unplugging is ``soc_at_end_pct``).
    """

    session_id: str
    currency: str  # ISO 4217
    plugged_in_at: dt.datetime  # aware, site time zone
    ended_at: dt.datetime  # aware, site time zone
    charged_kwh: float  # into the vehicle
    discharged_kwh: float  # out of the vehicle
    import_cost: float
    export_revenue: float  # event bonuses included
    wear_cost: float  # the battery wear the session's cycles cost
    soc_at_plug_in_pct: float | None
    soc_at_end_pct: float | None
    soc_at_departure_pct: float | None = None
    target_soc_pct: float | None = None  # None: no departure target in force
    departure_at: dt.datetime | None = None  # the planned departure, aware
    refusals: tuple[Refusal, ...] = ()
    peak_event_kwh: float = 0.0  # exported while a peak event ran

    def __post_init__(self) -> None:
        problems = [*self._time_problems(), *self._figure_problems()]
        problems += [
            f"refusals: expected a reason and a count >= 1, found {r}"
            for r in self.refusals
            if not r.reason or r.count < 1
        ]
        if problems:
            raise ValueError("receipt: " + "; ".join(problems))

    def _time_problems(self) -> list[str]:
        problems = []
        if not self.session_id:
            problems.append("session_id: expected a non-empty id")
        if not _CURRENCY.match(self.currency):
            problems.append(f"currency: expected an ISO 4217 code, found {self.currency!r}")
        for name in ("plugged_in_at", "ended_at", "departure_at"):
            moment = getattr(self, name)
            if moment is not None and moment.utcoffset() is None:
                problems.append(f"{name}: expected a time with a UTC offset, found {moment}")
        if not problems and self.ended_at < self.plugged_in_at:
            problems.append(
                f"ended_at {self.ended_at} is before plugged_in_at {self.plugged_in_at}"
            )
        return problems

    def _figure_problems(self) -> list[str]:
        problems = []
        # Money may be negative (negative prices exist); energy and wear may not.
        for name in ("import_cost", "export_revenue"):
            value = getattr(self, name)
            if not math.isfinite(value):
                problems.append(f"{name}: expected a finite number, found {value!r}")
        for name in ("charged_kwh", "discharged_kwh", "wear_cost", "peak_event_kwh"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name}: expected a finite number >= 0, found {value!r}")
        for name in (
            "soc_at_plug_in_pct",
            "soc_at_end_pct",
            "soc_at_departure_pct",
            "target_soc_pct",
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
                problems.append(f"{name}: expected 0..100 % or none, found {value!r}")
        return problems

    @property
    def net(self) -> float:
        """What the owner kept: export revenue - import cost - wear cost."""
        return self.export_revenue - self.import_cost - self.wear_cost

    @property
    def judged_soc(self) -> tuple[float | None, dt.datetime]:
        """The SoC the owner left with and when: at the departure if the car was still plugged
        in then, else at unplugging."""
        if (
            self.departure_at is not None
            and self.soc_at_departure_pct is not None
            and self.departure_at <= self.ended_at
        ):
            return self.soc_at_departure_pct, self.departure_at
        return self.soc_at_end_pct, self.ended_at

    @property
    def left_early(self) -> bool:
        """The car was unplugged before its planned departure: the target was not yet due."""
        return self.departure_at is not None and self.ended_at < self.departure_at

    @property
    def target_met(self) -> bool | None:
        """Whether the car had its departure target; None without a target or a known SoC, and
        when the car left before the departure (the target was not due)."""
        soc, _at = self.judged_soc
        if self.target_soc_pct is None or soc is None or self.left_early:
            return None
        return soc >= self.target_soc_pct - TARGET_TOLERANCE_PCT

    @property
    def refusal_count(self) -> int:
        return sum(r.count for r in self.refusals)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times RFC 3339, money and energy rounded to 6 decimals)."""
        return {
            "session_id": self.session_id,
            "currency": self.currency,
            "plugged_in_at": _time(self.plugged_in_at),
            "ended_at": _time(self.ended_at),
            "charged_kwh": round(self.charged_kwh, 6),
            "discharged_kwh": round(self.discharged_kwh, 6),
            "import_cost": round(self.import_cost, 6),
            "export_revenue": round(self.export_revenue, 6),
            "wear_cost": round(self.wear_cost, 6),
            "net": round(self.net, 6),
            "soc_at_plug_in_pct": self.soc_at_plug_in_pct,
            "soc_at_end_pct": self.soc_at_end_pct,
            "soc_at_departure_pct": self.soc_at_departure_pct,
            "target_soc_pct": self.target_soc_pct,
            "departure_at": None if self.departure_at is None else _time(self.departure_at),
            "target_met": self.target_met,
            "refusals": [
                {"reason": r.reason, "count": r.count, "example": r.example} for r in self.refusals
            ],
            "peak_event_kwh": round(self.peak_event_kwh, 6),
            "owner_message": owner_message(self),
        }

    @staticmethod
    def from_json(data: object) -> Receipt:
        """The receipt ``to_json`` wrote; ValueError saying what is wrong otherwise. ``net``,
        ``target_met`` and ``owner_message`` are derived, so they are not read back."""
        if not isinstance(data, dict):
            found = type(data).__name__
            # One error type for every bad stored receipt, whatever is wrong with it.
            raise ValueError(f"receipt: expected a JSON object, found {found}")  # noqa: TRY004
        try:
            refusals = tuple(
                Refusal(str(r["reason"]), _int(r["count"]), str(r.get("example", "")))
                for r in data.get("refusals", ())
            )
            departure = data.get("departure_at")
            return Receipt(
                session_id=str(data["session_id"]),
                currency=str(data["currency"]),
                plugged_in_at=dt.datetime.fromisoformat(data["plugged_in_at"]),
                ended_at=dt.datetime.fromisoformat(data["ended_at"]),
                charged_kwh=_number(data["charged_kwh"]),
                discharged_kwh=_number(data["discharged_kwh"]),
                import_cost=_number(data["import_cost"]),
                export_revenue=_number(data["export_revenue"]),
                wear_cost=_number(data["wear_cost"]),
                soc_at_plug_in_pct=_optional(data.get("soc_at_plug_in_pct")),
                soc_at_end_pct=_optional(data.get("soc_at_end_pct")),
                soc_at_departure_pct=_optional(data.get("soc_at_departure_pct")),
                target_soc_pct=_optional(data.get("target_soc_pct")),
                departure_at=None if departure is None else dt.datetime.fromisoformat(departure),
                refusals=refusals,
                peak_event_kwh=_number(data.get("peak_event_kwh", 0.0)),
            )
        except KeyError as exc:
            raise ValueError(f"receipt: missing field {exc.args[0]!r}") from None
        except (TypeError, AttributeError, ValueError) as exc:
            text = str(exc)
            raise ValueError(
                text if text.startswith("receipt:") else f"receipt: unexpected content ({text})"
            ) from None


def money(amount: float, currency: str) -> str:
    """``amount`` (>= 0) as the owner reads it: "¥23.40", "€1.10", "23.40 CHF"."""
    symbol = CURRENCY_SYMBOLS.get(currency)
    text = f"{amount:,.2f}"
    return f"{symbol}{text}" if symbol is not None else f"{text} {currency}"


def owner_message(receipt: Receipt) -> str:
    """One line for the owner, e.g. "Earned ¥23.40 tonight after ¥1.10 battery wear; 81 % at
    07:30". A session that cost money says so ("Charged for ¥12.30 ..."), a missed departure
    target is named ("74 % at 07:30, short of the 80 % target"), and so is a car that left before
    its departure ("70 % at 06:10, before the 07:30 departure")."""
    currency = receipt.currency
    when = _period(receipt.plugged_in_at, receipt.ended_at)
    net = round(receipt.net, 2)
    wear = round(receipt.wear_cost, 2)
    if net >= 0:
        head = f"Earned {money(net, currency)} {when}"
        if wear > 0:
            head += f" after {money(wear, currency)} battery wear"
    else:
        head = f"Charged for {money(-net, currency)} {when}"
        if wear > 0:
            head += f" including {money(wear, currency)} battery wear"
    soc, at = receipt.judged_soc
    clock = at.strftime("%H:%M")
    tail = f"SoC not reported at {clock}" if soc is None else f"{soc:.0f} % at {clock}"
    if receipt.target_met is False and receipt.target_soc_pct is not None:
        tail += f", short of the {receipt.target_soc_pct:.0f} % target"
    elif receipt.left_early and receipt.departure_at is not None:
        tail += f", before the {receipt.departure_at:%H:%M} departure"
    return f"{head}; {tail}"


def _period(start: dt.datetime, end: dt.datetime) -> str:
    """ "tonight" for an evening or overnight plug-in, "today" for a daytime one, local time."""
    if end - start > dt.timedelta(days=1):
        return "this session"
    if start.hour >= 15 or start.hour < 5 or end.date() != start.date():
        return "tonight"
    return "today"


def _time(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, found {value!r}")
    return float(value)


def _optional(value: object) -> float | None:
    return None if value is None else _number(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole count, found {value!r}")
    return value
