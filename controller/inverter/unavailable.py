"""Stand-in inverter link used until the Modbus drivers exist in this build.

It reports the inverter as DOWN and never produces a snapshot, so the safety core sees no
inverter and commands 0 W. It writes nothing anywhere: there is no power stage it could drive.
"""

from __future__ import annotations

import asyncio

import structlog

from controller.core.snapshots import InverterState, PowerCommand
from controller.links import LinkStatus, Wake

log = structlog.get_logger(component="inverter")


class UnavailableInverter:
    """An inverter link with no driver behind it: always DOWN, always 0 W."""

    name = "inverter"

    def __init__(self, reason: str) -> None:
        self._reason = reason
        self._status = LinkStatus.STARTING

    @property
    def status(self) -> LinkStatus:
        return self._status

    async def run(self, wake: Wake) -> None:
        log.warning("inverter link unavailable; power stays at 0 W", reason=self._reason)
        self._status = LinkStatus.DOWN
        wake()
        await asyncio.Event().wait()  # nothing to poll; parked until the daemon stops

    def snapshot(self) -> InverterState | None:
        return None

    async def apply(self, command: PowerCommand) -> None:
        return

    async def safe_stop(self) -> None:
        return
