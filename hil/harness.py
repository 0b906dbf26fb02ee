"""The pieces a HIL scenario and the demo put together: the plant and the daemon as processes,
the daemon's generated config, and the aggregator's side of the broker.

Every process is started by a context manager that kills it on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from controller.simclock import SIMULATED_CLOCK_ENV
from hil.plant import PlantClient

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 8.0


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def simulated_clock_env(start_iso: str, rate: float, at_unix_s: float | None = None) -> str:
    """The V2G_SIMULATED_CLOCK value: ``start_iso`` now (or at ``at_unix_s``), ``rate`` x real."""
    anchor = time.time() if at_unix_s is None else at_unix_s
    return json.dumps({"start": start_iso, "at_unix_s": anchor, "rate": rate})


@dataclass
class Setup:
    """One HIL combination and its policy; ``config_yaml`` renders the daemon's config."""

    directory: Path
    protocol: str = "gbt27930"  # chademo | gbt27930
    transport: str = "tcp"  # tcp | rtu
    can_interface: str = "udp_multicast"
    can_channel: str = "239.74.1.1"
    broker_port: int = 1883
    inverter_port: int = 5020
    rtu_device: Path | None = None
    site_id: str = "hil"
    charger_id: str = "c1"
    soc_floor_pct: float = 40.0
    soc_ceiling_pct: float = 90.0
    departure: str = "07:30"
    departure_target_pct: float = 80.0
    revert_timeout_s: float = 3.0
    inverter_timeout_s: float = 0.5
    inverter_retries: int = 1
    poll_interval_s: float = 0.2
    fault_hold_s: float = 30.0
    fallback: str = (
        "{policy: time_of_use, cheap_window: {start: '00:30', end: '06:30'}, "
        "peak_window: {start: '17:00', end: '21:00'}, charge_power_w: 3700, "
        "discharge_power_w: 1500}"
    )
    extra_safety: dict[str, float] = field(default_factory=dict)
    # The inverter's field behaviour: hil.inverter.field's switches for the plant's command line.
    inverter_behaviour: tuple[str, ...] = ()
    # More of the plant's command line (e.g. ``--insulation-ohm``).
    plant_extra: tuple[str, ...] = ()
    # More top-level config sections, as YAML (e.g. a ``tariff:`` for the optimize fallback).
    extra_yaml: str = ""

    @property
    def lines_path(self) -> Path:
        return self.directory / "lines"

    @property
    def prefix(self) -> str:
        return f"v2g/{self.site_id}/{self.charger_id}"

    def config_yaml(self) -> str:
        if self.transport == "tcp":
            link = f"tcp: {{host: 127.0.0.1, port: {self.inverter_port}}}"
        else:
            link = f"rtu: {{device: {self.rtu_device}, baudrate: 19200}}"
        safety = {
            "max_charge_power_w": 7400,
            "max_discharge_power_w": 7400,
            "ramp_w_per_s": 5000,
            "inverter_stale_after_s": 2,
            "fault_hold_s": self.fault_hold_s,
            **self.extra_safety,
        }
        return f"""\
site: {{site_id: {self.site_id}, charger_id: {self.charger_id}, timezone: Europe/Amsterdam}}
vehicle:
  protocol: {self.protocol}
  can: {{interface: {self.can_interface}, channel: "{self.can_channel}"}}
  lines: {{kind: simulated, path: {self.lines_path}}}
  charger: {{discharge_offered: true, max_discharge_current_a: 30}}
inverter:
  transport: {self.transport}
  {link}
  timeout_s: {self.inverter_timeout_s:g}
  retries: {self.inverter_retries}
  poll_interval_s: {self.poll_interval_s:g}
  revert_timeout_s: {self.revert_timeout_s:g}
aggregator:
  broker: {{host: 127.0.0.1, port: {self.broker_port}, keepalive_s: 5}}
  reconnect_initial_s: 0.2
  reconnect_max_s: 1
  reconnect_spread_s: 0.2
  telemetry_period_s: 1
owner:
  soc_floor_pct: {self.soc_floor_pct:g}
  soc_ceiling_pct: {self.soc_ceiling_pct:g}
  departure: {{time: "{self.departure}", target_soc_pct: {self.departure_target_pct:g}}}
safety: {json.dumps(safety)}
fallback: {self.fallback}
ledger: {{path: {self.directory / "ledger.sqlite"}}}
logging: {{format: json}}
{self.extra_yaml}"""


class PlantProcess:
    """``python -m hil.plant`` as its own process; ``client`` talks to its control socket."""

    def __init__(self, args: list[str], control: Path, log_file: Path) -> None:
        self.args = args
        self.control = control
        self.log_file = log_file
        self.client = PlantClient(control)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> PlantProcess:
        self._log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil.plant", "--control", str(self.control), *self.args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.client.wait_ready(20.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class DaemonProcess:
    """``python -m controller run -c CONFIG`` as systemd would run it (without sd_notify)."""

    def __init__(self, config: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_file = log_file
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> DaemonProcess:
        self._log = self.log_file.open("ab")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop(SIMULATED_CLOCK_ENV, None)
        env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "-c", str(self.config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no stop sequence, nothing written to the inverter afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def plant_args(setup: Setup, *, soc_pct: float, mode: str, time_factor: float) -> list[str]:
    """The plant's command line for ``setup``."""
    args = [
        "--protocol",
        setup.protocol,
        "--mode",
        mode,
        "--soc",
        f"{soc_pct:g}",
        "--target-soc",
        "95",
        "--can",
        f"{setup.can_interface}:{setup.can_channel}",
        "--lines",
        str(setup.lines_path),
        "--time-factor",
        f"{time_factor:g}",
    ]
    if setup.transport == "tcp":
        args += ["--tcp", f"127.0.0.1:{setup.inverter_port}"]
    else:
        args += ["--rtu-dir", str(setup.directory)]
    return [*args, *setup.inverter_behaviour, *setup.plant_extra]


# -- the aggregator's side ---------------------------------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; the last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(every_s)
    return predicate()


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class AggregatorClient:
    """The aggregator: publishes setpoints and records what the charger publishes.

    Subscribes with "retain as published" so tests can see which messages were retained, and
    reconnects by itself when the broker restarts. With ``persistent`` its session (and the
    QoS 1 messages queued for it while it was away) survives a restart of a persistent broker.
    With ``tcp_nodelay`` its socket sends at once (paho leaves Nagle's algorithm on, which can
    hold a publish for a delayed TCP ACK, up to 40 ms). An async context manager.
    """

    def __init__(
        self,
        port: int,
        prefix: str,
        *,
        tls: ssl.SSLContext | None = None,
        persistent: bool = False,
        identifier: str | None = None,
        retry_s: float = 0.1,
        tcp_nodelay: bool = False,
    ) -> None:
        self.port = port
        self.prefix = prefix
        self.tls = tls
        self.persistent = persistent
        self.identifier = identifier or f"aggregator-{os.getpid()}"
        self.retry_s = retry_s
        self.socket_options = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),) if tcp_nodelay else ()
        self.received: list[Received] = []
        self.subscriptions = 0  # how often it (re)connected and subscribed
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await self.connected(10.0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        if self.persistent:
            properties.SessionExpiryInterval = 300
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.identifier,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    tls_context=self.tls,
                    timeout=3,
                    clean_start=not self.persistent,
                    properties=properties,
                    socket_options=self.socket_options,
                ) as client:
                    await client.subscribe(
                        f"{self.prefix}/#", options=SubscribeOptions(qos=1, retainAsPublished=True)
                    )
                    self._client = client
                    self.subscriptions += 1
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload).encode()
                        self.received.append(
                            Received(message.topic.value, data, bool(message.retain))
                        )
            except aiomqtt.MqttError:
                self._client = None
                await asyncio.sleep(self.retry_s)

    async def connected(self, timeout_s: float = 10.0) -> None:
        if not await until(lambda: self._client is not None, timeout_s):
            raise TimeoutError("aggregator client not connected")

    async def publish(
        self, suffix: str, payload: bytes | dict[str, Any], *, retain: bool = False
    ) -> None:
        await self.connected()
        assert self._client is not None
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self._client.publish(f"{self.prefix}/{suffix}", data, qos=1, retain=retain)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.received if m.topic == f"{self.prefix}/{suffix}"]

    def all_acks(self) -> list[dict[str, Any]]:
        acks: list[dict[str, Any]] = [m.json() for m in self.on("ack")]
        return acks

    def availability(self) -> list[bytes]:
        return [m.payload for m in self.on("availability")]


def setpoint(
    setpoint_id: str, power_w: float, *, ttl_s: float = 60.0, **extra: Any
) -> dict[str, Any]:
    """A setpoint issued now (real UTC: setpoint validity is on the real clock)."""
    payload: dict[str, Any] = {
        "id": setpoint_id,
        "issued_at": dt.datetime.now(dt.UTC).isoformat(),
        "ttl_s": ttl_s,
        "power_w": power_w,
    }
    payload.update(extra)
    return payload
