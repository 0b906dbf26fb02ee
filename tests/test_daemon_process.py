"""The installed daemon as systemd runs it: a real process speaking sd_notify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import BASE_CONFIG, NotifyListener


def start_daemon(tmp_path: Path, listener: NotifyListener) -> subprocess.Popen[str]:
    config = tmp_path / "config.yaml"
    # The ledger under the test's directory, never the default /var/lib/v2g-controller.
    config.write_text(BASE_CONFIG + f"ledger: {{path: {tmp_path / 'ledger.sqlite'}}}\n")
    env = dict(os.environ)
    env.update(NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


STOP_STEPS = ["inverter to 0 W and disabled", "vehicle session ended", "aggregator told offline"]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_notify_sequence_and_clean_exit(
    tmp_path: Path, listener: NotifyListener, stop_signal: signal.Signals
) -> None:
    """READY=1, then WATCHDOG=1, then on a stop signal STOPPING=1, the stop sequence with every
    step inside its share of the budget, and exit 0 (how fast: the daemon tests, on virtual
    time); the log is one JSON object per line."""
    proc = start_daemon(tmp_path, listener)
    try:
        assert listener.wait_for("READY=1", timeout_s=30), "daemon never became ready"
        assert listener.wait_for("WATCHDOG=1", timeout_s=5)
        proc.send_signal(signal.SIGUSR1)  # a technician's manual fault reset
        time.sleep(0.2)
        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=30)  # only a daemon that never exits fails this
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    messages = listener.drain()
    firsts = [
        next(i for i, m in enumerate(messages) if m.startswith(key))
        for key in ("READY=1", "WATCHDOG=1", "STOPPING=1")
    ]
    assert firsts == sorted(firsts)
    assert "Traceback" not in output
    # The journal gets one JSON object per line, the stop sequence among them.
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert all(isinstance(record, dict) for record in records)
    events = [record.get("event") for record in records]
    assert "fault reset" in events  # nothing latched: refused, and said so
    done = [r.get("step") for r in records if r.get("event") == "stop step done"]
    assert done == STOP_STEPS  # in order, and none overran its share of the budget


SLOW_STOP = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from controller.daemon import Daemon, Links
from controller.logs import configure_logging
from tests.support import (FakeAggregator, FakeInverter, FakeVehicle, FixedStep, Journal,
                           make_config)

journal = Journal()
inverter = FakeInverter(journal)
inverter.safe_stop_delay_s = 60.0  # an inverter that never confirms the stop
configure_logging("info", "json")
daemon = Daemon(make_config(), Links(FakeVehicle(journal), inverter, FakeAggregator(journal)),
                FixedStep())
sys.exit(asyncio.run(daemon.run()))
"""


def test_second_stop_signal_exits_at_once(tmp_path: Path, listener: NotifyListener) -> None:
    """A second SIGTERM during a slow stop exits at once with code 3."""
    script = tmp_path / "slow_stop.py"
    script.write_text(SLOW_STOP)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert listener.wait_for("READY=1", timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        assert listener.wait_for("STOPPING=1", timeout_s=5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, output
    assert "second stop signal; exiting at once" in output
