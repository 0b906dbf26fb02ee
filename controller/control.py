"""The bridge between the daemon and the pure safety core.

``policy_from_config`` turns the validated YAML into the core's ``Policy`` (field by field, no
defaults invented here). ``CoreControlStep`` holds the core's state between decisions, since
the core itself is pure: each call passes the state in and keeps the state it returns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

from controller.config import Config, TimeWindow
from controller.core.policy import (
    Departure,
    FallbackMode,
    FallbackPolicy,
    FaultResetMode,
    OwnerPolicy,
    Policy,
    SafetyPolicy,
    SitePolicy,
    WearPolicy,
)
from controller.core.policy import TimeWindow as CoreWindow
from controller.core.rules import Direction, is_fresh
from controller.core.safety import (
    CoreState,
    Decision,
    FaultReset,
    Inputs,
    Now,
    decide,
    reset_faults,
)
from controller.core.snapshots import InverterState, Setpoint, VehicleState
from controller.daemon import ControlOutput

_AGGREGATOR_SOURCES = {"setpoint", "setpoint_idle"}


def _windows(window: TimeWindow | None) -> tuple[CoreWindow, ...]:
    return () if window is None else (CoreWindow(window.start, window.end),)


def policy_from_config(config: Config) -> Policy:
    """The core's policy from the technician's config."""
    owner, safety, fallback = config.owner, config.safety, config.fallback
    departure = owner.departure
    return Policy(
        owner=OwnerPolicy(
            soc_floor_pct=owner.soc_floor_pct,
            soc_ceiling_pct=owner.soc_ceiling_pct,
            departure=None
            if departure is None
            else Departure(time_local=departure.time, target_soc_pct=departure.target_soc_pct),
            departure_margin_pct=safety.departure_margin_pct,
        ),
        site=SitePolicy(
            grid_import_limit_w=safety.grid_import_limit_w,
            grid_export_limit_w=safety.grid_export_limit_w,
        ),
        safety=SafetyPolicy(
            max_charge_power_w=safety.max_charge_power_w,
            max_discharge_power_w=safety.max_discharge_power_w,
            ramp_w_per_s=safety.ramp_w_per_s,
            vehicle_stale_after_s=config.vehicle.stale_after_s,
            inverter_stale_after_s=safety.inverter_stale_after_s,
            floor_hysteresis_pct=safety.floor_hysteresis_pct,
            ceiling_hysteresis_pct=safety.ceiling_hysteresis_pct,
            battery_temp_derate_c=safety.battery_temp_derate_c,
            battery_temp_cutoff_c=safety.battery_temp_cutoff_c,
            battery_temp_min_c=safety.battery_temp_min_c,
            inverter_temp_derate_c=safety.inverter_temp_derate_c,
            inverter_temp_cutoff_c=safety.inverter_temp_cutoff_c,
            cell_voltage_max_v=safety.cell_voltage_max_v,
            cell_voltage_min_v=safety.cell_voltage_min_v,
            fault_reset=FaultResetMode(safety.fault_reset),
            fault_hold_s=safety.fault_hold_s,
        ),
        wear=WearPolicy(
            max_discharge_kwh_per_day=safety.max_discharge_kwh_per_day,
            max_cycles_per_day=safety.max_cycles_per_day,
        ),
        fallback=FallbackPolicy(
            mode=FallbackMode(fallback.policy),
            cheap_windows=_windows(fallback.cheap_window),
            peak_windows=_windows(fallback.peak_window),
            charge_power_w=fallback.charge_power_w,
            discharge_power_w=fallback.discharge_power_w,
        ),
        battery_capacity_default_kwh=owner.battery_capacity_kwh,
    )


class CoreControlStep:
    """A ``daemon.ControlStep`` that runs the safety core and keeps its state."""

    def __init__(
        self, policy: Policy, *, emergency_stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.policy = policy
        self.state = CoreState()
        self.last: Decision | None = None
        self._emergency_stop = emergency_stop  # the board's E-stop input, read every decision

    def seed_wear_budget(self, day: dt.date, discharged_wh: float) -> None:
        """Start with the energy already discharged on ``day`` (from the ledger), so a restart
        does not hand out a fresh wear budget (core/safety.py: ``CoreState.wear_day``)."""
        if self.state.wear_day == day and self.state.discharged_today_wh >= discharged_wh:
            return
        self.state = replace(self.state, wear_day=day, discharged_today_wh=max(0.0, discharged_wh))

    def reset_faults(self) -> FaultReset:
        """A manual fault reset (technician or aggregator command)."""
        self.state, answer = reset_faults(self.state)
        return answer

    def __call__(
        self,
        vehicle: VehicleState | None,
        inverter: InverterState | None,
        setpoint: Setpoint | None,
        monotonic_s: float,
        wall: dt.datetime,
    ) -> ControlOutput:
        inputs = Inputs(
            vehicle=vehicle,
            inverter=inverter,
            setpoint=setpoint,
            emergency_stop=self._emergency_stop(),
        )
        decision, self.state = decide(inputs, self.state, Now(monotonic_s, wall), self.policy)
        self.last = decision
        following = str(decision.request.source) in _AGGREGATOR_SOURCES
        max_charge_w = decision.cap_w(Direction.CHARGE)
        max_discharge_w = decision.cap_w(Direction.DISCHARGE)
        return ControlOutput(
            command=decision.command,
            state=decision.power_state,
            binding_limit=None if decision.binding is None else str(decision.binding),
            reasons=tuple(str(r) for r in decision.reasons),
            limits=tuple(str(limit) for limit in decision.limits),
            source="aggregator" if following else "fallback",
            setpoint_id=setpoint.setpoint_id if following and setpoint is not None else None,
            requested_w=decision.request.power_w,
            max_charge_w=_finite(max_charge_w),
            max_discharge_w=_finite(max_discharge_w),
            soc_floor_pct=decision.soc_floor_pct,
            energy_above_floor_wh=self._energy_above_floor_wh(vehicle, decision),
            faults=self.state.fault_latch.causes + self.state.stop_latch.causes,
            session_allowed=self._session_allowed(inverter, monotonic_s),
        )

    def _session_allowed(self, inverter: InverterState | None, now_s: float) -> bool:
        """The charger side is ready to move energy: nothing latched, no E-stop, a healthy and
        fresh inverter. The vehicle's own state is the core's business once transfer starts."""
        if (
            self.state.fault_latch.latched
            or self.state.stop_latch.latched
            or self._emergency_stop()
        ):
            return False
        return (
            inverter is not None
            and inverter.reachable
            and not inverter.faults
            and is_fresh(inverter.observed_at_s, now_s, self.policy.safety.inverter_stale_after_s)
        )

    def _energy_above_floor_wh(
        self, vehicle: VehicleState | None, decision: Decision
    ) -> float | None:
        if vehicle is None or vehicle.soc_pct is None or decision.soc_floor_pct is None:
            return None
        capacity_kwh = vehicle.capacity_kwh or self.policy.battery_capacity_default_kwh
        return max(0.0, vehicle.soc_pct - decision.soc_floor_pct) / 100 * capacity_kwh * 1000


def _finite(value_w: float) -> float:
    """A cap of 'no limit in force' (inf) offered as 0: flexibility is only what is known."""
    return value_w if value_w != float("inf") else 0.0
