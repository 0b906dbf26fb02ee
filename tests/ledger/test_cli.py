"""``v2g-controller ledger``: tables, JSON, date filters, and one-line errors for bad files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from controller.cli import main
from controller.core.snapshots import VehiclePhase
from tests.ledger.support import START, inverter, make_ledger, report, vehicle


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """Two sessions on two days: 2 kWh charged, then 3 kWh discharged."""
    path = tmp_path / "ledger.sqlite"
    ledger = make_ledger(path)
    ledger.record(vehicle(soc_pct=40), inverter(0, 0), report(0))
    for i in range(1, 21):  # 20 readings, 100 Wh each, 60 s apart
        ledger.record(vehicle(soc_pct=40 + i), inverter(i * 100, 0), report(i * 60))
    ledger.record(vehicle(VehiclePhase.UNPLUGGED), inverter(2000, 0), report(1300))
    next_day = START + dt.timedelta(days=1)
    ledger.record(vehicle(soc_pct=80, identity=None), inverter(2000, 0), report(0, start=next_day))
    for i in range(1, 31):
        ledger.record(
            vehicle(soc_pct=80 - i), inverter(2000, i * 100), report(i * 60, start=next_day)
        )
    ledger.record(
        vehicle(VehiclePhase.UNPLUGGED), inverter(2000, 3000), report(1900, start=next_day)
    )
    ledger.flush()
    return path


def test_table_shows_sessions_days_and_totals(
    ledger_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "--db", str(ledger_file)]) == 0
    out = capsys.readouterr().out
    assert "Sessions (2)" in out
    assert "Daily totals (2)" in out
    assert "2026-11-23 18:00" in out
    assert "40->60" in out
    assert "-0.50 EUR" in out  # 2 kWh at 0.25
    assert "+0.90 EUR" in out  # 3 kWh at 0.30
    assert "Total: charged 2.000 kWh, discharged 3.000 kWh" in out
    assert "net +0.40 EUR" in out


def test_json_and_date_filter(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "--db", str(ledger_file), "--json", "--from", "2026-11-24"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["discharged_kwh"] for s in data["sessions"]] == [3.0]
    assert [d["day"] for d in data["days"]] == ["2026-11-24"]
    assert data["totals"]["EUR"]["export_value"] == pytest.approx(0.9)
    assert data["lifetime"] == {"charged_kwh": 2.0, "discharged_kwh": 3.0}


def test_ledger_from_the_config(
    ledger_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support import BASE_CONFIG  # noqa: PLC0415

    config = tmp_path / "config.yaml"
    config.write_text(BASE_CONFIG + f"ledger: {{path: {ledger_file}}}\n", encoding="utf-8")
    assert main(["ledger", "-c", str(config), "--to", "2026-11-23"]) == 0
    assert "Sessions (1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"this is not sqlite", "file is not a database"),
        (b"", "not a ledger: table ledger_sessions is missing"),
    ],
)
def test_bad_files_give_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "ledger.sqlite"
    if content is not None:
        path.write_bytes(content)
    assert main(["ledger", "--db", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert str(path) in err
    assert len(err.strip().splitlines()) == 1


def test_bad_arguments_exit_2(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ledger", "--db", str(ledger_file), "--from", "yesterday"])
    assert exc.value.code == 2
    assert (
        main(["ledger", "--db", str(ledger_file), "--from", "2026-12-01", "--to", "2026-11-01"])
        == 2
    )
    assert "is after" in capsys.readouterr().err
