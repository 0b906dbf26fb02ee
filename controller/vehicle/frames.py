"""Protocol-neutral values the pure session machines exchange with their driver.

A session never touches a socket, a GPIO line or a clock: it takes a ``CanFrame`` or a tick and
the current monotonic time, and returns a ``Step`` (frames to send, events, the vehicle snapshot and
the digital outputs it wants). The async link and the simulator both drive sessions this way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.core.snapshots import VehicleState


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One classic CAN frame, independent of python-can."""

    arbitration_id: int
    data: bytes
    is_extended_id: bool

    def __repr__(self) -> str:
        width = 8 if self.is_extended_id else 3
        return f"CanFrame({self.arbitration_id:0{width}X}#{self.data.hex().upper()})"


@dataclass(frozen=True, slots=True)
class LineInputs:
    """Digital inputs of the charger board, read by the driver before each tick.

    ``plugged``: the connector is in the vehicle inlet (proximity / GB/T CC1).
    ``k``: CHAdeMO vehicle charge-permission line (k), pulled by the vehicle.
    ``emergency_stop``: the charger's emergency stop switch is pressed (IEC 61851-1 emergency
    switching); the safety core holds 0 W and latches while it is.
    ``fault_reset``: the board's reset push-button is held down. Pressing it (a release, then a
    press) is a deliberate act that asks for a fault reset; holding it down asks nothing more.
    ``insulation_ok``: the insulation monitor (IMD) on the DC output reports the insulation
    resistance above its alarm threshold: its OK relay, which is fail-safe (energised = OK), so
    a broken wire or a dead IMD reads as not OK. IEC 61851-23 and GB/T 18487.1 allow energy
    transfer only after a passed insulation check.
    """

    plugged: bool = False
    k: bool = False
    emergency_stop: bool = False
    fault_reset: bool = False
    insulation_ok: bool = False


@dataclass(frozen=True, slots=True)
class LineOutputs:
    """Digital outputs the session wants on the charger board.

    ``d1``: CHAdeMO sequence signal 1 / GB/T low-voltage auxiliary power (K3, K4).
    ``d2``: CHAdeMO sequence signal 2 (unused by GB/T).
    ``contactors``: the charger's DC output contactors (GB/T K1, K2).
    ``lock``: the connector lock.
    """

    d1: bool = False
    d2: bool = False
    contactors: bool = False
    lock: bool = False


class ChargerLines(Protocol):
    """The charger board's digital lines, as a GPIO board or the simulator provides them.

    The link calls ``open`` before the first ``read``/``write`` and again to retry after a
    failure; ``close`` turns every output off and releases the lines. ``read`` and ``write`` must
    not block. A line that cannot be opened, read or driven raises ``VehicleLinkError``.
    """

    def open(self) -> None:
        """Acquire the lines; every output starts off."""
        ...

    def read(self) -> LineInputs:
        """The present state of the inputs."""
        ...

    def write(self, outputs: LineOutputs) -> None:
        """Drive the outputs; must not block."""
        ...

    def close(self) -> None:
        """Every output off, then release the lines; never raises."""
        ...


class EventKind(enum.StrEnum):
    """What a session reports besides its snapshot."""

    PHASE_CHANGED = "phase_changed"
    FAULT = "fault"  # the session stopped energy transfer for a reason (vehicle or timeout)
    STOP_REQUESTED = "stop_requested"  # the vehicle asked for a normal stop
    MALFORMED_FRAME = "malformed_frame"  # a frame was rejected; state unchanged
    TRANSPORT = "transport"  # J1939 transport: retransmission requested or transfer aborted


SAFETY_EVENTS = frozenset({EventKind.PHASE_CHANGED, EventKind.FAULT, EventKind.STOP_REQUESTED})


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Something that happened in a session, with a reason a technician can read."""

    kind: EventKind
    reason: str

    @property
    def safety_relevant(self) -> bool:
        """True when the control loop must react now rather than at its next tick."""
        return self.kind in SAFETY_EVENTS


_NO_OUTPUTS = LineOutputs()


class Step:
    """What one input (frame or tick) made the session do.

    ``state`` is either given or built on first use by ``build`` (a session's snapshot builder):
    building the ``VehicleState`` is most of a frame's cost, and the link reads it at most once
    per control cycle. A session ``seal``s its latest step before any input changes what the
    builder would read, so a lazy ``state`` is always the session's state as of this step. A
    driver that will never read a step's state (it is superseded) ``release``s it, and the
    session then skips the build (read anyway, it is the session's state when read).
    ``permitted`` (charge, discharge) is always known at once:
    the link compares it on every step to wake the control loop.
    """

    __slots__ = ("_build", "_released", "_state", "events", "frames", "outputs", "permitted")

    def __init__(
        self,
        frames: tuple[CanFrame, ...],
        events: tuple[SessionEvent, ...],
        state: VehicleState | None = None,
        outputs: LineOutputs = _NO_OUTPUTS,
        *,
        build: Callable[[], VehicleState] | None = None,
        permitted: tuple[bool, bool] | None = None,
    ) -> None:
        if build is None:
            if state is None:
                raise TypeError("Step needs a state or a build")
            build = _known(state)
        self.frames = frames
        self.events = events
        self.outputs = outputs
        self._state = state
        self._build = build
        self._released = False
        if permitted is None:
            known = self.state
            permitted = (known.charge_permitted, known.discharge_permitted)
        self.permitted = permitted

    def __repr__(self) -> str:
        state = "pending" if self._state is None else repr(self._state)
        return f"Step(frames={self.frames!r}, events={self.events!r}, state={state})"

    @property
    def state(self) -> VehicleState:
        """The vehicle snapshot as of this step."""
        state = self._state
        if state is None:
            state = self._state = self._build()
        return state

    def seal(self) -> None:
        """Build the state now unless released: the session is about to change."""
        if self._state is None and not self._released:
            self._state = self._build()

    def release(self) -> None:
        """The driver will not read this step's state: a later seal need not build it."""
        self._released = True


def _known(state: VehicleState) -> Callable[[], VehicleState]:
    return lambda: state
