"""Wiring: an unusable ledger path leaves the charger running; the wear budget is seeded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from controller.app import open_ledger
from controller.control import CoreControlStep, policy_from_config
from tests.support import make_config


def test_unopenable_ledger_runs_without_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    config = make_config(f"ledger: {{path: {blocker / 'ledger.sqlite'}}}\n")
    assert open_ledger(config) is None


def test_ledger_opens_and_seeds_the_wear_budget(tmp_path: Path) -> None:
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
