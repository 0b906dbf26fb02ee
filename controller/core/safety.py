"""The pure decide function: snapshots, policy, state and time in; one safe power command out.

Sans-IO, in the style of h11: no IO, no asyncio, no logging, no clock reads. The caller passes the
time (``Now``: monotonic seconds for freshness, ramps and expiry; an aware wall-clock datetime in
the site's time zone for departure and tariff windows) and the ``CoreState`` returned by the
previous call, and gets back the ``Decision`` and the next ``CoreState``::

    decision, state = decide(inputs, state, now, policy)

Order of a decision:

1. account the energy discharged since the last call (wear budget, per local day);
2. update the fault and stop latches;
3. gates: a latch, stale or missing data, no energy-transfer session or unknown SoC give 0 W in
   both directions (the command drops to 0 W at once, the power stage is disabled);
4. otherwise every directional interlock adds its limit (rules.py);
5. arbitration picks the request (arbitration.py); it is clamped to the smallest limit in its
   direction (which one is reported as binding), ramped from the last command, and clamped again,
   so a falling limit cuts the command at once while rises follow the ramp.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from controller.core.arbitration import Request, RequestSource, arbitrate
from controller.core.policy import FaultResetMode, Policy, SafetyPolicy
from controller.core.rules import (
    Direction,
    Finding,
    Limit,
    Readings,
    Reason,
    Rule,
    cell_voltage,
    departure_charge_power_w,
    departure_part,
    floor_parts,
    is_fresh,
    next_local_instant,
    plausible,
    ratings,
    reading,
    soc_ceiling,
    soc_floor,
    temperatures,
    vehicle_current,
    vehicle_permission,
    vehicle_voltage,
    wear_budget,
    zero_both,
)
from controller.core.snapshots import (
    InverterState,
    PlannedPower,
    PowerCommand,
    PowerState,
    Setpoint,
    VehiclePhase,
    VehicleState,
)

_T = TypeVar("_T")

# Re-exported so callers need one import for the whole core API.
__all__ = [
    "CoreState",
    "Decision",
    "Direction",
    "FaultReset",
    "Inputs",
    "Latch",
    "Limit",
    "Now",
    "Reason",
    "Rule",
    "StateFormatError",
    "decide",
    "durable_state",
    "reset_faults",
    "restore_state",
]

# Phases in which the vehicle is talking to us; silence then is a fault, not an empty connector.
_SESSION_PHASES = frozenset(
    {
        VehiclePhase.HANDSHAKE,
        VehiclePhase.READY,
        VehiclePhase.ENERGY_TRANSFER,
        VehiclePhase.STOPPING,
        VehiclePhase.FAULT,
    }
)


@dataclass(frozen=True, slots=True)
class Now:
    """The time of a decision, read once by the caller."""

    monotonic_s: float  # freshness, ramp and setpoint expiry
    wall: dt.datetime  # aware, in the site's time zone: departure and tariff windows

    def __post_init__(self) -> None:
        if self.wall.tzinfo is None or self.wall.utcoffset() is None:
            raise ValueError("Now.wall: expected an aware datetime in the site's time zone")


@dataclass(frozen=True, slots=True)
class Inputs:
    """The latest snapshots from the links, and the emergency stop input."""

    vehicle: VehicleState | None = None
    inverter: InverterState | None = None
    setpoint: Setpoint | None = None
    emergency_stop: bool = False  # the site's E-stop input (or an operator's stop command)
    # The wall clock is synchronised (NTP) and not before the build: windows, departure plans and
    # the wear day can be trusted. False makes time-based policy conservative.
    clock_trusted: bool = True
    # The local plan's power for now (fallback ``optimize``); None: no plan (the wiring logs why).
    plan: PlannedPower | None = None


@dataclass(frozen=True, slots=True)
class Latch:
    """A latched stop: set by any cause, cleared only once every cause is gone and reset."""

    causes: tuple[str, ...] = ()  # every cause seen since it latched; empty = not latched
    active: bool = False  # a cause was present at the last decision
    clear_since_s: float | None = None  # monotonic time the causes were first seen gone
    # A cause needs a person: only a reset command clears it (the emergency stop, always).
    manual: bool = False

    @property
    def latched(self) -> bool:
        return bool(self.causes)


@dataclass(frozen=True, slots=True)
class CoreState:
    """What persists between decisions. ``CoreState()`` is the state at start-up.

    A restarting daemon may seed ``wear_day`` and ``discharged_today_wh`` from its ledger so the
    wear budget survives restarts.
    """

    last_command_w: float = 0.0  # the ramp starts from here
    decided_at_s: float | None = None  # monotonic time of the last decision
    fault_latch: Latch = field(default_factory=Latch)
    stop_latch: Latch = field(default_factory=Latch)
    # Starts blocked: after a restart, discharge waits for floor + hysteresis like after a stop.
    floor_blocked: bool = True
    ceiling_blocked: bool = False
    wear_day: dt.date | None = None  # local date that discharged_today_wh belongs to
    discharged_today_wh: float = 0.0
    # The plugged-in session's departure (UTC), fixed when the session is first seen and kept
    # until the car is unplugged: from that instant on the reserve is the target.
    departure_at: dt.datetime | None = None
    departure_charging: bool = False  # the departure guarantee is charging toward the target
    # An emergency stop was reset: no power until a start (ISO 13850: the reset alone shall not
    # restart): a setpoint received after ``start_after_s`` (None after a restart: after the
    # first decision), or the car re-plugged.
    awaiting_start: bool = False
    start_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision: the command, and everything needed to explain it."""

    command: PowerCommand
    power_state: PowerState
    request: Request  # what arbitration asked for, before any interlock
    target_w: float  # the request clamped to the limits, before the ramp
    limits: tuple[Limit, ...]  # every limit in force
    binding: Limit | None  # the limit that cut the request; None if the request fitted
    reasons: tuple[Reason, ...]  # for the caller to log
    soc_floor_pct: float | None  # effective floor (owner, vehicle, departure); None if gated

    def cap_w(self, direction: Direction) -> float:
        """The smallest limit in force in ``direction`` (inf if none)."""
        return _cap(self.limits, direction)


@dataclass(frozen=True, slots=True)
class FaultReset:
    """The answer to a manual reset command."""

    accepted: bool
    reason: Reason


def decide(
    inputs: Inputs, state: CoreState, now: Now, policy: Policy
) -> tuple[Decision, CoreState]:
    """Decide the power command for ``now``. Pure: the same arguments give the same result."""
    safety = policy.safety
    now_s = now.monotonic_s
    interval_s = 0.0 if state.decided_at_s is None else max(0.0, now_s - state.decided_at_s)
    inverter_fresh = _inverter_fresh(inputs.inverter, now_s, safety)
    wear_day, discharged_wh = _wear_count(state, inverter_fresh, interval_s, now.wall.date())

    causes = tuple(_fault_causes(inputs))
    fault_latch = _update_latch(
        state.fault_latch,
        tuple(cause for _, cause in causes),
        now_s,
        auto=safety.fault_reset is FaultResetMode.AUTO,
        hold_s=safety.fault_hold_s,
        manual=any(_needs_a_person(rule, safety) for rule, _ in causes),
    )
    # A stop request is the normal end of a session, not a fault: it holds like a fault (so a
    # flapping flag cannot restart power) but always resets automatically.
    stop_latch = _update_latch(
        state.stop_latch,
        ("vehicle requested stop",) if inputs.vehicle and inputs.vehicle.stop_requested else (),
        now_s,
        auto=True,
        hold_s=safety.fault_hold_s,
        manual=False,
    )
    departure_at = session_departure(state.departure_at, inputs, now, policy)

    admitted = _admit(inputs, fault_latch, stop_latch, now_s, policy)
    floor_blocked, ceiling_blocked = state.floor_blocked, state.ceiling_blocked
    soc_floor_pct: float | None = None
    guarantee: _Guarantee | None = None
    if isinstance(admitted, Readings):
        directional = _directional(
            admitted,
            policy,
            state,
            now=now,
            interval_s=interval_s,
            discharged_wh=discharged_wh,
            departure_at=departure_at,
            clock_trusted=inputs.clock_trusted,
        )
        findings = directional.findings
        floor_blocked = directional.floor_blocked
        ceiling_blocked = directional.ceiling_blocked
        soc_floor_pct = directional.soc_floor_pct
        guarantee = directional.guarantee
    else:
        findings = admitted
    limits = tuple(f for f in findings if isinstance(f, Limit))
    reasons = [f for f in findings if isinstance(f, Reason)]

    soc_pct = _soc(inputs.vehicle)
    soc_low_pct = None if soc_pct is None else soc_pct - safety.soc_resolution_pct
    request = arbitrate(
        inputs.setpoint,
        policy,
        now_s,
        now.wall,
        soc_low_pct,
        clock_trusted=inputs.clock_trusted,
        plan=inputs.plan,
    )
    reasons.append(Reason(Rule.ARBITRATION, request.note))

    awaiting_start, start_after_s = _awaiting_start(state, inputs, request, now_s)
    wanted_w, binding_override = request.power_w, None
    if awaiting_start:
        wanted_w = 0.0
        reasons.append(
            Reason(
                Rule.FAULT_RESET,
                "emergency stop reset: no power until a start (a new aggregator setpoint, "
                "or the car unplugged and plugged in again)",
            )
        )
    elif guarantee is not None and guarantee.power_w > wanted_w:
        # The departure guarantee charges whatever the source asks (IEC 61851-1 leaves the
        # schedule to the charger; the owner's target is the promise this charger made).
        wanted_w, binding_override = guarantee.power_w, guarantee.limit
        reasons.append(Reason(Rule.DEPARTURE_RESERVE, guarantee.limit.source))

    shaped = _shape(wanted_w, limits, state.last_command_w, interval_s, safety)
    if shaped.ramped:
        reasons.append(
            Reason(
                Rule.RAMP,
                f"{state.last_command_w:.0f} W toward {shaped.target_w:.0f} W "
                f"at {safety.ramp_w_per_s:g} W/s",
            )
        )
    gated = not isinstance(admitted, Readings)
    charge_cap_w, discharge_cap_w = (
        _cap(limits, Direction.CHARGE),
        _cap(limits, Direction.DISCHARGE),
    )
    enable = not gated and (charge_cap_w > 0 or discharge_cap_w > 0)
    command_w = shaped.command_w if enable else 0.0
    binding = shaped.binding if binding_override is None or shaped.binding else binding_override

    decision = Decision(
        command=PowerCommand(power_w=command_w, enable=enable),
        power_state=_power_state(command_w, fault_latch, stop_latch, inputs.vehicle, limits),
        request=request,
        target_w=shaped.target_w,
        limits=limits,
        binding=binding,
        reasons=tuple(reasons),
        soc_floor_pct=soc_floor_pct,
    )
    new_state = CoreState(
        last_command_w=command_w,
        decided_at_s=now_s,
        fault_latch=fault_latch,
        stop_latch=stop_latch,
        floor_blocked=floor_blocked,
        ceiling_blocked=ceiling_blocked,
        wear_day=wear_day,
        discharged_today_wh=discharged_wh,
        departure_at=departure_at,
        departure_charging=guarantee is not None,
        awaiting_start=awaiting_start,
        start_after_s=start_after_s,
    )
    return decision, new_state


def reset_faults(state: CoreState) -> tuple[CoreState, FaultReset]:
    """A manual reset command: clears the latches only if no cause was present last decision.

    Accepted in either reset mode (in auto mode it cuts the hold short). A cause that is back at
    the next decision latches again at once. Resetting an emergency stop does not restart: the
    core then waits for a start (``CoreState.awaiting_start``).
    """
    latched = state.fault_latch.causes + state.stop_latch.causes
    if not latched:
        return state, FaultReset(False, Reason(Rule.FAULT_RESET, "nothing latched"))
    if state.fault_latch.active or state.stop_latch.active:
        note = "refused, a cause is still present; latched: " + ", ".join(latched)
        return state, FaultReset(False, Reason(Rule.FAULT_RESET, note))
    emergency = any(cause == _EMERGENCY_STOP_CAUSE for cause in state.fault_latch.causes)
    cleared = replace(
        state,
        fault_latch=Latch(),
        stop_latch=Latch(),
        awaiting_start=state.awaiting_start or emergency,
        start_after_s=state.decided_at_s if emergency else state.start_after_s,
    )
    note = "cleared: " + ", ".join(latched)
    if emergency:
        note += "; power resumes only after a start"
    return cleared, FaultReset(True, Reason(Rule.FAULT_RESET, note))


# --- what survives a restart ----------------------------------------------------------------------

DURABLE_VERSION = 1


class StateFormatError(ValueError):
    """Saved core state that cannot be restored (wrong version, type or value)."""


def durable_state(state: CoreState) -> dict[str, object]:
    """The part of the state a restart must not forget, as JSON-ready data.

    Latches (a restart is not a reset), the wait for a start after an emergency stop reset, the
    session's departure and the wear count. The caller writes it durably before the command
    that follows a change, and restores it before the first command after a start.
    """
    return {
        "version": DURABLE_VERSION,
        "fault_latch": {
            "causes": list(state.fault_latch.causes),
            "manual": state.fault_latch.manual,
        },
        "stop_latch": {"causes": list(state.stop_latch.causes), "manual": False},
        "awaiting_start": state.awaiting_start,
        "departure_at": None if state.departure_at is None else state.departure_at.isoformat(),
        "wear_day": None if state.wear_day is None else state.wear_day.isoformat(),
        "discharged_today_wh": state.discharged_today_wh,
    }


def restore_state(state: CoreState, data: object) -> CoreState:
    """``state`` with what ``durable_state`` saved; StateFormatError (why) if malformed.

    A restored latch is latched but not active, and its hold starts again: monotonic times do
    not survive a restart.
    """
    if not isinstance(data, dict) or data.get("version") != DURABLE_VERSION:
        raise StateFormatError(f"core state: expected version {DURABLE_VERSION}")

    def latch(key: str) -> Latch:
        raw = data.get(key)
        if not isinstance(raw, dict):
            raise StateFormatError(f"core state: {key}: expected an object")
        causes, manual = raw.get("causes"), raw.get("manual")
        if not isinstance(causes, list) or not all(isinstance(c, str) for c in causes):
            raise StateFormatError(f"core state: {key}.causes: expected a list of strings")
        if not isinstance(manual, bool):
            raise StateFormatError(f"core state: {key}.manual: expected true or false")
        return Latch(causes=tuple(causes), manual=manual and bool(causes))

    awaiting = data.get("awaiting_start")
    if not isinstance(awaiting, bool):
        raise StateFormatError("core state: awaiting_start: expected true or false")
    wh = data.get("discharged_today_wh")
    if isinstance(wh, bool) or not isinstance(wh, int | float) or not math.isfinite(wh) or wh < 0:
        raise StateFormatError("core state: discharged_today_wh: expected a finite number >= 0")
    departure_at = _iso(data.get("departure_at"), dt.datetime.fromisoformat, "departure_at")
    if departure_at is not None and departure_at.utcoffset() is None:
        raise StateFormatError("core state: departure_at: expected a UTC offset")
    wear_day = _iso(data.get("wear_day"), dt.date.fromisoformat, "wear_day")
    fault, stop = latch("fault_latch"), latch("stop_latch")
    # Wear: keep the larger count of the same day (the ledger may have seeded one already).
    if state.wear_day is not None and state.wear_day == wear_day:
        wh = max(wh, state.discharged_today_wh)
    elif state.wear_day is not None and (wear_day is None or state.wear_day > wear_day):
        wear_day, wh = state.wear_day, state.discharged_today_wh
    return replace(
        state,
        fault_latch=fault,
        stop_latch=stop,
        awaiting_start=awaiting,
        start_after_s=None,
        departure_at=None if departure_at is None else departure_at.astimezone(dt.UTC),
        wear_day=wear_day,
        discharged_today_wh=float(wh),
    )


def _iso(raw: object, parse: Callable[[str], _T], key: str) -> _T | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise StateFormatError(f"core state: {key}: expected an ISO 8601 string or null")
    try:
        return parse(raw)
    except ValueError:
        raise StateFormatError(f"core state: {key}: not an ISO 8601 value: {raw[:40]!r}") from None


# --- latches --------------------------------------------------------------------------------------


_EMERGENCY_STOP_CAUSE = "emergency stop"


def _needs_a_person(rule: Rule, safety: SafetyPolicy) -> bool:
    # ISO 13850 / IEC 60204-1 9.2.5.4.2: an emergency stop is reset only by a deliberate act,
    # whatever fault_reset says; the technician may mark other fault kinds the same way.
    return rule is Rule.EMERGENCY_STOP or str(rule) in safety.manual_reset_faults


def _fault_causes(inputs: Inputs) -> Iterator[tuple[Rule, str]]:
    # IEC 61851-23:2014 6.4.3.4: terminate the supply on a failure; the site's emergency stop.
    if inputs.emergency_stop:
        yield Rule.EMERGENCY_STOP, _EMERGENCY_STOP_CAUSE
    vehicle = inputs.vehicle
    if vehicle is not None:
        # CHAdeMO 0x102 byte 4 fault flags and byte 5 bit 2 (charging-system fault): the charger
        # must stop; GB/T 27930 BSM fault status, BST fault reasons, BEM: stop.
        for fault in vehicle.faults:
            yield Rule.VEHICLE_FAULT, f"vehicle: {fault}"
        if vehicle.phase is VehiclePhase.FAULT:
            yield Rule.VEHICLE_FAULT, "vehicle session fault"
    inverter = inputs.inverter
    if inverter is not None:
        # SunSpec 101-103 St = FAULT / Evt1 alarm bits, or the register map's fault word.
        for fault in inverter.faults:
            yield Rule.INVERTER_FAULT, f"inverter: {fault}"


def _update_latch(
    latch: Latch,
    present: tuple[str, ...],
    now_s: float,
    *,
    auto: bool,
    hold_s: float,
    manual: bool,
) -> Latch:
    if present:
        merged = latch.causes + tuple(c for c in present if c not in latch.causes)
        return Latch(causes=merged, active=True, clear_since_s=None, manual=latch.manual or manual)
    if not latch.latched:
        return Latch()
    clear_since_s = now_s if latch.clear_since_s is None else latch.clear_since_s
    if auto and not latch.manual and now_s - clear_since_s >= hold_s:
        return Latch()
    return Latch(
        causes=latch.causes, active=False, clear_since_s=clear_since_s, manual=latch.manual
    )


def _awaiting_start(
    state: CoreState, inputs: Inputs, request: Request, now_s: float
) -> tuple[bool, float | None]:
    """Whether power still waits for a start after an emergency stop reset."""
    if not state.awaiting_start:
        return False, None
    vehicle = inputs.vehicle
    if vehicle is not None and vehicle.phase is VehiclePhase.UNPLUGGED:
        return False, None  # the car was unplugged: the next session is a new start
    if state.start_after_s is None:
        # Restored after a restart: only a setpoint received from now on is a start (one the
        # link held at start-up may be a retained one from before the stop).
        return True, now_s
    setpoint = inputs.setpoint
    if (
        request.source in (RequestSource.SETPOINT, RequestSource.SETPOINT_IDLE)
        and setpoint is not None
        and setpoint.received_at_s > state.start_after_s
    ):
        return False, None  # the aggregator sent a new setpoint after the reset
    return True, state.start_after_s


def session_departure(
    departure_at: dt.datetime | None, inputs: Inputs, now: Now, policy: Policy
) -> dt.datetime | None:
    """The plugged-in session's departure instant: fixed when a session is first seen, kept
    until the car is seen unplugged (the reserve holds from departure time until then)."""
    departure = policy.owner.departure
    vehicle = inputs.vehicle
    if departure is None:
        return None
    if vehicle is None:
        return departure_at  # no vehicle data yet (a start-up): not a sign the car left
    if vehicle.phase is VehiclePhase.UNPLUGGED:
        return None
    now_utc = now.wall.astimezone(dt.UTC)
    if departure_at is not None and departure_at - now_utc <= _DEPARTURE_HORIZON:
        return departure_at
    if not inputs.clock_trusted:
        return None  # not fixed on a clock that may be wrong; the reserve is the target
    # None yet, or more than a day ahead (the clock stepped back): fix it from now.
    return next_local_instant(now.wall, departure.time_local)


# A session's departure is at most a day ahead; further means the clock went back.
_DEPARTURE_HORIZON = dt.timedelta(hours=25)


# --- gates ----------------------------------------------------------------------------------------


def _inverter_fresh(
    inverter: InverterState | None, now_s: float, safety: SafetyPolicy
) -> InverterState | None:
    if inverter is None or not inverter.reachable:
        return None
    return (
        inverter if is_fresh(inverter.observed_at_s, now_s, safety.inverter_stale_after_s) else None
    )


def _admit(
    inputs: Inputs, fault_latch: Latch, stop_latch: Latch, now_s: float, policy: Policy
) -> Readings | list[Finding]:
    """The readings when energy may flow at all; else the gates (0 W both ways) that stop it."""
    safety = policy.safety
    soc_pct, vehicle_gates = _vehicle_gates(inputs.vehicle, now_s, safety)
    gates = [
        *_latch_gates(inputs, fault_latch, stop_latch, now_s, safety),
        *vehicle_gates,
        *_inverter_gates(inputs.inverter, now_s, safety),
    ]
    vehicle, inverter = inputs.vehicle, inputs.inverter
    if gates or vehicle is None or inverter is None or soc_pct is None:
        return gates
    return Readings.of(vehicle, inverter, soc_pct, policy)


def _latch_gates(
    inputs: Inputs, fault_latch: Latch, stop_latch: Latch, now_s: float, safety: SafetyPolicy
) -> Iterator[Finding]:
    if fault_latch.latched:
        for rule, cause in _fault_causes(inputs):
            yield Reason(rule, cause)
        auto = safety.fault_reset is FaultResetMode.AUTO
        yield from zero_both(Rule.FAULT_LATCH, _latch_note(fault_latch, now_s, safety, auto=auto))
    if stop_latch.latched:
        # CHAdeMO: current <= 5 A within 0.5 s of the vehicle's stop; GB/T 27930: <= 5 A within
        # 100 ms of CST. 0 W at once meets both.
        note = _latch_note(stop_latch, now_s, safety, auto=True)
        yield from zero_both(Rule.VEHICLE_STOP_REQUEST, note)


def _vehicle_gates(
    vehicle: VehicleState | None, now_s: float, safety: SafetyPolicy
) -> tuple[float | None, list[Finding]]:
    """The vehicle's SoC when it is in an energy-transfer session with fresh data; else gates."""
    if vehicle is None:
        return None, list(zero_both(Rule.NO_SESSION, "no vehicle data"))
    if not is_fresh(vehicle.observed_at_s, now_s, safety.vehicle_stale_after_s):
        if vehicle.phase not in _SESSION_PHASES:
            return None, list(zero_both(Rule.NO_SESSION, f"no vehicle session ({vehicle.phase})"))
        # CHAdeMO: stop if 0x102 is not refreshed for > 1 s; GB/T 27930: BCL timeout 1 s, then
        # stop at once.
        age_s = now_s - vehicle.observed_at_s
        note = f"vehicle data {age_s:.2f} s old, deadline {safety.vehicle_stale_after_s:g} s"
        return None, list(zero_both(Rule.VEHICLE_STALE, note))
    if vehicle.phase is not VehiclePhase.ENERGY_TRANSFER:
        # CHAdeMO: current only after the start sequence (0x102 byte 5 bit 0, d2, contactors);
        # GB/T 27930: only in the charging phase, after BRO/CRO 0xAA.
        return None, list(zero_both(Rule.NO_SESSION, f"vehicle session {vehicle.phase}"))
    soc_pct = _soc(vehicle)
    if soc_pct is None:
        # Neither the floor nor the ceiling can be checked without SoC; a value outside 0..100
        # (a corrupt frame, 0xFF "not available") is no SoC at all.
        note = "vehicle SoC unknown" if vehicle.soc_pct is None else "vehicle SoC implausible"
        return None, list(zero_both(Rule.SOC_UNKNOWN, f"{note} ({vehicle.soc_pct})"))
    return soc_pct, []


def _soc(vehicle: VehicleState | None) -> float | None:
    """The vehicle's SoC when it is a percentage (0..100), else unknown."""
    return None if vehicle is None else plausible(vehicle.soc_pct, 0.0, 100.0)


def _inverter_gates(
    inverter: InverterState | None, now_s: float, safety: SafetyPolicy
) -> Iterator[Finding]:
    if inverter is None:
        yield from zero_both(Rule.INVERTER_STALE, "no inverter data")
    elif not inverter.reachable:
        yield from zero_both(Rule.INVERTER_STALE, "inverter unreachable")
    elif not is_fresh(inverter.observed_at_s, now_s, safety.inverter_stale_after_s):
        # Architecture rule: a snapshot older than its deadline is a fault; the inverter's own
        # revert timer is the last line behind this one.
        age_s = now_s - inverter.observed_at_s
        note = f"inverter data {age_s:.2f} s old, deadline {safety.inverter_stale_after_s:g} s"
        yield from zero_both(Rule.INVERTER_STALE, note)


def _latch_note(latch: Latch, now_s: float, safety: SafetyPolicy, *, auto: bool) -> str:
    causes = ", ".join(latch.causes)
    if latch.active:
        return f"latched: {causes}"
    clear_s = now_s - (latch.clear_since_s if latch.clear_since_s is not None else now_s)
    if not auto:
        return f"latched: {causes}; clear for {clear_s:.0f} s, waiting for a manual reset"
    return f"latched: {causes}; clear for {clear_s:.0f} s of {safety.fault_hold_s:g} s hold"


# --- directional interlocks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Guarantee:
    """The departure guarantee is charging: at least ``power_w``, whatever the source asks."""

    power_w: float
    limit: Limit  # the departure reserve, reported as the binding limit


@dataclass(frozen=True, slots=True)
class _Directional:
    findings: list[Finding]
    floor_blocked: bool
    ceiling_blocked: bool
    soc_floor_pct: float
    guarantee: _Guarantee | None


@dataclass(frozen=True, slots=True)
class _SocBounds:
    """What the battery may truly hold, from the reported SoC: now, and by the time a decision
    taken now has taken effect."""

    low_now_pct: float
    low_next_pct: float
    high_next_pct: float


def _soc_bounds(r: Readings, state: CoreState, policy: Policy, interval_s: float) -> _SocBounds:
    """The reported SoC widened by its resolution (CHAdeMO 0x102 byte 6 and GB/T BCS report
    whole percent, truncated or rounded), then by the energy that can still flow before a stop
    decided now takes effect: the present power (commanded or measured, the larger), plus one
    ramp step, over the horizon."""
    safety = policy.safety
    measured_w = reading(r.inverter.measured_power_w) or 0.0
    step_w = safety.ramp_w_per_s * min(interval_s, safety.ramp_max_interval_s)
    hours = safety.floor_horizon_s * safety.battery_time_factor / 3600.0
    discharge_w = min(
        max(0.0, -state.last_command_w, -measured_w) + step_w, safety.max_discharge_power_w
    )
    charge_w = min(max(0.0, state.last_command_w, measured_w) + step_w, safety.max_charge_power_w)
    to_pct = 100.0 / r.capacity_wh
    low_now_pct = r.soc_pct - safety.soc_resolution_pct
    return _SocBounds(
        low_now_pct=low_now_pct,
        low_next_pct=low_now_pct - discharge_w * hours * to_pct,
        high_next_pct=r.soc_pct + safety.soc_resolution_pct + charge_w * hours * to_pct,
    )


def _directional(
    r: Readings,
    policy: Policy,
    state: CoreState,
    *,
    now: Now,
    interval_s: float,
    discharged_wh: float,
    departure_at: dt.datetime | None,
    clock_trusted: bool,
) -> _Directional:
    safety = policy.safety
    findings: list[Finding] = [
        *vehicle_permission(r),
        *vehicle_current(r),
        *vehicle_voltage(r),
        *ratings(r, policy),
        *temperatures(r, safety),
        *cell_voltage(r, safety),
    ]
    bounds = _soc_bounds(r, state, policy, interval_s)
    ceiling = soc_ceiling(r, policy, bounds.high_next_pct, state.ceiling_blocked)
    ceiling_blocked = bool(ceiling)
    findings.extend(ceiling)
    # Effective floor: owner floor, CHAdeMO 0x200 byte 6, departure reserve; the highest binds.
    left_s = _departure_left_s(departure_at, now, clock_trusted)
    top = max(floor_parts(r, policy, left_s, state.last_command_w), key=lambda part: part.soc_pct)
    floor = soc_floor(r, policy, top, bounds.low_next_pct, state.floor_blocked)
    floor_blocked = bool(floor)
    findings.extend(floor)
    guarantee = _departure_guarantee(r, policy, state, bounds, left_s)
    if guarantee is not None:
        # In force as a limit too (discharge is vetoed while it charges), so the binding limit
        # the decision reports is one of its limits.
        findings.append(guarantee.limit)
    findings.extend(wear_budget(r, policy, discharged_wh))
    return _Directional(findings, floor_blocked, ceiling_blocked, top.soc_pct, guarantee)


def _departure_left_s(
    departure_at: dt.datetime | None, now: Now, clock_trusted: bool
) -> float | None:
    """Seconds to the session's departure (0 once due); None when the clock is not trusted."""
    if departure_at is None or not clock_trusted:
        return None
    return max(0.0, (departure_at - now.wall.astimezone(dt.UTC)).total_seconds())


def _departure_guarantee(
    r: Readings,
    policy: Policy,
    state: CoreState,
    bounds: _SocBounds,
    left_s: float | None,
) -> _Guarantee | None:
    """Charge toward the target once the charge no longer fits in the time left (the reserve
    reaches the SoC), and keep charging until the target is reached on the lowest SoC the
    battery may hold; a vetoed discharge alone would let the car leave short."""
    departure = policy.owner.departure
    if departure is None or left_s is None:
        # No trusted clock, no plan: the reserve (the target) still vetoes discharge, but the
        # core does not override the request to charge toward a departure it cannot place.
        return None
    target = departure.target_soc_pct
    if bounds.low_now_pct >= target:
        return None
    reserve = departure_part(r, policy, left_s, state.last_command_w)
    if not state.departure_charging and bounds.low_now_pct > reserve.soc_pct:
        return None
    power_w = departure_charge_power_w(r, policy)
    note = (
        f"departure guarantee: charging toward {target:g} % by "
        f"{departure.time_local:%H:%M} at up to {power_w:.0f} W (SoC {r.soc_pct:g} %, "
        f"reserve {min(reserve.soc_pct, target):.1f} %)"
    )
    return _Guarantee(power_w, Limit(Rule.DEPARTURE_RESERVE, Direction.DISCHARGE, 0.0, note))


def _wear_count(
    state: CoreState, inverter: InverterState | None, interval_s: float, today: dt.date
) -> tuple[dt.date, float]:
    """The local day the wear count belongs to, and the energy discharged on it so far.

    The interval since the last call is counted at the larger of the last command and the
    inverter's measured discharge, so neither a lagging command nor a lagging meter under-counts.
    A new day starts the count afresh only when the date moves forward: a wall clock stepped
    back across midnight keeps counting into the later day, never a fresh budget.
    """
    if state.wear_day is not None and today > state.wear_day:
        day, so_far_wh = today, 0.0
    else:
        day, so_far_wh = state.wear_day or today, state.discharged_today_wh
    discharge_w = max(0.0, -state.last_command_w)
    if inverter is not None:
        measured_w = reading(inverter.measured_power_w)
        if measured_w is not None:
            discharge_w = max(discharge_w, -measured_w)
    return day, so_far_wh + discharge_w * interval_s / 3600.0


# --- shaping: clamp, ramp, clamp ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shaped:
    target_w: float
    command_w: float
    binding: Limit | None
    ramped: bool


def _cap(limits: tuple[Limit, ...], direction: Direction) -> float:
    return min((lim.power_w for lim in limits if lim.direction is direction), default=math.inf)


def _shape(
    request_w: float,
    limits: tuple[Limit, ...],
    last_w: float,
    interval_s: float,
    safety: SafetyPolicy,
) -> _Shaped:
    charge_cap_w, discharge_cap_w = (
        _cap(limits, Direction.CHARGE),
        _cap(limits, Direction.DISCHARGE),
    )
    target_w = min(max(request_w, -discharge_cap_w), charge_cap_w)
    binding = None
    if request_w > charge_cap_w:
        binding = _first_at(limits, Direction.CHARGE, charge_cap_w)
    elif -request_w > discharge_cap_w:
        binding = _first_at(limits, Direction.DISCHARGE, discharge_cap_w)
    # Ramp on every change (CHAdeMO 0x102 byte 4 bit 2: the vehicle flags a current deviation;
    # grid codes limit active-power gradients). The clamp after it makes every cut toward 0 W
    # immediate: a limit that falls, a fault or stale data never waits for the ramp.
    step_w = safety.ramp_w_per_s * min(interval_s, safety.ramp_max_interval_s)
    ramped_w = last_w + min(max(target_w - last_w, -step_w), step_w)
    command_w = min(max(ramped_w, -discharge_cap_w), charge_cap_w) + 0.0  # + 0.0: no -0.0
    return _Shaped(target_w, command_w, binding, ramped=command_w != target_w)


def _first_at(limits: tuple[Limit, ...], direction: Direction, power_w: float) -> Limit | None:
    return next(
        (lim for lim in limits if lim.direction is direction and lim.power_w == power_w), None
    )


def _power_state(
    command_w: float,
    fault_latch: Latch,
    stop_latch: Latch,
    vehicle: VehicleState | None,
    limits: tuple[Limit, ...],
) -> PowerState:
    if fault_latch.latched:
        return PowerState.FAULT
    stale = any(lim.rule in (Rule.VEHICLE_STALE, Rule.INVERTER_STALE) for lim in limits)
    if stale and vehicle is not None and vehicle.phase in _SESSION_PHASES:
        return PowerState.FAULT
    if stop_latch.latched or (vehicle is not None and vehicle.phase is VehiclePhase.STOPPING):
        return PowerState.STOPPING
    if command_w > 0:
        return PowerState.CHARGING
    if command_w < 0:
        return PowerState.DISCHARGING
    return PowerState.IDLE
