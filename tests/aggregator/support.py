"""Helpers for the aggregator tests: the aggregator's side of the broker, and the link."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config, parse_config
from controller.core.snapshots import PowerCommand, PowerState
from controller.links import ControlOutput, ControlReport, LinkStatus
from hil.harness import AggregatorClient
from hil.harness import until as hil_until

PREFIX = "v2g/site-1/c1"


def make_config(port: int, aggregator_extra: str = "", broker_extra: str = "") -> Config:
    """A config whose aggregator section points at a local broker, with fast reconnects."""
    text = f"""\
site: {{site_id: site-1, charger_id: c1}}
vehicle: {{protocol: chademo, can: {{interface: virtual, channel: t}}}}
inverter: {{transport: tcp, tcp: {{host: 127.0.0.1}}}}
aggregator:
  broker: {{host: 127.0.0.1, port: {port}, keepalive_s: 5{broker_extra}}}
  reconnect_initial_s: 0.1
  reconnect_max_s: 0.5
  reconnect_spread_s: 0.2
  telemetry_period_s: 1
{aggregator_extra}"""
    return parse_config(text)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def setpoint(
    setpoint_id: str,
    power_w: float = -3000.0,
    *,
    ttl_s: float = 60.0,
    issued_at: dt.datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    issued = issued_at if issued_at is not None else now_utc()
    payload: dict[str, Any] = {
        "id": setpoint_id,
        "issued_at": issued.isoformat(),
        "ttl_s": ttl_s,
        "power_w": power_w,
    }
    payload.update(extra)
    return payload


def report(
    setpoint_id: str | None = None,
    commanded_w: float = 0.0,
    *,
    state: PowerState = PowerState.IDLE,
    source: str = "none",
    binding_limit: str | None = None,
    faults: tuple[str, ...] = (),
    soc_pct: float | None = 60.0,
) -> ControlReport:
    return ControlReport(
        monotonic_s=time.monotonic(),
        wall=now_utc(),
        output=ControlOutput(
            command=PowerCommand(power_w=commanded_w, enable=commanded_w != 0),
            state=state,
            binding_limit=binding_limit,
            reasons=(),
            limits=(binding_limit,) if binding_limit else (),
            source=source,
            setpoint_id=setpoint_id,
            max_charge_w=7400.0,
            max_discharge_w=7400.0,
            soc_floor_pct=40.0,
            energy_above_floor_wh=9000.0,
            faults=faults,
        ),
        measured_power_w=commanded_w,
        soc_pct=soc_pct,
        voltage_v=380.0,
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll a condition from inside the event loop (the hil harness's, at a finer step)."""
    return await hil_until(predicate, timeout_s, every_s=0.01)


class Aggregator(AggregatorClient):
    """The aggregator's side in these tests: the hil harness's client on this test prefix."""

    def __init__(
        self, port: int, tls: ssl.SSLContext | None = None, *, persistent: bool = False
    ) -> None:
        super().__init__(
            port,
            PREFIX,
            tls=tls,
            persistent=persistent,
            identifier="aggregator-under-test",
            retry_s=0.05,
        )

    def acks(self, setpoint_id: str | None) -> list[dict[str, Any]]:
        return [a for a in (m.json() for m in self.on("ack")) if a["id"] == setpoint_id]

    async def ack(self, setpoint_id: str | None, timeout_s: float = 5.0) -> dict[str, Any]:
        assert await until(lambda: bool(self.acks(setpoint_id)), timeout_s), (
            f"no ack for {setpoint_id!r}; received {[m.payload for m in self.on('ack')]}"
        )
        return self.acks(setpoint_id)[-1]

    def availability(self) -> list[bytes]:
        return [m.payload for m in self.on("availability")]


class LinkRunner:
    """Runs a link's ``run()`` as a task and stops it on exit; counts wakes."""

    def __init__(self, link: MqttAggregatorLink) -> None:
        self.link = link
        self.wakes = 0
        self._task: asyncio.Task[None] | None = None

    def _wake(self) -> None:
        self.wakes += 1

    async def __aenter__(self) -> MqttAggregatorLink:
        self._task = asyncio.create_task(self.link.run(self._wake))
        return self.link

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def up(self, timeout_s: float = 5.0) -> None:
        assert await until(lambda: self.link.status is LinkStatus.UP, timeout_s), (
            f"link not up: {self.link.status} {self.link.reason}"
        )


def make_link(config: Config, **kwargs: Any) -> MqttAggregatorLink:
    """The link as the app builds it, with a short connect timeout for tests."""
    kwargs.setdefault("connect_timeout_s", 2.0)
    return MqttAggregatorLink(
        config.aggregator, topic_prefix=config.topic_prefix, client_id="c1-under-test", **kwargs
    )
