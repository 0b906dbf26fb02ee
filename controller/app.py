"""Wiring: builds the links and the control step from the config and runs the daemon.

This is the only module that knows which concrete link classes exist; the daemon itself works
with the protocols in ``controller.links``.
"""

from __future__ import annotations

import asyncio

import structlog

from controller.aggregator.disabled import DisabledAggregator
from controller.aggregator.link import MqttAggregatorLink
from controller.config import Config, load_register_map
from controller.control import CoreControlStep, policy_from_config
from controller.daemon import ControlStep, Daemon, ExitCode, Links
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


def build_control_step(config: Config) -> ControlStep:
    """The safety core, with the policy from the config."""
    return CoreControlStep(policy_from_config(config))


def run(config: Config) -> ExitCode:
    """Run the daemon until stopped; returns the process exit code."""
    daemon = Daemon(config, build_links(config), build_control_step(config))
    return asyncio.run(daemon.run())
