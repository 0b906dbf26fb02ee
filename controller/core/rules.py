"""The interlocks: named rules that turn snapshots and policy into limits in force.

A ``Limit`` caps the command's magnitude in one direction. Gates (faults, stale data, no session)
are limits of 0 W in both directions; everything else is a cap in one direction. The smallest
limit in a direction is the one that binds. Each rule cites where it comes from.

Values are sanitised conservatively: a limit the vehicle does not report (``None``) is no limit
from that source, but a reported value that is not a finite number never permits anything.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass

from controller.core.policy import (
    CAPACITY_SANE_MAX_KWH,
    CAPACITY_SANE_MIN_KWH,
    Policy,
    SafetyPolicy,
)
from controller.core.snapshots import InverterState, VehicleState


class Direction(enum.StrEnum):
    """Which way a limit applies. CHARGE is + (into the vehicle), DISCHARGE is -."""

    CHARGE = "charge"
    DISCHARGE = "discharge"


class Rule(enum.StrEnum):
    """Every named rule the core applies, as logs and telemetry print it."""

    # Gates: 0 W both ways.
    EMERGENCY_STOP = "emergency_stop"
    VEHICLE_FAULT = "vehicle_fault"
    INVERTER_FAULT = "inverter_fault"
    FAULT_LATCH = "fault_latch"
    VEHICLE_STOP_REQUEST = "vehicle_stop_request"
    VEHICLE_STALE = "vehicle_stale"
    INVERTER_STALE = "inverter_stale"
    NO_SESSION = "no_session"
    SOC_UNKNOWN = "soc_unknown"
    # Caps in one direction.
    VEHICLE_PERMISSION = "vehicle_permission"
    VEHICLE_CHARGE_CURRENT = "vehicle_charge_current"
    VEHICLE_DISCHARGE_CURRENT = "vehicle_discharge_current"
    VEHICLE_CHARGE_VOLTAGE = "vehicle_charge_voltage"
    VEHICLE_DISCHARGE_VOLTAGE = "vehicle_discharge_voltage"
    CHARGER_RATING = "charger_rating"
    INVERTER_RATING = "inverter_rating"
    SITE_GRID_LIMIT = "site_grid_limit"
    SOC_CEILING = "soc_ceiling"
    SOC_FLOOR = "soc_floor"
    VEHICLE_MIN_DISCHARGE_LEVEL = "vehicle_min_discharge_level"
    DEPARTURE_RESERVE = "departure_reserve"
    BATTERY_TEMPERATURE = "battery_temperature"
    INVERTER_TEMPERATURE = "inverter_temperature"
    CELL_VOLTAGE = "cell_voltage"
    WEAR_BUDGET = "wear_budget"
    # Not limits: how the command got its value.
    RAMP = "ramp"
    ARBITRATION = "arbitration"
    FAULT_RESET = "fault_reset"


@dataclass(frozen=True, slots=True)
class Limit:
    """A cap in force: the command's magnitude in ``direction`` may not exceed ``power_w``."""

    rule: Rule
    direction: Direction
    power_w: float  # >= 0
    source: str  # where the value comes from, for logs

    def __str__(self) -> str:
        return f"{self.rule} {self.direction} <= {self.power_w:.0f} W ({self.source})"


@dataclass(frozen=True, slots=True)
class Reason:
    """Something the caller should log: which rule, and what it saw."""

    rule: Rule
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


Finding = Limit | Reason


def zero_both(rule: Rule, source: str) -> Iterator[Finding]:
    """A gate: 0 W in both directions, with the reason."""
    yield Limit(rule, Direction.CHARGE, 0.0, source)
    yield Limit(rule, Direction.DISCHARGE, 0.0, source)
    yield Reason(rule, source)


def zero(rule: Rule, direction: Direction, source: str) -> Iterator[Finding]:
    """No power in one direction, with the reason."""
    yield Limit(rule, direction, 0.0, source)
    yield Reason(rule, source)


def cap_value(value: float | None, high: float = math.inf) -> float | None:
    """A reported maximum: None is no limit; a value that is not a finite number in 0..high is
    unknown, which permits nothing (0)."""
    if value is None:
        return None
    return value if math.isfinite(value) and 0 <= value <= high else 0.0


def reading(value: float | None) -> float | None:
    """A measurement: anything that is not a finite number is unknown."""
    return value if value is not None and math.isfinite(value) else None


def plausible(value: float | None, low: float, high: float) -> float | None:
    """A measurement inside its physical range; anything else (NaN, inf, outside) is unknown."""
    return value if value is not None and math.isfinite(value) and low <= value <= high else None


# Physical ranges: a value outside is a broken sensor or a corrupt frame, not a reading.
# DC EV charging: CHAdeMO up to 500 V / 400 A (2.0), GB/T 27930 up to 950 V / 4000 A offset
# encodings; 1500 V is the low-voltage directive's DC ceiling.
MAX_VOLTAGE_V = 1500.0
MAX_CURRENT_A = 1000.0
TEMPERATURE_RANGE_C = (-60.0, 150.0)
MAX_CELL_VOLTAGE_V = 10.0  # no lithium (or other) cell comes near it; GB/T BCS: 0.01 V steps


def is_fresh(observed_at_s: float, now_s: float, stale_after_s: float) -> bool:
    """Observed no longer than the deadline ago (and not in the future, which is implausible)."""
    return 0.0 <= now_s - observed_at_s <= stale_after_s


@dataclass(frozen=True, slots=True)
class Readings:
    """What the directional rules read: fresh snapshots in an energy-transfer session."""

    vehicle: VehicleState
    inverter: InverterState
    soc_pct: float
    pack_voltage_v: float | None  # None: not reported or implausible
    capacity_wh: float

    @staticmethod
    def of(
        vehicle: VehicleState, inverter: InverterState, soc_pct: float, policy: Policy
    ) -> Readings:
        voltage_v = plausible(vehicle.pack_voltage_v, 0.0, MAX_VOLTAGE_V)
        return Readings(
            vehicle=vehicle,
            inverter=inverter,
            soc_pct=soc_pct,
            pack_voltage_v=voltage_v if voltage_v is not None and voltage_v > 0 else None,
            capacity_wh=guarantee_capacity_kwh(vehicle.capacity_kwh, policy) * 1000.0,
        )


def guarantee_capacity_kwh(reported_kwh: float | None, policy: Policy) -> float:
    """The capacity the departure reserve and the floor's prediction count on.

    The vehicle's report where it is a capacity a real car can have, else the configured nominal
    (CHAdeMO 0x101 bytes 5-6 and GB/T BCP nominal energy are optional, and a 2 kWh report would
    shrink the reserve to nothing).
    """
    reported = plausible(reported_kwh, CAPACITY_SANE_MIN_KWH, CAPACITY_SANE_MAX_KWH)
    return policy.battery_capacity_default_kwh if reported is None else reported


# --- vehicle ------------------------------------------------------------------------------------


def vehicle_permission(r: Readings) -> Iterator[Finding]:
    """The vehicle must permit each direction itself."""
    # CHAdeMO 0x102 byte 5 bit 0 (vehicle enabled; charger must stop when 0) and bit 7
    # (discharge-compatible); GB/T 27930 BSM byte 7 bits 5-6 (charging allowed, else pause).
    if not r.vehicle.charge_permitted:
        yield from zero(Rule.VEHICLE_PERMISSION, Direction.CHARGE, "vehicle does not permit charge")
    if not r.vehicle.discharge_permitted:
        yield from zero(
            Rule.VEHICLE_PERMISSION, Direction.DISCHARGE, "vehicle does not permit discharge"
        )


def _current_limit(
    rule: Rule, direction: Direction, current_a: float | None, voltage_v: float | None, what: str
) -> Iterator[Finding]:
    limit_a = cap_value(current_a, MAX_CURRENT_A)
    if limit_a is None:
        return
    if voltage_v is None:
        # P = V * I needs the pack voltage; without it the current limit cannot be honoured.
        yield from zero(rule, direction, f"{what} {limit_a:g} A but pack voltage unknown")
        return
    yield Limit(rule, direction, limit_a * voltage_v, f"{what} {limit_a:g} A x {voltage_v:g} V")


def vehicle_current(r: Readings) -> Iterator[Finding]:
    """The vehicle's current limits, turned into power at its pack voltage."""
    # CHAdeMO 0x102 byte 3 charging current request; GB/T 27930 BCL current demand.
    # IEC 61851-23:2014 6.4.3.101: supply current as the vehicle's control requests.
    yield from _current_limit(
        Rule.VEHICLE_CHARGE_CURRENT,
        Direction.CHARGE,
        r.vehicle.charge_current_limit_a,
        r.pack_voltage_v,
        "vehicle charge current",
    )
    # CHAdeMO 0x200 byte 0 maximum discharge current (V2H guideline).
    yield from _current_limit(
        Rule.VEHICLE_DISCHARGE_CURRENT,
        Direction.DISCHARGE,
        r.vehicle.discharge_current_limit_a,
        r.pack_voltage_v,
        "vehicle discharge current",
    )


def vehicle_voltage(r: Readings) -> Iterator[Finding]:
    """No charging at the vehicle's maximum voltage, no discharging at its minimum."""
    v = r.pack_voltage_v
    # CHAdeMO 0x100 bytes 4-5 maximum battery voltage / 0x102 bytes 1-2 target voltage;
    # GB/T 27930 BHM maximum allowed charging voltage, BCL voltage demand.
    max_v = r.vehicle.charge_voltage_limit_v
    max_known = plausible(max_v, 0.0, MAX_VOLTAGE_V)
    if max_v is not None and (v is None or max_known is None or v >= max_known):
        yield from zero(
            Rule.VEHICLE_CHARGE_VOLTAGE,
            Direction.CHARGE,
            f"pack {_fmt(v, 'V')} at or above vehicle maximum {max_v:g} V",
        )
    # CHAdeMO 0x200 bytes 4-5 minimum discharge voltage.
    min_v = r.vehicle.discharge_voltage_min_v
    min_known = plausible(min_v, 0.0, MAX_VOLTAGE_V)
    if min_v is not None and (v is None or min_known is None or v <= min_known):
        yield from zero(
            Rule.VEHICLE_DISCHARGE_VOLTAGE,
            Direction.DISCHARGE,
            f"pack {_fmt(v, 'V')} at or below vehicle minimum discharge {min_v:g} V",
        )


def cell_voltage(r: Readings, safety: SafetyPolicy) -> Iterator[Finding]:
    """Per-cell voltage limits, where the vehicle reports cell voltages."""
    # GB/T 27930 BCS highest cell voltage (bytes 5-6) against BCP maximum cell voltage;
    # BSM byte 6 bits 1-2 cell voltage status. A reported value that is not a number blocks.
    high = r.vehicle.cell_voltage_max_v
    if high is not None and not (
        plausible(high, 0.0, MAX_CELL_VOLTAGE_V) is not None and high < safety.cell_voltage_max_v
    ):
        yield from zero(
            Rule.CELL_VOLTAGE,
            Direction.CHARGE,
            f"highest cell {high:g} V at or above {safety.cell_voltage_max_v:g} V",
        )
    low = r.vehicle.cell_voltage_min_v
    if low is not None and not (
        plausible(low, 0.0, MAX_CELL_VOLTAGE_V) is not None and low > safety.cell_voltage_min_v
    ):
        yield from zero(
            Rule.CELL_VOLTAGE,
            Direction.DISCHARGE,
            f"lowest cell {low:g} V at or below {safety.cell_voltage_min_v:g} V",
        )


# --- charger, inverter, site ----------------------------------------------------------------------


def ratings(r: Readings, policy: Policy) -> Iterator[Finding]:
    """The installation's, the inverter's and the grid connection's maxima."""
    # IEC 61851-23:2014 6.4.3.101: the maximum ratings of the DC charger shall not be exceeded;
    # they are what GB/T 27930 CML (maximum output current) and CHAdeMO 0x108 byte 3 / 0x208 byte 3
    # (available output / input current) announce to the vehicle.
    safety = policy.safety
    yield Limit(
        Rule.CHARGER_RATING, Direction.CHARGE, safety.max_charge_power_w, "max_charge_power_w"
    )
    yield Limit(
        Rule.CHARGER_RATING,
        Direction.DISCHARGE,
        safety.max_discharge_power_w,
        "max_discharge_power_w",
    )
    for direction, rated in (
        (Direction.CHARGE, cap_value(r.inverter.max_charge_power_w)),
        (Direction.DISCHARGE, cap_value(r.inverter.max_discharge_power_w)),
    ):
        if rated is not None:
            yield Limit(Rule.INVERTER_RATING, direction, rated, f"inverter rated {direction}")
    # Grid connection agreement (DNO import capacity, export limitation); separate per direction.
    yield Limit(
        Rule.SITE_GRID_LIMIT, Direction.CHARGE, policy.site.grid_import_limit_w, "grid import"
    )
    yield Limit(
        Rule.SITE_GRID_LIMIT, Direction.DISCHARGE, policy.site.grid_export_limit_w, "grid export"
    )


def rated_power_w(r: Readings, safety: SafetyPolicy, direction: Direction) -> float:
    """Full power in a direction: the configured maximum, or the inverter's rating if lower."""
    if direction is Direction.CHARGE:
        configured, rated = safety.max_charge_power_w, cap_value(r.inverter.max_charge_power_w)
    else:
        configured, rated = (
            safety.max_discharge_power_w,
            cap_value(r.inverter.max_discharge_power_w),
        )
    return configured if rated is None else min(configured, rated)


def derate_fraction(temp_c: float | None, *, derate_c: float, cutoff_c: float) -> float:
    """The share of rated power allowed at ``temp_c``: 1 up to derate_c, 0 from cutoff_c, linear
    between; a temperature outside its physical range (or not a number) allows nothing."""
    if temp_c is None:
        return 1.0
    if plausible(temp_c, *TEMPERATURE_RANGE_C) is None or temp_c >= cutoff_c:
        return 0.0
    if temp_c <= derate_c:
        return 1.0
    return (cutoff_c - temp_c) / (cutoff_c - derate_c)


def _derate(
    rule: Rule,
    what: str,
    temp_c: float | None,
    *,
    derate_c: float,
    cutoff_c: float,
    r: Readings,
    safety: SafetyPolicy,
) -> Iterator[Finding]:
    if temp_c is None:
        return
    fraction = derate_fraction(temp_c, derate_c=derate_c, cutoff_c=cutoff_c)
    if fraction <= 0.0:
        why = "at or above cutoff" if plausible(temp_c, *TEMPERATURE_RANGE_C) else "implausible;"
        yield from zero_both(rule, f"{what} {temp_c:g} C {why} cutoff {cutoff_c:g} C")
        return
    if fraction >= 1.0:
        return
    for direction in Direction:
        yield Limit(
            rule,
            direction,
            fraction * rated_power_w(r, safety, direction),
            f"{what} {temp_c:g} C: {fraction:.0%} of rated",
        )
    yield Reason(rule, f"{what} {temp_c:g} C above {derate_c:g} C: derated to {fraction:.0%}")


def temperatures(r: Readings, safety: SafetyPolicy) -> Iterator[Finding]:
    """Linear derating between the derate and cutoff temperatures; cutoff when too cold."""
    # IEC 61851-23:2014 6.4.3.4: terminate the supply on excess temperature. CHAdeMO 0x102
    # byte 4 bit 3 (high battery temperature) and GB/T 27930 BSM byte 6 bits 7-8 / BST
    # (pack over-temperature) are the vehicle's own alarms; this derates before they trip.
    yield from _derate(
        Rule.BATTERY_TEMPERATURE,
        "battery",
        r.vehicle.battery_temp_max_c,
        derate_c=safety.battery_temp_derate_c,
        cutoff_c=safety.battery_temp_cutoff_c,
        r=r,
        safety=safety,
    )
    cold = r.vehicle.battery_temp_min_c
    if cold is not None and not (
        plausible(cold, *TEMPERATURE_RANGE_C) is not None and cold >= safety.battery_temp_min_c
    ):
        # Lithium plating risk when cold; GB/T BSM lowest temperature (byte 4).
        yield from zero_both(
            Rule.BATTERY_TEMPERATURE,
            f"battery {cold:g} C below minimum {safety.battery_temp_min_c:g} C",
        )
    yield from _derate(
        Rule.INVERTER_TEMPERATURE,
        "inverter",
        r.inverter.temperature_c,
        derate_c=safety.inverter_temp_derate_c,
        cutoff_c=safety.inverter_temp_cutoff_c,
        r=r,
        safety=safety,
    )


# --- state of charge ------------------------------------------------------------------------------


def departure_charge_power_w(r: Readings, policy: Policy) -> float:
    """The charge power a departure charge can count on now: the lowest of charger, inverter,
    grid import and vehicle, derated for the battery's and the inverter's temperature.

    The vehicle's charge current is counted only when it is above zero: while discharging, a
    CHAdeMO vehicle requests 0 A, which says nothing about what it could take.
    """
    safety = policy.safety
    candidates = [
        rated_power_w(r, safety, Direction.CHARGE),
        policy.site.grid_import_limit_w,
    ]
    reported_a = r.vehicle.charge_current_limit_a
    vehicle_a = plausible(reported_a, 0.0, MAX_CURRENT_A)
    if reported_a is not None and vehicle_a is None:
        candidates.append(0.0)  # not a current: nothing to count on (the reserve is the target)
    elif vehicle_a is not None and vehicle_a > 0 and r.pack_voltage_v is not None:
        candidates.append(vehicle_a * r.pack_voltage_v)
    battery = derate_fraction(
        r.vehicle.battery_temp_max_c,
        derate_c=safety.battery_temp_derate_c,
        cutoff_c=safety.battery_temp_cutoff_c,
    )
    inverter = derate_fraction(
        r.inverter.temperature_c,
        derate_c=safety.inverter_temp_derate_c,
        cutoff_c=safety.inverter_temp_cutoff_c,
    )
    cold = r.vehicle.battery_temp_min_c
    if cold is not None and not (
        plausible(cold, *TEMPERATURE_RANGE_C) is not None and cold >= safety.battery_temp_min_c
    ):
        battery = 0.0
    return min(candidates) * min(battery, inverter)


def local_instant(day: dt.date, at_local: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """``at_local`` on ``day`` in ``tz``, as an aware UTC instant, across DST transitions.

    An ambiguous local time (the repeated hour in autumn) is its earlier instant; a local time
    that does not exist (the skipped hour in spring) is the first valid instant after it, the
    transition itself (a departure at 02:30 on a spring-forward night is at 03:00 new time).
    """
    naive = dt.datetime.combine(day, at_local)
    earlier = naive.replace(tzinfo=tz, fold=0).astimezone(dt.UTC)
    if earlier.astimezone(tz).replace(tzinfo=None) == naive:
        return earlier
    # In a gap: fold=1 reads it with the offset after the transition, which lands before it;
    # the transition lies between the two readings. Bisect to the first instant after it.
    before = naive.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    low_s, high_s = sorted((int(before.timestamp()), int(earlier.timestamp())))
    offset_after = earlier.astimezone(tz).utcoffset()
    while high_s - low_s > 1:  # transitions fall on whole seconds
        middle_s = (low_s + high_s) // 2
        if dt.datetime.fromtimestamp(middle_s, tz).utcoffset() == offset_after:
            high_s = middle_s
        else:
            low_s = middle_s
    return dt.datetime.fromtimestamp(high_s, dt.UTC)


def next_local_instant(now_wall: dt.datetime, at_local: dt.time) -> dt.datetime:
    """The next ``at_local`` strictly after ``now_wall``, in its time zone, as a UTC instant."""
    tz = now_wall.tzinfo
    assert tz is not None  # noqa: S101  Now.wall is aware (checked in Now)
    now_utc = now_wall.astimezone(dt.UTC)
    day = now_wall.date()
    for offset_days in (-1, 0, 1, 2):
        candidate = local_instant(day + dt.timedelta(days=offset_days), at_local, tz)
        if candidate > now_utc:
            return candidate
    raise AssertionError("unreachable: a local time recurs within two days")


def seconds_until(now_wall: dt.datetime, at_local: dt.time) -> float:
    """Seconds from ``now_wall`` to the next ``at_local`` in its time zone (DST-correct)."""
    return (next_local_instant(now_wall, at_local) - now_wall.astimezone(dt.UTC)).total_seconds()


def departure_reserve_pct(
    target_soc_pct: float,
    seconds_to_departure_s: float,
    charge_power_w: float,
    capacity_wh: float,
    margin_pct: float,
) -> float:
    """The lowest SoC from which the target is still reachable by departure, margin included.

    From SoC s the charge needs (target - s) / 100 * capacity / power hours; with the margin it
    must fit: need * (1 + margin / 100) <= time left. Solving for s gives this floor. It rises
    toward the target as departure nears.
    """
    if charge_power_w <= 0:
        return target_soc_pct
    usable_s = seconds_to_departure_s / (1.0 + margin_pct / 100.0)
    return target_soc_pct - usable_s / 3600.0 * charge_power_w / capacity_wh * 100.0


@dataclass(frozen=True, slots=True)
class FloorPart:
    """One contribution to the effective SoC floor."""

    rule: Rule
    soc_pct: float
    source: str


def floor_parts(
    r: Readings, policy: Policy, departure_left_s: float | None, last_command_w: float
) -> tuple[FloorPart, ...]:
    """Every floor in force; the effective floor is the highest of them.

    ``departure_left_s`` is the time to the session's departure (0 once it has passed); None
    when the wall clock cannot be trusted, which holds the reserve at the target.
    """
    parts = [FloorPart(Rule.SOC_FLOOR, policy.owner.soc_floor_pct, "owner soc_floor_pct")]
    # CHAdeMO 0x200 byte 6 minimum battery discharge level (%). Not a plausible percentage:
    # never discharge.
    vehicle_min = r.vehicle.discharge_soc_min_pct
    if vehicle_min is not None:
        level = plausible(vehicle_min, 0.0, 100.0)
        parts.append(
            FloorPart(
                Rule.VEHICLE_MIN_DISCHARGE_LEVEL,
                math.inf if level is None else level,
                "vehicle minimum discharge level",
            )
        )
    departure = policy.owner.departure
    if departure is not None:
        parts.append(departure_part(r, policy, departure_left_s, last_command_w))
    return tuple(parts)


def departure_part(
    r: Readings, policy: Policy, left_s: float | None, last_command_w: float
) -> FloorPart:
    """The departure reserve (``policy.owner.departure`` must be set)."""
    # The owner's departure promise: refuse discharge once the charge back to the target would
    # no longer fit, at the power available now (every derating), after the ramp from the
    # present command, with the margin. From departure time on, the reserve is the target.
    departure = policy.owner.departure
    assert departure is not None  # noqa: S101  checked by the caller
    target = departure.target_soc_pct
    by = f"{target:g} % by {departure.time_local:%H:%M}"
    if left_s is None:
        return FloorPart(Rule.DEPARTURE_RESERVE, target, f"{by}: wall clock not synchronised")
    power_w = departure_charge_power_w(r, policy)
    safety = policy.safety
    ramp_s = (power_w + max(0.0, -last_command_w)) / safety.ramp_w_per_s
    lost_s = (ramp_s + safety.floor_horizon_s) * safety.battery_time_factor
    usable_s = max(0.0, left_s - lost_s)
    reserve = departure_reserve_pct(
        target, usable_s, power_w, r.capacity_wh, policy.owner.departure_margin_pct
    )
    note = f"{by} ({left_s / 3600:.1f} h) at {power_w:.0f} W" if left_s > 0 else f"{by}: due"
    return FloorPart(Rule.DEPARTURE_RESERVE, reserve, note)


def floor_blocks(
    soc_pct: float, floor_pct: float, hysteresis_pct: float, was_blocked: bool
) -> bool:
    """Discharge is blocked at or below the floor, and after that until floor + hysteresis."""
    if soc_pct <= floor_pct:
        return True
    return was_blocked and soc_pct < floor_pct + hysteresis_pct


def ceiling_blocks(
    soc_pct: float, ceiling_pct: float, hysteresis_pct: float, was_blocked: bool
) -> bool:
    """Charging is blocked at or above the ceiling, and after that until ceiling - hysteresis."""
    if soc_pct >= ceiling_pct:
        return True
    return was_blocked and soc_pct > ceiling_pct - hysteresis_pct


def soc_ceiling(
    r: Readings, policy: Policy, high_next_pct: float, was_blocked: bool
) -> list[Finding]:
    """The owner's SoC ceiling for charging, with hysteresis (SoC estimates sag once charging
    stops), judged on ``high_next_pct``, the highest SoC the battery may hold by the next
    decision. Charging is blocked while this returns findings."""
    owner, safety = policy.owner, policy.safety
    blocked = ceiling_blocks(
        high_next_pct, owner.soc_ceiling_pct, safety.ceiling_hysteresis_pct, was_blocked
    )
    if not blocked:
        return []
    return list(
        zero(
            Rule.SOC_CEILING,
            Direction.CHARGE,
            f"SoC {r.soc_pct:g} % (up to {high_next_pct:.1f} % before a stop takes effect): "
            f"ceiling "
            f"{owner.soc_ceiling_pct:g} %, resumes at or below "
            f"{owner.soc_ceiling_pct - safety.ceiling_hysteresis_pct:g} %",
        )
    )


def soc_floor(
    r: Readings, policy: Policy, top: FloorPart, low_next_pct: float, was_blocked: bool
) -> list[Finding]:
    """The effective floor ``top`` (the highest of ``floor_parts``) for discharge, judged on
    ``low_next_pct``, the lowest SoC the battery may hold by the next decision: the floor holds
    on the true SoC, not the reported one. Hysteresis: once stopped, discharge resumes only
    floor + hysteresis above it (SoC estimates recover once discharge stops). Discharge is
    blocked while this returns findings."""
    hysteresis_pct = policy.safety.floor_hysteresis_pct
    blocked = floor_blocks(low_next_pct, top.soc_pct, hysteresis_pct, was_blocked)
    if not blocked:
        return []
    return list(
        zero(
            top.rule,
            Direction.DISCHARGE,
            f"SoC {r.soc_pct:g} % (down to {low_next_pct:.1f} % before a stop takes effect): "
            f"floor "
            f"{top.soc_pct:.1f} % ({top.source}), resumes at or above "
            f"{top.soc_pct + hysteresis_pct:.1f} %",
        )
    )


def wear_budget(r: Readings, policy: Policy, discharged_wh: float) -> Iterator[Finding]:
    """The battery wear budget (owner policy, warranty throughput): no discharge once the energy
    given back today (``discharged_wh``, local day) reaches it."""
    budget_wh = wear_budget_wh(r, policy)
    if discharged_wh >= budget_wh:
        yield from zero(
            Rule.WEAR_BUDGET,
            Direction.DISCHARGE,
            f"discharged {discharged_wh / 1000:.2f} kWh today of {budget_wh / 1000:.2f} kWh",
        )


def wear_budget_wh(r: Readings, policy: Policy) -> float:
    """Today's discharge energy allowance: kWh per day, and cycles x capacity if configured."""
    budget_wh = policy.wear.max_discharge_kwh_per_day * 1000.0
    if policy.wear.max_cycles_per_day is not None:
        budget_wh = min(budget_wh, policy.wear.max_cycles_per_day * r.capacity_wh)
    return budget_wh


def _fmt(value: float | None, unit: str) -> str:
    return "unknown" if value is None else f"{value:g} {unit}"
