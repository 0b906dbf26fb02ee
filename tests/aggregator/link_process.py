"""Runs the aggregator link alone in a process, as the daemon would: ``python -m
tests.aggregator.link_process CONFIG``. Prints "up" once connected. The Last Will test kills it."""

from __future__ import annotations

import asyncio
import sys

from controller.aggregator.link import MqttAggregatorLink
from controller.config import load_config
from controller.links import LinkStatus


async def main(config_path: str) -> None:
    link = MqttAggregatorLink.from_config(load_config(config_path))

    def wake() -> None:
        if link.status is LinkStatus.UP:
            sys.stdout.write("up\n")
            sys.stdout.flush()

    await link.run(wake)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
