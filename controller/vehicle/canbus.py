"""python-can at the edge: open a bus from config, read it from asyncio, classify error frames.

``BusReader`` delivers received messages to a callback on the event loop thread:

* where the bus has a file descriptor (socketcan, udp_multicast) through ``loop.add_reader``,
  reading every ready message in the callback — no thread, no queue;
* otherwise (the in-process ``virtual`` bus, vendor drivers) through python-can's ``Notifier`` in
  its own thread, handing messages to the loop through a bounded deque. Overflow policy: the
  oldest pending message is dropped and counted (periodic protocol frames are superseded by the
  next period; a dropped transport packet is asked for again by the J1939 receiver).

python-can's exceptions never leave this module: they become ``VehicleLinkError``. A receive
that raises is handed to ``failed`` as one, on the loop thread; once ``close`` has run, nothing
more is delivered or reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import can

from controller.errors import VehicleLinkError
from controller.vehicle.frames import CanFrame

# linux/can/error.h: error classes in the ID of an error frame.
CAN_ERR_TX_TIMEOUT = 0x001
CAN_ERR_CRTL = 0x004
CAN_ERR_ACK = 0x020
CAN_ERR_BUSOFF = 0x040
CAN_ERR_BUSERROR = 0x080
CAN_ERR_RESTARTED = 0x100

DEFAULT_BITRATES = {"chademo": 500_000, "gbt27930": 250_000}  # CHAdeMO 500k, J1939-11 250k
PROTOCOLS = frozenset({*DEFAULT_BITRATES, "dbc"})  # dbc: a generic BMS, bitrate from the config
INTERFACES = frozenset({"socketcan", "virtual", "udp_multicast"})


@dataclass(frozen=True, slots=True)
class CanLinkConfig:
    """How to reach the vehicle: python-can interface and channel, and which protocol to speak.

    ``bitrate_bps`` None uses the protocol's (CHAdeMO 500 kbit/s, GB/T 250 kbit/s; the generic
    ``dbc`` profile has none and needs it given); it only matters where python-can sets the
    bitrate (socketcan takes it from ``ip link``). ``pending_frames`` bounds the hand-over queue of
    the thread fallback. ``reconnect_delay_s`` is how long the link waits before it tries again to
    open a bus (or the charger board's lines) that could not be opened or failed.
    """

    interface: str
    channel: str
    protocol: str
    bitrate_bps: int | None = None
    pending_frames: int = 256
    reconnect_delay_s: float = 1.0
    end_session_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.interface not in INTERFACES:
            raise VehicleLinkError(
                f"CAN interface {self.interface!r} not one of {sorted(INTERFACES)}"
            )
        if self.protocol not in PROTOCOLS:
            raise VehicleLinkError(
                f"vehicle protocol {self.protocol!r} not one of {sorted(PROTOCOLS)}"
            )
        if self.protocol not in DEFAULT_BITRATES and self.bitrate_bps is None:
            raise VehicleLinkError(f"vehicle protocol {self.protocol!r} needs bitrate_bps")
        if self.pending_frames < 1:
            raise VehicleLinkError("pending_frames must be at least 1")
        if self.reconnect_delay_s <= 0:
            raise VehicleLinkError("reconnect_delay_s must be above 0")

    @property
    def bitrate(self) -> int:
        """The bitrate in bit/s."""
        if self.bitrate_bps is not None:
            return self.bitrate_bps
        return DEFAULT_BITRATES[self.protocol]


def receive_filters(ids: Iterable[tuple[int, bool]]) -> list[dict[str, Any]]:
    """python-can filters (kernel filters on socketcan) that pass exactly ``ids``.

    ``ids`` holds (arbitration ID, is extended) pairs, so one bus can read 11-bit and 29-bit IDs.
    """
    return [
        {"can_id": i, "can_mask": 0x1FFFFFFF if extended else 0x7FF, "extended": extended}
        for i, extended in sorted(ids)
    ]


def open_bus(config: CanLinkConfig, filters: list[dict[str, Any]]) -> can.BusABC:
    """Open the configured bus with receive filters; failures become VehicleLinkError."""
    kwargs: dict[str, Any] = {"can_filters": filters}
    if config.interface == "socketcan":
        kwargs["bitrate"] = config.bitrate
    try:
        bus = can.Bus(interface=config.interface, channel=config.channel, **kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise VehicleLinkError(
            f"cannot open CAN {config.interface}:{config.channel}: {exc}"
        ) from None
    if config.interface == "udp_multicast":
        only_own_group(bus)
    return bus


# linux/in.h IP_MULTICAST_ALL and linux/in6.h IPV6_MULTICAST_ALL (not exported by Python).
_IP_MULTICAST_ALL = 49
_IPV6_MULTICAST_ALL = 29
_STALE_DATAGRAMS_MAX = 10_000  # bounded: a flood on the port cannot keep the drain going


def only_own_group(bus: can.BusABC) -> None:
    """Receive only the bus's own multicast group.

    Linux delivers every group joined on a port to every socket bound to that port unless
    IP_MULTICAST_ALL is cleared (ip(7)); python-can binds all udp_multicast buses to one port,
    so without this two simulated charger/vehicle pairs on other groups would hear each other.
    """
    fd = bus.fileno()
    if fd < 0:
        return
    # Not Linux: the option does not exist and groups are kept apart already.
    with socket.socket(fileno=os.dup(fd)) as sock, contextlib.suppress(OSError):
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        # What arrived between the bind and the option may be another group's: drop it (the
        # bus has just opened; MSG_DONTWAIT leaves the shared descriptor's blocking mode alone).
        for _ in range(_STALE_DATAGRAMS_MAX):
            try:
                sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break


def to_message(frame: CanFrame) -> can.Message:
    """A python-can message for a session frame."""
    return can.Message(
        arbitration_id=frame.arbitration_id,
        data=frame.data,
        is_extended_id=frame.is_extended_id,
        check=True,
    )


def to_frame(message: can.Message) -> CanFrame:
    """A session frame for a received python-can message."""
    return CanFrame(message.arbitration_id, bytes(message.data), bool(message.is_extended_id))


def _link_error(what: str, exc: BaseException) -> VehicleLinkError:
    """python-can's (or the OS's) exception as the controller's, the original as its cause."""
    error = VehicleLinkError(f"{what} failed: {str(exc) or type(exc).__name__}")
    error.__cause__ = exc
    return error


def describe_error_frame(message: can.Message) -> str:
    """A technician's reading of an error frame's classes (linux/can/error.h)."""
    names = [
        name
        for bit, name in (
            (CAN_ERR_TX_TIMEOUT, "tx timeout"),
            (CAN_ERR_CRTL, "controller problem"),
            (CAN_ERR_ACK, "no ack"),
            (CAN_ERR_BUSOFF, "bus-off"),
            (CAN_ERR_BUSERROR, "bus error"),
            (CAN_ERR_RESTARTED, "controller restarted"),
        )
        if message.arbitration_id & bit
    ]
    return ", ".join(names) or f"error class 0x{message.arbitration_id:X}"


class _ThreadHandOver(can.Listener):
    """Notifier-thread listener: bounded deque, one loop wake-up per batch."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[can.Message], None],
        failed: Callable[[VehicleLinkError], None],
        limit: int,
    ) -> None:
        self._loop = loop
        self._deliver = deliver
        self._failed = failed
        self._pending: collections.deque[can.Message] = collections.deque()
        self._limit = limit
        self._lock = threading.Lock()
        self._scheduled = False
        self.dropped = 0

    def on_message_received(self, msg: can.Message) -> None:
        with self._lock:
            if len(self._pending) >= self._limit:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(msg)
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for msg in batch:
            self._deliver(msg)

    def on_error(self, exc: Exception) -> None:
        self._loop.call_soon_threadsafe(self._failed, _link_error("receive", exc))
        time.sleep(0.1)  # the Notifier retries recv at once: do not spin on a dead bus


class BusReader:
    """Attach a bus to the running loop; ``deliver`` runs on the loop thread for every message."""

    def __init__(
        self,
        bus: can.BusABC,
        deliver: Callable[[can.Message], None],
        failed: Callable[[VehicleLinkError], None],
        *,
        pending_frames: int = 256,
    ) -> None:
        self._bus = bus
        self._deliver = deliver
        self._failed = failed
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._fd = -1
        self._notifier: can.Notifier | None = None
        self._handover: _ThreadHandOver | None = None
        try:
            self._fd = bus.fileno()
        except NotImplementedError:
            self._fd = -1
        if self._fd >= 0:
            self._loop.add_reader(self._fd, self._readable)
        else:
            # What the thread handed over just before close() is still queued on the loop.
            self._handover = _ThreadHandOver(
                self._loop, self._deliver_open, self._failed_open, pending_frames
            )
            self._notifier = can.Notifier(bus, [self._handover], timeout=0.1)

    @property
    def mode(self) -> str:
        """ "add_reader" or "thread"."""
        return "add_reader" if self._fd >= 0 else "thread"

    @property
    def dropped(self) -> int:
        """Messages dropped by the bounded hand-over (thread mode)."""
        return 0 if self._handover is None else self._handover.dropped

    def _deliver_open(self, msg: can.Message) -> None:
        if not self._closed:
            self._deliver(msg)

    def _failed_open(self, exc: VehicleLinkError) -> None:
        if not self._closed:
            self._failed(exc)

    def _readable(self) -> None:
        try:
            while (msg := self._bus.recv(0)) is not None:
                self._deliver(msg)
        except (can.CanError, OSError) as exc:
            # Detach first: a dead socket stays readable and would be read again at once.
            self._loop.remove_reader(self._fd)
            self._fd = -1
            self._failed(_link_error("receive", exc))

    def close(self) -> None:
        """Detach from the loop and stop the reader thread; nothing is delivered after it."""
        self._closed = True
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1
        if self._notifier is not None:
            self._notifier.stop(timeout=1.0)
            self._notifier = None
