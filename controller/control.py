"""The bridge between the daemon and the pure safety core.

``policy_from_config`` turns the validated YAML into the core's ``Policy`` (field by field, no
defaults invented here). ``CoreControlStep`` holds the core's state between decisions, since
the core itself is pure: each call passes the state in and keeps the state it returns.

What a restart must not forget (latched faults, the wait for a start after an emergency stop
reset, the session's departure, the wear count) goes to ``CoreStateFile``: restored before the
first decision, and written, durably, before the command that follows any change of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import structlog

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
from controller.core.rules import Direction, Rule, is_fresh
from controller.core.safety import (
    CoreState,
    Decision,
    FaultReset,
    Inputs,
    Latch,
    Now,
    StateFormatError,
    decide,
    durable_state,
    reset_faults,
    restore_state,
    session_departure,
)
from controller.core.snapshots import (
    InverterState,
    PlannedPower,
    PowerState,
    Setpoint,
    VehiclePhase,
    VehicleState,
)
from controller.links import ControlOutput, PriceSource
from controller.planning import PlanKeeper

log = structlog.get_logger(component="control")

_AGGREGATOR_SOURCES = {"setpoint", "setpoint_idle"}

# The latch a restart sets when the saved state cannot be read: it may have held an emergency
# stop, so only a person may clear it (docs/safety.md, "Latches survive restarts").
UNREADABLE_STATE_CAUSE = "saved safety state unreadable"


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
            manual_reset_faults=frozenset(safety.manual_reset),
            soc_resolution_pct=safety.soc_resolution_pct,
            floor_horizon_s=safety.floor_horizon_s,
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


class CoreStateFile:
    """The core's durable state in one JSON file, replaced atomically (write, fsync, rename,
    fsync the directory), so a crash leaves the old or the new content, never a mix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> object | None:
        """The saved data, or None when there is none yet (a first start).

        OSError or ValueError (invalid JSON) when the file exists but cannot be read.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        data: object = json.loads(text)
        return data

    def save(self, data: dict[str, object]) -> None:
        """Write ``data`` durably; OSError if the disk refuses."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(data, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class BackgroundStateSaver:
    """Writes the newest core state on a thread of its own, so the control loop never waits on
    an fsync (issue 15: a second on a busy SD card, while a GB/T CST wants 5 A within 100 ms).

    Latest wins: a state handed over while an older one is being written replaces it, and only
    the newest is written next. A failed write (disk full, read-only card) is logged once per
    error and retried every ``retry_s`` until it lands or a newer state replaces it.

    Ordering (docs/safety.md, "Promises across restarts"): the command that follows a change is
    never held for the write. A latch set (a stop) acts at once and is durable one write later;
    a crash inside that window loses the latch only if its cause also went away in it. A latch
    cleared by a reset that a crash does not let land is restored as latched: that fails safe.
    """

    def __init__(self, state_file: CoreStateFile, *, retry_s: float = 1.0) -> None:
        self.state_file = state_file
        self._retry_s = retry_s
        self._cond = threading.Condition()
        self._latest: dict[str, object] | None = None
        self._stopping = False
        self.written = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._work, name="core-state", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> bool:
        """A state is waiting to be written (or to be retried)."""
        with self._cond:
            return self._latest is not None

    def save(self, data: dict[str, object]) -> None:
        with self._cond:
            self._latest = data
            self._cond.notify()

    def stop(self, timeout_s: float) -> bool:
        """Write what is waiting (one try), then end; False if the disk held it past
        ``timeout_s``."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._stopping:
                    self._cond.wait()
                data = self._latest
                if data is None:
                    return
                self._latest = None
            try:
                self.state_file.save(data)
            except OSError as exc:
                self._failed(data, exc)
            else:
                self.written += 1
                if self.last_error is not None:
                    log.info("safety state saved again", path=str(self.state_file.path))
                self.last_error = None

    def _failed(self, data: dict[str, object], exc: OSError) -> None:
        error = str(exc)
        if error != self.last_error:
            # Not saved: the latch still holds in memory; a restart could forget it.
            log.error("safety state not saved", path=str(self.state_file.path), error=error)
        self.last_error = error
        with self._cond:
            if self._stopping:
                return
            if self._latest is None:
                self._latest = data  # retried unless a newer state arrives first
            self._cond.wait(self._retry_s)


def _changed_key(data: dict[str, object]) -> dict[str, object]:
    # The wear count moves every cycle while discharging; the ledger keeps it durably per day,
    # so only the rest (and a new wear day) is worth a write.
    return {key: value for key, value in data.items() if key != "discharged_today_wh"}


class CoreControlStep:
    """A ``daemon.ControlStep`` that runs the safety core and keeps its state."""

    def __init__(
        self,
        policy: Policy,
        *,
        emergency_stop: Callable[[], bool] = lambda: False,
        clock_trusted: Callable[[float], bool] = lambda _now_s: True,
        state_file: CoreStateFile | None = None,
        save_in_background: bool = False,
        planner: PlanKeeper | None = None,
        prices: PriceSource | None = None,
    ) -> None:
        self.policy = policy
        # Fallback ``optimize``: the plan's power for now goes to the core as a request.
        self.planner = planner
        self._prices = prices
        self.state = CoreState()
        self.last: Decision | None = None
        self._emergency_stop = emergency_stop  # the board's E-stop input, read every decision
        self._clock_trusted = clock_trusted  # NTP-synchronised and not before the build
        self._state_file = state_file
        self._saved: dict[str, object] | None = None
        if state_file is not None:
            self._restore(state_file)
        # The daemon's: writes on a thread of its own. Without it (tests, tools) each change is
        # written before __call__ returns.
        self.saver = (
            BackgroundStateSaver(state_file)
            if state_file is not None and save_in_background
            else None
        )

    def _restore(self, state_file: CoreStateFile) -> None:
        """Before the first decision: the latches and promises the last run left."""
        try:
            data = state_file.load()
            if data is None:
                log.info("no saved safety state; a first start", path=str(state_file.path))
                return
            self.state = restore_state(self.state, data)
        except (OSError, ValueError, StateFormatError) as exc:
            # What it held is unknown and may have been an emergency stop: latch, manual reset.
            log.error(
                "saved safety state unreadable; latched until a person resets it",
                path=str(state_file.path),
                error=str(exc),
            )
            self.state = replace(
                self.state,
                fault_latch=Latch(causes=(UNREADABLE_STATE_CAUSE,), manual=True),
            )
            return
        self._saved = _changed_key(durable_state(self.state))
        latched = self.state.fault_latch.causes + self.state.stop_latch.causes
        log.info(
            "safety state restored",
            latched=list(latched),
            awaiting_start=self.state.awaiting_start,
            departure_at=None
            if self.state.departure_at is None
            else self.state.departure_at.isoformat(),
        )

    def _save_if_changed(self) -> None:
        """Write the durable state before the command that follows a change of it."""
        if self._state_file is None:
            return
        data = durable_state(self.state)
        key = _changed_key(data)
        if key == self._saved:
            return
        if self.saver is not None:
            self.saver.save(data)
            self._saved = key
            return
        try:
            self._state_file.save(data)
        except OSError as exc:
            # Not saved: the latch still holds in memory; a restart could forget it. Retried on
            # the next decision.
            log.error("safety state not saved", path=str(self._state_file.path), error=str(exc))
            return
        self._saved = key

    def seed_wear_budget(self, day: dt.date, discharged_wh: float) -> None:
        """Start with the energy already discharged on ``day`` (from the ledger), so a restart
        does not hand out a fresh wear budget (core/safety.py: ``CoreState.wear_day``)."""
        if self.state.wear_day == day and self.state.discharged_today_wh >= discharged_wh:
            return
        self.state = replace(self.state, wear_day=day, discharged_today_wh=max(0.0, discharged_wh))

    def reset_faults(self) -> FaultReset:
        """A manual fault reset (technician or aggregator command), saved before it counts."""
        self.state, answer = reset_faults(self.state)
        if answer.accepted:
            self._save_if_changed()
        return answer

    def reset_preview(self) -> FaultReset:
        """What ``reset_faults`` would answer now, changing nothing (``v2g-controller status``)."""
        return reset_faults(self.state)[1]

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
            clock_trusted=self._clock_trusted(monotonic_s),
        )
        now = Now(monotonic_s, wall)
        inputs = replace(inputs, plan=self._planned(inputs, now))
        decision, self.state = decide(inputs, self.state, now, self.policy)
        self._save_if_changed()
        self.last = decision
        following = str(decision.request.source) in _AGGREGATOR_SOURCES
        max_charge_w = decision.cap_w(Direction.CHARGE)
        max_discharge_w = decision.cap_w(Direction.DISCHARGE)
        latched = self.state.fault_latch.causes + self.state.stop_latch.causes
        return ControlOutput(
            command=decision.command,
            state=decision.power_state,
            binding_limit=None if decision.binding is None else str(decision.binding),
            reasons=tuple(str(r) for r in decision.reasons),
            rules=tuple(r.rule for r in decision.reasons),
            limits=tuple(str(limit) for limit in decision.limits),
            limit_values=decision.limits,
            binding=decision.binding,
            source="aggregator" if following else "fallback",
            setpoint_id=setpoint.setpoint_id if following and setpoint is not None else None,
            requested_w=decision.request.power_w,
            max_charge_w=_finite(max_charge_w),
            max_discharge_w=_finite(max_discharge_w),
            soc_floor_pct=decision.soc_floor_pct,
            energy_above_floor_wh=self._energy_above_floor_wh(vehicle, decision),
            faults=latched,
            present_faults=_stale_faults(decision, inverter),
            session_allowed=self._session_allowed(inverter, monotonic_s),
            plan=None if self.planner is None else self.planner.outline(wall),
        )

    def _planned(self, inputs: Inputs, now: Now) -> PlannedPower | None:
        """The plan's power for now, re-planned first when the night changed (planning.py)."""
        planner, vehicle, inverter, wall = self.planner, inputs.vehicle, inputs.inverter, now.wall
        if planner is None:
            return None
        if vehicle is None or vehicle.phase is VehiclePhase.UNPLUGGED:
            planner.forget()
            return None
        state, safety = self.state, self.policy.safety
        soc_pct = None if vehicle.soc_pct is None else vehicle.soc_pct - safety.soc_resolution_pct
        today = state.discharged_today_wh if state.wear_day == wall.date() else 0.0
        prices = self._prices
        return planner.update(
            wall=wall,
            soc_pct=soc_pct,
            capacity_kwh=vehicle.capacity_kwh,
            # The departure this decision fixes (at a session's first, not yet in the state).
            departure_at=session_departure(state.departure_at, inputs, now, self.policy),
            discharged_today_kwh=today / 1000.0,
            clock_trusted=inputs.clock_trusted,
            max_charge_w=None if inverter is None else inverter.max_charge_power_w,
            max_discharge_w=None if inverter is None else inverter.max_discharge_power_w,
            pushed=() if prices is None else prices.current_slots(wall),
            events=() if prices is None else prices.events(wall),
            prices_version=0 if prices is None else prices.version,
        )

    def _session_allowed(self, inverter: InverterState | None, now_s: float) -> bool:
        """The charger side is ready to move energy: nothing latched, no E-stop, a healthy and
        fresh inverter. The vehicle's own state is the core's business once transfer starts."""
        if (
            self.state.fault_latch.latched
            or self.state.stop_latch.latched
            or self.state.awaiting_start
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


def _stale_faults(decision: Decision, inverter: InverterState | None) -> tuple[str, ...]:
    """The stale data that makes the state FAULT without latching (core/safety.py
    ``_power_state``: stale data in a vehicle session, which includes no inverter snapshot yet
    in the daemon's first cycles), named so that no status says "fault" without a fault. The
    words stay the same from cycle to cycle (no age), so telemetry and events see one change."""
    if decision.power_state is not PowerState.FAULT:
        return ()
    rules = {limit.rule for limit in decision.limits}
    named: list[str] = []
    if Rule.VEHICLE_STALE in rules:
        named.append("vehicle data stale")
    if Rule.INVERTER_STALE in rules:
        if inverter is None:
            named.append("no inverter data")
        elif not inverter.reachable:
            named.append("inverter unreachable")
        else:
            named.append("inverter data stale")
    return tuple(named)


def _finite(value_w: float) -> float:
    """A cap of 'no limit in force' (inf) offered as 0: flexibility is only what is known."""
    return value_w if value_w != float("inf") else 0.0
