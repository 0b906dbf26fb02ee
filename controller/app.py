"""Wiring: builds the links and the control step from the config and runs the daemon.

This is the only module that knows which concrete link classes exist; the daemon itself works
with the protocols in ``controller.links``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import replace

import structlog

from controller.aggregator.disabled import DisabledAggregator
from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.link import MqttAggregatorLink
from controller.clocksync import ClockTrust, simulated_kernel_clock
from controller.config import Config, load_register_map
from controller.control import CoreControlStep, CoreStateFile, policy_from_config
from controller.core.policy import FallbackMode
from controller.daemon import Daemon, ExitCode, Links
from controller.economics.wear import Chemistry, WearModel
from controller.errors import ConfigError, ProtocolError, VehicleLinkError
from controller.inverter.drivers import InverterDriver, SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.regmap import RegisterMapDriver
from controller.inverter.transport import Endpoint, ModbusTransport, SerialEndpoint, TcpEndpoint
from controller.ledger.ledger import Ledger
from controller.ledger.recorder import ThreadedLedger
from controller.links import AggregatorLink, AuditSink, InverterLink, VehicleLink
from controller.planning import MomentPrices, PlanKeeper, PlanSettings
from controller.simclock import SimulatedClock, WallClock, real_wall_clock
from controller.statusd import status_socket_path
from controller.storage.db import LedgerError, open_database
from controller.storage.writer import StorageThread
from controller.unavailable import UnavailableLink
from controller.vehicle.factory import build_vehicle_link

log = structlog.get_logger(component="app")


def build_links(
    config: Config,
    *,
    durable: DurableOutbox | None = None,
    audit: AuditSink | None = None,
    storage: StorageThread | None = None,
    ledger: Ledger | None = None,
    wall_clock: WallClock = real_wall_clock,
) -> Links:
    """The three links the config describes; the aggregator link stores its records in
    ``durable`` (the ledger's store-and-forward outbox, used on ``storage``'s thread) and
    reports setpoints to ``audit``."""
    site_tz = zoneinfo.ZoneInfo(config.site.timezone)  # price acks stamped like the reports
    return Links(
        vehicle=_build_vehicle(config),
        inverter=_build_inverter(config),
        aggregator=_build_aggregator(
            config,
            durable=durable,
            audit=audit,
            storage=storage,
            ledger=ledger,
            price_wall=lambda: wall_clock(site_tz),
        ),
    )


def _build_vehicle(config: Config) -> VehicleLink:
    # A vehicle link that cannot be built (DBC files not found, a wrong BMS profile) leaves the
    # charger running at 0 W with the vehicle DOWN and the reason in the log and the status.
    try:
        return build_vehicle_link(config.vehicle)
    except (ConfigError, VehicleLinkError, ProtocolError) as exc:
        log.error("vehicle link cannot start; power stays at 0 W", error=str(exc))
        return UnavailableLink("vehicle", str(exc))


def _build_inverter(config: Config) -> InverterLink:
    cfg = config.inverter
    endpoint: Endpoint
    if cfg.tcp is not None:
        endpoint = TcpEndpoint(cfg.tcp.host, cfg.tcp.port)
    else:
        assert cfg.rtu is not None  # noqa: S101  the config model requires the chosen section
        endpoint = SerialEndpoint(
            cfg.rtu.device,
            baudrate=cfg.rtu.baudrate,
            parity=cfg.rtu.parity,
            stop_bits=cfg.rtu.stop_bits,
            byte_size=cfg.rtu.byte_size,
        )
    transport = ModbusTransport(endpoint, cfg.unit_id, timeout_s=cfg.timeout_s, retries=cfg.retries)
    driver: InverterDriver
    if cfg.profile == "register_map":
        assert cfg.register_map is not None  # noqa: S101  required by the config model
        driver = RegisterMapDriver(
            transport, load_register_map(cfg.register_map), cfg.revert_timeout_s
        )
    else:
        driver = SunSpecDriver(transport, cfg.revert_timeout_s)
    return ModbusInverterLink(
        transport,
        driver,
        poll_interval_s=cfg.poll_interval_s,
        revert_timeout_s=cfg.revert_timeout_s,
    )


def _build_aggregator(
    config: Config,
    *,
    durable: DurableOutbox | None = None,
    audit: AuditSink | None = None,
    storage: StorageThread | None = None,
    ledger: Ledger | None = None,
    price_wall: Callable[[], dt.datetime] | None = None,
) -> AggregatorLink:
    if not config.aggregator.enabled:
        return DisabledAggregator()
    link = MqttAggregatorLink.from_config(
        config,
        durable=durable,
        audit=audit,
        storage=storage,
        price_store=None if ledger is None else ledger.record_price_message,
        price_wall=price_wall,
    )
    if ledger is not None:
        # The prices accepted before a restart, and their ids (a replay stays a replay).
        try:
            kept = ledger.price_messages()
        except LedgerError as exc:
            log.error("pushed prices not restored from the ledger", error=str(exc))
        else:
            link.restore_prices((row.topic, row.body.encode()) for row in kept)
    return link


def build_control_step(
    config: Config,
    links: Links | None = None,
    *,
    wall_clock: WallClock = real_wall_clock,
    clock_trusted: Callable[[float], bool] | None = None,
) -> CoreControlStep:
    """The safety core: the policy from the config, the board's E-stop input, the clock's
    trust, and the state a restart must not forget (restored here, before any command)."""
    policy = policy_from_config(config)
    if isinstance(wall_clock, SimulatedClock):
        # Simulation only: the plant moves the battery ``rate`` times faster than real time, so
        # the energy that flows over the floor's horizon does too; and the ramp, a rate per
        # second of the night, runs on the simulated clock too (at 720x a 7 s swing from full
        # charge to full discharge would otherwise take 84 simulated minutes: a whole tariff slot
        # and more, where a charger takes 7 s).
        safety = policy.safety
        policy = replace(
            policy,
            safety=replace(
                safety,
                battery_time_factor=wall_clock.rate,
                ramp_w_per_s=safety.ramp_w_per_s * wall_clock.rate,
            ),
        )
    return CoreControlStep(
        policy,
        planner=PlanKeeper(plan_settings(config), policy, in_background=True)
        if policy.fallback.mode is FallbackMode.OPTIMIZE
        else None,
        prices=None if links is None else links.aggregator.prices,
        emergency_stop=(lambda: False) if links is None else links.vehicle.emergency_stop_pressed,
        clock_trusted=(lambda _now_s: True) if clock_trusted is None else clock_trusted,
        state_file=CoreStateFile(config.control.state_file(config.ledger.path)),
        save_in_background=True,
    )


def wear_model(config: Config) -> WearModel:
    """The pack's wear model (config economics; the car's capacity when it reports none)."""
    economics = config.economics
    return WearModel(
        Chemistry(economics.battery_chemistry),
        config.owner.battery_capacity_kwh,
        economics.battery_replacement_cost,
    )


def plan_settings(config: Config) -> PlanSettings:
    """What the planner needs from the config: the tariff, its peak events, the pack's wear."""
    economics = config.economics
    return PlanSettings(
        tariff=config.economic_tariff(),
        wear=wear_model(config),
        events=config.peak_events(),
        charge_efficiency=economics.charge_efficiency_pct / 100,
        discharge_efficiency=economics.discharge_efficiency_pct / 100,
        replan_soc_deviation_pct=economics.replan_soc_deviation_pct,
        published_slots=economics.plan_slots_published,
    )


def wall_clock_from_env() -> WallClock:
    """The real wall clock, or the simulated one ``V2G_SIMULATED_CLOCK`` asks for.

    Simulation only (``make demo`` and the hil/ suite compress a night into minutes). A charger
    never sets it; when set, it is logged loudly. A malformed value raises ValueError.
    """
    clock = SimulatedClock.from_env(os.environ)
    if clock is None:
        return real_wall_clock
    log.warning(
        "SIMULATED CLOCK: tariff windows, departure and the ramp follow a simulated time, not the "
        "real one. For simulation only; never on a charger.",
        simulated_start=clock.start.isoformat(),
        at_unix_s=clock.at_unix_s,
        rate=clock.rate,
    )
    return clock


def open_ledger(
    config: Config, *, time_factor: float = 1.0, prices: MomentPrices | None = None
) -> tuple[sqlite3.Connection, Ledger] | None:
    """The ledger database (``ledger.path``) and the ledger on it, or None if it cannot be used.

    A ledger that cannot be opened (unwritable directory, corrupt file, a newer schema) must not
    keep the charger from running safely: the daemon then runs without recording energy, and
    says so at error level (docs/ledger.md, "When the ledger cannot be opened").
    """
    conn: sqlite3.Connection | None = None
    try:
        conn = open_database(config.ledger.path)
        wear = wear_model(config)
        return conn, Ledger.from_config(
            conn,
            config,
            time_factor=time_factor,
            prices=prices,
            in_peak_event=None if prices is None else prices.in_peak_event,
            wear_cost=lambda trace: wear.trace_cost(trace).cost,
        )
    except (LedgerError, OSError) as exc:  # db.open_database's mkdir raises OSError as is
        if conn is not None:
            conn.close()
        log.error(
            "LEDGER UNAVAILABLE: running without recording energy, sessions or the audit trail",
            path=config.ledger.path,
            error=str(exc),
        )
        return None


def run(config: Config) -> ExitCode:
    """Run the daemon until stopped; returns the process exit code."""
    try:
        wall_clock = wall_clock_from_env()
    except ValueError as exc:
        log.error("nothing started", error=str(exc))
        return ExitCode.CONFIG
    # Receipts price energy at the tariff, the aggregator's pushed prices and peak events.
    prices = MomentPrices(config.economic_tariff(), config.peak_events())
    # Simulation only: the plant's energy runs at the simulated clock's rate (ledger.py).
    opened = open_ledger(
        config,
        time_factor=wall_clock.rate if isinstance(wall_clock, SimulatedClock) else 1.0,
        prices=prices,
    )
    # Store and forward: one outbox on the ledger's connection, shared by the ledger (closed
    # sessions, in the ledger's own transaction) and the MQTT link (telemetry and events).
    durable: DurableOutbox | None = None
    if opened is not None:
        try:
            durable = DurableOutbox.from_config(opened[0], config.aggregator)
        except LedgerError as exc:
            log.error(
                "store-and-forward outbox unavailable; records are sent live only", error=str(exc)
            )
        else:
            opened[1].set_outbox(durable)
    # Every write to the ledger's file from here on runs on one storage thread (issue 15).
    storage: StorageThread | None = None
    recorder: ThreadedLedger | None = None
    if opened is not None:
        storage = StorageThread()
        recorder = ThreadedLedger(opened[1], storage)
    links = build_links(
        config,
        durable=durable,
        audit=None if recorder is None else recorder.audit,
        storage=storage,
        ledger=None if opened is None else opened[1],
        wall_clock=wall_clock,
    )
    prices.source = links.aggregator.prices
    # Simulation runs on machines whose own clock need not be synchronised; its time is the
    # simulated one, trusted by construction (logged loudly as simulation above).
    trust = (
        ClockTrust(adjtimex=simulated_kernel_clock)
        if isinstance(wall_clock, SimulatedClock)
        else ClockTrust()
    )
    step = build_control_step(config, links, wall_clock=wall_clock, clock_trusted=trust.trusted)
    if opened is not None:
        # The wear budget survives restarts (core/safety.py CoreState.wear_day). Read before the
        # control loop starts, while nothing was handed to the storage thread yet.
        today = wall_clock(zoneinfo.ZoneInfo(config.site.timezone)).date()
        try:
            step.seed_wear_budget(today, opened[1].discharged_wh_on(today))
        except LedgerError as exc:
            log.error("wear budget not seeded from the ledger", error=str(exc))
    daemon = Daemon(
        config,
        links,
        step,
        wall_clock=wall_clock,
        recorder=recorder,
        status_socket=status_socket_path(config.status, os.environ),
    )
    try:
        return asyncio.run(daemon.run())
    finally:
        _stop_writers(step, storage, opened)


# At exit, the two writer threads together get this long to write what is queued (a slow
# card's fsyncs): with the stop sequence's 4.5 s at most, the process still exits before
# systemd's TimeoutStopSec (10 s, systemd/v2g-controller.service) would kill it.
WRITERS_EXIT_TIMEOUT_S = 4.0


def _stop_writers(
    step: CoreControlStep,
    storage: StorageThread | None,
    opened: tuple[sqlite3.Connection, Ledger] | None,
) -> None:
    deadline_s = time.monotonic() + WRITERS_EXIT_TIMEOUT_S
    if step.planner is not None:
        step.planner.close()
    if step.saver is not None and not step.saver.stop(WRITERS_EXIT_TIMEOUT_S):
        log.error("safety state still being written at exit", timeout_s=WRITERS_EXIT_TIMEOUT_S)
    left_s = max(0.0, deadline_s - time.monotonic())
    if storage is not None and not storage.stop(left_s):
        return  # the connection is still in use by a hung write: the process exit ends both
    if opened is not None:
        opened[0].close()
