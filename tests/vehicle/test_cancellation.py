"""A cancelled vehicle link ends, whatever its session and its bus are doing, and leaves no thread.

The daemon stops by cancelling its links (issue 13: a link that did not end kept the service and
the test suite from stopping). The vehicle link is cancelled here while charging and
discharging frames flow, while it waits for a frame that never comes, and while a send is stuck
in the bus driver. Each time its run task must end cancelled within a bound, with the board's
outputs off and python-can's reader thread (the Notifier the in-process ``virtual`` bus needs)
stopped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import can
import pytest
from can.interfaces.virtual import VirtualBus

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.links import LinkStatus
from controller.vehicle import link as link_module
from controller.vehicle.canbus import CanLinkConfig
from controller.vehicle.frames import LineOutputs
from hil.vehicle.runner import VehicleSimulator
from tests.vehicle.test_link_virtual import Rig, make_rig

BOUND_S = 10.0  # generous: only a link that ignores the cancel gets near it
PROTOCOLS = ["chademo", "gbt27930"]


def transferring(state: VehicleState | None) -> bool:
    """Energy is flowing in either direction."""
    return (
        state is not None
        and state.phase is VehiclePhase.ENERGY_TRANSFER
        and (state.charge_permitted or state.discharge_permitted)
    )


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait, bounded, until ``predicate`` holds."""
    async with asyncio.timeout(BOUND_S):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads alive now that were not alive at ``before``."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


@asynccontextmanager
async def car(rig: Rig, *, present: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """The simulated car on the rig's channel (none if not ``present``), and the link's run task,
    started after the car so that every thread started since belongs to the link. On exit the
    link's threads must be gone, then the car is stopped."""
    sim_bus = can.Bus(interface="virtual", channel=rig.link.config.channel)
    simulator = asyncio.create_task(VehicleSimulator(rig.vehicle, sim_bus).run())
    # GB/T closes K1/K2 only on a measured output matching the pack (issue 17): a power stage.
    stage = asyncio.create_task(rig.power_stage()) if rig.vehicle.protocol == "gbt27930" else None
    try:
        if not present:
            simulator.cancel()
        await asyncio.sleep(0)  # the car's reader thread, if any, is started
        before = set(threading.enumerate())
        run = asyncio.create_task(rig.link.run(lambda: None))
        try:
            yield run
        finally:
            if not run.done():
                run.cancel()
                await asyncio.wait({run}, timeout=BOUND_S)
        assert not new_threads(before), f"threads left by the link: {new_threads(before)}"
    finally:
        if stage is not None:
            stage.cancel()
            await asyncio.wait({stage}, timeout=BOUND_S)
        simulator.cancel()
        await asyncio.wait({simulator}, timeout=BOUND_S)
        sim_bus.shutdown()


async def ends_cancelled(rig: Rig, run: asyncio.Task[None]) -> None:
    """Wait (bounded) for the link's run task to end: cancelled, with every output off."""
    await asyncio.wait({run}, timeout=BOUND_S)
    assert run.cancelled(), f"the cancel was lost: {run!r}"
    assert rig.lines.outputs == LineOutputs()


@pytest.mark.parametrize("mode", ["charge", "discharge"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_link_cancelled_as_a_frame_arrives_mid_transfer_ends(protocol: str, mode: str) -> None:
    """Cancelled as a car's frame is handled mid-transfer: ends cancelled, outputs off."""
    rig = make_rig(protocol, mode=mode)
    handled = rig.link._on_message
    armed: list[asyncio.Task[None]] = []

    def cancel_then_handle(message: can.Message) -> None:
        if armed:
            armed.pop().cancel()
        handled(message)

    rig.link._on_message = cancel_then_handle  # type: ignore[method-assign]

    async def scenario() -> None:
        async with car(rig) as run:
            await eventually(lambda: transferring(rig.link.snapshot()))
            state = rig.link.snapshot()
            assert state is not None
            assert state.discharge_permitted if mode == "discharge" else state.charge_permitted
            armed.append(run)
            await ends_cancelled(rig, run)
            assert not armed  # a frame came and cancelled it

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_link_cancelled_while_waiting_for_a_car_that_never_speaks_ends(protocol: str) -> None:
    """Cancelled while waiting for a car that never sends a frame, the link ends cancelled."""
    rig = make_rig(protocol)

    async def scenario() -> None:
        async with car(rig, present=False) as run:
            await eventually(lambda: rig.link.status is LinkStatus.UP)
            await eventually(lambda: rig.link.session.phase is not VehiclePhase.UNPLUGGED)
            await asyncio.sleep(0.2)  # several of its own periods without an answer
            assert rig.link.snapshot() is None  # no valid vehicle frame ever came
            run.cancel()
            await ends_cancelled(rig, run)

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_link_cancelled_while_a_silent_car_is_awaited_mid_transfer_ends(protocol: str) -> None:
    """Cancelled while awaiting a car that fell silent mid-transfer, the link ends cancelled."""
    rig = make_rig(protocol)

    async def scenario() -> None:
        async with car(rig) as run:
            await eventually(lambda: transferring(rig.link.snapshot()))
            rig.faults.silence = True
            await asyncio.sleep(0.3)  # below the 1 s timeout of the protocols' demand frames
            run.cancel()
            await ends_cancelled(rig, run)

    asyncio.run(scenario())


class StallingBus(VirtualBus):
    """A virtual bus whose driver can be made slow (every send holds the calling thread for
    ``send_delay_s``) and whose next send, once ``stall_next`` is called, holds it until
    ``release`` is set (at most ``BOUND_S``), then delivers the frame or raises. Once
    ``cancel_in_step`` is called, the next send made from a task's own step cancels that task
    and holds it for ``hold_s``."""

    def __init__(self, channel: str, **kwargs: Any) -> None:
        super().__init__(channel=channel, **kwargs)
        self.send_delay_s = 0.0
        self.fail_stalled = False
        self.stalling = threading.Event()  # set once the stalled send is under way
        self.release = threading.Event()
        self._stall = False
        self._cancel: tuple[asyncio.Task[None], float] | None = None
        self.cancelled_in_step = False

    def stall_next(self) -> None:
        """Hold the next send until ``release``."""
        self._stall = True

    def cancel_in_step(self, task: asyncio.Task[None], hold_s: float) -> None:
        """The next send ``task`` makes in its own step cancels it, then takes ``hold_s``."""
        self._cancel = (task, hold_s)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """Send after the configured delay or stall."""
        if self._cancel is not None and asyncio.current_task() is self._cancel[0]:
            task, hold_s = self._cancel
            self._cancel = None
            task.cancel()
            self.cancelled_in_step = True
            time.sleep(hold_s)
        elif self._stall:
            self._stall = False
            self.stalling.set()
            self.release.wait(BOUND_S)
            if self.fail_stalled:
                raise can.CanOperationError("Transmit buffer full")
        elif self.send_delay_s:
            time.sleep(self.send_delay_s)
        super().send(msg, timeout)


@pytest.mark.parametrize("fails", [False, True], ids=["then-sent", "then-fails"])
@pytest.mark.parametrize("send_delay_s", [0.0, 0.02], ids=["stalled", "slow"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_link_cancelled_mid_send_ends(
    protocol: str, send_delay_s: float, fails: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a send is stuck in the driver, the link ends once the send returns."""
    # The send stalls on a slow bus or a stalling one, then delivers the frame or fails; the
    # car's frames pile up in the reader's hand-over meanwhile.
    rig = make_rig(protocol)
    buses: list[StallingBus] = []

    def open_stalling_bus(config: CanLinkConfig, filters: list[dict[str, Any]]) -> can.BusABC:
        bus = StallingBus(config.channel, can_filters=filters)
        bus.send_delay_s = send_delay_s
        bus.fail_stalled = fails
        buses.append(bus)
        return bus

    monkeypatch.setattr(link_module, "open_bus", open_stalling_bus)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with car(rig) as run:
            await eventually(lambda: transferring(rig.link.snapshot()))
            assert len(buses) == 1
            bus = buses[0]

            def stop_while_stalled() -> None:
                # The daemon's stop, as seen from the loop: a cancel queued while the loop
                # thread is stuck in the driver; the car's frames pile up meanwhile.
                if bus.stalling.wait(BOUND_S):
                    loop.call_soon_threadsafe(run.cancel)
                    time.sleep(0.3)
                bus.release.set()

            stopper = threading.Thread(target=stop_while_stalled, name="test stopper")
            stopper.start()
            try:
                bus.stall_next()
                await eventually(bus.stalling.is_set)
                await ends_cancelled(rig, run)
            finally:
                bus.release.set()
                stopper.join(BOUND_S)
            assert not stopper.is_alive()
            if fails:
                assert rig.link.send_errors >= 1

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_link_cancelled_within_its_own_step_past_a_deadline_ends(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled within its own step that overran a deadline, the link ends cancelled."""
    # The cancel comes from a send of the link's tick; the driver then holds the step past the
    # session's next deadline, so the wait that follows has a zero timeout, which on its expiry
    # used to take the pending cancel for its own and suppress it as a TimeoutError.
    rig = make_rig(protocol)
    buses: list[StallingBus] = []

    def open_stalling_bus(config: CanLinkConfig, filters: list[dict[str, Any]]) -> can.BusABC:
        buses.append(StallingBus(config.channel, can_filters=filters))
        return buses[-1]

    monkeypatch.setattr(link_module, "open_bus", open_stalling_bus)

    async def scenario() -> None:
        async with car(rig) as run:
            await eventually(lambda: transferring(rig.link.snapshot()))
            bus = buses[0]
            # Longer than every period of both protocols: the next deadline is then past.
            bus.cancel_in_step(run, hold_s=0.3)
            await eventually(lambda: bus.cancelled_in_step)
            await ends_cancelled(rig, run)

    asyncio.run(scenario())
