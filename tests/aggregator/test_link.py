"""The aggregator link against a real mosquitto: setpoints applied and acked, bad ones refused
with a reason, telemetry, status and availability published."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from typing import Any

from controller.aggregator.disabled import DisabledAggregator
from controller.aggregator.link import MqttAggregatorLink
from controller.app import _build_aggregator
from controller.core.snapshots import PowerState, SetpointMode
from controller.links import ControlReport, LinkStatus
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
from tests.support import make_config as make_daemon_config


def test_setpoint_is_applied_and_acked_with_the_binding_limit(broker: Mosquitto) -> None:
    """An accepted setpoint is in force at once and acked with the power the next cycle applied."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-1", -3500.0, ttl_s=60))
            assert await until(lambda: link.setpoint() is not None)
            applied = link.setpoint()
            assert applied is not None
            assert applied.setpoint_id == "sp-1"
            assert applied.power_w == -3500.0
            assert applied.mode is SetpointMode.POWER
            assert 55 < applied.valid_until_s - time.monotonic() <= 60
            assert link.accepted == 1
            assert not aggregator.acks("sp-1")  # the ack waits for the control cycle
            link.report(
                report(
                    "sp-1",
                    -2000.0,
                    state=PowerState.DISCHARGING,
                    source="aggregator",
                    binding_limit="soc_floor: 2.1 kWh above the 40 % floor",
                )
            )
            ack = await aggregator.ack("sp-1")
            assert ack["accepted"] is True
            assert ack["requested_power_w"] == -3500.0
            assert ack["applied_power_w"] == -2000.0
            assert ack["binding_limit"] == "soc_floor: 2.1 kWh above the 40 % floor"

            await aggregator.publish("setpoint", setpoint("sp-2", 1500.0))
            assert await until(lambda: (link.setpoint() or applied).setpoint_id == "sp-2")
            link.report(report("sp-2", 1500.0, state=PowerState.CHARGING, source="aggregator"))
            ack = await aggregator.ack("sp-2")
            assert ack["applied_power_w"] == 1500.0
            assert "binding_limit" not in ack  # applied as asked

    asyncio.run(scenario())


def test_accepted_setpoint_wakes_the_control_loop(broker: Mosquitto) -> None:
    """Link up and every accepted setpoint call wake() so the loop reacts at once."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            wakes = runner.wakes
            assert wakes >= 1
            await aggregator.publish("setpoint", setpoint("sp-w", 1000.0))
            assert await until(lambda: link.setpoint() is not None)
            assert runner.wakes == wakes + 1

    asyncio.run(scenario())


def test_bad_setpoints_are_rejected_with_reasons_and_never_applied(broker: Mosquitto) -> None:
    """Expired, replayed, malformed, out-of-range, future-dated and retained setpoints get an ack
    with accepted false and a reason, and never replace the setpoint in force."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-good", -1000.0))
            assert await until(lambda: link.setpoint() is not None)
            old = now_utc() - dt.timedelta(seconds=120)
            cases = {
                "sp-expired": setpoint("sp-expired", -2000.0, ttl_s=60, issued_at=old),
                "sp-good": setpoint("sp-good", -2000.0),  # replayed id
                "sp-huge": setpoint("sp-huge", -250_000.0),
                "sp-future": setpoint(
                    "sp-future", -2000.0, issued_at=now_utc() + dt.timedelta(minutes=5)
                ),
                "sp-long": setpoint("sp-long", -2000.0, ttl_s=3600),
                "sp-type": setpoint("sp-type", "-2000"),  # type: ignore[arg-type]
                "sp-extra": setpoint("sp-extra", -2000.0, priority=1),
            }
            for payload in cases.values():
                await aggregator.publish("setpoint", payload)
            await aggregator.publish("setpoint", b'{"id": "sp-broken", "issued_at": ')
            await aggregator.publish("setpoint", setpoint("sp-retained", -2000.0), retain=True)

            reasons = {}
            for setpoint_id in (*cases, "sp-retained"):
                acks = [a for a in await _acks(aggregator, setpoint_id) if not a["accepted"]]
                assert acks, f"no rejection for {setpoint_id}"
                reasons[setpoint_id] = acks[-1]["reason"]
            broken = await aggregator.ack(None)
            assert broken["accepted"] is False
            assert broken["reason"].startswith("malformed JSON")

            assert reasons["sp-expired"].startswith("expired")
            assert reasons["sp-good"].startswith("replayed id")
            assert "out of range" in reasons["sp-huge"]
            assert reasons["sp-future"].startswith("issued in the future")
            assert "over the maximum" in reasons["sp-long"]
            assert "power_w" in reasons["sp-type"]
            assert "unknown field 'priority'" in reasons["sp-extra"]
            assert reasons["sp-retained"].startswith("retained message")
            in_force = link.setpoint()
            assert in_force is not None
            assert (in_force.setpoint_id, in_force.power_w) == ("sp-good", -1000.0)
            assert link.rejected == len(cases) + 2

    asyncio.run(scenario())


async def _acks(aggregator: Aggregator, setpoint_id: str) -> list[dict[str, Any]]:
    await aggregator.ack(setpoint_id)
    return aggregator.acks(setpoint_id)


def test_retained_setpoint_found_on_connect_is_never_acted_on(broker: Mosquitto) -> None:
    """A setpoint left retained on the broker is rejected when the link subscribes."""

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            await aggregator.publish("setpoint", setpoint("sp-stale", -7000.0), retain=True)
            link = make_link(make_config(broker.port))
            async with LinkRunner(link):
                ack = await aggregator.ack("sp-stale")
                assert ack["accepted"] is False
                assert ack["reason"].startswith("retained message")
                assert link.setpoint() is None

    asyncio.run(scenario())


def test_mqtt_311_link_takes_setpoints_and_still_refuses_retained(broker: Mosquitto) -> None:
    """With broker.protocol 3.1.1 the link works the same, retained setpoints included."""

    async def scenario() -> None:
        config = make_config(broker.port, broker_extra=', protocol: "3.1.1"')
        async with Aggregator(broker.port) as aggregator:
            await aggregator.publish("setpoint", setpoint("sp-stale", -7000.0), retain=True)
            link = make_link(config)
            runner = LinkRunner(link)
            async with runner:
                await runner.up()
                assert link.protocol == "3.1.1"
                stale = await aggregator.ack("sp-stale")
                assert stale["reason"].startswith("retained message")
                await aggregator.publish("setpoint", setpoint("sp-311", 2000.0))
                assert await until(lambda: link.setpoint() is not None)
                link.report(report("sp-311", 2000.0, source="aggregator"))
                assert (await aggregator.ack("sp-311"))["applied_power_w"] == 2000.0

    asyncio.run(scenario())


def test_online_is_published_retained_and_offline_on_a_clean_stop(broker: Mosquitto) -> None:
    """Connect publishes retained "online"; publish_offline after the task ended (the daemon's
    stop order) publishes retained "offline"."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator:
            async with runner:
                await runner.up()
                assert await until(lambda: aggregator.availability() == [b"online"])
                assert aggregator.on("availability")[0].retain
            await link.publish_offline()
            assert await until(lambda: aggregator.availability()[-1:] == [b"offline"])
            assert aggregator.on("availability")[-1].retain

    asyncio.run(scenario())


def test_publish_offline_while_connected_uses_the_live_connection(broker: Mosquitto) -> None:
    """publish_offline on a running link publishes "offline" and the link stops reconnecting."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            await link.publish_offline()
            assert await until(lambda: aggregator.availability()[-1:] == [b"offline"])
            assert link.connects == 1

    asyncio.run(scenario())


class ManualClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_telemetry_on_change_and_periodically(broker: Mosquitto) -> None:
    """Telemetry goes out at the first report, on a state change (when the rate limit's
    interval ends), and every period; status is retained; source changes and faults become
    events."""
    clock = ManualClock()

    def at_now(control: ControlReport) -> ControlReport:
        return dataclasses.replace(control, monotonic_s=clock())

    async def scenario() -> None:
        config = make_config(broker.port)
        aggregator_config = config.aggregator.model_copy(
            update={"telemetry_period_s": 10.0, "telemetry_idle_period_s": 10.0}
        )
        config = config.model_copy(update={"aggregator": aggregator_config})
        link = make_link(config, monotonic=clock)  # telemetry_min_interval_s: 1
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            link.report(at_now(report(None, 0.0, source="fallback")))
            assert await until(lambda: len(aggregator.on("telemetry")) == 1, 10.0)
            first = aggregator.on("telemetry")[0].json()
            assert first["state"] == "idle"
            assert first["soc_pct"] == 60.0
            assert first["flexibility"]["max_discharge_power_w"] == 7400.0
            assert not aggregator.on("telemetry")[0].retain

            clock.now_s += 0.5  # nothing is due by time on the link's clock
            link.report(at_now(report(None, 0.0, source="fallback")))  # nothing changed
            await asyncio.sleep(0.3)
            assert len(aggregator.on("telemetry")) == 1

            # Within the period (10 s): only the change can make it due, once the rate limit's
            # interval (1 s) since the first record ends on the link's clock.
            link.report(
                at_now(
                    report(
                        None,
                        -3000.0,
                        state=PowerState.DISCHARGING,
                        source="aggregator",
                        faults=("inverter: over-temperature",),
                    )
                )
            )
            await asyncio.sleep(0.3)
            assert len(aggregator.on("telemetry")) == 1
            clock.now_s += 0.5
            assert await until(lambda: len(aggregator.on("telemetry")) == 2, 10.0)
            assert aggregator.on("telemetry")[1].json()["state"] == "discharging"

            # No further reports: the latest is republished each time a period passes.
            clock.now_s += 10.0
            assert await until(lambda: len(aggregator.on("telemetry")) == 3, 10.0)
            clock.now_s += 10.0
            assert await until(lambda: len(aggregator.on("telemetry")) == 4, 10.0)
            assert aggregator.on("telemetry")[-1].json()["state"] == "discharging"

            statuses = aggregator.on("status")
            assert statuses
            assert all(message.retain for message in statuses)
            assert statuses[-1].json()["state"] == "discharging"
            kinds = [event.json()["kind"] for event in aggregator.on("event")]
            assert "control_source_changed" in kinds
            assert "fault_raised" in kinds

    asyncio.run(scenario())


def test_setpoint_without_a_control_cycle_is_still_acked(broker: Mosquitto) -> None:
    """If no report follows an accepted setpoint, its ack says so after the wait."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port), ack_wait_s=0.3)
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-lonely", 500.0))
            ack = await aggregator.ack("sp-lonely", timeout_s=3.0)
            assert ack["accepted"] is True
            assert "no control cycle" in ack["reason"]
            assert "applied_power_w" not in ack

    asyncio.run(scenario())


def test_app_builds_the_mqtt_link_or_the_disabled_one() -> None:
    """aggregator.enabled true wires the MQTT link; false keeps DisabledAggregator."""
    assert isinstance(_build_aggregator(make_daemon_config()), DisabledAggregator)
    enabled = make_daemon_config().model_copy(update={"aggregator": make_config(1883).aggregator})
    link = _build_aggregator(enabled)
    assert isinstance(link, MqttAggregatorLink)
    assert link.client_id == "v2g-test-site-c1"
    assert link.topics.setpoint == "v2g/test-site/c1/setpoint"
    assert link.status is LinkStatus.STARTING
