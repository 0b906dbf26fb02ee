"""Full sessions over python-can's in-process virtual bus: the link against the simulated car."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import can
import pytest

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import VehicleLinkError
from controller.links import LinkStatus, VehicleLink
from controller.vehicle import link as link_module
from controller.vehicle.canbus import CAN_ERR_BUSOFF, CAN_ERR_RESTARTED, CanLinkConfig, open_bus
from controller.vehicle.chademo import ChademoChargerConfig
from controller.vehicle.frames import LineInputs, LineOutputs, Step
from controller.vehicle.gbt27930 import GbtChargerConfig
from controller.vehicle.link import CanVehicleLink
from hil.vehicle import BatteryModel, ChademoVehicle, FaultInjection, GbtVehicle, SimulatedLines
from hil.vehicle.chademo_ev import ChademoVehicleConfig
from hil.vehicle.gbt_ev import VIN, GbtVehicleConfig
from hil.vehicle.runner import VehicleSimulator

PROTOCOLS = ["chademo", "gbt27930"]


class FlakyLines:
    """Lines that fail to open, or to read, a given number of times (a board coming up late)."""

    def __init__(self, *, fail_opens: int = 0, wrapped: SimulatedLines | None = None) -> None:
        self.wrapped = wrapped or SimulatedLines()
        self.fail_opens = fail_opens
        self.fail_reads = 0
        self.opens = 0
        self.closes = 0
        self.closed = False

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise VehicleLinkError("GPIO chip not there yet")
        self.closed = False

    def read(self) -> LineInputs:
        if self.fail_reads:
            self.fail_reads -= 1
            raise VehicleLinkError("GPIO chip went away")
        return self.wrapped.read()

    def write(self, outputs: LineOutputs) -> None:
        self.wrapped.write(outputs)

    def close(self) -> None:
        self.closes += 1
        self.closed = True
        self.wrapped.close()


@dataclass
class Rig:
    """A link and a simulated vehicle sharing one virtual channel and one set of lines."""

    link: CanVehicleLink
    vehicle: ChademoVehicle | GbtVehicle
    lines: SimulatedLines
    faults: FaultInjection
    direction: int
    wakes: list[float] = field(default_factory=list)
    woken_with: list[VehicleState | None] = field(default_factory=list)

    def woken(self) -> None:
        """The wake callback: when, and the snapshot the control loop would read then."""
        self.wakes.append(time.monotonic())
        self.woken_with.append(self.link.snapshot())

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
            self.link.update_output(self.output_voltage_v(), current)
            await asyncio.sleep(0.02)

    def output_voltage_v(self) -> float:
        """The voltage at the charger's output: the pack's only through closed contactors (the
        charger's, or for GB/T the car's K5/K6), else bled to 0 V."""
        closed = self.lines.outputs.contactors
        if isinstance(self.vehicle, GbtVehicle):
            closed = closed or self.vehicle.contactors_closed
        return self.vehicle.battery.voltage_v if closed else 0.0


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


class ManualClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def play(rig: Rig, scenario: Callable[[Rig], Awaitable[None]]) -> None:
    """Run link, simulator and power stage around ``scenario``, then tear everything down."""

    async def main() -> None:
        sim_bus = can.Bus(interface="virtual", channel=rig.link.config.channel)
        simulator = VehicleSimulator(rig.vehicle, sim_bus)
        tasks = [
            asyncio.create_task(rig.link.run(rig.woken)),
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


async def eventually(predicate: Callable[[], bool], timeout_s: float) -> None:
    """Wait (loosely bounded) until ``predicate`` holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


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
        # GB/T holds the lock until the stage reports the output below 60 V (issue 17).
        await eventually(lambda: rig.lines.outputs == LineOutputs(), 1.0)

    play(make_rig(protocol), scenario)


def test_gbt_pause_wakes_the_loop_when_it_starts_and_ends() -> None:
    """A BSM "charging forbidden" pause is no session event, but it wakes the loop both ways."""

    async def scenario(rig: Rig) -> None:
        await rig.until(lambda s: transferring(s) and s.charge_permitted, 8.0)
        wakes = len(rig.wakes)
        rig.faults.charging_forbidden = True
        await rig.until(lambda s: not s.charge_permitted, 10.0)
        # The loop was woken with the pause already in the snapshot it reads.
        assert any(s is not None and not s.charge_permitted for s in rig.woken_with[wakes:])
        assert rig.state().phase is VehiclePhase.ENERGY_TRANSFER  # the session goes on
        wakes = len(rig.wakes)
        rig.faults.charging_forbidden = False
        await rig.until(lambda s: s.charge_permitted, 10.0)
        assert any(s is not None and s.charge_permitted for s in rig.woken_with[wakes:])

    play(make_rig("gbt27930"), scenario)


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
def test_current_demand_timeout(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Current demand (0x102 / BCL) that stops coming ends transfer on its 1 s timeout (GB/T: a
    reconnect, no fault). The 1 s itself is timed on a simulated clock by the session tests."""
    rig = make_rig(protocol)
    reasons: list[str] = []
    apply = rig.link._apply

    def recording(step: Step) -> None:
        reasons.extend(event.reason for event in step.events)
        apply(step)

    monkeypatch.setattr(rig.link, "_apply", recording)

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        rig.faults.silence_demand = True
        if protocol == "gbt27930":  # GB/T 27930: reconnect 3 times, then abort
            await rig.until(lambda s: s.phase is not VehiclePhase.ENERGY_TRANSFER, 10.0)
            assert not rig.state().charge_permitted
            assert rig.state().faults == ()
            assert "GB/T BCL not received for more than 1 s; reconnect 1 of 3" in reasons
            return
        await rig.until(lambda s: s.phase is VehiclePhase.FAULT, 10.0)
        state = rig.state()
        assert not state.charge_permitted
        assert any("0x102 not received for more than 1 s" in f for f in state.faults)

    play(rig, scenario)


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


def test_missing_interface_reports_down_and_keeps_running() -> None:
    """A CAN channel that does not exist: DOWN with the reason, a wake, and run() keeps going."""
    config = CanLinkConfig(
        interface="socketcan", channel="nosuchcan0", protocol="chademo", reconnect_delay_s=0.05
    )
    lines = SimulatedLines()
    link = CanVehicleLink(config, lines)
    wakes: list[float] = []

    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: wakes.append(time.monotonic())))
        await asyncio.sleep(0.3)
        assert not task.done()
        assert link.status is LinkStatus.DOWN
        assert "nosuchcan0" in link.last_error
        assert len(wakes) == 1  # DOWN once; the retries are quiet
        assert lines.outputs == LineOutputs()  # no car is woken without a bus
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_bus_that_appears_later_is_opened_on_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interface that fails to open twice (a HAT driver still loading) is UP on the third
    try; each try comes reconnect_delay_s after the last on the link's clock, never sooner."""
    clock = ManualClock()
    attempts: list[float] = []
    real_open = open_bus

    def late_bus(config: CanLinkConfig, filters: list[dict[str, Any]]) -> can.BusABC:
        attempts.append(clock())
        if len(attempts) < 3:
            raise VehicleLinkError(f"cannot open CAN virtual:{config.channel}: no such device")
        return real_open(config, filters)

    monkeypatch.setattr(link_module, "open_bus", late_bus)
    channel = f"late-{uuid.uuid4().hex}"
    config = CanLinkConfig(
        interface="virtual", channel=channel, protocol="gbt27930", reconnect_delay_s=0.25
    )
    link = CanVehicleLink(config, SimulatedLines(), clock=clock)
    statuses: list[LinkStatus] = []

    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: statuses.append(link.status)))
        await eventually(lambda: bool(attempts), 10.0)
        clock.now_s += 0.125  # half the delay on the link's clock: no retry yet
        await asyncio.sleep(0.5)  # the link's own waits are 0.25 s of its clock at most
        assert len(attempts) == 1
        clock.now_s += 0.125
        await eventually(lambda: len(attempts) == 2, 10.0)
        clock.now_s += 0.25
        await eventually(lambda: link.status is LinkStatus.UP, 10.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert attempts == [0.0, 0.25, 0.5]
    assert statuses[0] is LinkStatus.DOWN


def test_lines_that_cannot_open_are_retried_like_the_bus() -> None:
    """Board lines that fail to open keep the link DOWN with their reason, then it comes UP."""
    lines = FlakyLines(fail_opens=2)
    config = CanLinkConfig(
        interface="virtual",
        channel=f"flaky-{uuid.uuid4().hex}",
        protocol="chademo",
        reconnect_delay_s=0.05,
    )
    link = CanVehicleLink(config, lines)
    reasons: list[str] = []

    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: reasons.append(link.last_error)))
        await eventually(lambda: link.status is LinkStatus.UP, 5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert reasons[0] == "GPIO chip not there yet"
    assert lines.opens == 3
    assert lines.closed  # released when run() ended


def test_lines_failing_mid_session_fault_it_and_reopen() -> None:
    """Lines that fail during a session: charger fault, DOWN, outputs released, reopened later."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        flaky = rig.link._lines
        assert isinstance(flaky, FlakyLines)
        flaky.fail_reads = 1
        await rig.until(lambda s: s.phase is VehiclePhase.FAULT, 2.0)
        assert any("charger board lines failed" in f for f in rig.state().faults)
        await eventually(lambda: status(rig) is LinkStatus.UP and flaky.opens >= 2, 3.0)
        assert flaky.closes >= 1

    rig = make_rig("chademo")
    rig.link = CanVehicleLink(
        rig.link.config,
        FlakyLines(wrapped=rig.lines),
        charger=ChademoChargerConfig(
            insulation_test_s=0.2, discharge_offered=True, available_input_current_a=50
        ),
    )
    rig.link.allow_energy_transfer(True)
    play(rig, scenario)


def test_bus_lost_mid_session_still_stops_it_in_order() -> None:
    """A bus lost during transfer: DOWN, and the session, still ticked while the link waits to
    reopen the bus, faults on the 0x102 timeout and then switches the contactors, d2 and d1 off
    in the protocol's order (after waiting up to 4 s for the vehicle's contactor), all of it
    before the bus is tried again."""

    async def scenario(rig: Rig) -> None:
        await rig.until(transferring, 8.0)
        assert rig.lines.outputs.contactors
        rig.link._on_bus_failed(OSError("network is down"))
        await rig.until(lambda s: s.phase is VehiclePhase.FAULT, 10.0)
        assert status(rig) is LinkStatus.DOWN
        assert "network is down" in rig.link.last_error
        state = rig.state()
        assert not state.charge_permitted
        assert any("0x102 not received for more than 1 s" in f for f in state.faults)
        await eventually(lambda: rig.lines.outputs == LineOutputs(), 15.0)
        assert status(rig) is LinkStatus.DOWN  # not yet retried: the retry is 60 s away

    rig = make_rig("chademo")
    config = dataclasses.replace(rig.link.config, reconnect_delay_s=60.0)
    rig.link = CanVehicleLink(
        config, rig.lines, charger=ChademoChargerConfig(insulation_test_s=0.2)
    )
    rig.link.allow_energy_transfer(True)
    play(rig, scenario)


def test_config_rejects_unknown_values() -> None:
    """An unknown interface or protocol is refused when the config is built."""
    with pytest.raises(VehicleLinkError):
        CanLinkConfig(interface="pcan", channel="x", protocol="chademo")
    with pytest.raises(VehicleLinkError):
        CanLinkConfig(interface="virtual", channel="x", protocol="ccs")
    assert CanLinkConfig(interface="virtual", channel="x", protocol="gbt27930").bitrate == 250_000
