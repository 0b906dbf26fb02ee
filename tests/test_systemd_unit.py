"""The systemd unit: hardened, watchdog-supervised, restarted on failure."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "v2g-controller.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_notify_with_watchdog_and_restart() -> None:
    """Type=notify, a watchdog, restart on failure but not on a bad config (exit 2)."""
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["WatchdogSec"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["StateDirectory"] == ["v2g-controller"]
    assert settings["ConfigurationDirectory"] == ["v2g-controller"]
    assert "AF_CAN" in settings["RestrictAddressFamilies"][0]
    assert settings["SupplementaryGroups"] == ["dialout"]
    # The stop budget (5 s) fits inside systemd's stop timeout.
    assert int(settings["TimeoutStopSec"][0].rstrip("s")) > 5
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package 'systemd' provides it)",
)
def test_security_exposure_is_at_most_2() -> None:
    """`systemd-analyze security --offline=yes` rates the unit 2.0 or lower."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout
