"""The simulated bidirectional power stage: ramp, limits, revert timer, energy counters, faults.

Time is passed in (monotonic seconds), so the stage is deterministic under test. Sign as in the
controller: + charges the vehicle (absorbs from the grid), - discharges it (exports).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageRatings:
    max_charge_w: float = 7400.0
    max_discharge_w: float = 7400.0
    ramp_w_per_s: float = 20_000.0  # a power electronics stage settles in well under a second


@dataclass
class PowerStage:
    ratings: StageRatings = field(default_factory=StageRatings)
    target_w: float = 0.0
    actual_w: float = 0.0
    enabled: bool = False
    fault: str | None = None
    revert_timeout_s: float = 0.0  # 0: never revert (SunSpec: 0 disables the timer)
    last_command_s: float = 0.0
    energy_charged_wh: float = 0.0  # absorbed from the grid into the vehicle
    energy_discharged_wh: float = 0.0  # exported from the vehicle to the grid
    temperature_c: float = 35.0
    # The DC side's voltage (the vehicle's pack, set by the plant); None: the profile's default.
    dc_voltage_v: float | None = None
    # The DC side is a circuit only while the charger's DC contactors are closed (the plant sets
    # this): with them open no current flows, whatever the setpoint, and the counters stand still.
    dc_connected: bool = True
    # A device that acknowledges setpoint writes (its registers hold them) but never acts on
    # them: the power stays where it was. Only the measured power can tell.
    ignore_setpoints: bool = False
    reverts: int = 0
    commands: int = 0
    _last_step_s: float | None = None

    def command(self, power_w: float, now_s: float) -> None:
        """A new setpoint (clipped to the ratings, as a real stage would); restarts the timer."""
        self.advance(now_s)
        self.commands += 1
        self.last_command_s = now_s
        if self.ignore_setpoints:
            return
        self.target_w = max(-self.ratings.max_discharge_w, min(self.ratings.max_charge_w, power_w))

    def set_enabled(self, enabled: bool, now_s: float) -> None:
        self.advance(now_s)
        self.enabled = enabled
        self.last_command_s = now_s

    def set_revert_timeout(self, timeout_s: float, now_s: float) -> None:
        self.advance(now_s)
        self.revert_timeout_s = max(0.0, timeout_s)
        self.last_command_s = now_s

    def revert_remaining_s(self, now_s: float) -> float:
        if self.revert_timeout_s <= 0:
            return 0.0
        return max(0.0, self.revert_timeout_s - (now_s - self.last_command_s))

    def advance(self, now_s: float) -> None:
        """Move time on: revert timer, ramp toward the target, integrate energy."""
        if self._last_step_s is None:
            self._last_step_s = now_s
            return
        dt_s = max(0.0, now_s - self._last_step_s)
        self._last_step_s = now_s
        if (
            self.revert_timeout_s > 0
            and self.target_w != 0.0
            and now_s - self.last_command_s >= self.revert_timeout_s
        ):
            self.target_w = 0.0  # the inverter's own fail-safe: no controller, no power
            self.reverts += 1
        goal_w = self.target_w if self.enabled and self.fault is None else 0.0
        before_w = self.actual_w
        if self.fault is not None or not self.enabled or not self.dc_connected:
            self.actual_w = 0.0  # tripping, disabling or an open circuit stops current at once
        else:
            step_w = self.ratings.ramp_w_per_s * dt_s
            self.actual_w = before_w + max(-step_w, min(step_w, goal_w - before_w))
        energy_wh = (before_w + self.actual_w) / 2 * dt_s / 3600.0  # trapezoid
        if energy_wh > 0:
            self.energy_charged_wh += energy_wh
        else:
            self.energy_discharged_wh -= energy_wh
