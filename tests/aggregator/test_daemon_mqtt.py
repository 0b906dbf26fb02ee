"""The whole daemon with a real mosquitto: setpoints acked, a 10 s broker outage falls back and
resumes without a restart, and SIGKILL leaves the Last Will "offline"."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from hil.mosquitto import Mosquitto
from tests.aggregator.support import Aggregator, setpoint, until

ROOT = Path(__file__).resolve().parents[2]


def daemon_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
site: {{site_id: site-1, charger_id: c1}}
vehicle: {{protocol: chademo, can: {{interface: virtual, channel: daemon-mqtt-{os.getpid()}}}}}
inverter: {{transport: tcp, tcp: {{host: 127.0.0.1, port: 1}}}}
aggregator:
  broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5}}
  reconnect_initial_s: 0.2
  reconnect_max_s: 1.0
  reconnect_spread_s: 0.2
  telemetry_period_s: 1
fallback: {{policy: idle}}
ledger: {{path: {tmp_path / "ledger.sqlite"}}}
logging: {{format: json}}
"""
    )
    return path


def statuses(aggregator: Aggregator) -> list[dict[str, object]]:
    return [m.json() for m in aggregator.on("status")]


def test_daemon_rides_out_a_broker_outage_and_leaves_a_last_will(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Setpoint acked; broker down 10 s → fallback; back up → resumes; SIGKILL → 'offline'."""
    config = daemon_config(tmp_path, broker.port)

    async def scenario() -> None:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller",
            "run",
            "-c",
            str(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with Aggregator(broker.port) as aggregator:
                assert await until(lambda: b"online" in aggregator.availability(), 20)
                await aggregator.publish("setpoint", setpoint("before", 0.0, ttl_s=4, mode="idle"))
                ack = await aggregator.ack("before", 10)
                assert ack["accepted"] is True
                assert await until(
                    lambda: any(s.get("source") == "aggregator" for s in statuses(aggregator)), 5
                )

                seen = len(aggregator.availability())
                broker.stop()
                await asyncio.sleep(10)  # the setpoint (4 s) expires while the broker is away
                broker.start()

                # The same daemon process reconnects by itself and reports the fallback.
                # A new "online", published after its subscription is back (the last one from
                # before the outage proves nothing): only then can a setpoint reach it.
                assert await until(
                    lambda: (
                        len(aggregator.availability()) > seen
                        and aggregator.availability()[-1:] == [b"online"]
                    ),
                    20,
                )
                assert await until(
                    lambda: any(s.get("source") == "fallback" for s in statuses(aggregator)), 10
                )
                assert daemon.returncode is None
                # Telemetry goes through the ledger file's store-and-forward outbox, with ids.
                assert await until(lambda: bool(aggregator.on("telemetry")), 10)
                ids = [m.json()["record_id"] for m in aggregator.on("telemetry")]
                assert len(ids) == len(set(ids))
                await aggregator.publish("setpoint", setpoint("after", 0.0, ttl_s=30, mode="idle"))
                assert (await aggregator.ack("after", 10))["accepted"] is True

                daemon.send_signal(signal.SIGKILL)
                await daemon.wait()
                # keepalive 5 s: the broker declares the client gone within 1.5 x keepalive.
                assert await until(lambda: aggregator.availability()[-1:] == [b"offline"], 15)
        finally:
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()

    asyncio.run(scenario())
