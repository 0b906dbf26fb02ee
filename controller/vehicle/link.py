"""The vehicle link: a charger session (CHAdeMO or GB/T 27930) on a python-can bus, in asyncio.

``CanVehicleLink`` satisfies ``controller.links.VehicleLink``. It owns the bus, the session and the
charger board's lines:

* received frames are fed to the session on the loop thread as they arrive (``BusReader``);
* the session is ticked exactly when its ``next_deadline_s`` says (periodic frames, timeouts), so
  the loop sleeps between frames instead of polling;
* every safety-relevant session event (fault, stop request, phase change), every bus-off and every
  lost bus calls ``wake()`` so the control loop reacts at once;
* a bus that fails after it worked is reopened after ``reconnect_delay_s`` while the link reports
  ``DOWN``; a bus that cannot be opened at start-up raises ``VehicleLinkError`` (the interface
  does not exist), as the link contract asks.

The DBC files are read from the repository's ``dbc/`` directory (``controller.vehicle.dbc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import can

from controller.core.snapshots import VehiclePhase, VehicleState
from controller.errors import VehicleLinkError
from controller.links import LinkStatus, Wake
from controller.vehicle.canbus import (
    CAN_ERR_BUSOFF,
    CAN_ERR_RESTARTED,
    BusReader,
    CanLinkConfig,
    describe_error_frame,
    open_bus,
    receive_filters,
    to_frame,
    to_message,
)
from controller.vehicle.chademo import ChademoChargerConfig, ChademoSession
from controller.vehicle.frames import ChargerLines, LineOutputs, Step
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession
from controller.vehicle.session import ChargerSession

log = logging.getLogger(__name__)

_FINISHED = frozenset({VehiclePhase.ENDED, VehiclePhase.FAULT, VehiclePhase.UNPLUGGED})


def make_session(
    protocol: str, charger: ChademoChargerConfig | GbtChargerConfig | None = None
) -> ChargerSession:
    """The session for a protocol name, with the charger's announced ratings."""
    if protocol == "chademo":
        if charger is not None and not isinstance(charger, ChademoChargerConfig):
            raise VehicleLinkError("CHAdeMO needs a ChademoChargerConfig")
        return ChademoSession(charger)
    if protocol == "gbt27930":
        if charger is not None and not isinstance(charger, GbtChargerConfig):
            raise VehicleLinkError("GB/T 27930 needs a GbtChargerConfig")
        return GbtSession(charger)
    raise VehicleLinkError(f"unknown vehicle protocol {protocol!r}")


class CanVehicleLink:
    """The vehicle's BMS over CAN, as the daemon sees it."""

    def __init__(
        self,
        config: CanLinkConfig,
        lines: ChargerLines,
        *,
        charger: ChademoChargerConfig | GbtChargerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._lines = lines
        self._clock = clock
        self.session = make_session(config.protocol, charger)
        self._status = LinkStatus.STARTING
        self._snapshot: VehicleState | None = None
        self._wake: Wake = _no_wake
        self._bus: can.BusABC | None = None
        self._bus_failed = asyncio.Event()
        self._changed = asyncio.Event()
        self.error_frames = 0
        self.send_errors = 0
        self.last_error = ""

    def __repr__(self) -> str:
        return f"CanVehicleLink({self.name}, status={self._status}, {self.session!r})"

    @property
    def name(self) -> str:
        """Link name for logs and status."""
        return f"vehicle:{self.config.protocol}@{self.config.interface}:{self.config.channel}"

    @property
    def status(self) -> LinkStatus:
        """UP while the bus is open and not bus-off."""
        return self._status

    def snapshot(self) -> VehicleState | None:
        """The latest state, or None before the first valid vehicle frame of any session."""
        return self._snapshot

    def allow_energy_transfer(self, allowed: bool) -> None:
        """Whether the session may start or keep moving energy."""
        self.session.allow_energy_transfer(allowed)

    def update_output(self, voltage_v: float, current_a: float) -> None:
        """The power stage's measured output (+ charges the vehicle), reported to the vehicle."""
        self.session.set_output(voltage_v, current_a)

    async def end_session(self) -> None:
        """Run the normal stop sequence; return when ended or after ``end_session_timeout_s``."""
        self._apply(self.session.end(self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.end_session_timeout_s):
                while self.session.phase not in _FINISHED:
                    self._changed.clear()
                    await self._changed.wait()

    async def run(self, wake: Wake) -> None:
        """Own the bus for the daemon's lifetime; reopen it after failures."""
        self._wake = wake
        filters = receive_filters(self.session.accepted_ids, extended=self.protocol_extended)
        bus = open_bus(self.config, filters)  # an interface that does not exist: raise
        try:
            while True:
                try:
                    await self._serve(bus)
                finally:
                    self._close(bus)
                self._set_status(LinkStatus.DOWN, self.last_error)
                bus = await self._reopen(filters)
        finally:
            # Cancelled or crashed: leave the board's lines off (d1, d2, contactors, lock).
            self._lines.write(LineOutputs())

    async def _reopen(self, filters: list[dict[str, Any]]) -> can.BusABC:
        while True:
            await asyncio.sleep(self.config.reconnect_delay_s)
            try:
                return open_bus(self.config, filters)
            except VehicleLinkError as exc:
                self.last_error = str(exc)
                log.warning("vehicle link: %s", exc)

    @property
    def protocol_extended(self) -> bool:
        """GB/T uses 29-bit IDs, CHAdeMO 11-bit."""
        return self.config.protocol == "gbt27930"

    async def _serve(self, bus: can.BusABC) -> None:
        self._bus = bus
        self._bus_failed.clear()
        reader = BusReader(
            bus, self._on_message, self._on_bus_failed, pending_frames=self.config.pending_frames
        )
        self._set_status(LinkStatus.UP, f"reading {self.config.channel} via {reader.mode}")
        try:
            while not self._bus_failed.is_set():
                self._apply(self.session.tick(self._clock(), self._lines.read()))
                delay = max(0.0, self.session.next_deadline_s - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._bus_failed.wait()
        finally:
            reader.close()
            self._bus = None

    def _close(self, bus: can.BusABC) -> None:
        try:
            bus.shutdown()
        except (can.CanError, OSError) as exc:
            log.warning("vehicle link: shutting the bus down failed: %s", exc)

    def _on_message(self, message: can.Message) -> None:
        if message.is_error_frame:
            self._on_error_frame(message)
            return
        if message.is_remote_frame or message.is_fd:
            return  # neither protocol uses them: dropped cheaply
        self._apply(self.session.receive(to_frame(message), self._clock()))

    def _on_error_frame(self, message: can.Message) -> None:
        self.error_frames += 1
        text = describe_error_frame(message)
        if message.arbitration_id & CAN_ERR_BUSOFF:
            self.last_error = f"bus-off ({text})"
            self._set_status(LinkStatus.DOWN, self.last_error)
            self._wake()
        elif message.arbitration_id & CAN_ERR_RESTARTED and self._status is LinkStatus.DOWN:
            self._set_status(LinkStatus.UP, "controller restarted after bus-off")
        else:
            log.info("vehicle link: CAN error frame: %s", text)

    def _on_bus_failed(self, exc: Exception) -> None:
        self.last_error = f"CAN bus failed: {exc}"
        log.warning("vehicle link: %s", self.last_error)
        self._bus_failed.set()
        self._wake()

    def _apply(self, step: Step) -> None:
        self._lines.write(step.outputs)
        bus = self._bus
        for frame in step.frames:
            if bus is None:
                break
            try:
                bus.send(to_message(frame))
            except (can.CanError, OSError, ValueError) as exc:
                self.send_errors += 1
                self.last_error = f"send {frame!r} failed: {exc}"
                log.warning("vehicle link: %s", self.last_error)
        if self.session.valid_frames:
            self._snapshot = step.state
        wake = False
        for event in step.events:
            log.info("vehicle link: %s: %s", event.kind, event.reason)
            wake = wake or event.safety_relevant
        if step.events:
            self._changed.set()
        if wake:
            self._wake()

    def _set_status(self, status: LinkStatus, why: str) -> None:
        if status is not self._status:
            log.info("vehicle link %s: %s (%s)", self.name, status, why)
            self._status = status


def _no_wake() -> None:
    """Before ``run`` there is nobody to wake."""
