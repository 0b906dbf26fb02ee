"""Helpers for the probe tests: a simulated inverter on a free port, configs, the CLI."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from controller.config import InverterConfig
from hil.inverter.field import FieldBehaviour, build_simulator
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

REPO = Path(__file__).resolve().parents[2]
BD7_MAP = REPO / "config" / "inverters" / "v2glabs-bd7.yaml"
# The CLI's environment: the default status socket in a directory that does not exist, so a
# daemon running on this machine never makes the write test refuse (status.socket_path wins).
NO_DAEMON_ENV = {**os.environ, "RUNTIME_DIRECTORY": "/nonexistent/v2g-controller-probe-tests"}


@asynccontextmanager
async def inverter(
    profile: str = "sunspec-700", behaviour: FieldBehaviour | None = None, *, unit_id: int = 1
) -> AsyncIterator[InverterSimulator]:
    """A simulated inverter over Modbus TCP on 127.0.0.1 (its port in ``sim.port``)."""
    sim = build_simulator(profile, PowerStage(), behaviour or FieldBehaviour(), unit_id=unit_id)
    await sim.start_tcp()
    try:
        yield sim
    finally:
        await sim.stop()


def inverter_config(port: int, **extra: Any) -> InverterConfig:
    """An inverter section for the simulator: short timeout, one retry (a loaded machine may
    miss a 0.3 s reply once), unit 1."""
    values: dict[str, Any] = {
        "transport": "tcp",
        "tcp": {"host": "127.0.0.1", "port": port},
        "timeout_s": 0.3,
        "retries": 1,
    }
    values.update(extra)
    return InverterConfig.model_validate(values)


def config_text(**sections: str) -> str:
    """A whole config file's text; ``sections`` replace the defaults (YAML flow style)."""
    chosen = {
        "site": "{site_id: site-1, charger_id: c1}",
        "vehicle": "{protocol: chademo, can: {interface: virtual, channel: probe}}",
        "inverter": "{transport: tcp, tcp: {host: 127.0.0.1}}",
        "aggregator": "{broker: {host: 127.0.0.1, port: 1}}",
        **sections,
    }
    return "".join(f"{key}: {value}\n" for key, value in chosen.items())


async def cli(
    *args: str, stdin: bytes | None = None, timeout_s: float = 30.0
) -> tuple[int, str, str]:
    """``python -m controller`` (this worktree's) with ``args``; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        *args,
        cwd=REPO,
        env=NO_DAEMON_ENV,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Tty(io.StringIO):
    """An output that says it is a terminal."""

    def isatty(self) -> bool:
        return True
