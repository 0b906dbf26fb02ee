"""Nominal load, memory growth and start-up time of the real daemon against the HIL plant.

Every part runs the daemon as its own process against the plant process (a CHAdeMO car on CAN
sending 0x100/0x101/0x102/0x200/0x201 every 100 ms, the SunSpec inverter simulator on Modbus TCP)
and a real mosquitto, on the HIL config (``hil.harness.Setup``: control tick 0.1 s, inverter poll
0.2 s, telemetry every 1 s), discharging at the peak-window fallback's 1.5 kW. The daemon's CPU
time (utime + stime) and VmRSS are read from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``
every second.

* **ready_s**: from spawning ``python -m controller run`` to its ``READY=1`` on a
  ``NOTIFY_SOCKET`` this bench owns (sd_notify, as systemd sees it), median (and max) of several
  starts; each start is stopped with SIGTERM before the next.
* **nominal_cpu_pct** (% of one core) and **rss_mb**: over the nominal run (10 minutes, after a
  warm-up once READY). ``rss_mb`` is the peak VmRSS sampled during the run.
* **rss_growth_mb_per_h**: an accelerated soak. The daemon does an hour's work in 1/``FACTOR``
  of the time: its control tick, inverter poll, telemetry period and CHAdeMO frame period (and
  the simulated car's) are all divided by ``FACTOR``, through launchers that scale the loaded
  config and the protocol period constants before running the normal entry points (the config's
  own bounds, e.g. telemetry at least 1 s, are for technicians, not for this). The slope of VmRSS
  over real time after a warm-up (least squares) is scaled to MB per simulated hour.

``python -m bench.load [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hil.harness import stop_process

ROOT = Path(__file__).resolve().parents[1]
EVENING = "2026-11-23T19:00:00+01:00"  # inside the fallback's peak window: it discharges
SOC_PCT = 70.0
FACTOR = 10.0  # the soak's acceleration
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
MB_PER_KB = 1.0 / 1024.0  # /proc/<pid>/status is in kB


@dataclass(frozen=True, slots=True)
class Plan:
    """How long each part runs."""

    ready_starts: int
    warmup_s: float
    nominal_s: float
    soak_s: float
    soak_warmup_s: float


FULL = Plan(ready_starts=5, warmup_s=15.0, nominal_s=600.0, soak_s=360.0, soak_warmup_s=60.0)
QUICK = Plan(ready_starts=2, warmup_s=2.0, nominal_s=8.0, soak_s=12.0, soak_warmup_s=3.0)


# -- /proc -------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """The process's user + system CPU time so far."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak the kernel saw) in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * MB_PER_KB
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    cpu_s: float
    rss_mb: float


def sample(pid: int, duration_s: float, every_s: float = 1.0) -> list[Sample]:
    """One sample a second for ``duration_s`` (the first at once)."""
    samples: list[Sample] = []
    start = time.monotonic()
    while True:
        now = time.monotonic()
        samples.append(Sample(now - start, cpu_s(pid), memory_mb(pid)["VmRSS"]))
        if now - start >= duration_s:
            return samples
        time.sleep(max(0.0, start + len(samples) * every_s - time.monotonic()))


def slope_per_s(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx if sxx else 0.0


def summarize(samples: list[Sample]) -> dict[str, float]:
    """CPU % of one core over the samples, and VmRSS peak, p99, mean, last, slope."""
    first, last = samples[0], samples[-1]
    rss = sorted(s.rss_mb for s in samples)
    wall_s = last.t_s - first.t_s
    return {
        "seconds": round(wall_s, 1),
        "cpu_pct": round((last.cpu_s - first.cpu_s) / wall_s * 100, 2) if wall_s else 0.0,
        "rss_peak_mb": round(rss[-1], 2),
        "rss_p99_mb": round(rss[min(len(rss) - 1, int(0.99 * len(rss)))], 2),
        "rss_mean_mb": round(statistics.fmean(rss), 2),
        "rss_last_mb": round(last.rss_mb, 2),
        "rss_slope_mb_per_h": round(slope_per_s([(s.t_s, s.rss_mb) for s in samples]) * 3600, 3),
    }


# -- sd_notify ---------------------------------------------------------------------------------


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket; ``wait_ready`` returns the time."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: a short directory of its own.
        self.path = Path(tempfile.mkdtemp(prefix="bench-n-")) / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def wait_ready(self, timeout_s: float) -> float | None:
        """Monotonic time READY=1 arrived, or None."""
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left_s)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return None
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()
        return None

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)


# -- the rig -----------------------------------------------------------------------------------


class Launched:
    """A process of the rig (the daemon or the plant, maybe through a launcher); SIGTERM on exit."""

    def __init__(self, argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
        self._log: IO[bytes] = log_file.open("ab")
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        self.started_s = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _daemon_argv(config: Path, factor: float) -> list[str]:
    if factor == 1.0:
        return [sys.executable, "-m", "controller", "run", "-c", str(config)]
    return [
        sys.executable,
        "-m",
        "bench.load",
        "--role",
        "daemon",
        f"--factor={factor}",
        str(config),
    ]


def _plant_argv(args: list[str], control: Path, factor: float) -> list[str]:
    if factor == 1.0:
        return [sys.executable, "-m", "hil.plant", "--control", str(control), *args]
    return [
        sys.executable,
        "-m",
        "bench.load",
        "--role",
        "plant",
        f"--factor={factor}",
        "--",
        "--control",
        str(control),
        *args,
    ]


@dataclass
class Rig:
    """Broker and plant running; ``daemon`` starts daemons on their config."""

    directory: Path
    config: Path
    control: Path
    factor: float
    plant: Launched

    def daemon(self, notify: Path | None = None, name: str = "daemon") -> Launched:
        from hil.harness import simulated_clock_env  # noqa: PLC0415

        env = {"V2G_SIMULATED_CLOCK": simulated_clock_env(EVENING, self.factor)}
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)
        return Launched(_daemon_argv(self.config, self.factor), self.directory / f"{name}.log", env)

    def plant_status(self) -> dict[str, Any]:
        from hil.plant import PlantClient  # noqa: PLC0415

        return PlantClient(self.control).status()


@contextlib.contextmanager
def rig(workdir: Path, factor: float) -> Iterator[Rig]:
    """mosquitto and the plant (CHAdeMO, Modbus TCP) on a fresh bus, group and port."""
    from hil.harness import Setup, plant_args  # noqa: PLC0415
    from hil.mosquitto import Mosquitto, find_mosquitto, free_port  # noqa: PLC0415
    from hil.plant import PlantClient, pick_can  # noqa: PLC0415

    if find_mosquitto() is None:
        raise RuntimeError("mosquitto is not installed (make test installs it)")
    # AF_UNIX paths are limited to 108 bytes: sockets live in a short directory.
    short = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        (short / "broker").mkdir()
        with Mosquitto(short / "broker") as broker:
            interface, channel = pick_can()
            setup = Setup(
                directory=short,
                protocol="chademo",
                transport="tcp",
                can_interface=interface,
                can_channel=channel,
                broker_port=broker.port,
                inverter_port=free_port(),
            )
            config = short / "config.yaml"
            config.write_text(setup.config_yaml(), encoding="utf-8")
            shutil.copy(config, workdir / f"config-x{factor:g}.yaml")
            control = short / "plant.sock"
            args = plant_args(setup, soc_pct=SOC_PCT, mode="discharge", time_factor=factor)
            plant_log = workdir / f"plant-x{factor:g}.log"
            with Launched(_plant_argv(args, control, factor), plant_log) as plant:
                PlantClient(control).wait_ready(30.0)
                yield Rig(workdir, config, control, factor, plant)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _wait_ready(notify: NotifySocket, daemon: Launched, timeout_s: float = 30.0) -> float:
    at = notify.wait_ready(timeout_s)
    if at is None:
        raise RuntimeError(f"daemon not READY within {timeout_s} s (exit {daemon.proc.poll()})")
    return at - daemon.started_s


# -- the parts ---------------------------------------------------------------------------------


def measure_ready(r: Rig, starts: int) -> dict[str, Any]:
    """Spawn-to-READY=1 over ``starts`` starts against the running plant and broker."""
    times_s: list[float] = []
    for i in range(starts):
        notify = NotifySocket()
        try:
            with r.daemon(notify.path, name=f"ready-{i}") as daemon:
                times_s.append(_wait_ready(notify, daemon))
        finally:
            notify.close()
    return {
        "ready_s": round(statistics.median(times_s), 3),
        "ready_max_s": round(max(times_s), 3),
        "ready_all_s": [round(t, 3) for t in times_s],
    }


def measure_import_s(repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing the daemon's modules (part of READY)."""
    times_s: list[float] = []
    for _ in range(repeats):
        start = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", "import controller.cli, controller.app"], cwd=ROOT, check=True
        )
        times_s.append(time.monotonic() - start)
    return round(statistics.median(times_s), 3)


def run_daemon_for(r: Rig, warmup_s: float, duration_s: float, name: str) -> dict[str, Any]:
    """Start a daemon, wait for READY and the warm-up, then sample it for ``duration_s``."""
    notify = NotifySocket()
    try:
        with r.daemon(notify.path, name=name) as daemon:
            ready_s = _wait_ready(notify, daemon)
            time.sleep(warmup_s)
            samples = sample(daemon.pid, duration_s)
            hwm_mb = memory_mb(daemon.pid)["VmHWM"]
            status = r.plant_status()
            alive = daemon.proc.poll() is None
    finally:
        notify.close()
    return {
        "ready_s": round(ready_s, 3),
        "samples": samples,
        "vm_hwm_mb": round(hwm_mb, 2),
        "daemon_alive_at_end": alive,
        "plant_at_end": {
            k: status[k] for k in ("vehicle_state", "actual_w", "soc_pct", "setpoint_writes")
        },
    }


def run(*, workdir: Path, quick: bool = False) -> dict[str, Any]:
    """Measure nominal load, RSS growth and start-up; ``quick`` is a smoke run of seconds."""
    from bench.ingest import conditions  # noqa: PLC0415

    plan = QUICK if quick else FULL
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    before = conditions()
    with rig(workdir, 1.0) as nominal_rig:
        nominal = run_daemon_for(nominal_rig, plan.warmup_s, plan.nominal_s, "nominal")
        ready = measure_ready(nominal_rig, plan.ready_starts)
    with rig(workdir, FACTOR) as soak_rig:
        soak = run_daemon_for(soak_rig, 0.0, plan.soak_s, "soak")
    nominal_summary = summarize(nominal.pop("samples"))
    soak_samples: list[Sample] = soak.pop("samples")
    after_warmup = [(s.t_s, s.rss_mb) for s in soak_samples if s.t_s >= plan.soak_warmup_s]
    growth_per_real_s = slope_per_s(after_warmup)
    soak_summary = summarize(soak_samples)
    soak_summary["simulated_h"] = round(plan.soak_s * FACTOR / 3600, 3)
    return {
        "nominal_cpu_pct": nominal_summary["cpu_pct"],
        "rss_mb": nominal_summary["rss_peak_mb"],
        "rss_mb_is": "peak VmRSS sampled every 1 s over the nominal run",
        "rss_growth_mb_per_h": round(growth_per_real_s * 3600 / FACTOR, 3),
        "rss_growth_is": (
            f"least-squares VmRSS slope of the {FACTOR:g}x soak after {plan.soak_warmup_s:g} s, "
            "per simulated hour"
        ),
        "ready_s": ready["ready_s"],
        "ready_max_s": ready["ready_max_s"],
        "ready_all_s": ready["ready_all_s"],
        "import_s": measure_import_s(),
        "nominal": {**nominal_summary, **nominal},
        "soak": {**soak_summary, **soak, "factor": FACTOR},
        "quick": quick,
        "elapsed_s": round(time.monotonic() - started, 1),
        "conditions": before,
        "conditions_after": conditions(),
    }


# -- the launchers of the accelerated soak -----------------------------------------------------


def _accelerated_daemon(config_path: str, factor: float) -> int:
    """``python -m controller run`` with the tick, poll, telemetry and CHAdeMO period / factor."""
    from controller import cli  # noqa: PLC0415
    from controller.config import Config, load_config  # noqa: PLC0415
    from controller.vehicle import chademo  # noqa: PLC0415

    vars(chademo)["PERIOD_S"] /= factor  # the session's binding of the protocol's 100 ms

    def accelerated(path: str | Path) -> Config:
        cfg = load_config(path)
        return cfg.model_copy(
            update={
                "control": cfg.control.model_copy(update={"tick_s": cfg.control.tick_s / factor}),
                "inverter": cfg.inverter.model_copy(
                    update={"poll_interval_s": cfg.inverter.poll_interval_s / factor}
                ),
                "aggregator": cfg.aggregator.model_copy(
                    update={"telemetry_period_s": cfg.aggregator.telemetry_period_s / factor}
                ),
            }
        )

    vars(cli)["load_config"] = accelerated  # the name cli.main calls: same call, scaled result
    return cli.main(["run", "-c", config_path])


def _accelerated_plant(args: list[str], factor: float) -> int:
    """``python -m hil.plant`` with the simulated CHAdeMO car's frame period / factor."""
    from hil import plant  # noqa: PLC0415
    from hil.vehicle import chademo_ev  # noqa: PLC0415

    vars(chademo_ev)["PERIOD_S"] /= factor  # the simulator's binding of the protocol's 100 ms
    return plant.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--role", choices=("daemon", "plant"), help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=float, default=FACTOR, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "daemon":
        return _accelerated_daemon(args.rest[0], args.factor)
    if args.role == "plant":
        return _accelerated_plant(args.rest, args.factor)
    print(json.dumps(run(workdir=args.workdir, quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
