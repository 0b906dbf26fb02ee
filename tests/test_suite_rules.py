"""The suite's own rules (conftest.py): a hang fails with stacks, a stuck hang ends the run, and
under CI a skip is a failure. Each runs pytest on a small throw-away suite in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGS = """
import asyncio

import pytest


def test_sleeps_forever() -> None:
    async def main() -> None:
        await asyncio.sleep(3600)

    asyncio.run(main())


def test_after_the_hang_still_runs() -> None:
    assert True
"""

IGNORES_CANCEL = """
import asyncio


def test_task_swallows_every_cancel() -> None:
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def main() -> None:
        await asyncio.create_task(stubborn(), name="stubborn-task")

    asyncio.run(main())
"""

SKIPS = """
import pytest


def test_needs_a_tool() -> None:
    pytest.skip("the tool is not installed")
"""


def run_suite(tmp_path: Path, body: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 2\n", encoding="utf-8")
    (tmp_path / "test_example.py").write_text(body, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["V2G_TEST_BACKSTOP_S"] = "3"
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_a_hanging_test_fails_at_its_limit_and_the_run_goes_on(tmp_path: Path) -> None:
    """A test that sleeps forever fails at its limit with its task's stack; the next test runs."""
    result = run_suite(tmp_path, HANGS, ci=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "ran over its time limit of 2 s" in out
    assert "1 failed, 1 passed" in out
    assert "asyncio task" in out  # the stuck task's stack, not only the loop's select()
    assert "in main" in out


def test_a_hang_that_ignores_its_cancel_ends_the_run_with_stacks(tmp_path: Path) -> None:
    """A task that swallows every cancel cannot hold the run: the backstop exits with stacks."""
    result = run_suite(tmp_path, IGNORES_CANCEL, ci=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "did not end 3 s after its limit" in out
    assert "stubborn-task" in out
    assert "in stubborn" in out


def test_a_skip_is_a_failure_under_ci(tmp_path: Path) -> None:
    """CI=true turns a skip into a failure that names the reason; without CI it stays a skip."""
    under_ci = run_suite(tmp_path, SKIPS, ci=True)
    assert under_ci.returncode == 1, under_ci.stdout
    assert "skipped under CI=true" in under_ci.stdout
    assert "the tool is not installed" in under_ci.stdout
    locally = run_suite(tmp_path, SKIPS, ci=False)
    assert locally.returncode == 0, locally.stdout
    assert "1 skipped" in locally.stdout
