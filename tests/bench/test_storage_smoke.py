"""Smoke test of the slow-storage benchmark (issue 15): two delays, a few trials each.

No timing thresholds (``make bench`` judges the targets); what is asserted is what the bench
must get right to mean anything: the shim really counted the daemon's fsyncs, every fault trial
ended in a 0 W write under the slow disk too, and the watchdog was heard.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import storage
from hil.mosquitto import find_mosquitto

pytestmark = [pytest.mark.deep, pytest.mark.hil, pytest.mark.timeout(300)]


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_quick_run_measures_both_disks(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = Path(tmp_path_factory.mktemp("sto"))
    figures = storage.run(workdir=workdir, quick=True, delays_ms=(0, 300))
    normal, slow = figures["storage"]["runs"]
    assert (normal["fsync_delay_ms"], slow["fsync_delay_ms"]) == (0, 300)
    for run in (normal, slow):
        # Every fault trial must end in a 0 W write: a missed one is a safety failure.
        assert run["fault_reaction_ms"]["n"] == storage.QUICK["faults"], run
        assert run["setpoint_latency_ms"]["n"] >= storage.QUICK["setpoints"] - 1, run
        assert run["fsyncs"] > 0, run  # the shim saw the daemon's ledger commits
        assert run["watchdog_max_gap_s"] is not None, run
    assert slow["fault_p99_ratio"] is not None
    states = figures["storage"]["states"]["fsyncs_per_hour"]
    assert set(states) == {state for state, _ in storage.STATES}
    assert figures["storage_can_frames_dropped"] >= 0
    assert figures["note"]
