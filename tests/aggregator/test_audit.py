"""The setpoint audit trail: the link tells its sink of every setpoint accepted, rejected and
applied, and a failing sink never breaks the link. (No broker needed: setpoints are handed to
the link as the broker would.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from controller.aggregator.link import MqttAggregatorLink
from controller.aggregator.outbox import Kind
from controller.core.snapshots import PowerState
from controller.links import SetpointAudit
from tests.aggregator.support import make_config, make_link, report, setpoint


def deliver(link: MqttAggregatorLink, payload: dict[str, Any] | bytes) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    link._on_setpoint(data, retained=False)


def test_accepted_rejected_and_applied_are_audited() -> None:
    """Accepted with the power asked; rejected with the reason; applied with the power the
    cycle commanded and the limit that bound."""
    lines: list[SetpointAudit] = []
    link = make_link(make_config(1), audit=lines.append)
    deliver(link, setpoint("sp-1", -3500.0))
    deliver(link, setpoint("sp-1", -3500.0))  # a replay
    deliver(link, b"{not json")
    link.report(
        report(
            "sp-1",
            -2000.0,
            state=PowerState.DISCHARGING,
            source="aggregator",
            binding_limit="soc_floor: 2.1 kWh above the 40 % floor",
        )
    )
    summary = [(a.setpoint_id, a.action, a.requested_w, a.applied_w) for a in lines]
    assert summary == [
        ("sp-1", "accepted", -3500.0, None),
        ("sp-1", "rejected", None, None),
        (None, "rejected", None, None),
        ("sp-1", "applied", -3500.0, -2000.0),
    ]
    assert lines[1].reason is not None
    assert "already" in lines[1].reason or "replay" in lines[1].reason
    assert lines[2].reason is not None
    assert lines[2].reason.startswith("malformed JSON")
    assert lines[3].reason == "soc_floor: 2.1 kWh above the 40 % floor"
    assert all(a.at.tzinfo is not None for a in lines)


def test_a_setpoint_no_cycle_followed_is_audited_without_an_applied_power() -> None:
    """An ack sent without any control cycle is audited as applied with no power and the
    reason."""
    lines: list[SetpointAudit] = []
    link = make_link(make_config(1), audit=lines.append, ack_wait_s=0.0)
    deliver(link, setpoint("sp-2", 1000.0))
    link._ack_overdue(float("inf"))
    assert [(a.action, a.applied_w) for a in lines] == [("accepted", None), ("applied", None)]
    assert lines[1].reason == "no control cycle reported within 0 s"


def test_a_failing_sink_is_logged_and_never_breaks_the_link() -> None:
    """A sink that raises: the setpoint is still accepted and acked, and the failure logged."""

    def broken(line: SetpointAudit) -> None:
        raise OSError("disk full")

    link = make_link(make_config(1), audit=broken)
    with structlog.testing.capture_logs() as logs:
        deliver(link, setpoint("sp-3", 500.0))
        link.report(report("sp-3", 500.0, state=PowerState.CHARGING, source="aggregator"))
    setpoint_now = link.setpoint()
    assert setpoint_now is not None
    assert setpoint_now.setpoint_id == "sp-3"
    acks = [json.loads(m.payload) for m in link.outbox.pending(Kind.ACK)]
    assert [(a["id"], a["applied_power_w"]) for a in acks] == [("sp-3", 500.0)]
    failures = [e for e in logs if e["event"] == "setpoint audit not recorded"]
    assert [e["action"] for e in failures] == ["accepted", "applied"]
    assert failures[0]["error"] == "OSError: disk full"


@pytest.mark.parametrize("mode", ["idle", "release"])
def test_idle_and_release_are_audited(mode: str) -> None:
    """A release asks for no power (requested None); idle asks for 0 W."""
    lines: list[SetpointAudit] = []
    link = make_link(make_config(1), audit=lines.append)
    deliver(link, setpoint("sp-4", 0.0, mode=mode))
    assert lines[0].action == "accepted"
    assert lines[0].requested_w == (None if mode == "release" else 0.0)
