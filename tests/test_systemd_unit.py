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
    assert settings["SupplementaryGroups"] == ["dialout gpio"]
    # The stop budget (5 s) fits inside systemd's stop timeout.
    assert int(settings["TimeoutStopSec"][0].rstrip("s")) > 5
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())


def test_unit_starts_after_time_sync_without_pulling_it_in() -> None:
    """Ordered after time-sync.target (and still after the network); not Wants= it: the target is
    passive, pulled in by the NTP service (systemd.special(7))."""
    settings = unit_settings()
    after = " ".join(settings["After"]).split()
    assert "time-sync.target" in after
    assert "network-online.target" in after
    assert "time-sync.target" not in " ".join(settings.get("Wants", [])).split()


def test_unit_lets_the_daemon_read_but_never_set_the_clock() -> None:
    """adjtimex(2) is readable (clocksync.ClockTrust needs the NTP state; ProtectClock= would
    refuse even a read), and setting the clock stays impossible: no capabilities at all, and
    only the adjtimex family is let through the filter that removes @privileged (@clock)."""
    settings = unit_settings()
    assert "ProtectClock" not in settings
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["AmbientCapabilities"] == [""]
    assert settings["NoNewPrivileges"] == ["yes"]
    filters = settings["SystemCallFilter"]
    removed = filters.index("~@privileged @resources")
    allowed_again = filters[removed + 1 :]
    assert allowed_again == ["adjtimex clock_adjtime clock_adjtime64"]


def test_unit_opens_the_gpio_chip_and_the_serial_ports_only() -> None:
    """The board's lines (libgpiod opens /dev/gpiochipN) are allowed, through group gpio, while
    every other device stays closed; without char-gpiochip, vehicle.lines kind gpio fails."""
    settings = unit_settings()
    assert settings["DevicePolicy"] == ["closed"]
    allowed = {entry.split()[0]: entry.split()[1] for entry in settings["DeviceAllow"]}
    assert allowed == {
        "char-gpiochip": "rw",
        "char-ttyUSB": "rw",
        "char-ttyAMA": "rw",
        "char-ttyS": "rw",
    }
    assert "gpio" in settings["SupplementaryGroups"][0].split()
    assert "PrivateDevices" not in settings


def test_unit_runs_the_packaged_command() -> None:
    """ExecStart= and the config check before it run the Debian package's entry point
    (packaging/build_deb.py installs the virtualenv at /opt/v2g-controller)."""
    settings = unit_settings()
    config = "/etc/v2g-controller/config.yaml"
    assert settings["ExecStart"] == [f"/opt/v2g-controller/bin/v2g-controller run -c {config}"]
    assert settings["ExecStartPre"] == [
        f"/opt/v2g-controller/bin/v2g-controller check-config {config}"
    ]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package 'systemd' provides it)",
)
def test_security_exposure_is_at_most_2_0() -> None:
    """`systemd-analyze security --offline=yes` rates the unit 2.0 or lower (issue 21).

    It was 1.7; the read-only adjtimex the clock check needs costs 0.4 in the offline rating
    (ProtectClock= unset, adjtimex allowed out of @clock and @privileged), which does not count
    the empty capability set that keeps the clock from being set. The GPIO chip in DeviceAllow=
    and the gpio group cost nothing more (the serial ports and dialout already count).
    PrivateUsers=yes brings it to 1.9 (the status socket's peers then show as nobody: the unit
    says why that is acceptable).
    """
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
