"""The inverter link: polls the inverter, is the single writer of its setpoint, owns recovery.

Two tasks share one Modbus transport (which allows one outstanding request):

- the poller sets the inverter up (discovery, ratings, revert timer armed, 0 W), then reads it
  every ``poll_interval_s`` into an ``InverterState`` snapshot;
- the writer puts the latest command on the inverter, and re-sends it at least every third of
  the revert time, so the inverter's own timer never runs out while the controller is alive and
  always runs out when it is not.

``apply()`` only hands the command to the writer: the control loop never waits on Modbus.

``safe_stop()`` writes 0 W and disabled and ends the writer: nothing more is written. The poller
goes on reading, faster (``STOP_POLL_INTERVAL_S``; it never sets the inverter up again, and a
failed read is recorded and tried again at the next interval), because the vehicle session
ends on measurements taken after the stop: contactors open once the output current reads at most
5 A, the connector unlocks once the output voltage is down (CHAdeMO 10 V, GB/T 60 V; issue 17).
The transport is closed when ``run`` ends, however it ends (cancelled or crashed), and by a
``safe_stop`` that comes after ``run`` has ended (the daemon's stop sequence after a crash).

Every read is checked against the commands written (``following.FollowingCheck``): an inverter
whose measured power stays outside the band of its command is "not following", a failure like
the others (issue 16, item 10).

Any failure (no reply, exception response, a read-back that differs from the write, revert
settings the device will not keep, not following, a fault reported by the inverter) latches the
link: the snapshot carries the reason, so the core commands 0 W, and no setpoint is written
until the inverter reads healthy again and has been set up anew (revert timer re-armed, 0 W
verified). An inverter that reports a fault is told 0 W and disabled once, so that it cannot
resume its last setpoint by itself when the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from controller.cancellation import cancel_requests, raise_if_cancelled_since
from controller.core.snapshots import InverterState, PowerCommand
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.drivers import DeviceInfo, InverterDriver
from controller.inverter.following import FollowingBand, FollowingCheck
from controller.inverter.transport import ModbusTransport
from controller.links import LinkStatus, Wake

log = structlog.get_logger(component="inverter")

# After safe_stop, readings at least this often (or at poll_interval_s if shorter): the session
# ends on them, and GB/T 27930 wants the output at 5 A within 100 ms of CST (the verdict waits
# 100 ms more for a reading); at the usual 200-500 ms a reading in that window is luck.
STOP_POLL_INTERVAL_S = 0.05
# Closing the transport waits for the request in flight (one at a time); past this, the close is
# given up and logged: a stop must never wait on a device (each request is bounded anyway).
CLOSE_TIMEOUT_S = 2.0


class _Phase(enum.Enum):
    SETUP = "setup"  # needs (re)discovery, revert timer and a verified 0 W
    READY = "ready"  # healthy: commands are written
    FAULTED = "faulted"  # the inverter reports a fault: nothing written until it clears


class ModbusInverterLink:
    """Satisfies ``controller.links.InverterLink``."""

    name = "inverter"

    def __init__(
        self,
        transport: ModbusTransport,
        driver: InverterDriver,
        *,
        poll_interval_s: float = 0.5,
        revert_timeout_s: float = 10.0,
        retry_interval_s: float = 5.0,
        following: FollowingBand | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._driver = driver
        self._poll_interval_s = poll_interval_s
        self._heartbeat_s = revert_timeout_s / 3
        self._retry_interval_s = retry_interval_s
        self._clock = clock
        self._status = LinkStatus.STARTING
        self._phase = _Phase.SETUP
        self._snapshot: InverterState | None = None
        self._info: DeviceInfo | None = None
        self._pending: PowerCommand | None = None
        self._written: PowerCommand | None = None
        self._written_at_s = float("-inf")
        self._command_ready = asyncio.Event()
        self._wake: Wake = lambda: None
        self._latched: str | None = None
        # Counts failures, so a poll read that was in flight when a write failed cannot hand
        # the link back as ready: only a fresh setup may clear a failure (issue 16, item 3).
        self._failures = 0
        self._stopping = asyncio.Event()
        self._running = False  # run() is under way: it closes the transport when it ends
        self._zero_while_faulted = False
        self._following = FollowingCheck(following)
        self.writes = 0

    # -- InverterLink -------------------------------------------------------------------------

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def info(self) -> DeviceInfo | None:
        return self._info

    def snapshot(self) -> InverterState | None:
        return self._snapshot

    async def apply(self, command: PowerCommand) -> None:
        if self._stopping.is_set():
            return  # safe_stop's 0 W was the last command
        self._pending = command
        self._command_ready.set()

    async def safe_stop(self) -> None:
        """0 W and stage disabled, bounded by the transport's timeouts; never raises.

        After it the writer stands still (nothing more is written, nothing is set up again);
        the poller keeps the snapshot up to date by reading only, until ``run`` is cancelled.
        Called after ``run`` has ended (a crash), it closes the transport it had to reopen."""
        self._stopping.set()
        self._pending = PowerCommand.zero()
        self._command_ready.set()  # the writer wakes, sees the stop and ends
        if self._phase is _Phase.SETUP and self._info is None:
            return  # never set up: nothing was ever commanded
        try:
            await self._driver.command(0.0, enable=False)
            log.info("inverter at 0 W and disabled")
        except (InverterLinkError, ProtocolError) as exc:
            log.error(
                "could not command 0 W; the inverter's revert timer is the fallback", error=str(exc)
            )
        finally:
            if not self._running:
                await self._close_transport()

    async def run(self, wake: Wake) -> None:
        self._wake = wake
        self._running = True
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._poll_loop(), name="inverter-poll")
                tasks.create_task(self._write_loop(), name="inverter-write")
        finally:
            # Cancelled (the daemon's end) or crashed: the tasks have ended, the transport is
            # free, and no request may follow.
            self._running = False
            await self._close_transport()

    # -- internals ----------------------------------------------------------------------------

    async def _close_transport(self) -> None:
        """Close the transport, bounded in time; never raises (but passes a cancel on)."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._transport.close()
        except TimeoutError:
            log.error("Modbus transport not closed in time", limit_s=CLOSE_TIMEOUT_S)
        except (InverterLinkError, OSError) as exc:
            log.error("Modbus transport close failed", error=str(exc))

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short when the link stops (its reads then follow at once)."""
        requests_before = cancel_requests()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        # A cancel that arrives as the timeout expires must not pass for that expiry
        # (controller/cancellation.py): the poller would read on after the daemon's end.
        raise_if_cancelled_since(requests_before)

    def _fail(self, reason: str, *, reachable: bool) -> None:
        """Latch a failure: the snapshot carries it, nothing is written until set up anew."""
        now_s = self._clock()
        first = self._latched != reason
        self._latched = reason
        self._failures += 1
        self._phase = _Phase.SETUP
        self._written = None
        self._following.reset()
        self._status = LinkStatus.UP if reachable else LinkStatus.DOWN
        previous = self._snapshot
        self._snapshot = InverterState(
            observed_at_s=now_s,
            reachable=reachable,
            enabled=False,
            max_charge_power_w=previous.max_charge_power_w if previous else None,
            max_discharge_power_w=previous.max_discharge_power_w if previous else None,
            faults=(reason,),
            energy_charged_wh=previous.energy_charged_wh if previous else None,
            energy_discharged_wh=previous.energy_discharged_wh if previous else None,
            revert_rewrites=self._driver.proof.rewrites,
        )
        if first:
            log.error("inverter faulted; no setpoints until it recovers", reason=reason)
        self._wake()

    async def _setup(self) -> bool:
        try:
            info = await self._driver.setup()
            state = self._completed(await self._driver.read(self._clock()))
        except (InverterLinkError, ProtocolError) as exc:
            self._fail(f"setup failed: {exc}", reachable=self._transport.connected)
            return False
        if self._info is None or self._info != info:
            log.info(
                "inverter set up",
                manufacturer=info.manufacturer,
                model=info.model,
                serial=info.serial,
                profile=info.profile,
                models=list(info.models),
                link=self._transport.describe(),
            )
        self._info = info
        self._written = PowerCommand.zero()
        self._written_at_s = self._clock()
        self._following.reset()
        self._following.command(0.0, self._written_at_s)  # setup left it at 0 W
        self._take(state)
        return True

    def _completed(self, state: InverterState) -> InverterState:
        """The snapshot as of the moment its read completed: a slow device (600 ms a reply,
        several requests a poll) would otherwise look stale on arrival (issue 16, item 6)."""
        return replace(
            state, observed_at_s=self._clock(), revert_rewrites=self._driver.proof.rewrites
        )

    def _take(self, state: InverterState) -> None:
        previous = self._snapshot
        self._snapshot = state
        self._status = LinkStatus.UP
        if state.faults:
            if self._phase is not _Phase.FAULTED:
                log.error("inverter reports a fault", faults=list(state.faults))
                # Leave it at 0 W and disabled: an inverter whose fault clears by itself must
                # not resume the last setpoint before the controller has set it up anew.
                self._zero_while_faulted = True
                self._command_ready.set()
            self._phase = _Phase.FAULTED
            self._written = None
        else:
            if self._latched is not None:
                log.info("inverter recovered", after=self._latched)
            self._latched = None
            self._phase = _Phase.READY
        if previous is None or previous.faults != state.faults or not previous.reachable:
            self._wake()

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            if self._phase is _Phase.SETUP:
                if not await self._setup():
                    await self._pause(self._retry_interval_s)
                    continue
                self._command_ready.set()  # write the current command now that it is safe
            else:
                failures = self._failures
                try:
                    state = self._completed(await self._driver.read(self._clock()))
                except (InverterLinkError, ProtocolError) as exc:
                    self._fail(f"read failed: {exc}", reachable=self._transport.connected)
                    await self._pause(self._retry_interval_s)
                    continue
                if self._failures != failures:
                    continue  # a write failed during the read: set up anew, do not take it
                was_faulted = self._phase is _Phase.FAULTED
                self._take(state)
                if was_faulted and self._phase is _Phase.READY:
                    self._phase = _Phase.SETUP  # set up anew before any further setpoint
                    continue
                if self._phase is _Phase.READY:
                    reason = self._following.observe(state.measured_power_w, state.observed_at_s)
                    if reason is not None:
                        self._fail(reason, reachable=True)
                        await self._pause(self._retry_interval_s)
                        continue
            await self._pause(self._poll_interval_s)
        await self._read_after_stop()

    async def _read_after_stop(self) -> None:
        """After ``safe_stop``: read only, every ``STOP_POLL_INTERVAL_S`` (or the poll interval
        if shorter), until cancelled (issue 17).

        The vehicle session ends on these measurements (output current, then voltage). No
        setup and no write: a failed read is recorded in the snapshot and tried again at the
        next interval; a fault the inverter reports is recorded, and nobody is left to write
        (the writer has ended), so it stays at the 0 W and disabled of the stop."""
        interval_s = min(self._poll_interval_s, STOP_POLL_INTERVAL_S)
        while True:
            try:
                state = self._completed(await self._driver.read(self._clock()))
            except (InverterLinkError, ProtocolError) as exc:
                self._fail(f"read failed: {exc}", reachable=self._transport.connected)
            else:
                self._take(state)
            await asyncio.sleep(interval_s)

    def _heartbeat_due_in_s(self) -> float:
        """How long the writer may wait for a new command before it re-sends the last one.

        Counted from when the last write began, not from when it (and its read-back) ended: at
        600 ms a reply those take 1.2 s, and a heartbeat a full third of the revert time after
        that, queued behind a poll's request, landed 2.8 s after the previous write against a
        3 s timer (one busy reply more and the device reverted; HIL, issue 16). From the start,
        two writes land at most a third of the revert time plus two requests apart."""
        if self._written is None or self._pending is None or self._phase is not _Phase.READY:
            return self._heartbeat_s  # nothing to keep alive yet: wake on a command
        return max(0.0, self._written_at_s + self._heartbeat_s - self._clock())

    async def _write_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self._heartbeat_due_in_s()):
                    await self._command_ready.wait()
            except TimeoutError:
                pass  # heartbeat: re-send so the revert timer does not run out
            self._command_ready.clear()
            if self._stopping.is_set():
                return  # safe_stop wrote the last command: nothing follows it
            if self._zero_while_faulted and self._phase is _Phase.FAULTED:
                self._zero_while_faulted = False
                try:
                    await self._driver.command(0.0, enable=False)
                except (InverterLinkError, ProtocolError) as exc:
                    log.warning("could not command 0 W to the faulted inverter", error=str(exc))
                continue
            command = self._pending
            if command is None or self._phase is not _Phase.READY or self._stopping.is_set():
                continue
            now_s = self._clock()
            if command == self._written and now_s - self._written_at_s < self._heartbeat_s:
                continue
            try:
                await self._driver.command(command.power_w, command.enable)
            except (InverterLinkError, ProtocolError) as exc:
                self._fail(f"write failed: {exc}", reachable=self._transport.connected)
                continue
            self.writes += 1
            self._written = command
            self._written_at_s = now_s
            # In force from the moment the write (and its read-back) completed.
            self._following.command(command.power_w if command.enable else 0.0, self._clock())
