"""The controller's exception tree.

Every error the controller raises on purpose derives from ``ControllerError``. Third-party
exceptions (pydantic, PyYAML, python-can, pymodbus, paho/aiomqtt, sqlite3) are translated into
this tree at the edge of the module that calls the library, so callers never see them::

    ControllerError
    ├── ConfigError              the YAML is missing, unreadable, malformed or invalid
    │                            (e.g. an unknown key, a SoC floor of 150 %); carries every problem
    ├── LinkError                a link to the outside world failed; the link owns its reconnect
    │   ├── VehicleLinkError         CAN bus down, bus-off, interface missing, lines unreadable
    │   ├── InverterLinkError        Modbus timeout, connection refused (inverter/)
    │   │   ├── NotConnectedError        no connection could be had at all (transport.py)
    │   │   ├── ModbusExceptionResponse  the device answered with an exception code (transport.py)
    │   │   ├── SetpointNotTakenError    a written setpoint did not read back (sunspec.py)
    │   │   └── RevertNotKeptError       the revert settings did not read back (drivers.py)
    │   ├── AggregatorLinkError      broker unreachable, TLS handshake refused
    │   └── LinkStoppedError         a link's run() returned while the daemon was not stopping
    │                                (daemon.py)
    ├── ProtocolError            a frame, register or payload that does not follow its protocol
    │   │                        (wrong DLC, bad TP sequence, out-of-range register); rejected with
    │   │                        a reason, never turned into state or a command
    │   ├── ImplausibleValueError    a decoded signal outside its DBC range (vehicle/dbc.py)
    │   ├── EncodingError            a value a register cannot hold (inverter/codec.py)
    │   ├── UnknownPointError, UnknownModelError > UnusableModelError
    │   │                            a SunSpec point or model this device or loader lacks
    │   │                            (inverter/sunspec_models.py)
    │   └── GroupLayoutError         a SunSpec model length that does not fit its repeating
    │                                group (inverter/sunspec_models.py)
    └── LedgerError              the SQLite file cannot be opened, read or written (storage/db.py)
        ├── StorageFullError         the storage thread's queue is full (storage/writer.py)
        ├── StorageStoppedError      the storage thread has stopped (storage/writer.py)
        └── OutboxRecordError        a record the outbox cannot store: an unknown kind, or a
                                     body that is not JSON or fails its model
                                     (aggregator/durable_outbox.py)

Each error is defined in the module that raises it (the path in brackets); this drawing is the
map. Safety rules never raise: the core returns its reasons with 0 W. A programming error stays
outside the tree, so no handler of the errors above swallows it: ``IllegalTransitionError``
(a ``RuntimeError``, vehicle/session.py), a session state change its transition table forbids.

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
