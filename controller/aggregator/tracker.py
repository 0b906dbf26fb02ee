"""Setpoints in, acks and audit lines out: the aggregator link's bookkeeping, sans-IO.

In the style of h11: no asyncio, no MQTT, no clock reads (both clocks' "now" are arguments) and
no logging. The link hands over each setpoint payload (``receive``) and each control cycle's
report (``report``), and publishes and audits what comes back; the tests drive it with plain
values.

What it keeps:

* the setpoint accepted last (``setpoint``). It is handed to the core as it is: judging its
  validity is the core's job (past ``valid_until_s`` the core ignores it and its fallback policy
  takes over), so an expired setpoint stays here until a newer one is accepted;
* the accepted setpoints still waiting for their ack, oldest first, at most ``max_awaiting``;
* the latest control report, which answers a setpoint that no report named in time;
* the validator (``validation.py``) with its replay memory.

Which ack a setpoint gets (docs/mqtt.md, "Ack"):

1. a rejected payload: at once, ``accepted: false`` with the reason (and the id, if readable);
2. an accepted setpoint: at the first report that names it, with the power that cycle applied;
   ``binding_limit`` whenever that differs from the power asked by more than 0.5 W, and only
   then: what made the difference (``what_binds``: the limit that cut the request, the ramp
   on its way to it, or whatever else the cycle's rules say);
3. a ``release``: at the first report after it on a source other than the aggregator, with what
   the local policy applied and what bound it (as in 2., against what the policy asked), and
   no requested power;
4. one no report answered within ``ack_wait_s``: with the latest report's power (given one came
   after the setpoint), and as ``binding_limit`` "superseded by <id>", the limit that bound, or
   "not followed: control source <source>"; with no report since, a ``reason`` instead;
5. more than ``max_awaiting`` waiting: the oldest at once, with a ``reason`` and no power.

Every ack comes with its audit line ("rejected", or "applied" with the binding limit as reason),
and every accepted setpoint with an "accepted" line. The ack of an accepted setpoint waits for
the storage job its "accepted" line went to (``AckToSend.after_seq``): the link tells the tracker
that job's number with ``audit_posted`` (0, the default, waits for nothing).
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, replace

from controller.aggregator.messages import AckMessage
from controller.aggregator.validation import Accepted, Rejected, SetpointLimits, SetpointValidator
from controller.core.rules import Rule
from controller.core.snapshots import Setpoint, SetpointMode
from controller.links import ControlOutput, ControlReport, SetpointAudit

ACK_WAIT_S = 2.0  # an accepted setpoint no control cycle followed is acked after this anyway
MAX_AWAITING_ACK = 64
APPLIED_TOLERANCE_W = 0.5  # an applied power this close to the request names no binding limit
SUPERSEDED_REASON = "superseded before any control cycle reported"


@dataclass(frozen=True, slots=True)
class AckToSend:
    """An ack to publish on the ack topic once storage job ``after_seq`` was processed, and
    the audit line that goes with it."""

    message: AckMessage
    audit: SetpointAudit
    after_seq: int = 0


@dataclass(frozen=True, slots=True)
class AuditLine:
    """An audit line with no ack of its own (a setpoint accepted)."""

    line: SetpointAudit


Output = AckToSend | AuditLine


@dataclass(frozen=True, slots=True)
class Received:
    """What became of one setpoint payload, and what to publish and audit, in order."""

    outcome: Accepted | Rejected
    outputs: tuple[Output, ...]


@dataclass(frozen=True, slots=True)
class _AwaitingAck:
    setpoint_id: str
    requested_power_w: float
    received_at_s: float  # monotonic
    mode: SetpointMode
    audit_seq: int = 0  # the storage job of its "accepted" audit line; its ack waits for it


def _reason_of(output: ControlOutput, rule: Rule) -> str | None:
    """The cycle's reason for ``rule`` ("ramp: 0 W toward -3000 W at 500 W/s"), if it gave one
    (``rules`` and ``reasons`` go in the same order)."""
    for found, reason in zip(output.rules, output.reasons, strict=False):
        if found is rule:
            return reason
    return None


def what_binds(output: ControlOutput, requested_w: float) -> str | None:
    """What made the cycle's command differ from ``requested_w``; None when it did not (within
    ``APPLIED_TOLERANCE_W``). Never empty when they differ, in this order:

    * the limit that cut the request, followed by the ramp when the command is still on its way
      to that limit ("soc_floor ...; ramp: ...");
    * the ramp alone (the request fits every limit; the command gets there step by step);
    * arbitration, when the request the core took is not ``requested_w`` (another source);
    * the wait for a start after an emergency-stop reset;
    * otherwise the cycle's state and source, so the difference is never unexplained.
    """
    applied_w = output.command.power_w
    if abs(applied_w - requested_w) <= APPLIED_TOLERANCE_W:
        return None
    ramp = _reason_of(output, Rule.RAMP)
    if output.binding_limit:
        return output.binding_limit if ramp is None else f"{output.binding_limit}; {ramp}"
    if ramp is not None:
        return ramp
    if abs(output.requested_w - requested_w) > APPLIED_TOLERANCE_W:
        arbitration = _reason_of(output, Rule.ARBITRATION)
        if arbitration is not None:
            return arbitration
    waiting = _reason_of(output, Rule.FAULT_RESET)
    if waiting is not None:
        return waiting
    enabled = "enabled" if output.command.enable else "disabled"
    return f"state {output.state}, source {output.source}, power stage {enabled}"


def _with_audit(ack: AckMessage, action: str, after_seq: int = 0) -> AckToSend:
    """An ack and its audit line: for "applied", the reason is the binding limit (or why the
    applied power is unknown)."""
    line = SetpointAudit(
        at=ack.at,
        setpoint_id=ack.id,
        action=action,
        requested_w=ack.requested_power_w,
        applied_w=ack.applied_power_w,
        reason=ack.reason if ack.binding_limit is None else ack.binding_limit,
    )
    return AckToSend(ack, line, after_seq)


class SetpointTracker:
    """Validates setpoints and decides their acks; see the module docstring."""

    def __init__(
        self,
        limits: SetpointLimits,
        *,
        ack_wait_s: float = ACK_WAIT_S,
        max_awaiting: int = MAX_AWAITING_ACK,
    ) -> None:
        if max_awaiting < 1:
            raise ValueError(f"max_awaiting must be >= 1, found {max_awaiting}")
        self.ack_wait_s = ack_wait_s
        self.max_awaiting = max_awaiting
        self._validator = SetpointValidator(limits)
        self._setpoint: Setpoint | None = None
        self._awaiting: OrderedDict[str, _AwaitingAck] = OrderedDict()
        self._latest_report: ControlReport | None = None
        self.accepted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        current = None if self._setpoint is None else self._setpoint.setpoint_id
        return (
            f"<SetpointTracker setpoint={current!r} awaiting_ack={list(self._awaiting)!r} "
            f"accepted={self.accepted} rejected={self.rejected}>"
        )

    @property
    def setpoint(self) -> Setpoint | None:
        """The setpoint accepted last (expired or not: the core judges), or None."""
        return self._setpoint

    @property
    def awaiting_ack(self) -> tuple[str, ...]:
        """The ids of accepted setpoints not acked yet, oldest first."""
        return tuple(self._awaiting)

    def receive(
        self, payload: bytes, *, retained: bool, wall_now: dt.datetime, monotonic_now_s: float
    ) -> Received:
        """One setpoint payload as the broker delivered it."""
        outcome = self._validator.check(
            payload, retained=retained, wall_now=wall_now, monotonic_now_s=monotonic_now_s
        )
        if isinstance(outcome, Rejected):
            self.rejected += 1
            ack = AckMessage(
                id=outcome.setpoint_id, accepted=False, at=wall_now, reason=outcome.reason
            )
            return Received(outcome, (_with_audit(ack, "rejected"),))
        setpoint = outcome.setpoint
        self.accepted += 1
        self._setpoint = setpoint
        outputs: list[Output] = []
        if len(self._awaiting) >= self.max_awaiting:
            _, oldest = self._awaiting.popitem(last=False)
            outputs.append(self._ack_unknown(oldest, SUPERSEDED_REASON, wall_now))
        requested_w = None if setpoint.mode is SetpointMode.RELEASE else setpoint.power_w
        outputs.append(
            AuditLine(
                SetpointAudit(
                    at=wall_now,
                    setpoint_id=setpoint.setpoint_id,
                    action="accepted",
                    requested_w=requested_w,
                )
            )
        )
        self._awaiting[setpoint.setpoint_id] = _AwaitingAck(
            setpoint.setpoint_id, setpoint.power_w, setpoint.received_at_s, setpoint.mode
        )
        return Received(outcome, tuple(outputs))

    def audit_posted(self, setpoint_id: str, seq: int) -> None:
        """The "accepted" audit line of ``setpoint_id`` went to storage job ``seq``: its ack
        waits for that job."""
        awaiting = self._awaiting.get(setpoint_id)
        if awaiting is not None:
            self._awaiting[setpoint_id] = replace(awaiting, audit_seq=seq)

    def report(self, report: ControlReport, *, wall_now: dt.datetime) -> list[AckToSend]:
        """A control cycle's outcome: the acks it answers, and those now overdue."""
        self._latest_report = report
        acks: list[AckToSend] = []
        if report.setpoint_id is not None:
            awaiting = self._awaiting.pop(report.setpoint_id, None)
            if awaiting is not None:
                acks.append(self._ack_applied(awaiting, report, wall_now))
        for awaiting in list(self._awaiting.values()):
            # A release hands control to the local policy: the first cycle on it is the answer.
            if (
                awaiting.mode is SetpointMode.RELEASE
                and report.source != "aggregator"
                and report.monotonic_s >= awaiting.received_at_s
            ):
                del self._awaiting[awaiting.setpoint_id]
                acks.append(self._ack_applied(awaiting, report, wall_now))
        acks.extend(self.overdue(report.monotonic_s, wall_now=wall_now))
        return acks

    def overdue(self, now_s: float, *, wall_now: dt.datetime) -> list[AckToSend]:
        """The acks of setpoints no control cycle followed within ``ack_wait_s``."""
        acks: list[AckToSend] = []
        while self._awaiting:
            setpoint_id, awaiting = next(iter(self._awaiting.items()))
            if now_s - awaiting.received_at_s < self.ack_wait_s:
                break
            del self._awaiting[setpoint_id]
            report = self._latest_report
            if report is None or report.monotonic_s < awaiting.received_at_s:
                reason = f"no control cycle reported within {self.ack_wait_s:g} s"
                acks.append(self._ack_unknown(awaiting, reason, wall_now))
                continue
            if report.source == "aggregator" and report.setpoint_id not in (None, setpoint_id):
                binding = f"superseded by {report.setpoint_id}"
            else:
                binding = report.binding_limit or f"not followed: control source {report.source}"
            ack = AckMessage(
                id=setpoint_id,
                accepted=True,
                at=wall_now,
                requested_power_w=awaiting.requested_power_w,
                applied_power_w=report.commanded_w,
                binding_limit=binding,
            )
            acks.append(_with_audit(ack, "applied", awaiting.audit_seq))
        return acks

    @staticmethod
    def _ack_applied(
        awaiting: _AwaitingAck, report: ControlReport, wall_now: dt.datetime
    ) -> AckToSend:
        applied_w = report.commanded_w
        requested_w: float | None
        if awaiting.mode is SetpointMode.RELEASE:
            # Nothing was requested: the local policy decides, within the same limits; what
            # bound is judged against what the policy asked.
            requested_w = None
            binding = report.binding_limit or what_binds(report.output, report.output.requested_w)
        else:
            requested_w = awaiting.requested_power_w
            binding = what_binds(report.output, requested_w)
        ack = AckMessage(
            id=awaiting.setpoint_id,
            accepted=True,
            at=wall_now,
            requested_power_w=requested_w,
            applied_power_w=applied_w,
            binding_limit=binding,
        )
        return _with_audit(ack, "applied", awaiting.audit_seq)

    @staticmethod
    def _ack_unknown(awaiting: _AwaitingAck, reason: str, wall_now: dt.datetime) -> AckToSend:
        ack = AckMessage(
            id=awaiting.setpoint_id,
            accepted=True,
            at=wall_now,
            requested_power_w=awaiting.requested_power_w,
            reason=reason,
        )
        return _with_audit(ack, "applied", awaiting.audit_seq)
