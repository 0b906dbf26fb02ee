"""Loss of the aggregator's broker: the link goes DOWN, the setpoint runs out (the core falls back),
and when the broker returns the link reconnects and resumes without an operator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from controller.links import LinkStatus
from hil.mosquitto import Mosquitto, find_mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    report,
    setpoint,
    until,
)


def test_broker_restart_down_then_up_and_resumes(tmp_path: Path) -> None:
    """Broker stopped: DOWN with a reason and the setpoint expires; restarted on the same port:
    UP again, "online" and the status republished, and a new setpoint is applied and acked."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    # A persistent broker and session, so the test's aggregator misses nothing the link
    # publishes while both reconnect, whichever is first.
    broker = Mosquitto(tmp_path, persistence=True)

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port, persistent=True) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-before", -2000.0, ttl_s=1.5))
            assert await until(lambda: link.setpoint() is not None)
            link.report(report("sp-before", -2000.0, source="aggregator"))
            await aggregator.ack("sp-before")
            online_before = aggregator.availability().count(b"online")
            wakes_before = runner.wakes

            broker.stop()
            assert await until(lambda: link.status is LinkStatus.DOWN, 3.0)
            down_reason = link.reason
            assert down_reason is not None
            assert "lost" in down_reason
            assert runner.wakes > wakes_before  # the control loop hears of the loss at once
            # While the broker is away the setpoint runs out: the core no longer follows it.
            in_force = link.setpoint()
            assert in_force is not None
            assert await until(lambda: time.monotonic() > in_force.valid_until_s, 3.0)
            assert link.status is LinkStatus.DOWN

            link.report(report(None, 0.0, source="fallback"))  # queued while down
            broker.start()
            await runner.up(timeout_s=5.0)
            assert link.connects == 2
            assert link.reason is None
            assert await until(
                lambda: aggregator.availability().count(b"online") > online_before, 5.0
            )
            assert await until(
                lambda: any(m.json()["kind"] == "link_restored" for m in aggregator.on("event")),
                5.0,
            )
            assert await until(
                lambda: any(m.json()["source"] == "fallback" for m in aggregator.on("status")),
                5.0,
            )

            await aggregator.publish("setpoint", setpoint("sp-after", 1000.0))
            assert await until(lambda: (link.setpoint() or in_force).setpoint_id == "sp-after", 5.0)
            link.report(report("sp-after", 1000.0, source="aggregator"))
            assert (await aggregator.ack("sp-after"))["applied_power_w"] == 1000.0

    with broker:
        asyncio.run(scenario())


def test_broker_absent_at_start_reports_down_then_connects(broker: Mosquitto) -> None:
    """A link started before its broker is DOWN with the reason, then UP once the broker runs."""

    async def scenario() -> None:
        broker.stop()
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with runner:
            assert await until(lambda: link.status is LinkStatus.DOWN, 3.0)
            assert link.reason is not None
            assert "cannot connect" in link.reason
            assert "refused" in link.reason.lower()
            broker.start()
            await runner.up(timeout_s=5.0)

    asyncio.run(scenario())
