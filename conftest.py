"""Rules for every test in tests/ and hil/: bounded time, no silent skips under CI, and
hypothesis settings that hold on a loaded machine. docs/testing.md explains each.

Time limit: pytest-timeout's limit (``timeout`` in pyproject.toml, or a test's own
``@pytest.mark.timeout``) is enforced in two steps. At the limit, SIGALRM fails the test in the
main thread after writing every thread's stack and every asyncio task's stack to stderr, and the
session goes on. If the test still has not ended ``BACKSTOP_S`` later (its event loop's cleanup
hangs on a task that ignores its cancel, a C call that ignores signals), the stacks are written
again and the process exits: a hang ends the run, it never runs into CI's 90 minutes.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Generator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings

BACKSTOP_S = float(os.environ.get("V2G_TEST_BACKSTOP_S", "60"))
UNDER_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Deadlines and the too-slow check measure the machine, not the code: on two shared cores a
# scheduling pause fails them. Example counts stay per test.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")


def _dump_everything(why: str) -> None:
    """Every thread's stack, then every live asyncio task's stack, to the real stderr."""
    out = sys.__stderr__
    if out is None:
        return
    out.write(f"\n{'+' * 30} {why} {'+' * 30}\n")
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    # The task registry is private but is the only view of tasks from another thread.
    tasks = list(getattr(asyncio.tasks, "_all_tasks", ()))
    for task in tasks:
        if task.done():
            continue
        out.write(f"--- asyncio task {task.get_name()}: {task!r}\n")
        try:
            task.print_stack(file=out)
        except Exception as exc:  # noqa: BLE001  a racing task must not hide the rest
            out.write(f"    (stack unavailable: {exc})\n")
    out.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool:
    """SIGALRM fails the test at its limit; a thread ends the process if that is not enough."""
    limit_s = float(settings.timeout)

    def on_alarm(signum: int, frame: object) -> None:
        _dump_everything(f"timeout: {item.nodeid} ran over {limit_s:.0f} s")
        pytest.fail(f"ran over its time limit of {limit_s:.0f} s (stacks above)", pytrace=True)

    def backstop() -> None:
        # Out of pytest's capture, or the stacks would go to a file nobody reads.
        capture = item.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=True)
        _dump_everything(f"timeout: {item.nodeid} did not end {BACKSTOP_S:.0f} s after its limit")
        os._exit(1)

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    timer = threading.Timer(limit_s + (BACKSTOP_S if in_main else 0.0), backstop)
    timer.daemon = True
    timer.name = f"timeout backstop {item.nodeid}"
    timer.start()

    def cancel() -> None:
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        timer.cancel()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # read by pytest-timeout
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Under CI a skip is a failure: a missing broker or tool must not pass as a green test."""
    outcome = yield
    report = outcome.get_result()
    if UNDER_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Generator[None, None, None]:
    """Each test starts from the structlog configuration the previous one found: code that
    configures logging for a process (the CLI, a benchmark's quiet mode) can run inside a test,
    and its stream or level must not reach the next test in the same worker (a test that reads
    its logs from capsys or capture_logs would then see nothing)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
