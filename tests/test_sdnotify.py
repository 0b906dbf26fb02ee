"""sd_notify spoken over the datagram socket, as systemd expects it."""

from __future__ import annotations

import os
import socket
import uuid

import structlog

from controller.sdnotify import Notifier


def test_abstract_socket_receives_messages() -> None:
    """An '@' address is the abstract namespace; READY carries a STATUS line."""
    name = f"v2g-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("running")
        assert server.recv(1024) == b"READY=1\nSTATUS=running"
        notifier.close()


def test_without_systemd_every_call_is_a_no_op() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    assert notifier.watchdog_interval_s is None


def test_unreachable_socket_does_not_raise() -> None:
    """A vanished notify socket is reported once in the log, never raised."""
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert notifier.enabled
    with structlog.testing.capture_logs() as logs:
        notifier.watchdog()
        notifier.watchdog()
        notifier.status("still here")
    notifier.close()
    failures = [e for e in logs if e["event"] == "sd_notify failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["error"]


def test_watchdog_interval_from_environment() -> None:
    """WATCHDOG_USEC sets the interval; a WATCHDOG_PID for another process disables it."""
    assert Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval_s == 10.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval_s == 2.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
