"""The aggregator link when the site runs without an aggregator (``aggregator.enabled: false``)."""

from __future__ import annotations

from controller.aggregator.prices import PriceBook
from controller.core.snapshots import Setpoint
from controller.links import ControlReport, LinkStatus, Wake


class DisabledAggregator:
    """No broker: never a setpoint, so the core follows the local fallback policy."""

    name = "aggregator"

    def __init__(self) -> None:
        self._prices = PriceBook()

    @property
    def prices(self) -> PriceBook:
        """Always empty (version 0): the configured tariff is the only price."""
        return self._prices

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
