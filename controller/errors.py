"""The controller's exception tree.

Every error the controller raises on purpose derives from ``ControllerError``. Third-party
exceptions (pydantic, PyYAML, python-can, pymodbus, paho/aiomqtt, sqlite3) are translated into
this tree at the edge of the module that calls the library, so callers never see them::

    ControllerError
    ├── ConfigError            the YAML is missing, unreadable, malformed or invalid
    │                          (e.g. an unknown key, a SoC floor of 150 %); carries every problem
    ├── LinkError              a link to the outside world failed; the link owns its reconnect
    │   ├── VehicleLinkError       CAN bus down, bus-off, interface missing
    │   ├── InverterLinkError      Modbus timeout, exception response, connection refused
    │   └── AggregatorLinkError    broker unreachable, TLS handshake refused
    ├── ProtocolError          a frame, register or payload that does not follow its protocol
    │                          (wrong DLC, bad TP sequence, out-of-range register); rejected with
    │                          a reason, never turned into state or a command
    └── InterlockTrip          a safety rule demanded 0 W; raised only where an exception is the
                               clearest way out, normally the core returns reasons instead

Bad input from outside is a value to reject with a reason, never a crash and never a command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file, located for a technician."""

    file: str
    line: int | None  # 1-based; None when the problem is not tied to a line (e.g. file missing)
    path: str  # dotted YAML path, e.g. "owner.soc_floor_pct"; "" for the whole file
    message: str  # what was expected and what was found

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ControllerError):
    """The config is missing, unreadable or invalid. Carries every problem found, not just one."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LinkError(ControllerError):
    """A link to the outside world failed."""


class VehicleLinkError(LinkError):
    """The CAN link to the vehicle failed (interface missing, bus-off, send failure)."""


class InverterLinkError(LinkError):
    """The Modbus link to the inverter failed (timeout, exception response, disconnect)."""


class AggregatorLinkError(LinkError):
    """The MQTT link to the aggregator failed (broker unreachable, TLS refused)."""


class ProtocolError(ControllerError):
    """Input that breaks its protocol: rejected with a reason, never turned into state."""


class InterlockTrip(ControllerError):  # noqa: N818  a trip is the domain word, not an "error"
    """A safety rule demanded 0 W."""
