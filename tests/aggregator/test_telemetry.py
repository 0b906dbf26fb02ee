"""Telemetry, status and events from control reports, pure: what changes, and when it is due;
and, against a real mosquitto, the flood of issue 20 (finding 2) that is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Callable

import pytest

from controller.aggregator.telemetry import (
    TelemetryGate,
    events_between,
    status_message,
    telemetry_message,
)
from controller.config import Config, parse_config
from controller.core.rules import Direction, Limit, Rule
from controller.core.snapshots import PowerCommand, PowerState
from controller.errors import ConfigError
from controller.links import ControlOutput, ControlReport
from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    now_utc,
    report,
    until,
)

RATINGS = (
    Limit(Rule.CHARGER_RATING, Direction.CHARGE, 7400.0, "max_charge_power_w"),
    Limit(Rule.CHARGER_RATING, Direction.DISCHARGE, 7400.0, "max_discharge_power_w"),
)


def stale(age_s: float) -> tuple[Limit, ...]:
    """The gate the core puts in force while the vehicle's data is stale, with its age."""
    why = f"vehicle data {age_s:.2f} s old"
    return (
        Limit(Rule.VEHICLE_STALE, Direction.CHARGE, 0.0, why),
        Limit(Rule.VEHICLE_STALE, Direction.DISCHARGE, 0.0, why),
    )


def limited(
    limits: tuple[Limit, ...],
    *,
    binding: Limit | None = None,
    state: PowerState = PowerState.STOPPING,
    commanded_w: float = 0.0,
    measured_w: float | None = 0.0,
    soc_pct: float | None = 60.0,
    now_s: float = 0.0,
) -> ControlReport:
    """A report as the control step makes one: the limits as values and as readable strings."""
    return ControlReport(
        monotonic_s=now_s,
        wall=now_utc(),
        output=ControlOutput(
            command=PowerCommand(power_w=commanded_w, enable=commanded_w != 0),
            state=state,
            binding_limit=None if binding is None else str(binding),
            reasons=(),
            limits=tuple(str(limit) for limit in limits),
            limit_values=limits,
            binding=binding,
            source="fallback",
            max_charge_w=7400.0,
            max_discharge_w=7400.0,
            soc_floor_pct=40.0,
            energy_above_floor_wh=9000.0,
        ),
        measured_power_w=measured_w,
        soc_pct=soc_pct,
        voltage_v=380.0,
    )


def test_telemetry_carries_measurements_limits_and_flexibility() -> None:
    """Telemetry has its type first, SoC, power, voltage, state, the limits as values (one per
    rule and direction, the lowest), the binding one, flexibility and faults; rounded."""
    floor = Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, 1999.6, "2.1 kWh above the 40 % floor")
    limits = (*RATINGS, floor, dataclasses.replace(floor, power_w=2500.0, source="another"))
    base = limited(limits, binding=floor, state=PowerState.DISCHARGING, commanded_w=-1999.6)
    message = telemetry_message(
        dataclasses.replace(
            base,
            output=dataclasses.replace(base.output, faults=("vehicle: cell over-voltage",)),
            measured_power_w=-1985.51,
            soc_pct=63.4567,
            voltage_v=382.149,
        )
    )
    data = json.loads(message.to_json())
    assert next(iter(data)) == "type"
    assert data["type"] == "telemetry"
    assert data["state"] == "discharging"
    assert data["commanded_power_w"] == -2000.0
    assert data["measured_power_w"] == -1986.0
    assert data["soc_pct"] == 63.5
    assert data["voltage_v"] == 382.1
    assert data["limits"] == [
        {"rule": "charger_rating", "direction": "charge", "power_w": 7400.0},
        {"rule": "charger_rating", "direction": "discharge", "power_w": 7400.0},
        {"rule": "soc_floor", "direction": "discharge", "power_w": 2000.0},
    ]
    assert data["binding_limit"] == {
        "rule": "soc_floor",
        "direction": "discharge",
        "power_w": 2000.0,
    }
    assert data["faults"] == ["vehicle: cell over-voltage"]
    assert data["flexibility"] == {
        "max_charge_power_w": 7400.0,
        "max_discharge_power_w": 7400.0,
        "soc_floor_pct": 40.0,
        "energy_above_floor_wh": 9000.0,
    }
    # Nothing of the readable text (the data's age, the source of a value) is on the wire.
    assert "kWh above" not in message.to_json().decode()


def test_no_binding_limit_is_null() -> None:
    """Without a binding limit, binding_limit is present as null."""
    data = json.loads(telemetry_message(limited(RATINGS)).to_json())
    assert data["binding_limit"] is None
    assert len(data["limits"]) == 2


def test_unmeasured_values_are_null_not_missing() -> None:
    """A value the links do not report is present as null."""
    data = json.loads(telemetry_message(report(soc_pct=None)).to_json())
    assert data["soc_pct"] is None
    assert "soc_pct" in data


def test_status_is_the_discrete_state() -> None:
    """Status carries state, source, setpoint, enablement and faults."""
    data = json.loads(status_message(report("sp-3", 100.0, source="aggregator")).to_json())
    assert data["source"] == "aggregator"
    assert data["setpoint_id"] == "sp-3"
    assert data["enabled"] is True


def sent_at(gate: TelemetryGate, reports: list[ControlReport]) -> list[float]:
    """When the sender would publish, given one report per element (at its ``monotonic_s``) and
    the housekeeping every 0.2 s in between, as ``Sender`` runs the gate."""
    times: list[float] = []
    latest: ControlReport | None = None
    housekeeping = 1  # at housekeeping / 5 s
    for item in reports:
        while latest is not None and housekeeping / 5 < item.monotonic_s:
            if gate.periodic_due(housekeeping / 5):
                gate.sent(latest, housekeeping / 5)
                times.append(housekeeping / 5)
            housekeeping += 1
        latest = item
        if gate.due(item, item.monotonic_s):
            gate.sent(item, item.monotonic_s)
            times.append(item.monotonic_s)
    return [round(t, 3) for t in times]


def cycles(make: Callable[[int, float], ControlReport], seconds: float) -> list[ControlReport]:
    """One report per 0.1 s control cycle: ``make(cycle, now_s)``."""
    return [make(n, n / 10) for n in range(round(seconds * 10))]


def test_stale_data_whose_age_grows_is_no_change() -> None:
    """Issue 20, finding 2: the stale-data limit's text carries its age, new every cycle; the
    values are the same, so only the periodic record goes out (not 10 a second)."""
    reports = cycles(
        lambda n, now_s: limited(
            (*RATINGS, *stale(1.01 + n / 10)), binding=stale(0)[0], now_s=now_s
        ),
        25.0,
    )
    assert reports[0].limits != reports[1].limits  # the text did change every cycle
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    assert sent_at(gate, reports) == [0.0, 10.0, 20.0]


def test_a_limit_power_moving_less_than_100_w_is_no_change() -> None:
    """A limit's power is compared with a 100 W deadband from the last record: 99 W is none,
    100 W is one record, and no more while it stays there."""
    derate = Limit(Rule.INVERTER_TEMPERATURE, Direction.CHARGE, 5000.0, "62 C: 68 % of rated")

    def at(power_w: float, now_s: float) -> ControlReport:
        return limited((*RATINGS, dataclasses.replace(derate, power_w=power_w)), now_s=now_s)

    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    reports = [at(5000.0, 0.0), at(5050.0, 2.0), at(4901.0, 3.0), at(5099.0, 4.0)]
    reports += [at(5100.0, 5.0), at(5100.0, 6.0), at(5150.0, 7.0)]
    assert sent_at(gate, reports) == [0.0, 5.0]


def test_a_new_rule_goes_out_within_the_min_interval() -> None:
    """A limit coming into force is a change: sent at once when the interval since the last
    record is over, else when it ends (by the housekeeping, with no report in between) and
    even if it went away again meanwhile; never lost."""
    floor = Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, 0.0, "at the 40 % floor")
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    first = limited(RATINGS, now_s=0.0)
    assert gate.due(first, 0.0)
    gate.sent(first, 0.0)
    with_floor = limited((*RATINGS, floor), now_s=0.3)
    assert not gate.due(with_floor, 0.3)
    assert not gate.periodic_due(0.9)
    assert not gate.due(limited(RATINGS, now_s=0.5), 0.5)  # gone again: still owed
    assert gate.periodic_due(1.0)
    gate.sent(with_floor, 1.0)
    assert not gate.periodic_due(2.0)
    # After a quiet interval a change goes out with its report.
    assert gate.due(limited(RATINGS, now_s=4.0), 4.0)
    # The binding limit is one too: the same limits in force, another one binds.
    gate.sent(limited(RATINGS, now_s=4.0), 4.0)
    assert gate.due(limited(RATINGS, binding=RATINGS[1], now_s=5.0), 5.0)


def test_the_rate_limit_holds_under_a_change_every_cycle() -> None:
    """State and a limit flapping every cycle: one record per min_interval_s, no more."""
    floor = Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, 0.0, "at the floor")

    def flapping(n: int, now_s: float) -> ControlReport:
        if n % 2:
            return limited((*RATINGS, floor), state=PowerState.DISCHARGING, now_s=now_s)
        return limited(RATINGS, commanded_w=n * 150.0, now_s=now_s)

    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    times = sent_at(gate, cycles(flapping, 20.0))
    assert 18 <= len(times) <= 21
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0


def test_while_idle_the_period_is_the_idle_period() -> None:
    """Idle (state idle, 0 W) and nothing changing: a record every idle_period_s; a change still
    goes out at once, and while it charges the period is period_s again."""
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0, idle_period_s=300.0)

    def make(n: int, now_s: float) -> ControlReport:
        if now_s < 650.0:
            return limited((*RATINGS, *stale(n)), state=PowerState.IDLE, now_s=now_s)
        return limited(RATINGS, state=PowerState.CHARGING, commanded_w=3000.0, now_s=now_s)

    assert sent_at(gate, cycles(make, 675.0)) == [0.0, 300.0, 600.0, 650.0, 660.0, 670.0]
    assert gate.current_period_s() == 10.0


def test_numeric_deadbands_and_not_measured() -> None:
    """Power within 100 W and SoC within 0.5 % of the last record are no change; a value that
    becomes unmeasured (or a NaN, published as null) is one."""
    gate = TelemetryGate(period_s=10.0, min_interval_s=1.0)
    base = limited(RATINGS, state=PowerState.CHARGING, commanded_w=1000.0, measured_w=1000.0)
    gate.sent(base, 0.0)
    assert not gate.due(dataclasses.replace(base, measured_power_w=1099.0, soc_pct=60.4), 2.0)
    nan = dataclasses.replace(base, measured_power_w=float("nan"))
    assert gate.due(nan, 3.0)
    gate.sent(nan, 3.0)
    assert not gate.due(dataclasses.replace(base, measured_power_w=None), 5.0)
    assert gate.due(dataclasses.replace(base, measured_power_w=-100.0), 5.0)


def test_events_for_source_changes_and_faults() -> None:
    """A change of control source and each fault raised or cleared is an event."""
    following = report("sp-1", -1000.0, source="aggregator", faults=("a",))
    fallback = report(None, 0.0, source="fallback", faults=("b",))
    assert events_between(None, following)[0].kind == "fault_raised"
    kinds = [(e.kind, e.fault or e.to_source) for e in events_between(following, fallback)]
    assert kinds == [
        ("control_source_changed", "fallback"),
        ("fault_raised", "b"),
        ("fault_cleared", "a"),
    ]
    assert events_between(fallback, fallback) == []


def test_a_rewritten_revert_timer_is_an_event() -> None:
    """Each time the link finds the inverter's revert settings lost and rewrites them, one event
    (issue 16): the count rising is the event, an unchanged count is none."""
    before = report(None, 0.0)
    after = dataclasses.replace(before, inverter_revert_rewrites=1)
    (event,) = events_between(before, after)
    assert event.kind == "revert_settings_rewritten"
    assert "(1 since start)" in event.message
    assert events_between(after, after) == []
    assert events_between(None, after) == []


AGGREGATOR_CONFIG = """\
site: {site_id: home-1, charger_id: c1}
vehicle: {protocol: chademo}
inverter: {transport: tcp, tcp: {host: 192.0.2.10}}
aggregator:
  broker: {host: broker.example, port: 8883}
"""


def test_the_telemetry_settings_default_and_are_checked_against_the_period() -> None:
    """1 s rate limit and 300 s idle period by default; a rate limit longer than the period or
    under 0.1 s is refused with the reason. A config from before the idle period, with a
    period over 300 s, still loads (the longer period applies while idle too)."""
    aggregator = parse_config(AGGREGATOR_CONFIG).aggregator
    assert (aggregator.telemetry_min_interval_s, aggregator.telemetry_idle_period_s) == (1.0, 300.0)
    older = parse_config(AGGREGATOR_CONFIG + "  telemetry_period_s: 600\n").aggregator
    gate = TelemetryGate(
        period_s=older.telemetry_period_s, idle_period_s=older.telemetry_idle_period_s
    )
    gate.sent(report(state=PowerState.IDLE), 0.0)
    assert gate.current_period_s() == 600.0
    cases = {
        "  telemetry_min_interval_s: 20\n": "telemetry_min_interval_s at or below "
        "telemetry_period_s, found 20 and 10",
        "  telemetry_min_interval_s: 0.05\n": "greater than or equal to 0.1",
    }
    for extra, reason in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config(AGGREGATOR_CONFIG + extra, "c.yaml")
        assert reason in str(info.value), str(info.value)


def link_config(port: int, period_s: float) -> Config:
    """The test config with the production telemetry period and rate limit; the idle period
    set to the period, so what is measured is the change detection, not the idle period."""
    config = make_config(port)
    aggregator = config.aggregator.model_copy(
        update={
            "telemetry_period_s": period_s,
            "telemetry_min_interval_s": 1.0,
            "telemetry_idle_period_s": period_s,
        }
    )
    return config.model_copy(update={"aggregator": aggregator})


def test_stale_vehicle_data_does_not_flood_the_broker(broker: Mosquitto) -> None:
    """Issue 20, finding 2 against a real mosquitto: 3 s of control cycles every 0.1 s with
    stale vehicle data, the age in the limit's text new every cycle; a subscriber gets the first
    record and nothing more (it got 10 a second before), each with the limits as values."""

    async def scenario() -> None:
        link = make_link(link_config(broker.port, period_s=10.0))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            started_s = time.monotonic()
            for n in range(30):
                stale_n = stale(1.01 + n / 10)
                link.report(
                    limited((*RATINGS, *stale_n), state=PowerState.IDLE, now_s=time.monotonic())
                )
                await asyncio.sleep(0.1)
            assert await until(lambda: len(aggregator.on("telemetry")) >= 1, 5.0)
            await asyncio.sleep(0.5)  # a record still on its way would arrive meanwhile
            elapsed_s = time.monotonic() - started_s
            received = [m.json() for m in aggregator.on("telemetry")]
            # The first record, perhaps one when the rate limit ends, and the periodic one for
            # each 10 s the loop took on a slow machine: never one per cycle (30).
            assert 1 <= len(received) <= 2 + int(elapsed_s // 10), (
                f"{len(received)} telemetry records in {elapsed_s:.1f} s"
            )
            first = received[0]
            assert list(first)[:2] == ["type", "record_id"]
            assert first["type"] == "telemetry"
            assert {"rule": "vehicle_stale", "direction": "charge", "power_w": 0.0} in first[
                "limits"
            ]
            assert all(m.json()["type"] == "status" for m in aggregator.on("status"))

    asyncio.run(scenario())


def test_a_change_inside_the_interval_arrives_when_it_ends(broker: Mosquitto) -> None:
    """A limit comes into force 0.3 s after a record and no report follows: the link's
    housekeeping sends it when the 1 s interval ends, not at the next period (10 s)."""

    async def scenario() -> None:
        link = make_link(link_config(broker.port, period_s=10.0))
        runner = LinkRunner(link)
        floor = Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, 0.0, "at the 40 % floor")
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            first_s = time.monotonic()
            link.report(limited(RATINGS, now_s=first_s))
            assert await until(lambda: len(aggregator.on("telemetry")) == 1)
            await asyncio.sleep(0.3)
            link.report(limited((*RATINGS, floor), now_s=time.monotonic()))
            changed_s = time.monotonic()
            assert await until(lambda: len(aggregator.on("telemetry")) == 2, 5.0)
            arrived_s = time.monotonic()
            assert arrived_s - first_s >= 0.95  # held back by the 1 s rate limit
            assert arrived_s - changed_s < 5.0  # by housekeeping, not the 10 s period
            rules = [limit["rule"] for limit in aggregator.on("telemetry")[1].json()["limits"]]
            assert "soc_floor" in rules

    asyncio.run(scenario())
