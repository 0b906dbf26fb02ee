"""``make demo``: a V2G evening and night, compressed, with the real daemon, plant and broker.

What it plays (simulated local time, one hour every ``3600 / --rate`` real seconds, 5 s at the
default 720x), on ``config/example-cn.yaml`` (a Shanghai home, a GB/T car, a peak/valley tariff
in CNY): the car plugs in at 18:00 at 55 %; at 18:10 the aggregator announces a demand-response
event over MQTT (20:00-21:00, a bonus on every kWh sent back up to 7 kW), and the charger's
planner (fallback ``optimize``) re-plans: it sells in the event and the evening peak above the
owner's floor, buys back in the valley after 22:00, and has the departure target by 07:30, when
the car is unplugged and the ledger closes the session with its receipt. Then everything is
stopped and a summary is printed: the energy as the plant metered it beside the ledger's
receipt (one story: the same kWh and money), the interlocks that acted, each of the owner's
promises judged on the plant's true state (floor, ceiling, departure, power limits), and the
owner's one-line message. A PNG of power, SoC and the price steps over the night is written next
to the ledger. The exit status is 0 only if every promise held and the figures agree.

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
import sqlite3
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
from controller.economics.receipt import Receipt, money, owner_message
from controller.errors import ConfigError
from controller.ledger.report import read_report
from hil.harness import (
    ROOT,
    AggregatorClient,
    DaemonProcess,
    PlantProcess,
    simulated_clock_env,
    until,
)
from hil.mosquitto import Mosquitto, find_mosquitto
from hil.plant import PlantError

START = dt.time(18, 0)
ANNOUNCE = dt.time(18, 10)  # the aggregator announces the event
EVENT_START = dt.time(20, 0)
EVENT_END = dt.time(21, 0)
# Shenzhen paid CNY 4 per kWh discharged in its May 2024 event (config/example-cn.yaml); on top
# of the peak export price of 0.85 that is a bonus of 3.15.
EVENT_BONUS_PER_KWH = 3.15
PLUG_IN_SOC_PCT = 55.0
# The ledger integrates measured power between readings while the plant meters every step of
# its own: at 720x one reading is minutes of the night, so the two agree to a few percent.
AGREEMENT_FRACTION = 0.05
AGREEMENT_KWH = 0.3
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


def prices_at(config: Config, clock: SimClock, at: dt.datetime) -> tuple[float, float]:
    """(import, export) per kWh at ``at``: the tariff's band, plus the event's bonus on export
    inside the event (up to its power: the demo's discharge never exceeds it)."""
    slot = config.economic_tariff().price_at(at)
    bonus = EVENT_BONUS_PER_KWH if clock.at(EVENT_START) <= at < clock.at(EVENT_END) else 0.0
    return slot.import_per_kwh, slot.export_per_kwh + bonus


class AggregatorScript:
    """The aggregator's evening: it announces a demand-response event and leaves the power to
    the charger's planner (no setpoints: the plan decides, the core caps it)."""

    def __init__(self, config: Config, clock: SimClock, aggregator: AggregatorClient) -> None:
        self.config = config
        self.clock = clock
        self.aggregator = aggregator
        self.announced = False

    def event(self, now: dt.datetime) -> dict[str, Any]:
        """The price_event message (docs/mqtt.md, "Prices"); times on the site's timeline."""
        return {
            "id": "dr-demo-1",
            "issued_at": now.isoformat(),
            "start": self.clock.at(EVENT_START).isoformat(),
            "end": self.clock.at(EVENT_END).isoformat(),
            "bonus_per_kwh": EVENT_BONUS_PER_KWH,
            "power_w": self.config.safety.max_discharge_power_w,
        }

    async def step(self, now: dt.datetime) -> None:
        if not self.announced and now >= self.clock.at(ANNOUNCE):
            self.announced = True
            await self.aggregator.publish("price_event", self.event(now))


def _take_telemetry(night: Night, aggregator: AggregatorClient, seen: int, at: str) -> int:
    telemetry = aggregator.on("telemetry")
    for message in telemetry[seen:]:
        data = message.json()
        night.last_status = data
        limit = data.get("binding_limit")  # {"rule", "direction", "power_w"} or null
        if limit:
            night.interlocks.setdefault(str(limit["rule"]), at)
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
    currency = config.economic_tariff().currency
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
        import_price, export_price = prices_at(config, clock, now)
        sys.stdout.write(
            f"\r{now:%a %H:%M}  SoC {status['soc_pct']:5.1f} %  power {status['actual_w']:+7.0f} W"
            f"  {state:<11} source {source:<10} buy {import_price:.2f} sell {export_price:.2f} "
            f"{currency}/kWh   "
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
    # The owner drives off: the ledger closes the session and writes its receipt.
    plant.client.request({"cmd": "lines", "set": {"plugged": False}})
    await asyncio.sleep(2.0)
    return night


def plot(night: Night, config: Config, clock: SimClock, path: Path) -> None:
    """Power, SoC and price over the night, as a PNG (matplotlib, Agg backend)."""
    import matplotlib as mpl  # noqa: PLC0415  a dev/demo dependency, imported only here

    mpl.use("Agg")
    import matplotlib.dates as mdates  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415

    times = [s.at.replace(tzinfo=None) for s in night.samples]
    currency = config.economic_tariff().currency
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
    prices = [prices_at(config, clock, s.at) for s in night.samples]
    ax_c.plot(times, [p[0] for p in prices], drawstyle="steps-post", label="import (buy)")
    ax_c.plot(times, [p[1] for p in prices], drawstyle="steps-post", label="export (sell)")
    ax_c.set_ylabel(f"price, {currency}/kWh")
    ax_c.set_ylim(0, max((max(p) for p in prices), default=1.0) * 1.15)
    ax_c.legend(loc="upper right")
    start, end = clock.at(EVENT_START), clock.at(EVENT_END)
    for ax in (ax_p, ax_s, ax_c):
        ax.axvspan(
            start.replace(tzinfo=None), end.replace(tzinfo=None), color="tab:orange", alpha=0.1
        )
    ax_c.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M")  # type: ignore[no-untyped-call]  # matplotlib
    )
    fig.suptitle(
        f"V2G night at {config.site.site_id}/{config.site.charger_id}: the planner against the "
        "tariff (orange: the demand-response event)"
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


def _agree(plant_kwh: float, ledger_kwh: float) -> bool:
    return abs(plant_kwh - ledger_kwh) <= max(AGREEMENT_KWH, AGREEMENT_FRACTION * plant_kwh)


def summary(
    night: Night, status: dict[str, Any], config: Config, receipt: Receipt | None
) -> tuple[str, bool]:
    """The summary text, and whether the night kept the owner's promises with a receipt that
    tells the same story as the plant's meters."""
    exported_kwh = status["exported_wh"] / 1000
    imported_kwh = status["imported_wh"] / 1000
    interlocks = ", ".join(f"{rule} (from {at})" for rule, at in night.interlocks.items()) or "none"
    judged = promises(status, config, night.departure_soc_pct)
    lines = ["demo summary"]
    one_story = receipt is not None
    if receipt is None:
        lines.append("  receipt                 NONE: the ledger closed no session")
    else:
        currency = receipt.currency
        one_story = _agree(exported_kwh, receipt.discharged_kwh) and _agree(
            imported_kwh, receipt.charged_kwh
        )
        lines += [
            f"  exported to the grid    {exported_kwh:6.2f} kWh metered by the plant, "
            f"{receipt.discharged_kwh:6.2f} kWh on the receipt "
            f"({receipt.peak_event_kwh:.2f} kWh in the event)",
            f"  imported from the grid  {imported_kwh:6.2f} kWh metered by the plant, "
            f"{receipt.charged_kwh:6.2f} kWh on the receipt",
            f"  export revenue          {money(receipt.export_revenue, currency)}",
            f"  import cost             {money(receipt.import_cost, currency)}",
            f"  battery wear            {money(receipt.wear_cost, currency)}",
            f"  net for the owner       {money(receipt.net, currency)}",
            f"  one story               {'yes' if one_story else 'NO'} (plant and ledger agree "
            f"within {AGREEMENT_FRACTION:.0%} or {AGREEMENT_KWH:g} kWh)",
        ]
    lines += [
        f"  interlocks that acted   {interlocks}",
        f"  the car's session       {status['vehicle_state']}"
        + (f" (car: {status['vehicle_stop_reason']})" if status["vehicle_stop_reason"] else ""),
        f"  power never flowed with the contactors open: "
        f"{'yes' if status['power_without_contactors_s'] == 0 else 'NO'}",
        "  promises, on the plant's true state:",
        *(f"    {p.name:<10} {'kept' if p.kept else 'BROKEN':<6}  {p.figures}" for p in judged),
        "  " + verdict(judged),
    ]
    if receipt is not None:
        lines.append(f"  the owner reads         {owner_message(receipt)}")
    return "\n".join(lines), all(p.kept for p in judged) and one_story


def last_receipt(ledger_path: Path) -> Receipt | None:
    """The receipt of the last closed session in the daemon's ledger."""
    if not ledger_path.exists():
        return None
    with contextlib.closing(sqlite3.connect(ledger_path)) as conn:
        conn.row_factory = sqlite3.Row
        report = read_report(conn)
    closed = [s.receipt for s in report.sessions if s.receipt is not None]
    return closed[-1] if closed else None


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
    receipt = last_receipt(_ledger_path(config_path, config))
    text, ok = summary(night, status, config, receipt)
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


def _ledger_path(config_path: Path, config: Config) -> Path:
    """The ledger the daemon writes (a relative path is relative to its working directory)."""
    path = Path(config.ledger.path)
    return path if path.is_absolute() else ROOT / path


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
    # One fresh night: the ledger (and its receipt) and the safety state start empty, so the
    # receipt read at the end is this night's.
    ledger = _ledger_path(config_path, config)
    for path in (ledger, Path(config.control.state_file(str(ledger)))):
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
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
    parser.add_argument("--config", type=Path, default=Path("config/example-cn.yaml"))
    parser.add_argument(
        "--rate", type=float, default=720.0, help="simulated seconds per real second (720)"
    )
    args = parser.parse_args()
    if not 1 <= args.rate <= 3600:
        parser.error("--rate is between 1 and 3600")
    return run_demo(args.config, args.rate)


if __name__ == "__main__":
    sys.exit(main())
