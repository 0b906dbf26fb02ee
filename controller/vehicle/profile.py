"""A generic BMS described by a DBC file and a profile (``vehicle.protocol: dbc``), sans-IO.

For stationary packs and fleet vehicles that speak neither CHAdeMO nor GB/T 27930: the profile
(``config/bms/*.yaml``, schema ``controller.config.BmsProfile``) maps DBC signals to
``VehicleState`` fields, flags and fault reasons, with a staleness deadline per message.

``DbcProfileSession`` takes the profile and its DBC as values (``controller.vehicle.factory``
reads the files and reports a wrong profile at its line). It has the shape of the protocol
sessions (``receive(frame, now_s)`` and ``tick(now_s, inputs)`` return a ``Step``), so
``CanVehicleLink`` drives it the same way. It only listens: it sends no frame. Issue item 6:
nothing stale or implausible reaches the core as valid.

* a message older than its ``deadline_s`` (or never seen that long after the first tick) is a
  fault naming the message and the deadline, and the values it fed are withdrawn;
* a value outside its DBC range, outside the field's physical range (SoC 0..100 %, limits >= 0,
  ...) or outside the profile's own ``min``/``max`` is a fault with the value and the bound, and
  the field reads None; so is a minimum above its maximum (cells, temperatures);
* a BMS fault signal that is non-zero is a fault with the profile's reason.

Faults hold while their cause holds: the safety core latches them and decides when power may
resume (``safety.fault_reset``, ``fault_hold_s``). A charger fault (the board's lines failed)
holds for the session's lifetime. With every message fresh and no fault the phase is
ENERGY_TRANSFER, so the core may command power within the BMS's limits; the ``contactors`` output
follows ``allow_energy_transfer`` while that holds and drops at once otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import BmsProfile, BmsSignal, Loc
from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import ProtocolError
from controller.vehicle.dbc import DbcCodec, SignalValues
from controller.vehicle.frames import (
    CanFrame,
    EventKind,
    LineInputs,
    LineOutputs,
    SessionEvent,
    Step,
)

POLL_S = 0.1  # longest sleep between ticks: staleness is found within this

# Physical bounds of each VehicleState field (issue item 6: SoC above 100 is implausible;
# controller.core.snapshots: limits are magnitudes >= 0; pack current + charges, either sign).
FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "soc_pct": (0.0, 100.0),
    "discharge_soc_min_pct": (0.0, 100.0),
    "pack_voltage_v": (0.0, 1500.0),
    "pack_current_a": (-3000.0, 3000.0),
    "charge_current_limit_a": (0.0, 3000.0),
    "charge_voltage_limit_v": (0.0, 1500.0),
    "discharge_current_limit_a": (0.0, 3000.0),
    "discharge_voltage_min_v": (0.0, 1500.0),
    "battery_temp_max_c": (-50.0, 150.0),
    "battery_temp_min_c": (-50.0, 150.0),
    "cell_voltage_max_v": (0.0, 10.0),
    "cell_voltage_min_v": (0.0, 10.0),
    "capacity_kwh": (0.0, 10_000.0),
}
# A minimum above its maximum cannot be true.
_ORDERED_PAIRS = (
    ("cell_voltage_min_v", "cell_voltage_max_v"),
    ("battery_temp_min_c", "battery_temp_max_c"),
)


@dataclass(frozen=True, slots=True)
class _Mapped:
    """One profile entry resolved against the DBC."""

    message: str
    field: str
    spec: BmsSignal


def profile_problems(profile: BmsProfile, codec: DbcCodec) -> list[tuple[Loc, str]]:
    """Names in the profile that the DBC does not have, and values that cannot be checked."""
    problems: list[tuple[Loc, str]] = []
    known = codec.message_names
    for message, spec in profile.messages.items():
        if message not in known:
            problems.append(
                (
                    ("messages", message),
                    f"message {message!r} is not in the DBC; expected one of: {', '.join(known)}",
                )
            )
            continue
        for field, mapped in spec.values.mapped().items():
            loc: Loc = ("messages", message, "values", field)
            if (why := _missing_signal(codec, message, mapped.signal)) is not None:
                problems.append((loc, why))
                continue
            low, high = codec.signal_range(message, mapped.signal)
            if (low is None or high is None) and (mapped.min is None or mapped.max is None):
                problems.append(
                    (
                        loc,
                        f"signal {mapped.signal!r} has no range in the DBC; expected a "
                        "[min|max] there or min and max here, so impossible values are caught",
                    )
                )
        named = [("flags", flag, signal) for flag, signal in spec.flags.mapped().items()]
        named += [("faults", signal, signal) for signal in spec.faults]
        for kind, key, signal in named:
            if (why := _missing_signal(codec, message, signal)) is not None:
                problems.append((("messages", message, kind, key), why))
    return problems


def _missing_signal(codec: DbcCodec, message: str, signal: str) -> str | None:
    signals = codec.signal_names(message)
    if signal in signals:
        return None
    return f"signal {signal!r} is not in message {message!r}; expected one of: {', '.join(signals)}"


class DbcProfileSession:
    """A generic BMS as the CAN link drives it: listen, check, report."""

    protocol = "dbc"

    def __init__(self, profile: BmsProfile, codec: DbcCodec) -> None:
        problems = profile_problems(profile, codec)
        if problems:
            raise ProtocolError("; ".join(f"{'.'.join(map(str, loc))}: {m}" for loc, m in problems))
        self.profile = profile
        self._codec = codec
        self._by_id: dict[tuple[int, bool], str] = {
            (codec.frame_id(name), codec.is_extended(name)): name for name in profile.messages
        }
        self._values: dict[str, list[_Mapped]] = {
            name: [_Mapped(name, field, spec) for field, spec in msg.values.mapped().items()]
            for name, msg in profile.messages.items()
        }
        self._reading: dict[str, float | None] = {}
        self._flags: dict[str, bool] = {}
        self._implausible: dict[str, str] = {}  # field or signal -> reason
        self._bms_faults: dict[str, str] = {}  # message.signal -> reason
        self._charger_faults: list[str] = []
        self._last_seen: dict[str, float] = {}
        self._started_s: float | None = None
        self._last_tick_s = 0.0
        self._observed_s = 0.0
        self._allowed = False
        self._ended = False
        self._phase = VehiclePhase.UNPLUGGED
        self._reported: tuple[str, ...] = ()
        self._events: list[SessionEvent] = []
        self.valid_frames = 0
        self.malformed_frames = 0
        self.unknown_frames = 0
        self.last_malformed_reason = ""

    def __repr__(self) -> str:
        what = self.profile.name or self.profile.dbc_file
        return f"DbcProfileSession({what}, phase={self._phase}, faults={self.faults})"

    @property
    def phase(self) -> VehiclePhase:
        """UNPLUGGED before the first frame; HANDSHAKE until every message has arrived;
        ENERGY_TRANSFER while all are fresh and nothing is wrong; FAULT otherwise."""
        return self._phase

    @property
    def faults(self) -> tuple[str, ...]:
        """Every present fault reason."""
        return self._fault_reasons(self._last_tick_s)

    @property
    def next_deadline_s(self) -> float:
        """The next staleness deadline, or a poll."""
        candidates = [self._last_tick_s + POLL_S]
        for name, msg in self.profile.messages.items():
            seen = self._last_seen.get(name, self._started_s)
            if seen is not None and seen + msg.deadline_s >= self._last_tick_s:
                candidates.append(seen + msg.deadline_s + 1e-3)  # just past: stale by then
        return min(candidates)

    @property
    def receive_ids(self) -> frozenset[tuple[int, bool]]:
        """The profile's messages."""
        return frozenset(self._by_id)

    def allow_energy_transfer(self, allowed: bool) -> None:
        """Whether the charger may move energy (closes the contactors output while healthy)."""
        if allowed and not self._allowed:
            self._ended = False
        self._allowed = allowed

    def set_output(self, voltage_v: float, current_a: float, now_s: float) -> None:
        """A generic BMS is only listened to: the charger's output is not reported to it."""

    def receive(self, frame: CanFrame, now_s: float) -> Step:
        """Decode a frame of the profile; anything else is dropped and counted."""
        name = self._by_id.get((frame.arbitration_id, frame.is_extended_id))
        if name is None:
            self.unknown_frames += 1
            return self._step(now_s)
        try:
            decoded, rejected = self._codec.decode_checked(frame.arbitration_id, frame.data)
        except ProtocolError as exc:
            self.malformed_frames += 1
            self.last_malformed_reason = str(exc)
            self._events.append(SessionEvent(EventKind.MALFORMED_FRAME, str(exc)))
            return self._step(now_s)
        self.valid_frames += 1
        self._last_seen[name] = now_s
        self._observed_s = max(self._observed_s, now_s)
        if self._started_s is None:
            self._started_s = now_s
        self._take(name, decoded.signals, rejected)
        return self._step(now_s)

    def tick(self, now_s: float, inputs: LineInputs) -> Step:
        """Time passing: staleness. The board's inputs are not used by a generic BMS."""
        self._last_tick_s = now_s
        if self._started_s is None:
            self._started_s = now_s
        return self._step(now_s)

    def end(self, now_s: float) -> Step:
        """The charger ends the session: contactors open, nothing permitted until allowed again."""
        self._ended = True
        self._allowed = False
        return self._step(now_s)

    def charger_fault(self, reason: str, now_s: float) -> Step:
        """The charger itself failed: a fault for the rest of this session's life."""
        if reason not in self._charger_faults:
            self._charger_faults.append(reason)
        return self._step(now_s)

    # Decoding.

    def _take(self, name: str, values: SignalValues, rejected: dict[str, str]) -> None:
        spec = self.profile.messages[name]
        for mapped in self._values[name]:
            self._take_value(mapped, values, rejected)
        for flag, signal in spec.flags.mapped().items():
            key = f"{name}.{signal}"
            if signal in rejected:
                self._implausible[key] = f"implausible {rejected[signal]}"
                self._flags[flag] = False
            elif signal in values:
                self._implausible.pop(key, None)
                self._flags[flag] = values[signal] != 0
        for signal, reason in spec.faults.items():
            key = f"{name}.{signal}"
            if signal in rejected:
                self._bms_faults[key] = f"{reason} (implausible {rejected[signal]})"
            elif signal in values:
                if values[signal] != 0:
                    named = self._codec.choice(name, signal, values[signal])
                    detail = named if named is not None else f"{signal} = {values[signal]:g}"
                    self._bms_faults[key] = f"BMS: {reason} ({detail})"
                else:
                    self._bms_faults.pop(key, None)
        for low, high in _ORDERED_PAIRS:
            self._check_order(low, high)

    def _take_value(self, mapped: _Mapped, values: SignalValues, rejected: dict[str, str]) -> None:
        field, spec = mapped.field, mapped.spec
        if spec.signal in rejected:
            self._reading[field] = None
            self._implausible[field] = f"implausible {field}: {rejected[spec.signal]}"
            return
        if spec.signal not in values:
            return  # multiplexed signal not in this frame
        value = -values[spec.signal] if spec.negate else values[spec.signal]
        low, high = FIELD_BOUNDS[field]
        if spec.min is not None:
            low = max(low, spec.min)
        if spec.max is not None:
            high = min(high, spec.max)
        if not math.isfinite(value) or not low <= value <= high:
            self._reading[field] = None
            self._implausible[field] = (
                f"implausible {field} {value:g}: expected {low:g} to {high:g} "
                f"({mapped.message}.{spec.signal})"
            )
            return
        self._reading[field] = value
        self._implausible.pop(field, None)

    def _check_order(self, low_field: str, high_field: str) -> None:
        key = f"{low_field}>{high_field}"
        low, high = self._reading.get(low_field), self._reading.get(high_field)
        if low is not None and high is not None and low > high:
            self._implausible[key] = f"implausible {low_field} {low:g} above {high_field} {high:g}"
        else:
            self._implausible.pop(key, None)

    # State.

    def _stale(self, now_s: float) -> dict[str, str]:
        stale: dict[str, str] = {}
        if self._started_s is None:
            return stale
        for name, msg in self.profile.messages.items():
            seen = self._last_seen.get(name)
            since = self._started_s if seen is None else seen
            if now_s - since > msg.deadline_s:
                stale[name] = f"{name} not received for more than {msg.deadline_s:g} s"
        return stale

    def _fault_reasons(self, now_s: float) -> tuple[str, ...]:
        return (
            *self._charger_faults,
            *self._stale(now_s).values(),
            *self._implausible.values(),
            *self._bms_faults.values(),
        )

    def _step(self, now_s: float) -> Step:
        faults = self._fault_reasons(now_s)
        stale = self._stale(now_s)
        for reason in faults:
            if reason not in self._reported:
                self._events.append(SessionEvent(EventKind.FAULT, reason))
        self._reported = faults
        phase = self._next_phase(faults)
        if phase is not self._phase:
            self._phase = phase
            why = faults[0] if faults else "every message fresh and plausible"
            self._events.append(SessionEvent(EventKind.PHASE_CHANGED, f"{phase}: {why}"))
        healthy = phase is VehiclePhase.ENERGY_TRANSFER
        step = Step(
            frames=(),
            events=tuple(self._events),
            state=self._state(phase, faults, stale),
            outputs=LineOutputs(contactors=healthy and self._allowed),
        )
        self._events.clear()
        return step

    def _next_phase(self, faults: tuple[str, ...]) -> VehiclePhase:
        if self._ended:
            return VehiclePhase.ENDED
        if faults and (self.valid_frames or self._charger_faults):
            return VehiclePhase.FAULT
        if not self.valid_frames:
            return VehiclePhase.UNPLUGGED
        if any(name not in self._last_seen for name in self.profile.messages):
            return VehiclePhase.HANDSHAKE
        return VehiclePhase.ENERGY_TRANSFER

    def _state(
        self, phase: VehiclePhase, faults: tuple[str, ...], stale: dict[str, str]
    ) -> VehicleState:
        withdrawn = {
            mapped.field for name in stale for mapped in self._values[name]
        }  # a stale message's values are not current: they are not reported

        def value(field: str) -> float | None:
            return None if field in withdrawn else self._reading.get(field)

        healthy = phase is VehiclePhase.ENERGY_TRANSFER
        mapped_flags = {
            flag for msg in self.profile.messages.values() for flag in msg.flags.mapped()
        }

        def permitted(flag: str) -> bool:
            # A flag the profile maps is the BMS's word; one it does not map is not a veto.
            return healthy and (self._flags.get(flag, False) if flag in mapped_flags else True)

        capacity = value("capacity_kwh")
        return VehicleState(
            observed_at_s=self._observed_s,
            phase=phase,
            protocol=self.protocol,
            soc_pct=value("soc_pct"),
            pack_voltage_v=value("pack_voltage_v"),
            pack_current_a=value("pack_current_a"),
            charge_current_limit_a=value("charge_current_limit_a"),
            charge_voltage_limit_v=value("charge_voltage_limit_v"),
            discharge_current_limit_a=value("discharge_current_limit_a"),
            discharge_voltage_min_v=value("discharge_voltage_min_v"),
            discharge_soc_min_pct=value("discharge_soc_min_pct"),
            battery_temp_max_c=value("battery_temp_max_c"),
            battery_temp_min_c=value("battery_temp_min_c"),
            cell_voltage_max_v=value("cell_voltage_max_v"),
            cell_voltage_min_v=value("cell_voltage_min_v"),
            capacity_kwh=capacity if capacity is not None else self.profile.capacity_kwh,
            charge_permitted=permitted("charge_permitted"),
            discharge_permitted=permitted("discharge_permitted"),
            stop_requested=self._flags.get("stop_requested", False),
            faults=faults,
            identity=self.profile.name,
        )
