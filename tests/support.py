"""Test doubles shared by the daemon tests: links that record what the daemon asked of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from pathlib import Path

from controller.aggregator.prices import PriceBook
from controller.config import Config, parse_config
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    VehicleState,
)
from controller.links import ControlOutput, ControlReport, LinkStatus, Wake

BASE_CONFIG = """\
site: {site_id: test-site, charger_id: c1}
vehicle: {protocol: chademo, can: {interface: virtual, channel: t}}
inverter: {transport: tcp, tcp: {host: 127.0.0.1}}
aggregator: {enabled: false}
logging: {format: json}
"""


def make_config(extra: str = "") -> Config:
    return parse_config(BASE_CONFIG + extra)


class Journal:
    """An ordered record of what the daemon did to the fakes."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def add(self, event: str) -> None:
        self.events.append(event)


class FakeLink:
    def __init__(self, name: str, journal: Journal) -> None:
        self.name = name
        self.journal = journal
        self._status = LinkStatus.STARTING
        self.report_up = asyncio.Event()
        self.report_up.set()
        self.fail_after_s: float | None = None
        self.return_after_s: float | None = None
        self.running = False

    @property
    def status(self) -> LinkStatus:
        return self._status

    async def run(self, wake: Wake) -> None:
        self.running = True
        try:
            await self.report_up.wait()
            self._status = LinkStatus.UP
            wake()
            if self.fail_after_s is not None:
                await asyncio.sleep(self.fail_after_s)
                raise RuntimeError(f"{self.name} exploded")
            if self.return_after_s is not None:
                await asyncio.sleep(self.return_after_s)
                return
            await asyncio.Event().wait()
        finally:
            self.running = False


class FakeVehicle(FakeLink):
    def __init__(self, journal: Journal) -> None:
        super().__init__("vehicle", journal)
        self.allowed: list[bool] = []
        self.session_ended_while_running: bool | None = None

    def snapshot(self) -> VehicleState | None:
        return None

    def allow_energy_transfer(self, allowed: bool) -> None:
        self.allowed.append(allowed)

    def update_output(self, voltage_v: float, current_a: float) -> None:
        self.output = (voltage_v, current_a)

    async def end_session(self) -> None:
        self.journal.add("vehicle.end_session")
        self.session_ended_while_running = self.running

    def emergency_stop_pressed(self) -> bool:
        return False


class FakeInverter(FakeLink):
    def __init__(self, journal: Journal) -> None:
        super().__init__("inverter", journal)
        self.applied: list[PowerCommand] = []
        self.hang_after_applies: int | None = None
        self.safe_stop_delay_s = 0.0
        self.hung = asyncio.Event()

    def snapshot(self) -> InverterState | None:
        return None

    async def apply(self, command: PowerCommand) -> None:
        if self.hang_after_applies is not None and len(self.applied) >= self.hang_after_applies:
            self.hung.set()
            await asyncio.sleep(999)  # a write that never completes
        self.applied.append(command)

    async def safe_stop(self) -> None:
        await asyncio.sleep(self.safe_stop_delay_s)
        self.journal.add("inverter.safe_stop")


class FakeAggregator(FakeLink):
    def __init__(self, journal: Journal) -> None:
        super().__init__("aggregator", journal)
        self.reports: list[ControlReport] = []
        self._prices = PriceBook()

    @property
    def prices(self) -> PriceBook:
        return self._prices

    def setpoint(self) -> Setpoint | None:
        return None

    def report(self, report: ControlReport) -> None:
        self.reports.append(report)

    async def publish_offline(self) -> None:
        self.journal.add("aggregator.offline")


class FixedStep:
    """A control step that always commands the same power (the core is tested on its own)."""

    def __init__(self, power_w: float = 1000.0) -> None:
        self.power_w = power_w
        self.calls = 0
        self.raise_on_call: int | None = None

    def __call__(
        self,
        vehicle: VehicleState | None,
        inverter: InverterState | None,
        setpoint: Setpoint | None,
        monotonic_s: float,
        wall: dt.datetime,
    ) -> ControlOutput:
        self.calls += 1
        if self.raise_on_call is not None and self.calls >= self.raise_on_call:
            raise ZeroDivisionError("core bug")
        return ControlOutput(
            PowerCommand(self.power_w, enable=True),
            PowerState.CHARGING,
            None,
            ("test",),
            session_allowed=True,
        )


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that collects messages."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(needle in m for m in self.drain()):
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.sock.close()


async def until(predicate: object, timeout_s: float = 5.0) -> bool:
    """Poll a condition from inside the event loop without blocking it."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False
