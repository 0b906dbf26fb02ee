"""The wiring between the economics planner and the core: when to plan, with what, and the
plan's power for now.

``PlanKeeper`` turns the session's snapshots into a ``PlanProblem`` (prices from the tariff, the
aggregator's pushed schedule and peak events; the owner's floor, ceiling and departure; the
ratings; the wear budget left today), keeps the plan, and re-plans when it no longer describes
the night: a new session or departure, new prices, the SoC off the plan's path, a changed
rating, a new wear day, or the plan run out. Planning is pure and takes a few milliseconds;
re-planning only on change keeps a year of simulated nights fast too (``bench/year.py``).

The plan only proposes: its power for the slot in force goes to the core as ``PlannedPower``
(``Inputs.plan``), which caps it like any other request.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import structlog

from controller.core.policy import Policy
from controller.core.rules import guarantee_capacity_kwh
from controller.core.snapshots import PlannedPower
from controller.economics.planner import Plan, PlanProblem, make_plan
from controller.economics.tariff import PeakEvent, PriceSlot, SlotPrices, Tariff, slot_prices
from controller.economics.wear import WearModel, WearRate
from controller.links import PlanOutline, PriceSource

log = structlog.get_logger(component="planner")

# Without a departure the plan looks this far ahead (a day: one valley and one peak).
DEFAULT_HORIZON_S = 24 * 3600.0
# After a failed plan, the same inputs are tried again this much later.
RETRY_AFTER_FAILURE = dt.timedelta(minutes=1)
# A rating that moves by more than this fraction makes the plan's power limits wrong.
RATING_CHANGE_FRACTION = 0.1
# The depth of cycle the first plan prices wear at; the plan's own depth prices the second.
FIRST_GUESS_DEPTH_FRAC = 0.3
# A plan that cycles within this of the first guess keeps its price of wear (no second pass).
DEPTH_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """What the planner needs beyond the core's policy (config sections tariff, economics)."""

    tariff: Tariff
    # The pack's chemistry and price; its capacity is replaced by the car's own at plan time.
    # None: wear is free (tests only; the config always sets it).
    wear: WearModel | None = None
    events: tuple[PeakEvent, ...] = ()  # peak events written in the config
    charge_efficiency: float = 0.92
    discharge_efficiency: float = 0.92
    slot_s: float = 900.0
    horizon_s: float = DEFAULT_HORIZON_S
    replan_soc_deviation_pct: float = 2.0
    published_slots: int = 16


@dataclass(frozen=True, slots=True)
class _Key:
    """What the plan was made for: a change of any of these re-plans."""

    departure_at: dt.datetime | None
    prices_version: int
    max_charge_w: float
    max_discharge_w: float
    wear_day: dt.date
    clock_trusted: bool


class PlanKeeper:
    """Keeps the plan for the plugged-in session and answers the power for now."""

    def __init__(
        self, settings: PlanSettings, policy: Policy, *, in_background: bool = False
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.plan: Plan | None = None
        self.replans = 0
        self.last_reason = "no plan yet"
        self._key: _Key | None = None
        # The daemon plans on a worker thread: a plan takes tens of milliseconds here (more on a
        # Pi), longer than the control loop may stall (GB/T CST: 5 A within 100 ms). Until a new
        # plan lands the old one stays in force; the core caps whatever it proposes.
        self._worker = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
            if in_background
            else None
        )
        self._pending: tuple[concurrent.futures.Future[Plan], _Key, str] | None = None
        # The inputs a plan failed on, and when: tried again only once they change or a while
        # has passed (not every cycle, not with a log line each).
        self._failed: tuple[_Key, dt.datetime] | None = None

    def forget(self) -> None:
        """The car left: the next session plans afresh."""
        self.plan = None
        self._key = None
        self._pending = None  # a plan still being made for the old session is dropped
        self.last_reason = "no vehicle"

    def close(self) -> None:
        """Stop the worker thread (a plan being made finishes first: milliseconds)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)

    def update(
        self,
        *,
        wall: dt.datetime,
        soc_pct: float | None,
        capacity_kwh: float | None,
        departure_at: dt.datetime | None,
        discharged_today_kwh: float,
        clock_trusted: bool,
        max_charge_w: float | None = None,
        max_discharge_w: float | None = None,
        pushed: Sequence[PriceSlot] = (),
        events: Sequence[PeakEvent] = (),
        prices_version: int = 0,
    ) -> PlannedPower | None:
        """The plan's power for ``wall`` (re-planning first if the plan is out of date); None
        without a SoC (nothing to plan from). ``soc_pct`` is the lowest the battery may hold."""
        if soc_pct is None or not math.isfinite(soc_pct):
            self.last_reason = "no state of charge reported"
            return None
        key = _Key(
            departure_at=departure_at,
            prices_version=prices_version,
            max_charge_w=self._charge_limit_w(max_charge_w),
            max_discharge_w=self._discharge_limit_w(max_discharge_w),
            wear_day=wall.date(),
            clock_trusted=clock_trusted,
        )
        self._adopt_finished(wall)
        why = None if self._pending is not None else self._why_replan(key, wall, soc_pct)
        failed = self._failed
        if (
            why is not None
            and failed is not None
            and failed[0] == key
            and wall - failed[1] < RETRY_AFTER_FAILURE
        ):
            why = None
        if why is not None:
            make = functools.partial(
                self._make,
                key,
                wall=wall,
                soc_pct=soc_pct,
                # The capacity the core's reserve counts on: an implausible report (2 kWh) is
                # not believed there, and must not make a plan the wear model refuses here.
                capacity_kwh=guarantee_capacity_kwh(capacity_kwh, self.policy),
                discharged_today_kwh=discharged_today_kwh,
                pushed=tuple(pushed),
                events=tuple(events),
            )
            if self._worker is None:
                future: concurrent.futures.Future[Plan] = concurrent.futures.Future()
                try:
                    future.set_result(make())
                except Exception as exc:  # noqa: BLE001  judged in _adopt_finished, like a worker's
                    future.set_exception(exc)
                self._pending = (future, key, why)
                self._adopt_finished(wall)
            else:
                self._pending = (self._worker.submit(make), key, why)
        return self._power_now(wall)

    def _adopt_finished(self, wall: dt.datetime) -> None:
        pending = self._pending
        if pending is None or not pending[0].done():
            return
        self._pending = None
        future, key, why = pending
        try:
            plan = future.result()
        except Exception as exc:  # a planner that fails must not stop the charger
            # No plan: the optimize fallback asks for 0 W and every interlock (the departure
            # guarantee among them) still acts. A refused input (ValueError) says which; anything
            # else is a bug in the planner, logged with its traceback.
            self.plan, self._key = None, None
            self._failed = (key, wall)
            self.last_reason = f"no plan: {exc}"
            log.error(
                "no plan: the planner failed",
                error=str(exc),
                exc_info=not isinstance(exc, ValueError),
            )
            return
        self._failed = None
        self._adopt(plan, key, why)

    def _adopt(self, plan: Plan, key: _Key, why: str) -> None:
        self.plan = plan
        self._key = key
        self.replans += 1
        self.last_reason = why
        first = plan.slots[0] if plan.slots else None
        log.info(
            "plan made",
            reason=why,
            plan_number=self.replans,
            value=round(plan.value, 2),
            slots=len(plan.slots),
            ends_at=None if not plan.slots else plan.slots[-1].end.isoformat(),
            target_reachable=plan.target_reachable,
            next_power_w=[round(slot.power_w) for slot in plan.slots[:4]],
            next_prices=None
            if first is None
            else [first.import_per_kwh, first.export_per_kwh, first.bonus_per_kwh],
            notes=list(plan.notes),
        )

    # --- when to plan ---------------------------------------------------------------------------

    def _why_replan(self, key: _Key, wall: dt.datetime, soc_pct: float) -> str | None:
        plan, before = self.plan, self._key
        if plan is None or before is None:
            return "first plan of the session"
        if not plan.slots or wall >= plan.slots[-1].end:
            return "the plan ran out"
        changed = _changed(key, before)
        if changed is not None:
            return changed
        expected = self._expected_soc_pct(plan, wall)
        if (
            expected is not None
            and abs(expected - soc_pct) > self.settings.replan_soc_deviation_pct
        ):
            return f"SoC {soc_pct:.1f} % off the plan's {expected:.1f} %"
        return None

    @staticmethod
    def _expected_soc_pct(plan: Plan, wall: dt.datetime) -> float | None:
        """The plan's SoC at ``wall``, linear within the slot (its SoC at the slot's start is
        the previous slot's end)."""
        before_pct: float | None = None
        for i, slot in enumerate(plan.slots):
            if slot.start <= wall < slot.end:
                start_pct = before_pct if i > 0 and before_pct is not None else None
                if start_pct is None:
                    return None  # the first slot began at a SoC the plan took as given
                share = (wall - slot.start) / (slot.end - slot.start)
                return start_pct + (slot.soc_end_pct - start_pct) * share
            before_pct = slot.soc_end_pct
        return None

    # --- what to plan with ----------------------------------------------------------------------

    def _charge_limit_w(self, rating_w: float | None) -> float:
        safety, site = self.policy.safety, self.policy.site
        limit_w = min(safety.max_charge_power_w, site.grid_import_limit_w)
        return limit_w if rating_w is None else min(limit_w, max(0.0, rating_w))

    def _discharge_limit_w(self, rating_w: float | None) -> float:
        safety, site = self.policy.safety, self.policy.site
        limit_w = min(safety.max_discharge_power_w, site.grid_export_limit_w)
        return limit_w if rating_w is None else min(limit_w, max(0.0, rating_w))

    def _make(
        self,
        key: _Key,
        *,
        wall: dt.datetime,
        soc_pct: float,
        capacity_kwh: float,
        discharged_today_kwh: float,
        pushed: Sequence[PriceSlot],
        events: Sequence[PeakEvent],
    ) -> Plan:
        settings, owner, safety = self.settings, self.policy.owner, self.policy.safety
        slot_s = settings.slot_s
        # Slots on the quarter-hour grid (tariff bands and pushed prices start on it); the
        # first slot began up to one slot ago and is planned from the SoC now.
        epoch = wall.timestamp()
        start = dt.datetime.fromtimestamp(epoch - epoch % slot_s, tz=wall.tzinfo)
        end = start + dt.timedelta(seconds=settings.horizon_s)
        target: float | None = None
        if key.departure_at is not None and owner.departure is not None:
            end = key.departure_at.astimezone(wall.tzinfo)
            target = owner.departure.target_soc_pct
        # Whole slots that end by the departure: the plan finishes early rather than late.
        n_slots = max(1, math.floor((end - start).total_seconds() / slot_s))
        every_event = (*settings.events, *events)
        prices = slot_prices(
            settings.tariff, start, n_slots, slot_s, pushed=pushed, events=every_event
        )
        left_s = (start + dt.timedelta(seconds=slot_s) - wall).total_seconds()
        if 0 < left_s < slot_s:
            # The slot in force is priced on what is left of it: its past is spent.
            now_prices = slot_prices(
                settings.tariff, wall, 1, left_s, pushed=pushed, events=every_event
            )
            prices = _first_slot_from(now_prices, prices)
        # Without a trusted clock the slots may be anywhere in the day: plan no discharge.
        discharge_w = key.max_discharge_w if key.clock_trusted else 0.0
        budget_kwh = max(0.0, self.policy.wear.max_discharge_kwh_per_day - discharged_today_kwh)
        # Plan inside the floor and ceiling by the SoC's resolution, so the core's own margin
        # (it judges the lowest and highest SoC the battery may truly hold) never cuts the plan.
        margin_pct = safety.soc_resolution_pct + safety.floor_hysteresis_pct / 2
        problem = PlanProblem(
            start=start,
            import_per_kwh=prices.import_per_kwh,
            export_per_kwh=prices.export_per_kwh,
            capacity_kwh=capacity_kwh,
            soc_pct=soc_pct,
            soc_floor_pct=min(100.0, owner.soc_floor_pct + margin_pct),
            soc_ceiling_pct=max(0.0, owner.soc_ceiling_pct - safety.soc_resolution_pct),
            max_charge_w=(key.max_charge_w,) * n_slots,
            max_discharge_w=(discharge_w,) * n_slots,
            target_soc_pct=target,
            departure_margin_pct=owner.departure_margin_pct,
            charge_efficiency=settings.charge_efficiency,
            discharge_efficiency=settings.discharge_efficiency,
            wear=self._wear_rate(capacity_kwh, FIRST_GUESS_DEPTH_FRAC),
            bonus_per_kwh=prices.bonus_per_kwh,
            bonus_power_w=prices.bonus_power_w,
            discharge_budget_kwh=budget_kwh,
            slot_s=slot_s,
            # The core's reserve (rules.py departure_part) deducts the ramp from a full
            # discharge to a full charge and its horizon: the plan keeps the same reserve.
            reserve_lost_s=(
                (key.max_charge_w + key.max_discharge_w) / safety.ramp_w_per_s
                + safety.floor_horizon_s
            )
            * safety.battery_time_factor,
        )
        plan = make_plan(problem)
        depth_frac = _discharge_depth_frac(plan, soc_pct)
        if (
            settings.wear is not None
            and depth_frac > 0  # no discharge planned: no cycle to price again
            and abs(depth_frac - FIRST_GUESS_DEPTH_FRAC) > DEPTH_TOLERANCE
        ):
            # Wear per kWh depends on the cycle's depth: price it at the depth this plan cycles.
            plan = make_plan(_with_wear(problem, self._wear_rate(capacity_kwh, depth_frac)))
        return plan

    def _wear_rate(self, capacity_kwh: float, depth_frac: float) -> WearRate:
        wear = self.settings.wear
        if wear is None:
            return WearRate(0.0)
        return replace(wear, capacity_kwh=capacity_kwh).rate(depth_frac)

    def outline(self, wall: dt.datetime) -> PlanOutline | None:
        """The plan's next ``published_slots`` slots from the one in force, for telemetry."""
        plan = self.plan
        if plan is None:
            return None
        ahead = [slot for slot in plan.slots if slot.end > wall][: self.settings.published_slots]
        if not ahead:
            return None
        return PlanOutline(
            plan_number=self.replans,
            start=ahead[0].start,
            slot_s=self.settings.slot_s,
            power_w=tuple(round(slot.power_w) for slot in ahead),
            soc_end_pct=tuple(round(slot.soc_end_pct, 1) for slot in ahead),
            ends_at=plan.slots[-1].end,
            value=plan.value,
            target_reachable=plan.target_reachable,
            reason=self.last_reason,
        )

    def _power_now(self, wall: dt.datetime) -> PlannedPower | None:
        plan = self.plan
        if plan is None:
            return None
        for slot in plan.slots:
            if slot.start <= wall < slot.end:
                return PlannedPower(
                    power_w=slot.power_w,
                    slot_start=slot.start,
                    slot_end=slot.end,
                    note=_note(slot.power_w, slot.start, slot.end, slot.soc_end_pct),
                )
        self.last_reason = "no slot of the plan is in force"
        return None


def _changed(key: _Key, before: _Key) -> str | None:
    """What changed since the plan was made that makes it wrong, if anything."""
    for changed, why in (
        (key.departure_at != before.departure_at, "departure changed"),
        (key.prices_version != before.prices_version, "new prices"),
        (key.wear_day != before.wear_day, "a new wear day"),
        (key.clock_trusted != before.clock_trusted, "wall clock trust changed"),
    ):
        if changed:
            return why
    for now_w, then_w in (
        (key.max_charge_w, before.max_charge_w),
        (key.max_discharge_w, before.max_discharge_w),
    ):
        if abs(now_w - then_w) > RATING_CHANGE_FRACTION * max(then_w, 1.0):
            return "a rating changed"
    return None


def _first_slot_from(now: SlotPrices, later: SlotPrices) -> SlotPrices:
    """``later`` with its first slot's prices taken from ``now`` (one slot)."""
    return SlotPrices(
        import_per_kwh=(now.import_per_kwh[0], *later.import_per_kwh[1:]),
        export_per_kwh=(now.export_per_kwh[0], *later.export_per_kwh[1:]),
        bonus_per_kwh=(now.bonus_per_kwh[0], *later.bonus_per_kwh[1:]),
        bonus_power_w=(now.bonus_power_w[0], *later.bonus_power_w[1:]),
        event_ids=(now.event_ids[0], *later.event_ids[1:]),
    )


def _with_wear(problem: PlanProblem, rate: WearRate) -> PlanProblem:
    return replace(problem, wear=rate)


def _discharge_depth_frac(plan: Plan, soc_pct: float) -> float:
    """The deepest drop of the plan's SoC path from a high to a later low, as a fraction."""
    high = soc_pct
    depth = 0.0
    for slot in plan.slots:
        high = max(high, slot.soc_end_pct)
        depth = max(depth, high - slot.soc_end_pct)
    return depth / 100.0


def _note(power_w: float, start: dt.datetime, end: dt.datetime, soc_end_pct: float) -> str:
    what = "charge" if power_w > 0 else "discharge" if power_w < 0 else "hold"
    return (
        f"optimize: plan {start:%H:%M}-{end:%H:%M} {what} {abs(power_w):.0f} W "
        f"(SoC {soc_end_pct:.1f} % at {end:%H:%M})"
    )


class MomentPrices:
    """The prices in force at a moment, for the ledger's receipts: the aggregator's pushed
    schedule where it covers, else the tariff; export plus the bonus of any peak event.

    Called on the ledger's storage thread while the event loop changes the price book: the
    book swaps whole new objects in (controller/aggregator/prices.py), so a read sees one version
    or the next.
    """

    def __init__(self, tariff: Tariff, events: tuple[PeakEvent, ...] = ()) -> None:
        self.tariff = tariff
        self.events = events
        self.source: PriceSource | None = None  # set once the aggregator link exists

    def __call__(self, wall: dt.datetime) -> tuple[float, float]:
        """(import, export) money per kWh at ``wall``. A peak event's bonus counts on all the
        export in it; its power window is the planner's business (docs/economics.md)."""
        import_per_kwh, export_per_kwh = self._base(wall)
        bonus = sum(event.bonus_per_kwh for event in self._events(wall))
        return import_per_kwh, export_per_kwh + bonus

    def in_peak_event(self, wall: dt.datetime) -> bool:
        return any(True for _ in self._events(wall))

    def _base(self, wall: dt.datetime) -> tuple[float, float]:
        if self.source is not None:
            for slot in self.source.current_slots(wall):
                if slot.start <= wall < slot.end:
                    return slot.import_per_kwh, slot.export_per_kwh
        slot = self.tariff.price_at(wall)
        return slot.import_per_kwh, slot.export_per_kwh

    def _events(self, wall: dt.datetime) -> Iterator[PeakEvent]:
        pushed = () if self.source is None else self.source.events(wall)
        for event in (*self.events, *pushed):
            if event.start <= wall < event.end:
                yield event
