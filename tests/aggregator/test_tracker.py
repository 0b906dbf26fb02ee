"""The setpoint tracker, sans-IO: payloads, reports and both clocks in; acks and audit lines out.

No broker, no event loop, no clock: every "now" is a value the test chooses.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest

from controller.aggregator.tracker import (
    SUPERSEDED_REASON,
    AckToSend,
    AuditLine,
    Output,
    SetpointTracker,
)
from controller.aggregator.validation import RETAINED_REASON, Accepted, Rejected, SetpointLimits
from controller.core.rules import Rule
from controller.core.snapshots import PowerCommand, PowerState
from controller.links import ControlOutput, ControlReport

WALL = dt.datetime(2025, 3, 14, 17, 30, tzinfo=dt.UTC)
MONO_S = 1000.0
LIMITS = SetpointLimits(max_abs_power_w=22_000, max_ttl_s=900, clock_skew_s=30)


def payload(setpoint_id: str, power_w: float = -3000.0, **extra: Any) -> bytes:
    fields: dict[str, Any] = {
        "id": setpoint_id,
        "issued_at": WALL.isoformat(),
        "ttl_s": 60,
        "power_w": power_w,
    }
    fields.update(extra)
    return json.dumps(fields).encode()


def cycle(
    at_s: float,
    commanded_w: float,
    *,
    setpoint_id: str | None = None,
    source: str = "aggregator",
    binding_limit: str | None = None,
) -> ControlReport:
    return ControlReport(
        monotonic_s=at_s,
        wall=WALL + dt.timedelta(seconds=at_s - MONO_S),
        output=ControlOutput(
            command=PowerCommand(power_w=commanded_w, enable=commanded_w != 0),
            state=PowerState.IDLE if commanded_w == 0 else PowerState.DISCHARGING,
            binding_limit=binding_limit,
            reasons=(),
            limits=(binding_limit,) if binding_limit else (),
            source=source,
            setpoint_id=setpoint_id,
            max_charge_w=7400.0,
            max_discharge_w=7400.0,
            soc_floor_pct=40.0,
            energy_above_floor_wh=9000.0,
            faults=(),
        ),
    )


def receive(
    tracker: SetpointTracker, data: bytes, at_s: float = MONO_S, *, retained: bool = False
) -> tuple[Accepted | Rejected, tuple[Output, ...]]:
    received = tracker.receive(
        data,
        retained=retained,
        wall_now=WALL + dt.timedelta(seconds=at_s - MONO_S),
        monotonic_now_s=at_s,
    )
    return received.outcome, received.outputs


def acks(outputs: tuple[Output, ...] | list[AckToSend]) -> list[dict[str, Any]]:
    """The acks among the outputs, as the aggregator reads them."""
    return [
        json.loads(output.message.to_json()) for output in outputs if isinstance(output, AckToSend)
    ]


def test_accepted_setpoint_becomes_current_and_is_audited_without_an_ack_yet() -> None:
    """An accepted setpoint is current at once; its "accepted" line goes out, its ack waits."""
    tracker = SetpointTracker(LIMITS)
    outcome, outputs = receive(tracker, payload("sp-1", -3500.0))
    assert isinstance(outcome, Accepted)
    current = tracker.setpoint
    assert current is not None
    assert (current.setpoint_id, current.power_w, current.received_at_s) == (
        "sp-1",
        -3500.0,
        MONO_S,
    )
    assert current.valid_until_s == MONO_S + 60
    assert len(outputs) == 1
    assert isinstance(outputs[0], AuditLine)
    line = outputs[0].line
    assert (line.setpoint_id, line.action, line.requested_w, line.at) == (
        "sp-1",
        "accepted",
        -3500.0,
        WALL,
    )
    assert tracker.awaiting_ack == ("sp-1",)
    assert (tracker.accepted, tracker.rejected) == (1, 0)


def test_report_naming_the_setpoint_acks_it_with_the_applied_power() -> None:
    """The first report naming a setpoint acks it with the power applied, and no binding limit
    when that is what was asked."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    sent = tracker.report(cycle(MONO_S + 0.1, -3000.0, setpoint_id="sp-1"), wall_now=WALL)
    assert acks(sent) == [
        {
            "type": "ack",
            "id": "sp-1",
            "accepted": True,
            "at": "2025-03-14T17:30:00Z",
            "requested_power_w": -3000.0,
            "applied_power_w": -3000.0,
        }
    ]
    audit = sent[0].audit
    assert (audit.action, audit.requested_w, audit.applied_w, audit.reason) == (
        "applied",
        -3000.0,
        -3000.0,
        None,
    )
    assert tracker.awaiting_ack == ()
    assert tracker.report(cycle(MONO_S + 0.2, -3000.0, setpoint_id="sp-1"), wall_now=WALL) == []


def test_applied_power_that_differs_names_the_binding_limit() -> None:
    """A cut request is acked with the limit that bound, and audited with it as the reason."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3500.0))
    limit = "soc_floor: 2.1 kWh above the 40 % floor"
    sent = tracker.report(
        cycle(MONO_S + 0.1, -2000.0, setpoint_id="sp-1", binding_limit=limit), wall_now=WALL
    )
    (ack,) = acks(sent)
    assert (ack["applied_power_w"], ack["binding_limit"]) == (-2000.0, limit)
    assert sent[0].audit.reason == limit


RAMP_REASON = "ramp: 0 W toward -3000 W at 500 W/s"


def explained(
    report: ControlReport, *reasons: tuple[Rule, str], requested_w: float = -3000.0
) -> ControlReport:
    """``report`` with the cycle's typed reasons and the request the core took."""
    output = replace(
        report.output,
        rules=tuple(rule for rule, _ in reasons),
        reasons=tuple(text for _, text in reasons),
        requested_w=requested_w,
    )
    return replace(report, output=output)


@pytest.mark.parametrize(
    ("binding_limit", "reasons", "requested_w", "expected"),
    [
        # The finding of issue 20: ramping toward the request, no limit cut it.
        (
            None,
            [(Rule.ARBITRATION, "arbitration: setpoint"), (Rule.RAMP, RAMP_REASON)],
            -3000.0,
            RAMP_REASON,
        ),
        # A limit cut the request, and the ramp is still on its way down to that limit.
        (
            "soc_floor: 2.1 kWh left",
            [(Rule.RAMP, RAMP_REASON)],
            -3000.0,
            f"soc_floor: 2.1 kWh left; {RAMP_REASON}",
        ),
        ("soc_floor: 2.1 kWh left", [], -3000.0, "soc_floor: 2.1 kWh left"),
        # The core took another request than the setpoint's.
        (
            None,
            [(Rule.ARBITRATION, "arbitration: fallback idle")],
            0.0,
            "arbitration: fallback idle",
        ),
        # Held at 0 W until a start after an emergency-stop reset.
        (
            None,
            [(Rule.ARBITRATION, "arbitration: setpoint"), (Rule.FAULT_RESET, "waiting")],
            -3000.0,
            "waiting",
        ),
        # Nothing in the cycle explains it: still never empty.
        (None, [], -3000.0, "state discharging, source aggregator, power stage enabled"),
    ],
)
def test_applied_power_that_differs_always_names_what_binds(
    binding_limit: str | None,
    reasons: list[tuple[Rule, str]],
    requested_w: float,
    expected: str,
) -> None:
    """Whenever applied differs from requested, the ack names what binds, in the documented
    order: the limit (with the ramp under way), the ramp, arbitration, the wait for a start."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    report = cycle(MONO_S + 0.1, -138.69, setpoint_id="sp-1", binding_limit=binding_limit)
    sent = tracker.report(explained(report, *reasons, requested_w=requested_w), wall_now=WALL)
    (ack,) = acks(sent)
    assert (ack["applied_power_w"], ack["binding_limit"]) == (-138.69, expected)
    assert sent[0].audit.reason == expected


def test_ramp_that_has_arrived_names_nothing() -> None:
    """A cycle that ramped but ends within 0.5 W of the request names no binding limit."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    report = cycle(MONO_S + 0.1, -2999.8, setpoint_id="sp-1")
    sent = tracker.report(explained(report, (Rule.RAMP, RAMP_REASON)), wall_now=WALL)
    assert "binding_limit" not in acks(sent)[0]


def test_release_names_the_ramp_toward_what_the_local_policy_asks() -> None:
    """A release acked while the power ramps toward the local policy's request names the ramp."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-r", 0.0, mode="release"))
    report = cycle(MONO_S + 0.1, 500.0, source="fallback")
    ramp = "ramp: 0 W toward 3700 W at 500 W/s"
    sent = tracker.report(explained(report, (Rule.RAMP, ramp), requested_w=3700.0), wall_now=WALL)
    (ack,) = acks(sent)
    assert (ack["applied_power_w"], ack["binding_limit"]) == (500.0, ramp)
    assert "requested_power_w" not in ack


def test_within_half_a_watt_no_binding_limit_is_named() -> None:
    """An applied power within 0.5 W of the request is "as asked": no binding limit."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    sent = tracker.report(
        cycle(MONO_S + 0.1, -2999.6, setpoint_id="sp-1", binding_limit="rounding"), wall_now=WALL
    )
    assert "binding_limit" not in acks(sent)[0]


@pytest.mark.parametrize(
    ("data", "retained", "reason_start"),
    [
        (b"{not json", False, "malformed JSON"),
        (payload("sp-1"), True, RETAINED_REASON),
        (payload("sp-1", 50_000.0), False, "power_w out of range"),
        (payload("sp-1", issued_at=(WALL - dt.timedelta(hours=1)).isoformat()), False, "expired"),
    ],
    ids=["malformed", "retained", "out-of-range", "expired"],
)
def test_rejected_payload_is_acked_at_once_with_the_reason(
    data: bytes, retained: bool, reason_start: str
) -> None:
    """A payload refused by validation is acked at once, accepted false, with the reason, and
    audited as rejected; it never becomes the current setpoint."""
    tracker = SetpointTracker(LIMITS)
    outcome, outputs = receive(tracker, data, retained=retained)
    assert isinstance(outcome, Rejected)
    (ack,) = acks(outputs)
    assert ack["accepted"] is False
    assert ack["reason"].startswith(reason_start)
    assert isinstance(outputs[0], AckToSend)
    assert outputs[0].after_seq == 0  # a rejection waits for nothing
    assert (outputs[0].audit.action, outputs[0].audit.reason) == ("rejected", ack["reason"])
    assert tracker.setpoint is None
    assert tracker.awaiting_ack == ()
    assert (tracker.accepted, tracker.rejected) == (0, 1)


def test_duplicate_id_is_rejected_and_the_first_stays_current() -> None:
    """A setpoint id seen before is rejected as a replay; the original keeps its pending ack."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    outcome, outputs = receive(tracker, payload("sp-1", 2000.0), MONO_S + 0.05)
    assert isinstance(outcome, Rejected)
    (ack,) = acks(outputs)
    assert (ack["id"], ack["accepted"]) == ("sp-1", False)
    assert "replayed id" in ack["reason"]
    current = tracker.setpoint
    assert current is not None
    assert current.power_w == -3000.0
    assert tracker.awaiting_ack == ("sp-1",)


def test_newer_setpoint_replaces_the_current_one() -> None:
    """The setpoint accepted last is current; an older one still waits for its own ack."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    receive(tracker, payload("sp-2", -1000.0), MONO_S + 0.1)
    current = tracker.setpoint
    assert current is not None
    assert current.setpoint_id == "sp-2"
    assert tracker.awaiting_ack == ("sp-1", "sp-2")


def test_expired_setpoint_stays_current_for_the_core_to_judge() -> None:
    """Past its validity the setpoint is still returned: the core ignores it (valid_until_s)."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0, ttl_s=5))
    tracker.report(cycle(MONO_S + 10.0, 0.0, source="fallback"), wall_now=WALL)
    current = tracker.setpoint
    assert current is not None
    assert current.setpoint_id == "sp-1"
    assert current.valid_until_s == MONO_S + 5.0 < MONO_S + 10.0


def test_setpoint_no_cycle_followed_is_acked_after_the_wait_without_a_power() -> None:
    """With no report at all, the ack goes out after ack_wait_s with a reason and no power."""
    tracker = SetpointTracker(LIMITS, ack_wait_s=2.0)
    receive(tracker, payload("sp-1", 1000.0))
    assert tracker.overdue(MONO_S + 1.9, wall_now=WALL) == []
    sent = tracker.overdue(MONO_S + 2.0, wall_now=WALL)
    (ack,) = acks(sent)
    assert ack["reason"] == "no control cycle reported within 2 s"
    assert ack["requested_power_w"] == 1000.0
    assert "applied_power_w" not in ack
    assert (sent[0].audit.action, sent[0].audit.applied_w) == ("applied", None)
    assert tracker.awaiting_ack == ()


def test_a_report_older_than_the_setpoint_does_not_answer_it() -> None:
    """A report observed before the setpoint arrived cannot say what was applied for it."""
    tracker = SetpointTracker(LIMITS, ack_wait_s=2.0)
    tracker.report(cycle(MONO_S - 1.0, -500.0, source="fallback"), wall_now=WALL)
    receive(tracker, payload("sp-1", 1000.0))
    (ack,) = acks(tracker.overdue(MONO_S + 5.0, wall_now=WALL))
    assert ack["reason"] == "no control cycle reported within 2 s"


def test_superseded_setpoint_is_acked_after_the_wait_with_what_replaced_it() -> None:
    """A setpoint replaced before any cycle followed it is acked, once overdue, with the power
    the newer one got and "superseded by" it."""
    tracker = SetpointTracker(LIMITS, ack_wait_s=0.0)
    receive(tracker, payload("sp-1", -3000.0))
    receive(tracker, payload("sp-2", -1000.0))
    sent = tracker.report(cycle(MONO_S, -1000.0, setpoint_id="sp-2"), wall_now=WALL)
    found = {ack["id"]: ack for ack in acks(sent)}
    assert found["sp-2"]["applied_power_w"] == -1000.0
    assert found["sp-1"]["binding_limit"] == "superseded by sp-2"
    assert found["sp-1"]["applied_power_w"] == -1000.0


def test_setpoint_not_followed_names_the_limit_or_the_control_source() -> None:
    """An overdue setpoint the core did not follow names the limit that bound, or else the
    source that was in control."""
    tracker = SetpointTracker(LIMITS, ack_wait_s=0.0)
    receive(tracker, payload("sp-1", 2000.0))
    sent = tracker.report(
        cycle(MONO_S, 0.0, source="none", binding_limit="fault: inverter unreachable"),
        wall_now=WALL,
    )
    assert acks(sent)[0]["binding_limit"] == "fault: inverter unreachable"
    receive(tracker, payload("sp-2", 2000.0))
    sent = tracker.report(cycle(MONO_S, 500.0, source="fallback"), wall_now=WALL)
    assert acks(sent)[0]["binding_limit"] == "not followed: control source fallback"


def test_report_for_a_setpoint_already_acked_as_overdue_sends_nothing() -> None:
    """A late report for a setpoint whose wait ran out brings no second ack."""
    tracker = SetpointTracker(LIMITS, ack_wait_s=2.0)
    receive(tracker, payload("sp-1", -3000.0, ttl_s=3))
    assert len(acks(tracker.overdue(MONO_S + 2.5, wall_now=WALL))) == 1
    late = cycle(MONO_S + 4.0, -3000.0, setpoint_id="sp-1")
    assert tracker.report(late, wall_now=WALL) == []


def test_release_is_acked_at_the_first_cycle_on_the_local_policy() -> None:
    """A release is answered by the first cycle on another source, without a requested power,
    with the limit that bound the local policy."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-r", 0.0, mode="release"))
    assert tracker.report(cycle(MONO_S + 0.1, -3000.0, setpoint_id="sp-0"), wall_now=WALL) == []
    sent = tracker.report(
        cycle(MONO_S + 0.2, 3700.0, source="fallback", binding_limit="departure"), wall_now=WALL
    )
    (ack,) = acks(sent)
    assert (ack["id"], ack["applied_power_w"], ack["binding_limit"]) == (
        "sp-r",
        3700.0,
        "departure",
    )
    assert "requested_power_w" not in ack


def test_release_and_idle_audit_what_they_ask_for() -> None:
    """A release asks for no power (requested None); idle asks for 0 W."""
    tracker = SetpointTracker(LIMITS)
    _, release = receive(tracker, payload("sp-r", 0.0, mode="release"))
    _, idle = receive(tracker, payload("sp-i", 0.0, mode="idle"), MONO_S + 0.1)
    assert isinstance(release[0], AuditLine)
    assert isinstance(idle[0], AuditLine)
    assert (release[0].line.requested_w, idle[0].line.requested_w) == (None, 0.0)


def test_awaiting_acks_are_bounded() -> None:
    """Over max_awaiting, the oldest is acked at once, before the newer one's "accepted" line."""
    tracker = SetpointTracker(LIMITS, max_awaiting=2)
    receive(tracker, payload("sp-1", 100.0))
    receive(tracker, payload("sp-2", 100.0))
    _, outputs = receive(tracker, payload("sp-3", 100.0))
    assert [type(output) for output in outputs] == [AckToSend, AuditLine]
    (ack,) = acks(outputs)
    assert (ack["id"], ack["reason"]) == ("sp-1", SUPERSEDED_REASON)
    assert "applied_power_w" not in ack
    assert tracker.awaiting_ack == ("sp-2", "sp-3")


def test_ack_waits_for_the_storage_job_of_its_accepted_line() -> None:
    """audit_posted ties a setpoint's ack to the storage job of its "accepted" line."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1", -3000.0))
    tracker.audit_posted("sp-1", 41)
    tracker.audit_posted("sp-unknown", 99)  # no longer (or never) awaiting: ignored
    sent = tracker.report(cycle(MONO_S + 0.1, -3000.0, setpoint_id="sp-1"), wall_now=WALL)
    assert [ack.after_seq for ack in sent] == [41]


def test_repr_shows_the_state() -> None:
    """The repr names the current setpoint, those awaiting an ack and the counts."""
    tracker = SetpointTracker(LIMITS)
    receive(tracker, payload("sp-1"))
    assert repr(tracker) == (
        "<SetpointTracker setpoint='sp-1' awaiting_ack=['sp-1'] accepted=1 rejected=0>"
    )
