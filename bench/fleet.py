"""A thousand chargers against one broker (issue 20): setpoint fan-out, a broker restart, load.

    python -m bench.fleet                          # 1,000 links in 2 processes, about 3 min
    python -m bench.fleet --quick                  # 20 links (smoke)
    python -m bench.fleet --reconnect-spread-s 30  # the link's reconnect spread, if it has one

No daemons: each charger is the real ``MqttAggregatorLink`` with a stub control loop that
reports a ``ControlReport`` every ``STUB_TICK_S`` (and at once when the link wakes it, as the
daemon's loop does), following the setpoint the link accepted (ramped, as in
``bench/bytes.py``), so each ack carries an applied power. The links run in a few processes
(``multiprocessing``, one asyncio loop each) against one mosquitto started here
(``max_connections -1``; the open-file limit raised for it and for the links). Timestamps are
``time.monotonic()``, which on Linux is one clock for every process.

(a) Setpoint fan-out: the aggregator (an aiomqtt client in the parent, MQTT 5, QoS 1, as many
    publishes in flight as chargers, TCP_NODELAY) sends one setpoint to every charger at once;
    each latency runs from just before its publish to its ack arriving at the aggregator, and
    is split at the moment the link accepted the setpoint (its control loop is woken then).
    The broker runs with ``max_inflight_messages 0``: the aggregator is one client hearing the
    whole fleet, and mosquitto's default window of 20 unacknowledged messages per client would
    measure that consumer. On a 2-core machine the 1,000 links' Python shares the cores with
    the broker and the aggregator, so these times are an upper bound set by the bench; the
    CPU each used meanwhile is reported beside them.
(b) Broker restart: mosquitto is stopped (SIGTERM) and started again on the same port; each
    link stamps its own reconnects (the link wakes its control loop when it comes up). The
    arrivals are counted per second from the moment the broker listens again, and in the
    busiest sliding one-second window (as % of the fleet; goal <= 5 %), with the time until
    every charger is back. ``--reconnect-spread-s`` sets the link's
    ``aggregator.reconnect_spread_s`` (without it, the default applies; 0 is the plain
    backoff, a first wait of 0.5-1 s).
(c) Steady state, every charger following its setpoint: the broker's CPU from
    ``/proc/<pid>/stat`` (utime + stime) over three telemetry periods, as % of one core, and
    the publishes per second into the broker, counted by the aggregator, which subscribes to
    everything the chargers publish (telemetry at the configured period; a quick run sets
    1 s and measures two periods).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import resource
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiomqtt

from bench.bytes import Plant, quiet_logs
from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config, parse_config
from controller.links import ControlReport, LinkStatus
from hil.mosquitto import Mosquitto

# steady_s: the window, three telemetry periods; a quick run shortens the period (None: the
# config's default).
FULL: dict[str, Any] = {"chargers": 1000, "processes": 2, "periods": 3, "telemetry_period_s": None}
QUICK: dict[str, Any] = {"chargers": 20, "processes": 2, "periods": 2, "telemetry_period_s": 1.0}
STUB_TICK_S = 1.0  # the stub's report period (the daemon's is 0.1 s: the telemetry is the same)
START_STAGGER_S = 0.004  # between two links' first connects in one process (a fleet boots apart)
UP_TIMEOUT_S = 180.0
ACK_TIMEOUT_S = 60.0
SETPOINT_W = 3000.0
SETPOINT_TTL_S = 900.0
BROKER_INFLIGHT = 0  # mosquitto: no limit on unacknowledged QoS 1 messages per client
REGION = "fleet"  # every charger's prefix is v2g/fleet-NNNN/c1
RESTART_GOAL_PCT = 5.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def prefix(number: int) -> str:
    return f"v2g/{REGION}-{number:04d}/c1"


def raise_open_files() -> int:
    """The soft open-file limit raised to the hard one (1,000 sockets and then some)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """utime + stime of a process in seconds (proc(5): fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


class FleetBroker(Mosquitto):
    """mosquitto for a fleet: no connection cap, deep queues for the aggregator, and only the
    log lines of connections (a debug line per message would load the broker we measure)."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_file.read_text(encoding="utf-8")
        levels = "".join(f"log_type {kind}\n" for kind in ("error", "warning", "notice"))
        text = text.replace("log_type all\n", levels)
        # After the listener line: max_connections is per listener (mosquitto.conf(5)). The
        # aggregator is one client hearing a thousand: with mosquitto's default window of 20
        # unacknowledged QoS 1 messages per client (max_inflight_messages), the fan-out's acks
        # queue behind the telemetry in that window and the figure measures the consumer.
        text += (
            f"max_connections -1\nmax_queued_messages 100000\n"
            f"max_inflight_messages {BROKER_INFLIGHT}\n"
        )
        self.config_file.write_text(text, encoding="utf-8")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


def fleet_config(port: int, spread_s: float | None, period_s: float | None = None) -> Config:
    telemetry = f"  telemetry_period_s: {period_s}\n" if period_s is not None else ""
    spread = f"  reconnect_spread_s: {spread_s}\n" if spread_s is not None else ""
    return parse_config(
        f"""\
site: {{site_id: fleet, charger_id: c1}}
vehicle: {{protocol: chademo, can: {{interface: virtual, channel: bench}}}}
inverter: {{transport: tcp, tcp: {{host: 127.0.0.1}}}}
aggregator:
  broker: {{host: 127.0.0.1, port: {port}}}
{spread}{telemetry}"""
    )


# -- the chargers (in the child processes) ----------------------------------------------------


class StubCharger:
    """One link and the stub control loop that reports to it."""

    def __init__(self, config: Config, number: int) -> None:
        self.link = MqttAggregatorLink(
            config.aggregator, topic_prefix=prefix(number), client_id=f"v2g-{REGION}-{number:04d}"
        )
        self.plant = Plant(60.0, config.safety.ramp_w_per_s, STUB_TICK_S)
        self.connect_times: list[float] = []
        self.accepted_times: dict[str, float] = {}  # setpoint id: when the link accepted it
        self._connects_seen = 0
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _wake(self) -> None:
        # The link wakes its control loop when it comes up: that is the reconnect's stamp.
        if self.link.connects != self._connects_seen:
            self._connects_seen = self.link.connects
            self.connect_times.append(time.monotonic())
        setpoint = self.link.setpoint()
        if setpoint is not None and setpoint.setpoint_id not in self.accepted_times:
            self.accepted_times[setpoint.setpoint_id] = time.monotonic()
        self._woken.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.link.run(self._wake)),
            asyncio.create_task(self._control()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _control(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STUB_TICK_S):
                    await self._woken.wait()
            self._woken.clear()
            now_s = time.monotonic()
            output, measured_w = self.plant.step(self.link, now_s)
            self.link.report(
                ControlReport(
                    monotonic_s=now_s,
                    wall=dt.datetime.now(dt.UTC).astimezone(),
                    output=output,
                    measured_power_w=measured_w,
                    soc_pct=round(self.plant.soc_pct, 1),
                    voltage_v=self.plant.voltage_v(),
                )
            )


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """What one child process runs: chargers ``first`` .. ``first + count - 1``."""

    first: int
    count: int
    port: int
    spread_s: float | None
    period_s: float | None


def child_main(conn: Connection, plan: ChildPlan) -> None:
    """A child process: the chargers of ``plan``; answers the parent's commands ("status",
    "connects", "accepted", "stop") over ``conn``."""
    raise_open_files()
    # Errors only: a restart makes every link warn that it lost the broker.
    with quiet_logs(logging.ERROR):
        asyncio.run(_child(conn, plan))


async def _child(conn: Connection, plan: ChildPlan) -> None:
    first, count = plan.first, plan.count
    config = fleet_config(plan.port, plan.spread_s, plan.period_s)
    baseline_mb = rss_mb()
    chargers = [StubCharger(config, number) for number in range(first, first + count)]
    for charger in chargers:
        charger.start()
        await asyncio.sleep(START_STAGGER_S)
    try:
        while True:
            command = await asyncio.to_thread(conn.recv)
            if command == "status":
                conn.send(
                    {
                        "up": sum(c.link.status is LinkStatus.UP for c in chargers),
                        "connects": [c.link.connects for c in chargers],
                        "rss_mb": rss_mb(),
                        "baseline_rss_mb": baseline_mb,
                    }
                )
            elif command == "connects":
                conn.send([t for c in chargers for t in c.connect_times])
            elif command == "accepted":
                conn.send({i: t for c in chargers for i, t in c.accepted_times.items()})
            elif command == "stop":
                break
    finally:
        await asyncio.gather(*(c.stop() for c in chargers))
        conn.send({"rss_mb": rss_mb()})


# -- the aggregator and the measurements (the parent) -----------------------------------------


class FleetAggregator:
    """The aggregator: one aiomqtt client that sends setpoints and hears everything."""

    def __init__(self, port: int, chargers: int) -> None:
        # aiomqtt warns about every publish beyond ten in flight: a fan-out is a thousand.
        quiet = logging.getLogger("bench.fleet.aggregator")
        quiet.setLevel(logging.ERROR)
        self._client = aiomqtt.Client(
            "127.0.0.1",
            port,
            logger=quiet,
            identifier="bench-fleet-aggregator",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=max(20, chargers),
            max_queued_outgoing_messages=0,
            # Nagle off, as the link and the broker run (bench/latency.py: paho leaves it on).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        self.received = 0
        self.acks: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FleetAggregator:
        await self._client.__aenter__()
        await self._client.subscribe("v2g/+/c1/+", qos=1)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        while True:
            try:
                async for message in self._client.messages:
                    arrived_s = time.monotonic()
                    self.received += 1
                    if message.topic.value.endswith("/ack") and isinstance(message.payload, bytes):
                        ack_id = json.loads(message.payload).get("id")
                        if isinstance(ack_id, str):
                            self.acks.setdefault(ack_id, arrived_s)
            except aiomqtt.MqttError:
                return  # the broker went away: the caller reconnects with a new aggregator

    async def fan_out(self, numbers: range, tag: str) -> dict[str, float]:
        """One setpoint to every charger at once; returns the send time of each id."""
        issued = dt.datetime.now(dt.UTC).isoformat()
        sent: dict[str, float] = {}

        async def one(number: int) -> None:
            setpoint_id = f"{tag}-{number:04d}"
            body = {"id": setpoint_id, "issued_at": issued, "ttl_s": SETPOINT_TTL_S}
            body["power_w"] = SETPOINT_W
            sent[setpoint_id] = time.monotonic()
            await self._client.publish(
                f"{prefix(number)}/setpoint", json.dumps(body).encode(), qos=1
            )

        await asyncio.gather(*(one(number) for number in numbers))
        return sent


def spread_ms(values_s: list[float]) -> dict[str, float]:
    """p50, p99 (nearest rank) and max in ms."""
    if not values_s:
        return {"n": 0}
    ordered = sorted(values_s)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": rank(1.0), "n": len(ordered)}


def busiest_second(times_s: list[float]) -> int:
    """The most arrivals in any window [t, t + 1 s)."""
    ordered = sorted(times_s)
    best, start = 0, 0
    for end, t_s in enumerate(ordered):
        while t_s - ordered[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


class Fleet:
    """The child processes and their pipes."""

    def __init__(
        self,
        chargers: int,
        processes: int,
        port: int,
        spread: float | None,
        period_s: float | None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        share = math.ceil(chargers / processes)
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            first, count = index * share, min(share, chargers - index * share)
            if count <= 0:
                continue
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=child_main,
                args=(child_end, ChildPlan(first, count, port, spread, period_s)),
                name=f"bench-fleet-{index}",
                daemon=True,
            )
            process.start()
            self.pipes.append(parent_end)
            self.processes.append(process)

    async def ask(self, command: str) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(command)
        return [await asyncio.to_thread(pipe.recv) for pipe in self.pipes]

    async def up(self) -> int:
        return sum(answer["up"] for answer in await self.ask("status"))

    async def connects(self) -> list[int]:
        return [n for answer in await self.ask("status") for n in answer["connects"]]

    async def stop(self) -> list[float | None]:
        rss = [answer["rss_mb"] for answer in await self.ask("stop")]
        for process in self.processes:
            process.join(10.0)
            if process.is_alive():
                process.kill()
        return rss

    def kill(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()


async def _wait(predicate: Any, timeout_s: float, what: str) -> float:
    """Poll an async predicate every 50 ms; returns the time it took."""
    start_s = time.monotonic()
    while not await predicate():
        if time.monotonic() - start_s > timeout_s:
            raise RuntimeError(f"bench.fleet: {what} within {timeout_s:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start_s


async def _measure(
    workdir: Path,
    chargers: int,
    processes: int,
    counts: dict[str, Any],
    spread: float | None,
) -> dict[str, Any]:
    numbers = range(chargers)
    out: dict[str, Any] = {
        "chargers": chargers,
        "processes": processes,
        "stub_tick_s": STUB_TICK_S,
        "broker_max_inflight_messages": BROKER_INFLIGHT,
        "reconnect_spread": {"requested_s": spread},
    }
    broker = FleetBroker(workdir / "broker")
    broker.start()
    fleet = Fleet(chargers, processes, broker.port, spread, counts["telemetry_period_s"])
    try:
        out["all_up_s"] = round(
            await _wait(lambda: _all_up(fleet, chargers), UP_TIMEOUT_S, "every link came up"), 1
        )
        config = fleet_config(broker.port, spread, counts["telemetry_period_s"])
        out["telemetry_period_s"] = config.aggregator.telemetry_period_s
        out["reconnect_initial_s"] = config.aggregator.reconnect_initial_s
        async with FleetAggregator(broker.port, chargers) as aggregator:
            await asyncio.sleep(2.0)
            # (a) one setpoint to every charger.
            cpu_before = _cpu(fleet, broker)
            sent = await aggregator.fan_out(numbers, "fan")
            await _wait(lambda: _acked(aggregator, sent), ACK_TIMEOUT_S, "every setpoint was acked")
            cpu_used = {
                key: round(_cpu(fleet, broker)[key] - value, 2) for key, value in cpu_before.items()
            }
            latencies = [aggregator.acks[i] - sent[i] for i in sent]
            accepted = {i: t for batch in await fleet.ask("accepted") for i, t in batch.items()}
            out["fan_out"] = {
                # Publish to the link accepting it (the setpoint's way in), and on to the ack.
                "delivered_ms": spread_ms([accepted[i] - sent[i] for i in sent if i in accepted]),
                "accepted_to_ack_ms": spread_ms(
                    [aggregator.acks[i] - accepted[i] for i in sent if i in accepted]
                ),
                "cpu_s": cpu_used,
                "ack_ms": spread_ms(latencies),
                "all_acked_s": round(max(aggregator.acks[i] for i in sent) - min(sent.values()), 3),
                "publish_s": round(max(sent.values()) - min(sent.values()), 3),
            }
            # (c) steady state: every charger follows its setpoint; telemetry at the period.
            period_s = config.aggregator.telemetry_period_s
            await asyncio.sleep(period_s + 1.0)
            assert broker.pid is not None  # started above
            cpu_before, count_before = _cpu(fleet, broker), aggregator.received
            start_s = time.monotonic()
            await asyncio.sleep(counts["periods"] * period_s)
            elapsed_s = time.monotonic() - start_s
            cpu_after, count_after = _cpu(fleet, broker), aggregator.received
            cpu_pct = {
                key: round((cpu_after[key] - value) / elapsed_s * 100, 2)
                for key, value in cpu_before.items()
            }
            out["steady"] = {
                "window_s": round(elapsed_s, 1),
                "broker_cpu_pct": cpu_pct["broker"],
                "cpu_pct": cpu_pct,
                "publishes_per_s": round((count_after - count_before) / elapsed_s, 1),
                "broker_rss_mb": rss_mb(broker.pid),
            }
        statuses = await fleet.ask("status")
        grown = [a["rss_mb"] - a["baseline_rss_mb"] for a in statuses if a["rss_mb"]]
        out["rss_mb"] = {
            "link_processes": [a["rss_mb"] for a in statuses],
            "link_process_before_links": [a["baseline_rss_mb"] for a in statuses],
            "per_link_kb": round(sum(grown) * 1024 / chargers, 1),
            "parent": rss_mb(),
        }
        # (b) the broker restarts on the same port.
        connects_before = await fleet.connects()
        down_s = time.monotonic()
        broker.stop()
        broker.start()
        listening_s = time.monotonic()
        await _wait(
            lambda: _all_reconnected(fleet, connects_before),
            UP_TIMEOUT_S + (spread or 0.0),
            "every link reconnected",
        )
        times = [t for batch in await fleet.ask("connects") for t in batch if t > down_s]
        out["restart"] = _restart_figures(times, chargers, down_s, listening_s)
        out["rss_mb"]["link_processes_at_end"] = await fleet.stop()
    finally:
        fleet.kill()
        broker.stop()
    return out


def _restart_figures(
    times: list[float], chargers: int, down_s: float, listening_s: float
) -> dict[str, Any]:
    per_second: list[int] = []
    for t_s in times:
        second = max(0, int(t_s - listening_s))
        per_second += [0] * (second + 1 - len(per_second))
        per_second[second] += 1
    busiest = busiest_second(times)
    return {
        "broker_down_s": round(listening_s - down_s, 3),
        "reconnects": len(times),
        "arrivals_per_s": per_second,
        "busiest_second": busiest,
        "busiest_second_pct": round(busiest / chargers * 100, 1),
        "goal_pct": RESTART_GOAL_PCT,
        "all_back_s": round(max(times) - listening_s, 2) if times else None,
    }


def _cpu(fleet: Fleet, broker: FleetBroker | None = None) -> dict[str, float]:
    """CPU seconds used so far by the link processes, this process and the broker."""
    used = {
        "link_processes": sum(cpu_s(p.pid) for p in fleet.processes if p.pid is not None),
        "aggregator_process": cpu_s(os.getpid()),
    }
    if broker is not None and broker.pid is not None:
        used["broker"] = cpu_s(broker.pid)
    return used


async def _all_up(fleet: Fleet, chargers: int) -> bool:
    return await fleet.up() >= chargers


async def _acked(aggregator: FleetAggregator, sent: dict[str, float]) -> bool:
    return all(i in aggregator.acks for i in sent)


async def _all_reconnected(fleet: Fleet, before: list[int]) -> bool:
    statuses = await fleet.ask("status")
    now = [n for answer in statuses for n in answer["connects"]]
    up = sum(answer["up"] for answer in statuses)
    return up >= len(before) and all(b > a for a, b in zip(before, now, strict=True))


NOTE = (
    "1,000 real aggregator links with stub control loops in 2 processes against one mosquitto "
    "started by the bench: (a) the aggregator (aiomqtt) sends one setpoint to every charger, "
    "time from each publish to its ack at the aggregator; (b) the broker is stopped and "
    "started on the same port, reconnects stamped by the links themselves, counted per second "
    "and in the busiest one-second window; (c) at steady state, the broker's utime+stime from "
    "/proc over a window and the publishes per second the aggregator receives."
)


def run(
    *,
    workdir: Path,
    quick: bool = False,
    chargers: int | None = None,
    processes: int | None = None,
    reconnect_spread_s: float | None = None,
) -> dict[str, Any]:
    """The fleet's figures: ``{"fleet": {...}}`` (see the module docstring)."""
    counts = QUICK if quick else FULL
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    raise_open_files()
    with quiet_logs():
        figures = asyncio.run(
            _measure(
                workdir,
                int(chargers or counts["chargers"]),
                int(processes or counts["processes"]),
                counts,
                reconnect_spread_s,
            )
        )
    return {"fleet": figures, "note": NOTE}


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import tempfile  # noqa: PLC0415  only for the command line

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as directory:
        yield Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 chargers, short windows")
    parser.add_argument("--chargers", type=int, default=None)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--reconnect-spread-s", type=float, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    with _workdir(args.workdir) as workdir:
        figures = run(
            workdir=workdir,
            quick=args.quick,
            chargers=args.chargers,
            processes=args.processes,
            reconnect_spread_s=args.reconnect_spread_s,
        )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
