"""Every record the aggregator link stamps itself (acks, price acks, link_restored) carries the
site's time zone, like the telemetry and status stamped from the control reports (issue 20,
finding 4: link_restored came in UTC "Z" among records at the local offset)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import zoneinfo
from pathlib import Path

from controller import app
from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config
from controller.links import ControlReport
from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    now_utc,
    report,
    setpoint,
    until,
)

# No daylight saving, and an offset no test machine's local zone or UTC could be mistaken for.
SITE_ZONE = "Asia/Kathmandu"
OFFSET = "+05:45"


def site_config(port: int) -> Config:
    config = make_config(port)
    return config.model_copy(
        update={"site": config.site.model_copy(update={"timezone": SITE_ZONE})}
    )


def offset_of(stamp: str) -> str:
    return dt.datetime.fromisoformat(stamp).isoformat()[-6:]


def test_link_stamps_its_own_records_in_the_site_time_zone(
    tmp_path: Path, need_mosquitto: None
) -> None:
    """Built as the daemon builds it: ack, price ack, link_restored and telemetry all carry the
    site's offset, none of them UTC."""
    # Persistent, so the aggregator misses nothing published while both reconnect.
    broker = Mosquitto(tmp_path, persistence=True)
    site_tz = zoneinfo.ZoneInfo(SITE_ZONE)

    def site_report(setpoint_id: str | None, power_w: float) -> ControlReport:
        made = report(setpoint_id, power_w, source="aggregator" if setpoint_id else "fallback")
        return dataclasses.replace(made, wall=dt.datetime.now(site_tz))  # as the daemon does

    async def scenario() -> None:
        link = app.build_links(site_config(broker.port)).aggregator
        assert isinstance(link, MqttAggregatorLink)
        runner = LinkRunner(link)
        async with Aggregator(broker.port, persistent=True) as aggregator, runner:
            await runner.up()
            await aggregator.publish("setpoint", setpoint("sp-1", 1000.0))
            assert await until(lambda: link.setpoint() is not None)
            link.report(site_report("sp-1", 1000.0))
            ack = await aggregator.ack("sp-1")
            await aggregator.publish(
                "price_event",
                {
                    "id": "ev-1",
                    "issued_at": now_utc().isoformat(),
                    "cancel": "ev-unknown",
                },
            )
            assert await until(lambda: bool(aggregator.on("price_ack")))
            price_ack = aggregator.on("price_ack")[-1].json()

            broker.stop()
            await asyncio.sleep(0.3)
            broker.start()
            assert await until(
                lambda: any(m.json()["kind"] == "link_restored" for m in aggregator.on("event")),
                10.0,
            )
            (restored,) = [
                m.json() for m in aggregator.on("event") if m.json()["kind"] == "link_restored"
            ]
            assert await until(lambda: bool(aggregator.on("telemetry")))
            telemetry = aggregator.on("telemetry")[0].json()

            stamps = {
                "ack": ack["at"],
                "price_ack": price_ack["at"],
                "link_restored": restored["at"],
                "telemetry": telemetry["at"],
            }
            assert {kind: offset_of(at) for kind, at in stamps.items()} == dict.fromkeys(
                stamps, OFFSET
            ), stamps

    with broker:
        asyncio.run(scenario())
