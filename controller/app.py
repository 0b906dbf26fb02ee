"""Wiring: builds the links and the control step from the config and runs the daemon.

This is the only module that knows which concrete link classes exist; the daemon itself works
with the protocols in ``controller.links``.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from controller.aggregator.disabled import DisabledAggregator
from controller.config import Config
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    VehicleState,
)
from controller.daemon import ControlOutput, ControlStep, Daemon, ExitCode, Links
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
    return UnavailableLink(
        "inverter", f"no Modbus driver for transport {config.inverter.transport!r} in this version"
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
