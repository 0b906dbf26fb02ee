"""A cancelled aggregator link ends, whatever state its MQTT exchange with the broker is in.

The daemon stops by cancelling its links. On Python 3.11 aiomqtt awaits CONNACK, SUBACK and
PUBACK with ``asyncio.wait_for``, which returns the reply instead of raising when a cancel and
the reply land in the same loop pass (CPython gh-86296): the link then went on publishing and
the stop never returned (issue 13). The first tests hit that pass exactly: the paho client's own
callback for the reply cancels the task as aiomqtt handles the reply. The last ones freeze the
broker (SIGSTOP) so that a request stays outstanding while the link is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.aggregator.client import LinkClient
from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.messages import EventBody
from controller.core.snapshots import PowerState
from controller.links import LinkStatus
from controller.storage.db import open_database
from hil.mosquitto import Mosquitto
from tests.aggregator.support import Aggregator, make_config, make_link, now_utc, report, until

BOUND_S = 10.0  # generous: only a link that ignores the cancel gets near it
REQUEST_TIMEOUT_S = 60.0  # longer than BOUND_S: no aiomqtt timeout may end a test's wait for it

# paho's callback for each reply the link waits for.
CALLBACKS = {"connack": "on_connect", "suback": "on_subscribe", "puback": "on_publish"}


class CancelOnReply(MqttAggregatorLink):
    """A link whose MQTT client, when armed, cancels a task as aiomqtt handles the next reply
    of one kind (CONNACK, SUBACK or PUBACK), in that reply's own loop pass.

    The cancel follows aiomqtt's own callback (which sets the future or the event its
    ``wait_for`` waits on), so the waiting task is woken by the cancel with the reply already
    there: 3.11's ``wait_for`` then returns the reply. (A PUBACK is awaited through
    ``Event.wait()`` in a task of its own; a cancel made before the event is set reaches
    ``wait_for`` while that task is still pending, and is not lost.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed: str | None = None
        self.target: asyncio.Task[Any] | None = None
        self.cancels = 0
        self.clients: list[aiomqtt.Client] = []

    def arm(self, reply: str, target: asyncio.Task[Any]) -> None:
        """Cancel ``target`` as the next ``reply`` is handled."""
        self.armed, self.target = reply, target

    def _new_client(
        self, context: ssl.SSLContext | None, password: str | None, *, will: bool
    ) -> LinkClient:
        client = super()._new_client(context, password, will=will)
        paho = client._client  # aiomqtt has set its own callbacks on the paho client by now
        for reply, name in CALLBACKS.items():
            setattr(paho, name, self._hooked(reply, getattr(paho, name)))
        self.clients.append(client)
        return client

    def _hooked(self, reply: str, handle: Callable[..., None]) -> Callable[..., None]:
        def on_reply(*args: Any) -> None:
            if self.armed != reply:
                handle(*args)
                return
            assert self.target is not None
            self.armed = None
            self.cancels += 1
            handle(*args)
            self.target.cancel()

        return on_reply


def cancel_on_reply_link(broker: Mosquitto, **kwargs: Any) -> CancelOnReply:
    config = make_config(broker.port)
    return CancelOnReply(
        config.aggregator,
        topic_prefix=config.topic_prefix,
        client_id="c1-cancel-on-reply",
        connect_timeout_s=REQUEST_TIMEOUT_S,
        **kwargs,
    )


async def ends_cancelled(task: asyncio.Task[Any]) -> None:
    """Wait (bounded) for ``task`` to end; it must end cancelled."""
    await asyncio.wait({task}, timeout=BOUND_S)
    assert task.cancelled(), f"the cancel was lost: {task!r}"


@pytest.mark.parametrize("reply", ["connack", "suback", "puback"])
def test_link_cancelled_as_a_connect_reply_arrives_ends(broker: Mosquitto, reply: str) -> None:
    """Cancelled as its CONNACK, SUBACK or "online" PUBACK is handled, the link ends cancelled."""

    async def scenario() -> None:
        link = cancel_on_reply_link(broker)
        run = asyncio.create_task(link.run(lambda: None))
        link.arm(reply, run)
        await ends_cancelled(run)
        assert link.cancels == 1
        # The cancel reaches the connect task one loop pass after the reply it came with: the
        # link may have come up (a PUBACK is awaited on a future of the link's own), but no
        # further.
        assert link.connects <= (1 if reply == "puback" else 0)

    asyncio.run(scenario())


def test_link_cancelled_as_a_status_puback_arrives_ends(broker: Mosquitto) -> None:
    """Cancelled as the PUBACK of a status from memory is handled, the link ends cancelled."""

    async def scenario() -> None:
        link = cancel_on_reply_link(broker)
        run = asyncio.create_task(link.run(lambda: None))
        assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
        link.arm("puback", run)
        link.report(report("sp-1", -2000.0, state=PowerState.DISCHARGING, source="aggregator"))
        await ends_cancelled(run)
        assert link.cancels == 1

    asyncio.run(scenario())


def test_link_cancelled_as_a_stored_record_puback_arrives_ends(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Cancelled as a stored window's first PUBACK is handled: ends cancelled, records kept."""
    # Unlike the tests above this one passes without ``guarded`` too: the window is published
    # through asyncio.gather, which raises the cancel once its publishes are done even when
    # the one that had its PUBACK returned instead.

    async def scenario() -> None:
        durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))
        link = cancel_on_reply_link(broker, durable=durable)
        # A subscriber: records delivered to nobody would be kept (and retried) anyway.
        async with Aggregator(broker.port):
            run = asyncio.create_task(link.run(lambda: None))
            assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
            link.report(report("sp-1", -2000.0, state=PowerState.DISCHARGING, source="aggregator"))
            # Drained: whatever is published from now on is a window of stored records.
            assert await until(lambda: link.outbox.peek() is None and len(durable) == 0, BOUND_S)
            link.arm("puback", run)
            for n in range(3):
                body = EventBody(at=now_utc(), kind="fault_raised", message=f"fault {n}")
                durable.put("event", json.loads(body.to_json()))
            await ends_cancelled(run)
        assert link.cancels == 1
        assert len(durable) >= 3  # none deleted: the window was not acknowledged as a whole

    asyncio.run(scenario())


def test_publish_offline_cancelled_as_its_puback_arrives_is_cancelled(broker: Mosquitto) -> None:
    """publish_offline() cancelled as its PUBACK is handled is cancelled, does not return."""
    # The stop sequence's last step, under a timeout, over the live connection.

    async def scenario() -> None:
        link = cancel_on_reply_link(broker)
        run = asyncio.create_task(link.run(lambda: None))
        try:
            assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
            offline = asyncio.create_task(link.publish_offline())
            link.arm("puback", offline)
            await ends_cancelled(offline)
            assert link.cancels == 1
        finally:
            run.cancel()
        await ends_cancelled(run)

    asyncio.run(scenario())


@pytest.mark.parametrize("reply", ["connack", "puback"])
def test_one_shot_publish_offline_cancelled_as_a_reply_arrives_is_cancelled(
    broker: Mosquitto, reply: str
) -> None:
    """publish_offline() on its own connection, cancelled as a reply is handled, is cancelled."""

    async def scenario() -> None:
        link = cancel_on_reply_link(broker)
        offline = asyncio.create_task(link.publish_offline())
        link.arm(reply, offline)
        await ends_cancelled(offline)
        assert link.cancels == 1
        assert len(link.clients) == 1

    asyncio.run(scenario())


def broker_pid(broker: Mosquitto) -> int:
    """The running mosquitto's process id."""
    proc = broker._proc
    assert proc is not None
    assert proc.poll() is None
    return proc.pid


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker stopped (SIGSTOP) inside the block: its socket stays open, nothing answers.
    It always continues (SIGCONT) afterwards."""
    pid = broker_pid(broker)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def pending_publishes(link: MqttAggregatorLink) -> int:
    """PUBACKs the link's live client is waiting for."""
    client = link._client
    return 0 if client is None else client.pending_pubacks


@pytest.mark.parametrize("stored", [False, True], ids=["in-memory", "durable"])
def test_link_cancelled_while_the_broker_is_frozen_mid_publish_ends(
    broker: Mosquitto, tmp_path: Path, stored: bool
) -> None:
    """Cancelled with PUBACKs outstanding from a frozen broker, the link ends cancelled."""

    async def scenario() -> None:
        durable = DurableOutbox(open_database(tmp_path / "ledger.sqlite")) if stored else None
        link = make_link(
            make_config(broker.port), connect_timeout_s=REQUEST_TIMEOUT_S, durable=durable
        )
        run = asyncio.create_task(link.run(lambda: None))
        assert await until(lambda: link.status is LinkStatus.UP, BOUND_S), link.reason
        with frozen(broker):
            link.report(report("sp-1", -2000.0, state=PowerState.DISCHARGING, source="aggregator"))
            assert await until(lambda: pending_publishes(link) > 0, BOUND_S)
            assert link.status is LinkStatus.UP  # nothing but the cancel can end the wait
            run.cancel()
            await ends_cancelled(run)
        if durable is not None:
            assert len(durable) > 0  # unacknowledged records stay for the next connection

    asyncio.run(scenario())


def connecting(link: CancelOnReply) -> bool:
    """The link's client has its socket open (CONNECT sent) and no CONNACK was handled."""
    if not link.clients:
        return False
    paho = link.clients[-1]._client
    return paho.socket() is not None and not paho.is_connected()


def test_link_cancelled_while_the_broker_is_frozen_mid_connect_ends(broker: Mosquitto) -> None:
    """Cancelled while a frozen broker owes its CONNACK, the link ends cancelled."""
    # The kernel accepts the TCP connection on the frozen broker's behalf; no CONNACK comes.

    async def scenario() -> None:
        with frozen(broker):
            link = cancel_on_reply_link(broker)
            run = asyncio.create_task(link.run(lambda: None))
            assert await until(lambda: connecting(link), BOUND_S)
            run.cancel()
            await ends_cancelled(run)
            assert link.connects == 0
        assert broker.running

    asyncio.run(scenario())
