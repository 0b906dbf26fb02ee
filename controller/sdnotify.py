"""systemd's notify protocol (sd_notify), spoken directly over the datagram socket.

No libsystemd binding is needed: the protocol is newline-separated ``KEY=VALUE`` text sent to the
AF_UNIX datagram socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract
namespace). Outside systemd the variable is absent and every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(component="sdnotify")


class Notifier:
    """Sends READY, WATCHDOG, STATUS and STOPPING to systemd; never raises."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        self._sock: socket.socket | None = None
        self._failed_once = False
        self.watchdog_interval_s = _watchdog_interval_s(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # systemd gone or socket unreachable: nothing to do but say so once.
            if not self._failed_once:
                log.warning("sd_notify failed", error=str(exc))
                self._failed_once = True

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.notify(f"STOPPING=1\nSTATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd expects pings within, or None when it watches nothing."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    # sd_watchdog_enabled(3): the variables apply only to the process systemd named.
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
