"""Slow storage (issue 15): fault reaction and setpoint latency while every fsync takes long.

    python -m bench.storage                 # fsync as is, then delayed 200 ms, then 1000 ms
    python -m bench.storage --delays 0,500  # other delays

An SD card's controller can hold an fsync for hundreds of milliseconds. The real daemon runs
against the plant (a simulated GB/T 27930 car on CAN, the SunSpec 100-series inverter simulator)
and a real mosquitto, as in ``bench/latency.py``, with ``tools/slowdisk.c`` preloaded
(``LD_PRELOAD``, built by ``hil/slowdisk.py``): every ``fsync`` and ``fdatasync`` the daemon
makes on a file beside its ledger sleeps the configured delay first, and is counted. Nothing
else changes; SQLite and the core state file call these through libc, so they are what a slow
card makes slow. One daemon per delay, one after another, on the same plant, broker and ledger;
the first delay (0: the shim counts but does not sleep) is the normal disk of the same run.

For each delay:

* ``fault_reaction_ms`` and ``setpoint_latency_ms``: the trials of ``bench/latency.py``, same
  start and end points; ``*_p99_ratio`` is the p99 over the p99 with the normal disk;
* ``setpoint_trials_failed``, ``fault_trials_failed``: trials whose outcome never landed within
  ``TRIAL_TIMEOUT_S``;
* ``watchdog_max_gap_s``: the longest time between two ``WATCHDOG=1`` the daemon sent to the
  ``NOTIFY_SOCKET`` this bench owns, with ``WATCHDOG_USEC`` set to ``WATCHDOG_S``; a gap at or
  over ``WATCHDOG_S`` is a miss (systemd would kill the service);
* ``can_frames_dropped``: UDP receive-buffer drops on this host during the run
  (``RcvbufErrors`` in /proc/net/snmp; the CAN bus is ``udp_multicast`` here, and it is the only
  UDP traffic of the run) and the drops the daemon's CAN reader counts, which it logs at stop;
* ``fsyncs`` and ``fsyncs_per_hour``: what the shim counted during the trials (busy: a setpoint
  and a fault trial every few hundred ms).

Then, on the normal disk, ``states``: fsyncs per hour in each steady state (``STATES``: charging
and discharging at one setpoint, no vehicle), each over ``state_s`` after a few seconds to
settle: what wears an SD card in a day of service.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.latency import (
    SETPOINTS_W,
    PlantTrace,
    bench_setup,
    fault_trials,
    first_write,
    setpoint_trials,
    spread_ms,
)
from hil.harness import (
    AggregatorClient,
    DaemonProcess,
    PlantProcess,
    Setup,
    plant_args,
    setpoint,
    until,
)
from hil.mosquitto import Mosquitto
from hil.slowdisk import Card, slowdisk_env

DELAYS_MS = (0, 200, 1000)
WATCHDOG_S = 2.0  # the daemon pings at half of it (sd_watchdog_enabled(3))
FULL = {"faults": 200, "setpoints": 200, "state_s": 120}
QUICK = {"faults": 5, "setpoints": 10, "state_s": 5}
# (state, setpoint W or None to unplug the car) for the writes-per-hour figures.
STATES: tuple[tuple[str, float | None], ...] = (
    ("charging at a setpoint", SETPOINTS_W[0]),
    ("discharging at a setpoint", -SETPOINTS_W[0]),
    ("no vehicle, aggregator connected", None),
)


class WatchdogListener:
    """The systemd side of sd_notify, on a thread: the time of every WATCHDOG=1."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: a short directory of its own.
        self.path = Path(tempfile.mkdtemp(prefix="bench-w-")) / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.pings_s: list[float] = []
        self.ready_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="watchdog", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = data.split(b"\n")
            now_s = time.monotonic()
            if b"READY=1" in lines and self.ready_s is None:
                self.ready_s = now_s
            if b"WATCHDOG=1" in lines:
                self.pings_s.append(now_s)

    def max_gap_s(self, since_s: float, until_s: float) -> float | None:
        pings = [t for t in self.pings_s if since_s <= t <= until_s]
        if len(pings) < 2:
            return None
        return max(b - a for a, b in itertools.pairwise(pings))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)


def udp_rcvbuf_errors() -> int:
    """Datagrams this host dropped because a socket's receive buffer was full."""
    lines = Path("/proc/net/snmp").read_text(encoding="utf-8").splitlines()
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    header, values = udp[0], udp[1]
    return int(values[header.index("RcvbufErrors")])


def _daemon_can_drops(log_file: Path) -> int:
    """The drops the daemon's CAN reader logged at stop (0 when it logged none)."""
    dropped = 0
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("can_frames_dropped"), int):
            dropped = entry["can_frames_dropped"]
    return dropped


async def _one_delay(
    setup: Setup, plant: PlantProcess, delay_ms: int, counts: dict[str, int], index: int
) -> dict[str, Any]:
    trace = PlantTrace(plant.client)
    # The card is the directory of the ledger and the core state file; the shim's own files
    # lie beside it (the watchdog listener's private directory).
    watchdog = WatchdogListener()
    card = Card(
        directory=setup.directory,
        fail_file=watchdog.path.parent / "fail",
        count_file=watchdog.path.parent / "fsyncs",
    )
    env = slowdisk_env(card, fsync_delay_ms=delay_ms)
    env["NOTIFY_SOCKET"] = str(watchdog.path)
    env["WATCHDOG_USEC"] = str(int(WATCHDOG_S * 1_000_000))
    config = setup.directory / "config.yaml"
    log_file = setup.directory / f"daemon-{delay_ms}.log"
    rcvbuf_before = udp_rcvbuf_errors()
    try:
        with DaemonProcess(config, log_file, env=env) as daemon:
            # WATCHDOG_PID is not set: the variables then apply to the daemon (sd_notify(3)).
            async with AggregatorClient(
                setup.broker_port, setup.prefix, tcp_nodelay=True
            ) as aggregator:
                online = await until(lambda: aggregator.availability()[-1:] == [b"online"], 30.0)
                if not online:
                    raise RuntimeError(f"the daemon never came online: see {log_file}")
                running_w = SETPOINTS_W[0]
                started_ns = time.monotonic_ns()
                await aggregator.publish(
                    "setpoint", setpoint(f"bench-storage-start-{index}", running_w, ttl_s=600)
                )
                landed, _ = await trace.wait(
                    started_ns, lambda tr: first_write(tr.writes, started_ns, running_w), 45.0
                )
                if landed is None:
                    raise RuntimeError(f"the daemon never wrote {running_w} W: see {log_file}")
                await asyncio.sleep(1.0)
                fsyncs_before = card.fsyncs()
                trials_from_s = time.monotonic()
                faults = await fault_trials(trace, counts["faults"], running_w)
                setpoints, _ = await setpoint_trials(
                    trace, aggregator, counts["setpoints"], running_w
                )
                trials_until_s = time.monotonic()
                fsyncs = card.fsyncs() - fsyncs_before
            if not daemon.running:
                raise RuntimeError(f"the daemon exited during the bench: see {log_file}")
        gap_s = watchdog.max_gap_s(trials_from_s, trials_until_s)
    finally:
        watchdog.close()
    duration_s = trials_until_s - trials_from_s
    return {
        "fsync_delay_ms": delay_ms,
        "fault_reaction_ms": spread_ms(faults.reaction_ns),
        "setpoint_latency_ms": spread_ms(setpoints.latency_ns),
        "fault_trials_failed": faults.failed,
        "setpoint_trials_failed": setpoints.failed,
        "watchdog_max_gap_s": None if gap_s is None else round(gap_s, 3),
        "watchdog_missed": gap_s is None or gap_s >= WATCHDOG_S,
        "can_frames_dropped": udp_rcvbuf_errors() - rcvbuf_before + _daemon_can_drops(log_file),
        "fsyncs": fsyncs,
        "fsyncs_per_hour": round(fsyncs * 3600 / duration_s) if duration_s > 0 else None,
        "trials_s": round(duration_s, 1),
    }


async def _writes_per_state(setup: Setup, plant: PlantProcess, state_s: float) -> dict[str, Any]:
    """fsyncs per hour in each steady state, on the normal disk (what an SD card wears by)."""
    watchdog = WatchdogListener()
    card = Card(
        directory=setup.directory,
        fail_file=watchdog.path.parent / "fail",
        count_file=watchdog.path.parent / "fsyncs",
    )
    log_file = setup.directory / "daemon-states.log"
    per_hour: dict[str, Any] = {}
    try:
        env = slowdisk_env(card, fsync_delay_ms=0)
        with DaemonProcess(setup.directory / "config.yaml", log_file, env=env) as daemon:
            async with AggregatorClient(
                setup.broker_port, setup.prefix, tcp_nodelay=True
            ) as aggregator:
                if not await until(lambda: aggregator.availability()[-1:] == [b"online"], 30.0):
                    raise RuntimeError(f"the daemon never came online: see {log_file}")
                for n, (state, power_w) in enumerate(STATES):
                    if power_w is None:
                        plant.client.request({"cmd": "lines", "set": {"plugged": False}})
                    else:
                        payload = setpoint(f"bench-storage-state-{n}", power_w, ttl_s=3600)
                        await aggregator.publish("setpoint", payload)
                    await asyncio.sleep(min(5.0, state_s))  # the change's own writes settle
                    before, started_s = card.fsyncs(), time.monotonic()
                    await asyncio.sleep(state_s)
                    fsyncs = card.fsyncs() - before
                    per_hour[state] = round(fsyncs * 3600 / (time.monotonic() - started_s))
                plant.client.request({"cmd": "lines", "set": {"plugged": True}})
            if not daemon.running:
                raise RuntimeError(f"the daemon exited during the bench: see {log_file}")
    finally:
        watchdog.close()
    return {"fsyncs_per_hour": per_hour, "state_s": state_s}


def _ratio(ours: dict[str, Any], normal: dict[str, Any], key: str) -> float | None:
    a, b = ours.get(key, {}).get("p99"), normal.get(key, {}).get("p99")
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 3)


NOTE = (
    "the latency trials of bench/latency.py (same start and end points) with the daemon's every "
    "fsync/fdatasync on the ledger's directory delayed by an LD_PRELOAD shim (tools/slowdisk.c), "
    "one daemon per delay on the same plant and broker; the first delay (0) is the normal disk "
    "of the same run. *_p99_ratio: p99 over the normal disk's p99. watchdog: longest gap between "
    f"WATCHDOG=1 with WATCHDOG_USEC = {WATCHDOG_S:g} s. CAN drops: UDP RcvbufErrors of the host "
    "(the CAN bus is udp_multicast) plus the daemon's own count."
)


def run(
    *,
    workdir: Path,
    quick: bool = False,
    trials: int | None = None,
    delays_ms: tuple[int, ...] = DELAYS_MS,
) -> dict[str, Any]:
    counts = dict(QUICK if quick else FULL)
    if trials is not None:
        counts = dict.fromkeys(counts, trials)
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with Mosquitto(workdir / "broker") as broker:
        setup = bench_setup(workdir, broker.port)
        (workdir / "config.yaml").write_text(setup.config_yaml(), encoding="utf-8")
        args = plant_args(setup, soc_pct=50, mode="charge", time_factor=1)
        with PlantProcess(args, workdir / "plant.sock", workdir / "plant.log") as plant:
            for index, delay_ms in enumerate(delays_ms):
                runs.append(asyncio.run(_one_delay(setup, plant, delay_ms, counts, index)))
            states = asyncio.run(_writes_per_state(setup, plant, counts["state_s"]))
    normal = runs[0]
    for figures in runs:
        figures["fault_p99_ratio"] = _ratio(figures, normal, "fault_reaction_ms")
        figures["setpoint_p99_ratio"] = _ratio(figures, normal, "setpoint_latency_ms")
    worst = runs[1:] or runs
    return {
        "storage": {"runs": runs, "watchdog_s": WATCHDOG_S, "states": states},
        "storage_fault_p99_ratio": max((r["fault_p99_ratio"] or 0.0) for r in worst),
        "storage_setpoint_p99_ratio": max((r["setpoint_p99_ratio"] or 0.0) for r in worst),
        "storage_trials_failed": sum(
            r["fault_trials_failed"] + r["setpoint_trials_failed"] for r in runs
        ),
        "storage_watchdog_misses": sum(bool(r["watchdog_missed"]) for r in runs),
        "storage_can_frames_dropped": sum(r["can_frames_dropped"] for r in runs),
        "note": NOTE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few trials")
    parser.add_argument("--trials", type=int, default=None, help="trials of each kind")
    parser.add_argument(
        "--delays",
        default=",".join(str(d) for d in DELAYS_MS),
        help="fsync delays in ms, comma-separated; the first is the baseline",
    )
    args = parser.parse_args(argv)
    delays = tuple(int(part) for part in args.delays.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as workdir:
        figures = run(workdir=Path(workdir), quick=args.quick, trials=args.trials, delays_ms=delays)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
