"""What a rejected setpoint's or price message's ack says, as the aggregator reads it from a
real mosquitto: short, specific reasons that never quote the payload back, and numbers shown
with the digits that make the reason true (issue 20, finding 4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from hil.mosquitto import Mosquitto
from tests.aggregator.support import (
    Aggregator,
    LinkRunner,
    make_config,
    make_link,
    now_utc,
    setpoint,
    until,
)

MARKER = "payload-text-that-must-not-come-back-in-a-reason"
NESTED = "malformed JSON: nested deeper than 32 levels"


def lone_surrogate(body: dict[str, Any], field: str) -> bytes:
    """``body`` with a "\\ud800" escape (no pair) in ``field``'s string, as JSON text."""
    return json.dumps({**body, field: "x\ud800"}).encode()


async def price_ack(aggregator: Aggregator, body: bytes, seen: int) -> dict[str, Any]:
    await aggregator.publish("price_schedule", body)
    assert await until(lambda: len(aggregator.on("price_ack")) > seen)
    ack: dict[str, Any] = aggregator.on("price_ack")[-1].json()
    return ack


def test_rejected_acks_over_mqtt_say_what_is_wrong_without_echoing_the_payload(
    broker: Mosquitto,
) -> None:
    """Deeply nested JSON (setpoint and price schedule), lone surrogates and a ttl a hair over
    the maximum are each acked with a bounded reason that names the problem."""

    async def scenario() -> None:
        link = make_link(make_config(broker.port))
        runner = LinkRunner(link)
        async with Aggregator(broker.port) as aggregator, runner:
            await runner.up()
            issued = now_utc().isoformat()
            over = now_utc() + dt.timedelta(seconds=900.000001)
            setpoints: dict[str, tuple[bytes, str]] = {
                "sp-ttl": (
                    json.dumps(setpoint("sp-ttl", ttl_s=900.0001)).encode(),
                    "ttl_s 900.0001 s is over the maximum 900 s",
                ),
                "sp-until": (
                    json.dumps(
                        {"id": "sp-until", "issued_at": issued, "valid_until": over.isoformat()}
                        | {"power_w": -1000}
                    ).encode(),
                    "valid for ",  # the exact figure depends on when `issued` was read
                ),
                "sp-mode": (
                    lone_surrogate({**setpoint("sp-mode"), "note": MARKER}, "mode"),
                    "malformed JSON: a string holds a lone surrogate \\ud800 (an escape with "
                    "no pair)",
                ),
            }
            for setpoint_id, (body, expected) in setpoints.items():
                await aggregator.publish("setpoint", body)
                ack = await aggregator.ack(setpoint_id)  # the id, still readable, is echoed
                assert ack["accepted"] is False
                assert ack["reason"].startswith(expected)
                assert MARKER not in ack["reason"]
                assert len(ack["reason"]) <= 100
            (until_ack,) = aggregator.acks("sp-until")
            # Over by a microsecond, and the reason shows it: never "900 s ... maximum 900 s".
            assert until_ack["reason"].startswith("valid for 900.0000")
            assert until_ack["reason"].endswith(" s from issued_at, over the maximum 900 s")

            await aggregator.publish("setpoint", b"[" * 4000)
            assert await until(lambda: any(a["reason"] == NESTED for a in aggregator.acks(None)))

            # A price schedule may be 256 KiB: room for 100 000 brackets.
            seen = len(aggregator.on("price_ack"))
            ack = await price_ack(aggregator, b"[" * 100_000, seen)
            assert (ack["accepted"], ack["reason"]) == (False, NESTED)
            schedule = {"id": "s-1", "issued_at": issued, "currency": "EUR", "slots": []}
            ack = await price_ack(
                aggregator, lone_surrogate({**schedule, "note": MARKER}, "currency"), seen + 1
            )
            assert (ack["accepted"], ack["id"]) == (False, "s-1")
            assert ack["reason"] == (
                "malformed JSON: a string holds a lone surrogate \\ud800 (an escape with no pair)"
            )
            assert link.setpoint() is None
            assert link.prices.version == 0

    asyncio.run(scenario())
