"""The energy ledger: sessions, daily totals, wear budget, trips and the setpoint audit trail.

Owners are paid for the energy their car gave back and aggregators settle on it, so nothing may
be lost or counted twice across power cuts, restarts and SIGKILL (issue 9). How:

* Energy comes from the inverter's lifetime counters (``InverterState.energy_charged_wh`` /
  ``energy_discharged_wh``). The raw counter value that was last credited (the *base*) is
  committed in the same transaction as the totals it produced, so after any crash the next
  reading credits exactly what the counter moved since that commit: no loss, no double count,
  and no need to commit every 100 ms cycle (SD-card wear). Rules for resets, rollovers and
  absurd jumps: ``accounting.counter_step``.
* Only where the inverter has no counter for a direction is measured power integrated; that
  energy is in memory until the next commit, so a crash loses at most one commit interval
  (``ledger.commit_interval_s``, or ``INTEGRATED_COMMIT_WH``, whichever comes first).
* Commits: when a session opens or closes, a trip appears or clears, a counter is re-based, the
  local day changes, an audit entry arrives, and otherwise every ``commit_interval_s``.
* Everything is kept in memory as absolute values and written as absolute values, so a failed
  commit (disk full, file locked) is simply retried by the next one.
* A session closing writes its row and the aggregator's outbox row in one transaction.
* Money: each increment of energy is priced at the prices in force when it was read (a
  ``PriceProvider``: the flat tariff, or the owner's time-of-use tariff with pushed prices).
* Receipts: a session also keeps its SoC turning points (for the wear cost), the energy exported
  during peak events, its departure target and the discharges the core refused or reduced; at its
  close it becomes a ``Receipt`` (controller/economics/receipt.py), stored in its row and sent in
  its outbox body, and the owner's one-line message is logged.
* Simulation (``V2G_SIMULATED_CLOCK`` faster than real time, ``make demo``): the plant's battery
  and meters run ``time_factor`` times real time, but its inverter's counters count real time in
  whole Wh, so one count would be ``time_factor`` Wh of the simulated night (720 Wh at 720x) and
  a short discharge would vanish in the rounding. So the ledger integrates the measured power
  instead, times ``time_factor``: the energy the simulated plant moved. On a charger
  (``time_factor`` 1) nothing changes: counters, and integration only where there are none.

The session rule (one plug-in; it survives restarts) is in ``accounting.vehicle_present``;
the details for technicians are in docs/ledger.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from controller.config import Config
from controller.core.policy import Departure
from controller.core.snapshots import InverterState, VehiclePhase, VehicleState
from controller.economics.receipt import Receipt, Refusal, owner_message
from controller.economics.tariff import Tariff as EconomicTariff
from controller.ledger.accounting import (
    CounterEvent,
    PriceProvider,
    Tariff,
    TraceWearCost,
    counter_step,
    departure_after,
    extend_trace,
    flat_prices,
    integrated_wh,
    no_wear,
    refused_discharge,
    same_vehicle,
    vehicle_present,
)
from controller.links import ControlReport, SetpointAudit
from controller.storage import db
from controller.storage.db import LedgerError

log = structlog.get_logger(component="ledger")

COMPONENT = "ledger"
# 2: the receipt's columns in ledger_sessions (issue 19); a version 1 file gains them on open.
SCHEMA_VERSION = 2
CHANNELS = ("charged", "discharged")
# Integration fallback: a snapshot older than this gives no energy (the core's inverter
# staleness default, safety.inverter_stale_after_s); a longer gap counts at most this long.
INTEGRATION_FRESH_S = 3.0
# Integrated energy not yet committed is lost in a crash: commit once this much is pending.
INTEGRATED_COMMIT_WH = 20.0
# After a restart the vehicle link reports "unplugged" until its session machine has read the
# board's lines; a resumed session is closed only once that has lasted this long.
RESUME_GRACE_S = 10.0
MAX_PENDING_AUDIT = 10_000  # bounded while the disk refuses writes; the oldest are dropped

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meters (
    channel TEXT PRIMARY KEY,          -- 'charged' (into the vehicle) or 'discharged'
    base_wh REAL,                      -- the inverter's raw counter value last credited
    total_wh REAL NOT NULL,            -- lifetime energy the ledger counted, never decreasing
    counter_seen INTEGER NOT NULL,     -- 1: this direction has an inverter counter
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_sessions (
    session_id TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    vehicle_id TEXT,
    started_at TEXT NOT NULL,          -- RFC 3339, site time zone
    ended_at TEXT,                     -- NULL while open
    updated_at TEXT NOT NULL,          -- last commit while open
    soc_start_pct REAL,
    soc_end_pct REAL,
    charged_wh REAL NOT NULL,
    discharged_wh REAL NOT NULL,
    import_cost REAL NOT NULL,
    export_value REAL NOT NULL,
    currency TEXT NOT NULL,
    energy_source TEXT NOT NULL,       -- 'inverter_counters' or 'integrated_power'
    end_reason TEXT,
    outbox_id TEXT,                    -- the aggregator outbox row written with the close
    peak_event_wh REAL NOT NULL DEFAULT 0,  -- discharged while a peak event ran
    wear_cost REAL,                    -- set at the close
    progress TEXT,                     -- JSON: SoC turning points, refusals, departure target
    receipt TEXT                       -- JSON: the Receipt, set at the close
);
CREATE INDEX IF NOT EXISTS ledger_sessions_open ON ledger_sessions (ended_at);
CREATE TABLE IF NOT EXISTS ledger_days (
    day TEXT PRIMARY KEY,              -- local date in the site's time zone
    charged_wh REAL NOT NULL,
    discharged_wh REAL NOT NULL,       -- also the wear budget used that day
    import_cost REAL NOT NULL,
    export_value REAL NOT NULL,
    currency TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_trips (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    cause TEXT NOT NULL,
    session_id TEXT,
    cleared_at TEXT
);
CREATE TABLE IF NOT EXISTS ledger_audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    setpoint_id TEXT,
    action TEXT NOT NULL,
    requested_w REAL,
    applied_w REAL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS ledger_counter_events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,               -- base, rollover, reset, rejected
    old_base_wh REAL,
    raw_wh REAL,
    credited_wh REAL NOT NULL,
    reason TEXT NOT NULL
);
"""
# Columns added to ledger_sessions after version 1: a ledger written by an older controller (a
# field charger's file) gains them on open, with ALTER TABLE, before anything reads them.
_SESSION_COLUMNS_SINCE_V1 = (
    ("peak_event_wh", "REAL NOT NULL DEFAULT 0"),
    ("wear_cost", "REAL"),
    ("progress", "TEXT"),
    ("receipt", "TEXT"),
)
PeakEvent = Callable[[dt.datetime], bool]


class OutboxWriter(Protocol):
    """What the ledger needs from the aggregator's durable outbox (``DurableOutbox``).

    ``insert`` adds a row inside the caller's transaction (no commit) and returns its id;
    ``mark_synced`` tells it a commit with ``synchronous=FULL`` was made on the shared
    connection, which put every earlier commit on the storage too (one fsync fewer).
    """

    def insert(self, kind: str, body: dict[str, Any]) -> str: ...

    def mark_synced(self) -> None: ...


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as RFC 3339 with milliseconds and its UTC offset."""
    return moment.isoformat(timespec="milliseconds")


@dataclass(slots=True)
class _Meter:
    base_wh: float | None = None
    total_wh: float = 0.0
    counter_seen: bool = False
    read_at_s: float | None = None  # monotonic time of the last reading in this run


@dataclass(slots=True)
class _Day:
    charged_wh: float = 0.0
    discharged_wh: float = 0.0
    import_cost: float = 0.0
    export_value: float = 0.0


@dataclass(slots=True)
class _Session:
    session_id: str
    protocol: str
    vehicle_id: str | None
    started_at: str
    soc_start_pct: float | None
    soc_end_pct: float | None = None
    charged_wh: float = 0.0
    discharged_wh: float = 0.0
    import_cost: float = 0.0
    export_value: float = 0.0
    currency: str = "EUR"
    energy_source: str = "inverter_counters"
    updated_at: str = ""
    ended_at: str | None = None
    end_reason: str | None = None
    confirmed: bool = True  # seen connected in this run (False: resumed, not yet confirmed)
    unplugged_since_s: float | None = None
    # For the receipt (issue 19), written as ``progress`` while open.
    peak_event_wh: float = 0.0
    soc_trace: list[float] = field(default_factory=list)  # turning points, % (accounting.py)
    refusals: dict[str, tuple[int, str]] = field(default_factory=dict)  # rule: episodes, example
    refusing: str | None = None  # the rule of the refusal episode running now (not stored)
    departure_at: str | None = None  # the planned departure after the plug-in, RFC 3339
    target_soc_pct: float | None = None
    soc_departure_pct: float | None = None  # the SoC when the departure came, if plugged in
    wear_cost: float | None = None
    receipt: Receipt | None = None

    def progress(self) -> str:
        return json.dumps(
            {
                "soc_trace": [round(v, 3) for v in self.soc_trace],
                "refusals": self.refusals,
                "departure_at": self.departure_at,
                "target_soc_pct": self.target_soc_pct,
                "soc_departure_pct": self.soc_departure_pct,
            },
            allow_nan=False,
        )

    def restore_progress(self, text: str | None) -> None:
        """The ``progress`` column of a resumed session; unreadable: start afresh (logged)."""
        if not text:
            return
        try:
            data = json.loads(text)
            trace = [float(v) for v in data.get("soc_trace", [])]
            refusals = {
                str(rule): (int(v[0]), str(v[1])) for rule, v in data.get("refusals", {}).items()
            }
            target = data.get("target_soc_pct")
            soc_departure = data.get("soc_departure_pct")
            departure = data.get("departure_at")
            self.target_soc_pct = None if target is None else float(target)
            self.soc_departure_pct = None if soc_departure is None else float(soc_departure)
            self.departure_at = None if departure is None else str(departure)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            log.warning(
                "ledger session progress unreadable; the receipt starts afresh",
                session_id=self.session_id,
                error=str(exc),
            )
            return
        self.soc_trace = trace
        self.refusals = refusals

    def body(self) -> dict[str, Any]:
        """The outbox body for the aggregator (issue 9's keys, and the receipt once built)."""
        import_cost = round(self.import_cost, 6)
        export_value = round(self.export_value, 6)
        body: dict[str, Any] = {
            "session_id": self.session_id,
            "protocol": self.protocol,
            "vehicle_id": self.vehicle_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "soc_start_pct": self.soc_start_pct,
            "soc_end_pct": self.soc_end_pct,
            "charged_kwh": round(self.charged_wh / 1000, 6),
            "discharged_kwh": round(self.discharged_wh / 1000, 6),
            "energy_source": self.energy_source,
            "import_cost": import_cost,
            "export_value": export_value,
            "net_value": export_value - import_cost,
            "currency": self.currency,
            "end_reason": self.end_reason,
        }
        if self.receipt is not None:
            body["receipt"] = self.receipt.to_json()
        return body


@dataclass(slots=True)
class _Trip:
    at: str
    cause: str
    session_id: str | None
    row_id: int | None = None
    cleared_at: str | None = None


@dataclass(slots=True)
class _CounterNote:
    at: str
    channel: str
    event: CounterEvent
    old_base_wh: float | None
    raw_wh: float
    credited_wh: float
    reason: str


@dataclass(slots=True)
class _Pending:
    """What the next commit must write besides the absolute state."""

    closed: list[_Session] = field(default_factory=list)
    trips: list[_Trip] = field(default_factory=list)
    counter_notes: list[_CounterNote] = field(default_factory=list)
    audit: list[SetpointAudit] = field(default_factory=list)
    days: set[str] = field(default_factory=set)
    now: bool = False  # commit at the next record()
    integrated_wh: float = 0.0


class Ledger:
    """The energy ledger on an open database connection (``db.open_database``).

    ``record`` is called at the end of every control cycle; ``audit`` is the ``AuditSink`` of the
    aggregator link; ``flush`` commits what is pending (the daemon's stop sequence). Methods
    raise only ``LedgerError``, and ``audit`` never raises.

    ``tariff`` gives the currency, and the prices unless ``prices`` is given;
    ``fallback_prices`` (default: ``tariff``'s) price the energy while ``prices`` fails;
    ``prices``, ``fallback_prices``,
    ``in_peak_event`` and ``wear_cost`` are pure functions (no IO: they run on the storage thread
    at every credit). ``departure`` is the owner's daily departure for the receipt's target.
    ``time_factor`` is the simulated clock's rate (1 on a charger): see the module docstring.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        tariff: Tariff,
        max_power_w: float,
        commit_interval_s: float = 30.0,
        outbox: OutboxWriter | None = None,
        prices: PriceProvider | None = None,
        fallback_prices: PriceProvider | None = None,
        in_peak_event: PeakEvent | None = None,
        wear_cost: TraceWearCost = no_wear,
        departure: Departure | None = None,
        time_factor: float = 1.0,
    ) -> None:
        if not (math.isfinite(time_factor) and time_factor > 0):
            raise ValueError(f"ledger: time_factor must be finite and > 0, found {time_factor}")
        self._conn = conn
        self._tariff = tariff
        self._flat_prices = fallback_prices or flat_prices(tariff)
        self._prices = prices or self._flat_prices
        self._in_peak_event = in_peak_event
        self._wear_cost = wear_cost
        self._departure = departure
        self._time_factor = time_factor
        self._price_problem: str | None = None  # the provider's last failure, logged once
        self._max_power_w = max_power_w
        self._commit_interval_s = commit_interval_s
        self._outbox = outbox
        self._meters = {channel: _Meter() for channel in CHANNELS}
        self._restored_at: dt.datetime | None = None  # wall time of the last commit before us
        self._session: _Session | None = None
        self._trips: dict[str, _Trip] = {}
        self._day: str | None = None
        self._days: dict[str, _Day] = {}
        self._pending = _Pending()
        self._dirty = False
        self._last_commit_s: float | None = None
        self._last_record_s: float | None = None
        self._last_wall: dt.datetime | None = None
        try:
            self._create_schema()
            self._create_price_table()
            self._restore()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: cannot read or create its tables: {exc}") from exc

    @classmethod
    def from_config(
        cls,
        conn: sqlite3.Connection,
        config: Config,
        outbox: OutboxWriter | None = None,
        *,
        prices: PriceProvider | None = None,
        in_peak_event: PeakEvent | None = None,
        wear_cost: TraceWearCost = no_wear,
        time_factor: float = 1.0,
    ) -> Ledger:
        tariff = config.economic_tariff()
        # The owner's tariff, band by band: the prices without a provider, and while one (the
        # aggregator's pushed prices) fails. The flat one carries only the currency then.
        in_force = _tariff_prices(tariff)
        departure = config.owner.departure
        return cls(
            conn,
            tariff=Tariff(tariff.currency, math.nan, math.nan),
            fallback_prices=in_force,
            max_power_w=max(config.safety.max_charge_power_w, config.safety.max_discharge_power_w),
            commit_interval_s=config.ledger.commit_interval_s,
            outbox=outbox,
            prices=prices or in_force,
            in_peak_event=in_peak_event,
            wear_cost=wear_cost,
            departure=None
            if departure is None
            else Departure(departure.time, departure.target_soc_pct),
            time_factor=time_factor,
        )

    # -- public ---------------------------------------------------------------------------------

    def set_outbox(self, outbox: OutboxWriter | None) -> None:
        """The aggregator's outbox that closed sessions are handed to (same connection)."""
        self._outbox = outbox

    @property
    def open_session_id(self) -> str | None:
        return None if self._session is None else self._session.session_id

    def totals_wh(self) -> tuple[float, float]:
        """Lifetime (charged, discharged) Wh as counted so far, committed or not."""
        return self._meters["charged"].total_wh, self._meters["discharged"].total_wh

    def discharged_wh_on(self, day: dt.date) -> float:
        """Energy discharged on a local day: the wear budget used (seeds the core on restart)."""
        key = day.isoformat()
        if key in self._days:
            return self._days[key].discharged_wh
        try:
            row = self._conn.execute(
                "SELECT discharged_wh FROM ledger_days WHERE day = ?", (key,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: cannot read day {key}: {exc}") from exc
        return 0.0 if row is None else float(row[0])

    def record(
        self, vehicle: VehicleState | None, inverter: InverterState | None, report: ControlReport
    ) -> None:
        """Account one control cycle; commits only when the commit policy says so."""
        now_s, wall = report.monotonic_s, report.wall
        self._enter_day(wall)
        # Energy first: what moved since the last reading belongs to the session open until now.
        self._account_energy(inverter, now_s, wall)
        self._track_session(vehicle, now_s, wall)
        self._track_refusals(vehicle, report)
        self._track_trips(report.faults, wall)
        self._last_record_s = now_s
        self._last_wall = wall
        pending = self._pending
        due = self._dirty and (
            self._last_commit_s is None or now_s - self._last_commit_s >= self._commit_interval_s
        )
        # Scaled so that a crash loses the same real time of integration as on a charger.
        integrated_due = pending.integrated_wh >= INTEGRATED_COMMIT_WH * self._time_factor
        if pending.now or due or integrated_due:
            self._commit(wall, now_s)

    def audit(self, entry: SetpointAudit) -> None:
        """One line of the setpoint audit trail, committed at once (an ``AuditSink``)."""
        pending = self._pending.audit
        if len(pending) >= MAX_PENDING_AUDIT:
            del pending[0]
            log.error("ledger audit backlog full; oldest entry dropped", limit=MAX_PENDING_AUDIT)
        pending.append(entry)
        try:
            self._commit(self._last_wall or entry.at, self._last_record_s)
        except LedgerError as exc:
            log.error("ledger audit entry not yet written; retried", error=str(exc))

    def queue_audit(self, entry: SetpointAudit) -> None:
        """One line of the setpoint audit trail, written by the next commit (``commit_urgent``
        after the storage thread's batch): lines that arrive together share one fsync."""
        pending = self._pending.audit
        if len(pending) >= MAX_PENDING_AUDIT:
            del pending[0]
            log.error("ledger audit backlog full; oldest entry dropped", limit=MAX_PENDING_AUDIT)
        pending.append(entry)

    def commit_urgent(self) -> None:
        """Commit now if something is pending that must not wait for the commit interval:
        audit lines, a session opened or closed, a trip, a new counter base, a new day."""
        if self._pending.audit or self._pending.now:
            self._commit(self._last_wall or dt.datetime.now(dt.UTC), self._last_record_s)

    def flush(self) -> None:
        """Commit whatever is pending (the daemon's stop sequence)."""
        if self._dirty or self._has_rows_pending():
            wall = self._last_wall or dt.datetime.now(dt.UTC)
            self._commit(wall, self._last_record_s)

    # -- energy ---------------------------------------------------------------------------------

    def _account_energy(
        self, inverter: InverterState | None, now_s: float, wall: dt.datetime
    ) -> None:
        if inverter is None:
            return
        counters = {
            "charged": inverter.energy_charged_wh,
            "discharged": inverter.energy_discharged_wh,
        }
        # Simulation faster than real time: the counters are too coarse (module docstring).
        simulated = self._time_factor != 1.0
        for channel, raw_wh in counters.items():
            meter = self._meters[channel]
            if raw_wh is not None and not simulated:
                self._account_counter(channel, meter, raw_wh, now_s, wall)
            elif simulated or not meter.counter_seen:
                self._account_integrated(channel, inverter, now_s, wall)
            # A counter that was seen and is missing now: nothing; its next value covers the gap.

    def _account_counter(
        self, channel: str, meter: _Meter, raw_wh: float, now_s: float, wall: dt.datetime
    ) -> None:
        if meter.read_at_s is not None:
            elapsed_s = now_s - meter.read_at_s
        elif self._restored_at is not None:
            elapsed_s = (wall - self._restored_at).total_seconds()
        else:
            elapsed_s = 0.0
        step = counter_step(
            meter.base_wh, float(raw_wh), max_power_w=self._max_power_w, elapsed_s=elapsed_s
        )
        if step.event is CounterEvent.INVALID:
            log.warning("inverter energy counter ignored", channel=channel, reason=step.reason)
            return
        old_base = meter.base_wh
        meter.read_at_s = now_s
        meter.counter_seen = True
        if step.event is not CounterEvent.CREDITED:
            quiet = step.event in (CounterEvent.BASE, CounterEvent.ROLLOVER)
            (log.info if quiet else log.warning)(
                f"inverter energy counter {step.event}", channel=channel, reason=step.reason
            )
            self._pending.counter_notes.append(
                _CounterNote(
                    rfc3339(wall),
                    channel,
                    step.event,
                    old_base,
                    float(raw_wh),
                    step.credited_wh,
                    step.reason,
                )
            )
            self._pending.now = True  # a new base must be durable before energy is read on it
        if step.base_wh != meter.base_wh:
            meter.base_wh = step.base_wh
            self._dirty = True
        if step.credited_wh > 0:
            self._credit(channel, step.credited_wh, wall)

    def _account_integrated(
        self, channel: str, inverter: InverterState, now_s: float, wall: dt.datetime
    ) -> None:
        last_s = self._last_record_s
        if last_s is None or not inverter.reachable:
            return
        if now_s - inverter.observed_at_s > INTEGRATION_FRESH_S:
            return
        # Monotonic seconds are real ones; under a simulated clock the plant's battery moves
        # time_factor times as much energy in them.
        energy_wh = self._time_factor * integrated_wh(
            inverter.measured_power_w, min(now_s - last_s, INTEGRATION_FRESH_S)
        )
        # + charges the vehicle: the charged channel takes the positive part, discharged the rest.
        energy_wh = max(0.0, energy_wh) if channel == "charged" else max(0.0, -energy_wh)
        if self._session is not None:
            self._session.energy_source = "integrated_power"
        if energy_wh > 0:
            self._pending.integrated_wh += energy_wh
            self._credit(channel, energy_wh, wall)

    def _credit(self, channel: str, energy_wh: float, wall: dt.datetime) -> None:
        self._meters[channel].total_wh += energy_wh
        assert self._day is not None  # noqa: S101  set by _enter_day before any credit
        totals: list[_Day | _Session] = [self._days[self._day]]
        if self._session is not None:
            totals.append(self._session)
        # Priced at the prices in force when the energy was read: a counter moves at every
        # poll, so that is within a poll interval of when it flowed.
        import_per_kwh, export_per_kwh = self._prices_at(wall)
        if channel == "charged":
            cost = energy_wh / 1000 * import_per_kwh
            for total in totals:
                total.charged_wh += energy_wh
                total.import_cost += cost
        else:
            value = energy_wh / 1000 * export_per_kwh
            for total in totals:
                total.discharged_wh += energy_wh
                total.export_value += value
            in_event = self._in_peak_event
            if self._session is not None and in_event is not None and in_event(wall):
                self._session.peak_event_wh += energy_wh
        self._pending.days.add(self._day)
        self._dirty = True

    def _prices_at(self, wall: dt.datetime) -> tuple[float, float]:
        """(import, export) per kWh at ``wall``. A provider that fails or answers a price that is
        not a finite number gets the flat tariff's, logged once per spell: the energy is credited
        (its counter base has moved on already) and money never becomes NaN."""
        try:
            prices = self._prices(wall)
            problem = "" if all(math.isfinite(p) for p in prices) else f"answered {prices}"
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            prices, problem = (math.nan, math.nan), f"failed: {exc!r}"
        if not problem:
            self._price_problem = None
            return prices
        flat = self._flat_prices(wall)
        if self._price_problem is None:
            log.error(
                "ledger price provider gave no price; the fallback prices are used until it does",
                at=rfc3339(wall),
                problem=problem,
                used=str(flat),
            )
        self._price_problem = problem
        return flat

    def _enter_day(self, wall: dt.datetime) -> None:
        key = wall.date().isoformat()  # ``wall`` is in the site's time zone: the local day
        if key == self._day:
            return
        if self._day is not None:
            self._pending.now = True  # a day's total is durable at its end
        self._day = key
        if key not in self._days:
            try:
                row = self._conn.execute(
                    "SELECT charged_wh, discharged_wh, import_cost, export_value"
                    " FROM ledger_days WHERE day = ?",
                    (key,),
                ).fetchone()
            except sqlite3.Error as exc:
                self._day = None
                raise LedgerError(f"ledger: cannot read day {key}: {exc}") from exc
            self._days[key] = _Day() if row is None else _Day(*(float(v) for v in row))
        # Only the days still to be written stay in memory.
        for old in [d for d in self._days if d != key and d not in self._pending.days]:
            del self._days[old]

    # -- sessions and trips ---------------------------------------------------------------------

    def _track_session(self, vehicle: VehicleState | None, now_s: float, wall: dt.datetime) -> None:
        present = vehicle_present(vehicle)
        session = self._session
        if session is not None and vehicle is not None and present:
            if same_vehicle(session.vehicle_id, vehicle.identity):
                self._follow(session, vehicle, wall)
            else:
                self._close(session, rfc3339(wall), f"another vehicle ({vehicle.identity})")
        elif session is not None and present is False:
            if session.confirmed:
                self._close(session, rfc3339(wall), "unplugged")
                return
            # Resumed after a restart and never seen connected since: the car may have left
            # while the controller was down, or the link may not have read the lines yet.
            if session.unplugged_since_s is None:
                session.unplugged_since_s = now_s
            if now_s - session.unplugged_since_s >= RESUME_GRACE_S:
                # The last moment it was known connected is its last commit.
                self._close(session, session.updated_at, "unplugged while the controller was down")
            return
        if self._session is None and vehicle is not None and present:
            self._open(vehicle, wall)

    def _follow(self, session: _Session, vehicle: VehicleState, wall: dt.datetime) -> None:
        """The open session's vehicle is (still) connected: keep its identity and SoC."""
        if session.vehicle_id is None and vehicle.identity is not None:
            session.vehicle_id = vehicle.identity
            self._pending.now = True
        if (
            session.departure_at is not None
            and session.soc_departure_pct is None
            and dt.datetime.fromisoformat(session.departure_at) <= wall
        ):
            # The departure came with the car still here: its SoC then is the one promised.
            session.soc_departure_pct = (
                session.soc_end_pct if session.soc_end_pct is not None else vehicle.soc_pct
            )
            self._dirty = True
        if vehicle.soc_pct is not None and session.soc_end_pct != vehicle.soc_pct:
            session.soc_end_pct = vehicle.soc_pct
            if session.soc_start_pct is None:
                session.soc_start_pct = vehicle.soc_pct
            extend_trace(session.soc_trace, vehicle.soc_pct)
            self._dirty = True
        if not session.confirmed:
            log.info("ledger session resumed", session_id=session.session_id)
            self._pending.now = True
        session.confirmed = True
        session.unplugged_since_s = None

    def _open(self, vehicle: VehicleState, wall: dt.datetime) -> None:
        at = rfc3339(wall)
        departure = self._departure
        self._session = _Session(
            session_id=str(uuid.uuid4()),
            protocol=vehicle.protocol,
            vehicle_id=vehicle.identity,
            started_at=at,
            soc_start_pct=vehicle.soc_pct,
            soc_end_pct=vehicle.soc_pct,
            currency=self._tariff.currency,
            energy_source="inverter_counters"
            if all(m.counter_seen for m in self._meters.values())
            else "integrated_power",
            updated_at=at,
            soc_trace=[] if vehicle.soc_pct is None else [vehicle.soc_pct],
            departure_at=None
            if departure is None
            else rfc3339(departure_after(wall, departure.time_local)),
            target_soc_pct=None if departure is None else departure.target_soc_pct,
        )
        self._pending.now = True
        self._dirty = True
        log.info(
            "ledger session opened",
            session_id=self._session.session_id,
            vehicle_id=vehicle.identity,
            protocol=vehicle.protocol,
        )

    def _close(self, session: _Session, ended_at: str, reason: str) -> None:
        session.ended_at = ended_at
        session.end_reason = reason
        self._pending.closed.append(session)
        self._pending.now = True
        self._session = None
        log.info(
            "ledger session closed",
            session_id=session.session_id,
            reason=reason,
            charged_kwh=round(session.charged_wh / 1000, 3),
            discharged_kwh=round(session.discharged_wh / 1000, 3),
        )
        self._make_receipt(session)

    def _make_receipt(self, session: _Session) -> None:
        """The closed session's receipt, its wear cost from the SoC turning points; the owner's
        line is logged. Figures that cannot make a receipt (a wall clock stepped back past the
        plug-in) leave it out, logged: the session row and its body are kept without it."""
        assert session.ended_at is not None  # noqa: S101  set by the caller
        try:
            # A wear model refuses a trace it cannot price with a ValueError
            # (economics/wear.py WearParameterError); the receipt is still made.
            wear = float(self._wear_cost(tuple(session.soc_trace)))
        except ValueError as exc:
            wear, problem = math.nan, str(exc)
        else:
            problem = f"{wear!r}, not a cost >= 0"
        if not (math.isfinite(wear) and wear >= 0):
            log.error(
                "ledger wear model gave no cost; the receipt counts no wear",
                session_id=session.session_id,
                problem=problem,
            )
            wear = 0.0
        session.wear_cost = wear
        try:
            departure = session.departure_at
            session.receipt = Receipt(
                session_id=session.session_id,
                currency=session.currency,
                plugged_in_at=dt.datetime.fromisoformat(session.started_at),
                ended_at=dt.datetime.fromisoformat(session.ended_at),
                charged_kwh=session.charged_wh / 1000,
                discharged_kwh=session.discharged_wh / 1000,
                import_cost=session.import_cost,
                export_revenue=session.export_value,
                wear_cost=wear,
                soc_at_plug_in_pct=session.soc_start_pct,
                soc_at_end_pct=session.soc_end_pct,
                soc_at_departure_pct=session.soc_departure_pct,
                target_soc_pct=session.target_soc_pct,
                departure_at=None if departure is None else dt.datetime.fromisoformat(departure),
                refusals=tuple(
                    Refusal(rule, count, example)
                    for rule, (count, example) in sorted(session.refusals.items())
                ),
                peak_event_kwh=session.peak_event_wh / 1000,
            )
        except ValueError as exc:
            log.error(
                "ledger session receipt not made", session_id=session.session_id, error=str(exc)
            )
            return
        log.info(
            "ledger session receipt",
            session_id=session.session_id,
            owner_message=owner_message(session.receipt),
            net=round(session.receipt.net, 2),
            wear_cost=round(wear, 2),
            currency=session.currency,
            target_met=session.receipt.target_met,
            refusals=session.receipt.refusal_count,
        )

    def _track_refusals(self, vehicle: VehicleState | None, report: ControlReport) -> None:
        """Count the discharges the core refused or reduced, once per episode and rule.

        Only while the car is in energy transfer: before it (handshake, contactors) and after it
        no power can flow whatever is asked, and every session would report its start-up."""
        session = self._session
        if session is None or not session.confirmed:
            return
        transferring = vehicle is not None and vehicle.phase is VehiclePhase.ENERGY_TRANSFER
        refused = refused_discharge(report.output) if transferring else None
        if refused is None:
            session.refusing = None
            return
        rule, binding = refused
        if rule == session.refusing:
            return  # the same episode goes on
        session.refusing = rule
        count, example = session.refusals.get(rule, (0, binding))
        session.refusals[rule] = (count + 1, example)
        self._dirty = True

    def _track_trips(self, faults: tuple[str, ...], wall: dt.datetime) -> None:
        causes = set(faults)
        at = rfc3339(wall)
        for cause in sorted(causes - self._trips.keys()):
            trip = _Trip(at, cause, self.open_session_id)
            self._trips[cause] = trip
            self._pending.trips.append(trip)
            self._pending.now = True
        for cause in sorted(self._trips.keys() - causes):
            trip = self._trips.pop(cause)
            trip.cleared_at = at
            if trip not in self._pending.trips:
                self._pending.trips.append(trip)
            self._pending.now = True

    # -- storage --------------------------------------------------------------------------------

    def _has_rows_pending(self) -> bool:
        p = self._pending
        return bool(p.closed or p.trips or p.counter_notes or p.audit or p.days)

    def _commit(self, wall: dt.datetime, now_s: float | None) -> None:
        at = rfc3339(wall)
        inserted: list[tuple[_Trip, int]] = []
        outbox_ids: list[tuple[_Session, str | None]] = []
        try:
            with db.transaction(self._conn) as conn:
                self._write_meters(conn, at)
                for key in sorted(self._pending.days):
                    self._write_day(conn, key, self._days[key])
                if self._session is not None:
                    if self._session.confirmed:  # updated_at: last known connected
                        self._session.updated_at = at
                    self._write_session(conn, self._session)
                for session in self._pending.closed:
                    self._write_session(conn, session)
                    outbox_id = None
                    if self._outbox is not None:
                        # Same transaction as the session row: a power cut keeps both or neither.
                        outbox_id = self._outbox.insert("session", session.body())
                        conn.execute(
                            "UPDATE ledger_sessions SET outbox_id = ? WHERE session_id = ?",
                            (outbox_id, session.session_id),
                        )
                    outbox_ids.append((session, outbox_id))
                for trip in self._pending.trips:
                    row_id = self._write_trip(conn, trip)
                    if row_id is not None:
                        inserted.append((trip, row_id))
                self._write_notes_and_audit(conn)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: commit failed, retried at the next one: {exc}") from exc
        for trip, row_id in inserted:
            trip.row_id = row_id
        for session, outbox_id in outbox_ids:
            if outbox_id is None:
                log.warning(
                    "ledger session closed without an outbox; not sent to the aggregator",
                    session_id=session.session_id,
                )
        self._pending = _Pending(integrated_wh=0.0)
        self._dirty = False
        self._last_commit_s = now_s
        if self._outbox is not None:
            self._outbox.mark_synced()  # the WAL is synced up to this commit: telemetry too

    def _write_meters(self, conn: sqlite3.Connection, at: str) -> None:
        for channel, meter in self._meters.items():
            conn.execute(
                "INSERT INTO ledger_meters (channel, base_wh, total_wh, counter_seen, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET"
                " base_wh = excluded.base_wh, total_wh = excluded.total_wh,"
                " counter_seen = excluded.counter_seen, updated_at = excluded.updated_at",
                (channel, meter.base_wh, meter.total_wh, int(meter.counter_seen), at),
            )

    def _write_day(self, conn: sqlite3.Connection, key: str, day: _Day) -> None:
        conn.execute(
            "INSERT INTO ledger_days (day, charged_wh, discharged_wh, import_cost, export_value,"
            " currency) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (day) DO UPDATE SET"
            " charged_wh = excluded.charged_wh, discharged_wh = excluded.discharged_wh,"
            " import_cost = excluded.import_cost, export_value = excluded.export_value,"
            " currency = excluded.currency",
            (
                key,
                day.charged_wh,
                day.discharged_wh,
                day.import_cost,
                day.export_value,
                self._tariff.currency,
            ),
        )

    def _write_session(self, conn: sqlite3.Connection, s: _Session) -> None:
        conn.execute(
            "INSERT INTO ledger_sessions (session_id, protocol, vehicle_id, started_at, ended_at,"
            " updated_at, soc_start_pct, soc_end_pct, charged_wh, discharged_wh, import_cost,"
            " export_value, currency, energy_source, end_reason, peak_event_wh, wear_cost,"
            " progress, receipt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (session_id) DO UPDATE SET vehicle_id = excluded.vehicle_id,"
            " ended_at = excluded.ended_at, updated_at = excluded.updated_at,"
            " soc_start_pct = excluded.soc_start_pct, soc_end_pct = excluded.soc_end_pct,"
            " charged_wh = excluded.charged_wh, discharged_wh = excluded.discharged_wh,"
            " import_cost = excluded.import_cost, export_value = excluded.export_value,"
            " energy_source = excluded.energy_source, end_reason = excluded.end_reason,"
            " peak_event_wh = excluded.peak_event_wh, wear_cost = excluded.wear_cost,"
            " progress = excluded.progress, receipt = excluded.receipt",
            (
                s.session_id,
                s.protocol,
                s.vehicle_id,
                s.started_at,
                s.ended_at,
                s.updated_at,
                s.soc_start_pct,
                s.soc_end_pct,
                s.charged_wh,
                s.discharged_wh,
                s.import_cost,
                s.export_value,
                s.currency,
                s.energy_source,
                s.end_reason,
                s.peak_event_wh,
                s.wear_cost,
                s.progress(),
                None if s.receipt is None else json.dumps(s.receipt.to_json(), allow_nan=False),
            ),
        )

    def _write_trip(self, conn: sqlite3.Connection, trip: _Trip) -> int | None:
        if trip.row_id is not None:
            conn.execute(
                "UPDATE ledger_trips SET cleared_at = ? WHERE id = ?",
                (trip.cleared_at, trip.row_id),
            )
            return None
        cursor = conn.execute(
            "INSERT INTO ledger_trips (at, cause, session_id, cleared_at) VALUES (?, ?, ?, ?)",
            (trip.at, trip.cause, trip.session_id, trip.cleared_at),
        )
        return cursor.lastrowid

    def _write_notes_and_audit(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO ledger_counter_events (at, channel, event, old_base_wh, raw_wh,"
            " credited_wh, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (n.at, n.channel, str(n.event), n.old_base_wh, n.raw_wh, n.credited_wh, n.reason)
                for n in self._pending.counter_notes
            ],
        )
        conn.executemany(
            "INSERT INTO ledger_audit (at, setpoint_id, action, requested_w, applied_w, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (rfc3339(a.at), a.setpoint_id, a.action, a.requested_w, a.applied_w, a.reason)
                for a in self._pending.audit
            ],
        )

    def _create_schema(self) -> None:
        version = db.schema_version(self._conn, COMPONENT)
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger: written by a newer controller (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); refusing to write to it"
            )
        if version == SCHEMA_VERSION:
            return
        with db.transaction(self._conn) as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # An older file's table was kept by CREATE TABLE IF NOT EXISTS: add what it lacks.
            present = {row[1] for row in conn.execute("PRAGMA table_info(ledger_sessions)")}
            for name, declaration in _SESSION_COLUMNS_SINCE_V1:
                if name not in present:
                    conn.execute(f"ALTER TABLE ledger_sessions ADD COLUMN {name} {declaration}")
            db.set_schema_version(conn, COMPONENT, SCHEMA_VERSION)

    def _restore(self) -> None:
        """The committed state: counter bases and totals, the open session, open trips."""
        conn = self._conn
        for row in conn.execute(
            "SELECT channel, base_wh, total_wh, counter_seen, updated_at FROM ledger_meters"
        ):
            if row["channel"] in self._meters:
                base = row["base_wh"]
                self._meters[row["channel"]] = _Meter(
                    base_wh=None if base is None else float(base),
                    total_wh=float(row["total_wh"]),
                    counter_seen=bool(row["counter_seen"]),
                )
                restored = dt.datetime.fromisoformat(row["updated_at"])
                if self._restored_at is None or restored > self._restored_at:
                    self._restored_at = restored
        rows = conn.execute(
            "SELECT * FROM ledger_sessions WHERE ended_at IS NULL ORDER BY started_at DESC"
        ).fetchall()
        for index, row in enumerate(rows):
            session = _Session(
                session_id=row["session_id"],
                protocol=row["protocol"],
                vehicle_id=row["vehicle_id"],
                started_at=row["started_at"],
                soc_start_pct=row["soc_start_pct"],
                soc_end_pct=row["soc_end_pct"],
                charged_wh=float(row["charged_wh"]),
                discharged_wh=float(row["discharged_wh"]),
                import_cost=float(row["import_cost"]),
                export_value=float(row["export_value"]),
                currency=row["currency"],
                energy_source=row["energy_source"],
                updated_at=row["updated_at"],
                confirmed=False,
                peak_event_wh=float(row["peak_event_wh"]),
            )
            session.restore_progress(row["progress"])
            if index == 0:
                self._session = session
                log.info(
                    "ledger session found open; resumes if the vehicle is still there",
                    session_id=session.session_id,
                )
            else:  # never written by this code; closed so that it cannot stay open forever
                session.ended_at = session.updated_at
                session.end_reason = "superseded by a newer open session"
                self._pending.closed.append(session)
                self._pending.now = True
                self._make_receipt(session)
        for row in conn.execute(
            "SELECT id, at, cause, session_id FROM ledger_trips WHERE cleared_at IS NULL"
        ):
            self._trips[row["cause"]] = _Trip(
                row["at"], row["cause"], row["session_id"], row_id=int(row["id"])
            )

    # -- prices pushed by the aggregator (issue 19) -----------------------------------------------

    def _create_price_table(self) -> None:
        # Not in _SCHEMA: that runs only for a database below SCHEMA_VERSION, and this table
        # must also appear in ledgers created before it (IF NOT EXISTS makes it idempotent).
        self._conn.execute(_PRICE_TABLE)

    def record_price_message(
        self, *, received_at: dt.datetime, topic: str, message_id: str, body: bytes, ack: bytes
    ) -> None:
        """Keep one accepted price message (its body as received and the ack it got), committed
        at once (the aggregator link's ``PriceStore``; on the storage thread)."""
        try:
            with db.transaction(self._conn) as conn:
                conn.execute(
                    "INSERT INTO ledger_price_messages (received_at, topic, message_id, body, ack)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        rfc3339(received_at),
                        topic,
                        message_id,
                        body.decode("utf-8", errors="replace"),
                        ack.decode("utf-8", errors="replace"),
                    ),
                )
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: price message {message_id!r} not written: {exc}") from exc

    def price_messages(self, limit: int = 1000) -> list[PriceMessageRow]:
        """The last ``limit`` accepted price messages, oldest first (audit, and the price book
        rebuilt on start)."""
        try:
            rows = self._conn.execute(
                "SELECT id, received_at, topic, message_id, body, ack FROM ledger_price_messages"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger: cannot read the price messages: {exc}") from exc
        return [
            PriceMessageRow(
                row_id=int(row["id"]),
                received_at=row["received_at"],
                topic=row["topic"],
                message_id=row["message_id"],
                body=row["body"],
                ack=row["ack"],
            )
            for row in reversed(rows)
        ]


_PRICE_TABLE = """
CREATE TABLE IF NOT EXISTS ledger_price_messages (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,         -- RFC 3339, the charger's clock
    topic TEXT NOT NULL,               -- 'price_schedule' or 'price_event'
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,                -- the payload as received (JSON)
    ack TEXT NOT NULL                  -- the ack published for it (JSON)
)
"""


@dataclass(frozen=True, slots=True)
class PriceMessageRow:
    """One accepted price message as the ledger keeps it."""

    row_id: int
    received_at: str  # RFC 3339
    topic: str
    message_id: str
    body: str  # JSON, as received
    ack: str  # JSON, as published


def _tariff_prices(tariff: EconomicTariff) -> PriceProvider:
    """The owner's tariff as a price provider: the band in force at each moment."""

    def prices(wall: dt.datetime) -> tuple[float, float]:
        slot = tariff.price_at(wall)
        return slot.import_per_kwh, slot.export_per_kwh

    return prices
