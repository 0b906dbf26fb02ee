"""Latency benchmarks (issue 8): fault reaction and setpoint latency, each beside its floor.

Everything runs as it does on a charger, as separate processes on one host: the real daemon
(``python -m controller run``), the plant (a simulated GB/T 27930 car on CAN and the SunSpec
100-series inverter simulator on Modbus TCP, ``hil.plant``) and a real mosquitto. Timestamps are
``time.monotonic_ns()`` everywhere: CLOCK_MONOTONIC is system-wide on Linux, so a time taken in
the plant and one taken here are on the same clock. The plant logs what it sent and what was
written to it, and this process reads those logs over the plant's control socket after each
trial (``{"cmd": "trace"}``), never inside the window being measured if it can help it.

Fault reaction (``fault_reaction_ms``)
    Start: the simulated car's BMS puts the first BSM (GB/T 27930 PGN 0x1300, id 0x181356F4)
    with "charging allowed" = 00 on the bus (the plant's timestamp just before
    ``bus.send``). That is the BMS's "charging forbidden" pause: a vehicle frame that stops
    energy transfer but leaves the session (a fault flag, a BST or a CHAdeMO stop ends the
    session, and a new session takes seconds, too slow for 500 trials). End: the first
    setpoint write of 0 W that lands at the inverter simulator (the write of 124
    OutWRte/InWRte, timestamped in the simulator's request handler). Then the pause is
    lifted, the daemon resumes the setpoint, and the next trial starts; the BMS sends BSM
    every 250 ms, so one trial takes two BSM periods.

Setpoint latency (``setpoint_latency_ms``)
    Start: just before an aggregator client (``hil.harness.AggregatorClient``, aiomqtt, QoS 1)
    publishes a setpoint. End: the first setpoint write of that value at the inverter
    simulator. Setpoints alternate between two charge powers that the 124 rate registers
    hold exactly, with a random 30-60 ms gap so they land at every phase of the daemon's
    tick and poll. The bench config ramps at 1 MW/s, so the new value is written at once.
    The bench's aggregator client sets TCP_NODELAY (paho does not): with Nagle's algorithm on
    both MQTT clients, a publish can wait for a delayed TCP ACK (Linux: up to 40 ms) at the
    aggregator, at the daemon's end, or both; the aggregator's socket is not the charger's.

Floors, measured in the same run against the same simulator and broker
    ``fault_floor_ms``: the median round trip of one bare pymodbus ``write_registers`` (the same
    two registers, function 16), the plant running and the daemon not yet started.
    ``setpoint_floor_ms``: the median broker round trip (aiomqtt, QoS 1, publish to our own
    subscription) plus that Modbus write median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from controller.vehicle.dbc import DbcCodec
from hil.harness import (
    AggregatorClient,
    DaemonProcess,
    PlantProcess,
    Setup,
    plant_args,
    setpoint,
    until,
)
from hil.inverter.profiles import SunSpec100Profile
from hil.inverter.stage import PowerStage
from hil.mosquitto import Mosquitto, free_port
from hil.plant import PlantClient, pick_can

NS_PER_MS = 1_000_000
# 30.0 % and 40.0 % of the simulator's 7400 W WChaMax: exact in 124's 0.1 % rate steps.
SETPOINTS_W = (2220.0, 2960.0)
MATCH_W = 8.0  # one 0.1 % rate step is 7.4 W
BSM_PERIOD_S = 0.25  # the simulated BMS's BSM period (GB/T 27930: 250 ms)
POLL_S = 0.01  # how often the plant's trace is read while waiting for an outcome
TRIAL_TIMEOUT_S = 2.0
FAULT_KIND = "GB/T 27930 BSM 'charging allowed' = 00 (BMS pauses charging; session stays)"
MODBUS_UNIT = 1
# The bench's MQTT clients send at once: paho leaves Nagle's algorithm on (see module docstring).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

FULL = {"faults": 500, "setpoints": 500, "floor": 500}
QUICK = {"faults": 5, "setpoints": 10, "floor": 20}


def spread_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50, p99 (nearest rank), max, min, mean in ms, and the count."""
    if not samples_ns:
        return {"n": 0}
    ordered = sorted(samples_ns)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / NS_PER_MS

    return {
        "p50": round(rank(0.50), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1] / NS_PER_MS, 3),
        "min": round(ordered[0] / NS_PER_MS, 3),
        "mean": round(sum(ordered) / len(ordered) / NS_PER_MS, 3),
        "n": len(ordered),
    }


# -- floors -----------------------------------------------------------------------------------


async def modbus_write_round_trips(port: int, address: int, n: int) -> list[int]:
    """``n`` bare pymodbus writes of [0, 0] at ``address`` (function 16), each timed."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to the inverter simulator on port {port}")
    try:
        samples: list[int] = []
        for _ in range(n):
            start_ns = time.monotonic_ns()
            response = await client.write_registers(address, [0, 0], device_id=MODBUS_UNIT)
            samples.append(time.monotonic_ns() - start_ns)
            if response.isError():
                raise RuntimeError(f"bare Modbus write refused: {response}")
        return samples
    finally:
        client.close()


async def broker_round_trips(port: int, n: int) -> list[int]:
    """``n`` QoS 1 publishes to our own subscription: publish start to message received."""
    topic = "bench/latency/echo"
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="bench-latency-echo",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    ) as client:
        await client.subscribe(topic, qos=1)
        waiting: dict[str, asyncio.Future[int]] = {}

        async def receive() -> None:
            async for message in client.messages:
                arrived_ns = time.monotonic_ns()
                payload = message.payload
                key = payload.decode() if isinstance(payload, bytes | bytearray) else str(payload)
                future = waiting.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(arrived_ns)

        reader = asyncio.create_task(receive())
        try:
            samples: list[int] = []
            loop = asyncio.get_running_loop()
            for i in range(n):
                key = f"echo-{i}"
                future: asyncio.Future[int] = loop.create_future()
                waiting[key] = future
                start_ns = time.monotonic_ns()
                await client.publish(topic, key.encode(), qos=1)
                arrived_ns = await asyncio.wait_for(future, TRIAL_TIMEOUT_S)
                samples.append(arrived_ns - start_ns)
            return samples
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


# -- the plant's trace ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trace:
    writes: list[tuple[int, float]]  # (monotonic_ns, power W) of setpoint writes
    frames: list[tuple[int, bytes]]  # (monotonic_ns, data) of the car's BSM frames


class PlantTrace:
    """Reads the plant's write and frame logs; decodes the car's BSM."""

    def __init__(self, client: PlantClient) -> None:
        self.client = client
        self.codec = DbcCodec.gbt27930()
        self.bsm_id = self.codec.frame_id("BSM")

    def read(self, since_ns: int) -> Trace:
        answer = self.client.ask({"cmd": "trace", "since_ns": since_ns, "frame_ids": [self.bsm_id]})
        trace = answer["trace"]
        return Trace(
            writes=[(int(t), float(w)) for t, w in trace["writes"]],
            frames=[(int(t), bytes.fromhex(data)) for t, _, data in trace["frames"]],
        )

    def charging_allowed(self, data: bytes) -> bool:
        return self.codec.decode_frame(self.bsm_id, data).signals["ChargingAllowed"] == 1

    async def wait(
        self, since_ns: int, found: Callable[[Trace], int | None], timeout_s: float
    ) -> tuple[int | None, Trace]:
        """Poll the trace from ``since_ns`` until ``found`` gives a time, or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            trace = self.read(since_ns)
            hit = found(trace)
            if hit is not None or time.monotonic() > deadline:
                return hit, trace
            await asyncio.sleep(POLL_S)


def first_write(writes: list[tuple[int, float]], after_ns: int, power_w: float) -> int | None:
    return next((t for t, w in writes if t >= after_ns and abs(w - power_w) < MATCH_W), None)


# -- trials -----------------------------------------------------------------------------------


@dataclass
class FaultResults:
    reaction_ns: list[int] = field(default_factory=list)
    recovery_ns: list[int] = field(default_factory=list)  # allowed BSM -> setpoint written again
    failed: int = 0
    zero_before_frame: int = 0  # a 0 W write before the fault frame: something else acted


async def fault_trials(trace: PlantTrace, n: int, running_w: float) -> FaultResults:
    results = FaultResults()
    for _ in range(n):
        # Inject just before the next BSM is due, so the trace is read as little as possible
        # while the frame and the write are under way.
        last = trace.read(time.monotonic_ns() - 2 * int(BSM_PERIOD_S * 1e9)).frames
        if last:
            due_ns = last[-1][0] + int(BSM_PERIOD_S * 1e9)
            await asyncio.sleep(max(0.0, (due_ns - time.monotonic_ns()) / 1e9 - 0.03))
        injected_ns = time.monotonic_ns()
        trace.client.request({"cmd": "vehicle", "set": {"charging_forbidden": True}})
        await asyncio.sleep(0.04)

        def reacted(tr: Trace) -> int | None:
            frame_ns = next((t for t, d in tr.frames if not trace.charging_allowed(d)), None)
            if frame_ns is None:
                return None
            zero_ns = first_write(tr.writes, frame_ns, 0.0)
            return None if zero_ns is None else zero_ns - frame_ns

        reaction, seen = await trace.wait(injected_ns, reacted, TRIAL_TIMEOUT_S)
        frame_ns = next((t for t, d in seen.frames if not trace.charging_allowed(d)), None)
        if frame_ns is not None and first_write(seen.writes, injected_ns, 0.0) not in (
            None,
            first_write(seen.writes, frame_ns, 0.0),
        ):
            results.zero_before_frame += 1
        cleared_ns = time.monotonic_ns()
        trace.client.request({"cmd": "vehicle", "set": {"charging_forbidden": False}})
        if reaction is None:
            results.failed += 1
        else:
            results.reaction_ns.append(reaction)

        def recovered(tr: Trace) -> int | None:
            frame_ns = next((t for t, d in tr.frames if trace.charging_allowed(d)), None)
            if frame_ns is None:
                return None
            back_ns = first_write(tr.writes, frame_ns, running_w)
            return None if back_ns is None else back_ns - frame_ns

        await asyncio.sleep(0.04)
        recovery, _ = await trace.wait(cleared_ns, recovered, TRIAL_TIMEOUT_S)
        if recovery is None:
            results.failed += 1
            await asyncio.sleep(1.0)  # let it settle before the next trial
        else:
            results.recovery_ns.append(recovery)
        if results.failed > max(3, n // 20):
            raise RuntimeError(f"fault trials: {results.failed} of {n} timed out")
    return results


@dataclass
class SetpointResults:
    latency_ns: list[int] = field(default_factory=list)
    failed: int = 0
    intermediate_writes: int = 0  # writes of neither value before the new one (ramp steps)


async def setpoint_trials(
    trace: PlantTrace, aggregator: AggregatorClient, n: int, running_w: float
) -> tuple[SetpointResults, float]:
    results = SetpointResults()
    previous_w = running_w
    rng = random.Random(8)  # noqa: S311  spacing, not secrets
    for i in range(n):
        power_w = SETPOINTS_W[1] if previous_w == SETPOINTS_W[0] else SETPOINTS_W[0]
        payload = setpoint(f"bench-latency-{i}", power_w, ttl_s=600)
        await asyncio.sleep(rng.uniform(0.03, 0.06))
        sent_ns = time.monotonic_ns()
        await aggregator.publish("setpoint", payload)
        await asyncio.sleep(0.02)

        def landed_at(tr: Trace, after_ns: int = sent_ns, want_w: float = power_w) -> int | None:
            return first_write(tr.writes, after_ns, want_w)

        landed, seen = await trace.wait(sent_ns, landed_at, TRIAL_TIMEOUT_S)
        if landed is None:
            results.failed += 1
            if results.failed > max(3, n // 20):
                raise RuntimeError(f"setpoint trials: {results.failed} of {n} timed out")
            continue
        results.latency_ns.append(landed - sent_ns)
        results.intermediate_writes += sum(
            1
            for t, w in seen.writes
            if t < landed and abs(w - power_w) >= MATCH_W and abs(w - previous_w) >= MATCH_W
        )
        previous_w = power_w
    return results, previous_w


# -- the run ----------------------------------------------------------------------------------


def bench_setup(workdir: Path, broker_port: int) -> Setup:
    interface, channel = pick_can()
    return Setup(
        directory=workdir,
        protocol="gbt27930",
        transport="tcp",
        can_interface=interface,
        can_channel=channel,
        broker_port=broker_port,
        inverter_port=free_port(),
        # Ramp at once (1 MW/s): the first write after a setpoint carries its value.
        extra_safety={"ramp_w_per_s": 1_000_000},
    )


async def _measure(setup: Setup, plant: PlantProcess, counts: dict[str, int]) -> dict[str, Any]:
    address, _ = SunSpec100Profile(PowerStage()).setpoint_span()
    modbus_ns = await modbus_write_round_trips(setup.inverter_port, address, counts["floor"])
    broker_ns = await broker_round_trips(setup.broker_port, counts["floor"])
    modbus, broker = spread_ms(modbus_ns), spread_ms(broker_ns)

    config = setup.directory / "config.yaml"
    config.write_text(setup.config_yaml(), encoding="utf-8")
    trace = PlantTrace(plant.client)
    with DaemonProcess(config, setup.directory / "daemon.log") as daemon:
        async with AggregatorClient(
            setup.broker_port, setup.prefix, tcp_nodelay=True
        ) as aggregator:
            # The daemon announces itself once it has subscribed to setpoints.
            online = await until(lambda: aggregator.availability()[-1:] == [b"online"], 30.0)
            if not online:
                raise RuntimeError(f"the daemon never came online: see {daemon.log_file}")
            running_w = SETPOINTS_W[0]
            started_ns = time.monotonic_ns()
            await aggregator.publish(
                "setpoint", setpoint("bench-latency-start", running_w, ttl_s=600)
            )
            landed, _ = await trace.wait(
                started_ns, lambda tr: first_write(tr.writes, started_ns, running_w), 45.0
            )
            if landed is None:
                raise RuntimeError(f"the daemon never wrote {running_w} W: see {daemon.log_file}")
            await asyncio.sleep(1.0)
            faults = await fault_trials(trace, counts["faults"], running_w)
            setpoints, _ = await setpoint_trials(trace, aggregator, counts["setpoints"], running_w)
        if not daemon.running:
            raise RuntimeError(f"the daemon exited during the bench: see {daemon.log_file}")
    fault_spread = spread_ms(faults.reaction_ns)
    setpoint_spread = spread_ms(setpoints.latency_ns)
    return {
        "fault_reaction_ms": fault_spread,
        "fault_floor_ms": modbus["p50"],
        "setpoint_latency_ms": setpoint_spread,
        "setpoint_floor_ms": round(broker["p50"] + modbus["p50"], 3),
        "latency": {
            "fault_kind": FAULT_KIND,
            "vehicle": "gbt27930 over udp_multicast"
            if setup.can_interface == "udp_multicast"
            else f"gbt27930 over {setup.can_interface}",
            "inverter": "SunSpec 100-series simulator over Modbus TCP (pymodbus server)",
            "modbus_write_rt_ms": modbus,
            "broker_rt_ms": broker,
            "floors_are": "p50 of the bare round trips",
            "fault_recovery_ms": spread_ms(faults.recovery_ns),
            "fault_trials_failed": faults.failed,
            "fault_zero_before_frame": faults.zero_before_frame,
            "setpoint_trials_failed": setpoints.failed,
            "setpoint_intermediate_writes": setpoints.intermediate_writes,
        },
    }


NOTE = (
    "fault reaction: the simulated GB/T BMS's first BSM with 'charging allowed' = 00 on CAN "
    "(timestamped at the sender) to the first 0 W setpoint write at the inverter simulator; "
    "setpoint latency: an MQTT aggregator client's publish (QoS 1) to the first write of that "
    "value at the simulator. Separate processes, one host, CLOCK_MONOTONIC. Floors: the median "
    "bare pymodbus write round trip to the same simulator; plus the median broker round trip "
    "for the setpoint floor."
)


def run(*, workdir: Path, quick: bool = False) -> dict[str, Any]:
    """Run the latency benchmarks in ``workdir``; the figures in ms (see the module docstring)."""
    counts = QUICK if quick else FULL
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    with Mosquitto(workdir / "broker") as broker:
        setup = bench_setup(workdir, broker.port)
        args = plant_args(setup, soc_pct=50, mode="charge", time_factor=1)
        with PlantProcess(args, workdir / "plant.sock", workdir / "plant.log") as plant:
            figures = asyncio.run(_measure(setup, plant, counts))
    figures["note"] = NOTE
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few trials")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = run(workdir=args.workdir, quick=args.quick)
    else:
        import tempfile  # noqa: PLC0415  only for the command line

        with tempfile.TemporaryDirectory(prefix="bench-latency-") as workdir:
            figures = run(workdir=Path(workdir), quick=args.quick)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
