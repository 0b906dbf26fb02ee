"""Smoke run of the load benchmark: daemon, plant and broker for seconds (no thresholds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load
from hil.mosquitto import find_mosquitto


@pytest.mark.slow
@pytest.mark.deep  # about 45 s of a loaded machine: `make test-deep` runs it
@pytest.mark.timeout(300)
def test_quick_load_reports_every_key(tmp_path: Path) -> None:
    """A quick load run reports every figure, with the daemon alive and the car discharging."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    result = load.run(workdir=tmp_path, quick=True)
    for key in ("nominal_cpu_pct", "rss_mb", "rss_growth_mb_per_h", "ready_s"):
        assert isinstance(result[key], float), key
    assert 0 < result["nominal_cpu_pct"] < 100 * 2  # at most every core of the machine
    assert 10 < result["rss_mb"] < 1000
    assert 0 < result["ready_s"] <= result["ready_max_s"] < 30
    assert len(result["ready_all_s"]) == load.QUICK.ready_starts
    # The daemon really ran the session: the car is in transfer and the fallback discharges.
    for part in ("nominal", "soak"):
        assert result[part]["daemon_alive_at_end"]
        assert result[part]["plant_at_end"]["vehicle_state"] == "transfer"
        assert result[part]["plant_at_end"]["actual_w"] < 0
    assert result["soak"]["factor"] == load.FACTOR
