"""Run a simulated vehicle on any python-can bus, in asyncio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import can

from controller.errors import VehicleLinkError
from controller.vehicle.canbus import BusReader, to_frame, to_message
from controller.vehicle.frames import CanFrame
from hil.vehicle.chademo_ev import ChademoVehicle
from hil.vehicle.gbt_ev import GbtVehicle

log = logging.getLogger(__name__)

SENT_LOG_LENGTH = 8192


class VehicleSimulator:
    """Drives a sans-IO vehicle on a bus: frames in as they arrive, ticks when they are due."""

    def __init__(
        self,
        vehicle: ChademoVehicle | GbtVehicle,
        bus: can.BusABC,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vehicle = vehicle
        self._bus = bus
        self._clock = clock
        self._failed = asyncio.Event()
        self.last_error = ""
        self.sent = 0
        # (time.monotonic_ns() just before the send, frame): the latency benchmark's "frame on
        # the wire" (CLOCK_MONOTONIC is system-wide, so other processes can compare).
        self.sent_log: deque[tuple[int, CanFrame]] = deque(maxlen=SENT_LOG_LENGTH)

    def __repr__(self) -> str:
        return f"VehicleSimulator({self.vehicle!r}, sent={self.sent})"

    async def run(self) -> None:
        """Play the vehicle until cancelled; a failed bus raises VehicleLinkError."""
        reader = BusReader(self._bus, self._on_message, self._on_failed)
        try:
            while not self._failed.is_set():
                self._send(self.vehicle.tick(self._clock()))
                delay = max(0.0, self.vehicle.next_deadline_s - self._clock())
                try:
                    async with asyncio.timeout(delay):
                        await self._failed.wait()
                except TimeoutError:
                    continue
            raise VehicleLinkError(self.last_error)
        finally:
            reader.close()

    def _on_message(self, message: can.Message) -> None:
        if message.is_error_frame or message.is_remote_frame:
            return
        replies = self.vehicle.receive(to_frame(message), self._clock())
        self._send(replies or ())

    def _on_failed(self, exc: Exception) -> None:
        self.last_error = f"simulator bus failed: {exc}"
        self._failed.set()

    def _send(self, frames: tuple[CanFrame, ...]) -> None:
        for frame in frames:
            try:
                message = to_message(frame)
                self.sent_log.append((time.monotonic_ns(), frame))
                # A wrong-DLC injection is a frame python-can itself accepts (shorter DLC).
                self._bus.send(message)
                self.sent += 1
            except (can.CanError, OSError, ValueError) as exc:
                log.warning("simulated vehicle: send %r failed: %s", frame, exc)
