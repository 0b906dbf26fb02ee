"""Prices per time band: the configured tariff, schedules pushed by the aggregator, peak events.

Sign and units: prices are money per kWh in ``currency`` at the grid connection; import is what
the owner pays per kWh taken from the grid, export what the owner is paid per kWh given back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PriceSlot:
    """One stretch of constant prices, [start, end), aware datetimes."""

    start: dt.datetime
    end: dt.datetime
    import_per_kwh: float
    export_per_kwh: float
    # The peak event that set the export price in this slot, if any (receipts name it).
    event_id: str | None = None
    # A peak event's requested discharge power here (W, magnitude): the event's bonus export
    # price applies up to this power; None: no power window (the price applies to all export).
    event_power_w: float | None = None


@dataclass(frozen=True, slots=True)
class PeakEvent:
    """A demand-response event: a bonus on top of the export price while it runs, optionally only
    for export up to a requested power."""

    event_id: str
    start: dt.datetime
    end: dt.datetime
    bonus_per_kwh: float  # added to the export price for export inside [start, end)
    power_w: float | None = None  # the bonus applies up to this export power (magnitude); None: all
