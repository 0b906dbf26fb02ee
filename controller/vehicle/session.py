"""What the CHAdeMO and GB/T charger sessions share: the sans-IO shape and fault bookkeeping.

A session is driven by two calls, both pure::

    step = session.receive(frame, now_s)     # a frame from the vehicle
    step = session.tick(now_s, inputs)       # time passing, with the board's digital inputs

and returns a ``Step``: frames to send, events, the ``VehicleState`` and the digital outputs it
wants. ``next_deadline_s`` says when the next tick has work (a periodic frame or a timeout), so a
driver can sleep exactly that long. Faults latch until the connector is unplugged.

Two plain calls tell a session about the charger side:

* ``allow_energy_transfer(allowed)``: the charger side is healthy and willing to move energy. The
  daemon passes it every cycle, before the safety core commands any power (the core commands power
  only once the session reports ENERGY_TRANSFER), so a session goes on to energy transfer with
  ``True`` while the commanded power is still 0 W. ``False`` holds a session before transfer and
  stops one that is transferring with the protocol's normal charger stop.
* ``set_output(voltage_v, current_a, now_s)``: the power stage's measured output at monotonic
  time ``now_s``. A measurement older than ``OUTPUT_STALE_S``, or never made, is unknown: unknown
  current is never taken as "at or below 5 A" when contactors are to open.

``VehicleSession`` is what ``CanVehicleLink`` needs of a session; ``ChargerSession`` (CHAdeMO,
GB/T 27930) and ``DbcProfileSession`` (a generic BMS described by a DBC file) provide it.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol, TypeVar

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import ProtocolError
from controller.vehicle.dbc import DbcCodec, Decoded, ImplausibleValueError, SignalValues
from controller.vehicle.frames import (
    CanFrame,
    EventKind,
    LineInputs,
    LineOutputs,
    SessionEvent,
    Step,
)

# Project choice: a measured output older than this is unknown (the daemon reports it every
# 100 ms cycle; the core's vehicle data deadline is 1 s too).
OUTPUT_STALE_S = 1.0
# CHAdeMO: 0x109.5 bit0 cleared once current is <= 5 A; GB/T 27930: <= 5 A within 100 ms of CST.
STOP_CURRENT_A = 5.0

_State = TypeVar("_State", bound=enum.Enum)


class IllegalTransitionError(RuntimeError):
    """A session tried a state change its transition table does not allow.

    A programming error in the session (h11's ``LocalProtocolError`` for its own side), never the
    vehicle's doing: what the vehicle sends is rejected with a reason, not raised. Deliberately
    outside the ``ControllerError`` tree, so no handler of protocol or link errors swallows it.
    """


def check_transition(
    transitions: Mapping[_State, frozenset[_State]], old: _State, new: _State, protocol: str
) -> None:
    """Raise ``IllegalTransitionError`` unless ``transitions`` allows ``old -> new``."""
    if new not in transitions[old]:
        allowed = ", ".join(sorted(str(state) for state in transitions[old])) or "none"
        raise IllegalTransitionError(
            f"{protocol}: {old} -> {new} is not an allowed transition (from {old}: {allowed})"
        )


def insulation_test_result(
    started_s: float,
    ok_since_s: float | None,
    lost_s: float | None,
    now_s: float,
    *,
    hold_s: float,
    timeout_s: float,
) -> bool | str | None:
    """The insulation test's verdict from the insulation monitor's OK input (IEC 61851-23 and
    GB/T 18487.1 B.3.2: no energy transfer without a passed insulation check).

    True: the monitor has reported OK without a break for ``hold_s``, counted from the test's
    start (``started_s``), so the OK is a measurement made during the test, not one left over
    from before it. A string: the test failed, with the reason: the OK fell during the test (the
    monitor measured a fault), or ``timeout_s`` passed without the hold. None: not decided yet.
    ``ok_since_s`` is when the OK last rose (None while it is not asserted), ``lost_s`` when it
    last fell.
    """
    if lost_s is not None and lost_s >= started_s:
        return (
            "insulation test failed: the insulation monitor reported an insulation fault "
            f"(OK input released {lost_s - started_s:.1f} s into the test)"
        )
    if ok_since_s is not None and now_s - max(ok_since_s, started_s) >= hold_s:
        return True
    if now_s - started_s >= timeout_s:
        return (
            f"insulation test failed: the insulation monitor did not report OK for {hold_s:g} s "
            f"within {timeout_s:g} s (IMD alarm, not measuring, or its OK line not wired)"
        )
    return None


class VehicleSession(Protocol):
    """A sans-IO session as the CAN link drives it."""

    protocol: str
    valid_frames: int  # decoded vehicle messages so far; the link publishes no snapshot before

    @property
    def phase(self) -> VehiclePhase: ...

    @property
    def next_deadline_s(self) -> float: ...

    @property
    def receive_ids(self) -> frozenset[tuple[int, bool]]:
        """(arbitration ID, is extended) of every frame the session reads."""
        ...

    def allow_energy_transfer(self, allowed: bool) -> None:
        """The charger side is healthy and willing to move energy (see the module docstring)."""
        ...

    def set_output(self, voltage_v: float, current_a: float, now_s: float) -> None:
        """The power stage's measured output at ``now_s``; ``current_a`` + charges the vehicle."""
        ...

    def receive(self, frame: CanFrame, now_s: float) -> Step: ...

    def tick(self, now_s: float, inputs: LineInputs) -> Step: ...

    def end(self, now_s: float) -> Step: ...

    def charger_fault(self, reason: str, now_s: float) -> Step: ...


class ChargerSession(ABC):
    """Base of the protocol sessions: phase, latched faults, events and the output buffer."""

    protocol: str = ""

    def __init__(self, codec: DbcCodec, *, extended_ids: bool) -> None:
        self._codec = codec
        self._extended = extended_ids
        self._phase = VehiclePhase.UNPLUGGED
        self._faults: list[str] = []
        self._events: list[SessionEvent] = []
        self._frames: list[CanFrame] = []
        self._observed_s = 0.0
        self._inputs = LineInputs()
        self._outputs = LineOutputs()
        self._allowed = False
        # The power stage's last measurement; None: never measured (or not a number).
        self._output_voltage_v: float | None = None
        self._output_current_a: float | None = None  # + charges the vehicle
        self._output_at_s: float | None = None
        self._now_s = 0.0  # the newest time the driver has passed in
        self._charger_fault = False  # the fault is the charger's own (CHAdeMO 0x109.5 bit1)
        # The insulation monitor's OK input: since when it has held (None: not asserted), and
        # when it last fell (None: never, in this session).
        self._insulation_ok_since_s: float | None = None
        self._insulation_lost_s: float | None = None
        self.malformed_frames = 0
        self.valid_frames = 0  # decoded vehicle messages, over the session's lifetime
        self.unknown_frames = 0
        self.last_malformed_reason = ""
        # The newest step, whose snapshot is built on first use: sealed (built) before any
        # input changes what ``_state`` reads, unless its driver released it (``Step``).
        self._last_step: Step | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(phase={self._phase}, faults={tuple(self._faults)})"

    @property
    def phase(self) -> VehiclePhase:
        """The protocol-neutral phase."""
        return self._phase

    @property
    def faults(self) -> tuple[str, ...]:
        """Latched fault reasons of this session."""
        return tuple(self._faults)

    @property
    @abstractmethod
    def next_deadline_s(self) -> float:
        """Monotonic time at which ``tick`` next has work."""

    @property
    @abstractmethod
    def accepted_ids(self) -> frozenset[int]:
        """Arbitration IDs the session reads (for kernel receive filters)."""

    @property
    def receive_ids(self) -> frozenset[tuple[int, bool]]:
        """(arbitration ID, is extended) of every frame the session reads."""
        return frozenset((i, self._extended) for i in self.accepted_ids)

    def allow_energy_transfer(self, allowed: bool) -> None:
        """The charger side is healthy and willing: go on to (or stay in) energy transfer.

        ``False`` before transfer holds the session (until the protocol's own timeout); during
        transfer it stops the session with the protocol's normal charger stop.
        """
        self._seal()
        self._allowed = allowed

    def set_output(self, voltage_v: float, current_a: float, now_s: float) -> None:
        """The power stage's measured output at ``now_s``; ``current_a`` + charges the vehicle.

        A value that is not a finite number is "not measured" (a driver that does not know the
        current passes ``math.nan``, never 0).
        """
        self._seal()
        self._output_voltage_v = voltage_v if math.isfinite(voltage_v) else None
        self._output_current_a = current_a if math.isfinite(current_a) else None
        self._output_at_s = now_s
        self._now_s = max(self._now_s, now_s)

    def receive(self, frame: CanFrame, now_s: float) -> Step:
        """Handle one received frame."""
        self._seal()
        self._now_s = max(self._now_s, now_s)
        if frame.is_extended_id != self._extended or frame.arbitration_id not in self.accepted_ids:
            self.unknown_frames += 1  # dropped cheaply, no event
            return self._step()
        try:
            self._on_frame(frame, now_s)
        except ImplausibleValueError as exc:
            self._fault(f"implausible value: {exc}", now_s)
        except ProtocolError as exc:
            self._malformed(str(exc))
        return self._step()

    def tick(self, now_s: float, inputs: LineInputs) -> Step:
        """Advance time: periodic frames, timeouts, digital inputs."""
        self._seal()
        if inputs.insulation_ok and self._insulation_ok_since_s is None:
            self._insulation_ok_since_s = now_s
        elif not inputs.insulation_ok and self._insulation_ok_since_s is not None:
            self._insulation_ok_since_s = None
            self._insulation_lost_s = now_s
        self._inputs = inputs
        self._now_s = max(self._now_s, now_s)
        self._on_tick(now_s)
        return self._step()

    def end(self, now_s: float) -> Step:
        """Ask for a normal stop (charger side)."""
        self._seal()
        self._now_s = max(self._now_s, now_s)
        self._on_end(now_s)
        return self._step()

    def charger_fault(self, reason: str, now_s: float) -> Step:
        """The charger itself failed (power stage, emergency stop): stop with a fault."""
        self._seal()
        self._now_s = max(self._now_s, now_s)
        self._charger_fault = True
        self._fault(reason, now_s)
        return self._step()

    @abstractmethod
    def _on_frame(self, frame: CanFrame, now_s: float) -> None: ...

    @abstractmethod
    def _on_tick(self, now_s: float) -> None: ...

    @abstractmethod
    def _on_end(self, now_s: float) -> None: ...

    @abstractmethod
    def _state(self) -> VehicleState: ...

    def _permitted(self) -> tuple[bool, bool]:
        """(charge, discharge) permitted, as ``_state`` reports them; a subclass whose snapshot
        is costly computes them directly (they are needed on every step)."""
        state = self._state()
        return state.charge_permitted, state.discharge_permitted

    # Helpers for subclasses.

    def _insulation_test(
        self, started_s: float, now_s: float, hold_s: float, timeout_s: float
    ) -> bool | str | None:
        """The insulation test begun at ``started_s``: see ``insulation_test_result``."""
        return insulation_test_result(
            started_s,
            self._insulation_ok_since_s,
            self._insulation_lost_s,
            now_s,
            hold_s=hold_s,
            timeout_s=timeout_s,
        )

    def _insulation_alarm(self) -> str | None:
        """After a passed test, while the output may be live: the monitor's OK has fallen (an
        insulation fault on the DC circuit: IEC 61851-23 and GB/T 18487.1 stop the transfer)."""
        if self._inputs.insulation_ok:
            return None
        return "insulation monitor alarm: insulation fault on the DC output (OK input released)"

    def _output_fresh(self) -> bool:
        """The stage reported its output no longer than ``OUTPUT_STALE_S`` ago."""
        at = self._output_at_s
        return at is not None and 0.0 <= self._now_s - at <= OUTPUT_STALE_S

    def _measured_voltage_v(self) -> float | None:
        """The stage's output voltage if freshly measured, else None."""
        return self._output_voltage_v if self._output_fresh() else None

    def _measured_current_a(self) -> float | None:
        """The stage's output current (+ charges) if freshly measured, else None."""
        return self._output_current_a if self._output_fresh() else None

    def _reported_since(self, since_s: float) -> bool:
        """The last measurement was reported after ``since_s``."""
        at = self._output_at_s
        return at is not None and at > since_s

    def _voltage_since_v(self, since_s: float) -> float | None:
        """The output voltage if freshly measured and reported after ``since_s``, else None."""
        return self._measured_voltage_v() if self._reported_since(since_s) else None

    def _current_since_a(self, since_s: float) -> float | None:
        """The output current (+ charges) if freshly measured and reported after ``since_s``."""
        return self._measured_current_a() if self._reported_since(since_s) else None

    def _output_current_low(self) -> bool:
        """Safe to open the contactors: they are open already, or a fresh measurement says
        <= 5 A (CHAdeMO 0x109.5 bit0 rule; GB/T 27930 after CST). Unknown is never low."""
        if not self._outputs.contactors:
            return True
        current = self._measured_current_a()
        return current is not None and abs(current) <= STOP_CURRENT_A

    def _reported_current_a(self) -> float:
        """What the charger tells the vehicle it delivers: the last measurement, 0 before one."""
        return self._output_current_a or 0.0

    def _reported_voltage_v(self) -> float:
        """What the charger tells the vehicle its output voltage is: the last measurement."""
        return self._output_voltage_v or 0.0

    def _decode(self, frame: CanFrame) -> Decoded:
        return self._codec.decode_frame(frame.arbitration_id, frame.data)

    def _send(self, name: str, signals: SignalValues) -> None:
        data = self._codec.encode(name, signals)
        self._frames.append(CanFrame(self._codec.frame_id(name), data, self._extended))

    def _send_raw(self, arbitration_id: int, data: bytes) -> None:
        self._frames.append(CanFrame(arbitration_id, data, self._extended))

    def _set_phase(self, phase: VehiclePhase, now_s: float, why: str) -> None:
        if phase is not self._phase:
            self._phase = phase
            self._observed_s = max(self._observed_s, now_s)
            self._events.append(SessionEvent(EventKind.PHASE_CHANGED, f"{phase}: {why}"))

    def _fault(self, reason: str, now_s: float) -> None:
        """Latch a fault; the subclass's ``_on_fault`` starts the fault stop."""
        if reason not in self._faults:
            self._faults.append(reason)
            self._events.append(SessionEvent(EventKind.FAULT, reason))
            self._on_fault(now_s)

    @abstractmethod
    def _on_fault(self, now_s: float) -> None: ...

    def _malformed(self, reason: str) -> None:
        self.malformed_frames += 1
        self.last_malformed_reason = reason
        self._events.append(SessionEvent(EventKind.MALFORMED_FRAME, reason))

    def _stop_requested(self, reason: str) -> None:
        self._events.append(SessionEvent(EventKind.STOP_REQUESTED, reason))

    def _seen(self, now_s: float) -> None:
        self.valid_frames += 1
        self._observed_s = max(self._observed_s, now_s)

    def _reset_common(self) -> None:
        self._insulation_lost_s = None
        self._faults.clear()
        self._charger_fault = False
        self._observed_s = 0.0

    def _seal(self) -> None:
        """The session is about to change: fix the newest step's snapshot first (see Step)."""
        last = self._last_step
        if last is not None:
            self._last_step = None
            last.seal()

    def _step(self) -> Step:
        # The snapshot is built lazily (it is most of a frame's cost and the link reads it at
        # most once per control cycle); the permissions are computed now, the link compares them.
        step = Step(
            tuple(self._frames) if self._frames else (),
            tuple(self._events) if self._events else (),
            None,
            self._outputs,
            build=self._state,
            permitted=self._permitted(),
        )
        self._frames.clear()
        self._events.clear()
        self._last_step = step
        return step
