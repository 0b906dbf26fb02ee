"""The faults a test injects into the inverter simulator, shared by the TCP and RTU tests:
name -> (inject, clear, the text the link's fault reason must contain)."""

from __future__ import annotations

from collections.abc import Callable

from hil.inverter.simulator import InverterSimulator

Injection = Callable[[InverterSimulator], None]

INJECTIONS: dict[str, tuple[Injection, Injection, str]] = {
    "exception response": (
        lambda s: setattr(s, "exception_code", 4),
        lambda s: setattr(s, "exception_code", None),
        "exception 4 (server device failure)",
    ),
    "no reply": (
        lambda s: setattr(s, "drop_replies", True),
        lambda s: setattr(s, "drop_replies", False),
        "no valid reply",
    ),
    "late reply": (
        lambda s: setattr(s, "reply_delay_s", 0.45),  # beyond the rigs' 0.3 s request timeout
        lambda s: setattr(s, "reply_delay_s", 0.0),
        "no valid reply",
    ),
    "stuck setpoint": (
        lambda s: setattr(s, "stuck_setpoint", True),
        lambda s: setattr(s, "stuck_setpoint", False),
        "read back",
    ),
    "inverter fault": (
        lambda s: s.trip("overtemperature"),
        lambda s: s.clear_fault(),
        "inverter state FAULT",
    ),
}
