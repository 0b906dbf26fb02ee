"""Receipts in the ledger: prices in force, refusal episodes, the departure target, the SoC trace
for wear, the receipt in the row and the outbox body, an old file migrated, the simulated clock."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.messages import SessionMessage
from controller.core.policy import Departure
from controller.core.snapshots import PowerCommand, VehiclePhase
from controller.economics.receipt import Receipt, Refusal
from controller.ledger.accounting import extend_trace, refused_discharge
from controller.ledger.ledger import SCHEMA_VERSION, Ledger, PeakEvent
from controller.ledger.report import read_report
from controller.links import ControlReport
from controller.storage import db
from controller.storage.db import open_database
from tests.ledger.support import START, TARIFF, TableOutbox, inverter, read, report, vehicle

FLOOR = "soc_floor discharge <= 0 W (SoC 41 % at the 40 % floor)"
RESERVE = "departure_reserve discharge <= 0 W (80 % by 07:30 needs 12.0 kWh)"


def cycle(
    at_s: float,
    *,
    requested_w: float = 0.0,
    command_w: float | None = None,
    binding: str | None = None,
    start: dt.datetime = START,
) -> ControlReport:
    """A control report whose decision asked ``requested_w`` and commanded ``command_w``."""
    base = report(at_s, start=start)
    output = dataclasses.replace(
        base.output,
        requested_w=requested_w,
        command=PowerCommand(requested_w if command_w is None else command_w, enable=True),
        binding_limit=binding,
    )
    return dataclasses.replace(base, output=output)


def ledger_on(
    path: Path,
    *,
    prices: object = None,
    wear: object = None,
    departure: Departure | None = None,
    time_factor: float = 1.0,
    in_peak_event: PeakEvent | None = None,
) -> tuple[Ledger, TableOutbox]:
    conn = open_database(path)
    outbox = TableOutbox(conn)
    kwargs: dict[str, object] = {}
    if prices is not None:
        kwargs["prices"] = prices
    if wear is not None:
        kwargs["wear_cost"] = wear
    ledger = Ledger(
        conn,
        tariff=TARIFF,
        max_power_w=7400.0,
        outbox=outbox,
        departure=departure,
        time_factor=time_factor,
        in_peak_event=in_peak_event,
        **kwargs,  # type: ignore[arg-type]
    )
    return ledger, outbox


def stored_receipt(path: Path) -> Receipt:
    rows = read(path, "SELECT receipt FROM ledger_sessions WHERE receipt IS NOT NULL")
    assert len(rows) == 1
    return Receipt.from_json(json.loads(rows[0]["receipt"]))


def sent_body(path: Path) -> dict[str, object]:
    rows = read(path, "SELECT body FROM test_outbox WHERE kind = 'session'")
    assert len(rows) == 1
    body = ast.literal_eval(rows[0]["body"])
    assert isinstance(body, dict)
    return body


def test_each_increment_is_priced_at_the_price_in_force_when_it_moved(tmp_path: Path) -> None:
    """Peak at 0.80 until 18:40, valley at 0.10 after: 2 kWh in each costs 1.60 + 0.20."""
    path = tmp_path / "ledger.sqlite"
    switch = START + dt.timedelta(minutes=40)

    def prices(wall: dt.datetime) -> tuple[float, float]:
        return (0.80, 1.20) if wall < switch else (0.10, 0.05)

    ledger, _ = ledger_on(path, prices=prices)
    ledger.record(vehicle(soc_pct=40), inverter(0, 0), report(0))
    ledger.record(vehicle(soc_pct=42), inverter(2000, 0), report(1200))  # 2 kWh at the peak
    ledger.record(vehicle(soc_pct=44), inverter(2000, 1000), report(2000))  # 1 kWh out at 1.20
    ledger.record(vehicle(soc_pct=46), inverter(4000, 1000), report(3200))  # 2 kWh, valley
    ledger.record(vehicle(soc_pct=45), inverter(4000, 3000), report(4400))  # 2 kWh out at 0.05
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(4000, 3000), report(4401))
    receipt = stored_receipt(path)
    assert math.isclose(receipt.import_cost, 2 * 0.80 + 2 * 0.10)
    assert math.isclose(receipt.export_revenue, 1 * 1.20 + 2 * 0.05)
    day = read(path, "SELECT import_cost, export_value FROM ledger_days")[0]
    assert math.isclose(day["import_cost"], 1.80)
    assert math.isclose(day["export_value"], 1.30)


def no_price(_wall: dt.datetime) -> tuple[float, float]:
    raise LookupError("no price schedule covers this moment")


@pytest.mark.parametrize("prices", [lambda _wall: (math.nan, 0.3), no_price])
def test_a_provider_without_a_price_falls_back_to_the_flat_tariff(
    tmp_path: Path, prices: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN or a failure: the energy is still credited, at the flat tariff, logged once."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path, prices=prices)
    ledger.record(vehicle(), inverter(0, 0), report(0))
    ledger.record(vehicle(), inverter(500, 0), report(300))
    ledger.record(vehicle(), inverter(1000, 0), report(600))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(1000, 0), report(601))
    receipt = stored_receipt(path)
    assert math.isclose(receipt.charged_kwh, 1.0)
    assert math.isclose(receipt.import_cost, TARIFF.import_price_per_kwh)
    assert capsys.readouterr().out.count("ledger price provider gave no price") == 1


def test_refusals_count_once_per_episode_and_rule(tmp_path: Path) -> None:
    """Five floor cycles are one episode; a free cycle ends it; ramps, charges and cycles
    outside energy transfer are not refusals."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path)
    ledger.record(vehicle(), inverter(0, 0), cycle(0))
    t = 0.0
    plan: list[dict[str, object]] = [
        *[{"requested_w": -5000, "command_w": 0, "binding": FLOOR}] * 5,  # episode 1 (floor)
        {"requested_w": -5000},  # free: ends it
        *[{"requested_w": -5000, "command_w": -2000, "binding": FLOOR}] * 3,  # episode 2 (reduced)
        *[{"requested_w": -5000, "command_w": 0, "binding": RESERVE}] * 2,  # reserve episode
        {"requested_w": -5000, "command_w": -1000},  # the ramp alone: no binding limit
        {"requested_w": 3000, "command_w": 0, "binding": FLOOR},  # a charge cut: not a refusal
        {"requested_w": -5000, "command_w": -5000, "binding": FLOOR},  # binding, not cut
    ]
    for step in plan:
        t += 0.1
        ledger.record(vehicle(), inverter(0, 0), cycle(t, **step))  # type: ignore[arg-type]
    # Before and after energy transfer no power can flow: a handshake is not a refusal.
    no_session = "no_session discharge <= 0 W (vehicle session handshake)"
    for phase in (VehiclePhase.HANDSHAKE, VehiclePhase.ENDED):
        t += 0.1
        refused = cycle(t, requested_w=-5000, command_w=0, binding=no_session)
        ledger.record(vehicle(phase), inverter(0, 0), refused)
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), cycle(t + 0.1))
    receipt = stored_receipt(path)
    assert receipt.refusals == (
        Refusal("departure_reserve", 1, RESERVE),
        Refusal("soc_floor", 2, FLOOR),
    )
    body = sent_body(path)
    assert isinstance(body["receipt"], dict)
    assert body["receipt"]["refusals"] == [
        {"reason": "departure_reserve", "count": 1, "example": RESERVE},
        {"reason": "soc_floor", "count": 2, "example": FLOOR},
    ]


def test_refused_discharge_reads_the_binding_rule() -> None:
    """A refusal is keyed by the binding limit's rule; a disabled stage counts as 0 W."""
    output = cycle(0, requested_w=-4000, command_w=-4000, binding=FLOOR).output
    assert refused_discharge(output) is None
    disabled = dataclasses.replace(output, command=PowerCommand(-4000, enable=False))
    assert refused_discharge(disabled) == ("soc_floor", FLOOR)


def test_the_receipt_is_in_the_row_the_body_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Closing writes the receipt (SoC in and out, wear from the trace) and logs the message."""
    path = tmp_path / "ledger.sqlite"
    traces: list[tuple[float, ...]] = []

    def wear(trace: Sequence[float]) -> float:
        traces.append(tuple(trace))
        return 0.05

    ledger, _ = ledger_on(path, wear=wear)
    socs = [60, 61, 62, 61.8, 60, 58, 59, 61, 63]  # up, down, up: turning points 62 and 58
    ledger.record(vehicle(soc_pct=socs[0]), inverter(0, 0), report(0))
    for i, soc in enumerate(socs[1:], start=1):
        ledger.record(vehicle(soc_pct=soc), inverter(i * 100, i * 50), report(i * 60))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(800, 400), report(600))
    assert traces == [(60.0, 62.0, 58.0, 63.0)]
    receipt = stored_receipt(path)
    assert receipt.soc_at_plug_in_pct == 60.0
    assert receipt.soc_at_end_pct == 63.0
    assert receipt.wear_cost == 0.05
    assert math.isclose(receipt.charged_kwh, 0.8)
    assert math.isclose(receipt.net, 0.4 * 0.30 - 0.8 * 0.25 - 0.05)
    assert receipt.target_met is None
    row = read(path, "SELECT wear_cost FROM ledger_sessions")[0]
    assert row["wear_cost"] == 0.05
    body = sent_body(path)
    assert isinstance(body["receipt"], dict)
    assert body["receipt"]["owner_message"] == "Charged for €0.13 tonight including €0.05 " + (
        "battery wear; 63 % at 18:10"
    )
    assert "ledger session receipt" in capsys.readouterr().out


@pytest.mark.parametrize("answer", [math.nan, -1.0, ValueError("SoC 120 % outside 0..100")])
def test_a_wear_model_that_gives_no_cost_counts_no_wear(
    tmp_path: Path, answer: float | ValueError, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN, a negative cost or a refused trace: the receipt is made with no wear, logged."""

    def wear(_trace: Sequence[float]) -> float:
        if isinstance(answer, ValueError):
            raise answer
        return answer

    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path, wear=wear)
    ledger.record(vehicle(soc_pct=50), inverter(0, 0), report(0))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(1))
    assert stored_receipt(path).wear_cost == 0.0
    assert "ledger wear model gave no cost" in capsys.readouterr().out


def test_the_departure_soc_is_taken_when_the_departure_comes(tmp_path: Path) -> None:
    """Departure 18:05 with an 80 % target: the SoC then (78) is judged, not the later 85."""
    path = tmp_path / "ledger.sqlite"
    departure = Departure(dt.time(18, 5), target_soc_pct=80.0)
    ledger, _ = ledger_on(path, departure=departure)
    ledger.record(vehicle(soc_pct=70), inverter(0, 0), report(0))
    ledger.record(vehicle(soc_pct=78), inverter(0, 0), report(299))
    ledger.record(vehicle(soc_pct=79), inverter(0, 0), report(301))  # 18:05:01
    ledger.record(vehicle(soc_pct=85), inverter(0, 0), report(900))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(901))
    receipt = stored_receipt(path)
    assert receipt.departure_at == START + dt.timedelta(minutes=5)
    assert receipt.soc_at_departure_pct == 78.0
    assert receipt.target_met is False
    assert receipt.soc_at_end_pct == 85.0


def test_a_departure_before_the_plug_in_means_the_next_day(tmp_path: Path) -> None:
    """Plugged in at 18:00 with a 07:30 departure: judged at 07:30 the next morning."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path, departure=Departure(dt.time(7, 30), 80.0))
    ledger.record(vehicle(soc_pct=50), inverter(0, 0), report(0))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(60))
    receipt = stored_receipt(path)
    assert receipt.departure_at == dt.datetime(2026, 11, 24, 7, 30, tzinfo=START.tzinfo)
    assert receipt.soc_at_departure_pct is None  # left before it
    assert receipt.judged_soc == (50.0, START + dt.timedelta(seconds=60))
    assert receipt.target_met is None


def test_peak_event_export_is_counted(tmp_path: Path) -> None:
    """Energy exported while a peak event runs is the receipt's peak_event_kwh."""
    path = tmp_path / "ledger.sqlite"
    event_end = START + dt.timedelta(minutes=15)
    ledger, _ = ledger_on(path, in_peak_event=lambda wall: wall < event_end)
    ledger.record(vehicle(), inverter(0, 0), report(0))
    ledger.record(vehicle(), inverter(0, 1500), report(800))
    ledger.record(vehicle(), inverter(0, 2000), report(1200))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 2000), report(1201))
    receipt = stored_receipt(path)
    assert math.isclose(receipt.peak_event_kwh, 1.5)
    assert math.isclose(receipt.discharged_kwh, 2.0)


def test_receipt_progress_survives_a_restart(tmp_path: Path) -> None:
    """Refusals, the SoC trace and the departure SoC are committed with the open session."""
    path = tmp_path / "ledger.sqlite"
    departure = Departure(dt.time(18, 1), target_soc_pct=50.0)
    ledger, first_outbox = ledger_on(path, departure=departure)
    ledger.record(vehicle(soc_pct=50), inverter(0, 0), cycle(0))
    ledger.record(
        vehicle(soc_pct=55), inverter(0, 0), cycle(1, requested_w=-3000, command_w=0, binding=FLOOR)
    )
    ledger.record(vehicle(soc_pct=52), inverter(0, 0), cycle(61))
    ledger.flush()
    first_outbox.conn.close()  # the process dies here
    again, _ = ledger_on(path, departure=departure)
    again.record(vehicle(soc_pct=52), inverter(0, 0), cycle(62))
    again.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), cycle(63))
    receipt = stored_receipt(path)
    assert receipt.refusals == (Refusal("soc_floor", 1, FLOOR),)
    assert receipt.soc_at_departure_pct == 55.0
    assert receipt.target_met is True


def test_extend_trace_keeps_only_reversals_beyond_half_a_percent() -> None:
    """Noise below 0.5 % is no turning point; a monotone run is two points."""
    trace: list[float] = []
    for soc in [50, 50.2, 50.4, 51, 52, 51.7, 52.5, 53, 40, 40.4, 39.8, 60]:
        extend_trace(trace, soc)
    assert trace == [50, 53, 39.8, 60]
    flat: list[float] = []
    for soc in [50, 50.3, 50.1, 50.4]:
        extend_trace(flat, soc)
    assert flat == [50]


# -- the simulated clock ------------------------------------------------------------------------


def test_a_720x_clock_ledger_reports_the_plants_energy(tmp_path: Path) -> None:
    """At 720x a 3.6 kW discharge for 2 real seconds is 1.44 kWh in the simulated plant, while
    its inverter's whole-Wh counter (real time) rises 2 Wh: the ledger reports the plant's
    1.44 kWh, not 2 Wh, nor 2 counts x 720 read late."""
    path = tmp_path / "ledger.sqlite"
    rate = 720.0
    ledger, _ = ledger_on(path, time_factor=rate)
    plant_wh = 0.0
    real_wh = 0.0
    ledger.record(vehicle(), inverter(0, 0, power_w=0), report(0))
    for i in range(1, 21):  # one cycle every 0.1 s real for 2 s
        at_s = i / 10
        real_wh += 3600 * 0.1 / 3600
        plant_wh += 3600 * 0.1 * rate / 3600
        wall = START + dt.timedelta(seconds=at_s * rate)  # the simulated wall clock
        ledger.record(
            vehicle(),
            inverter(0, math.floor(real_wh), power_w=-3600, at_s=at_s),
            dataclasses.replace(report(at_s), wall=wall),
        )
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 2, at_s=2.1), report(2.1))
    ledger.flush()
    assert math.isclose(plant_wh, 1440.0)
    assert math.isclose(ledger.totals_wh()[1], plant_wh)
    receipt = stored_receipt(path)
    assert math.isclose(receipt.discharged_kwh, 1.44)
    assert math.isclose(receipt.export_revenue, 1.44 * TARIFF.export_price_per_kwh)


def test_a_720x_clock_scales_integrated_power_too(tmp_path: Path) -> None:
    """Without counters, 7.2 kW for 1 real second at 720x is the plant's 1.44 kWh."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path, time_factor=720.0)
    for i in range(11):  # 0 .. 1 s real, every 0.1 s
        at_s = i / 10
        ledger.record(vehicle(), inverter(None, None, power_w=7200, at_s=at_s), report(at_s))
    assert math.isclose(ledger.totals_wh()[0], 1440.0)


def test_a_real_charger_counts_as_before(tmp_path: Path) -> None:
    """Factor 1: a counter's 20 Wh are 20 Wh, whatever the measured power says."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path)
    ledger.record(vehicle(), inverter(0, 0, power_w=7000), report(0))
    ledger.record(vehicle(), inverter(20, 0, power_w=7000, at_s=10), report(10))
    assert ledger.totals_wh() == (20.0, 0.0)


def test_a_bad_time_factor_is_refused() -> None:
    """The factor is the simulated clock's rate: finite and above 0."""
    conn = sqlite3.connect(":memory:")
    with pytest.raises(ValueError, match="time_factor"):
        Ledger(conn, tariff=TARIFF, max_power_w=7400.0, time_factor=math.nan)


# -- an old file ---------------------------------------------------------------------------------

# ledger_sessions and ledger_meters as schema version 1 wrote them (before receipts).
V1_SESSIONS = """
CREATE TABLE ledger_meters (
    channel TEXT PRIMARY KEY, base_wh REAL, total_wh REAL NOT NULL,
    counter_seen INTEGER NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE ledger_sessions (
    session_id TEXT PRIMARY KEY, protocol TEXT NOT NULL, vehicle_id TEXT,
    started_at TEXT NOT NULL, ended_at TEXT, updated_at TEXT NOT NULL,
    soc_start_pct REAL, soc_end_pct REAL, charged_wh REAL NOT NULL,
    discharged_wh REAL NOT NULL, import_cost REAL NOT NULL, export_value REAL NOT NULL,
    currency TEXT NOT NULL, energy_source TEXT NOT NULL, end_reason TEXT, outbox_id TEXT
);
CREATE INDEX ledger_sessions_open ON ledger_sessions (ended_at);
CREATE TABLE ledger_days (
    day TEXT PRIMARY KEY, charged_wh REAL NOT NULL, discharged_wh REAL NOT NULL,
    import_cost REAL NOT NULL, export_value REAL NOT NULL, currency TEXT NOT NULL
);
CREATE TABLE ledger_trips (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, cause TEXT NOT NULL, session_id TEXT,
    cleared_at TEXT
);
CREATE TABLE ledger_audit (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, setpoint_id TEXT, action TEXT NOT NULL,
    requested_w REAL, applied_w REAL, reason TEXT
);
CREATE TABLE ledger_counter_events (
    id INTEGER PRIMARY KEY, at TEXT NOT NULL, channel TEXT NOT NULL, event TEXT NOT NULL,
    old_base_wh REAL, raw_wh REAL, credited_wh REAL NOT NULL, reason TEXT NOT NULL
);
"""


def old_ledger(path: Path) -> None:
    """A field charger's file: schema 1, a closed session and one still open at 18:00."""
    conn = open_database(path)
    with db.transaction(conn):
        for statement in V1_SESSIONS.split(";"):
            if statement.strip():
                conn.execute(statement)
        db.set_schema_version(conn, "ledger", 1)
        at = START.isoformat(timespec="milliseconds")
        conn.execute(
            "INSERT INTO ledger_meters VALUES ('charged', 1000, 5000, 1, ?),"
            " ('discharged', 0, 0, 1, ?)",
            (at, at),
        )
        conn.execute(
            "INSERT INTO ledger_sessions VALUES ('old', 'chademo', 'VIN', ?, ?, ?, 30, 60,"
            " 4000, 0, 1.0, 0, 'EUR', 'inverter_counters', 'unplugged', NULL)",
            ("2026-11-22T18:00:00.000+01:00", "2026-11-23T07:00:00.000+01:00", at),
        )
        conn.execute(
            "INSERT INTO ledger_sessions VALUES ('open', 'gbt27930', NULL, ?, NULL, ?, 50, 50,"
            " 1000, 0, 0.25, 0, 'EUR', 'inverter_counters', NULL, NULL)",
            (at, at),
        )
    conn.close()


def test_an_old_schema_file_is_migrated_and_its_open_session_closes_with_a_receipt(
    tmp_path: Path,
) -> None:
    """Opening a version 1 file adds the receipt's columns; the open session resumes and its
    close writes a receipt; the old closed one stays as it was, without one."""
    path = tmp_path / "ledger.sqlite"
    old_ledger(path)
    ledger, outbox = ledger_on(path)
    conn = open_database(path, readonly=True)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(ledger_sessions)")}
    assert {"peak_event_wh", "wear_cost", "progress", "receipt"} <= columns
    assert db.schema_version(conn, "ledger") == SCHEMA_VERSION
    conn.close()
    ledger.record(vehicle(soc_pct=51), inverter(1000, 0), report(5))
    ledger.record(vehicle(soc_pct=53), inverter(2000, 0), report(600))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(2000, 0), report(601))
    receipt = stored_receipt(path)
    assert receipt.session_id == "open"
    assert math.isclose(receipt.charged_kwh, 2.0)  # 1 kWh before the upgrade, 1 kWh after
    assert receipt.soc_at_plug_in_pct == 50.0
    old = read(path, "SELECT receipt, peak_event_wh FROM ledger_sessions WHERE session_id='old'")
    assert old[0]["receipt"] is None
    assert old[0]["peak_event_wh"] == 0
    # Opening it again adds nothing more and keeps the receipt.
    outbox.conn.close()
    ledger_on(path)[1].conn.close()
    conn = open_database(path, readonly=True)
    again = [row[1] for row in conn.execute("PRAGMA table_info(ledger_sessions)")]
    conn.close()
    assert sorted(again) == sorted(columns)
    assert stored_receipt(path) == receipt


def test_an_old_file_reads_without_migration(tmp_path: Path) -> None:
    """``v2g-controller ledger`` on a copy of an old file (read-only): sessions without receipts."""
    path = tmp_path / "ledger.sqlite"
    old_ledger(path)
    conn = open_database(path, readonly=True)
    try:
        report_ = read_report(conn)
    finally:
        conn.close()
    assert [s.session_id for s in report_.sessions] == ["old", "open"]
    assert all(s.receipt is None for s in report_.sessions)


# -- the aggregator's session topic ---------------------------------------------------------------


def test_the_session_payload_carries_the_receipt_and_fits_its_schema(tmp_path: Path) -> None:
    """Through the real store-and-forward outbox: the published 'session' payload has the receipt
    with the owner's line, and is a valid session message (the model the schema is made from)."""
    path = tmp_path / "ledger.sqlite"
    conn = open_database(path)
    durable = DurableOutbox(conn)
    ledger = Ledger(
        conn,
        tariff=TARIFF,
        max_power_w=7400.0,
        outbox=durable,
        departure=Departure(dt.time(18, 30), 55.0),
        wear_cost=lambda trace: 0.02 * len(trace),
    )
    ledger.record(vehicle(soc_pct=50), inverter(0, 0), cycle(0))
    ledger.record(
        vehicle(soc_pct=50), inverter(0, 0), cycle(1, requested_w=-3000, command_w=0, binding=FLOOR)
    )
    ledger.record(vehicle(soc_pct=56), inverter(2000, 0), cycle(1200))
    ledger.record(vehicle(soc_pct=56), inverter(2000, 0), cycle(1900))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(2000, 0), cycle(2000))
    records = [r for r in durable if r.kind == "session"]
    assert len(records) == 1
    payload = json.loads(records[0].payload())
    receipt = payload["receipt"]
    assert receipt["target_met"] is True
    assert receipt["refusals"] == [{"reason": "soc_floor", "count": 1, "example": FLOOR}]
    assert receipt["owner_message"] == (
        "Charged for €0.54 tonight including €0.04 battery wear; 56 % at 18:30"
    )
    assert SessionMessage.model_validate_json(records[0].payload()).receipt is not None


def test_a_clock_stepped_back_past_the_plug_in_leaves_the_receipt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An end before the start cannot be a receipt: the row and body go without one, logged."""
    path = tmp_path / "ledger.sqlite"
    ledger, _ = ledger_on(path)
    ledger.record(vehicle(), inverter(0, 0), report(0))
    earlier = START - dt.timedelta(hours=1)
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(0, 0), report(1, start=earlier))
    row = read(path, "SELECT ended_at, receipt FROM ledger_sessions")[0]
    assert row["ended_at"] is not None
    assert row["receipt"] is None
    assert "receipt" not in sent_body(path)
    assert "ledger session receipt not made" in capsys.readouterr().out
