"""Wiring: an unusable ledger path leaves the charger running; the wear budget is seeded."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from controller import app
from controller.app import open_ledger
from controller.config import Config
from controller.control import CoreControlStep, policy_from_config
from controller.daemon import ControlStep, ExitCode, Links
from controller.simclock import SIMULATED_CLOCK_ENV
from tests.ledger.support import inverter, report, vehicle
from tests.support import make_config


def test_unopenable_ledger_runs_without_it(tmp_path: Path) -> None:
    """A ledger path that cannot be opened gives no ledger instead of stopping the charger."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    config = make_config(f"ledger: {{path: {blocker / 'ledger.sqlite'}}}\n")
    assert open_ledger(config) is None


def test_ledger_opens_and_seeding_never_lowers_the_wear_budget(tmp_path: Path) -> None:
    """A seed sets the core's wear day and energy; a smaller one later does not lower it."""
    config = make_config(f"ledger: {{path: {tmp_path / 'ledger.sqlite'}}}\n")
    opened = open_ledger(config)
    assert opened is not None
    conn, ledger = opened
    try:
        step = CoreControlStep(policy_from_config(config))
        day = dt.date(2026, 11, 23)
        step.seed_wear_budget(day, ledger.discharged_wh_on(day) + 1234.0)
        assert (step.state.wear_day, step.state.discharged_today_wh) == (day, 1234.0)
        step.seed_wear_budget(day, 10.0)  # never lowers what the core already counted
        assert step.state.discharged_today_wh == 1234.0
    finally:
        conn.close()


def test_run_seeds_the_wear_budget_from_the_ledger_on_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """app.run starts the core with what the ledger says was discharged today, not a fresh day."""
    config = make_config(f"ledger: {{path: {tmp_path / 'ledger.sqlite'}}}\n")
    day = dt.date(2026, 11, 23)
    start = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)  # the site's time zone: UTC
    opened = open_ledger(config)
    assert opened is not None
    conn, ledger = opened
    try:  # a daemon that discharged 1234 Wh this morning, then stopped
        ledger.record(vehicle(), inverter(0.0, 5000.0), report(0.0, start=start))
        ledger.record(vehicle(), inverter(0.0, 6234.0), report(3600.0, start=start))
        ledger.flush()
    finally:
        conn.close()
    # Restarted at noon the same day (the simulated clock fixes "today" for app.run).
    noon = {"start": "2026-11-23T12:00:00+00:00", "at_unix_s": time.time(), "rate": 1}
    monkeypatch.setenv(SIMULATED_CLOCK_ENV, json.dumps(noon))
    started: list[ControlStep] = []

    class StartedDaemon:
        """Stands in for the Daemon: keeps the control step app.run built, and stops at once."""

        def __init__(self, config: Config, links: Links, step: ControlStep, **_: object) -> None:
            started.append(step)

        async def run(self) -> ExitCode:
            return ExitCode.OK

    monkeypatch.setattr(app, "Daemon", StartedDaemon)
    assert app.run(config) is ExitCode.OK
    [step] = started
    assert isinstance(step, CoreControlStep)
    assert step.state.wear_day == day
    assert step.state.discharged_today_wh == pytest.approx(1234.0)
