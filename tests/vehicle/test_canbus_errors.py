"""The python-can edge under failure: receive errors, failed sends and shutdowns, and overflow.

A ``FaultyBus`` stands in for a python-can interface and raises on demand: either read through a
socket (``BusReader``'s ``add_reader`` path, as socketcan is) or through python-can's
``Notifier`` thread (as the ``virtual`` bus and vendor drivers are).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import can
import pytest
import structlog

from controller.errors import VehicleLinkError
from controller.links import LinkStatus
from controller.vehicle import link as link_module
from controller.vehicle.canbus import BusReader, CanLinkConfig
from controller.vehicle.link import CanVehicleLink
from hil.vehicle import SimulatedLines

MODES = ["add_reader", "thread"]
RECEIVE_ERRORS: dict[str, Callable[[], Exception]] = {
    "CanOperationError": lambda: can.CanOperationError("Network is down"),
    "OSError": lambda: OSError(errno.ENETDOWN, "Network is down"),
}


class FaultyBus(can.BusABC):
    """A python-can bus whose recv, send and shutdown raise on demand.

    With ``with_fd`` it has a socket that is readable while a message or a receive error is
    pending, so ``BusReader`` reads it with ``add_reader``; without, it has no file descriptor
    and ``BusReader`` reads it from python-can's ``Notifier`` thread.
    """

    def __init__(self, *, with_fd: bool) -> None:
        self._cond = threading.Condition()
        self._inbox: collections.deque[can.Message] = collections.deque()
        self._recv_error: Exception | None = None
        self.send_error: Exception | None = None
        self.shutdown_error: Exception | None = None
        self.recv_calls = 0
        self.recv_raised = 0
        self.idle = False  # a receive found the inbox empty after the last feed
        self.sent: list[can.Message] = []
        self.shutdowns = 0
        self._pair = socket.socketpair() if with_fd else None
        if self._pair is not None:
            self._pair[0].setblocking(False)
        super().__init__(channel="faulty")

    def feed(self, *messages: can.Message) -> None:
        """Messages for the next receives."""
        with self._cond:
            self._inbox.extend(messages)
            self.idle = False
            self._signal()

    def fail_recv(self, exc: Exception | None) -> None:
        """Every receive raises ``exc`` from now on (None: receives work again)."""
        with self._cond:
            self._recv_error = exc
            self._signal()

    def _signal(self) -> None:
        if self._pair is not None:
            self._pair[1].send(b"x")
        self._cond.notify_all()

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        with self._cond:
            self.recv_calls += 1
            if self._recv_error is None and not self._inbox and timeout:
                self._cond.wait(timeout)
            if self._recv_error is not None:
                self.recv_raised += 1
                raise self._recv_error
            if self._inbox:
                return self._inbox.popleft(), False
            self.idle = True
            if self._pair is not None:
                with contextlib.suppress(BlockingIOError):
                    while self._pair[0].recv(4096):
                        pass
            return None, False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(msg)

    def fileno(self) -> int:
        if self._pair is None:
            return int(super().fileno())  # raises NotImplementedError: no descriptor
        return self._pair[0].fileno()

    def shutdown(self) -> None:
        self.shutdowns += 1
        super().shutdown()
        if self._pair is not None:
            for sock in self._pair:
                sock.close()
        if self.shutdown_error is not None:
            raise self.shutdown_error


def frame(n: int) -> can.Message:
    """A distinct data frame."""
    return can.Message(arbitration_id=0x100 + n, data=bytes([n]), is_extended_id=False)


def ids(messages: list[can.Message]) -> list[int]:
    """The arbitration IDs, in order (python-can messages compare by identity)."""
    return [m.arbitration_id for m in messages]


def block_loop_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Hold the event loop thread (so nothing handed over is drained) until ``predicate``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the reader thread never got there"
        time.sleep(0.001)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait, bounded, until ``predicate`` holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Whatever reaches the running loop's exception handler (an escaped callback error)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(None)


@pytest.mark.parametrize("error", sorted(RECEIVE_ERRORS))
@pytest.mark.parametrize("mode", MODES)
def test_a_receive_error_becomes_a_vehicle_link_error_on_the_loop(mode: str, error: str) -> None:
    """A recv that raises reaches ``failed`` as VehicleLinkError on the loop thread, never raw."""
    raised = RECEIVE_ERRORS[error]()
    delivered: list[can.Message] = []
    failures: list[tuple[Exception, int]] = []

    async def main() -> None:
        bus = FaultyBus(with_fd=mode == "add_reader")
        with loop_errors() as escaped:
            reader = BusReader(
                bus, delivered.append, lambda exc: failures.append((exc, threading.get_ident()))
            )
            assert reader.mode == mode
            try:
                bus.feed(frame(1))
                await until(lambda: len(delivered) == 1)
                bus.fail_recv(raised)
                await until(lambda: bool(failures))
                calls = bus.recv_calls
                await asyncio.sleep(0.05)  # a reader left on the dead socket would spin here
                if mode == "add_reader":
                    assert bus.recv_calls == calls, "the failed bus was read again"
            finally:
                reader.close()
                bus.shutdown()
        assert escaped == []

    asyncio.run(main())
    assert ids(delivered) == [0x101]
    assert failures
    for exc, thread in failures:
        assert isinstance(exc, VehicleLinkError)
        assert "Network is down" in str(exc)
        assert exc.__cause__ is raised
        assert thread == threading.main_thread().ident


def test_hand_over_overflow_drops_the_oldest_and_counts_them() -> None:
    """A full thread hand-over drops its oldest frame and counts it (canbus.py's policy)."""
    delivered: list[can.Message] = []
    burst = [frame(n) for n in range(10)]

    async def main() -> None:
        bus = FaultyBus(with_fd=False)
        reader = BusReader(bus, delivered.append, lambda exc: None, pending_frames=4)
        assert reader.mode == "thread"
        try:
            bus.feed(*burst)
            # The reader thread hands over all ten while the loop cannot drain.
            block_loop_until(lambda: bus.idle)
            await until(lambda: len(delivered) >= 4)
            await asyncio.sleep(0.05)  # nothing more is on its way
            assert ids(delivered) == ids(burst[6:])
            assert reader.dropped == 6
            bus.feed(frame(20), frame(21))  # with room again, nothing is dropped
            await until(lambda: len(delivered) == 6)
            assert ids(delivered[4:]) == [0x114, 0x115]
            assert reader.dropped == 6
        finally:
            reader.close()
            bus.shutdown()

    asyncio.run(main())


def test_nothing_is_delivered_or_reported_after_close() -> None:
    """Frames and a failure handed over just before close() are never delivered after it."""
    delivered: list[can.Message] = []
    failures: list[Exception] = []

    async def main() -> None:
        bus = FaultyBus(with_fd=False)
        reader = BusReader(bus, delivered.append, failures.append)
        bus.feed(frame(1))
        block_loop_until(lambda: bus.idle)  # handed over, not yet drained
        bus.fail_recv(can.CanOperationError("Network is down"))
        block_loop_until(lambda: bus.recv_raised >= 2)  # the first failure was handed over
        reader.close()
        await asyncio.sleep(0.05)
        bus.shutdown()

    asyncio.run(main())
    assert delivered == []
    assert failures == []


class BusFactory:
    """Stands in for ``open_bus``: a fresh ``FaultyBus`` per open, configured by ``prepare``."""

    def __init__(self, *, with_fd: bool, prepare: Callable[[FaultyBus], None]) -> None:
        self.with_fd = with_fd
        self.prepare = prepare
        self.buses: list[FaultyBus] = []

    def __call__(self, config: CanLinkConfig, filters: list[dict[str, Any]]) -> can.BusABC:
        bus = FaultyBus(with_fd=self.with_fd)
        self.prepare(bus)
        self.buses.append(bus)
        return bus


def make_link(protocol: str = "gbt27930") -> tuple[CanVehicleLink, SimulatedLines]:
    """A plugged-in charger's link; GB/T 27930 sends CHM every 250 ms from plug-in."""
    lines = SimulatedLines(plugged=True)
    config = CanLinkConfig(
        interface="virtual",
        channel=f"faulty-{uuid.uuid4().hex}",
        protocol=protocol,
        reconnect_delay_s=0.05,
    )
    return CanVehicleLink(config, lines), lines


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel the link's run(); it must end by that cancellation, not by an error of its own."""
    task.cancel()
    async with asyncio.timeout(5.0):
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("mode", MODES)
def test_a_receive_error_takes_the_link_down_with_the_reason_and_it_reopens(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bus whose recv raises: DOWN with the reason, a wake, and a new bus UP after the delay."""
    factory = BusFactory(with_fd=mode == "add_reader", prepare=lambda bus: None)
    monkeypatch.setattr(link_module, "open_bus", factory)
    link, _lines = make_link()
    statuses: list[LinkStatus] = []

    async def main() -> None:
        with loop_errors() as escaped:
            task = asyncio.create_task(link.run(lambda: statuses.append(link.status)))
            await until(lambda: link.status is LinkStatus.UP)
            factory.buses[0].fail_recv(can.CanOperationError("Network is down"))
            await until(lambda: LinkStatus.DOWN in statuses)
            assert "Network is down" in link.last_error
            await until(lambda: len(factory.buses) == 2 and link.status is LinkStatus.UP)
            assert not task.done()
            await cancel(task)
        assert escaped == []

    asyncio.run(main())
    assert all(bus.shutdowns >= 1 for bus in factory.buses)


def test_a_failed_send_is_counted_and_logged_and_the_link_keeps_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send that raises is counted and logged; the link stays UP and sends again once it can."""

    def refuse(bus: FaultyBus) -> None:
        bus.send_error = can.CanOperationError("Transmit buffer full")

    factory = BusFactory(with_fd=True, prepare=refuse)
    monkeypatch.setattr(link_module, "open_bus", factory)
    link, _lines = make_link()

    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: None))
        await until(lambda: link.send_errors >= 2)  # CHM, every 250 ms
        assert link.status is LinkStatus.UP
        assert "Transmit buffer full" in link.last_error
        bus = factory.buses[0]
        assert bus.sent == []
        bus.send_error = None
        await until(lambda: len(bus.sent) >= 1)
        assert not task.done()
        assert len(factory.buses) == 1  # a refused send is no reason to reopen the bus
        await cancel(task)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
    failed = [e for e in logs if e["event"] == "CAN send failed"]
    assert len(failed) >= 2
    assert "Transmit buffer full" in failed[0]["error"]
    assert [e["count"] for e in failed[:2]] == [1, 2]


def test_a_failed_shutdown_is_logged_and_the_bus_is_opened_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shutdown that raises is logged, the bus is reopened, and a cancel still ends run()."""

    def broken(bus: FaultyBus) -> None:
        bus.shutdown_error = can.CanOperationError("device vanished")

    factory = BusFactory(with_fd=True, prepare=broken)
    monkeypatch.setattr(link_module, "open_bus", factory)
    link, lines = make_link()

    async def main() -> None:
        task = asyncio.create_task(link.run(lambda: None))
        await until(lambda: link.status is LinkStatus.UP)
        factory.buses[0].fail_recv(OSError(errno.ENODEV, "No such device"))
        await until(lambda: len(factory.buses) == 2 and link.status is LinkStatus.UP)
        await until(lambda: bool(factory.buses[1].sent))  # the new bus serves the session
        await cancel(task)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
    assert [bus.shutdowns for bus in factory.buses] == [1, 1]
    failed = [e for e in logs if e["event"] == "CAN bus shutdown failed"]
    assert len(failed) == 2  # after the failure, and at cancellation
    assert all("device vanished" in e["error"] for e in failed)
    assert not lines.outputs.d1  # released when run() ended
