"""Byte budget (issue 20): bytes per day on the charger's uplink, MQTT framing included.

    python -m bench.bytes            # three simulated days (idle, charging, V2G), ~2-3 min
    python -m bench.bytes --quick    # one simulated hour of each, scaled to a day (smoke)

The charger's real aggregator link (``MqttAggregatorLink``) connects to a real mosquitto
through a TCP proxy on loopback (``bench/mqttmeter.py``) that counts the bytes in each
direction and parses every MQTT packet's fixed header (MQTT 5.0 §2.1), so the count is split
by packet type (CONNECT, PUBLISH, PUBACK, PINGREQ, ...) and each PUBLISH by its topic.

A day is simulated on a fake clock given to the link (``monotonic=``, ``wall=``): a stub
control loop feeds a ``ControlReport`` every control tick (``control.tick_s``, 0.1 s) that
follows the setpoint the link accepted, with the power ramped at ``safety.ramp_w_per_s``, the
SoC integrated, the measured power noisy and the pack voltage at 1 V resolution; the limits in
force are the core's own ``Limit`` texts (vehicle current x voltage, charger and site
ratings). An aggregator client (aiomqtt, straight to the broker) sends the profile's
setpoints, stamped on the fake wall clock. Profiles (the day runs from 12:00 to 12:00):
``idle``: plugged, nothing asked, all day; ``charging``: 7 kW from 23:00 to 05:00 (setpoints
renewed every 5 min, then a release); ``v2g``: discharge at the evening peak 17:00-20:00
(-4.5 to -7 kW, changed every 15 min), charge 23:00-05:00 (3 to 7 kW, changed every 15 min).

Time compression: the fake clock moves one tick at a time as fast as the loop allows, and
whenever the link queued something the clock waits until the broker acknowledged it, so
nothing is coalesced in the outbox that would have gone out at real speed. The link's
housekeeping (every 0.2 s of real time) reads the same fake clock; a report comes every tick,
so the periodic telemetry is decided by ``report()`` as it is at real speed. Checked in every
run: the same window of the V2G day (the evening ramp) is run at real speed and compressed,
and the telemetry counts are compared (``compression_check``).

Keepalive: the compressed day lasts seconds of real time, so no PINGREQ would go out. The
pings a day needs are computed from the keepalive (paho pings when nothing was sent for
``keepalive_s``): ``floor(gap / keepalive_s)`` per gap between the charger's packets, 2 bytes
each way (MQTT 5.0 §3.12, §3.13); pings seen in the run are left out of the measured bytes.

Estimates, not measured (loopback carries neither TLS nor a cellular link's framing): TLS 1.3
adds 22 bytes per record (5-byte header, 1 content-type byte, 16-byte AEAD tag: RFC 8446
§5.2), one record per MQTT packet; TCP/IPv4 adds 52 bytes per segment (20 IP + 20 TCP + 12
timestamp option), one segment per MQTT packet, ACK-only segments not counted. The TLS
handshake (certificates) is per connection, one a day here, and not included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from bench.mqttmeter import CountingProxy, MqttMeter
from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config, parse_config
from controller.core.rules import Direction, Limit, Rule
from controller.core.snapshots import PowerCommand, PowerState, SetpointMode
from controller.links import ControlOutput, ControlReport, LinkStatus
from hil.mosquitto import Mosquitto

DAY_S = 86_400.0
HOUR_S = 3600.0
DAY_START_H = 12.0  # the simulated day runs noon to noon: the night is in one piece
SITE_TZ = dt.timezone(dt.timedelta(hours=1))
DAY_START = dt.datetime(2026, 1, 14, 12, 0, tzinfo=SITE_TZ)
PROFILES = ("idle", "charging", "v2g")
IDLE_BUDGET_MB = 1.0  # issue 20: per day, for an idle plugged car
ACTIVE_BUDGET_MB = 5.0  # and for a night of charging or of V2G
MB = 1_000_000
TLS13_RECORD_OVERHEAD_B = 5 + 1 + 16  # RFC 8446 §5.2: header, inner content type, AEAD tag
TCP_IP_SEGMENT_OVERHEAD_B = 20 + 20 + 12  # IPv4, TCP, TCP timestamps option (Linux default)
PING_PACKET_B = 2  # PINGREQ and PINGRESP: a fixed header only (MQTT 5.0 §3.12, §3.13)
CAPACITY_WH = 75_000.0
SOC_FLOOR_PCT = 30.0
RENEW_S = 300.0  # the aggregator renews a standing setpoint this often
SETPOINT_TTL_S = 900.0
CHANGE_S = 900.0  # in V2G, the aggregator changes the power every 15 minutes
ACCEPT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 10.0
YIELD_EVERY_TICKS = 50  # let the loop (housekeeping, paho's misc loop) run at least this often
CHECK_WINDOW_S = (17.0 - DAY_START_H) * HOUR_S - 30.0  # the V2G evening ramp, 16:59:30 on
CHECK_SECONDS = {True: 5.0, False: 60.0}  # quick, full


# -- the day profiles -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """One setpoint the aggregator sends: ``power_w`` None is a release."""

    at_s: float  # since the day's start (12:00)
    power_w: float | None
    ttl_s: float = SETPOINT_TTL_S


def _at(hour: float) -> float:
    """Seconds since the day's start of a time of day (12:00 to 12:00)."""
    return ((hour - DAY_START_H) % 24.0) * HOUR_S


def _standing(start_h: float, end_h: float, powers_w: list[float], change_s: float) -> list[Order]:
    """Setpoints from ``start_h`` to ``end_h``: renewed every RENEW_S, the power cycling
    through ``powers_w`` every ``change_s``, then a release."""
    start_s, end_s = _at(start_h), _at(end_h)
    orders = []
    t_s = start_s
    while t_s < end_s:
        index = int((t_s - start_s) // change_s) % len(powers_w)
        orders.append(Order(t_s, powers_w[index]))
        t_s += RENEW_S
    orders.append(Order(end_s, None))
    return orders


def orders_for(profile: str) -> list[Order]:
    if profile == "idle":
        return []
    if profile == "charging":
        return _standing(23.0, 5.0, [7000.0], DAY_S)
    if profile == "v2g":
        evening = _standing(17.0, 20.0, [-6000.0, -7000.0, -4500.0, -5500.0], CHANGE_S)
        night = _standing(23.0, 5.0, [7000.0, 5000.0, 3000.0, 4000.0], CHANGE_S)
        return evening + night
    raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")


START_SOC_PCT = {"idle": 80.0, "charging": 25.0, "v2g": 80.0}


# -- the fake clock and the stub control loop -------------------------------------------------


@dataclass
class FakeClock:
    """Monotonic seconds since the day's start; the wall clock follows it (UTC)."""

    now_s: float = 0.0

    def monotonic(self) -> float:
        return self.now_s

    def wall(self) -> dt.datetime:
        return DAY_START.astimezone(dt.UTC) + dt.timedelta(seconds=self.now_s)

    def site_wall(self) -> dt.datetime:
        return DAY_START + dt.timedelta(seconds=self.now_s)


@dataclass
class Plant:
    """The stub control loop's model: what the core and the plant would report each tick."""

    soc_pct: float
    ramp_w_per_s: float
    tick_s: float
    rng: random.Random = field(default_factory=lambda: random.Random(20))  # noqa: S311
    commanded_w: float = 0.0

    def voltage_v(self) -> float:
        # A 96s pack: about 350 V empty, 400 V full, a little sag under load; 1 V resolution
        # (CHAdeMO 0x109 reports the output voltage in 1 V).
        return float(round(350.0 + 0.5 * self.soc_pct + self.commanded_w / 2000.0))

    def limits(self, voltage_v: float) -> tuple[Limit, ...]:
        discharge_w = 0.0 if self.soc_pct <= SOC_FLOOR_PCT else 7400.0
        return (
            Limit(
                Rule.VEHICLE_CHARGE_CURRENT,
                Direction.CHARGE,
                32 * voltage_v,
                f"vehicle max 32 A x {voltage_v:g} V",
            ),
            Limit(
                Rule.VEHICLE_DISCHARGE_CURRENT,
                Direction.DISCHARGE,
                25 * voltage_v,
                f"vehicle max 25 A x {voltage_v:g} V",
            ),
            Limit(Rule.CHARGER_RATING, Direction.CHARGE, 7400.0, "charger rated charge"),
            Limit(Rule.CHARGER_RATING, Direction.DISCHARGE, 7400.0, "charger rated discharge"),
            Limit(Rule.SITE_GRID_LIMIT, Direction.CHARGE, 11000.0, "site import limit"),
            Limit(Rule.SOC_FLOOR, Direction.DISCHARGE, discharge_w, f"floor {SOC_FLOOR_PCT:g} %"),
        )

    def step(self, link: MqttAggregatorLink, now_s: float) -> tuple[ControlOutput, float]:
        """One control cycle: follow the link's setpoint (if valid), ramped; returns the
        decision and the measured power."""
        setpoint = link.setpoint()
        following = setpoint is not None and setpoint.valid_until_s > now_s
        source = "none"
        target_w = 0.0
        setpoint_id = None
        if following and setpoint is not None:
            setpoint_id = setpoint.setpoint_id
            if setpoint.mode is SetpointMode.RELEASE:
                source = "fallback"
            else:
                source = "aggregator"
                target_w = setpoint.power_w
        if self.soc_pct <= SOC_FLOOR_PCT:
            target_w = max(target_w, 0.0)
        step_w = self.ramp_w_per_s * self.tick_s
        self.commanded_w += min(max(target_w - self.commanded_w, -step_w), step_w)
        measured_w = self.commanded_w + self.rng.gauss(0.0, 20.0 if self.commanded_w else 3.0)
        self.soc_pct += measured_w * self.tick_s / 3600.0 / CAPACITY_WH * 100.0
        self.soc_pct = min(max(self.soc_pct, 0.0), 100.0)
        voltage_v = self.voltage_v()
        limits = self.limits(voltage_v)
        state = (
            PowerState.CHARGING
            if self.commanded_w > 0
            else PowerState.DISCHARGING
            if self.commanded_w < 0
            else PowerState.IDLE
        )
        output = ControlOutput(
            command=PowerCommand(power_w=self.commanded_w, enable=self.commanded_w != 0.0),
            state=state,
            binding_limit=None,
            reasons=(),
            limits=tuple(str(limit) for limit in limits),
            limit_values=limits,
            source=source,
            setpoint_id=setpoint_id,
            requested_w=target_w,
            max_charge_w=7400.0,
            max_discharge_w=0.0 if self.soc_pct <= SOC_FLOOR_PCT else 7400.0,
            soc_floor_pct=SOC_FLOOR_PCT,
            energy_above_floor_wh=max(0.0, (self.soc_pct - SOC_FLOOR_PCT) / 100 * CAPACITY_WH),
            session_allowed=True,
        )
        return output, measured_w


# -- one simulated run ------------------------------------------------------------------------


def bench_config(port: int) -> Config:
    """The charger's config for the bench: defaults everywhere the budget depends on them."""
    return parse_config(
        f"""\
site: {{site_id: home-0421, charger_id: v2g-01}}
vehicle: {{protocol: chademo, can: {{interface: virtual, channel: bench}}}}
inverter: {{transport: tcp, tcp: {{host: 127.0.0.1}}}}
aggregator:
  broker: {{host: 127.0.0.1, port: {port}}}
"""
    )


class Aggregator:
    """The aggregator's side: sends the profile's setpoints (straight to the broker) and
    consumes what the charger publishes (a record delivered to nobody would be kept and sent
    again by the charger, which is not the day being measured)."""

    def __init__(self, port: int, topic: str) -> None:
        self._client = aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="bench-bytes-aggregator",
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        self.topic = topic
        self.sent = 0
        self.received = 0
        self._consumer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Aggregator:
        await self._client.__aenter__()
        prefix = self.topic.rsplit("/", 1)[0]
        await self._client.subscribe(f"{prefix}/#", qos=1)
        self._consumer = asyncio.create_task(self._consume(), name="bench-bytes-consumer")
        return self

    async def _consume(self) -> None:
        async for _ in self._client.messages:
            self.received += 1

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        await self._client.__aexit__(None, None, None)

    async def send(self, order: Order, wall: dt.datetime) -> None:
        self.sent += 1
        body: dict[str, Any] = {
            "id": f"sp-{self.sent:05d}",
            "issued_at": wall.isoformat(),
            "ttl_s": order.ttl_s,
        }
        if order.power_w is None:
            body["mode"] = "release"
        else:
            body["power_w"] = order.power_w
        await self._client.publish(self.topic, json.dumps(body).encode(), qos=1)


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench.bytes: {what} within {timeout_s:g} s")
        await asyncio.sleep(0)


@dataclass
class RunResult:
    up: MqttMeter
    down: MqttMeter
    simulated_s: float
    real_s: float
    connects: int
    reads: dict[str, int]


async def simulate(
    broker_port: int,
    profile: str,
    *,
    start_s: float,
    duration_s: float,
    speed: float | None,
) -> RunResult:
    """Run ``profile`` from ``start_s`` for ``duration_s`` simulated seconds; ``speed`` None is
    as fast as the loop goes (compressed), 1.0 is real time."""
    clock = FakeClock(start_s)
    defaults = bench_config(broker_port)
    tick_s = defaults.control.tick_s
    plant = Plant(START_SOC_PCT[profile], defaults.safety.ramp_w_per_s, tick_s)
    orders = [o for o in orders_for(profile) if start_s <= o.at_s < start_s + duration_s]
    # A standing setpoint from before the window is in force at its start.
    earlier = [o for o in orders_for(profile) if o.at_s < start_s]
    if earlier and earlier[-1].at_s + earlier[-1].ttl_s > start_s:
        orders.insert(0, Order(start_s, earlier[-1].power_w))
    async with CountingProxy(broker_port, now=clock.monotonic) as proxy:
        config = bench_config(proxy.port)
        link = MqttAggregatorLink(
            config.aggregator,
            topic_prefix=config.topic_prefix,
            client_id=f"bench-bytes-{profile}",
            monotonic=clock.monotonic,
            wall=clock.wall,
        )
        async with Aggregator(broker_port, link.topics.setpoint) as aggregator:
            task = asyncio.create_task(link.run(lambda: None), name="bench-bytes-link")
            try:
                await _until(lambda: link.status is LinkStatus.UP, 10.0, "the link came up")
                real_start_s = time.monotonic()
                await _drive(
                    link,
                    aggregator,
                    plant=plant,
                    clock=clock,
                    orders=orders,
                    duration_s=duration_s,
                    tick_s=tick_s,
                    speed=speed,
                )
                real_s = time.monotonic() - real_start_s
            finally:
                task.cancel()
                # gather, not suppress: a cancel aimed at this caller must not be swallowed.
                await asyncio.gather(task, return_exceptions=True)
        connection = proxy.connections[0]
        return RunResult(
            connection.up,
            connection.down,
            duration_s,
            real_s,
            link.connects,
            dict(connection.reads),
        )


def _answered(link: MqttAggregatorLink, before: int) -> Callable[[], bool]:
    return lambda: link.accepted + link.rejected > before


async def _drive(
    link: MqttAggregatorLink,
    aggregator: Aggregator,
    *,
    plant: Plant,
    clock: FakeClock,
    orders: list[Order],
    duration_s: float,
    tick_s: float,
    speed: float | None,
) -> None:
    start_s = clock.now_s
    ticks = round(duration_s / tick_s)
    pending = list(reversed(orders))
    real_start_s = time.monotonic()
    outbox = link.outbox
    for tick in range(1, ticks + 1):
        clock.now_s = start_s + tick * tick_s
        while pending and pending[-1].at_s <= clock.now_s:
            order = pending.pop()
            answered = link.accepted + link.rejected
            await aggregator.send(order, clock.wall())
            await _until(_answered(link, answered), ACCEPT_TIMEOUT_S, "the link took the setpoint")
            if link.rejected:
                raise RuntimeError("bench.bytes: the link rejected a bench setpoint")
        output, measured_w = plant.step(link, clock.now_s)
        link.report(
            ControlReport(
                monotonic_s=clock.now_s,
                wall=clock.site_wall(),
                output=output,
                measured_power_w=measured_w,
                soc_pct=round(plant.soc_pct, 1),
                voltage_v=plant.voltage_v(),
            )
        )
        if len(outbox):
            # Wait for the broker's PUBACK: at real speed it comes long before the next tick.
            await _until(lambda: not len(outbox), DRAIN_TIMEOUT_S, "the broker acknowledged")
        elif tick % YIELD_EVERY_TICKS == 0:
            await asyncio.sleep(0)
        if speed is not None:
            ahead_s = (clock.now_s - start_s) / speed - (time.monotonic() - real_start_s)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)


# -- figures ----------------------------------------------------------------------------------


def pings_per_day(times_s: list[float], start_s: float, end_s: float, keepalive_s: float) -> int:
    """PINGREQs paho would send: one per ``keepalive_s`` the charger sent nothing."""
    edges = [start_s, *sorted(times_s), end_s]
    return sum(int((b - a) // keepalive_s) for a, b in itertools.pairwise(edges))


def _without_pings(meter: MqttMeter) -> tuple[int, int]:
    """(bytes, packets) of a meter, PINGREQ and PINGRESP left out."""
    ping = sum(
        meter.by_type[name].bytes for name in ("PINGREQ", "PINGRESP") if name in meter.by_type
    )
    pings = sum(
        meter.by_type[name].count for name in ("PINGREQ", "PINGRESP") if name in meter.by_type
    )
    return meter.total_bytes - ping, sum(t.count for t in meter.by_type.values()) - pings


def figures_for(result: RunResult, keepalive_s: float, start_s: float) -> dict[str, Any]:
    scale = DAY_S / result.simulated_s
    pings = pings_per_day(
        result.up.packet_times, start_s, start_s + result.simulated_s, keepalive_s
    )
    up_bytes, up_packets = _without_pings(result.up)
    down_bytes, down_packets = _without_pings(result.down)
    up_day = (up_bytes + pings * PING_PACKET_B) * scale
    down_day = (down_bytes + pings * PING_PACKET_B) * scale
    packets_day = (up_packets + down_packets + 2 * pings) * scale
    telemetry = result.up.by_topic.get("telemetry")
    return {
        "simulated_h": round(result.simulated_s / HOUR_S, 2),
        "scaled_to_day": scale != 1.0,
        "real_s": round(result.real_s, 1),
        "connects": result.connects,
        "bytes_per_day": {
            "up": round(up_day),
            "down": round(down_day),
            "total": round(up_day + down_day),
        },
        "mb_per_day": round((up_day + down_day) / MB, 3),
        "packets_per_day": round(packets_day),
        "telemetry_records_per_day": round((telemetry.count if telemetry else 0) * scale),
        "telemetry_mean_bytes": round(telemetry.bytes / telemetry.count) if telemetry else None,
        "keepalive_pings_per_day": round(pings * scale),
        "up": result.up.summary(),
        "down": result.down.summary(),
        "estimates": {
            "tls13_records_bytes_per_day": round(packets_day * TLS13_RECORD_OVERHEAD_B),
            "tcp_ip_headers_bytes_per_day": round(packets_day * TCP_IP_SEGMENT_OVERHEAD_B),
            "total_with_tls_tcp_mb_per_day": round(
                (
                    up_day
                    + down_day
                    + packets_day * (TLS13_RECORD_OVERHEAD_B + TCP_IP_SEGMENT_OVERHEAD_B)
                )
                / MB,
                3,
            ),
        },
    }


NOTE = (
    "bytes per day on the wire between one charger's real aggregator link and a real "
    "mosquitto, counted by a TCP proxy that parses every MQTT packet (framing included); a day "
    "simulated on a fake clock given to the link, a ControlReport every control tick from a "
    "stub control loop following the aggregator's setpoints; keepalive pings computed from the "
    "keepalive; TLS 1.3 and TCP/IP overheads estimated per packet, not measured."
)


async def _measure(
    workdir: Path, quick: bool, profiles: tuple[str, ...], simulated_s: float | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Mosquitto(workdir / "broker") as broker:
        config = bench_config(broker.port)
        broker_config = config.aggregator.broker
        assert broker_config is not None  # bench_config has one
        keepalive_s = float(broker_config.keepalive_s)
        # quick: the hour around the start of the night's charging, scaled to a day.
        start_s, duration_s = (_at(22.5), HOUR_S) if quick else (0.0, DAY_S)
        if simulated_s is not None:
            duration_s = simulated_s
        for profile in profiles:
            result = await simulate(
                broker.port, profile, start_s=start_s, duration_s=duration_s, speed=None
            )
            out[profile] = figures_for(result, keepalive_s, start_s)
            print(f"bench.bytes: {profile}: {out[profile]['mb_per_day']} MB/day", file=sys.stderr)
        window_s = CHECK_SECONDS[quick]
        counts = {}
        for label, speed in (("real_speed", 1.0), ("compressed", None)):
            result = await simulate(
                broker.port,
                "v2g",
                start_s=CHECK_WINDOW_S,
                duration_s=window_s,
                speed=speed,
            )
            telemetry = result.up.by_topic.get("telemetry")
            counts[label] = telemetry.count if telemetry else 0
        out["compression_check"] = {
            "window": "V2G, 16:59:30 on (the evening ramp)",
            "simulated_s": window_s,
            "telemetry_records": counts,
            "equal": counts["real_speed"] == counts["compressed"],
        }
    out["settings"] = {
        "tick_s": config.control.tick_s,
        "telemetry_period_s": config.aggregator.telemetry_period_s,
        "keepalive_s": keepalive_s,
        "topic_prefix": config.topic_prefix,
        "budget_mb_per_day": {"idle": IDLE_BUDGET_MB, "active": ACTIVE_BUDGET_MB},
    }
    return out


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """The link's lines below ``level`` (info: one per setpoint) off while the bench runs; the
    rest go to stderr. The previous structlog configuration is put back afterwards."""
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def run(
    *,
    workdir: Path,
    quick: bool = False,
    profiles: tuple[str, ...] = PROFILES,
    simulated_s: float | None = None,
) -> dict[str, Any]:
    """The byte budget's figures: ``{"bytes": {profile: {...}, ...}}`` (module docstring).
    ``quick``: one simulated hour per profile from 22:30, scaled to a day; ``simulated_s``
    overrides the length."""
    for profile in profiles:
        orders_for(profile)  # an unknown name fails here, before anything starts
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    with quiet_logs():
        figures = asyncio.run(_measure(workdir, quick, profiles, simulated_s))
    return {"bytes": figures, "note": NOTE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bytes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one simulated hour per profile")
    parser.add_argument("--profile", choices=PROFILES, action="append", help="only these days")
    parser.add_argument(
        "--hours", type=float, default=None, help="simulated hours per profile (scaled to a day)"
    )
    args = parser.parse_args(argv)
    if args.hours is not None and not 0 < args.hours <= 24:
        parser.error(f"--hours: expected more than 0 and at most 24, found {args.hours:g}")
    import tempfile  # noqa: PLC0415  only for the command line

    with tempfile.TemporaryDirectory(prefix="bench-bytes-") as workdir:
        figures = run(
            workdir=Path(workdir),
            quick=args.quick,
            profiles=tuple(args.profile or PROFILES),
            simulated_s=None if args.hours is None else args.hours * HOUR_S,
        )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
