"""Setpoint validation: bytes from the broker in, an accepted ``Setpoint`` or a reason out.

Pure: no IO, no clock reads, no logging. The caller passes the MQTT retain flag and both clocks'
"now" (the aware wall clock for the aggregator's RFC 3339 times, the monotonic clock the core
uses), and logs and acknowledges what comes back. Nothing here raises on bad input: every
payload, whatever its bytes, becomes ``Accepted`` or ``Rejected`` with a readable reason. A
reason is short (at most 300 characters) and never quotes the payload back: it names the
check, the field and, for a number, the value with all the digits that make it true.

Checks, in order (the first that fails is the reason):

1. size (at most 4 KiB), UTF-8, well-formed JSON without duplicate keys or NaN/Infinity,
   nested at most ``MAX_JSON_DEPTH`` levels, and no lone UTF-16 surrogate in a string;
2. the MQTT retain flag: a retained message is stale by nature and never acted on;
3. shape: a JSON object, known fields only, strict types (a number is never a string), an
   ``id`` from a safe alphabet, times with a UTC offset, one of ``ttl_s``/``valid_until``;
4. replay: an id accepted before (the last ``remembered_ids`` are kept; an older id that was
   forgotten is still caught by the order check, as accepted issue times never go back);
5. power within ``max_abs_power_w`` either way;
6. time: ttl at most ``max_ttl_s``, not issued further in the future than the clock-skew
   tolerance, not expired by the charger's clock, and not issued before the setpoint accepted
   last (out of order).

The wall-clock validity is converted to the core's monotonic clock here, at the edge:
``valid_until_s = monotonic_now_s + (valid_until - wall_now)``, so a later step of the wall
clock (NTP) cannot stretch or cut a setpoint already accepted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pydantic

from controller.aggregator.messages import (
    ID_PATTERN,
    MAX_SETPOINT_PAYLOAD_BYTES,
    SetpointMessage,
)
from controller.core.snapshots import Setpoint, SetpointMode

RETAINED_REASON = "retained message: a setpoint is never taken from a retained message"
# No message of the link nests deeper than 3 levels (a price schedule's slots); 32 leaves room
# and stays far below the parsers' own recursion limits (Python's json ~1000, pydantic's 200).
MAX_JSON_DEPTH = 32
_MAX_REASON_CHARS = 300
_MAX_SHOWN_CHARS = 40  # a rejected value quoted in a reason, at most
_ID_RE = re.compile(ID_PATTERN)
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff, paired or not


@dataclass(frozen=True, slots=True)
class SetpointLimits:
    """The bounds a setpoint must respect (from ``AggregatorConfig``)."""

    max_abs_power_w: float
    max_ttl_s: float
    clock_skew_s: float
    max_payload_bytes: int = MAX_SETPOINT_PAYLOAD_BYTES
    remembered_ids: int = 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid setpoint, already on the core's monotonic clock."""

    setpoint: Setpoint
    message: SetpointMessage
    valid_until: dt.datetime  # aware wall clock, as the aggregator meant it

    @property
    def requested_power_w(self) -> float:
        return self.setpoint.power_w


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload refused, with the id to acknowledge (None when it could not be read)."""

    setpoint_id: str | None
    reason: str


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"duplicate key {_shown(key)}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def exact(value: float) -> str:
    """A number as short as it can be and still true: "900" for 900.0, "900.0001" for
    900.0001 (which ``:g`` alone would round to "900")."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _shown(value: object) -> str:
    """A rejected value for a reason: short values as they are, long ones cut."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 1] + "…"


def clip_reason(text: str) -> str:
    """A reason cut to a length an ack and a log line can carry."""
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def describe_error(exc: pydantic.ValidationError) -> str:
    """A payload model's validation errors as one readable reason (the first three)."""
    parts: list[str] = []
    for err in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif kind == "missing":
            parts.append(f"missing field {where!r}")
        elif kind == "model_type":
            parts.append("expected a JSON object")
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
            parts.append(f"{where}: {message}" if where else message)
        else:
            found = err.get("input")
            # The parser's own errors carry the whole payload as their input: never echoed.
            echo = kind != "json_invalid" and not isinstance(found, dict | list | bytes)
            shown = f", found {_shown(found)}" if echo else ""
            message = f"{err['msg'][0].lower()}{err['msg'][1:]}{shown}"
            parts.append(f"{where}: {message}" if where else message)
    more = len(exc.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return clip_reason("; ".join(parts))


def readable_id(data: Any) -> str | None:
    """The id to echo in the ack, if the payload has a well-formed one."""
    if isinstance(data, dict):
        candidate = data.get("id")
        if isinstance(candidate, str) and _ID_RE.fullmatch(candidate):
            return candidate
    return None


def _unfit_json(text: str, data: Any) -> str | None:
    """Why parsed JSON is unfit for the models, or None: nested deeper than
    ``MAX_JSON_DEPTH``, or a string (key or value) holding a lone UTF-16 surrogate, which
    Python's json module decodes from a "\\ud800" escape (RFC 8259 §8.2 leaves it to the
    parser) but which is no Unicode character, so no model field can hold it. The text tells
    which walks are needed: valid UTF-8 holds no surrogate but as an escape."""
    check_depth = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    check_strings = _SURROGATE_ESCAPE_RE.search(text) is not None
    if not (check_depth or check_strings):
        return None
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            pending.extend(
                (item, depth + 1)
                for item in items
                if isinstance(item, dict | list) or (check_strings and isinstance(item, str))
            )
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                code = ord(value[exc.start])
                return f"a string holds a lone surrogate \\u{code:04x} (an escape with no pair)"
    return None


def _parsed(text: str) -> tuple[Any, str | None]:
    """The JSON text parsed, or what is wrong with it."""
    try:
        data = json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constants
        )
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at offset {exc.pos}"
    except RecursionError:
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:  # a duplicate key, NaN or Infinity
        return None, str(exc)
    return data, _unfit_json(text, data)


def load_json(payload: bytes, max_payload_bytes: int) -> tuple[Any, Rejected | None]:
    """The payload as JSON data, or why not: too large, not UTF-8, malformed, a duplicate key,
    NaN/Infinity (which Python's json module would otherwise accept), too deeply nested, or a
    lone surrogate. Shared by setpoints and prices (``prices.py``)."""
    if len(payload) > max_payload_bytes:
        return None, Rejected(
            None, f"payload too large: {len(payload)} bytes, at most {max_payload_bytes}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Rejected(None, f"payload is not UTF-8 text (byte {exc.start})")
    data, problem = _parsed(text)
    if problem is not None:
        # Parsed but unfit (too deep, a lone surrogate): the id is still worth echoing.
        return None, Rejected(readable_id(data), clip_reason(f"malformed JSON: {problem}"))
    return data, None


def parse_setpoint(
    payload: bytes, max_payload_bytes: int = MAX_SETPOINT_PAYLOAD_BYTES
) -> SetpointMessage | Rejected:
    """The payload's shape checked, with no clock and no memory involved."""
    data, problem = load_json(payload, max_payload_bytes)
    if problem is not None:
        return problem
    if not isinstance(data, dict):
        return Rejected(None, "expected a JSON object")
    try:
        return SetpointMessage.model_validate_json(payload)
    except pydantic.ValidationError as exc:
        return Rejected(readable_id(data), describe_error(exc))


def to_monotonic_s(wall_time: dt.datetime, wall_now: dt.datetime, monotonic_now_s: float) -> float:
    """A wall-clock instant on the monotonic clock, as seen now."""
    return monotonic_now_s + (wall_time - wall_now).total_seconds()


def _when(value: dt.datetime) -> str:
    return value.isoformat()


class SetpointValidator:
    """Validates setpoints one by one; remembers accepted ids and the last issue time.

    Memory is bounded: the ids of the last ``limits.remembered_ids`` accepted setpoints.
    """

    def __init__(self, limits: SetpointLimits) -> None:
        self.limits = limits
        self._accepted_ids: OrderedDict[str, None] = OrderedDict()
        self._last_issued_at: dt.datetime | None = None

    def check(
        self,
        payload: bytes,
        *,
        retained: bool,
        wall_now: dt.datetime,
        monotonic_now_s: float,
    ) -> Accepted | Rejected:
        """Accept or reject one payload; accepting updates the replay and order memory."""
        if wall_now.tzinfo is None:
            raise ValueError("wall_now must be timezone-aware")  # a caller bug, not bad input
        if retained:
            data, _ = load_json(payload, self.limits.max_payload_bytes)
            return Rejected(readable_id(data), RETAINED_REASON)
        parsed = parse_setpoint(payload, self.limits.max_payload_bytes)
        if isinstance(parsed, Rejected):
            return parsed
        outcome = self._judge(parsed, wall_now, monotonic_now_s)
        if isinstance(outcome, Accepted):
            self._remember(parsed)
        return outcome

    def _judge(  # noqa: PLR0911  one return per documented check, in order
        self, msg: SetpointMessage, wall_now: dt.datetime, monotonic_now_s: float
    ) -> Accepted | Rejected:
        limits = self.limits

        def reject(reason: str) -> Rejected:
            return Rejected(msg.id, clip_reason(reason))

        if msg.id in self._accepted_ids:
            return reject(f"replayed id: {msg.id!r} was already accepted")
        power_w = msg.power_w if msg.mode == "power" and msg.power_w is not None else 0.0
        if abs(power_w) > limits.max_abs_power_w:
            return reject(
                f"power_w out of range: {exact(power_w)} W, expected at most "
                f"{exact(limits.max_abs_power_w)} W charging or discharging"
            )
        if msg.ttl_s is not None and msg.ttl_s > limits.max_ttl_s:
            return reject(
                f"ttl_s {exact(msg.ttl_s)} s is over the maximum {exact(limits.max_ttl_s)} s"
            )
        skew = dt.timedelta(seconds=limits.clock_skew_s)
        if msg.issued_at - wall_now > skew:
            return reject(
                f"issued in the future: issued_at {_when(msg.issued_at)} is more than "
                f"{exact(limits.clock_skew_s)} s after this charger's clock ({_when(wall_now)})"
            )
        if msg.valid_until is not None:
            valid_until = msg.valid_until
        else:
            assert msg.ttl_s is not None  # noqa: S101  the model requires one of the two
            valid_until = msg.issued_at + dt.timedelta(seconds=msg.ttl_s)
        ttl_s = (valid_until - msg.issued_at).total_seconds()
        if ttl_s <= 0:
            return reject("valid_until is not after issued_at")
        if ttl_s > limits.max_ttl_s:
            return reject(
                f"valid for {exact(ttl_s)} s from issued_at, over the maximum "
                f"{exact(limits.max_ttl_s)} s"
            )
        if valid_until <= wall_now:
            return reject(
                f"expired: valid until {_when(valid_until)}, charger clock {_when(wall_now)}"
            )
        if self._last_issued_at is not None and msg.issued_at < self._last_issued_at:
            return reject(
                f"out of order: issued_at {_when(msg.issued_at)} is before the last accepted "
                f"setpoint's ({_when(self._last_issued_at)})"
            )
        setpoint = Setpoint(
            setpoint_id=msg.id,
            received_at_s=monotonic_now_s,
            valid_until_s=to_monotonic_s(valid_until, wall_now, monotonic_now_s),
            mode=SetpointMode(msg.mode),
            power_w=power_w,
        )
        return Accepted(setpoint, msg, valid_until)

    def _remember(self, msg: SetpointMessage) -> None:
        self._accepted_ids[msg.id] = None
        while len(self._accepted_ids) > self.limits.remembered_ids:
            self._accepted_ids.popitem(last=False)
        if self._last_issued_at is None or msg.issued_at > self._last_issued_at:
            self._last_issued_at = msg.issued_at
