"""A broker of several addresses (cluster nodes, or a primary and a standby): the link fails over
between them, and the first reconnect after a lost connection is spread out (issue 20).

Two real mosquitto brokers stand in for two nodes here; hil/test_broker_failover.py does the
same against a real two-node RabbitMQ cluster.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from controller.links import LinkStatus
from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    report,
    setpoint,
    until,
)


@pytest.fixture
def second_broker(tmp_path: Path, need_mosquitto: None) -> Mosquitto:
    directory = tmp_path / "second"
    directory.mkdir()
    return Mosquitto(directory)


def failover_to(port: int) -> str:
    """The broker section's failover list: one more node on ``port``."""
    return f", failover: [{{host: 127.0.0.1, port: {port}}}]"


def test_node_stopped_the_link_fails_over_and_carries_on(
    broker: Mosquitto, second_broker: Mosquitto
) -> None:
    """Connected to node A; A stops: the link reconnects to node B, republishes "online" and
    its status there (what a lost node held is gone), and setpoints and acks flow through B."""

    async def scenario() -> None:
        config = make_config(broker.port, broker_extra=failover_to(second_broker.port))
        link = make_link(config)
        async with (
            Aggregator(second_broker.port) as on_b,
            LinkRunner(link) as running,
        ):
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            assert link.broker_address == f"127.0.0.1:{broker.port}"
            link.report(report())
            lost_s = time.monotonic()
            broker.stop()
            assert await until(
                lambda: (
                    link.broker_address.endswith(f":{second_broker.port}")
                    and running.status is LinkStatus.UP
                ),
                5.0,
            ), running.reason
            failover_s = time.monotonic() - lost_s
            assert failover_s < 5.0, failover_s  # spread 0.2 s, backoff from 0.1 s
            assert await until(lambda: b"online" in on_b.availability(), 3.0)
            assert await until(lambda: any(m.retain for m in on_b.on("status")), 3.0)
            await on_b.publish("setpoint", setpoint("sp-on-b", -1500.0))
            assert await until(lambda: link.setpoint() is not None, 3.0)
            link.report(report("sp-on-b", -1500.0, source="aggregator"))
            ack = await on_b.ack("sp-on-b")
            assert ack["accepted"] is True

    with second_broker:
        asyncio.run(scenario())


def test_first_address_down_at_start_the_next_one_is_used(
    broker: Mosquitto, second_broker: Mosquitto
) -> None:
    """The first address refuses at start: the link goes on to the next one and comes up."""

    async def scenario() -> None:
        broker.stop()
        config = make_config(broker.port, broker_extra=failover_to(second_broker.port))
        link = make_link(config)
        async with LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            assert link.broker_address == f"127.0.0.1:{second_broker.port}"

    with second_broker:
        asyncio.run(scenario())


def test_first_reconnect_after_a_loss_is_spread_over_reconnect_spread_s(
    broker: Mosquitto,
) -> None:
    """A broker restart: the link waits random01 x reconnect_spread_s before reconnecting, so
    a fleet that lost the broker together comes back spread out (docs/mqtt.md, "At scale")."""

    async def scenario() -> None:
        config = make_config(broker.port)
        config = config.model_copy(
            update={"aggregator": config.aggregator.model_copy(update={"reconnect_spread_s": 3.0})}
        )
        link = make_link(config, random01=lambda: 0.6)
        async with LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0), running.reason
            broker.restart()  # back in well under a second
            lost_s = time.monotonic()
            assert await until(lambda: running.status is LinkStatus.DOWN, 3.0)
            assert await until(lambda: running.status is LinkStatus.UP, 6.0), running.reason
            back_after_s = time.monotonic() - lost_s
            assert 1.6 <= back_after_s <= 3.5, back_after_s  # 0.6 x 3 s = 1.8 s

    asyncio.run(scenario())
