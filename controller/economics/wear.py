"""Battery wear: capacity lost per kWh of throughput, turned into money (docs/economics.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WearRate:
    """What the planner charges itself for taking energy out of the battery.

    Money per kWh discharged *from the battery* (before the inverter's losses) at a C-rate of
    ``c_rate`` (power / capacity): ``base_per_kwh + per_c_rate_per_kwh * c_rate``. The recharge
    that a discharge makes necessary is part of the cycle this pays for.
    """

    base_per_kwh: float
    per_c_rate_per_kwh: float = 0.0

    def per_kwh(self, c_rate: float) -> float:
        return self.base_per_kwh + self.per_c_rate_per_kwh * abs(c_rate)
