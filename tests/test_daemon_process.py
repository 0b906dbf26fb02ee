"""The installed daemon as systemd runs it: a real process speaking sd_notify."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BASE_CONFIG, NotifyListener


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    short = Path("/tmp") / f"v2g-p-{os.getpid()}-{tmp_path.name[-12:]}"
    short.mkdir(exist_ok=True)
    sock = NotifyListener(short)
    yield sock
    sock.close()
    sock.path.unlink(missing_ok=True)
    short.rmdir()


def start_daemon(tmp_path: Path, listener: NotifyListener) -> subprocess.Popen[str]:
    config = tmp_path / "config.yaml"
    config.write_text(BASE_CONFIG)
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


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_notify_sequence_and_clean_exit(
    tmp_path: Path, listener: NotifyListener, stop_signal: signal.Signals
) -> None:
    """READY=1, then WATCHDOG=1, then on a stop signal STOPPING=1 and exit 0 within 5 s."""
    proc = start_daemon(tmp_path, listener)
    try:
        assert listener.wait_for("READY=1", timeout_s=30), "daemon never became ready"
        assert listener.wait_for("WATCHDOG=1", timeout_s=5)
        proc.send_signal(stop_signal)
        sent = time.monotonic()
        output, _ = proc.communicate(timeout=10)
        elapsed_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert elapsed_s < 5.0
    messages = listener.drain()
    firsts = [
        next(i for i, m in enumerate(messages) if m.startswith(key))
        for key in ("READY=1", "WATCHDOG=1", "STOPPING=1")
    ]
    assert firsts == sorted(firsts)
    assert "Traceback" not in output
    # The journal gets one JSON object per line, the stop sequence among them.
    assert '"event": "stop step done", "level": "info"' in output or "stop step done" in output
