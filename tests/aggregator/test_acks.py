"""Which ack an accepted setpoint gets, decided from the control reports that follow it.

The setpoint is handed to the link as the broker would hand it over (no broker needed here);
the acks are read from the link's outbox.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.outbox import Kind
from controller.core.snapshots import PowerState
from tests.aggregator.support import make_config, make_link, report, setpoint


def deliver(link: MqttAggregatorLink, payload: dict[str, Any]) -> None:
    link._on_setpoint(json.dumps(payload).encode(), retained=False)


def acks(link: MqttAggregatorLink) -> dict[str, dict[str, Any]]:
    return {
        ack["id"]: ack for ack in (json.loads(m.payload) for m in link.outbox.pending(Kind.ACK))
    }


# What a call that waits on the network raises as audit events (create, resolve, connect, send);
# sleeps are caught by replacing time.sleep (its audit event is Python 3.13's).
_BLOCKING_EVENTS = ("socket.",)
_watched: list[list[str]] = []  # the open watches; the audit hook appends to the innermost


def _audit(event: str, _args: tuple[object, ...]) -> None:
    if _watched and event.startswith(_BLOCKING_EVENTS):
        _watched[-1].append(event)


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside a watch


@contextlib.contextmanager
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Collect the socket operations and sleeps made inside the block."""
    seen: list[str] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        seen.append(f"time.sleep({seconds})")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    _watched.append(seen)
    try:
        yield seen
    finally:
        _watched.pop()
        monkeypatch.setattr(time, "sleep", real_sleep)


def test_report_must_not_block_and_only_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    """report() only queues: no socket, no sleep, and the ack waits in the outbox."""
    link = make_link(make_config(1))
    deliver(link, setpoint("sp-1", -3000.0))
    assert not inspect.iscoroutinefunction(link.report)  # nothing for the caller to await
    with blocking_calls(monkeypatch) as blocking:
        link.report(report("sp-1", -3000.0, state=PowerState.DISCHARGING, source="aggregator"))
    assert blocking == []
    ack = acks(link)["sp-1"]
    assert (ack["accepted"], ack["applied_power_w"]) == (True, -3000.0)
    assert "binding_limit" not in ack


def test_superseded_and_not_followed_setpoints_are_acked_after_the_wait() -> None:
    """A setpoint replaced before any cycle followed it, or never followed, is acked after
    ack_wait_s with the power applied and why."""
    link = make_link(make_config(1), ack_wait_s=0.0)
    deliver(link, setpoint("sp-1", -3000.0))
    deliver(link, setpoint("sp-2", -1000.0))
    link.report(report("sp-2", -1000.0, source="aggregator"))
    found = acks(link)
    assert found["sp-2"]["applied_power_w"] == -1000.0
    assert found["sp-1"]["binding_limit"] == "superseded by sp-2"
    assert found["sp-1"]["applied_power_w"] == -1000.0

    deliver(link, setpoint("sp-3", 2000.0))
    link.report(report(None, 0.0, source="none", binding_limit="fault: inverter unreachable"))
    assert acks(link)["sp-3"]["binding_limit"] == "fault: inverter unreachable"


def test_release_is_acked_with_what_the_local_policy_commands() -> None:
    """A release is acked at the first cycle on the fallback, without a requested power."""
    link = make_link(make_config(1))
    deliver(link, setpoint("sp-r", 0.0, mode="release"))
    link.report(report(None, 3700.0, state=PowerState.CHARGING, source="fallback"))
    ack = acks(link)["sp-r"]
    assert ack["applied_power_w"] == 3700.0
    assert "requested_power_w" not in ack


def test_awaiting_acks_are_bounded() -> None:
    """With more accepted setpoints than the bound and no report, the oldest are acked at once."""
    link = make_link(make_config(1))
    for n in range(70):
        deliver(link, setpoint(f"sp-{n:02d}", 100.0))
    found = acks(link)
    assert len(found) == 6
    assert found["sp-00"]["reason"] == "superseded before any control cycle reported"
