"""Every parameter the safety core obeys, as plain frozen dataclasses with safe defaults.

The YAML config (``controller/config/``, pydantic) is validated first and then converted into a
``Policy``; the core never sees YAML. Names and defaults follow the config keys where the config has
them, so the conversion is a field-by-field copy. Units are in every name (``_w``, ``_pct``, ``_s``,
``_c``, ``_v``, ``_kwh``). Power is a magnitude here (>= 0); the direction is in the name.

``__post_init__`` re-checks the few invariants the core relies on (ranges, derate below cutoff):
a bad value is a ``ValueError`` at construction, never a silently clamped limit at run time.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from dataclasses import dataclass, field


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _non_negative(name: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0, f"{name}: expected a finite value >= 0")


def _positive(name: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, f"{name}: expected a finite value > 0")


def _pct(name: str, value: float) -> None:
    _require(math.isfinite(value) and 0 <= value <= 100, f"{name}: expected 0..100 %")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window in the site's local time; it crosses midnight when start is after end."""

    start_local: dt.time
    end_local: dt.time

    def __post_init__(self) -> None:
        _require(
            self.start_local.tzinfo is None and self.end_local.tzinfo is None,
            "TimeWindow: expected local times without a time zone",
        )
        _require(self.start_local != self.end_local, "TimeWindow: start and end must differ")

    def contains(self, at: dt.time) -> bool:
        """Whether the local time of day ``at`` is inside [start, end)."""
        if self.start_local < self.end_local:
            return self.start_local <= at < self.end_local
        return at >= self.start_local or at < self.end_local


@dataclass(frozen=True, slots=True)
class Departure:
    """When the owner leaves (daily, site-local time) and how full the car must be by then."""

    time_local: dt.time
    target_soc_pct: float = 80.0

    def __post_init__(self) -> None:
        _require(self.time_local.tzinfo is None, "Departure: expected a local time without zone")
        _pct("target_soc_pct", self.target_soc_pct)


@dataclass(frozen=True, slots=True)
class OwnerPolicy:
    """The owner's promises: what the car keeps, and what it has at departure."""

    soc_floor_pct: float = 40.0  # never discharge at or below this SoC
    soc_ceiling_pct: float = 90.0  # never charge at or above this SoC
    departure: Departure | None = None  # None: no departure guarantee
    # Spare time kept for the departure charge, in % of the time the charge needs (config key
    # safety.departure_margin_pct): 20 % means a 5 h charge must fit in 6 h.
    departure_margin_pct: float = 20.0

    def __post_init__(self) -> None:
        _pct("soc_floor_pct", self.soc_floor_pct)
        _pct("soc_ceiling_pct", self.soc_ceiling_pct)
        _non_negative("departure_margin_pct", self.departure_margin_pct)


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """The site's grid connection. Without a site meter this caps the charger's own flow."""

    grid_import_limit_w: float = 11_000.0
    grid_export_limit_w: float = 7_400.0  # 0: no export allowed

    def __post_init__(self) -> None:
        _non_negative("grid_import_limit_w", self.grid_import_limit_w)
        _non_negative("grid_export_limit_w", self.grid_export_limit_w)


class FaultResetMode(enum.StrEnum):
    """How a latched fault is cleared once its cause is gone."""

    AUTO = "auto"  # after fault_hold_s without the cause
    MANUAL = "manual"  # only by a reset command (``safety.reset_faults``)


# Fault kinds a technician may mark as needing a person to reset (config safety.manual_reset).
MANUAL_RESET_CHOICES = frozenset({"vehicle_fault", "inverter_fault"})

# Battery capacities a real vehicle can have; a report outside this is not believed (a 2 kWh
# report would shrink the departure reserve to almost nothing).
CAPACITY_SANE_MIN_KWH = 5.0
CAPACITY_SANE_MAX_KWH = 250.0


@dataclass(frozen=True, slots=True)
class SafetyPolicy:
    """Hard limits: never exceeded, whatever the aggregator or the fallback asks."""

    # The charger's configured maxima (nameplate of the whole installation).
    max_charge_power_w: float = 7_400.0
    max_discharge_power_w: float = 7_400.0
    # Rate of change of the command away from its last value; cuts toward 0 W are immediate.
    ramp_w_per_s: float = 2_000.0
    # A longer gap between decisions counts as this long for the ramp, so a stalled loop does
    # not earn a full-power step when it resumes.
    ramp_max_interval_s: float = 1.0
    # Freshness deadlines. CHAdeMO: stop if 0x102 is not refreshed for > 1 s; GB/T 27930: BCL
    # timeout 1 s, then stop at once.
    vehicle_stale_after_s: float = 1.0
    inverter_stale_after_s: float = 3.0
    # After a stop at the floor, discharge resumes only this far above it (no chatter).
    floor_hysteresis_pct: float = 2.0
    # After a stop at the ceiling, charging resumes only this far below it.
    ceiling_hysteresis_pct: float = 2.0
    # Linear derate from *_derate_c (full power) to *_cutoff_c (0 W); 0 W below battery_temp_min_c.
    battery_temp_derate_c: float = 45.0
    battery_temp_cutoff_c: float = 55.0
    battery_temp_min_c: float = -10.0
    inverter_temp_derate_c: float = 70.0
    inverter_temp_cutoff_c: float = 85.0
    # Per-cell limits where the vehicle reports cell voltages (GB/T BCS/BSM). The defaults suit
    # NMC cells; set 3.65 / 2.50 for LFP. The vehicle's BMS stays the primary protection.
    cell_voltage_max_v: float = 4.20  # no charging at or above
    cell_voltage_min_v: float = 3.00  # no discharging at or below
    fault_reset: FaultResetMode = FaultResetMode.AUTO
    fault_hold_s: float = 60.0  # cause gone this long before an automatic reset
    # Faults a person must reset whatever ``fault_reset`` says (rule names: "vehicle_fault",
    # "inverter_fault"). The emergency stop is always among them (ISO 13850, IEC 60204-1
    # 9.2.5.4.2: the reset of an emergency stop shall not initiate a restart).
    manual_reset_faults: frozenset[str] = frozenset()
    # The floor and ceiling hold on the true SoC: the reported value is taken as uncertain by its
    # resolution (CHAdeMO 0x102 byte 6 and GB/T 27930 BCS byte 7: 1 %), and energy keeps flowing
    # this long after a decision: the data's age (CHAdeMO 0x102 every 100 ms, GB/T BCS every
    # 250 ms), the next cycle (100 ms), the Modbus write and the inverter's ramp to 0 W.
    soc_resolution_pct: float = 1.0
    floor_horizon_s: float = 1.0
    # Simulation only (V2G_SIMULATED_CLOCK): the plant moves the battery this many times faster
    # than real time, so the energy of a horizon scales with it. 1 on a charger.
    battery_time_factor: float = 1.0

    def __post_init__(self) -> None:
        unknown = self.manual_reset_faults - MANUAL_RESET_CHOICES
        _require(
            not unknown,
            f"manual_reset_faults: unknown {sorted(unknown)}, expected some of "
            f"{sorted(MANUAL_RESET_CHOICES)}",
        )
        _require(
            math.isfinite(self.soc_resolution_pct) and 0 <= self.soc_resolution_pct <= 10,
            "soc_resolution_pct: expected 0..10 %",
        )
        _non_negative("floor_horizon_s", self.floor_horizon_s)
        _require(
            math.isfinite(self.battery_time_factor) and self.battery_time_factor >= 1,
            "battery_time_factor: expected a finite value >= 1",
        )
        self._check_limits()

    def _check_limits(self) -> None:
        for name in ("max_charge_power_w", "max_discharge_power_w"):
            _non_negative(name, getattr(self, name))
        for name in (
            "ramp_w_per_s",
            "ramp_max_interval_s",
            "vehicle_stale_after_s",
            "inverter_stale_after_s",
        ):
            _positive(name, getattr(self, name))
        for name in ("floor_hysteresis_pct", "ceiling_hysteresis_pct", "fault_hold_s"):
            _non_negative(name, getattr(self, name))
        for name in (
            "battery_temp_derate_c",
            "battery_temp_cutoff_c",
            "battery_temp_min_c",
            "inverter_temp_derate_c",
            "inverter_temp_cutoff_c",
            "cell_voltage_max_v",
            "cell_voltage_min_v",
        ):
            _require(math.isfinite(getattr(self, name)), f"{name}: expected a finite value")
        _require(
            self.battery_temp_derate_c < self.battery_temp_cutoff_c,
            "battery_temp_derate_c: expected below battery_temp_cutoff_c",
        )
        _require(
            self.inverter_temp_derate_c < self.inverter_temp_cutoff_c,
            "inverter_temp_derate_c: expected below inverter_temp_cutoff_c",
        )
        _require(
            self.cell_voltage_min_v < self.cell_voltage_max_v,
            "cell_voltage_min_v: expected below cell_voltage_max_v",
        )


@dataclass(frozen=True, slots=True)
class WearPolicy:
    """Battery wear budget for the energy the car gives back, per local calendar day."""

    max_discharge_kwh_per_day: float = 20.0
    # Optional cap in equivalent full discharge cycles per day (discharged energy / capacity).
    max_cycles_per_day: float | None = None

    def __post_init__(self) -> None:
        _non_negative("max_discharge_kwh_per_day", self.max_discharge_kwh_per_day)
        if self.max_cycles_per_day is not None:
            _non_negative("max_cycles_per_day", self.max_cycles_per_day)


class FallbackMode(enum.StrEnum):
    """What the charger does on its own without a valid aggregator setpoint."""

    IDLE = "idle"  # hold 0 W
    TIME_OF_USE = "time_of_use"  # charge in cheap windows, discharge in peak windows
    # Follow the economics planner's plan (controller/economics/planner.py): it proposes the
    # power of the current slot, the core caps it like any other request.
    OPTIMIZE = "optimize"


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """The local policy used when no valid aggregator setpoint is in force."""

    mode: FallbackMode = FallbackMode.IDLE
    # Charge toward the departure target (or the ceiling without a departure) in these windows.
    cheap_windows: tuple[TimeWindow, ...] = ()
    # Discharge in these windows; the floor, departure reserve and every limit still apply.
    peak_windows: tuple[TimeWindow, ...] = ()
    charge_power_w: float = 3_700.0
    discharge_power_w: float = 3_700.0

    def __post_init__(self) -> None:
        _non_negative("charge_power_w", self.charge_power_w)
        _non_negative("discharge_power_w", self.discharge_power_w)


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the core obeys. ``Policy()`` is a complete, safe configuration."""

    owner: OwnerPolicy = field(default_factory=OwnerPolicy)
    site: SitePolicy = field(default_factory=SitePolicy)
    safety: SafetyPolicy = field(default_factory=SafetyPolicy)
    wear: WearPolicy = field(default_factory=WearPolicy)
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)
    # Used when the vehicle does not report its capacity (CHAdeMO 0x101 bytes 5-6 and GB/T BCP
    # nominal energy are optional). Large is conservative for the departure reserve.
    battery_capacity_default_kwh: float = 80.0

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.battery_capacity_default_kwh)
            and CAPACITY_SANE_MIN_KWH <= self.battery_capacity_default_kwh <= CAPACITY_SANE_MAX_KWH,
            f"battery_capacity_default_kwh: expected {CAPACITY_SANE_MIN_KWH:g}.."
            f"{CAPACITY_SANE_MAX_KWH:g} kWh",
        )
