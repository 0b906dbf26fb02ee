"""Reading the ledger for ``v2g-controller ledger``: sessions with their receipts, daily totals,
lifetime counters.

Read-only (``db.open_database(readonly=True)``), so a technician's query never changes a ledger,
and safe while the daemon runs (WAL readers never block the writer).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from controller.economics.receipt import Receipt, owner_message
from controller.storage.db import LedgerError

_TABLES = ("ledger_sessions", "ledger_days", "ledger_meters")


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    protocol: str
    vehicle_id: str | None
    started_at: str
    ended_at: str | None  # None: still open
    soc_start_pct: float | None
    soc_end_pct: float | None
    charged_kwh: float
    discharged_kwh: float
    import_cost: float
    export_value: float
    net_value: float
    currency: str
    energy_source: str
    end_reason: str | None
    # The owner's receipt, written at the close; None while open and for sessions closed by a
    # controller before receipts (issue 19).
    receipt: Receipt | None = None

    def as_json(self) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["receipt"] = None if self.receipt is None else self.receipt.to_json()
        return fields


@dataclass(frozen=True, slots=True)
class DayRow:
    day: str
    charged_kwh: float
    discharged_kwh: float  # also the wear budget used that day
    import_cost: float
    export_value: float
    net_value: float
    currency: str


@dataclass(frozen=True, slots=True)
class LedgerReport:
    sessions: tuple[SessionRow, ...]
    days: tuple[DayRow, ...]
    lifetime_charged_kwh: float
    lifetime_discharged_kwh: float
    trips: int
    audit_entries: int

    def totals(self) -> dict[str, Any]:
        """Sums over the days shown, per currency (normally one)."""
        out: dict[str, dict[str, float]] = {}
        for d in self.days:
            t = out.setdefault(
                d.currency,
                {
                    "charged_kwh": 0.0,
                    "discharged_kwh": 0.0,
                    "import_cost": 0.0,
                    "export_value": 0.0,
                },
            )
            t["charged_kwh"] += d.charged_kwh
            t["discharged_kwh"] += d.discharged_kwh
            t["import_cost"] += d.import_cost
            t["export_value"] += d.export_value
        for t in out.values():
            t["net_value"] = t["export_value"] - t["import_cost"]
        return {currency: {k: round(v, 6) for k, v in t.items()} for currency, t in out.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "sessions": [s.as_json() for s in self.sessions],
            "days": [asdict(d) for d in self.days],
            "totals": self.totals(),
            "lifetime": {
                "charged_kwh": self.lifetime_charged_kwh,
                "discharged_kwh": self.lifetime_discharged_kwh,
            },
            "trips": self.trips,
            "audit_entries": self.audit_entries,
        }


def read_report(
    conn: sqlite3.Connection, since: dt.date | None = None, until: dt.date | None = None
) -> LedgerReport:
    """Sessions started and days within [since, until] (local dates, both inclusive)."""
    try:
        present = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        missing = [t for t in _TABLES if t not in present]
        if missing:
            raise LedgerError(f"not a ledger: table {missing[0]} is missing")
        sessions = tuple(
            _session(row)
            for row in conn.execute("SELECT * FROM ledger_sessions ORDER BY started_at")
            if _within(str(row["started_at"])[:10], since, until)
        )
        days = tuple(
            _day(row)
            for row in conn.execute("SELECT * FROM ledger_days ORDER BY day")
            if _within(str(row["day"]), since, until)
        )
        meters = {
            str(row["channel"]): float(row["total_wh"])
            for row in conn.execute("SELECT channel, total_wh FROM ledger_meters")
        }
        trips = int(conn.execute("SELECT count(*) FROM ledger_trips").fetchone()[0])
        audit = int(conn.execute("SELECT count(*) FROM ledger_audit").fetchone()[0])
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"cannot read the ledger: unexpected content ({exc})") from exc
    return LedgerReport(
        sessions=sessions,
        days=days,
        lifetime_charged_kwh=round(meters.get("charged", 0.0) / 1000, 6),
        lifetime_discharged_kwh=round(meters.get("discharged", 0.0) / 1000, 6),
        trips=trips,
        audit_entries=audit,
    )


def _within(day: str, since: dt.date | None, until: dt.date | None) -> bool:
    return (since is None or day >= since.isoformat()) and (
        until is None or day <= until.isoformat()
    )


def _totals(row: sqlite3.Row) -> dict[str, Any]:
    """The energy and money columns a session row and a day row share, in report units."""
    import_cost = round(float(row["import_cost"]), 6)
    export_value = round(float(row["export_value"]), 6)
    return {
        "charged_kwh": round(float(row["charged_wh"]) / 1000, 6),
        "discharged_kwh": round(float(row["discharged_wh"]) / 1000, 6),
        "import_cost": import_cost,
        "export_value": export_value,
        "net_value": round(export_value - import_cost, 6),
        "currency": str(row["currency"]),
    }


def _session(row: sqlite3.Row) -> SessionRow:
    # A file written before receipts has no such column (read-only: not migrated).
    text = row["receipt"] if "receipt" in row.keys() else None  # noqa: SIM118  sqlite3.Row
    return SessionRow(
        session_id=str(row["session_id"]),
        protocol=str(row["protocol"]),
        vehicle_id=row["vehicle_id"],
        started_at=str(row["started_at"]),
        ended_at=row["ended_at"],
        soc_start_pct=row["soc_start_pct"],
        soc_end_pct=row["soc_end_pct"],
        energy_source=str(row["energy_source"]),
        end_reason=row["end_reason"],
        receipt=None if text is None else Receipt.from_json(json.loads(text)),
        **_totals(row),
    )


def _day(row: sqlite3.Row) -> DayRow:
    return DayRow(day=str(row["day"]), **_totals(row))


# -- the readable table --------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _soc(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _target(receipt: Receipt) -> str:
    if receipt.target_soc_pct is None:
        return "-"
    soc, at = receipt.judged_soc
    verdict = {True: "met", False: "MISSED", None: "unknown"}[receipt.target_met]
    return f"{receipt.target_soc_pct:.0f} % by {at:%H:%M}: {verdict} ({_soc(soc)} %)"


def _receipts(sessions: tuple[SessionRow, ...]) -> list[str]:
    """The receipts of the closed sessions: a table, then each owner's line and refusals."""
    closed = [s for s in sessions if s.receipt is not None]
    if not closed:
        return []
    rows = []
    details = []
    for s in closed:
        r = s.receipt
        assert r is not None  # noqa: S101  filtered above
        start = s.started_at[:16].replace("T", " ")
        rows.append(
            [
                start,
                f"{r.import_cost:.2f}",
                f"{r.export_revenue:.2f}",
                f"{r.wear_cost:.2f}",
                f"{r.net:+.2f} {r.currency}",
                f"{_soc(r.soc_at_plug_in_pct)}->{_soc(r.soc_at_end_pct)}",
                _target(r),
                f"{r.peak_event_kwh:.3f}",
                str(r.refusal_count),
            ]
        )
        details.append(f"  {start}  {owner_message(r)}")
        details += [
            f"    discharge refused or reduced: {f.reason} x{f.count} (e.g. {f.example})"
            for f in r.refusals
        ]
    headers = [
        "start",
        "import cost",
        "export revenue",
        "wear",
        "net for owner",
        "SoC %",
        "departure target",
        "peak event kWh",
        "refusals",
    ]
    return [
        "",
        f"Receipts ({len(closed)})",
        *_table(headers, rows, right={1, 2, 3, 4, 7, 8}),
        *details,
    ]


def format_report(report: LedgerReport) -> str:
    """The report as tables for a terminal."""
    out = [f"Sessions ({len(report.sessions)})"]
    if report.sessions:
        rows = [
            [
                s.started_at[:16].replace("T", " "),
                "open" if s.ended_at is None else s.ended_at[:16].replace("T", " "),
                s.vehicle_id or "-",
                f"{_soc(s.soc_start_pct)}->{_soc(s.soc_end_pct)}",
                f"{s.charged_kwh:.3f}",
                f"{s.discharged_kwh:.3f}",
                f"{s.net_value:+.2f} {s.currency}",
                "counters" if s.energy_source == "inverter_counters" else "integrated",
                s.end_reason or "",
            ]
            for s in report.sessions
        ]
        headers = [
            "start",
            "end",
            "vehicle",
            "SoC %",
            "charged kWh",
            "discharged kWh",
            "net before wear",
            "energy",
            "end reason",
        ]
        out += _table(headers, rows, right={4, 5, 6})
    out += _receipts(report.sessions)
    out += ["", f"Daily totals ({len(report.days)})"]
    if report.days:
        rows = [
            [
                d.day,
                f"{d.charged_kwh:.3f}",
                f"{d.discharged_kwh:.3f}",
                f"{d.import_cost:.2f}",
                f"{d.export_value:.2f}",
                f"{d.net_value:+.2f} {d.currency}",
            ]
            for d in report.days
        ]
        headers = [
            "day",
            "charged kWh",
            "discharged kWh",
            "import cost",
            "export value",
            "net before wear",
        ]
        out += _table(headers, rows, right={1, 2, 3, 4, 5})
    out.append("")
    for currency, t in report.totals().items():
        out.append(
            f"Total: charged {t['charged_kwh']:.3f} kWh, discharged {t['discharged_kwh']:.3f} kWh,"
            f" import cost {t['import_cost']:.2f} {currency}, export value"
            f" {t['export_value']:.2f} {currency}, net {t['net_value']:+.2f} {currency}"
        )
    out.append(
        f"Lifetime (ledger counters): charged {report.lifetime_charged_kwh:.3f} kWh, discharged "
        f"{report.lifetime_discharged_kwh:.3f} kWh; {report.trips} interlock trips, "
        f"{report.audit_entries} setpoint audit entries"
    )
    return "\n".join(out)
