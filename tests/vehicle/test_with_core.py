"""The vehicle link, the simulated car and the real safety core together on the virtual bus.

A control loop does what the daemon's cycle does (snapshot, ``CoreControlStep``, then
``update_output`` and ``allow_energy_transfer``), and a fake power stage does what the core
commands at once and measures it, so the session only sees what a real stage would report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import can
import pytest

from controller.control import CoreControlStep
from controller.core.policy import Policy
from controller.core.snapshots import (
    InverterState,
    PowerCommand,
    PowerState,
    Setpoint,
    SetpointMode,
    VehiclePhase,
    VehicleState,
)
from controller.links import ControlOutput
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig
from controller.vehicle.gbt27930 import GbtChargerConfig
from controller.vehicle.link import CanVehicleLink
from hil.vehicle import BatteryModel, ChademoVehicle, GbtVehicle, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig
from hil.vehicle.gbt_ev import GbtVehicleConfig
from hil.vehicle.runner import VehicleSimulator

CYCLE_S = 0.05


@dataclass
class FakeStage:
    """A power stage that follows the command at once.

    It measures the pack's terminal voltage while the charger's contactors are closed (else 0 V)
    and the commanded power over that voltage as its current (+ charges the vehicle).
    """

    vehicle: ChademoVehicle | GbtVehicle
    lines: SimulatedLines
    command: PowerCommand = field(default_factory=PowerCommand.zero)

    def measured(self) -> tuple[float, float]:
        """Output voltage and current."""
        closed = self.lines.outputs.contactors
        if isinstance(self.vehicle, GbtVehicle):  # GB/T: the output sees the pack behind K5/K6
            closed = closed or self.vehicle.contactors_closed
        volts = self.vehicle.battery.voltage_v if closed else 0.0
        if not self.command.enable or volts <= 0:
            return volts, 0.0
        return volts, self.command.power_w / volts

    def snapshot(self, now_s: float) -> InverterState:
        """What the inverter link would report."""
        volts, amps = self.measured()
        return InverterState(
            observed_at_s=now_s,
            reachable=True,
            enabled=self.command.enable,
            measured_power_w=volts * amps,
            dc_voltage_v=volts,
        )


@dataclass
class Plant:
    """Link, car, lines, stage, the core and what it decided."""

    link: CanVehicleLink
    vehicle: ChademoVehicle | GbtVehicle
    lines: SimulatedLines
    stage: FakeStage
    setpoint: Setpoint
    core: CoreControlStep = field(default_factory=lambda: CoreControlStep(Policy()))
    decisions: list[ControlOutput] = field(default_factory=list)

    async def control(self) -> None:
        """The daemon's cycle: decide, tell the vehicle the output and the permission, apply."""
        while True:
            now_s = time.monotonic()
            output = self.core(
                self.link.snapshot(),
                self.stage.snapshot(now_s),
                self.setpoint,
                now_s,
                dt.datetime.now(dt.UTC),
            )
            self.decisions.append(output)
            self.stage.command = output.command
            self.link.update_output(*self.stage.measured())
            self.link.allow_energy_transfer(output.session_allowed)
            await asyncio.sleep(CYCLE_S)

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait (loosely bounded) until ``predicate`` holds."""
        async with asyncio.timeout(timeout_s):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.01)

    def phase(self) -> VehiclePhase:
        """The session's phase, UNPLUGGED before the first snapshot."""
        snapshot = self.link.snapshot()
        return VehiclePhase.UNPLUGGED if snapshot is None else snapshot.phase

    def state(self) -> VehicleState:
        """The link's snapshot, which must exist by now."""
        snapshot = self.link.snapshot()
        assert snapshot is not None
        return snapshot


def make_plant(protocol: str, *, soc_pct: float, power_w: float) -> Plant:
    """A plugged-in car, the link on a fresh virtual channel and a setpoint of ``power_w``."""
    lines = SimulatedLines(plugged=True)
    battery = BatteryModel(soc_pct=soc_pct)
    vehicle: ChademoVehicle | GbtVehicle
    charger: ChademoChargerConfig | GbtChargerConfig
    if protocol == "chademo":
        mode = "discharge" if power_w < 0 else "charge"
        vehicle = ChademoVehicle(battery, config=ChademoVehicleConfig(mode=mode), lines=lines)
        charger = ChademoChargerConfig(insulation_test_s=0.2, discharge_offered=True)
    else:
        vehicle = GbtVehicle(battery, config=GbtVehicleConfig(mode="charge"), lines=lines)
        charger = GbtChargerConfig(insulation_test_s=0.2)
    config = CanLinkConfig(
        interface="virtual", channel=f"core-{uuid.uuid4().hex}", protocol=protocol
    )
    now_s = time.monotonic()
    setpoint = Setpoint("test", now_s, now_s + 60.0, SetpointMode.POWER, power_w)
    return Plant(
        CanVehicleLink(config, lines, charger=charger),
        vehicle,
        lines,
        FakeStage(vehicle, lines),
        setpoint,
    )


def play(plant: Plant, scenario: Callable[[Plant], Awaitable[None]]) -> None:
    """Run the link, the car and the control loop around ``scenario``, then tear down."""

    async def main() -> None:
        sim_bus = can.Bus(interface="virtual", channel=plant.link.config.channel)
        tasks = [
            asyncio.create_task(plant.link.run(lambda: None)),
            asyncio.create_task(VehicleSimulator(plant.vehicle, sim_bus).run()),
            asyncio.create_task(plant.control()),
        ]
        try:
            await scenario(plant)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            sim_bus.shutdown()
            for result in results:
                if not isinstance(result, asyncio.CancelledError):
                    pytest.fail(f"a task ended on its own: {result!r}")

    asyncio.run(main())


def test_chademo_car_discharges_under_the_core() -> None:
    """A V2H CHAdeMO car at 70 % with a -3 kW setpoint reaches transfer and the core discharges."""

    async def scenario(p: Plant) -> None:
        await p.until(lambda: p.phase() is VehiclePhase.ENERGY_TRANSFER, 5.0)
        await p.until(lambda: p.decisions[-1].command.power_w <= -2999.0, 3.0)
        last = p.decisions[-1]
        assert last.state is PowerState.DISCHARGING
        assert last.command.enable
        state = p.state()
        assert state.discharge_permitted
        assert state.pack_voltage_v is not None  # from the stage's measured output
        assert state.faults == ()
        await asyncio.sleep(0.3)
        assert p.vehicle.battery.current_a < -5.0  # the car sees the discharge (0x208 byte 0)

    play(make_plant("chademo", soc_pct=70.0, power_w=-3000.0), scenario)


def test_gbt_car_charges_under_the_core() -> None:
    """A GB/T car at 50 % with a +3 kW setpoint reaches charging and the core charges it."""

    async def scenario(p: Plant) -> None:
        await p.until(lambda: p.phase() is VehiclePhase.ENERGY_TRANSFER, 5.0)
        await p.until(lambda: p.decisions[-1].command.power_w >= 2999.0, 3.0)
        last = p.decisions[-1]
        assert last.state is PowerState.CHARGING
        state = p.state()
        assert state.charge_permitted
        assert state.faults == ()
        await asyncio.sleep(0.3)
        assert p.vehicle.battery.current_a > 5.0  # the car sees the charge (CCS)

    play(make_plant("gbt27930", soc_pct=50.0, power_w=3000.0), scenario)
