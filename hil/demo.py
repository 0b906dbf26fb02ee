"""``make demo``: a V2G evening and night, compressed, with the real daemon, plant and broker.

What it plays (simulated local time, one hour every ``3600 / --rate`` real seconds, 5 s at the
default 720x): the car plugs in at 18:00 at 45 %; until 19:00 the aggregator holds it idle (the
charger's own peak-window fallback would start at once), at the 19:00 peak it asks for full
discharge, and the controller stops at the owner's SoC floor; at 21:00 the aggregator hands
control back to the charger, whose fallback charges in the cheap night window; the car must have
the departure target by 07:30. Then everything is stopped and a summary is printed (energy,
the owner's earnings at the configured tariff, lowest and departure SoC, the interlocks that
acted), and a PNG of power, SoC and price over the night is written next to the ledger.

Processes, as on a charger: mosquitto on the config's broker port, ``python -m hil.plant`` (the
car on the config's CAN bus and board lines, the inverter on its Modbus address), and
``python -m controller run -c CONFIG``, given a simulated clock through ``V2G_SIMULATED_CLOCK``
(simulation only; the daemon logs it loudly). The aggregator is played from here over MQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config import Config, load_config
from controller.errors import ConfigError
from hil.harness import (
    ROOT,
    AggregatorClient,
    DaemonProcess,
    PlantProcess,
    setpoint,
    simulated_clock_env,
    until,
)
from hil.mosquitto import Mosquitto, find_mosquitto
from hil.plant import PlantError

START = dt.time(18, 0)
PEAK = dt.time(19, 0)
RELEASE = dt.time(21, 0)
PLUG_IN_SOC_PCT = 45.0
SAMPLE_S = 0.25  # real seconds between samples


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass
class Sample:
    """One moment of the night."""

    at: dt.datetime
    power_w: float
    soc_pct: float
    state: str
    source: str


@dataclass
class Night:
    """What the demo saw."""

    samples: list[Sample] = field(default_factory=list)
    interlocks: dict[str, str] = field(default_factory=dict)  # rule -> first time it bound
    last_status: dict[str, Any] = field(default_factory=dict)
    departure_soc_pct: float | None = None


class SimClock:
    """The same simulated time the daemon is given."""

    def __init__(self, start: dt.datetime, rate: float) -> None:
        self.start = start
        self.rate = rate
        self.at_unix_s = time.time()

    def env(self) -> str:
        return simulated_clock_env(self.start.isoformat(), self.rate, self.at_unix_s)

    def now(self) -> dt.datetime:
        elapsed = (time.time() - self.at_unix_s) * self.rate
        return self.start + dt.timedelta(seconds=elapsed)

    def at(self, when: dt.time, next_day: bool = False) -> dt.datetime:
        day = self.start.date() + dt.timedelta(days=1 if next_day else 0)
        return dt.datetime.combine(day, when, tzinfo=self.start.tzinfo)

    def real_s(self, sim_s: float) -> float:
        return sim_s / self.rate


def plant_args(config: Config, rate: float) -> list[str]:
    vehicle, inverter = config.vehicle, config.inverter
    if inverter.tcp is None:
        raise SystemExit("demo: the config's inverter must be on Modbus TCP (the plant serves it)")
    args = [
        "--protocol",
        vehicle.protocol,
        "--mode",
        "charge",
        "--soc",
        f"{PLUG_IN_SOC_PCT:g}",
        "--target-soc",
        "95",
        "--can",
        f"{vehicle.can.interface}:{vehicle.can.channel}",
        "--tcp",
        f"{inverter.tcp.host}:{inverter.tcp.port}",
        "--unit-id",
        str(inverter.unit_id),
        "--time-factor",
        f"{rate:g}",
    ]
    if vehicle.lines is not None and vehicle.lines.kind == "simulated":
        args += ["--lines", str(vehicle.lines.path)]
    return args


def _rule(binding_limit: str) -> str:
    return binding_limit.split(" ", 1)[0].split(":", 1)[0]


class AggregatorScript:
    """The aggregator's evening: hold idle until the peak, discharge in it, then release."""

    def __init__(self, config: Config, clock: SimClock, aggregator: AggregatorClient) -> None:
        self.config = config
        self.clock = clock
        self.aggregator = aggregator
        self.phase = ""
        self.counter = 0
        self.next_s = 0.0
        # Each setpoint is valid 45 simulated minutes and renewed every 15.
        self.ttl_s = max(2.0, clock.real_s(45 * 60))

    async def step(self, now: dt.datetime) -> None:
        if now < self.clock.at(PEAK):
            # Hold the car for the peak: the charger's own fallback would discharge at once.
            await self._send("hold", setpoint("", 0.0, ttl_s=self.ttl_s, mode="idle"))
        elif now < self.clock.at(RELEASE):
            power = -self.config.safety.max_discharge_power_w
            await self._send("peak", setpoint("", power, ttl_s=self.ttl_s))
        elif self.phase != "release":
            await self._send("release", setpoint("", 0.0, ttl_s=60, mode="release"))

    async def _send(self, phase: str, payload: dict[str, Any]) -> None:
        mono = time.monotonic()
        if phase == self.phase and mono < self.next_s:
            return
        self.phase = phase
        self.counter += 1
        self.next_s = mono + self.ttl_s / 3
        await self.aggregator.publish("setpoint", payload | {"id": f"{phase}-{self.counter}"})


def _take_telemetry(night: Night, aggregator: AggregatorClient, seen: int, at: str) -> int:
    telemetry = aggregator.on("telemetry")
    for message in telemetry[seen:]:
        data = message.json()
        night.last_status = data
        limit = data.get("binding_limit")
        if limit:
            night.interlocks.setdefault(_rule(limit), at)
        for fault in data.get("faults") or ():
            night.interlocks.setdefault(f"fault: {fault}", at)
    return len(telemetry)


async def play_night(
    config: Config, clock: SimClock, plant: PlantProcess, aggregator: AggregatorClient
) -> Night:
    """The aggregator's evening and the live status line, until departure."""
    night = Night()
    departure = config.owner.departure
    leave_at = clock.at(departure.time if departure else dt.time(7, 30), next_day=True)
    if not await until(lambda: aggregator.availability()[-1:] == [b"online"], 30):
        raise RuntimeError("the daemon never came online on the broker")
    script = AggregatorScript(config, clock, aggregator)
    seen = 0
    tariff = config.ledger.tariff
    while (now := clock.now()) < leave_at:
        await script.step(now)
        seen = _take_telemetry(night, aggregator, seen, f"{now:%H:%M}")
        try:
            status = plant.status()
        except PlantError as exc:
            raise RuntimeError(f"the plant stopped answering: {exc}") from None
        source = str(night.last_status.get("source", "-"))
        state = str(night.last_status.get("state", "-"))
        night.samples.append(Sample(now, status["actual_w"], status["soc_pct"], state, source))
        price = (
            tariff.export_price_per_kwh if status["actual_w"] < 0 else tariff.import_price_per_kwh
        )
        sys.stdout.write(
            f"\r{now:%a %H:%M}  SoC {status['soc_pct']:5.1f} %  power {status['actual_w']:+7.0f} W"
            f"  {state:<11} source {source:<10} price {price:.2f} {tariff.currency}/kWh   "
        )
        sys.stdout.flush()
        await asyncio.sleep(SAMPLE_S)
    sys.stdout.write("\n")
    night.departure_soc_pct = plant.status()["soc_pct"]
    return night


def plot(night: Night, config: Config, clock: SimClock, path: Path) -> None:
    """Power, SoC and price over the night, as a PNG (matplotlib, Agg backend)."""
    import matplotlib as mpl  # noqa: PLC0415  a dev/demo dependency, imported only here

    mpl.use("Agg")
    import matplotlib.dates as mdates  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415

    times = [s.at.replace(tzinfo=None) for s in night.samples]
    tariff = config.ledger.tariff
    fig, (ax_p, ax_s, ax_c) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax_p.fill_between(times, [s.power_w / 1000 for s in night.samples], step="post", alpha=0.4)
    ax_p.plot(times, [s.power_w / 1000 for s in night.samples], drawstyle="steps-post")
    ax_p.axhline(0, color="black", linewidth=0.5)
    ax_p.set_ylabel("power, kW\n(+ charge, - discharge)")
    ax_s.plot(times, [s.soc_pct for s in night.samples], color="tab:green")
    ax_s.axhline(config.owner.soc_floor_pct, color="tab:red", linestyle="--", label="SoC floor")
    if config.owner.departure is not None:
        ax_s.axhline(
            config.owner.departure.target_soc_pct,
            color="tab:blue",
            linestyle="--",
            label="departure target",
        )
    ax_s.set_ylabel("SoC, %")
    ax_s.legend(loc="lower right")
    ax_c.plot(times, [tariff.import_price_per_kwh] * len(times), label="import price")
    ax_c.plot(times, [tariff.export_price_per_kwh] * len(times), label="export price")
    ax_c.set_ylabel(f"price, {tariff.currency}/kWh")
    ax_c.set_ylim(0, max(tariff.import_price_per_kwh, tariff.export_price_per_kwh) * 1.4)
    ax_c.legend(loc="lower right")
    fallback = config.fallback
    for ax in (ax_p, ax_s, ax_c):
        for window, colour in ((fallback.peak_window, "tab:orange"), (fallback.cheap_window, "c")):
            if window is None:
                continue
            for day in (0, 1):
                start = clock.at(window.start, next_day=bool(day)).replace(tzinfo=None)
                end = clock.at(window.end, next_day=bool(day)).replace(tzinfo=None)
                if end < start:
                    end += dt.timedelta(days=1)
                if times and end > times[0] and start < times[-1]:
                    ax.axvspan(max(start, times[0]), min(end, times[-1]), color=colour, alpha=0.1)
    ax_c.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M")  # type: ignore[no-untyped-call]  # matplotlib
    )
    fig.suptitle(
        f"V2G night at {config.site.site_id}/{config.site.charger_id} "
        "(orange: peak window, cyan: cheap window)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(night: Night, status: dict[str, Any], config: Config) -> tuple[str, bool]:
    """The summary text, and whether the night kept the owner's promises."""
    tariff = config.ledger.tariff
    exported_kwh = status["exported_wh"] / 1000
    imported_kwh = status["imported_wh"] / 1000
    earnings = (
        exported_kwh * tariff.export_price_per_kwh - imported_kwh * tariff.import_price_per_kwh
    )
    floor = config.owner.soc_floor_pct
    departure = config.owner.departure
    target = departure.target_soc_pct if departure else None
    lowest = status["lowest_soc_pct"]
    leaving = night.departure_soc_pct if night.departure_soc_pct is not None else status["soc_pct"]
    interlocks = ", ".join(f"{rule} (from {at})" for rule, at in night.interlocks.items()) or "none"
    ok = lowest >= floor - 1.0 and (target is None or leaving >= target - 0.5)
    lines = [
        "demo summary",
        f"  exported to the grid    {exported_kwh:6.2f} kWh  (+{exported_kwh * tariff.export_price_per_kwh:.2f} {tariff.currency} at {tariff.export_price_per_kwh:.2f}/kWh)",  # noqa: E501
        f"  imported from the grid  {imported_kwh:6.2f} kWh  (-{imported_kwh * tariff.import_price_per_kwh:.2f} {tariff.currency} at {tariff.import_price_per_kwh:.2f}/kWh)",  # noqa: E501
        f"  owner's earnings        {earnings:+6.2f} {tariff.currency}  (of which V2G margin "
        f"{exported_kwh * (tariff.export_price_per_kwh - tariff.import_price_per_kwh):+.2f}: "
        "the exported energy bought back at the import price)",
        f"  lowest SoC              {lowest:6.1f} %  (floor {floor:g} %)",
        f"  departure SoC           {leaving:6.1f} %"
        + (f"  (target {target:g} % by {departure.time:%H:%M})" if departure else ""),
        f"  interlocks that acted   {interlocks}",
        f"  the car's session       {status['vehicle_state']}"
        + (f" (car: {status['vehicle_stop_reason']})" if status["vehicle_stop_reason"] else ""),
        f"  power never flowed with the contactors open: "
        f"{'yes' if status['power_without_contactors_s'] == 0 else 'NO'}",
        "  result                  "
        + ("promises kept" if ok else "PROMISES BROKEN (see the log files)"),
    ]
    return "\n".join(lines), ok


async def run_async(config_path: Path, config: Config, rate: float, out: Path) -> int:
    tz = zoneinfo.ZoneInfo(config.site.timezone)
    start = dt.datetime.combine(dt.datetime.now(tz).date(), START, tzinfo=tz)
    clock = SimClock(start, rate)
    broker_dir = Path(tempfile.mkdtemp(prefix="v2g-demo-broker-"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefix = config.aggregator.topic_prefix.format(
        site_id=config.site.site_id, charger_id=config.site.charger_id
    )
    if config.aggregator.broker is None:
        raise RuntimeError("the demo needs aggregator.broker in the config")
    broker = Mosquitto(broker_dir, port=config.aggregator.broker.port)
    plant = PlantProcess(plant_args(config, rate), broker_dir / "plant.sock", logs / "plant.log")
    _say(f"demo: mosquitto on 127.0.0.1:{broker.port}, plant and daemon on {config_path}")
    _say(f"demo: simulated evening from {start:%H:%M}, {rate:g}x ({3600 / rate:.1f} s per hour)")
    _say(f"demo: logs in {logs}")
    with contextlib.ExitStack() as cleanup, broker, plant:
        cleanup.callback(shutil.rmtree, broker_dir, ignore_errors=True)
        daemon = DaemonProcess(
            config_path, logs / "daemon.log", {"V2G_SIMULATED_CLOCK": clock.env()}
        )
        with daemon:
            async with AggregatorClient(broker.port, prefix) as aggregator:
                night = await play_night(config, clock, plant, aggregator)
            status = plant.status()
    text, ok = summary(night, status, config)
    _say(text)
    png = out / "v2g-night.png"
    plot(night, config, clock, png)
    _say(f"  plot                    {png}")
    (out / "v2g-night.json").write_text(
        json.dumps(
            [
                {"at": s.at.isoformat(), "power_w": s.power_w, "soc_pct": s.soc_pct}
                for s in night.samples
            ]
        ),
        encoding="utf-8",
    )
    return 0 if ok else 1


def run_demo(config_path: Path, rate: float = 720.0) -> int:
    """Play the night; 0 when the owner's promises were kept."""
    if find_mosquitto() is None:
        _say("demo: mosquitto is not installed (make demo installs it)")
        return 1
    try:
        config = load_config(config_path)
    except ConfigError as error:
        _say(f"demo: {config_path} is invalid:\n{error}")
        return 2
    out = ROOT / "demo-out"
    if config.ledger.path:
        out = (ROOT / config.ledger.path).parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run_async(config_path.resolve(), config, rate, out))
    except (RuntimeError, PlantError, OSError) as exc:
        _say(f"\ndemo: failed: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("\ndemo: interrupted")
        return 130


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=Path("config/example.yaml"))
    parser.add_argument(
        "--rate", type=float, default=720.0, help="simulated seconds per real second (720)"
    )
    args = parser.parse_args()
    if not 1 <= args.rate <= 3600:
        parser.error("--rate is between 1 and 3600")
    return run_demo(args.config, args.rate)


if __name__ == "__main__":
    sys.exit(main())
