"""What the daemon needs from each link, as structural protocols.

Each link package (``vehicle/``, ``inverter/``, ``aggregator/``) provides a class that satisfies
one of these protocols; ``daemon.py`` is the only place that builds them and wires them to the
core. A link never imports another link.

Contract shared by every link:

* ``run(wake)`` is a long-running coroutine supervised by the daemon's TaskGroup. It owns its own
  reconnect policy: a link that loses its peer keeps running, reports ``LinkStatus.DOWN`` and
  retries. It returns or raises only for a failure it cannot recover from (a programming error,
  an interface that does not exist); the daemon then drives the system to 0 W and exits non-zero.
* ``wake()`` is called by the link on every safety-relevant event (a fault or stop frame, a new
  setpoint, a lost peer) so the control loop reacts at once instead of at its next tick.
* ``status`` is what the link reports for sd_notify READY and for ``status`` telemetry.
* Snapshots carry their own observation time; the core decides whether they are fresh enough.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.core.rules import Limit, Rule
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    VehicleState,
)
from controller.economics.tariff import PeakEvent, PriceSlot

Wake = Callable[[], None]


class LinkStatus(enum.StrEnum):
    """How a link reports itself."""

    STARTING = "starting"  # not yet reported; the daemon is not READY while any link says this
    UP = "up"  # talking to its peer
    DOWN = "down"  # peer unreachable; the link keeps retrying on its own
    DISABLED = "disabled"  # switched off in the config (e.g. no aggregator at this site)


class Link(Protocol):
    """Common shape of every link."""

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> LinkStatus: ...

    async def run(self, wake: Wake) -> None: ...


class VehicleLink(Link, Protocol):
    """The vehicle's BMS over CAN (CHAdeMO, GB/T 27930 or a generic DBC profile)."""

    def snapshot(self) -> VehicleState | None:
        """The latest vehicle state, or None before the first valid frame."""
        ...

    def allow_energy_transfer(self, allowed: bool) -> None:
        """Whether the charger side is healthy enough for the session to proceed to, or stay
        in, energy transfer (nothing latched, no E-stop, a fresh and healthy inverter). The
        power itself is the core's command; withdrawing this ends the session cleanly
        (CHAdeMO 0x109 stop control, GB/T CST)."""
        ...

    def update_output(self, voltage_v: float, current_a: float) -> None:
        """The power stage's measured DC output (+ charges the vehicle), which the charger
        reports to the vehicle (CHAdeMO 0x109/0x208, GB/T CCS); NaN when not measured."""
        ...

    async def end_session(self) -> None:
        """End the vehicle session cleanly (normal stop sequence), bounded in time."""
        ...

    def emergency_stop_pressed(self) -> bool:
        """The charger board's emergency stop input (the link owns the board's lines)."""
        ...


class InverterLink(Link, Protocol):
    """The bidirectional inverter over Modbus. The daemon is its only writer."""

    def snapshot(self) -> InverterState | None:
        """The latest inverter state, or None before the first successful read; still renewed
        after ``safe_stop`` while ``run`` runs (``observed_at_s`` tells a new one)."""
        ...

    async def apply(self, command: PowerCommand) -> None:
        """Write the command (setpoint, enable) and keep the inverter's revert timer armed."""
        ...

    async def safe_stop(self) -> None:
        """Command 0 W and disable the power stage; bounded in time, never raises.

        Nothing is written after it (``apply`` changes nothing), but the link keeps reading
        the inverter into ``snapshot`` until ``run`` is cancelled: the vehicle session ends on
        measurements taken after the stop (current down before the contactors open, voltage
        down before the connector unlocks). Whatever ends ``run`` closes the connection; so
        does a ``safe_stop`` that comes after ``run`` has ended."""
        ...


@dataclass(frozen=True, slots=True)
class PlanOutline:
    """The local plan's next slots, published so the aggregator sees the flexibility until
    departure (fallback ``optimize``)."""

    plan_number: int  # goes up with every new plan (a new plan is published at once)
    start: dt.datetime  # the first published slot's start (the slot in force)
    slot_s: float
    power_w: tuple[float, ...]  # per slot: + charge, - discharge
    soc_end_pct: tuple[float, ...]  # the plan's SoC at each slot's end
    ends_at: dt.datetime  # the plan's last slot's end (departure, or the horizon)
    value: float  # the whole plan's net value for the owner (tariff currency)
    target_reachable: bool
    reason: str  # why it was made


@dataclass(frozen=True, slots=True)
class ControlOutput:
    """What one control cycle decided, in the form the daemon acts on and reports."""

    command: PowerCommand
    state: PowerState
    binding_limit: str | None  # the limit that binds, if any, readable
    reasons: tuple[str, ...]  # "rule: what it saw", why the command is what it is
    limits: tuple[str, ...] = ()  # every limit in force, readable
    source: str = "none"  # "aggregator", "fallback" or "none"
    setpoint_id: str | None = None  # the aggregator setpoint being followed
    requested_w: float = 0.0  # what was asked, before any interlock
    max_charge_w: float = 0.0  # flexibility on offer now, under every limit in force
    max_discharge_w: float = 0.0
    soc_floor_pct: float | None = None
    energy_above_floor_wh: float | None = None
    faults: tuple[str, ...] = ()
    # Causes of a FAULT state that no latch holds (stale data), named so that a FAULT state
    # always names its cause; gone once the cause is. Shown with ``faults`` in status and
    # telemetry, but not raised as fault events or counted as trips (``faults`` is the latches).
    present_faults: tuple[str, ...] = ()
    # Whether the vehicle session may proceed to (or stay in) energy transfer: the charger side
    # is healthy. Power itself follows ``command`` once the session is transferring.
    session_allowed: bool = False
    # The rule behind each of ``reasons``, in the same order (typed: never parsed from the text).
    rules: tuple[Rule, ...] = ()
    plan: PlanOutline | None = None  # fallback optimize: the plan's next slots
    # ``limits`` and ``binding_limit`` as values, for what compares them (telemetry): the
    # readable strings carry the data's age, which changes every cycle.
    limit_values: tuple[Limit, ...] = ()
    binding: Limit | None = None

    def summary_key(self) -> tuple[object, ...]:
        """What must change for the decision to be logged again (not every ramp step)."""
        return (
            self.state,
            self.binding_limit,
            self.source,
            self.setpoint_id,
            self.command.enable,
            self.rules,
            self.faults,
        )


@dataclass(frozen=True, slots=True)
class ControlReport:
    """What the daemon tells the aggregator link and the ledger after every control cycle: the
    cycle's decision (``output``, as the control step made it) and what was measured with it.

    The link uses it to acknowledge a setpoint with the power actually applied (and the limit
    that binds when that differs from what was asked), and for telemetry. The decision's fields
    read through (``report.state``, ``report.commanded_w``, ...), so it is never copied field
    by field.
    """

    monotonic_s: float
    wall: dt.datetime  # aware, site time zone
    output: ControlOutput
    measured_power_w: float | None = None  # at the inverter
    soc_pct: float | None = None
    voltage_v: float | None = None  # vehicle pack voltage
    inverter_revert_rewrites: int = 0  # InverterState.revert_rewrites

    @property
    def state(self) -> PowerState:
        return self.output.state

    @property
    def commanded_w(self) -> float:
        """+ charges the vehicle."""
        return self.output.command.power_w

    @property
    def enabled(self) -> bool:
        return self.output.command.enable

    @property
    def setpoint_id(self) -> str | None:
        """The aggregator setpoint this command follows; None: not following one."""
        return self.output.setpoint_id

    @property
    def source(self) -> str:
        """ "aggregator", "fallback" or "none" (held at 0 W)."""
        return self.output.source

    @property
    def binding_limit(self) -> str | None:
        """The limit that cut the request, readable ("soc_floor ...")."""
        return self.output.binding_limit

    @property
    def limits(self) -> tuple[str, ...]:
        """Every limit in force, readable."""
        return self.output.limits

    @property
    def limit_values(self) -> tuple[Limit, ...]:
        """Every limit in force, as values (rule, direction, power)."""
        return self.output.limit_values

    @property
    def binding(self) -> Limit | None:
        """The limit that cut the request, as a value; None if the request fitted."""
        return self.output.binding

    @property
    def max_charge_w(self) -> float:
        """Flexibility on offer now: the most it could charge under every limit in force."""
        return self.output.max_charge_w

    @property
    def max_discharge_w(self) -> float:
        """The most it could discharge (magnitude) under every limit in force."""
        return self.output.max_discharge_w

    @property
    def soc_floor_pct(self) -> float | None:
        """The effective floor now (owner, vehicle, departure)."""
        return self.output.soc_floor_pct

    @property
    def energy_above_floor_wh(self) -> float | None:
        """What could be discharged before the floor."""
        return self.output.energy_above_floor_wh

    @property
    def faults(self) -> tuple[str, ...]:
        """Latched or present fault causes."""
        return self.output.faults


@dataclass(frozen=True, slots=True)
class SetpointAudit:
    """One line of the ledger's audit trail of aggregator setpoints."""

    at: dt.datetime  # aware
    setpoint_id: str | None  # None: the payload was too broken to read one
    action: str  # "accepted", "rejected" or "applied"
    requested_w: float | None = None
    applied_w: float | None = None  # for "applied": what the control cycle commanded
    reason: str | None = None  # why rejected, or the limit that bound when applied


AuditSink = Callable[[SetpointAudit], None]


class PriceSource(Protocol):
    """Prices the aggregator pushed (the link's price book): what is in force at ``now``, and a
    version that goes up whenever they change (the planner re-plans on it)."""

    @property
    def version(self) -> int: ...

    def current_slots(self, now: dt.datetime) -> tuple[PriceSlot, ...]: ...

    def events(self, now: dt.datetime) -> tuple[PeakEvent, ...]: ...


class AggregatorLink(Link, Protocol):
    """The aggregator over MQTT."""

    @property
    def prices(self) -> PriceSource:
        """Price schedules and peak events pushed by the aggregator, accepted so far."""
        ...

    def setpoint(self) -> Setpoint | None:
        """The latest accepted setpoint (the core checks its expiry), or None."""
        ...

    def report(self, report: ControlReport) -> None:
        """The outcome of a control cycle; must not block (the link publishes on its own)."""
        ...

    async def publish_offline(self) -> None:
        """Publish the retained "offline" availability before a clean exit; bounded in time."""
        ...
