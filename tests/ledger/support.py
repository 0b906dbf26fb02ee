"""Builders for ledger tests: snapshots, control reports and a recording outbox."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    VehiclePhase,
    VehicleState,
)
from controller.ledger.accounting import Tariff
from controller.ledger.ledger import Ledger, OutboxWriter
from controller.links import ControlOutput, ControlReport
from controller.storage.db import open_database

TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")
START = dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ)
TARIFF = Tariff("EUR", import_price_per_kwh=0.25, export_price_per_kwh=0.30)
VIN = "LSIMULATEDV2G0001"


class TableOutbox:
    """An outbox that writes to its own table on the ledger's connection, without committing."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("CREATE TABLE IF NOT EXISTS test_outbox (id TEXT, kind TEXT, body TEXT)")
        self.fail = False

    def insert(self, kind: str, body: dict[str, Any]) -> str:
        if self.fail:
            raise sqlite3.OperationalError("outbox refused")
        row_id = str(uuid.uuid4())
        self.conn.execute("INSERT INTO test_outbox VALUES (?, ?, ?)", (row_id, kind, repr(body)))
        return row_id

    def mark_synced(self) -> None:
        pass


def make_ledger(
    path: Path, *, outbox: OutboxWriter | None = None, commit_interval_s: float = 30.0
) -> Ledger:
    return Ledger(
        open_database(path),
        tariff=TARIFF,
        max_power_w=7400.0,
        commit_interval_s=commit_interval_s,
        outbox=outbox,
    )


def vehicle(
    phase: VehiclePhase = VehiclePhase.ENERGY_TRANSFER,
    *,
    soc_pct: float | None = 50.0,
    identity: str | None = VIN,
) -> VehicleState:
    return VehicleState(
        observed_at_s=0.0, phase=phase, protocol="gbt27930", soc_pct=soc_pct, identity=identity
    )


def inverter(
    charged_wh: float | None,
    discharged_wh: float | None,
    *,
    power_w: float = 0.0,
    at_s: float = 0.0,
) -> InverterState:
    return InverterState(
        observed_at_s=at_s,
        reachable=True,
        measured_power_w=power_w,
        energy_charged_wh=charged_wh,
        energy_discharged_wh=discharged_wh,
    )


def report(
    at_s: float, *, start: dt.datetime = START, faults: tuple[str, ...] = ()
) -> ControlReport:
    """A control report at ``at_s`` seconds (monotonic) after ``start`` (wall)."""
    return ControlReport(
        monotonic_s=at_s,
        wall=start + dt.timedelta(seconds=at_s),
        output=ControlOutput(
            command=PowerCommand(power_w=0.0, enable=True),
            state=PowerState.CHARGING,
            binding_limit=None,
            reasons=(),
            limits=(),
            source="fallback",
            setpoint_id=None,
            max_charge_w=0.0,
            max_discharge_w=0.0,
            soc_floor_pct=None,
            energy_above_floor_wh=None,
            faults=faults,
        ),
    )


def read(path: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    """What a separate reader sees: only committed data."""
    conn = open_database(path, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
