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

Floors: the same path done by bare library code, in the same run
    Measured before the daemon starts, so nothing else acts on the bus or the simulator: the
    plant and mosquitto are running, and on the daemon's CAN channel, broker and inverter
    simulator a bare process (``bench/bare.py``: python-can, cantools, paho-mqtt and pymodbus,
    no project code) stands where the daemon will stand. Start and end are taken as for the
    daemon, so ``ours / floor`` is what the controller's own code adds to the libraries.

    ``fault_floor_spread_ms``: a bare python-can bus in this process sends the same BSM with
    "charging allowed" = 00 (timestamped just before ``bus.send``, as the plant's car is; one
    byte, MaxTemperaturePoint, tags each trial). The bare process receives it (blocking
    ``recv`` filtered to the BSM id), decodes it with cantools and writes 0 W (124 OutWRte and
    InWRte, function 16) with a synchronous pymodbus client. End: that write landing at the
    simulator.
    ``setpoint_floor_spread_ms``: a bare aiomqtt client in this process, set up as the bench's
    aggregator client is (MQTT 5, QoS 1, TCP_NODELAY), publishes a setpoint of the same form on
    the daemon's setpoint topic; the bare process (paho-mqtt in its own loop, TCP_NODELAY as the
    daemon sets) turns its ``power_w`` into the 124 rates and writes them the same way. End: the
    write of that value landing at the simulator. The bench sets 124 StorCtl_Mod first (the
    daemon writes it with every command) so a rate write moves the stage, and clears it after.
    ``fault_floor_ms`` and ``setpoint_floor_ms`` are the floors' medians; ``fault_floor_ratio``
    and ``setpoint_floor_ratio`` are ours over the floor, p50 over p50 and p99 over p99. Part of
    what the ratio counts is the daemon's write sequence: its verified 124 write puts
    StorCtl_Mod before the rates (a round trip before the write that lands), and enabling adds
    123 Conn with its read-back; the floor's one write is the least that moves the stage.

    For reading the floors: ``latency.modbus_write_rt_ms`` (one bare async pymodbus write round
    trip of the same two registers) and ``latency.broker_rt_ms`` (aiomqtt, QoS 1, publish to
    our own subscription), each over the same simulator and broker.
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
import can
from pymodbus.client import AsyncModbusTcpClient

from controller.vehicle.dbc import GBT27930_FILE, DbcCodec, find_dbc
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

BARE = Path(__file__).resolve().with_name("bare.py")
BARE_READY_TIMEOUT_S = 20.0
# 124 StorCtl_Mod: both rate controls active, as the daemon's driver writes it.
STORCTL_CHARGE_AND_DISCHARGE = 0b11
# The simulated car's BSM, as hil.vehicle.gbt_ev sends it at 25 degC, with charging forbidden.
BSM_FORBIDDEN = {
    "MaxCellVoltageNumber": 1,
    "MaxTemperature": 25,
    "MaxTemperaturePoint": 1,
    "MinTemperature": 25,
    "MinTemperaturePoint": 2,
    "CellVoltageStatus": 0,
    "SocStatus": 0,
    "OverCurrentStatus": 0,
    "TemperatureStatus": 0,
    "InsulationStatus": 0,
    "OutputConnectorStatus": 0,
    "ChargingAllowed": 0,
}

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


def ratios(ours: dict[str, float], floor: dict[str, float]) -> dict[str, float | None]:
    """Ours over the floor, each quantile over the same quantile (None where either is missing)."""
    out: dict[str, float | None] = {}
    for quantile in ("p50", "p99"):
        mine, bare = ours.get(quantile), floor.get(quantile)
        out[quantile] = round(mine / bare, 2) if mine is not None and bare else None
    return out


# -- the floors' hops, apart (informational) --------------------------------------------------


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


# -- the bare path (the floors) ---------------------------------------------------------------


class BareProcess:
    """``bench/bare.py`` as its own process: it says ``ready``, then ``done <tag>`` per write."""

    def __init__(self, args: list[str], log_file: Path) -> None:
        self.args = args
        self.log_file = log_file
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BareProcess:
        with self.log_file.open("ab") as log:
            # -P keeps bench/ off sys.path: the process runs only bare.py's library imports.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                str(BARE),
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        if await self._line(BARE_READY_TIMEOUT_S) != "ready":
            await self.stop()
            raise RuntimeError(f"the bare reactor did not start: see {self.log_file}")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _line(self, timeout_s: float) -> str | None:
        """The next line, or None when none came in time."""
        assert self._process is not None
        assert self._process.stdout is not None
        try:
            raw = await asyncio.wait_for(self._process.stdout.readline(), timeout_s)
        except TimeoutError:
            return None
        if not raw:
            raise RuntimeError(f"the bare reactor exited: see {self.log_file}")
        return raw.decode().strip()

    async def done(self, tag: str, timeout_s: float) -> bool:
        """Whether the write for ``tag`` was reported in time (older reports are skipped)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            line = await self._line(left)
            if line is None:
                return False
            if line == f"done {tag}":
                return True
        return False


@dataclass
class FloorResults:
    path_ns: list[int] = field(default_factory=list)  # send or publish -> write landed
    failed: int = 0

    def fail(self, what: str, n: int) -> None:
        self.failed += 1
        if self.failed > max(3, n // 20):
            raise RuntimeError(f"{what}: {self.failed} of {n} timed out")


async def fault_floor_trials(setup: Setup, trace: PlantTrace, address: int, n: int) -> FloorResults:
    """The bare CAN path: our bus.send of a forbidden BSM -> bare recv, decode, 0 W write."""
    args = [
        "--modbus-port",
        str(setup.inverter_port),
        "--address",
        str(address),
        "--unit",
        str(MODBUS_UNIT),
        "can",
        "--interface",
        setup.can_interface,
        "--channel",
        setup.can_channel,
        "--dbc",
        str(find_dbc(GBT27930_FILE)),
        "--frame-id",
        str(trace.bsm_id),
        "--signal",
        "ChargingAllowed",
    ]
    results = FloorResults()
    rng = random.Random(13)  # noqa: S311  spacing, not secrets
    bus = can.Bus(interface=setup.can_interface, channel=setup.can_channel)
    try:
        async with BareProcess(args, setup.directory / "bare-can.log") as bare:
            for i in range(n):
                # The tag byte makes each trial's frame, and the reactor's report of it, unique.
                data = trace.codec.encode("BSM", {**BSM_FORBIDDEN, "MaxTemperaturePoint": i % 256})
                frame = can.Message(arbitration_id=trace.bsm_id, data=data, is_extended_id=True)
                await asyncio.sleep(rng.uniform(0.01, 0.03))
                sent_ns = time.monotonic_ns()
                bus.send(frame)
                if not await bare.done(data.hex(), TRIAL_TIMEOUT_S):
                    results.fail("fault floor", n)
                    continue
                landed = first_write(trace.read(sent_ns).writes, sent_ns, 0.0)
                if landed is None:
                    results.fail("fault floor", n)
                else:
                    results.path_ns.append(landed - sent_ns)
    finally:
        bus.shutdown()
    return results


async def _read_register(client: AsyncModbusTcpClient, address: int) -> int:
    response = await client.read_holding_registers(address, count=1, device_id=MODBUS_UNIT)
    if response.isError():
        raise RuntimeError(f"cannot read register {address}: {response}")
    return int(response.registers[0])


async def _write_registers(client: AsyncModbusTcpClient, address: int, values: list[int]) -> None:
    response = await client.write_registers(address, values, device_id=MODBUS_UNIT)
    if response.isError():
        raise RuntimeError(f"write of {values} at {address} refused: {response}")


async def setpoint_floor_trials(setup: Setup, trace: PlantTrace, n: int) -> FloorResults:
    """The bare MQTT path: our publish -> bare paho subscriber, power to rates, one write."""
    profile = SunSpec100Profile(PowerStage())
    image = profile.image
    rates_at, _ = profile.setpoint_span()
    mode_at = image.address(124, "StorCtl_Mod")
    # What the daemon's driver learns at setup, read from the running simulator.
    setup_client = AsyncModbusTcpClient("127.0.0.1", port=setup.inverter_port, timeout=2, retries=0)
    if not await setup_client.connect():
        raise RuntimeError(f"cannot connect to the inverter simulator on {setup.inverter_port}")
    try:
        rate_base_w = await _read_register(setup_client, image.address(124, "WChaMax"))
        discharge_base_w = await _read_register(setup_client, image.address(120, "MaxDisChaRte"))
        rate_sf = await _read_register(setup_client, image.address(124, "InOutWRte_SF"))
        rate_sf -= 0x10000 if rate_sf >= 0x8000 else 0  # sunssf: int16
        await _write_registers(setup_client, mode_at, [STORCTL_CHARGE_AND_DISCHARGE])
        topic = f"{setup.prefix}/setpoint"
        args = [
            "--modbus-port",
            str(setup.inverter_port),
            "--address",
            str(rates_at),
            "--unit",
            str(MODBUS_UNIT),
            "mqtt",
            "--broker-port",
            str(setup.broker_port),
            "--topic",
            topic,
            "--rate-base-w",
            str(rate_base_w),
            "--discharge-base-w",
            str(discharge_base_w),
            "--rate-sf",
            str(rate_sf),
        ]
        results = FloorResults()
        rng = random.Random(13)  # noqa: S311  spacing, not secrets
        async with (
            BareProcess(args, setup.directory / "bare-mqtt.log") as bare,
            aiomqtt.Client(
                "127.0.0.1",
                setup.broker_port,
                identifier="bench-latency-floor-aggregator",
                protocol=aiomqtt.ProtocolVersion.V5,
                socket_options=NODELAY,
            ) as publisher,
        ):
            previous_w = 0.0
            for i in range(n):
                # Alternate even after a miss, so a late write is never taken for the next one.
                power_w = SETPOINTS_W[1] if previous_w == SETPOINTS_W[0] else SETPOINTS_W[0]
                previous_w = power_w
                setpoint_id = f"bench-floor-{i}"
                payload = json.dumps(setpoint(setpoint_id, power_w, ttl_s=600))
                await asyncio.sleep(rng.uniform(0.01, 0.03))
                sent_ns = time.monotonic_ns()
                await publisher.publish(topic, payload, qos=1)
                if not await bare.done(setpoint_id, TRIAL_TIMEOUT_S):
                    results.fail("setpoint floor", n)
                    continue
                landed = first_write(trace.read(sent_ns).writes, sent_ns, power_w)
                if landed is None:
                    results.fail("setpoint floor", n)
                else:
                    results.path_ns.append(landed - sent_ns)
        # Leave the simulator as the daemon would find it: rates and mode back to 0.
        await _write_registers(setup_client, rates_at, [0, 0])
        await _write_registers(setup_client, mode_at, [0])
    finally:
        setup_client.close()
    return results


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
    trace = PlantTrace(plant.client)
    # The floors first: the daemon is not running yet, so the bare process has the bus, the
    # broker topic and the simulator to itself.
    modbus_ns = await modbus_write_round_trips(setup.inverter_port, address, counts["floor"])
    broker_ns = await broker_round_trips(setup.broker_port, counts["floor"])
    modbus, broker = spread_ms(modbus_ns), spread_ms(broker_ns)
    fault_floor = await fault_floor_trials(setup, trace, address, counts["floor"])
    setpoint_floor = await setpoint_floor_trials(setup, trace, counts["floor"])

    config = setup.directory / "config.yaml"
    config.write_text(setup.config_yaml(), encoding="utf-8")
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
    fault_floor_spread = spread_ms(fault_floor.path_ns)
    setpoint_floor_spread = spread_ms(setpoint_floor.path_ns)
    return {
        "fault_reaction_ms": fault_spread,
        "fault_floor_ms": fault_floor_spread.get("p50"),
        "fault_floor_spread_ms": fault_floor_spread,
        "fault_floor_ratio": ratios(fault_spread, fault_floor_spread),
        "setpoint_latency_ms": setpoint_spread,
        "setpoint_floor_ms": setpoint_floor_spread.get("p50"),
        "setpoint_floor_spread_ms": setpoint_floor_spread,
        "setpoint_floor_ratio": ratios(setpoint_spread, setpoint_floor_spread),
        "latency": {
            "fault_kind": FAULT_KIND,
            "vehicle": "gbt27930 over udp_multicast"
            if setup.can_interface == "udp_multicast"
            else f"gbt27930 over {setup.can_interface}",
            "inverter": "SunSpec 100-series simulator over Modbus TCP (pymodbus server)",
            "modbus_write_rt_ms": modbus,
            "broker_rt_ms": broker,
            "floors_are": (
                "the same path by bare python-can/cantools, paho-mqtt and pymodbus code "
                "(bench/bare.py), before the daemon starts; *_floor_ms is its p50"
            ),
            "fault_floor_trials_failed": fault_floor.failed,
            "setpoint_floor_trials_failed": setpoint_floor.failed,
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
    "value at the simulator. Separate processes, one host, CLOCK_MONOTONIC. Floors: the same "
    "path by bare library code (bench/bare.py, no project code) in the same run, before the "
    "daemon starts, on its CAN channel, broker and simulator: a bare python-can send of the same "
    "BSM to a bare python-can receiver that decodes it with cantools and writes 0 W with "
    "pymodbus; a bare aiomqtt publish of the same setpoint (QoS 1) to a bare paho-mqtt "
    "subscriber that writes it with pymodbus; each to the write landing at the simulator. The "
    "ratio is ours over the floor, p50 over p50 and p99 over p99: what the controller's own "
    "code adds (its verified write sequence included: StorCtl_Mod is written before the rates)."
)


def run(*, workdir: Path, quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    """Run the latency benchmarks in ``workdir``; the figures in ms (see the module docstring).

    ``trials``, when given, is the count of every kind of trial (floors included)."""
    counts = QUICK if quick else FULL
    if trials is not None:
        counts = dict.fromkeys(counts, trials)
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
    parser.add_argument(
        "--trials", type=int, default=None, help="trials of each kind, floors included"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = run(workdir=args.workdir, quick=args.quick, trials=args.trials)
    else:
        import tempfile  # noqa: PLC0415  only for the command line

        with tempfile.TemporaryDirectory(prefix="bench-latency-") as workdir:
            figures = run(workdir=Path(workdir), quick=args.quick, trials=args.trials)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
