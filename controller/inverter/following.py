"""Whether the inverter follows its command: measured power against the commands it was given.

Pure (sans-IO, no clock of its own): the link tells it each command it has written and each
measurement it has read, with the time of each; it answers with a reason when the inverter is
not following, so every driver (SunSpec 700, 100, a register map) gets the same check.

The rule (issue 16, item 10). A command is followed when the measured power lies within

    |measured - commanded| <= max(10 % of |commanded|, 200 W)

of some command in force during the last ``settle_s``: the inverter has that long to reach a new
command, and a ramp of commands (the core's, 2 kW/s) followed with a lag never trips it. A
measurement outside that band at every read for longer than ``hold_s`` is "not following": a
device that ignores setpoint writes, treats 124's rates otherwise than the driver encodes them,
or cannot deliver. An unknown measurement (None) while the command in force is not 0 W counts as
outside too: nothing proves that the inverter follows it. A disabled command is 0 W.

Worst case, a device that ignores a step from 0 W is found ``settle_s + hold_s`` after the step.
Nothing is judged before the first command has been in force for ``settle_s`` (the link's first
is setup's 0 W).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Commands kept for the settle window. The writer sends at most one per control tick (100 ms),
# so a 3 s window holds about 30; beyond the bound the oldest go first, which only narrows the
# window (stricter), never widens it.
MAX_COMMANDS = 256


@dataclass(frozen=True, slots=True)
class FollowingBand:
    settle_s: float = 3.0  # how long the inverter has to reach a command
    hold_s: float = 2.0  # how long it may stay outside the band before it is not following
    relative: float = 0.10  # of |commanded|
    floor_w: float = 200.0  # meter error and idle draw around 0 W

    def tolerance_w(self, commanded_w: float) -> float:
        return max(self.relative * abs(commanded_w), self.floor_w)


class FollowingCheck:
    """The commands in force over the settle window, and how long the measurement has been
    outside the band of all of them."""

    def __init__(self, band: FollowingBand | None = None) -> None:
        self.band = band or FollowingBand()
        self._commands: deque[tuple[float, float]] = deque(maxlen=MAX_COMMANDS)  # (from, W)
        self._outside_since_s: float | None = None

    def reset(self) -> None:
        """Nothing in force (the link failed, or is being set up anew)."""
        self._commands.clear()
        self._outside_since_s = None

    def command(self, power_w: float, now_s: float) -> None:
        """``power_w`` (0 for a disabled command) is in force from ``now_s``."""
        if self._commands and self._commands[-1][1] == power_w:
            return  # a heartbeat re-send: the same command stays in force
        self._commands.append((now_s, power_w))

    def _in_force(self, now_s: float) -> list[float]:
        """Every command in force at some time during [now_s - settle_s, now_s]."""
        window_start_s = now_s - self.band.settle_s
        while len(self._commands) > 1 and self._commands[1][0] <= window_start_s:
            self._commands.popleft()  # replaced before the window began
        return [power_w for _, power_w in self._commands]

    def observe(self, measured_w: float | None, now_s: float) -> str | None:
        """A reason when the inverter is not following, else None."""
        if not self._commands or self._commands[0][0] > now_s - self.band.settle_s:
            return None  # nothing known from before the first command: give it the settle time
        in_force = self._in_force(now_s)
        current_w = in_force[-1]
        if measured_w is None:
            outside = current_w != 0.0
        else:
            outside = all(abs(measured_w - c) > self.band.tolerance_w(c) for c in in_force)
        if not outside:
            self._outside_since_s = None
            return None
        if self._outside_since_s is None:
            self._outside_since_s = now_s
        outside_s = now_s - self._outside_since_s
        if outside_s <= self.band.hold_s:
            return None
        tolerance_w = self.band.tolerance_w(current_w)
        if measured_w is None:
            return (
                f"inverter not following: measured power unknown while {round(current_w)} W is "
                f"commanded, for {outside_s:.1f} s"
            )
        return (
            f"inverter not following: measured {round(measured_w)} W, "  # an int: never "-0"
            f"commanded {round(current_w)} W (band {tolerance_w:.0f} W) for {outside_s:.1f} s"
        )
