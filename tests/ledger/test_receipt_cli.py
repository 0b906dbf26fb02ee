"""``v2g-controller ledger`` with receipts: the table, the owner's line, refusals, JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from controller.cli import main
from controller.core.policy import Departure
from controller.core.snapshots import PowerCommand, VehiclePhase
from controller.ledger.ledger import Ledger
from controller.links import ControlReport
from controller.storage.db import open_database
from tests.ledger.support import TARIFF, inverter, report, vehicle

FLOOR = "soc_floor discharge <= 0 W (SoC 40 % at the 40 % floor)"


def refused(at_s: float) -> ControlReport:
    base = report(at_s)
    output = dataclasses.replace(
        base.output,
        requested_w=-5000.0,
        command=PowerCommand(0.0, enable=True),
        binding_limit=FLOOR,
    )
    return dataclasses.replace(base, output=output)


def wear(trace: Sequence[float]) -> float:
    return 0.01 * (len(trace) - 1)


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """One night: 2 kWh out at the peak price, a floor refusal, then 3 kWh in; 18:30 departure
    at 80 % missed (76 %); and a second car still plugged in."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(
        open_database(path),
        tariff=TARIFF,
        max_power_w=7400.0,
        prices=lambda wall: (0.10, 1.00) if wall.minute < 15 else (0.10, 0.30),
        wear_cost=wear,
        departure=Departure(dt.time(18, 30), 80.0),
    )
    ledger.record(vehicle(soc_pct=45), inverter(0, 0), report(0))
    ledger.record(vehicle(soc_pct=40), inverter(0, 2000), report(700))  # 2 kWh out at 1.00
    ledger.record(vehicle(soc_pct=40), inverter(0, 2000), refused(701))
    ledger.record(vehicle(soc_pct=40), inverter(0, 2000), refused(702))
    ledger.record(vehicle(soc_pct=76), inverter(3000, 2000), report(1700))  # 3 kWh in at 0.10
    ledger.record(vehicle(soc_pct=76), inverter(3000, 2000), report(1900))  # 18:31:40
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(3000, 2000), report(2000))
    ledger.record(vehicle(soc_pct=30, identity=None), inverter(3000, 2000), report(2100))
    ledger.flush()
    return path


def test_the_table_shows_each_receipt_and_the_owners_line(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Net after wear, SoC in and out, the missed target, the refusal and the owner's line."""
    assert main(["ledger", "--db", str(ledger_file)]) == 0
    out = capsys.readouterr().out
    assert "Receipts (1)" in out  # the open session has none yet
    lines = out.splitlines()
    row = lines[lines.index("Receipts (1)") + 3]
    # import 0.30, export 2.00, wear 0.02 (two turning points after the first), net +1.68
    assert row.split()[:7] == ["2026-11-23", "18:00", "0.30", "2.00", "0.02", "+1.68", "EUR"]
    assert "45->76" in row
    assert "80 % by 18:30: MISSED (76 %)" in row
    message = (
        "Earned €1.68 tonight after €0.02 battery wear; 76 % at 18:30, short of the 80 % target"
    )
    assert f"  2026-11-23 18:00  {message}" in lines
    assert f"discharge refused or reduced: soc_floor x1 (e.g. {FLOOR})" in out


def test_json_carries_the_receipt(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json: each closed session has its receipt with the owner's line; an open one null."""
    assert main(["ledger", "--db", str(ledger_file), "--json"]) == 0
    sessions = json.loads(capsys.readouterr().out)["sessions"]
    closed, still_open = sessions
    receipt = closed["receipt"]
    assert receipt["net"] == pytest.approx(1.68)
    assert receipt["wear_cost"] == pytest.approx(0.02)
    assert receipt["target_met"] is False
    assert receipt["soc_at_plug_in_pct"] == 45.0
    assert receipt["soc_at_departure_pct"] == 76.0
    assert receipt["refusals"] == [{"reason": "soc_floor", "count": 1, "example": FLOOR}]
    assert receipt["owner_message"].startswith("Earned €1.68 tonight")
    assert still_open["receipt"] is None


def test_a_corrupt_receipt_is_a_one_line_error(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receipt column that is not a receipt: exit 1 with a reason, no traceback."""
    conn = open_database(ledger_file)
    with conn:
        conn.execute(
            "UPDATE ledger_sessions SET receipt = ? WHERE receipt IS NOT NULL", ('{"net": 1}',)
        )
    conn.close()
    assert main(["ledger", "--db", str(ledger_file)]) == 1
    err = capsys.readouterr().err
    assert "missing field 'session_id'" in err
    assert "Traceback" not in err
