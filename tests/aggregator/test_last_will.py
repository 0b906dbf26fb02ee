"""The Last Will: a charger process killed with SIGKILL is announced "offline" by the broker."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from hil.mosquitto import Mosquitto
from tests.aggregator.support import Aggregator, until

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
site: {{site_id: site-1, charger_id: c1}}
vehicle: {{protocol: chademo, can: {{interface: virtual, channel: t}}}}
inverter: {{transport: tcp, tcp: {{host: 127.0.0.1}}}}
aggregator:
  broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5}}
logging: {{format: json}}
"""


def test_sigkill_publishes_the_retained_last_will(broker: Mosquitto, tmp_path: Path) -> None:
    """SIGKILL the process running the link: the broker publishes retained "offline" at once."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(port=broker.port), encoding="utf-8")

    async def scenario() -> None:
        async with Aggregator(broker.port) as aggregator:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.aggregator.link_process",
                str(config),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert proc.stdout is not None
                stdout = proc.stdout

                async def connected() -> None:
                    while (line := await stdout.readline()) != b"up\n":
                        assert line, "the link process ended before it connected"

                await asyncio.wait_for(connected(), timeout=15)
                assert await until(lambda: aggregator.availability() == [b"online"])
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.wait_for(proc.wait(), timeout=5) == -signal.SIGKILL
                assert await until(lambda: aggregator.availability()[-1:] == [b"offline"], 3.0)
                will = aggregator.on("availability")[-1]
                assert will.retain
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    asyncio.run(scenario())
