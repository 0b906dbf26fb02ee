"""The inverter link: polls the inverter, is the single writer of its setpoint, owns recovery.

Two tasks share one Modbus transport (which allows one outstanding request):

- the poller sets the inverter up (discovery, ratings, revert timer armed, 0 W), then reads it
  every ``poll_interval_s`` into an ``InverterState`` snapshot;
- the writer puts the latest command on the inverter, and re-sends it at least every third of
  the revert time, so the inverter's own timer never runs out while the controller is alive and
  always runs out when it is not.

``apply()`` only hands the command to the writer: the control loop never waits on Modbus.

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
import enum
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from controller.core.snapshots import InverterState, PowerCommand
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.drivers import DeviceInfo, InverterDriver
from controller.inverter.following import FollowingBand, FollowingCheck
from controller.inverter.transport import ModbusTransport
from controller.links import LinkStatus, Wake

log = structlog.get_logger(component="inverter")


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
        self._pending = command
        self._command_ready.set()

    async def safe_stop(self) -> None:
        """0 W and stage disabled, bounded by the transport's timeouts; never raises.

        After it, the poller and the writer stand still: nothing is written or reconnected
        while the daemon finishes stopping."""
        self._stopping.set()
        self._pending = PowerCommand.zero()
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
            await self._transport.close()

    async def run(self, wake: Wake) -> None:
        self._wake = wake
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._poll_loop(), name="inverter-poll")
            tasks.create_task(self._write_loop(), name="inverter-write")
        await asyncio.Event().wait()  # stopped: stand still until the daemon cancels us

    # -- internals ----------------------------------------------------------------------------

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
                    await asyncio.sleep(self._retry_interval_s)
                    continue
                self._command_ready.set()  # write the current command now that it is safe
            else:
                failures = self._failures
                try:
                    state = self._completed(await self._driver.read(self._clock()))
                except (InverterLinkError, ProtocolError) as exc:
                    self._fail(f"read failed: {exc}", reachable=self._transport.connected)
                    await asyncio.sleep(self._retry_interval_s)
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
                        await asyncio.sleep(self._retry_interval_s)
                        continue
            await asyncio.sleep(self._poll_interval_s)

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
