"""The policy's wall clock: the real one, or a simulated one for the demo and the HIL suite.

Only the time of day the core sees (tariff windows, departure) can be simulated; freshness, ramps
and setpoint validity always stay on the real clocks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

WallClock = Callable[[dt.tzinfo], dt.datetime]

# Simulation only (``make demo``, the hil/ suite): a simulated local time for the control policy.
SIMULATED_CLOCK_ENV = "V2G_SIMULATED_CLOCK"


@dataclass(frozen=True, slots=True)
class SimulatedClock:
    """Simulation only: the policy's wall clock runs ``rate`` times real time from ``start``.

    ``start`` is the simulated time at the real Unix time ``at_unix_s``, so several processes
    (the daemon, the plant, the demo) given the same values agree on the simulated time. The time
    of day the core sees (tariff windows, departure) is simulated, and the wiring scales the ramp
    and the floor's horizon by ``rate`` (controller/app.py); freshness and setpoint validity stay
    on the real clocks.
    """

    start: dt.datetime
    at_unix_s: float
    rate: float

    def __call__(self, tz: dt.tzinfo) -> dt.datetime:
        elapsed_s = (time.time() - self.at_unix_s) * self.rate
        return (self.start + dt.timedelta(seconds=elapsed_s)).astimezone(tz)

    @staticmethod
    def from_env(environ: dict[str, str] | os._Environ[str]) -> SimulatedClock | None:
        """The clock ``V2G_SIMULATED_CLOCK`` asks for, or None when it is not set.

        The value is JSON: ``{"start": "2026-11-23T18:00:00+01:00", "at_unix_s": 1795000000.0,
        "rate": 720}``. A malformed value raises ValueError: a simulation must not silently run
        on the real clock.
        """
        text = environ.get(SIMULATED_CLOCK_ENV)
        if not text:
            return None
        try:
            data = json.loads(text)
            start = dt.datetime.fromisoformat(data["start"])
            at_unix_s = float(data["at_unix_s"])
            rate = float(data["rate"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{SIMULATED_CLOCK_ENV}: {exc!r} in {text!r}") from None
        if start.utcoffset() is None:
            raise ValueError(f"{SIMULATED_CLOCK_ENV}: start needs a UTC offset: {text!r}")
        if not 0 < rate <= 100_000:
            raise ValueError(f"{SIMULATED_CLOCK_ENV}: rate must be in (0, 100000]: {text!r}")
        return SimulatedClock(start, at_unix_s, rate)


def real_wall_clock(tz: dt.tzinfo) -> dt.datetime:
    """The wall clock in the site's time zone."""
    return dt.datetime.now(tz)
