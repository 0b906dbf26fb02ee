"""Full sessions over python-can's in-process virtual bus: the link against the simulated car."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import can
import pytest

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import VehicleLinkError
from controller.links import LinkStatus, VehicleLink
from controller.vehicle.canbus import CAN_ERR_BUSOFF, CAN_ERR_RESTARTED, CanLinkConfig
from controller.vehicle.chademo import ChademoChargerConfig
from controller.vehicle.frames import LineOutputs
from controller.vehicle.gbt27930 import GbtChargerConfig
from controller.vehicle.link import CanVehicleLink
from hil.vehicle import BatteryModel, ChademoVehicle, FaultInjection, GbtVehicle, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig
from hil.vehicle.gbt_ev import VIN, GbtVehicleConfig
from hil.vehicle.runner import VehicleSimulator

PROTOCOLS = ["chademo", "gbt27930"]


@dataclass
class Rig:
    """A link and a simulated vehicle sharing one virtual channel and one set of lines."""

    link: CanVehicleLink
    vehicle: ChademoVehicle | GbtVehicle
    lines: SimulatedLines
    faults: FaultInjection
    direction: int
    wakes: list[float] = field(default_factory=list)

    def state(self) -> VehicleState:
        """The link's snapshot, which must exist by now."""
        snapshot = self.link.snapshot()
        assert snapshot is not None
        return snapshot

    async def until(self, predicate: Callable[[VehicleState], bool], timeout_s: float) -> float:
        """Wait (loosely bounded) for the snapshot to satisfy ``predicate``; return when."""
        async with asyncio.timeout(timeout_s):
            while True:
                snapshot = self.link.snapshot()
                if snapshot is not None and predicate(snapshot):
                    return time.monotonic()
                await asyncio.sleep(0.01)

    async def power_stage(self) -> None:
        """Follow the snapshot as the core would, reporting the output back to the link."""
        while True:
            current = 0.0
            s = self.link.snapshot()
            if s is not None and self.direction > 0 and s.charge_permitted:
                current = s.charge_current_limit_a or 0.0
            elif s is not None and self.direction < 0 and s.discharge_permitted:
                current = -(s.discharge_current_limit_a or 0.0)
            self.link.update_output(self.vehicle.battery.voltage_v, current)
            await asyncio.sleep(0.02)


def make_rig(protocol: str, *, mode: str = "charge", faults: FaultInjection | None = None) -> Rig:
    """A plugged-in charger link and car on a fresh virtual channel."""
    faults = faults or FaultInjection()
    lines = SimulatedLines(plugged=True)
    battery = BatteryModel(soc_pct=50.0 if mode == "charge" else 70.0)
    channel = f"vehicle-test-{uuid.uuid4().hex}"
    vehicle: ChademoVehicle | GbtVehicle
    charger: ChademoChargerConfig | GbtChargerConfig
    if protocol == "chademo":
        vehicle = ChademoVehicle(
            battery, faults, config=ChademoVehicleConfig(mode=mode), lines=lines
        )
        charger = ChademoChargerConfig(insulation_test_s=0.2, discharge_offered=True)
    else:
        vehicle = GbtVehicle(battery, faults, config=GbtVehicleConfig(mode=mode), lines=lines)
        charger = GbtChargerConfig(insulation_test_s=0.2, discharge_offered=True)
    config = CanLinkConfig(interface="virtual", channel=channel, protocol=protocol)
    link = CanVehicleLink(config, lines, charger=charger)
    link.allow_energy_transfer(True)
    return Rig(link, vehicle, lines, faults, 1 if mode == "charge" else -1)


def play(rig: Rig, scenario: Callable[[Rig], Awaitable[None]]) -> None:
    """Run link, simulator and power stage around ``scenario``, then tear everything down."""

    async def main() -> None:
        sim_bus = can.Bus(interface="virtual", channel=rig.link.config.channel)
        simulator = VehicleSimulator(rig.vehicle, sim_bus)
        tasks = [
            asyncio.create_task(rig.link.run(lambda: rig.wakes.append(time.monotonic()))),
            asyncio.create_task(simulator.run()),
            asyncio.create_task(rig.power_stage()),
        ]
        try:
            await scenario(rig)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            sim_bus.shutdown()
            for result in results:
                if not isinstance(result, asyncio.CancelledError):
                    pytest.fail(f"a task ended on its own: {result!r}")

    asyncio.run(main())


def status(rig: Rig) -> LinkStatus:
    """The link's status, read fresh."""
    return rig.link.status


def transferring(state: VehicleState) -> bool:
    """Energy is flowing."""
    return state.phase is VehiclePhase.ENERGY_TRANSFER and (
        state.charge_permitted or state.discharge_permitted
    )


def test_link_satisfies_the_vehicle_link_protocol() -> None:
    """CanVehicleLink is a VehicleLink and starts with no snapshot."""
    rig = make_rig("chademo")
    link: VehicleLink = rig.link
    assert link.snapshot() is None
    assert link.status is LinkStatus.STARTING


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_charge_session(protocol: str) -> None:
    """Plug-in to energy transfer: the car charges and every phase change woke the loop."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        assert rig.link.status is LinkStatus.UP
        soc = rig.vehicle.battery.soc_pct
        await asyncio.sleep(0.5)
        assert rig.vehicle.battery.soc_pct > soc
        assert rig.state().charge_permitted
        assert len(rig.wakes) >= 3  # handshake, ready, energy transfer

    play(make_rig(protocol), scenario)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_discharge_session(protocol: str) -> None:
    """A discharging car exports within its limits and its SoC falls."""

    async def scenario(rig: Rig) -> None:
        await rig.until(lambda s: transferring(s) and s.discharge_permitted, 8.0)
        assert rig.state().discharge_current_limit_a in (50.0, 30.0)
        soc = rig.vehicle.battery.soc_pct
        await asyncio.sleep(0.5)
        assert rig.vehicle.battery.soc_pct < soc

    play(make_rig(protocol, mode="discharge"), scenario)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_normal_stop(protocol: str) -> None:
    """end_session() runs the stop sequence to ENDED with every line off."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        async with asyncio.timeout(8.0):
            await rig.link.end_session()
        assert rig.state().phase is VehiclePhase.ENDED
        assert rig.state().faults == ()
        assert rig.lines.outputs == LineOutputs()

    play(make_rig(protocol), scenario)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vehicle_stop_request(protocol: str) -> None:
    """The car's stop request wakes the loop and ends the session without a fault."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        wakes = len(rig.wakes)
        rig.faults.stop_request = True
        await rig.until(lambda s: s.stop_requested, 2.0)
        assert len(rig.wakes) > wakes
        await rig.until(lambda s: s.phase is VehiclePhase.ENDED, 8.0)
        assert rig.state().faults == ()

    play(make_rig(protocol), scenario)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_current_demand_timeout(protocol: str) -> None:
    """Current demand (0x102 / BCL) missing for more than 1 s faults the session."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        rig.faults.silence_demand = True
        silenced = time.monotonic()
        faulted = await rig.until(lambda s: s.phase is VehiclePhase.FAULT, 3.0)
        assert 0.9 <= faulted - silenced <= 2.0
        state = rig.state()
        assert not state.charge_permitted
        assert any("not received for more than 1 s" in f for f in state.faults)

    play(make_rig(protocol), scenario)


@pytest.mark.parametrize(
    "faults",
    [FaultInjection(tp_drop_packets=frozenset({3})), FaultInjection(tp_reorder=True)],
    ids=["lost", "reordered"],
)
def test_gbt_transport_reassembly(faults: FaultInjection) -> None:
    """BRM, BCP and BCS survive lost and reordered transport packets on the bus."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        await rig.until(lambda s: s.pack_voltage_v is not None, 2.0)
        assert rig.state().identity == VIN

    play(make_rig("gbt27930", faults=faults), scenario)


def test_bus_off_is_reported_and_wakes() -> None:
    """An error frame with the bus-off class sets DOWN and wakes; a restart sets UP again."""

    async def scenario(rig: Rig) -> None:
        await rig.until(lambda s: s.phase is not VehiclePhase.UNPLUGGED, 3.0)
        wakes = len(rig.wakes)
        bus_off = can.Message(arbitration_id=CAN_ERR_BUSOFF, is_error_frame=True, dlc=8)
        # Error frames never pass the virtual bus's software filters: hand one to the reader side.
        rig.link._on_message(bus_off)
        assert status(rig) is LinkStatus.DOWN
        assert len(rig.wakes) == wakes + 1
        assert rig.link.last_error.startswith("bus-off")
        restarted = can.Message(arbitration_id=CAN_ERR_RESTARTED, is_error_frame=True, dlc=8)
        rig.link._on_message(restarted)
        assert status(rig) is LinkStatus.UP

    play(make_rig("chademo"), scenario)


def test_missing_interface_raises() -> None:
    """A CAN channel that does not exist makes run() raise VehicleLinkError."""
    config = CanLinkConfig(interface="socketcan", channel="nosuchcan0", protocol="chademo")
    link = CanVehicleLink(config, SimulatedLines())

    async def main() -> None:
        await link.run(lambda: None)

    with pytest.raises(VehicleLinkError, match="nosuchcan0"):
        asyncio.run(main())


def test_config_rejects_unknown_values() -> None:
    """An unknown interface or protocol is refused when the config is built."""
    with pytest.raises(VehicleLinkError):
        CanLinkConfig(interface="pcan", channel="x", protocol="chademo")
    with pytest.raises(VehicleLinkError):
        CanLinkConfig(interface="virtual", channel="x", protocol="ccs")
    assert CanLinkConfig(interface="virtual", channel="x", protocol="gbt27930").bitrate == 250_000
