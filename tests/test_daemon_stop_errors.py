"""The stop sequence when its steps fail: every other step still runs, 0 W is still commanded,
the failure is logged and the exit code is the documented one (README.md: 0 for a requested
stop, 1 after a crash; docs/architecture.md, Lifecycle 5 and 6)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
import structlog

from controller.core.snapshots import InverterState, VehicleState
from controller.daemon import Daemon, ExitCode, Links
from controller.errors import AggregatorLinkError, InverterLinkError, VehicleLinkError
from controller.links import ControlReport
from controller.sdnotify import Notifier
from tests.support import (
    FakeAggregator,
    FakeInverter,
    FakeVehicle,
    FixedStep,
    Journal,
    make_config,
    until,
)

STOP_ORDER = [
    "vehicle.withdraw",
    "inverter.safe_stop",
    "vehicle.end_session",
    "aggregator.offline",
    "ledger.flush",
]
# The daemon's name for each step in its log (controller/daemon.py, Daemon._shutdown).
STEP_NAMES = {
    "vehicle.withdraw": "energy transfer withdrawn",
    "inverter.safe_stop": "inverter to 0 W and disabled",
    "vehicle.end_session": "vehicle session ended",
    "aggregator.offline": "aggregator told offline",
}
ERRORS: dict[str, Callable[[], BaseException]] = {
    "vehicle.withdraw": lambda: VehicleLinkError("CAN send failed: ENOBUFS"),
    "inverter.safe_stop": lambda: InverterLinkError("rtu:/dev/ttyUSB0: no valid reply"),
    "vehicle.end_session": lambda: VehicleLinkError("CAN send failed: ENOBUFS"),
    "aggregator.offline": lambda: AggregatorLinkError("broker unreachable"),
    "ledger.flush": lambda: sqlite3.OperationalError("disk I/O error"),
}
ASYNC_STEPS = ["inverter.safe_stop", "vehicle.end_session", "aggregator.offline"]
HOW = {"requested": ExitCode.OK, "crash": ExitCode.FAILURE}


class Failures:
    """Which stop step raises, and what."""

    def __init__(self, journal: Journal, step: str, error: Callable[[], BaseException]) -> None:
        self.journal = journal
        self.step = step
        self.error = error

    def run(self, step: str) -> None:
        """Record that ``step`` ran; raise if it is the one that fails."""
        self.journal.add(step)
        if step == self.step:
            raise self.error()


class StopFailingVehicle(FakeVehicle):
    def __init__(self, failures: Failures) -> None:
        super().__init__(failures.journal)
        self.failures = failures

    def allow_energy_transfer(self, allowed: bool) -> None:
        super().allow_energy_transfer(allowed)
        if not allowed:
            self.failures.run("vehicle.withdraw")

    async def end_session(self) -> None:
        await asyncio.sleep(0)
        self.failures.run("vehicle.end_session")


class StopFailingInverter(FakeInverter):
    def __init__(self, failures: Failures) -> None:
        super().__init__(failures.journal)
        self.failures = failures

    async def safe_stop(self) -> None:
        await asyncio.sleep(0)
        self.failures.run("inverter.safe_stop")  # 0 W sent; the error comes after it


class StopFailingAggregator(FakeAggregator):
    def __init__(self, failures: Failures) -> None:
        super().__init__(failures.journal)
        self.failures = failures

    async def publish_offline(self) -> None:
        await asyncio.sleep(0)
        self.failures.run("aggregator.offline")


class StopFailingLedger:
    """A recorder (the ledger) whose flush may raise."""

    def __init__(self, failures: Failures) -> None:
        self.failures = failures

    def record(
        self, vehicle: VehicleState | None, inverter: InverterState | None, report: ControlReport
    ) -> None:
        """Nothing to keep."""

    async def flush(self) -> None:
        self.failures.run("ledger.flush")


def cancelled_inside() -> BaseException:
    """What a step raises when its library cancels a future it awaits (a dropped connection)."""
    return asyncio.CancelledError()


class Rig:
    def __init__(self, step: str, error: Callable[[], BaseException]) -> None:
        self.journal = Journal()
        failures = Failures(self.journal, step, error)
        self.vehicle = StopFailingVehicle(failures)
        self.inverter = StopFailingInverter(failures)
        self.step = FixedStep()
        self.daemon = Daemon(
            make_config("control: {tick_s: 0.02, shutdown_timeout_s: 1.0}\n"),
            Links(self.vehicle, self.inverter, StopFailingAggregator(failures)),
            self.step,
            Notifier({}),
            handle_signals=False,
            recorder=StopFailingLedger(failures),
        )

    def run(self, how: str) -> tuple[ExitCode, list[MutableMapping[str, Any]]]:
        """Run until a requested stop or a crashed control step: the exit code and the log."""

        async def scenario() -> ExitCode:
            async with asyncio.timeout(10.0):
                if how == "crash":
                    self.step.raise_on_call = 3
                    return await self.daemon.run()
                task = asyncio.create_task(self.daemon.run())
                assert await until(lambda: self.daemon.ready)
                self.daemon.request_stop()
                return await task

        with structlog.testing.capture_logs() as logs:
            exit_code = asyncio.run(scenario())
        return exit_code, logs


def failed_steps(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    """(step, error) of every stop step the daemon logged as failed."""
    return [(e["step"], e["error"]) for e in logs if e["event"] == "stop step failed"]


@pytest.mark.parametrize("how", sorted(HOW))
@pytest.mark.parametrize("step", list(ERRORS))
def test_a_failing_stop_step_leaves_the_others_to_run(step: str, how: str) -> None:
    """A stop step that raises is logged; the others still run, 0 W included; exit 0 or 1."""
    rig = Rig(step, ERRORS[step])
    exit_code, logs = rig.run(how)
    assert exit_code is HOW[how]
    assert rig.journal.events == STOP_ORDER
    error = ERRORS[step]()
    if step == "ledger.flush":
        flush = [e for e in logs if e["event"] == "ledger not written; the charger keeps running"]
        assert [(e["step"], e["error"]) for e in flush] == [("flush", f"OperationalError: {error}")]
        assert failed_steps(logs) == []
    else:
        assert failed_steps(logs) == [(STEP_NAMES[step], f"{type(error).__name__}: {error}")]


@pytest.mark.parametrize("how", sorted(HOW))
@pytest.mark.parametrize("step", ASYNC_STEPS)
def test_a_step_that_raises_timeout_error_is_logged_as_its_error(step: str, how: str) -> None:
    """A step's own TimeoutError is logged as its error, not as an overrun; the rest runs."""
    rig = Rig(step, lambda: TimeoutError("no reply within 1 s"))
    exit_code, logs = rig.run(how)
    assert exit_code is HOW[how]
    assert rig.journal.events == STOP_ORDER
    assert failed_steps(logs) == [(STEP_NAMES[step], "TimeoutError: no reply within 1 s")]
    assert not [e for e in logs if e["event"] == "stop step overran its time"]


@pytest.mark.parametrize("how", sorted(HOW))
@pytest.mark.parametrize("step", ASYNC_STEPS)
def test_a_step_cancelled_from_inside_is_a_failed_step(step: str, how: str) -> None:
    """A step raising CancelledError of its own is a failed step: no hang, no escaped cancel."""
    rig = Rig(step, cancelled_inside)
    exit_code, logs = rig.run(how)
    assert exit_code is HOW[how]
    assert rig.journal.events == STOP_ORDER
    assert failed_steps(logs) == [(STEP_NAMES[step], "CancelledError")]


def test_a_cancelled_daemon_still_passes_its_cancel_on_after_a_failed_step() -> None:
    """A cancelled daemon with a failing stop step runs every step and still ends cancelled."""
    rig = Rig("inverter.safe_stop", ERRORS["inverter.safe_stop"])

    async def scenario() -> None:
        async with asyncio.timeout(10.0):
            task = asyncio.create_task(rig.daemon.run())
            assert await until(lambda: rig.daemon.ready)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert rig.journal.events == STOP_ORDER
