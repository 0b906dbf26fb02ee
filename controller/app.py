"""Wiring: builds the links and the control step from the config and runs the daemon.

This is the only module that knows which concrete link classes exist; the daemon itself works
with the protocols in ``controller.links``.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from controller.aggregator.disabled import DisabledAggregator
from controller.config import Config, load_register_map
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    VehicleState,
)
from controller.daemon import ControlOutput, ControlStep, Daemon, ExitCode, Links
from controller.inverter.drivers import InverterDriver, SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.regmap import RegisterMapDriver
from controller.inverter.transport import Endpoint, ModbusTransport, SerialEndpoint, TcpEndpoint
from controller.links import AggregatorLink, InverterLink, VehicleLink
from controller.unavailable import UnavailableLink

log = structlog.get_logger(component="app")


def build_links(config: Config) -> Links:
    """The three links the config describes."""
    return Links(
        vehicle=_build_vehicle(config),
        inverter=_build_inverter(config),
        aggregator=_build_aggregator(config),
    )


def _build_vehicle(config: Config) -> VehicleLink:
    return UnavailableLink(
        "vehicle", f"no CAN session for protocol {config.vehicle.protocol!r} in this version"
    )


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
    return UnavailableLink("aggregator", "no MQTT client in this version")


def build_control_step(config: Config) -> ControlStep:
    def hold_zero(
        vehicle: VehicleState | None,
        inverter: InverterState | None,
        setpoint: Setpoint | None,
        monotonic_s: float,
        wall: dt.datetime,
    ) -> ControlOutput:
        return ControlOutput(PowerCommand.zero(), PowerState.IDLE, None, ("no core",))

    return hold_zero


def run(config: Config) -> ExitCode:
    """Run the daemon until stopped; returns the process exit code."""
    daemon = Daemon(config, build_links(config), build_control_step(config))
    return asyncio.run(daemon.run())
