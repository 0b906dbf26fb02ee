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

from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    VehicleState,
)

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
class ControlReport:
    """What the daemon tells the aggregator link after every control cycle.

    The link uses it to acknowledge a setpoint with the power actually applied (and the limit
    that binds when that differs from what was asked), and for telemetry.
    """

    monotonic_s: float
    wall: dt.datetime  # aware, site time zone
    state: PowerState
    commanded_w: float  # + charges the vehicle
    enabled: bool
    setpoint_id: str | None  # the aggregator setpoint this command follows; None: not following one
    source: str  # "aggregator", "fallback" or "none" (held at 0 W)
    binding_limit: str | None  # the limit that cut the request, readable ("soc_floor ...")
    limits: tuple[str, ...]  # every limit in force, readable
    max_charge_w: float  # flexibility on offer now: the most it could charge...
    max_discharge_w: float  # ...and discharge (magnitude), under every limit in force
    soc_floor_pct: float | None  # effective floor now (owner, vehicle, departure)
    energy_above_floor_wh: float | None  # what could be discharged before the floor
    faults: tuple[str, ...]  # latched or present fault causes
    measured_power_w: float | None = None  # at the inverter
    soc_pct: float | None = None
    voltage_v: float | None = None  # vehicle pack voltage
    inverter_revert_rewrites: int = 0  # InverterState.revert_rewrites


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


class AggregatorLink(Link, Protocol):
    """The aggregator over MQTT."""

    def setpoint(self) -> Setpoint | None:
        """The latest accepted setpoint (the core checks its expiry), or None."""
        ...

    def report(self, report: ControlReport) -> None:
        """The outcome of a control cycle; must not block (the link publishes on its own)."""
        ...

    async def publish_offline(self) -> None:
        """Publish the retained "offline" availability before a clean exit; bounded in time."""
        ...
