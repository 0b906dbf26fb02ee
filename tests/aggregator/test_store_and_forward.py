"""Store and forward (issue 9): a charger that loses its uplink, or restarts, loses no record and
sends none twice.

The outage is "10 minutes" on the link's own monotonic clock, which stands still unless the test
advances it: 60 control reports 10 s apart with the production telemetry_period_s of 10 s make
exactly 60 periodic telemetry records (the period, not a change, makes each one due), as 10 real
minutes would. A fault raised and cleared and a control source change add 3 events, and the
"ledger" closes 3 sessions in between. All of it is made while the real broker is stopped, with
no socket touched and no sleep (however long that takes in real time, the link's clock adds no
further periodic telemetry), then the broker comes back on the same port. The aggregator holds a
persistent session on a persistent broker, subscribed before the outage, so it misses nothing
the link publishes while both reconnect, whichever is first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.outbox import Kind
from controller.config import Config
from controller.core.snapshots import PowerState
from controller.links import ControlOutput, ControlReport, LinkStatus
from controller.storage.db import open_database
from hil.mosquitto import Mosquitto, find_mosquitto
from tests.aggregator.support import Aggregator, LinkRunner, make_config, report, until
from tests.aggregator.test_acks import blocking_calls

PRODUCTION_PERIOD_S = 10.0
OUTAGE_REPORTS = 60  # 10 minutes at 10 s
RECORD_TOPICS = ("telemetry", "event", "session")


class SimulatedMonotonic:
    """The link's monotonic clock: it stands still, except when the test skips ahead."""

    def __init__(self) -> None:
        # Whole seconds, so that every skip of 10 s is exactly 10 s apart in floating point.
        self.start_s = float(int(time.monotonic()))
        self.skipped_s = 0.0

    def __call__(self) -> float:
        return self.start_s + self.skipped_s


def session_body(n: int) -> dict[str, Any]:
    start = dt.datetime(2025, 3, 14, 17, 0, tzinfo=dt.UTC) + dt.timedelta(hours=n)
    return {
        "session_id": f"session-{n}",
        "protocol": "chademo",
        "vehicle_id": "LSIMULATEDV2G0001",
        "started_at": start.isoformat(),
        "ended_at": (start + dt.timedelta(minutes=50)).isoformat(),
        "soc_start_pct": 80.0,
        "soc_end_pct": 70.0,
        "charged_kwh": 0.0,
        "discharged_kwh": 4.2 + n,
        "energy_source": "inverter_counters",
        "import_cost": 0.0,
        "export_value": 1.3,
        "net_value": 1.3,
        "currency": "EUR",
        "end_reason": "vehicle stop request",
    }


def durable_link(
    config: Config, outbox: DurableOutbox, clock: SimulatedMonotonic
) -> MqttAggregatorLink:
    aggregator = config.aggregator.model_copy(update={"telemetry_period_s": PRODUCTION_PERIOD_S})
    return MqttAggregatorLink(
        aggregator,
        topic_prefix=config.topic_prefix,
        client_id="c1-store-and-forward",
        monotonic=clock,
        connect_timeout_s=2.0,
        durable=outbox,
    )


def at(clock: SimulatedMonotonic, base: ControlReport, **changes: Any) -> ControlReport:
    """``base`` on the link's clock, with ``changes`` to its measurements or its decision."""
    decided = {f.name for f in dataclasses.fields(ControlOutput)}
    output = dataclasses.replace(base.output, **{k: v for k, v in changes.items() if k in decided})
    measured = {k: v for k, v in changes.items() if k not in decided}
    return dataclasses.replace(base, monotonic_s=clock(), output=output, **measured)


async def make_outage_records(
    link: MqttAggregatorLink,
    outbox: DurableOutbox,
    clock: SimulatedMonotonic,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> list[str]:
    """10 simulated minutes: 60 periodic telemetry, 3 events, 3 session records; returns once
    the storage thread wrote them all. With ``monkeypatch``, the socket calls and sleeps made
    while the records are handed over (never while waiting for the storage thread, when the
    link's own reconnect attempts may run on the loop) are returned."""
    with contextlib.ExitStack() as stack:
        blocking = stack.enter_context(blocking_calls(monkeypatch)) if monkeypatch else []
        queue_outage_records(link, outbox, clock)
    storage = link.storage
    assert storage is not None
    await storage.drain()
    return blocking


def queue_outage_records(
    link: MqttAggregatorLink, outbox: DurableOutbox, clock: SimulatedMonotonic
) -> None:
    storage = link.storage
    assert storage is not None
    base = report("sp-1", -2000.0, state=PowerState.DISCHARGING, source="aggregator")
    for n in range(OUTAGE_REPORTS):
        clock.skipped_s += PRODUCTION_PERIOD_S
        changes: dict[str, Any] = {"measured_power_w": -2000.0 + n % 3}  # below its step
        if 20 <= n < 40:
            changes["faults"] = ("inverter: over-temperature",)  # raised at 20, cleared at 40
        if n >= 30:
            changes.update(source="fallback", setpoint_id=None)
        link.report(at(clock, base, **changes))
        if n % 20 == 10:
            body = session_body(n // 20)  # the ledger closing a session, on the storage thread
            storage.post("session", functools.partial(outbox.put, "session", body))


def record_ids(aggregator: Aggregator) -> list[str]:
    """Every record the aggregator received, in order of arrival, across the three topics."""
    topics = {f"{aggregator.prefix}/{t}" for t in RECORD_TOPICS}
    return [m.json()["record_id"] for m in aggregator.received if m.topic in topics]


def skip_without_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")


def test_ten_minute_outage_every_record_delivered_once_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker gone for 10 simulated minutes: after it returns on the same port, every
    telemetry, event and session record made meanwhile arrives, in order of creation, each
    exactly once under its id; telemetry was not coalesced."""
    skip_without_mosquitto()
    broker = Mosquitto(tmp_path, persistence=True)

    async def scenario() -> None:
        outbox = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))
        clock = SimulatedMonotonic()
        link = durable_link(make_config(broker.port), outbox, clock)
        runner = LinkRunner(link)
        async with Aggregator(broker.port, persistent=True) as aggregator, runner:
            await runner.up()
            first = report("sp-1", -2000.0, state=PowerState.DISCHARGING, source="aggregator")
            link.report(at(clock, first))  # on the link's clock, as every report after it
            assert await until(lambda: len(record_ids(aggregator)) == 1)
            assert await until(lambda: len(outbox) == 0)  # published, acknowledged, deleted
            # A QoS 1 round trip from the aggregator after its ack of that record: the broker
            # has taken the ack before it stops, so it keeps no copy to deliver again.
            await aggregator.publish("probe", b"{}")

            broker.stop()
            assert await until(lambda: link.status is LinkStatus.DOWN, 3.0)
            blocking = await make_outage_records(link, outbox, clock, monkeypatch)
            assert blocking == []  # stored, never waiting on the broker that is gone
            backlog = list(outbox)
            kinds = Counter(record.kind for record in backlog)
            assert kinds == {"telemetry": OUTAGE_REPORTS, "event": 3, "session": 3}

            broker.start()
            expected = [r.record_id for r in backlog]
            assert await until(lambda: set(expected) <= set(record_ids(aggregator)), 15.0), (
                f"{len(set(expected) - set(record_ids(aggregator)))} records missing"
            )
            received = record_ids(aggregator)
            assert [i for i in received if i in set(expected)] == expected  # in order
            duplicates = [i for i, n in Counter(received).items() if n > 1]
            assert duplicates == []
            assert await until(lambda: len(outbox) == 0, 5.0)  # deleted once acknowledged
            # The link said it was back, after the backlog (it was created after it).
            events = [m.json() for m in aggregator.on("event")]
            assert events[-1]["kind"] == "link_restored"
            sessions = [m.json() for m in aggregator.on("session")]
            assert [s["session_id"] for s in sessions] == ["session-0", "session-1", "session-2"]
            telemetry = [m.json() for m in aggregator.on("telemetry")]
            assert len(telemetry) == 1 + OUTAGE_REPORTS  # not coalesced
            assert link.connects == 2

    with broker:
        asyncio.run(scenario())


def test_records_stored_before_a_restart_are_delivered_after_it(tmp_path: Path) -> None:
    """Records made while the broker was unreachable survive the process (the database is
    closed and opened again) and go out after the restart, first, in order, with their ids."""
    skip_without_mosquitto()
    path = tmp_path / "ledger.sqlite"
    broker = Mosquitto(tmp_path)

    async def before_restart() -> list[str]:
        outbox = DurableOutbox(open_database(path))
        clock = SimulatedMonotonic()
        link = durable_link(make_config(broker.port), outbox, clock)
        async with LinkRunner(link):
            assert await until(lambda: link.status is LinkStatus.DOWN, 3.0)
            await make_outage_records(link, outbox, clock)
        # The link's storage thread finishes its last job (the stop's sync) before the
        # connection it uses is closed: closing it under a running statement is a crash.
        assert link.storage is not None
        assert await asyncio.to_thread(link.storage.stop, 10.0)
        made = [record.record_id for record in outbox]
        outbox._conn.close()
        return made

    async def after_restart(made: list[str]) -> None:
        outbox = DurableOutbox(open_database(path))
        assert [record.record_id for record in outbox] == made
        link = durable_link(make_config(broker.port), outbox, SimulatedMonotonic())
        async with Aggregator(broker.port) as aggregator, LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0)
            link.report(report())  # made after the restart: sent after the old ones
            assert await until(lambda: len(record_ids(aggregator)) >= len(made) + 1, 10.0)
            received = record_ids(aggregator)
            assert received[: len(made)] == made
            assert len(received) == len(set(received))
            assert await until(lambda: len(outbox) == 0, 5.0)

    made = asyncio.run(before_restart())
    assert len(made) == OUTAGE_REPORTS + 6
    with broker:
        asyncio.run(after_restart(made))


def test_without_a_durable_outbox_records_still_carry_an_id(broker: Mosquitto) -> None:
    """No ledger: telemetry and events go through the in-memory queue, still with record_id."""

    async def scenario() -> None:
        config = make_config(broker.port)
        link = MqttAggregatorLink(
            config.aggregator, topic_prefix=config.topic_prefix, client_id="c1-memory"
        )
        async with Aggregator(broker.port) as aggregator, LinkRunner(link) as running:
            assert await until(lambda: running.status is LinkStatus.UP, 5.0)
            link.report(report(faults=("x",)))
            assert await until(lambda: bool(aggregator.on("event") and aggregator.on("telemetry")))
            ids = record_ids(aggregator)
            assert len(ids) == len(set(ids)) >= 2

    asyncio.run(scenario())


def test_a_failing_database_falls_back_to_memory(tmp_path: Path) -> None:
    """If the ledger file cannot be written, telemetry and events are queued in memory (with an
    id) instead of being lost, and the link keeps working."""
    conn = open_database(tmp_path / "ledger.sqlite")
    outbox = DurableOutbox(conn)
    config = make_config(1)
    link = durable_link(config, outbox, SimulatedMonotonic())
    conn.close()  # every write now fails

    async def scenario() -> None:
        link.report(report(faults=("x",)))
        assert link.storage is not None
        await link.storage.drain()  # the fallbacks were handed back to the loop before this
        # The refusal counts as a storage failure at once (the storage_failed event's source),
        # not only at the ledger's next commit.
        assert link.storage.failing is not None
        assert "cannot store the" in link.storage.failing

    asyncio.run(scenario())
    events = [json.loads(m.payload) for m in link.outbox.pending(Kind.EVENT)]
    telemetry = [json.loads(m.payload) for m in link.outbox.pending(Kind.TELEMETRY)]
    assert [e["kind"] for e in events] == ["fault_raised"]
    assert len(telemetry) == 1
    assert events[0]["record_id"] != telemetry[0]["record_id"]


def test_an_outage_over_the_bound_keeps_sessions_and_reports_the_drops(tmp_path: Path) -> None:
    """With room for 20 records, an outage of 66 drops the oldest telemetry and events, keeps
    the sessions, and once the link is back a records_dropped event says how many."""
    skip_without_mosquitto()
    broker = Mosquitto(tmp_path)

    async def scenario() -> None:
        outbox = DurableOutbox(open_database(tmp_path / "ledger.sqlite"), max_records=20)
        clock = SimulatedMonotonic()
        link = durable_link(make_config(broker.port), outbox, clock)
        async with LinkRunner(link):
            assert await until(lambda: link.status is LinkStatus.DOWN, 3.0)
            await make_outage_records(link, outbox, clock)
            assert len(outbox) <= 20
            assert outbox.count("session") == 3
            dropped = sum(outbox.dropped().values())
            assert dropped == OUTAGE_REPORTS + 6 - len(outbox)
            broker.start()
            async with Aggregator(broker.port) as aggregator:
                assert await until(
                    lambda: any(
                        m.json()["kind"] == "records_dropped" for m in aggregator.on("event")
                    ),
                    10.0,
                )
                first, *later = [
                    m.json()
                    for m in aggregator.on("event")
                    if m.json()["kind"] == "records_dropped"
                ]
                # The link_restored event made on reconnect may have pushed out one more.
                assert dropped <= first["dropped"] <= dropped + 1
                # With the table this full the report itself pushes out a record, which a later
                # report counts: only the few made after the first, never the outage's again.
                assert all(1 <= event["dropped"] <= 2 for event in later), later
                # Reported and reset (with a table this full, the event itself may push one out).
                assert sum(outbox.dropped().values()) <= 1

    try:
        broker.stop()
        asyncio.run(scenario())
    finally:
        broker.stop()
