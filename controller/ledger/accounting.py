"""Pure accounting rules of the ledger: inverter counter deltas, the session rule, the tariff.

No IO, no clock reads: the ledger (``ledger.py``) passes values and times in. Every rule here is
tested without a database (``tests/ledger/test_accounting.py``).

Counter rules (docs/ledger.md, "Counter resets"):

* the first value ever seen is only a base: energy from before the ledger existed is not ours;
* a rise within what the installation could have delivered in the time since the last value is
  credited;
* a fall is a rollover when the old value sat in the top half of an accumulator's range and the
  wrapped difference is plausible (SunSpec model 103 ``WH`` is an ``acc32``, scaled by ``WH_SF``,
  so it wraps at 2**32 x 10**WH_SF Wh); otherwise it is a reset (inverter replaced, counter
  cleared): the new value is the new base and nothing is credited, never a negative delta;
* a rise larger than plausible (a misread register, a swapped inverter) is rejected: the new value
  becomes the base and nothing is credited, with the reason logged.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.links import ControlOutput

# Accumulator ranges a lifetime counter can wrap at, in Wh: SunSpec acc32 at scale factors
# 10**-3 .. 10**3 (SunSpec model 103 WH with WH_SF), and acc64 (model 701 TotWhInj/TotWhAbs).
ROLLOVER_MODULI_WH: tuple[float, ...] = (*(2.0**32 * 10.0**k for k in range(-3, 4)), 2.0**64)

# Plausibility of a counter rise: what the installation could deliver at this factor of its
# rating over the elapsed time plus a slack (one inverter revert window and a poll or two), plus
# a fixed allowance for the counter's own rounding (SunSpec counters are whole Wh).
JUMP_POWER_FACTOR = 1.5
JUMP_SLACK_S = 10.0
JUMP_ALLOWANCE_WH = 5.0


class CounterEvent(enum.StrEnum):
    """What a counter reading did besides (or instead of) crediting energy."""

    CREDITED = "credited"  # a plausible rise, or no change
    BASE = "base"  # first value ever seen: taken as the base, nothing credited
    ROLLOVER = "rollover"  # wrapped at an accumulator's range; the wrapped rise credited
    RESET = "reset"  # fell: the new value is the base, nothing credited
    REJECTED = "rejected"  # rose implausibly: the new value is the base, nothing credited
    INVALID = "invalid"  # not a finite non-negative number: ignored, the base kept


@dataclass(frozen=True, slots=True)
class CounterStep:
    """The outcome of one counter reading."""

    credited_wh: float  # >= 0, always
    base_wh: float | None  # the raw value the next reading is compared with
    event: CounterEvent
    reason: str = ""  # for the log and the counter_events table when not CREDITED


def plausible_rise_wh(max_power_w: float, elapsed_s: float) -> float:
    """The largest rise a counter may show after ``elapsed_s`` at the installation's rating."""
    elapsed_s = max(0.0, elapsed_s) if math.isfinite(elapsed_s) else 0.0
    return max_power_w * JUMP_POWER_FACTOR * (elapsed_s + JUMP_SLACK_S) / 3600 + JUMP_ALLOWANCE_WH


def counter_step(
    base_wh: float | None, raw_wh: float, *, max_power_w: float, elapsed_s: float
) -> CounterStep:
    """Credit a lifetime counter's new value ``raw_wh`` against ``base_wh`` (see module doc)."""
    if not math.isfinite(raw_wh) or raw_wh < 0:
        return CounterStep(0.0, base_wh, CounterEvent.INVALID, f"unreadable value {raw_wh!r}")
    if base_wh is None:
        return CounterStep(0.0, raw_wh, CounterEvent.BASE, f"first value {raw_wh:g} Wh as base")
    bound_wh = plausible_rise_wh(max_power_w, elapsed_s)
    rise_wh = raw_wh - base_wh
    if rise_wh >= 0:
        if rise_wh <= bound_wh:
            return CounterStep(rise_wh, raw_wh, CounterEvent.CREDITED)
        return CounterStep(
            0.0,
            raw_wh,
            CounterEvent.REJECTED,
            f"rose {rise_wh:g} Wh in {elapsed_s:.1f} s, more than the {bound_wh:.0f} Wh the "
            f"installation could deliver; {raw_wh:g} Wh taken as the new base, nothing credited",
        )
    for modulus_wh in ROLLOVER_MODULI_WH:
        if modulus_wh / 2 <= base_wh < modulus_wh and raw_wh < modulus_wh:
            wrapped_wh = raw_wh + modulus_wh - base_wh
            if wrapped_wh <= bound_wh:
                return CounterStep(
                    wrapped_wh,
                    raw_wh,
                    CounterEvent.ROLLOVER,
                    f"wrapped at {modulus_wh:g} Wh: {base_wh:g} -> {raw_wh:g} Wh, "
                    f"{wrapped_wh:g} Wh credited",
                )
    return CounterStep(
        0.0,
        raw_wh,
        CounterEvent.RESET,
        f"fell from {base_wh:g} to {raw_wh:g} Wh (counter reset or inverter replaced); "
        f"{raw_wh:g} Wh taken as the new base, nothing credited",
    )


def integrated_wh(power_w: float | None, interval_s: float) -> float:
    """Energy of ``power_w`` held for ``interval_s`` (the fallback without counters); signed."""
    if power_w is None or not math.isfinite(power_w) or interval_s <= 0:
        return 0.0
    return power_w * interval_s / 3600


# -- the session rule ---------------------------------------------------------------------------


def vehicle_present(vehicle: VehicleState | None) -> bool | None:
    """Whether a car is connected: True, False (unplugged), or None (the link cannot tell).

    A ledger session is one plug-in, not one protocol session: it stays open through the
    protocol's ENDED phase and through a new handshake after a daemon restart, and ends only when
    the vehicle link reports the connector unplugged.
    """
    if vehicle is None:
        return None
    return vehicle.phase is not VehiclePhase.UNPLUGGED


def same_vehicle(session_vehicle_id: str | None, identity: str | None) -> bool:
    """Whether a snapshot may belong to an open session: same identity, or either unknown."""
    return session_vehicle_id is None or identity is None or session_vehicle_id == identity


# -- the tariff ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tariff:
    """A flat tariff (``ledger.tariff``): what importing costs, what exporting earns."""

    currency: str
    import_price_per_kwh: float
    export_price_per_kwh: float

    def import_cost(self, charged_wh: float) -> float:
        return charged_wh / 1000 * self.import_price_per_kwh

    def export_value(self, discharged_wh: float) -> float:
        return discharged_wh / 1000 * self.export_price_per_kwh


# What the energy that moved at a moment is worth: (import, export) money per kWh at ``wall``,
# event bonuses included. The ledger's default is the flat ``Tariff``; the wiring passes one
# built from the owner's time-of-use tariff and the aggregator's pushed prices.
PriceProvider = Callable[[dt.datetime], tuple[float, float]]
# The money a session's SoC swings cost the battery (turning points in %, oldest first).
TraceWearCost = Callable[[Sequence[float]], float]


def flat_prices(tariff: Tariff) -> PriceProvider:
    """The flat tariff as a price provider: the same prices at every moment."""
    prices = (tariff.import_price_per_kwh, tariff.export_price_per_kwh)
    return lambda _wall: prices


def no_wear(_soc_trace_pct: Sequence[float]) -> float:
    """No wear model wired: wear costs nothing on the receipt."""
    return 0.0


# -- receipts -----------------------------------------------------------------------------------

# A SoC swing smaller than this is measurement noise, not a cycle the battery felt; it keeps the
# trace small (one point per real reversal) on a board that stores it at every commit.
TURNING_POINT_MIN_SWING_PCT = 0.5
# A command this close to the request was not cut (the aggregator link's "differs" threshold).
REFUSAL_TOLERANCE_W = 0.5


def extend_trace(trace: list[float], soc_pct: float) -> bool:  # noqa: PLR0911  one per case
    """Add a SoC reading to a trace of turning points; True if the trace changed.

    The last point follows the SoC while it keeps moving the same way; a move back by more
    than ``TURNING_POINT_MIN_SWING_PCT`` starts a new point. So the trace holds the reversals
    a cycle counter (rainflow) needs, and nothing else.
    """
    if not math.isfinite(soc_pct):
        return False
    if not trace:
        trace.append(soc_pct)
        return True
    last = trace[-1]
    if len(trace) == 1:
        if abs(soc_pct - last) < TURNING_POINT_MIN_SWING_PCT:
            return False
        trace.append(soc_pct)
        return True
    rising = last > trace[-2]
    if (soc_pct > last) == rising and soc_pct != last:
        trace[-1] = soc_pct  # further the same way: the extreme moves
        return True
    if abs(soc_pct - last) >= TURNING_POINT_MIN_SWING_PCT:
        trace.append(soc_pct)  # a reversal beyond noise
        return True
    return False


def refused_discharge(output: ControlOutput) -> tuple[str, str] | None:
    """(rule, binding limit) when the cycle refused or reduced a discharge that was asked for.

    A discharge was asked (``requested_w`` < 0) and the command is less negative, or 0 W, with a
    limit binding. A command cut only by the ramp (no binding limit) is not a refusal. The rule
    is the binding limit's first word: ``Limit.__str__`` writes ``"<rule> <direction> <= ..."``.
    """
    requested_w = output.requested_w
    commanded_w = output.command.power_w if output.command.enable else 0.0
    binding = output.binding_limit
    if binding is None or not requested_w < -REFUSAL_TOLERANCE_W:
        return None
    if commanded_w <= requested_w + REFUSAL_TOLERANCE_W:
        return None
    # Bounded: the receipt goes to the aggregator, whose schema caps these lengths.
    return (binding.split(" ", 1)[0] or binding)[:64], binding[:256]


def departure_after(plugged_in: dt.datetime, time_local: dt.time) -> dt.datetime:
    """The first departure at ``time_local`` (site time) after a plug-in at ``plugged_in``."""
    departure = dt.datetime.combine(plugged_in.date(), time_local, tzinfo=plugged_in.tzinfo)
    if departure <= plugged_in:
        departure = dt.datetime.combine(
            plugged_in.date() + dt.timedelta(days=1), time_local, tzinfo=plugged_in.tzinfo
        )
    return departure
