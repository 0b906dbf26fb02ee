"""Fixtures for the HIL scenarios: a real mosquitto, and a short directory for sockets and ptys."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.harness import DaemonProcess, PlantProcess, Setup, plant_args, simulated_clock_env
from hil.mosquitto import Mosquitto, find_mosquitto, free_port
from hil.plant import pick_can

EVENING = "2026-11-23T19:00:00+01:00"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="hil-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def broker(short_dir: Path) -> Iterator[Mosquitto]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    (short_dir / "broker").mkdir()
    with Mosquitto(short_dir / "broker") as running:
        yield running


@dataclass
class Rig:
    """A running plant and daemon on one setup."""

    setup: Setup
    plant: PlantProcess
    daemon: DaemonProcess

    def daemon_log(self, lines: int = 40) -> str:
        text = self.daemon.log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def make_setup(directory: Path, broker: Mosquitto, protocol: str, transport: str) -> Setup:
    """A setup on a fresh CAN channel and inverter port."""
    interface, channel = pick_can()
    return Setup(
        directory=directory,
        protocol=protocol,
        transport=transport,
        can_interface=interface,
        can_channel=channel,
        broker_port=broker.port,
        inverter_port=free_port(),
        rtu_device=directory / "controller-tty" if transport == "rtu" else None,
    )


@contextlib.contextmanager
def running(
    setup: Setup,
    *,
    soc_pct: float,
    mode: str,
    time_factor: float = 1.0,
    clock_start: str = EVENING,
) -> Iterator[Rig]:
    """The plant, then the daemon on a generated config; both killed on the way out."""
    config = setup.directory / "config.yaml"
    config.write_text(setup.config_yaml(), encoding="utf-8")
    args = plant_args(setup, soc_pct=soc_pct, mode=mode, time_factor=time_factor)
    plant = PlantProcess(args, setup.directory / "plant.sock", setup.directory / "plant.log")
    clock = simulated_clock_env(clock_start, time_factor)
    daemon = DaemonProcess(config, setup.directory / "daemon.log", {"V2G_SIMULATED_CLOCK": clock})
    with plant, daemon:
        yield Rig(setup, plant, daemon)
