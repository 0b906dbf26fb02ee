"""The vehicle simulator on its own: battery model and the commissioning command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hil.vehicle import BatteryModel
from hil.vehicle.__main__ import parse_args

REPO = Path(__file__).resolve().parents[2]


def test_battery_soc_follows_current() -> None:
    """100 A at about 360 V into a 40 kWh pack for 6 minutes adds about 9 % and warms it."""
    battery = BatteryModel(capacity_kwh=40.0, soc_pct=50.0)
    for _ in range(360):
        battery.step(100.0, 1.0)
    assert 58.0 < battery.soc_pct < 60.0
    assert battery.temperature_c > 25.0
    assert battery.voltage_v > battery.open_circuit_voltage_v


def test_battery_discharge_lowers_soc_and_voltage() -> None:
    """Discharging lowers SoC and puts the terminal voltage below open circuit."""
    battery = BatteryModel(soc_pct=50.0)
    battery.step(-50.0, 60.0)
    assert battery.soc_pct < 50.0
    assert battery.voltage_v < battery.open_circuit_voltage_v


def test_cli_rejects_soc_out_of_range() -> None:
    """--soc outside 0..100 is a usage error."""
    with pytest.raises(SystemExit):
        parse_args(
            ["--protocol", "chademo", "--interface", "virtual", "--channel", "x", "--soc", "120"]
        )


@pytest.mark.parametrize("protocol", ["chademo", "gbt27930"])
def test_cli_runs_on_a_bus(protocol: str) -> None:
    """`python -m hil.vehicle` plays the car on a bus and exits cleanly after --duration-s."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hil.vehicle",
            "--protocol",
            protocol,
            "--interface",
            "virtual",
            "--channel",
            "cli-test",
            "--soc",
            "45",
            "--duration-s",
            "0.3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "final: VehicleSimulator" in result.stderr
