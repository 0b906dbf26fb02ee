"""The vehicle link: a session (CHAdeMO, GB/T 27930 or a generic DBC profile) on a python-can bus.

``CanVehicleLink`` satisfies ``controller.links.VehicleLink``. It owns the bus, the session and the
charger board's lines:

* received frames are fed to the session on the loop thread as they arrive (``BusReader``);
* the session is ticked exactly when its ``next_deadline_s`` says (periodic frames, timeouts), so
  the loop sleeps between frames instead of polling;
* every safety-relevant session event (fault, stop request, phase change), every change of the
  vehicle's charge or discharge permission (a GB/T BSM pause), every bus-off, every lost bus
  or line, every change of the emergency stop and every press of the fault reset button calls
  ``wake()`` so the control loop reacts at once;
* the charger must keep running without a car, and a CAN interface (or a GPIO expander) may come
  up after the daemon (a HAT driver at boot): lines or a bus that cannot be opened, at start-up or
  after a failure, are tried again every ``reconnect_delay_s`` while the link reports ``DOWN``
  with the reason. ``run`` raises only for programming errors.

Whatever ends ``run`` (cancellation, a crash), the board's outputs are switched off (d1, d2,
contactors, lock) and the lines released.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import structlog

from controller.cancellation import cancel_requests, raise_if_cancelled_since
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
from controller.vehicle.frames import ChargerLines, LineInputs, LineOutputs, Step
from controller.vehicle.gbt27930 import GbtChargerConfig, GbtSession
from controller.vehicle.session import VehicleSession

log = structlog.get_logger(component="vehicle")

_FINISHED = frozenset({VehiclePhase.ENDED, VehiclePhase.FAULT, VehiclePhase.UNPLUGGED})

# While the bus is down and no session runs, the board's inputs (E-stop, reset button) are still
# read this often, the rate at which a session ticks (CHAdeMO polls the plug every 100 ms).
LINE_POLL_S = 0.1


def make_session(
    protocol: str,
    charger: ChademoChargerConfig | GbtChargerConfig | None = None,
    *,
    dbc_dir: str | Path | None = None,
) -> VehicleSession:
    """The session for a protocol name, with the charger's announced ratings.

    The generic ``dbc`` profile is built from its profile file (``controller.vehicle.profile``)
    and handed to ``CanVehicleLink`` as ``session``.
    """
    if protocol == "chademo":
        if charger is not None and not isinstance(charger, ChademoChargerConfig):
            raise VehicleLinkError("CHAdeMO needs a ChademoChargerConfig")
        return ChademoSession(charger, dbc_dir=dbc_dir)
    if protocol == "gbt27930":
        if charger is not None and not isinstance(charger, GbtChargerConfig):
            raise VehicleLinkError("GB/T 27930 needs a GbtChargerConfig")
        return GbtSession(charger, dbc_dir=dbc_dir)
    raise VehicleLinkError(f"no built-in session for vehicle protocol {protocol!r}")


class CanVehicleLink:
    """The vehicle's BMS over CAN, as the daemon sees it."""

    def __init__(
        self,
        config: CanLinkConfig,
        lines: ChargerLines,
        *,
        charger: ChademoChargerConfig | GbtChargerConfig | None = None,
        session: VehicleSession | None = None,
        dbc_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._lines = lines
        self._clock = clock
        self.session: VehicleSession = (
            session
            if session is not None
            else make_session(config.protocol, charger, dbc_dir=dbc_dir)
        )
        if self.session.protocol != config.protocol:
            raise VehicleLinkError(
                f"a {self.session.protocol} session on a link configured for {config.protocol}"
            )
        self._status = LinkStatus.STARTING
        # The step whose state is the snapshot; its state is built when first asked for.
        self._latest: Step | None = None
        self._wake: Wake = _no_wake
        self._bus: can.BusABC | None = None
        self._lines_open = False
        self._emergency_stop = False
        # The reset button as last read; None before the first read and while unreadable.
        self._fault_reset: bool | None = None
        self._fault_reset_presses = 0
        self._failed = asyncio.Event()
        self._changed = asyncio.Event()  # a session event, the connector lock, the bus
        self._outputs = LineOutputs()  # what the session last asked of the board
        self.error_frames = 0
        self.send_errors = 0
        self.last_error = ""

    def __repr__(self) -> str:
        return f"CanVehicleLink({self.bus}, status={self._status}, {self.session!r})"

    @property
    def name(self) -> str:
        """Link name for status (``vehicle=up``), as every link names itself by its role."""
        return "vehicle"

    @property
    def bus(self) -> str:
        """Protocol, interface and channel, for logs: e.g. ``chademo@socketcan:can0``."""
        return f"{self.config.protocol}@{self.config.interface}:{self.config.channel}"

    @property
    def status(self) -> LinkStatus:
        """UP while the bus and the lines are open and the bus is not bus-off."""
        return self._status

    def snapshot(self) -> VehicleState | None:
        """The latest state, or None before the first valid vehicle frame of any session."""
        latest = self._latest
        return None if latest is None else latest.state

    def allow_energy_transfer(self, allowed: bool) -> None:
        """The charger side is healthy and willing to move energy.

        The session goes on to energy transfer while this holds, even at 0 W (the core commands
        power only once the session transfers); ``False`` during transfer stops the session with
        the protocol's normal charger stop (CHAdeMO 0x109 stop control, GB/T CST).
        """
        self.session.allow_energy_transfer(allowed)

    def update_output(self, voltage_v: float, current_a: float) -> None:
        """The power stage's measured output (+ charges the vehicle), reported to the vehicle.

        Stamped with the link's clock: a measurement not renewed within about 1 s is unknown
        (CHAdeMO then reports no pack voltage, and neither session takes the current as low when
        contactors are to open). Pass ``math.nan`` for a value the stage does not know, never 0.
        """
        self.session.set_output(voltage_v, current_a, self._clock())

    async def end_session(self) -> None:
        """Run the normal stop sequence; return when ended and the connector is unlocked, or
        after ``end_session_timeout_s``.

        The connector unlocks only once a measurement shows the output voltage down (CHAdeMO
        10 V; GB/T 60 V, after the session has ENDED): until then the session is not over for
        the person at the car (``update_output`` must keep coming, issue 17). Without an open
        bus no frame can move the sequence on, so it returns at once: either ``run`` has ended
        (and switched the outputs off), or it is waiting to reopen the bus and keeps ticking the
        session, whose own timeouts then stop it in the protocol's order.
        """
        self._apply(self.session.end(self._clock()))
        if self._bus is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.end_session_timeout_s):
                while self._bus is not None and (
                    self.session.phase not in _FINISHED or self._outputs.lock
                ):
                    self._changed.clear()
                    await self._changed.wait()

    async def run(self, wake: Wake) -> None:
        """Own the lines and the bus for the daemon's lifetime; reopen them after failures."""
        self._wake = wake
        filters = receive_filters(self.session.receive_ids)
        try:
            while True:
                bus = await self._open(filters)
                try:
                    await self._serve(bus)
                finally:
                    self._close(bus)
                self._down(self.last_error)
                await self._wait_down(self.config.reconnect_delay_s)
        finally:
            self._release_lines()

    async def _open(self, filters: list[dict[str, Any]]) -> can.BusABC:
        """The lines and the bus, retried every ``reconnect_delay_s`` while DOWN."""
        while True:
            try:
                if not self._lines_open:
                    self._lines.open()
                    self._lines_open = True
                return open_bus(self.config, filters)
            except VehicleLinkError as exc:
                self._down(str(exc))
            await self._wait_down(self.config.reconnect_delay_s)

    async def _wait_down(self, seconds: float) -> None:
        """Wait before the next attempt; a session under way keeps being ticked meanwhile.

        With the bus gone the vehicle's frames stop, so the session's own timeouts (CHAdeMO 0x102
        and GB/T BCL: 1 s) fault it and its stop sequence switches the outputs off in the
        protocol's order. An idle session is left alone, so no car is woken (d1) without a bus.
        """
        deadline_s = self._clock() + seconds
        while (remaining_s := deadline_s - self._clock()) > 0:
            inputs = self._read_lines() if self._lines_open else None
            if self.session.phase is not VehiclePhase.UNPLUGGED:
                self._apply(self.session.tick(self._clock(), inputs or LineInputs()))
                remaining_s = min(remaining_s, self.session.next_deadline_s - self._clock())
            elif inputs is not None:
                # Nothing to tick, but a technician may still press the reset button (a latched
                # E-stop is reset with no CAN interface up): the inputs keep being followed.
                remaining_s = min(remaining_s, LINE_POLL_S)
            await asyncio.sleep(max(0.0, remaining_s))

    async def _serve(self, bus: can.BusABC) -> None:
        self._bus = bus
        self._failed.clear()
        reader = BusReader(
            bus, self._on_message, self._on_bus_failed, pending_frames=self.config.pending_frames
        )
        self._set_status(LinkStatus.UP, f"reading {self.config.channel} via {reader.mode}")
        self._changed.set()
        try:
            while not self._failed.is_set():
                requests_before = cancel_requests()
                inputs = self._read_lines()
                if inputs is None:
                    break
                self._apply(self.session.tick(self._clock(), inputs))
                delay = max(0.0, self.session.next_deadline_s - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._failed.wait()
                # A cancel requested during this step is still pending when the timeout is
                # entered; with the deadline already past (delay 0: a slow send), the timeout
                # takes it for its own expiry and its TimeoutError is suppressed: the link
                # never ended (tests/vehicle/test_cancellation.py, controller/cancellation.py).
                raise_if_cancelled_since(requests_before)
        finally:
            reader.close()
            # What the bounded hand-over dropped (thread mode; 0 where the loop reads the
            # socket itself): frames the loop was too slow for, e.g. while held by a slow disk.
            log.info("CAN reader closed", bus=self.bus, can_frames_dropped=reader.dropped)
            self._bus = None
            self._changed.set()  # an end_session() waiting on this bus gives up at once

    def _close(self, bus: can.BusABC) -> None:
        try:
            bus.shutdown()
        except (can.CanError, OSError) as exc:
            log.warning("CAN bus shutdown failed", bus=self.bus, error=str(exc))

    def _read_lines(self) -> LineInputs | None:
        try:
            inputs = self._lines.read()
        except VehicleLinkError as exc:
            self._note_emergency_stop(True)  # board lines unreadable: E-stop state unknown
            self._note_fault_reset(None)  # and an unknown button is never a press
            self._on_lines_failed(exc)
            return None
        self._note_emergency_stop(inputs.emergency_stop)
        self._note_fault_reset(inputs.fault_reset)
        return inputs

    def _note_emergency_stop(self, pressed: bool) -> None:
        if pressed != self._emergency_stop:
            self._emergency_stop = pressed
            log.warning("emergency stop", pressed=pressed)
            self._wake()

    def emergency_stop_pressed(self) -> bool:
        """The board's emergency stop input, as last read (pressed while unreadable)."""
        return self._emergency_stop

    def _note_fault_reset(self, pressed: bool | None) -> None:
        previous, self._fault_reset = self._fault_reset, pressed
        # A press is "down" after a read of "up": a button already down at the first read, or
        # when unreadable lines come back, counts only once it has been released and pressed.
        if pressed is True and previous is False:
            self._fault_reset_presses += 1
            log.info("fault reset button pressed", presses=self._fault_reset_presses)
            self._wake()

    def fault_reset_pressed(self) -> bool:
        """The board's fault reset button, as last read (not pressed while unknown)."""
        return self._fault_reset is True

    def fault_reset_presses(self) -> int:
        """Presses of the fault reset button seen since the link was made (held down: one).

        A count rather than the level, so a press shorter than a control cycle (one that waits on
        a slow inverter write) is not lost between two looks.
        """
        return self._fault_reset_presses

    def _write_lines(self, outputs: LineOutputs) -> None:
        if not self._lines_open:
            return
        try:
            self._lines.write(outputs)
        except VehicleLinkError as exc:
            self._on_lines_failed(exc)

    def _on_lines_failed(self, exc: VehicleLinkError) -> None:
        """The board's lines failed: the session stops with a charger fault, the link goes DOWN."""
        self.last_error = f"charger board lines failed: {exc}"
        log.error("charger board lines failed", bus=self.bus, error=str(exc))
        self._release_lines()
        self._failed.set()
        self._apply(self.session.charger_fault(self.last_error, self._clock()))
        self._wake()

    def _release_lines(self) -> None:
        """Outputs off and the lines released (``close`` never raises)."""
        if self._lines_open:
            self._lines_open = False
            self._lines.close()

    def _on_message(self, message: can.Message) -> None:
        if message.is_error_frame:
            self._on_error_frame(message)
            return
        if message.is_remote_frame or message.is_fd:
            return  # neither protocol uses them: dropped cheaply
        latest = self._latest
        if latest is not None:
            # Superseded by this frame's step (a session with valid frames keeps them), so the
            # session need not build its snapshot: snapshots are built at most once per read.
            latest.release()
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
            log.info("CAN error frame", bus=self.bus, error=text, count=self.error_frames)

    def _on_bus_failed(self, exc: Exception) -> None:
        self.last_error = f"CAN bus failed: {exc}"
        log.warning("CAN bus failed", bus=self.bus, error=str(exc))
        self._failed.set()
        self._wake()

    def _apply(self, step: Step) -> None:
        self._write_lines(step.outputs)
        if step.outputs.lock != self._outputs.lock:
            self._changed.set()  # an end_session() waiting for the unlock looks again
        self._outputs = step.outputs
        bus = self._bus
        for frame in step.frames:
            if bus is None:
                break
            try:
                bus.send(to_message(frame))
            except (can.CanError, OSError, ValueError) as exc:
                self.send_errors += 1
                self.last_error = f"send {frame!r} failed: {exc}"
                log.warning(
                    "CAN send failed",
                    bus=self.bus,
                    frame=repr(frame),
                    error=str(exc),
                    count=self.send_errors,
                )
        wake = False
        if self.session.valid_frames:
            previous, self._latest = self._latest, step
            # A permission withdrawn or granted (GB/T BSM "charging allowed", a BCL demand
            # that changes direction) is no session event, but the core must see it now,
            # not at its next tick.
            wake = previous is not None and previous.permitted != step.permitted
        for event in step.events:
            log.info(
                "vehicle session event",
                bus=self.bus,
                kind=str(event.kind),
                reason=event.reason,
                phase=str(self.session.phase),
            )
            wake = wake or event.safety_relevant
        if step.events:
            self._changed.set()
        if wake:
            self._wake()

    def _down(self, why: str) -> None:
        """Report DOWN with the reason; log a reason only when it changes (retries are quiet)."""
        if why != self.last_error or self._status is not LinkStatus.DOWN:
            log.warning(
                "vehicle link down; retrying",
                bus=self.bus,
                reason=why,
                retry_s=self.config.reconnect_delay_s,
            )
        self.last_error = why
        if self._status is not LinkStatus.DOWN:
            self._status = LinkStatus.DOWN
            self._wake()

    def _set_status(self, status: LinkStatus, why: str) -> None:
        if status is not self._status:
            log.info("vehicle link status", bus=self.bus, status=str(status), reason=why)
            self._status = status


def _no_wake() -> None:
    """Before ``run`` there is nobody to wake."""
