"""``make demo``: start the real daemon on a config, wait until it is READY, stop it cleanly.

The daemon runs as systemd would run it: its own process, sd_notify on a socket this script
listens on, SIGTERM to stop. The demo prints what systemd would see and fails loudly (non-zero)
if the daemon does not become ready, does not stop cleanly, or stops with an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _collect(sock: socket.socket, until: str, timeout_s: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        messages.append(message)
        if until in message:
            break
    return messages


def run_demo(config: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="v2g-demo-") as tmp:
        notify_path = Path(tmp) / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="5000000")
            _say(f"demo: starting v2g-controller on {config}")
            started = time.monotonic()
            daemon = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "-c", str(config)], env=env
            )
            try:
                messages = _collect(notify, "READY=1", READY_TIMEOUT_S)
                ready = next((m for m in messages if "READY=1" in m), None)
                if ready is None:
                    _say(f"demo: daemon did not become ready within {READY_TIMEOUT_S:.0f} s")
                    return 1
                status = next(
                    (line for line in ready.splitlines() if line.startswith("STATUS=")), ""
                )
                _say(f"demo: READY after {time.monotonic() - started:.2f} s ({status})")
                _collect(notify, "WATCHDOG=1", 6.0)
                _say("demo: watchdog ping seen; sending SIGTERM")
                daemon.send_signal(signal.SIGTERM)
                stop_sent = time.monotonic()
                code = daemon.wait(timeout=STOP_TIMEOUT_S)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
            stopped = _collect(notify, "STOPPING=1", 0.2)
            _say(
                f"demo: daemon exited with {code} in {time.monotonic() - stop_sent:.2f} s"
                + (" after STOPPING=1" if any("STOPPING=1" in m for m in stopped) else "")
            )
            return 0 if code == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=Path("config/example.yaml"))
    args = parser.parse_args()
    return run_demo(args.config)


if __name__ == "__main__":
    sys.exit(main())
