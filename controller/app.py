"""Wiring: builds the links and the control step from the config and runs the daemon.

This is the only module that knows which concrete link classes exist; the daemon itself works
with the protocols in ``controller.links``.
"""

from __future__ import annotations

import asyncio
import os

import structlog

from controller.aggregator.disabled import DisabledAggregator
from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config, load_register_map
from controller.control import CoreControlStep, policy_from_config
from controller.daemon import (
    ControlStep,
    Daemon,
    ExitCode,
    Links,
    SimulatedClock,
    WallClock,
    real_wall_clock,
)
from controller.errors import ConfigError, ProtocolError, VehicleLinkError
from controller.inverter.drivers import InverterDriver, SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.regmap import RegisterMapDriver
from controller.inverter.transport import Endpoint, ModbusTransport, SerialEndpoint, TcpEndpoint
from controller.links import AggregatorLink, InverterLink, VehicleLink
from controller.unavailable import UnavailableLink
from controller.vehicle.factory import build_vehicle_link

log = structlog.get_logger(component="app")


def build_links(config: Config) -> Links:
    """The three links the config describes."""
    return Links(
        vehicle=_build_vehicle(config),
        inverter=_build_inverter(config),
        aggregator=_build_aggregator(config),
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


def _build_aggregator(config: Config) -> AggregatorLink:
    if not config.aggregator.enabled:
        return DisabledAggregator()
    return MqttAggregatorLink.from_config(config)


def build_control_step(config: Config, links: Links | None = None) -> ControlStep:
    """The safety core, with the policy from the config and the board's E-stop input."""
    if links is None:
        return CoreControlStep(policy_from_config(config))
    return CoreControlStep(
        policy_from_config(config), emergency_stop=links.vehicle.emergency_stop_pressed
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
        "SIMULATED CLOCK: tariff windows and departure follow a simulated time, not the real "
        "one. For simulation only; never on a charger.",
        simulated_start=clock.start.isoformat(),
        at_unix_s=clock.at_unix_s,
        rate=clock.rate,
    )
    return clock


def run(config: Config) -> ExitCode:
    """Run the daemon until stopped; returns the process exit code."""
    try:
        wall_clock = wall_clock_from_env()
    except ValueError as exc:
        log.error("nothing started", error=str(exc))
        return ExitCode.CONFIG
    links = build_links(config)
    daemon = Daemon(config, links, build_control_step(config, links), wall_clock=wall_clock)
    return asyncio.run(daemon.run())
