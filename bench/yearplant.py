"""The simulated year's plant: one car's battery behind a bidirectional inverter, in simulated time.

What the core sees is worse than the truth in the ways a real charger's data is worse:

* the inverter follows a command one step late, within +-``noise_frac`` of it (a power
  stage's control error, the meter's error);
* the reported SoC is the true SoC one step old, truncated to whole percent (CHAdeMO 0x102
  byte 6 and GB/T 27930 BCS byte 7 carry 1 % steps);
* the battery's charge and discharge efficiencies differ from what the planner assumes, so a
  plan drifts and must be re-made from the reported SoC.

Power is at the grid connection, + charges the car (the controller's sign). The battery's
energy changes by ``power * efficiency`` when charging and ``power / efficiency`` when
discharging; the battery management system refuses energy beyond empty and full.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PlantConfig:
    """The plant's truth (what the planner is not told exactly)."""

    capacity_kwh: float = 60.0
    charge_efficiency: float = 0.91  # grid -> battery
    discharge_efficiency: float = 0.91  # battery -> grid
    noise_frac: float = 0.01  # the delivered power is the command within +-1 %
    pack_voltage_v: float = 380.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity_kwh) and self.capacity_kwh > 0):
            raise ValueError(
                f"capacity_kwh: expected a finite value > 0, found {self.capacity_kwh}"
            )
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name}: expected 0 < value <= 1, found {value}")
        if not 0 <= self.noise_frac < 1:
            raise ValueError(f"noise_frac: expected 0 <= value < 1, found {self.noise_frac}")


@dataclass(frozen=True, slots=True)
class Flow:
    """What one step moved: the power at the grid and the battery's energy change."""

    power_w: float  # at the grid, + import (charging the car)
    battery_delta_kwh: float  # + into the battery


class Plant:
    """One plug-in session's battery and inverter; ``step`` advances it by one step."""

    def __init__(self, config: PlantConfig, soc_pct: float, rng: random.Random) -> None:
        if not 0 <= soc_pct <= 100:
            raise ValueError(f"soc_pct: expected 0..100 %, found {soc_pct}")
        self.config = config
        self._rng = rng
        self.energy_kwh = config.capacity_kwh * soc_pct / 100.0
        self._pending_w = 0.0  # the command the inverter will follow during the next step
        self._reported_soc_pct = float(math.floor(soc_pct))
        self.measured_power_w = 0.0  # the power of the last step, as the inverter reports it

    @property
    def soc_pct(self) -> float:
        """The true SoC (what the promises are judged on)."""
        return 100.0 * self.energy_kwh / self.config.capacity_kwh

    @property
    def reported_soc_pct(self) -> float:
        """What the car reports: whole percent, truncated, one step old."""
        return self._reported_soc_pct

    def step(self, command_w: float, step_s: float) -> Flow:
        """Run one step: the inverter delivers the previous command (with noise) while it takes
        this one. Returns what flowed."""
        self._reported_soc_pct = float(math.floor(self.soc_pct + 1e-9))
        noise = 1.0 + self._rng.uniform(-self.config.noise_frac, self.config.noise_frac)
        power_w = self._pending_w * noise
        self._pending_w = command_w
        hours = step_s / 3600.0
        if power_w >= 0:
            delta_kwh = power_w / 1000.0 * hours * self.config.charge_efficiency
        else:
            delta_kwh = power_w / 1000.0 * hours / self.config.discharge_efficiency
        # The BMS takes no energy beyond full and gives none below empty.
        room_kwh = self.config.capacity_kwh - self.energy_kwh
        if delta_kwh > room_kwh:
            power_w *= room_kwh / delta_kwh
            delta_kwh = room_kwh
        elif -delta_kwh > self.energy_kwh:
            power_w *= self.energy_kwh / -delta_kwh
            delta_kwh = -self.energy_kwh
        self.energy_kwh += delta_kwh
        self.measured_power_w = power_w
        return Flow(power_w=power_w, battery_delta_kwh=delta_kwh)
