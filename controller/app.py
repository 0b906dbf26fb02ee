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
from controller.inverter.unavailable import UnavailableInverter
from controller.links import AggregatorLink, InverterLink, LinkStatus, VehicleLink, Wake

log = structlog.get_logger(component="app")


def build_links(config: Config) -> Links:
    """The three links the config describes."""
    return Links(
        vehicle=_build_vehicle(config),
        inverter=_build_inverter(config),
        aggregator=_build_aggregator(config),
    )


class _NoVehicleLink:
    """Stands in while the CAN link is not wired: no vehicle, so the core commands 0 W."""

    name = "vehicle"

    def __init__(self) -> None:
        self._status = LinkStatus.STARTING

    @property
    def status(self) -> LinkStatus:
        return self._status

    async def run(self, wake: Wake) -> None:
        log.warning("vehicle link unavailable; power stays at 0 W")
        self._status = LinkStatus.DOWN
        wake()
        await asyncio.Event().wait()

    def snapshot(self) -> VehicleState | None:
        return None

    def allow_energy_transfer(self, allowed: bool) -> None:
        return

    async def end_session(self) -> None:
        return


def _build_vehicle(config: Config) -> VehicleLink:
    return _NoVehicleLink()


def _build_inverter(config: Config) -> InverterLink:
    return UnavailableInverter(
        f"no Modbus driver for transport {config.inverter.transport!r} in this version"
    )


def _build_aggregator(config: Config) -> AggregatorLink:
    if not config.aggregator.enabled:
        return DisabledAggregator()
    return DisabledAggregator()


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
