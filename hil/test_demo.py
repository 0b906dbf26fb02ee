"""The demo's summary and plot, from a recorded night (the full demo runs with `make demo`)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

from controller.config import load_config
from hil.demo import Night, Sample, SimClock, plot, summary

ROOT = Path(__file__).resolve().parents[1]
TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")


def night() -> Night:
    start = dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ)
    samples = [
        Sample(start + dt.timedelta(minutes=10 * i), power, soc, "idle", "fallback")
        for i, (power, soc) in enumerate([(0, 45), (-7400, 42), (0, 40), (3700, 60), (0, 80.5)])
    ]
    return Night(samples=samples, interlocks={"soc_floor": "19:40"}, departure_soc_pct=80.5)


STATUS = {
    "exported_wh": 2000.0,
    "imported_wh": 16000.0,
    "lowest_soc_pct": 39.8,
    "soc_pct": 80.5,
    "vehicle_state": "transfer",
    "vehicle_stop_reason": "",
    "power_without_contactors_s": 0.0,
}


def test_summary_counts_energy_and_earnings_at_the_tariff() -> None:
    """Exported 2 kWh at 0.31 and imported 16 kWh at 0.22 nets -2.90; the promises were kept."""
    text, ok = summary(night(), STATUS, load_config(ROOT / "config/example.yaml"))
    assert ok
    assert "2.00 kWh" in text
    assert "16.00 kWh" in text
    assert "-2.90 EUR" in text
    assert "soc_floor (from 19:40)" in text
    assert "promises kept" in text


def test_summary_reports_a_missed_departure_target() -> None:
    """A car that leaves at 60 % breaks the departure promise."""
    status = STATUS | {"soc_pct": 60.0}
    recorded = night()
    recorded.departure_soc_pct = 60.0
    text, ok = summary(recorded, status, load_config(ROOT / "config/example.yaml"))
    assert not ok
    assert "PROMISES BROKEN" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """The night is drawn into a PNG file."""
    clock = SimClock(dt.datetime(2026, 11, 23, 18, 0, tzinfo=TZ), 720.0)
    path = tmp_path / "night.png"
    plot(night(), load_config(ROOT / "config/example.yaml"), clock, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
