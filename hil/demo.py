"""``make demo``: a V2G evening and night, compressed, with the real daemon, plant and broker.

What it plays (simulated local time, one hour every ``3600 / --rate`` real seconds, 5 s at the
default 720x): the car plugs in at 18:00 at 45 %; until 19:00 the aggregator holds it idle (the
charger's own peak-window fallback would start at once), at the 19:00 peak it asks for full
discharge, and the controller stops at the owner's SoC floor; at 21:00 the aggregator hands
control back to the charger, whose fallback charges in the cheap night window; the car must have
the departure target by 07:30. Then everything is stopped and a summary is printed (energy,
the owner's earnings at the configured tariff, the interlocks that acted), then each of the
owner's promises judged on the plant's true state (floor, ceiling, departure, power limits), and
a PNG of power, SoC and price over the night is written next to the ledger. The exit status is 0
only if every promise held.

Processes, as on a charger: mosquitto on the config's broker port, ``python -m hil.plant`` (the
car on the config's CAN bus and board lines, the inverter on its Modbus address, rated above the
config's power limits so that an excess would show), and
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
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
# The plant's stage is rated this far above the configured maxima, so a command over a limit
# shows as delivered power instead of being clipped by the stage's own rating.
STAGE_HEADROOM = 1.5
# The delivered power reaches the stage through the inverter's setpoint register, in steps of
# 0.1 % of its rating (SunSpec 124 rates in tenths of a percent), so a command exactly at a limit
# can land up to half a step above it. 0.5 % of the limit covers that for a rating up to ten
# times the limit. Only the power gets a tolerance: the SoC promises get none.
POWER_TOLERANCE = 0.005


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
        "--max-charge-w",
        f"{config.safety.max_charge_power_w * STAGE_HEADROOM:g}",
        "--max-discharge-w",
        f"{config.safety.max_discharge_power_w * STAGE_HEADROOM:g}",
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
    before_pct: float | None = None  # the last true SoC sampled before departure
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
        before_pct = status["soc_pct"]
        # The last sleep ends at departure, so the sample after it is taken then, not up to
        # SAMPLE_S later.
        await asyncio.sleep(min(SAMPLE_S, clock.real_s((leave_at - now).total_seconds())))
    sys.stdout.write("\n")
    after_pct: float = plant.status()["soc_pct"]
    # Between two samples a quarter of a real second apart the pack moves one way, so the true SoC
    # at departure lies between them: the lower one never overstates it.
    night.departure_soc_pct = after_pct if before_pct is None else min(before_pct, after_pct)
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


@dataclass(frozen=True, slots=True)
class Promise:
    """One of the owner's promises, judged on the plant's true state."""

    name: str  # floor | ceiling | departure | limits
    kept: bool
    figures: str


def _pct_down(value_pct: float) -> str:
    """Two decimals, rounded down: a SoC shown as kept is never one rounded up to a limit."""
    return str(Decimal(repr(value_pct)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR))


def _pct_up(value_pct: float) -> str:
    """Two decimals, rounded up (the highest SoC is never shown below what it was)."""
    return str(Decimal(repr(value_pct)).quantize(Decimal("0.01"), rounding=ROUND_CEILING))


def _floor_promise(status: dict[str, Any], config: Config) -> Promise:
    floor_pct = config.owner.soc_floor_pct
    lowest_pct: float = status["lowest_soc_pct"]
    start_pct: float = status["start_soc_pct"]
    figures = f"lowest true SoC {_pct_down(lowest_pct)} % (floor {floor_pct:g} %)"
    if lowest_pct >= floor_pct:
        return Promise("floor", True, figures)
    # A car that arrived below the floor is not the controller's doing; discharging it further is.
    if start_pct < floor_pct:
        return Promise(
            "floor",
            lowest_pct >= start_pct,
            figures + f"; the car arrived below it, at {_pct_down(start_pct)} %",
        )
    return Promise("floor", False, figures)


def _ceiling_promise(status: dict[str, Any], config: Config) -> Promise:
    ceiling_pct = config.owner.soc_ceiling_pct
    highest_pct: float = status["highest_soc_pct"]
    start_pct: float = status["start_soc_pct"]
    figures = f"highest true SoC {_pct_up(highest_pct)} % (ceiling {ceiling_pct:g} %)"
    if highest_pct <= ceiling_pct:
        return Promise("ceiling", True, figures)
    # A car that arrived above the ceiling is not the controller's doing; charging it further is.
    if start_pct > ceiling_pct:
        return Promise(
            "ceiling",
            highest_pct <= start_pct,
            figures + f"; the car arrived above it, at {_pct_up(start_pct)} %",
        )
    return Promise("ceiling", False, figures)


def _departure_promise(leaving_pct: float, config: Config) -> Promise:
    departure = config.owner.departure
    if departure is None:
        return Promise(
            "departure", True, f"no departure set; true SoC at the end {_pct_down(leaving_pct)} %"
        )
    target_pct = departure.target_soc_pct
    return Promise(
        "departure",
        leaving_pct >= target_pct,
        f"true SoC at {departure.time:%H:%M} {_pct_down(leaving_pct)} % (target {target_pct:g} %)",
    )


def _limits_promise(status: dict[str, Any], config: Config) -> Promise:
    safety = config.safety
    # No house load is simulated, so the site's grid flow is the charger's own.
    charge_limit_w = min(safety.max_charge_power_w, safety.grid_import_limit_w)
    discharge_limit_w = min(safety.max_discharge_power_w, safety.grid_export_limit_w)
    charge_w: float = status["largest_charge_w"]
    discharge_w: float = status["largest_discharge_w"]
    kept = charge_w <= charge_limit_w * (1 + POWER_TOLERANCE) and discharge_w <= (
        discharge_limit_w * (1 + POWER_TOLERANCE)
    )
    return Promise(
        "limits",
        kept,
        f"largest charge {charge_w:.0f} W (limit {charge_limit_w:.0f} W), "
        f"largest discharge {discharge_w:.0f} W (limit {discharge_limit_w:.0f} W)",
    )


def promises(
    status: dict[str, Any], config: Config, departure_soc_pct: float | None = None
) -> list[Promise]:
    """Each promise, judged on the plant's true state (``status`` is the plant's own).

    ``departure_soc_pct`` is the true SoC at departure; without it, the plant's SoC now.
    """
    leaving_pct: float = status["soc_pct"] if departure_soc_pct is None else departure_soc_pct
    return [
        _floor_promise(status, config),
        _ceiling_promise(status, config),
        _departure_promise(leaving_pct, config),
        _limits_promise(status, config),
    ]


def verdict(judged: Sequence[Promise]) -> str:
    """``result: promises kept``, or ``result: PROMISES BROKEN:`` with each broken one named."""
    broken = [p.name for p in judged if not p.kept]
    return "result: " + ("PROMISES BROKEN: " + ", ".join(broken) if broken else "promises kept")


def summary(night: Night, status: dict[str, Any], config: Config) -> tuple[str, bool]:
    """The summary text, and whether the night kept the owner's promises."""
    tariff = config.ledger.tariff
    exported_kwh = status["exported_wh"] / 1000
    imported_kwh = status["imported_wh"] / 1000
    earnings = (
        exported_kwh * tariff.export_price_per_kwh - imported_kwh * tariff.import_price_per_kwh
    )
    interlocks = ", ".join(f"{rule} (from {at})" for rule, at in night.interlocks.items()) or "none"
    judged = promises(status, config, night.departure_soc_pct)
    lines = [
        "demo summary",
        f"  exported to the grid    {exported_kwh:6.2f} kWh  (+{exported_kwh * tariff.export_price_per_kwh:.2f} {tariff.currency} at {tariff.export_price_per_kwh:.2f}/kWh)",  # noqa: E501
        f"  imported from the grid  {imported_kwh:6.2f} kWh  (-{imported_kwh * tariff.import_price_per_kwh:.2f} {tariff.currency} at {tariff.import_price_per_kwh:.2f}/kWh)",  # noqa: E501
        f"  owner's earnings        {earnings:+6.2f} {tariff.currency}  (of which V2G margin "
        f"{exported_kwh * (tariff.export_price_per_kwh - tariff.import_price_per_kwh):+.2f}: "
        "the exported energy bought back at the import price)",
        f"  interlocks that acted   {interlocks}",
        f"  the car's session       {status['vehicle_state']}"
        + (f" (car: {status['vehicle_stop_reason']})" if status["vehicle_stop_reason"] else ""),
        f"  power never flowed with the contactors open: "
        f"{'yes' if status['power_without_contactors_s'] == 0 else 'NO'}",
        "  promises, on the plant's true state:",
        *(f"    {p.name:<10} {'kept' if p.kept else 'BROKEN':<6}  {p.figures}" for p in judged),
        "  " + verdict(judged),
    ]
    return "\n".join(lines), all(p.kept for p in judged)


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
