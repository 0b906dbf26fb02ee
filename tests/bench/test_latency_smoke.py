"""Smoke test of the latency benchmark: a few trials, the figures have the promised shape.

No timing thresholds: the figures depend on the machine (``make bench`` judges the targets).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import latency
from hil.mosquitto import find_mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.hil]


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_quick_run_gives_ordered_positive_figures(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A quick run: every fault trial ends in a 0 W write; the figures are positive and ordered."""
    # A short directory: the plant's control socket is an AF_UNIX path (108 bytes at most).
    workdir = Path(tmp_path_factory.mktemp("lat"))
    figures = latency.run(workdir=workdir, quick=True)
    # Every fault trial must end in a 0 W write: a missed one is a safety failure, not noise.
    assert figures["fault_reaction_ms"]["n"] == latency.QUICK["faults"], figures["latency"]
    assert figures["setpoint_latency_ms"]["n"] >= latency.QUICK["setpoints"] - 1
    for key in ("fault_reaction_ms", "setpoint_latency_ms"):
        spread = figures[key]
        assert 0 < spread["p50"] <= spread["p99"] <= spread["max"]
    for key in ("fault_floor_ms", "setpoint_floor_ms"):
        assert figures[key] > 0
    assert figures["setpoint_floor_ms"] >= figures["fault_floor_ms"]
    assert figures["note"]
    assert figures["latency"]["fault_trials_failed"] <= 1  # what is left: one slow recovery
