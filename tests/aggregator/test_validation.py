"""Setpoint validation, pure: any bytes become an accepted Setpoint or a rejection with a reason."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.aggregator.validation import (
    RETAINED_REASON,
    Accepted,
    Rejected,
    SetpointLimits,
    SetpointValidator,
    parse_setpoint,
    to_monotonic_s,
)
from controller.core.snapshots import SetpointMode

NOW = dt.datetime(2025, 3, 14, 17, 30, tzinfo=dt.UTC)
MONO_S = 5000.0
LIMITS = SetpointLimits(max_abs_power_w=22_000, max_ttl_s=900, clock_skew_s=30)


def payload(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "id": "sp-1",
        "issued_at": NOW.isoformat(),
        "ttl_s": 60,
        "power_w": -3000,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def check(
    validator: SetpointValidator,
    data: bytes,
    *,
    retained: bool = False,
    now: dt.datetime = NOW,
    mono_s: float = MONO_S,
) -> Accepted | Rejected:
    return validator.check(data, retained=retained, wall_now=now, monotonic_now_s=mono_s)


def rejected(outcome: Accepted | Rejected) -> str:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason
    return outcome.reason


def test_valid_setpoint_becomes_a_monotonic_setpoint() -> None:
    """A valid setpoint's wall-clock validity is converted to the monotonic clock at the edge."""
    outcome = check(SetpointValidator(LIMITS), payload(issued_at="2025-03-14T18:29:50+01:00"))
    assert isinstance(outcome, Accepted)
    setpoint = outcome.setpoint
    assert setpoint.setpoint_id == "sp-1"
    assert setpoint.mode is SetpointMode.POWER
    assert setpoint.power_w == -3000.0
    assert setpoint.received_at_s == MONO_S
    assert setpoint.valid_until_s == pytest.approx(MONO_S + 50.0)  # issued 10 s ago, ttl 60 s
    assert outcome.valid_until == NOW + dt.timedelta(seconds=50)


def test_valid_until_and_modes() -> None:
    """valid_until with any offset works; idle and release carry 0 W."""
    validator = SetpointValidator(LIMITS)
    until = (NOW + dt.timedelta(minutes=5)).astimezone(dt.timezone(dt.timedelta(hours=-7)))
    idle = check(
        validator,
        payload(id="sp-i", ttl_s=..., valid_until=until.isoformat(), power_w=..., mode="idle"),
    )
    assert isinstance(idle, Accepted)
    assert (idle.setpoint.mode, idle.setpoint.power_w) == (SetpointMode.IDLE, 0.0)
    assert idle.setpoint.valid_until_s == pytest.approx(MONO_S + 300)
    release = check(validator, payload(id="sp-r", power_w=0, mode="release"))
    assert isinstance(release, Accepted)
    assert release.setpoint.mode is SetpointMode.RELEASE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"id": "a", "id": "b"}', "duplicate key 'id'"),
        (b'{"id": "a", "power_w": NaN}', "NaN is not a number"),
        (b"{" * 5000, "payload too large"),
        (b"[" * 3000, "malformed JSON"),
        (payload(power_w="-3000"), "power_w: input should be a valid number"),
        (payload(power_w=True), "power_w: input should be a valid number"),
        (payload(ttl_s="60"), "ttl_s"),
        (payload(colour="red"), "unknown field 'colour'"),
        (payload(id=...), "missing field 'id'"),
        (payload(id="has space"), "id: string should match pattern"),
        (payload(id=42), "id: input should be a valid string"),
        (payload(issued_at="2025-03-14T17:30:00"), "should have timezone info"),
        (payload(issued_at=1741973400), "issued_at"),
        (payload(ttl_s=...), "exactly one of ttl_s and valid_until"),
        (payload(valid_until=NOW.isoformat()), "exactly one of ttl_s and valid_until"),
        (payload(power_w=...), "mode 'power': expected power_w"),
        (payload(power_w=None), "power_w: expected a value or the field left out, found null"),
        (payload(mode="idle"), "mode 'idle': expected power_w 0 or absent"),
        (payload(mode="boost"), "mode: input should be"),
        (payload(ttl_s=0), "ttl_s: input should be greater than 0"),
        (payload(power_w=0).replace(b'"power_w": 0', b'"power_w": 1e400'), "finite number"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(data: bytes, expected: str) -> None:
    """Malformed JSON, wrong types, unknown and missing fields: rejected, saying what is wrong."""
    assert expected in rejected(check(SetpointValidator(LIMITS), data))


def test_reason_echoes_a_readable_id() -> None:
    """A rejected payload's ack carries its id when it has a well-formed one."""
    outcome = check(SetpointValidator(LIMITS), payload(power_w="x"))
    assert isinstance(outcome, Rejected)
    assert outcome.setpoint_id == "sp-1"
    broken = check(SetpointValidator(LIMITS), b'{"id": "sp-9", "issued_at": ')
    assert isinstance(broken, Rejected)
    assert broken.setpoint_id is None


def test_out_of_range_power_is_rejected_both_ways() -> None:
    """Power beyond max_abs_power_w either way is rejected; the bound itself is accepted."""
    validator = SetpointValidator(LIMITS)
    assert "out of range" in rejected(check(validator, payload(id="a", power_w=22_001)))
    assert "out of range" in rejected(check(validator, payload(id="b", power_w=-22_001)))
    assert isinstance(check(validator, payload(id="c", power_w=-22_000)), Accepted)


def test_time_rules() -> None:
    """Expired, future-dated beyond the skew, and over-long setpoints are rejected."""
    validator = SetpointValidator(LIMITS)
    old = NOW - dt.timedelta(seconds=61)
    assert rejected(check(validator, payload(issued_at=old.isoformat()))).startswith("expired")
    soon = NOW + dt.timedelta(seconds=29)
    assert isinstance(check(validator, payload(id="skew", issued_at=soon.isoformat())), Accepted)
    later = NOW + dt.timedelta(seconds=31)
    reason = rejected(check(validator, payload(id="future", issued_at=later.isoformat())))
    assert reason.startswith("issued in the future")
    assert "over the maximum 900 s" in rejected(check(validator, payload(id="t", ttl_s=901)))
    long = (NOW + dt.timedelta(seconds=901)).isoformat()
    assert "over the maximum" in rejected(
        check(validator, payload(id="v", ttl_s=..., valid_until=long))
    )
    backwards = (NOW - dt.timedelta(seconds=1)).isoformat()
    assert "not after issued_at" in rejected(
        check(
            validator,
            payload(id="w", issued_at=NOW.isoformat(), ttl_s=..., valid_until=backwards),
        )
    )


def test_replayed_ids_and_out_of_order_issue_times_are_rejected() -> None:
    """An id accepted before is a replay; one issued before the last accepted is out of order."""
    validator = SetpointValidator(LIMITS)
    assert isinstance(check(validator, payload(id="sp-1")), Accepted)
    assert rejected(check(validator, payload(id="sp-1"))).startswith("replayed id")
    earlier = (NOW - dt.timedelta(seconds=5)).isoformat()
    assert rejected(check(validator, payload(id="sp-0", issued_at=earlier))).startswith(
        "out of order"
    )
    same_time = check(validator, payload(id="sp-2"))
    assert isinstance(same_time, Accepted)  # the same issue time is not out of order


def test_rejections_leave_the_memory_untouched() -> None:
    """Only accepted setpoints are remembered: a corrected resend with the same id is accepted."""
    validator = SetpointValidator(LIMITS)
    assert "out of range" in rejected(check(validator, payload(power_w=99_999)))
    assert isinstance(check(validator, payload()), Accepted)


def test_replay_memory_is_bounded_and_the_order_check_catches_forgotten_ids() -> None:
    """Only the last N ids are kept; an older id replayed later is still refused (out of order)."""
    validator = SetpointValidator(
        SetpointLimits(max_abs_power_w=22_000, max_ttl_s=900, clock_skew_s=30, remembered_ids=3)
    )
    for i in range(5):
        issued = (NOW + dt.timedelta(seconds=i)).isoformat()
        assert isinstance(check(validator, payload(id=f"sp-{i}", issued_at=issued)), Accepted)
    assert len(validator._accepted_ids) == 3
    replay = check(validator, payload(id="sp-0", issued_at=NOW.isoformat()))
    assert rejected(replay).startswith("out of order")


def test_retained_messages_are_never_acted_on() -> None:
    """A perfectly valid setpoint with the retain flag is rejected, keeping its id for the ack."""
    validator = SetpointValidator(LIMITS)
    outcome = check(validator, payload(), retained=True)
    assert outcome == Rejected("sp-1", RETAINED_REASON)
    assert isinstance(check(validator, payload()), Accepted)  # and it did not count as seen


def test_wall_to_monotonic_conversion() -> None:
    """A wall-clock instant maps onto the monotonic clock relative to both 'now's."""
    later = NOW + dt.timedelta(seconds=12.5)
    assert to_monotonic_s(later, NOW, 100.0) == pytest.approx(112.5)
    assert to_monotonic_s(NOW - dt.timedelta(seconds=3), NOW, 100.0) == pytest.approx(97.0)


def test_naive_wall_clock_is_a_caller_bug() -> None:
    """The caller must pass an aware wall clock; that is a programming error, not bad input."""
    with pytest.raises(ValueError, match="timezone-aware"):
        SetpointValidator(LIMITS).check(
            payload(), retained=False, wall_now=NOW.replace(tzinfo=None), monotonic_now_s=0.0
        )


def _assert_outcome(outcome: Accepted | Rejected) -> None:
    if isinstance(outcome, Rejected):
        assert isinstance(outcome.reason, str)
        assert outcome.reason
        assert len(outcome.reason) <= 300
    else:
        setpoint = outcome.setpoint
        assert abs(setpoint.power_w) <= LIMITS.max_abs_power_w
        assert MONO_S < setpoint.valid_until_s <= MONO_S + LIMITS.max_ttl_s + LIMITS.clock_skew_s


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_are_accepted_or_rejected_never_raised(data: bytes, retained: bool) -> None:
    """Arbitrary bytes never raise: a valid Setpoint or a rejection with a reason."""
    _assert_outcome(check(SetpointValidator(LIMITS), data, retained=retained))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

OFFSETS = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))])
# Instants around NOW, written with one UTC offset or another.
TIMES = st.tuples(
    st.datetimes(
        min_value=dt.datetime(2025, 3, 14, 17, 20),
        max_value=dt.datetime(2025, 3, 14, 17, 31),
        timezones=st.just(dt.UTC),
    ),
    OFFSETS,
).map(lambda pair: pair[0].astimezone(pair[1]).isoformat())


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, ``bad`` otherwise."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


# Mostly well-formed setpoints with every field perturbed now and then, so that the sequence
# test exercises acceptance as well as every kind of rejection.
SETPOINT_LIKE = st.fixed_dictionaries(
    {
        "id": mostly(st.sampled_from(["sp-1", "sp-2", "sp-3"]), st.text(max_size=5) | JSON),
        "issued_at": mostly(TIMES, JSON),
        "power_w": mostly(st.floats(min_value=-30_000, max_value=30_000), JSON),
    },
    optional={
        "ttl_s": mostly(st.floats(min_value=0, max_value=1200), JSON),
        "valid_until": mostly(TIMES, JSON),
        "mode": mostly(st.sampled_from(["power", "idle", "release"]), JSON),
    },
)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_any_json_is_accepted_or_rejected_never_raised(value: Any) -> None:
    """Arbitrary JSON documents never raise."""
    _assert_outcome(check(SetpointValidator(LIMITS), json.dumps(value).encode()))


@settings(max_examples=800, deadline=None)
@given(st.lists(SETPOINT_LIKE, min_size=1, max_size=4), st.booleans())
def test_setpoint_shaped_json_is_accepted_or_rejected_never_raised(
    documents: list[dict[str, Any]], retained: bool
) -> None:
    """Near-valid setpoints in sequence never raise; retained ones are never accepted."""
    validator = SetpointValidator(LIMITS)
    for document in documents:
        outcome = check(validator, json.dumps(document).encode(), retained=retained)
        _assert_outcome(outcome)
        if retained:
            assert isinstance(outcome, Rejected)


def test_parse_setpoint_is_stateless() -> None:
    """parse_setpoint checks shape only: the same valid payload parses every time."""
    first = parse_setpoint(payload())
    assert not isinstance(first, Rejected)
    assert parse_setpoint(payload()) == first


MARKER = "payload-text-that-must-not-come-back-in-a-reason"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Issue 20 finding 4: these used to quote the whole payload back.
        (b'{"a":' * 300 + b"1" + b"}" * 300, "malformed JSON: nested deeper than 32 levels"),
        (b"[" * 4000, "malformed JSON: nested deeper than 32 levels"),
        (b"[" * 33 + b"]" * 33, "malformed JSON: nested deeper than 32 levels"),
        (
            payload(id="sp\ud800", note=MARKER),
            "malformed JSON: a string holds a lone surrogate \\ud800 (an escape with no pair)",
        ),
        (
            payload(mode="\udfff", note=MARKER),
            "malformed JSON: a string holds a lone surrogate \\udfff (an escape with no pair)",
        ),
        (
            payload(**{"k\udc00": MARKER}),
            "malformed JSON: a string holds a lone surrogate \\udc00 (an escape with no pair)",
        ),
        (
            payload(note=MARKER).replace(b'"note"', b'"\xed\xa0\x80"'),  # a surrogate in UTF-8
            "payload is not UTF-8 text (byte 89)",
        ),
        (
            f'{{"{MARKER * 3}": 1, "{MARKER * 3}": 2}}'.encode(),
            "malformed JSON: duplicate key 'payload-text-",
        ),
        # A long value is quoted cut to 40 characters, enough to recognise it.
        (payload(id=MARKER * 3), "id: string should match pattern '^[A-Za-z0-9]"),
    ],
)
def test_reasons_are_short_specific_and_never_echo_the_payload(data: bytes, expected: str) -> None:
    """Deep nesting, lone surrogates (escaped or as bytes) and long values are rejected with a
    reason that names the problem in a bounded length, without quoting the payload."""
    reason = rejected(check(SetpointValidator(LIMITS), data))
    assert reason.startswith(expected)
    assert MARKER not in reason
    assert len(reason) <= 120
    assert "issued_at" not in reason  # no JSON text quoted back


def test_a_paired_surrogate_escape_is_a_character() -> None:
    """An emoji written as a surrogate-pair escape is text like any other (here in an id that
    the alphabet then refuses, by name)."""
    reason = rejected(check(SetpointValidator(LIMITS), payload(id="sp-\U0001f600")))
    assert reason.startswith("id: string should match pattern")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ttl_s": 900.0001}, "ttl_s 900.0001 s is over the maximum 900 s"),
        (
            {"ttl_s": ..., "valid_until": (NOW + dt.timedelta(seconds=900.000001)).isoformat()},
            "valid for 900.000001 s from issued_at, over the maximum 900 s",
        ),
        (
            {"power_w": 22_000.01},
            "power_w out of range: 22000.01 W, expected at most 22000 W charging or discharging",
        ),
    ],
)
def test_a_value_just_over_a_bound_is_shown_with_the_digits_that_make_it_over(
    fields: dict[str, Any], expected: str
) -> None:
    """Issue 20 finding 4: "ttl_s 900 s is over the maximum 900 s" for 900.0001 is false; the
    value is shown with every digit it needs."""
    assert rejected(check(SetpointValidator(LIMITS), payload(**fields))) == expected
