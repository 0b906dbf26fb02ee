"""What the CHAdeMO and GB/T charger sessions share: the sans-IO shape and fault bookkeeping.

A session is driven by two calls, both pure::

    step = session.receive(frame, now)     # a frame from the vehicle
    step = session.tick(now, inputs)       # time passing, with the board's digital inputs

and returns a ``Step``: frames to send, events, the ``VehicleState`` and the digital outputs it
wants. ``next_deadline_s`` says when the next tick has work (a periodic frame or a timeout), so a
driver can sleep exactly that long. Faults latch until the connector is unplugged.

``VehicleSession`` is what ``CanVehicleLink`` needs of a session; ``ChargerSession`` (CHAdeMO,
GB/T 27930) and ``DbcProfileSession`` (a generic BMS described by a DBC file) provide it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

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

    def allow_energy_transfer(self, allowed: bool) -> None: ...

    def set_output(self, voltage_v: float, current_a: float) -> None: ...

    def receive(self, frame: CanFrame, now: float) -> Step: ...

    def tick(self, now: float, inputs: LineInputs) -> Step: ...

    def end(self, now: float) -> Step: ...

    def charger_fault(self, reason: str, now: float) -> Step: ...


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
        self._output_voltage_v = 0.0
        self._output_current_a = 0.0  # + charges the vehicle
        self._charger_fault = False  # the fault is the charger's own (CHAdeMO 0x109.5 bit1)
        self.malformed_frames = 0
        self.valid_frames = 0  # decoded vehicle messages, over the session's lifetime
        self.unknown_frames = 0
        self.last_malformed_reason = ""

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
        """Whether the charger may start (or keep) moving energy."""
        self._allowed = allowed

    def set_output(self, voltage_v: float, current_a: float) -> None:
        """The power stage's measured output; ``current_a`` + charges the vehicle."""
        self._output_voltage_v = voltage_v
        self._output_current_a = current_a

    def receive(self, frame: CanFrame, now: float) -> Step:
        """Handle one received frame."""
        if frame.is_extended_id != self._extended or frame.arbitration_id not in self.accepted_ids:
            self.unknown_frames += 1  # dropped cheaply, no event
            return self._step()
        try:
            self._on_frame(frame, now)
        except ImplausibleValueError as exc:
            self._fault(f"implausible value: {exc}", now)
        except ProtocolError as exc:
            self._malformed(str(exc))
        return self._step()

    def tick(self, now: float, inputs: LineInputs) -> Step:
        """Advance time: periodic frames, timeouts, digital inputs."""
        self._inputs = inputs
        self._on_tick(now)
        return self._step()

    def end(self, now: float) -> Step:
        """Ask for a normal stop (charger side)."""
        self._on_end(now)
        return self._step()

    def charger_fault(self, reason: str, now: float) -> Step:
        """The charger itself failed (power stage, emergency stop): stop with a fault."""
        self._charger_fault = True
        self._fault(reason, now)
        return self._step()

    @abstractmethod
    def _on_frame(self, frame: CanFrame, now: float) -> None: ...

    @abstractmethod
    def _on_tick(self, now: float) -> None: ...

    @abstractmethod
    def _on_end(self, now: float) -> None: ...

    @abstractmethod
    def _state(self) -> VehicleState: ...

    # Helpers for subclasses.

    def _decode(self, frame: CanFrame) -> Decoded:
        return self._codec.decode_frame(frame.arbitration_id, frame.data)

    def _send(self, name: str, signals: SignalValues) -> None:
        data = self._codec.encode(name, signals)
        self._frames.append(CanFrame(self._codec.frame_id(name), data, self._extended))

    def _send_raw(self, arbitration_id: int, data: bytes) -> None:
        self._frames.append(CanFrame(arbitration_id, data, self._extended))

    def _set_phase(self, phase: VehiclePhase, now: float, why: str) -> None:
        if phase is not self._phase:
            self._phase = phase
            self._observed_s = max(self._observed_s, now)
            self._events.append(SessionEvent(EventKind.PHASE_CHANGED, f"{phase}: {why}"))

    def _fault(self, reason: str, now: float) -> None:
        """Latch a fault; the subclass's ``_on_fault`` starts the fault stop."""
        if reason not in self._faults:
            self._faults.append(reason)
            self._events.append(SessionEvent(EventKind.FAULT, reason))
            self._on_fault(now)

    @abstractmethod
    def _on_fault(self, now: float) -> None: ...

    def _malformed(self, reason: str) -> None:
        self.malformed_frames += 1
        self.last_malformed_reason = reason
        self._events.append(SessionEvent(EventKind.MALFORMED_FRAME, reason))

    def _stop_requested(self, reason: str) -> None:
        self._events.append(SessionEvent(EventKind.STOP_REQUESTED, reason))

    def _seen(self, now: float) -> None:
        self.valid_frames += 1
        self._observed_s = max(self._observed_s, now)

    def _reset_common(self) -> None:
        self._faults.clear()
        self._charger_fault = False
        self._observed_s = 0.0

    def _step(self) -> Step:
        step = Step(
            frames=tuple(self._frames),
            events=tuple(self._events),
            state=self._state(),
            outputs=self._outputs,
        )
        self._frames.clear()
        self._events.clear()
        return step
