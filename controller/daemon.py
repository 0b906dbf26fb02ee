"""The daemon: the only place that wires the links to the core.

One ``asyncio.TaskGroup`` supervises every link and the control loop. The control loop evaluates
the core on its tick and at once whenever a link calls ``wake()``, hands the command to the single
inverter writer, and pings the systemd watchdog only after a complete cycle, so a hung loop stops
the pings and systemd restarts the service.

Whatever ends the TaskGroup (a stop signal, a crashed link, a crashed control loop), the stop
sequence runs: 0 W and power stage disabled first, then the vehicle session is ended, then the
aggregator is told "offline". A stop asked for by a signal exits 0; a crash exits 1 so that
systemd's ``Restart=on-failure`` brings the service back into a safe state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import math
import os
import signal
import time
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog

from controller import __version__
from controller.config import Config
from controller.core.snapshots import (
    InverterState,
    Setpoint,
    VehicleState,
)
from controller.errors import LinkError
from controller.links import (
    AggregatorLink,
    ControlOutput,
    ControlReport,
    InverterLink,
    Link,
    LinkStatus,
    VehicleLink,
)
from controller.sdnotify import Notifier
from controller.simclock import WallClock, real_wall_clock
from controller.statusd import (
    LinkView,
    ResetPolicy,
    ResetPreview,
    StatusServer,
    link_reason,
    status_document,
)

log = structlog.get_logger(component="daemon")


class ExitCode(enum.IntEnum):
    """Process exit status, as systemd and technicians see it."""

    OK = 0  # stopped on request, power stage left at 0 W
    FAILURE = 1  # a component crashed; power was driven to 0 W first
    CONFIG = 2  # the config is invalid; nothing was started
    FORCED = 3  # a second stop signal: exited at once, inverter revert timer is the safety net


class ControlStep(Protocol):
    """One evaluation of the safety core; stateful wrappers keep the core's state between calls."""

    def __call__(
        self,
        vehicle: VehicleState | None,
        inverter: InverterState | None,
        setpoint: Setpoint | None,
        monotonic_s: float,
        wall: dt.datetime,
    ) -> ControlOutput: ...


class Recorder(Protocol):
    """Where each control cycle is recorded (the energy ledger, ``controller.ledger``).

    ``record`` runs at the end of every cycle and must not wait on the disk (the ledger hands
    it to its storage thread); ``flush`` commits what is pending, in the stop sequence, within
    what is left of the stop budget. Either may raise: the daemon logs it and carries on, since
    a full disk must never stop the charger from being safe.
    """

    def record(
        self, vehicle: VehicleState | None, inverter: InverterState | None, report: ControlReport
    ) -> None: ...

    async def flush(self) -> None: ...


class ResetAnswer(Protocol):
    """The core's answer to a manual reset (``controller.core.safety.FaultReset``)."""

    @property
    def accepted(self) -> bool: ...

    @property
    def reason(self) -> object: ...


@runtime_checkable
class FaultResetter(Protocol):
    """A control step that keeps a fault latch a person can reset (``CoreControlStep`` does)."""

    def reset_faults(self) -> ResetAnswer: ...


@runtime_checkable
class ResetPreviewer(Protocol):
    """A control step that can say what a reset would answer, changing nothing
    (``CoreControlStep`` can): ``v2g-controller status`` shows it."""

    def reset_preview(self) -> ResetAnswer: ...


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    """What a manual fault reset came to, as the one who asked is told."""

    accepted: bool
    reason: str


@runtime_checkable
class ResetButton(Protocol):
    """A vehicle link that reads the board's fault reset button (``CanVehicleLink`` does)."""

    def fault_reset_presses(self) -> int:
        """Presses seen so far; holding the button down counts once."""
        ...


# A failing recorder is logged at once, then at most this often while it keeps failing.
RECORDER_ERROR_LOG_EVERY_S = 60.0

# During the stop sequence, how often the inverter's snapshot is looked at for a new measurement
# to pass on to the vehicle: the session stamps a report when it arrives, so this is how much
# older than its stamp a reading can be (the control loop, at 100 ms, re-reports every cycle).
STOP_FEED_EVERY_S = 0.02


@dataclass(frozen=True, slots=True)
class Links:
    vehicle: VehicleLink
    inverter: InverterLink
    aggregator: AggregatorLink

    def all(self) -> tuple[Link, ...]:
        return (self.vehicle, self.inverter, self.aggregator)


def measured_output(inverter: InverterState | None) -> tuple[float, float]:
    """The stage's measured DC output as the vehicle is told it: (volts, amps, + charges).

    The vehicle reports it (CHAdeMO 0x109/0x208, GB/T CCS) and its session acts on it (contactors
    open at 5 A, the connector unlocks once the voltage is down). Only what the power stage
    measured: never the vehicle's own figure (for CHAdeMO that is our measurement echoed back)
    and never 0 A for "unknown" (the session must not open contactors on a current it has not
    seen fall). NaN means "not measured": an unreachable inverter, no DC voltage (no current can
    be derived from the power without it), no power.
    """
    if inverter is None or not inverter.reachable:
        return math.nan, math.nan
    volts = inverter.dc_voltage_v
    watts = inverter.measured_power_w
    amps = watts / volts if watts is not None and volts else math.nan
    return (volts if volts is not None else math.nan), amps


def _describe(exc: BaseException) -> str:
    """An error for the log: its type, and its message when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _StopRequested(Exception):  # noqa: N818  an internal signal, not an error
    """Raised inside the TaskGroup to end it when a stop signal arrived."""


class LinkStoppedError(LinkError):
    """A link's run() returned although the daemon was not stopping."""


class Daemon:
    """Supervises the links and the control loop; owns the stop sequence."""

    def __init__(
        self,
        config: Config,
        links: Links,
        control_step: ControlStep,
        notifier: Notifier | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: WallClock = real_wall_clock,
        handle_signals: bool = True,
        recorder: Recorder | None = None,
        status_socket: Path | None = None,
    ) -> None:
        self._config = config
        # The local status channel (controller.statusd); None: none (tests, tools).
        self._status_socket = status_socket
        self._started_s: float | None = None
        self._last_report: ControlReport | None = None
        self._recorder = recorder
        self._recorder_error: str | None = None  # the last failure, while it lasts
        self._recorder_error_logged_s = float("-inf")
        self._links = links
        self._step = control_step
        self._notifier = notifier if notifier is not None else Notifier()
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._handle_signals = handle_signals
        self._tz = zoneinfo.ZoneInfo(config.site.timezone)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._signals_seen = 0
        self._ready = False
        self._control_task: asyncio.Task[None] | None = None
        self._stop_sequence_done = False
        self._last_output: ControlOutput | None = None
        # The reset button asks for a reset only when pressed after the daemon was made: the
        # presses the link had counted before are not this daemon's to act on.
        self._reset_button = links.vehicle if isinstance(links.vehicle, ResetButton) else None
        self._reset_presses_seen = (
            self._reset_button.fault_reset_presses() if self._reset_button is not None else 0
        )
        self.cycles = 0

    # -- public -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    def wake(self) -> None:
        """Run a control cycle now (links call this on safety-relevant events)."""
        self._wake.set()

    def reset_faults(self, source: str = "SIGUSR1") -> bool:
        """A manual fault reset, asked for by ``source`` (SIGUSR1, which ``v2g-controller
        reset-faults`` sends, the board's reset button, or ``v2g-controller reset`` over the
        status socket). The core accepts it only once every cause is gone."""
        return self.reset_faults_answer(source).accepted

    def reset_faults_answer(self, source: str) -> ResetOutcome:
        """``reset_faults``, with the core's reason for accepting or refusing it."""
        if not isinstance(self._step, FaultResetter):
            log.warning(
                "fault reset asked for, but this control step keeps no latch", source=source
            )
            return ResetOutcome(accepted=False, reason="this control step keeps no latch")
        answer = self._step.reset_faults()
        outcome = ResetOutcome(accepted=answer.accepted, reason=str(answer.reason))
        log.info("fault reset", accepted=outcome.accepted, reason=outcome.reason, source=source)
        self._wake.set()
        return outcome

    def status(self) -> dict[str, object]:
        """The live state for ``v2g-controller status``: the last cycle's decision and
        measurements, each link with why it is not up, the latches and how to reset them."""
        now_s = self._monotonic()
        report = self._last_report
        links = [self._link_view(link, now_s) for link in self._links.all()]
        preview: ResetPreview | None = None
        if isinstance(self._step, ResetPreviewer):
            answer = self._step.reset_preview()
            preview = ResetPreview(accepted=answer.accepted, reason=str(answer.reason))
        safety = self._config.safety
        return status_document(
            version=__version__,
            uptime_s=0.0 if self._started_s is None else now_s - self._started_s,
            ready=self._ready,
            stopping=self._stop.is_set(),
            cycles=self.cycles,
            report=report,
            report_age_s=None if report is None else now_s - report.monotonic_s,
            links=links,
            preview=preview,
            policy=ResetPolicy(
                mode=safety.fault_reset,
                hold_s=safety.fault_hold_s,
                manual_kinds=tuple(safety.manual_reset),
            ),
        )

    def _link_view(self, link: Link, now_s: float) -> LinkView:
        status = link.status
        snapshot: VehicleState | InverterState | None = None
        faults: tuple[str, ...] = ()
        if link is self._links.vehicle:
            snapshot = self._links.vehicle.snapshot()
        elif link is self._links.inverter:
            inverter = self._links.inverter.snapshot()
            snapshot = inverter
            faults = inverter.faults if inverter is not None else ()
        return LinkView(
            name=link.name,
            status=status,
            reason=link_reason(link, status, faults),
            data_age_s=None if snapshot is None else now_s - snapshot.observed_at_s,
        )

    def _answer_status_request(self, command: str) -> dict[str, object]:
        """The status socket's commands (``controller.statusd``)."""
        if command == "reset":
            outcome = self.reset_faults_answer(source="status socket")
            return {"command": "reset", "accepted": outcome.accepted, "reason": outcome.reason}
        return self.status()

    def request_stop(self) -> None:
        """Begin the clean stop sequence (what SIGTERM and SIGINT do)."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> ExitCode:
        """Run until stopped or until a component crashes; always ends at 0 W."""
        loop = asyncio.get_running_loop()
        if self._handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            # A technician's manual fault reset: `v2g-controller reset-faults` (or
            # `systemctl kill -s SIGUSR1 v2g-controller`); the board's reset button does the same.
            loop.add_signal_handler(signal.SIGUSR1, self.reset_faults)
        log.info(
            "starting",
            site=self._config.site.site_id,
            charger=self._config.site.charger_id,
            links={link.name: str(link.status) for link in self._links.all()},
        )
        exit_code = ExitCode.OK
        reason = "stop requested"
        self._started_s = self._monotonic()
        try:
            async with asyncio.TaskGroup() as tasks:
                for link in self._links.all():
                    tasks.create_task(self._supervise(link), name=f"link:{link.name}")
                if self._status_socket is not None:
                    # Ends when the TaskGroup ends; never fails it (a socket that cannot be
                    # opened is logged, and the charger runs on without it).
                    server = StatusServer(self._status_socket, self._answer_status_request)
                    tasks.create_task(server.serve(), name="status-socket")
                self._control_task = tasks.create_task(self._control_loop(), name="control-loop")
                tasks.create_task(self._stop_when_asked(), name="stop-watch")
        except* _StopRequested:
            pass
        except* Exception as group:
            exit_code = ExitCode.FAILURE
            reason = "component failure"
            for exc in group.exceptions:
                log.error(
                    "component failed; driving power to 0 W",
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
        finally:
            if not self._stop_sequence_done:
                # A crash or a cancellation: the links may be gone; best effort on what is left.
                await self._shutdown_even_if_cancelled(reason)
            self._notifier.close()
            if self._handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                    loop.remove_signal_handler(sig)
        log.info("stopped", exit_code=int(exit_code), reason=reason)
        return exit_code

    # -- internals ----------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals_seen += 1
        if self._signals_seen == 1:
            log.info("stop signal received; stopping cleanly", signal=sig.name)
            self.request_stop()
            return
        # A second signal means the operator will not wait; the inverter's own revert timer
        # (armed on every write) brings it to 0 W without us.
        log.warning("second stop signal; exiting at once", signal=sig.name)
        os._exit(ExitCode.FORCED)

    async def _stop_when_asked(self) -> None:
        await self._stop.wait()
        # A requested stop runs the stop sequence while the links are still running, so the
        # vehicle session ends through its protocol and the aggregator hears "offline".
        if self._control_task is not None and not self._control_task.done():
            self._control_task.cancel()  # no further command may follow the stop
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
        await self._shutdown_even_if_cancelled("stop requested")
        raise _StopRequested

    async def _supervise(self, link: Link) -> None:
        await link.run(self.wake)
        if link.status is LinkStatus.DISABLED or self._stop.is_set():
            # A disabled link has nothing to do; park so the TaskGroup keeps running.
            await self._stop.wait()
            return
        raise LinkStoppedError(f"{link.name} link stopped unexpectedly")

    async def _control_loop(self) -> None:
        tick_s = self._config.control.tick_s
        watchdog_s = self._notifier.watchdog_interval_s
        # Ping at twice the rate systemd requires, as sd_watchdog_enabled(3) advises.
        ping_every_s = watchdog_s / 2 if watchdog_s is not None else None
        last_ping_s = float("-inf")
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            self._follow_reset_button()  # before the cycle, so the cycle already sees the reset
            await self._cycle()
            self.cycles += 1
            if not self._ready:
                self._announce_ready_when_reported()
            now_s = self._monotonic()
            # Before READY, systemd's start timeout guards the service; after it, the watchdog.
            if self._ready and ping_every_s is not None and now_s - last_ping_s >= ping_every_s:
                self._notifier.watchdog()
                last_ping_s = now_s

    def _follow_reset_button(self) -> None:
        if self._reset_button is None:
            return
        presses = self._reset_button.fault_reset_presses()
        if presses == self._reset_presses_seen:
            return
        # Several presses between two cycles ask for one reset: a second would change nothing.
        self._reset_presses_seen = presses
        self.reset_faults(source="reset button")

    async def _cycle(self) -> None:
        now_s = self._monotonic()
        wall = self._wall_clock(self._tz)
        vehicle, inverter = self._links.vehicle.snapshot(), self._links.inverter.snapshot()
        output = self._step(vehicle, inverter, self._links.aggregator.setpoint(), now_s, wall)
        previous = self._last_output
        self._last_output = output
        if previous is None or previous.summary_key() != output.summary_key():
            log.info(
                "power decision",
                state=str(output.state),
                power_w=round(output.command.power_w, 1),
                requested_w=round(output.requested_w, 1),
                enabled=output.command.enable,
                source=output.source,
                setpoint_id=output.setpoint_id,
                binding_limit=output.binding_limit,
                reasons=list(output.reasons),
            )
        self._links.vehicle.update_output(*measured_output(inverter))
        self._links.vehicle.allow_energy_transfer(output.session_allowed)
        await self._links.inverter.apply(output.command)
        report = ControlReport(
            monotonic_s=now_s,
            wall=wall,
            output=output,
            measured_power_w=inverter.measured_power_w if inverter is not None else None,
            soc_pct=vehicle.soc_pct if vehicle else None,
            voltage_v=vehicle.pack_voltage_v if vehicle else None,
            inverter_revert_rewrites=inverter.revert_rewrites if inverter else 0,
        )
        self._last_report = report
        self._links.aggregator.report(report)
        if self._recorder is not None:
            self._call_recorder("record", lambda r: r.record(vehicle, inverter, report))

    def _call_recorder(self, what: str, call: Callable[[Recorder], None]) -> None:
        # The ledger never stops the control loop: a failure (disk full, file locked) is logged
        # with its reason and retried at the next cycle; power keeps following the core.
        assert self._recorder is not None  # noqa: S101  checked by the caller
        try:
            call(self._recorder)
        except Exception as exc:  # noqa: BLE001  no recorder failure may reach the control loop
            self._recorder_failed(what, exc)
        else:
            if self._recorder_error is not None:
                log.info("ledger written again", step=what)
                self._recorder_error = None

    def _recorder_failed(self, what: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        now_s = self._monotonic()
        if (
            error != self._recorder_error
            or now_s - self._recorder_error_logged_s >= RECORDER_ERROR_LOG_EVERY_S
        ):
            log.error("ledger not written; the charger keeps running", step=what, error=error)
            self._recorder_error_logged_s = now_s
        self._recorder_error = error

    def _announce_ready_when_reported(self) -> None:
        statuses = {link.name: link.status for link in self._links.all()}
        if any(status is LinkStatus.STARTING for status in statuses.values()):
            return
        self._ready = True
        summary = " ".join(f"{name}={status}" for name, status in statuses.items())
        self._notifier.ready(f"running: {summary}")
        log.info("ready", **{name: str(status) for name, status in statuses.items()})

    async def _shutdown_even_if_cancelled(self, reason: str) -> None:
        # A cancelled daemon must still leave the power stage at 0 W: the stop sequence runs to
        # its end (it is bounded in time) and the cancellation is passed on afterwards.
        stop = asyncio.create_task(self._shutdown(reason), name="stop-sequence")
        cancelled = False
        while not stop.done():
            try:
                await asyncio.shield(stop)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _shutdown(self, reason: str) -> None:
        # Every step runs whatever the one before did: a step that fails or overruns is logged
        # and the next one still runs (docs/architecture.md, Lifecycle 5).
        self._notifier.stopping(f"stopping: {reason}")
        budget_s = self._config.control.shutdown_timeout_s
        deadline_s = self._monotonic() + budget_s
        # What the inverter had measured when the stop began: never news to the session.
        before_stop = self._links.inverter.snapshot()
        what = "energy transfer withdrawn"
        try:
            self._links.vehicle.allow_energy_transfer(False)
        except Exception as exc:  # noqa: BLE001  the inverter's 0 W must not depend on it
            log.error("stop step failed", step=what, error=_describe(exc))
        # Power first: 0 W and the stage disabled before anything else is allowed to take time.
        # The session ends on measurements taken after the stop (contactors at 5 A, the unlock
        # at 10 V or 60 V): with the control loop gone, the stop sequence passes them on.
        async with self._measurements_to_vehicle(before_stop):
            await self._stop_step(
                "inverter to 0 W and disabled", self._links.inverter.safe_stop, 0.5, deadline_s
            )
            await self._stop_step(
                "vehicle session ended", self._links.vehicle.end_session, 0.6, deadline_s
            )
        await self._stop_step(
            "aggregator told offline", self._links.aggregator.publish_offline, 1.0, deadline_s
        )
        if self._recorder is not None:
            # After power is safe: commit what the ledger has pending, within what is left of
            # the budget (a slow card may take longer: the storage thread then finishes it
            # while the process exits, app.run).
            limit_s = max(0.1, deadline_s - self._monotonic())
            try:
                async with asyncio.timeout(limit_s):
                    await self._recorder.flush()
            except TimeoutError:
                log.error("ledger flush overran the stop budget", limit_s=round(limit_s, 2))
            except Exception as exc:  # noqa: BLE001  the stop sequence must reach its end
                self._recorder_failed("flush", exc)
        self._stop_sequence_done = True

    async def _stop_step(
        self, what: str, step: Callable[[], Awaitable[None]], share: float, deadline_s: float
    ) -> None:
        """One step of the stop sequence, bounded by its share of what is left of the budget
        (so a slow one cannot starve the rest); a failure or an overrun is logged, never
        raised."""
        remaining_s = deadline_s - self._monotonic()
        limit_s = max(0.05, remaining_s * share)
        limit = asyncio.timeout(limit_s)
        try:
            async with limit:
                await step()
        except TimeoutError as exc:
            if limit.expired():
                log.error("stop step overran its time", step=what, limit_s=round(limit_s, 2))
            else:  # the step's own timeout (a library's), not the daemon's limit
                log.error("stop step failed", step=what, error=_describe(exc))
        except asyncio.CancelledError as exc:
            # The daemon never cancels the stop sequence (shielded, it runs to its end): this
            # came from inside the step: a future its library cancelled (a dropped
            # connection's pending request). A failed step like any other, never the end of
            # the sequence, which would leave a requested stop waiting forever.
            log.error("stop step failed", step=what, error=_describe(exc))
        except Exception as exc:  # noqa: BLE001  every stop step must run whatever the last did
            log.error("stop step failed", step=what, error=_describe(exc))
        else:
            log.info("stop step done", step=what)

    @contextlib.asynccontextmanager
    async def _measurements_to_vehicle(self, before: InverterState | None) -> AsyncIterator[None]:
        """While the body runs, every new inverter measurement goes to the vehicle link.

        The control loop, which tells the vehicle the stage's output every cycle, has stopped;
        the inverter link keeps reading after its safe stop, and the session ends on those
        readings (CHAdeMO 0x109.5 bit0 and the 10 V unlock, GB/T 5 A after CST and the 60 V
        unlock). Only a snapshot newer than the last one passed on (and than ``before``, the
        one the stop found) is passed on: the session stamps each report with the time it
        arrives, so an old reading passed on again would count as taken after the stop. The
        feed ends with the body, and with it on any exit; it never outlives it.
        """
        feed = asyncio.create_task(self._feed_measurements(before), name="stop-measurements")
        try:
            yield
        finally:
            feed.cancel()
            # Waits for the feed to end without taking its outcome as ours; a cancel of this
            # task itself still propagates (the stop sequence is shielded: it never comes).
            await asyncio.wait([feed])
            if not feed.cancelled() and (exc := feed.exception()) is not None:
                log.error("measurements not passed on to the vehicle", error=_describe(exc))

    async def _feed_measurements(self, before: InverterState | None) -> None:
        last_s = before.observed_at_s if before is not None else -math.inf
        failed = False
        while True:
            inverter = self._links.inverter.snapshot()
            if inverter is not None and inverter.observed_at_s > last_s:
                last_s = inverter.observed_at_s
                try:
                    self._links.vehicle.update_output(*measured_output(inverter))
                except Exception as exc:  # noqa: BLE001  the stop sequence must reach its end
                    if not failed:
                        log.error("measurement not passed on to the vehicle", error=_describe(exc))
                    failed = True
            await asyncio.sleep(STOP_FEED_EVERY_S)
