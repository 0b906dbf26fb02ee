"""A link with nothing behind it, for a link whose driver this build does not have.

It satisfies every link protocol: it reports DOWN with its reason, never produces a snapshot or
a setpoint, and writes nothing anywhere. With no snapshot the safety core sees stale data and
commands 0 W, so an unavailable link can only ever hold the charger safe.
"""

from __future__ import annotations

import asyncio

import structlog

from controller.core.snapshots import PowerCommand
from controller.links import ControlReport, LinkStatus, Wake

log = structlog.get_logger(component="links")


class UnavailableLink:
    """Always DOWN, never any data, never any traffic."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        self._status = LinkStatus.STARTING

    @property
    def status(self) -> LinkStatus:
        return self._status

    async def run(self, wake: Wake) -> None:
        log.warning("link unavailable; power stays at 0 W", link=self.name, reason=self.reason)
        self._status = LinkStatus.DOWN
        wake()
        await asyncio.Event().wait()  # nothing to do until the daemon stops

    def snapshot(self) -> None:
        return None

    def setpoint(self) -> None:
        return None

    def report(self, report: ControlReport) -> None:
        return

    def allow_energy_transfer(self, allowed: bool) -> None:
        return

    def update_output(self, voltage_v: float, current_a: float) -> None:
        return

    async def apply(self, command: PowerCommand) -> None:
        return

    async def safe_stop(self) -> None:
        return

    async def end_session(self) -> None:
        return

    def emergency_stop_pressed(self) -> bool:
        return False  # no board lines: nothing reports it (and without data power stays 0 W)

    async def publish_offline(self) -> None:
        return
