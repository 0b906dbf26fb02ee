"""A traction battery good enough to commission a charger against: SoC, voltage, temperature."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class BatteryModel:
    """Pack with a linear open-circuit voltage, series resistance and a first-order thermal mass.

    ``current_a`` + charges the pack (the controller's sign).
    """

    capacity_kwh: float = 40.0
    soc_pct: float = 45.0
    empty_voltage_v: float = 300.0  # open-circuit voltage at 0 % SoC
    full_voltage_v: float = 400.0  # open-circuit voltage at 100 % SoC
    resistance_ohm: float = 0.1
    temperature_c: float = 25.0
    ambient_c: float = 25.0
    heat_capacity_j_per_k: float = 150_000.0
    cooling_w_per_k: float = 50.0
    current_a: float = 0.0

    @property
    def open_circuit_voltage_v(self) -> float:
        """Voltage at rest for the present SoC."""
        span = self.full_voltage_v - self.empty_voltage_v
        return self.empty_voltage_v + span * self.soc_pct / 100.0

    @property
    def voltage_v(self) -> float:
        """Terminal voltage with the present current."""
        return self.open_circuit_voltage_v + self.current_a * self.resistance_ohm

    def step(self, current_a: float, dt_s: float) -> None:
        """Apply ``current_a`` for ``dt_s`` seconds."""
        self.current_a = current_a
        if dt_s <= 0:
            return
        energy_kwh = self.voltage_v * current_a * dt_s / 3_600_000.0
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + 100.0 * energy_kwh / self.capacity_kwh))
        heating_w = current_a * current_a * self.resistance_ohm
        cooling_w = self.cooling_w_per_k * (self.temperature_c - self.ambient_c)
        self.temperature_c += (heating_w - cooling_w) * dt_s / self.heat_capacity_j_per_k
