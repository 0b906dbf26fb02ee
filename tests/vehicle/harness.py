"""A simulated clock that drives a charger session against a simulated vehicle, without IO."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from controller.core.snapshots import VehicleState
from controller.vehicle.frames import CanFrame, SessionEvent, Step
from controller.vehicle.session import ChargerSession
from hil.vehicle import ChademoVehicle, GbtVehicle, SimulatedLines


@dataclass
class Trace:
    """Everything the charger did while the clock ran."""

    steps: list[tuple[float, Step]] = field(default_factory=list)
    sent: list[tuple[float, CanFrame]] = field(default_factory=list)

    @property
    def events(self) -> list[tuple[float, SessionEvent]]:
        """Every event with its time."""
        return [(t, e) for t, s in self.steps for e in s.events]

    @property
    def last(self) -> VehicleState:
        """The newest snapshot."""
        return self.steps[-1][1].state

    def first_time(self, predicate: Callable[[VehicleState], bool]) -> float | None:
        """When a snapshot first satisfied ``predicate``."""
        return next((t for t, s in self.steps if predicate(s.state)), None)

    def frames(self, arbitration_id: int) -> list[tuple[float, bytes]]:
        """Frames the charger sent with this ID."""
        return [(t, f.data) for t, f in self.sent if f.arbitration_id == arbitration_id]


class Bench:
    """A charger session, a simulated vehicle, the lines between them and a power stage.

    The power stage follows the snapshot as the core would: the vehicle's charge limit while
    charging is permitted (``direction`` +1), its discharge limit while discharging is permitted
    (``direction`` -1), otherwise 0 A (always 0 A with ``direction`` 0). It reports its output
    (the pack's voltage, that current) every step while ``report_output`` holds; a stage that is
    stuck reports ``stuck_current_a`` whatever the snapshot says.
    """

    def __init__(
        self,
        session: ChargerSession,
        vehicle: ChademoVehicle | GbtVehicle,
        lines: SimulatedLines,
        *,
        direction: int = 1,
    ) -> None:
        self.session = session
        self.vehicle = vehicle
        self.lines = lines
        self.direction = direction
        self.now = 0.0
        self.trace = Trace()
        self.drop_to_charger: Callable[[CanFrame], bool] = lambda _frame: False
        self.report_output = True
        self.stuck_current_a: float | None = None

    def run(
        self, duration_s: float, *, until: Callable[[VehicleState], bool] | None = None
    ) -> Trace:
        """Advance the clock in 10 ms steps for ``duration_s`` or until ``until`` holds."""
        end = self.now + duration_s
        while self.now < end:
            self.now = round(self.now + 0.01, 6)
            self._record(self.session.tick(self.now, self.lines.read()))
            for frame in self.vehicle.tick(self.now):
                self._to_charger(frame)
            self._power()
            if until is not None and until(self.trace.last):
                break
        return self.trace

    def _to_charger(self, frame: CanFrame) -> None:
        if self.drop_to_charger(frame):
            return
        self._record(self.session.receive(frame, self.now))

    def _record(self, step: Step) -> None:
        self.trace.steps.append((self.now, step))
        self.lines.write(step.outputs)
        for frame in step.frames:
            self.trace.sent.append((self.now, frame))
            replies = self.vehicle.receive(frame, self.now)
            for reply in replies or ():
                self._to_charger(reply)

    def _stage_current_a(self) -> float:
        """What the stage delivers: the permitted limit in the bench's direction (or stuck)."""
        state = self.trace.last
        current = 0.0
        if self.direction > 0 and state.charge_permitted and state.charge_current_limit_a:
            current = state.charge_current_limit_a
        elif self.direction < 0 and state.discharge_permitted and state.discharge_current_limit_a:
            current = -state.discharge_current_limit_a
        if self.stuck_current_a is not None:
            current = self.stuck_current_a
        return current

    def _power(self) -> None:
        if not self.report_output:
            return
        self.session.set_output(self.vehicle.battery.voltage_v, self._stage_current_a(), self.now)
