"""Which ack an accepted setpoint gets, decided from the control reports that follow it.

Mostly the setpoint is handed to the link as the broker would hand it over (no broker needed)
and the acks are read from the link's outbox; what the ack names while the power ramps is
checked end to end, over a real mosquitto with reports from the real safety core.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.outbox import Kind
from controller.control import CoreControlStep, policy_from_config
from controller.core.snapshots import InverterState, PowerState, VehiclePhase, VehicleState
from controller.links import ControlReport
from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    now_utc,
    report,
    setpoint,
    until,
)


def deliver(link: MqttAggregatorLink, payload: dict[str, Any]) -> None:
    link._on_setpoint(json.dumps(payload).encode(), retained=False)


def acks(link: MqttAggregatorLink) -> dict[str, dict[str, Any]]:
    return {
        ack["id"]: ack for ack in (json.loads(m.payload) for m in link.outbox.pending(Kind.ACK))
    }


# What a call that waits on the network raises as audit events (create, resolve, connect, send);
# sleeps are caught by replacing time.sleep (its audit event is Python 3.13's).
_BLOCKING_EVENTS = ("socket.",)
_watched: list[list[str]] = []  # the open watches; the audit hook appends to the innermost


def _audit(event: str, _args: tuple[object, ...]) -> None:
    if _watched and event.startswith(_BLOCKING_EVENTS):
        _watched[-1].append(event)


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside a watch


@contextlib.contextmanager
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Collect the socket operations and sleeps made inside the block."""
    seen: list[str] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        seen.append(f"time.sleep({seconds})")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    _watched.append(seen)
    try:
        yield seen
    finally:
        _watched.pop()
        monkeypatch.setattr(time, "sleep", real_sleep)


def test_report_must_not_block_and_only_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """report() only queues: no socket, no sleep, and the ack waits in the outbox."""
    link = make_link(make_config(1))
    deliver(link, setpoint("sp-1", -3000.0))
    assert not inspect.iscoroutinefunction(link.report)  # nothing for the caller to await
    with blocking_calls(monkeypatch) as blocking:
        link.report(report("sp-1", -3000.0, state=PowerState.DISCHARGING, source="aggregator"))
    assert blocking == []
    ack = acks(link)["sp-1"]
    assert (ack["accepted"], ack["applied_power_w"]) == (True, -3000.0)
    assert "binding_limit" not in ack


def test_superseded_and_not_followed_setpoints_are_acked_after_the_wait() -> None:
    """A setpoint replaced before any cycle followed it, or never followed, is acked after
    ack_wait_s with the power applied and why."""
    link = make_link(make_config(1), ack_wait_s=0.0)
    deliver(link, setpoint("sp-1", -3000.0))
    deliver(link, setpoint("sp-2", -1000.0))
    link.report(report("sp-2", -1000.0, source="aggregator"))
    found = acks(link)
    assert found["sp-2"]["applied_power_w"] == -1000.0
    assert found["sp-1"]["binding_limit"] == "superseded by sp-2"
    assert found["sp-1"]["applied_power_w"] == -1000.0

    deliver(link, setpoint("sp-3", 2000.0))
    link.report(report(None, 0.0, source="none", binding_limit="fault: inverter unreachable"))
    assert acks(link)["sp-3"]["binding_limit"] == "fault: inverter unreachable"


def test_release_is_acked_with_what_the_local_policy_commands() -> None:
    """A release is acked at the first cycle on the fallback, without a requested power."""
    link = make_link(make_config(1))
    deliver(link, setpoint("sp-r", 0.0, mode="release"))
    link.report(report(None, 3700.0, state=PowerState.CHARGING, source="fallback"))
    ack = acks(link)["sp-r"]
    assert ack["applied_power_w"] == 3700.0
    assert "requested_power_w" not in ack


def test_awaiting_acks_are_bounded() -> None:
    """With more accepted setpoints than the bound and no report, the oldest are acked at once."""
    link = make_link(make_config(1))
    for n in range(70):
        deliver(link, setpoint(f"sp-{n:02d}", 100.0))
    found = acks(link)
    assert len(found) == 6
    assert found["sp-00"]["reason"] == "superseded before any control cycle reported"


def _fresh_vehicle(now_s: float, discharge_current_a: float = 30.0) -> VehicleState:
    return VehicleState(
        observed_at_s=now_s,
        phase=VehiclePhase.ENERGY_TRANSFER,
        protocol="chademo",
        soc_pct=70.0,
        pack_voltage_v=380.0,
        charge_current_limit_a=30.0,
        charge_voltage_limit_v=410.0,
        discharge_current_limit_a=discharge_current_a,
        discharge_voltage_min_v=250.0,
        battery_temp_max_c=25.0,
        capacity_kwh=40.0,
        charge_permitted=True,
        discharge_permitted=True,
    )


def _fresh_inverter(now_s: float) -> InverterState:
    return InverterState(
        observed_at_s=now_s,
        reachable=True,
        enabled=True,
        measured_power_w=0.0,
        max_charge_power_w=7400.0,
        max_discharge_power_w=7400.0,
    )


def test_ack_over_mqtt_names_the_ramp_and_the_limit_whenever_applied_differs(
    broker: Mosquitto,
) -> None:
    """Issue 20 finding 3: a setpoint the ramp has not reached yet is acked (over a real broker)
    with the ramp as what binds; one a limit cuts names the limit and the ramp still under way;
    one applied as asked names nothing. The reports come from the real safety core."""
    config = make_config(broker.port)
    step = CoreControlStep(policy_from_config(config))

    def cycle(link: MqttAggregatorLink, discharge_current_a: float = 30.0) -> ControlReport:
        now_s = time.monotonic()
        output = step(
            _fresh_vehicle(now_s, discharge_current_a),
            _fresh_inverter(now_s),
            link.setpoint(),
            now_s,
            now_utc(),
        )
        report = ControlReport(monotonic_s=now_s, wall=now_utc(), output=output)
        link.report(report)
        return report

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            cycle(link)  # 0 W on the local policy: the ramp starts from here
            await aggregator.publish("setpoint", setpoint("sp-ramp", -3000.0))
            assert await until(lambda: link.setpoint() is not None)
            first = cycle(link)
            ack = await aggregator.ack("sp-ramp")
            assert first.setpoint_id == "sp-ramp"
            assert -3000.0 < ack["applied_power_w"] < 0.0  # ramping: only part of the way
            assert ack["applied_power_w"] == first.commanded_w
            assert first.binding_limit is None  # no limit cuts -3000 W: only the ramp binds
            assert ack["binding_limit"].startswith("ramp: ")
            assert "toward -3000 W" in ack["binding_limit"]

            # Reach the target: a setpoint asking for what is applied names nothing.
            for _ in range(40):
                await asyncio.sleep(0.05)
                if cycle(link).commanded_w == -3000.0:
                    break
            assert step.state.last_command_w == -3000.0
            await aggregator.publish("setpoint", setpoint("sp-held", -3000.0))
            assert await until(lambda: (link.setpoint() or first).setpoint_id == "sp-held")
            cycle(link)
            ack = await aggregator.ack("sp-held")
            assert ack["applied_power_w"] == -3000.0
            assert "binding_limit" not in ack

            # The vehicle allows 5 A x 380 V = 1900 W: the limit binds, the ramp brings it down.
            await aggregator.publish("setpoint", setpoint("sp-cut", -3500.0))
            assert await until(lambda: (link.setpoint() or first).setpoint_id == "sp-cut")
            cut = cycle(link, discharge_current_a=5.0)
            ack = await aggregator.ack("sp-cut")
            assert ack["applied_power_w"] == cut.commanded_w == -1900.0  # cuts are immediate
            assert ack["binding_limit"] == cut.binding_limit
            assert ack["binding_limit"].startswith("vehicle_discharge_current")

    asyncio.run(scenario())
