"""The aggregator link when the site runs without an aggregator (``aggregator.enabled: false``)."""

from __future__ import annotations

from controller.core.snapshots import Setpoint
from controller.links import ControlReport, LinkStatus, Wake


class DisabledAggregator:
    """No broker: never a setpoint, so the core follows the local fallback policy."""

    name = "aggregator"

    @property
    def status(self) -> LinkStatus:
        return LinkStatus.DISABLED

    async def run(self, wake: Wake) -> None:
        return

    def setpoint(self) -> Setpoint | None:
        return None

    def report(self, report: ControlReport) -> None:
        return

    async def publish_offline(self) -> None:
        return
