"""The MQTT payloads the aggregator link reads and writes, as pydantic models.

These models are the single source of truth for the wire format: the link validates and
serialises with them, and the JSON Schemas in ``controller/aggregator/schemas/`` are exported
from them (``python -m controller.aggregator.messages`` rewrites the files; a test checks they
are current). docs/mqtt.md shows the same examples, and a test validates every example there.

Field rule for every message: a field that may be absent is never ``null`` (it is omitted); a
field that is always present may be ``null`` where the schema says so ("not measured").

Sign convention: ``+`` charges the vehicle (import), ``-`` discharges it (export).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

# Ids end up in acks and logs: a safe alphabet, long enough for a UUID or a ULID with a prefix.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_SETPOINT_PAYLOAD_BYTES = 4096
# A week of 15-minute slots (672): about 87 KB compact, 132 KB indented by 4; room for both.
# The incoming queue (32 messages, client.py) then holds at most 8 MiB.
MAX_PRICE_SCHEDULE_PAYLOAD_BYTES = 256 * 1024
MAX_PRICE_EVENT_PAYLOAD_BYTES = 4096
MAX_PRICE_SLOTS = 7 * 96  # economics/schedule.py MAX_SLOTS, stated in the schema
# No physical charger is anywhere near this; the config's max_abs_power_w is the real bound.
ABSOLUTE_POWER_LIMIT_W = 1_000_000.0

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Source = Literal["aggregator", "fallback", "none"]
State = Literal["idle", "charging", "discharging", "stopping", "fault"]


def _strip_null_from_optional(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """An optional field is omitted rather than null: say so in the schema. The record type of an
    outgoing payload has a default in the model, but the charger always sends it: required."""
    for name, field in model.model_fields.items():
        if name == "type":
            schema["required"] = ["type", *schema.get("required", [])]
            schema["properties"]["type"].pop("default", None)
            continue
        if field.is_required():
            continue
        prop = schema.get("properties", {}).get(name)
        if prop is None or "anyOf" not in prop:
            continue
        branches = [b for b in prop["anyOf"] if b != {"type": "null"}]
        if len(branches) == 1:
            del prop["anyOf"]
            prop.update(branches[0])
        else:
            prop["anyOf"] = branches
        if prop.get("default", ...) is None:
            del prop["default"]


class _Message(BaseModel):
    """Every payload: immutable, strict types, no unknown fields, no NaN or infinity."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra=_strip_null_from_optional,
    )

    def to_json(self) -> bytes:
        """Compact JSON; optional fields that are unset are left out, never sent as null."""
        omit = {
            name
            for name, field in type(self).model_fields.items()
            if not field.is_required() and getattr(self, name) is None
        }
        return self.model_dump_json(exclude=omit).encode()


# --- in: aggregator -> charger ----------------------------------------------------------------


def _setpoint_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    _strip_null_from_optional(schema, model)
    # The cross-field rules the model's validator enforces, in JSON Schema terms.
    schema["allOf"] = [
        {"oneOf": [{"required": ["ttl_s"]}, {"required": ["valid_until"]}]},
        {
            "if": {"required": ["mode"], "properties": {"mode": {"enum": ["idle", "release"]}}},
            "then": {"properties": {"power_w": {"const": 0}}},
            "else": {"required": ["power_w"]},
        },
    ]


class SetpointMessage(_Message):
    """A command from the aggregator (topic 'setpoint', QoS 1, never retained).

    Give exactly one of 'ttl_s' and 'valid_until'. 'power_w' is required for mode
    'power'; for 'idle' and 'release' it is absent or 0.
    """

    model_config = ConfigDict(
        title="setpoint",
        json_schema_extra=_setpoint_schema,
    )

    id: str = Field(
        pattern=ID_PATTERN,
        description="Unique per command; echoed in the ack. A repeated id is rejected.",
    )
    issued_at: AwareDatetime = Field(
        description="When the aggregator issued it: RFC 3339 with a UTC offset."
    )
    valid_until: AwareDatetime | None = Field(
        default=None, description="End of validity (RFC 3339 with offset); or give ttl_s."
    )
    ttl_s: float | None = Field(
        default=None, gt=0, description="Validity in seconds from issued_at; or give valid_until."
    )
    power_w: float | None = Field(
        default=None,
        ge=-ABSOLUTE_POWER_LIMIT_W,
        le=ABSOLUTE_POWER_LIMIT_W,
        description="+ charges the vehicle, - discharges it. Required for mode 'power'.",
    )
    mode: Literal["power", "idle", "release"] = Field(
        default="power",
        description="power: follow power_w; idle: hold 0 W; release: hand control back to the "
        "charger's local fallback policy.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # A "before" validator would turn JSON parsing into Python-mode parsing, where strict
        # datetimes refuse strings; so explicit nulls are found here, from the fields set.
        for name in sorted(self.model_fields_set):
            if getattr(self, name) is None:
                raise ValueError(f"{name}: expected a value or the field left out, found null")
        if (self.ttl_s is None) == (self.valid_until is None):
            raise ValueError("expected exactly one of ttl_s and valid_until")
        if self.mode == "power" and self.power_w is None:
            raise ValueError("mode 'power': expected power_w, found none")
        if self.mode != "power" and self.power_w not in (None, 0.0):
            raise ValueError(f"mode {self.mode!r}: expected power_w 0 or absent")
        return self


class PriceSlotMessage(_Message):
    """One slot of a price schedule: constant prices over [start, end)."""

    model_config = ConfigDict(title="price_slot")

    start: AwareDatetime = Field(description="RFC 3339 with a UTC offset; inclusive.")
    end: AwareDatetime = Field(description="RFC 3339 with a UTC offset; exclusive.")
    import_per_kwh: float = Field(description="What the owner pays per kWh taken from the grid.")
    export_per_kwh: float = Field(description="What the owner is paid per kWh given back.")


class PriceScheduleMessage(_Message):
    """Import and export prices per slot from the aggregator (topic 'price_schedule', QoS 1,
    never retained). Slots in time order, each starting where the one before ended."""

    model_config = ConfigDict(title="price_schedule")

    id: str = Field(
        pattern=ID_PATTERN,
        description="Unique per schedule; echoed in the ack. A repeated id is rejected.",
    )
    issued_at: AwareDatetime = Field(
        description="When the aggregator issued it: RFC 3339 with a UTC offset. Older than "
        "the schedule accepted last: rejected as stale."
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217; the site's currency.")
    slots: list[PriceSlotMessage] = Field(min_length=1, max_length=MAX_PRICE_SLOTS)


def _price_event_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    _strip_null_from_optional(schema, model)
    # The model validator's rule: an announcement or a cancellation, never both.
    schema["oneOf"] = [
        {
            "required": ["start", "end", "bonus_per_kwh"],
            "not": {"required": ["cancels"]},
        },
        {
            "required": ["cancels"],
            "not": {
                "anyOf": [
                    {"required": ["start"]},
                    {"required": ["end"]},
                    {"required": ["bonus_per_kwh"]},
                    {"required": ["power_w"]},
                ]
            },
        },
    ]


class PriceEventMessage(_Message):
    """A peak event, or the cancellation of one (topic 'price_event', QoS 1, never retained).

    An event gives 'start', 'end' and 'bonus_per_kwh' (and optionally 'power_w'); its 'id' is
    the event's id. A cancellation gives only 'cancels', the id of the event it withdraws, and
    an 'id' of its own.
    """

    model_config = ConfigDict(title="price_event", json_schema_extra=_price_event_schema)

    id: str = Field(
        pattern=ID_PATTERN,
        description="Unique per message; echoed in the ack; an event's id. A repeated id is "
        "rejected.",
    )
    issued_at: AwareDatetime = Field(description="RFC 3339 with a UTC offset.")
    start: AwareDatetime | None = Field(default=None, description="Event start (inclusive).")
    end: AwareDatetime | None = Field(default=None, description="Event end (exclusive).")
    bonus_per_kwh: float | None = Field(
        default=None, ge=0, description="Added to the export price for export inside the event."
    )
    power_w: float | None = Field(
        default=None,
        gt=0,
        le=ABSOLUTE_POWER_LIMIT_W,
        description="Requested discharge power (a magnitude): the bonus applies to export up to "
        "it. Absent: to all export.",
    )
    cancels: str | None = Field(
        default=None, pattern=ID_PATTERN, description="The id of the event this cancels."
    )

    @model_validator(mode="after")
    def _announce_or_cancel(self) -> Self:
        for name in sorted(self.model_fields_set):
            if getattr(self, name) is None:
                raise ValueError(f"{name}: expected a value or the field left out, found null")
        announced = [
            n for n in ("start", "end", "bonus_per_kwh", "power_w") if n in self.model_fields_set
        ]
        if self.cancels is not None:
            if announced:
                raise ValueError(f"a cancellation gives only 'cancels', found {announced}")
            return self
        missing = [n for n in ("start", "end", "bonus_per_kwh") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"an event needs start, end and bonus_per_kwh; missing {missing}")
        return self


# --- out: charger -> aggregator ---------------------------------------------------------------
#
# Every payload the charger publishes starts with "type", its topic's name, so a consumer that
# takes several topics from one queue routes on the payload alone.

_TYPE_DESCRIPTION = "What this payload is (the topic's name), for routing; always the first field."


class AckMessage(_Message):
    """The answer to every setpoint (topic 'ack', QoS 1, not retained).

    Rejected: 'accepted' false and a 'reason'. Accepted: the power the first control cycle
    that followed it applied, what was asked, and what made them differ.
    """

    model_config = ConfigDict(title="ack")

    type: Literal["ack"] = Field(default="ack", description=_TYPE_DESCRIPTION)

    id: str | None = Field(description="The setpoint's id; null if it could not be read.")
    accepted: bool
    at: AwareDatetime = Field(description="When the charger decided.")
    reason: str | None = Field(
        default=None,
        description="Why it was rejected; on an accepted ack, why the applied power is unknown.",
    )
    requested_power_w: float | None = Field(default=None, description="power_w as asked.")
    applied_power_w: float | None = Field(
        default=None, description="The power commanded by the control cycle that followed it."
    )
    binding_limit: str | None = Field(
        default=None,
        description="What made applied differ from requested (the limit that cut the request, "
        "the ramp, ...); present whenever they differ by more than 0.5 W.",
    )


class PriceAckMessage(_Message):
    """The answer to every price schedule and price event (topic 'price_ack', QoS 1, not
    retained): accepted, or rejected with a reason; nothing changes on a rejection."""

    model_config = ConfigDict(title="price_ack")

    type: Literal["price_ack"] = Field(default="price_ack", description=_TYPE_DESCRIPTION)

    id: str | None = Field(description="The message's id; null if it could not be read.")
    topic: Literal["price_schedule", "price_event"] = Field(
        description="The topic of the message answered."
    )
    accepted: bool
    at: AwareDatetime = Field(description="When the charger decided.")
    reason: str | None = Field(default=None, description="Why it was rejected.")
    version: int | None = Field(
        default=None,
        ge=1,
        description="On an accepted ack: the charger's price book version after the change.",
    )


class Flexibility(_Message):
    """What the charger could do right now, under every limit in force."""

    model_config = ConfigDict(title="flexibility")

    max_charge_power_w: float = Field(ge=0)
    max_discharge_power_w: float = Field(ge=0, description="A magnitude.")
    soc_floor_pct: float | None = Field(description="Effective floor (owner, vehicle, departure).")
    energy_above_floor_wh: float | None = Field(description="What could be discharged now.")


class PlanBody(_Message):
    """The local plan's next slots (fallback 'optimize'): the flexibility until departure."""

    model_config = ConfigDict(title="plan")

    plan_number: int = Field(description="Goes up with every new plan.")
    start: AwareDatetime = Field(description="Start of the first slot (the one in force).")
    slot_s: float = Field(gt=0)
    power_w: list[float] = Field(description="Planned power per slot: + charge, - discharge.")
    soc_end_pct: list[float] = Field(description="The plan's SoC at each slot's end.")
    ends_at: AwareDatetime = Field(description="End of the plan (departure, or the horizon).")
    value: float = Field(description="The whole plan's net value for the owner.")
    target_reachable: bool
    reason: str = Field(description="Why this plan was made.")


class LimitBody(_Message):
    """A limit in force: the power in 'direction' may not exceed 'power_w'."""

    model_config = ConfigDict(title="limit")

    rule: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="The rule's name, e.g. 'soc_floor', 'vehicle_stale' (docs/safety.md).",
    )
    direction: Literal["charge", "discharge"]
    power_w: float = Field(ge=0, description="A magnitude, to 1 W; 0: none allowed that way.")


class TelemetryBody(_Message):
    """Measurements and flexibility (topic 'telemetry', QoS 1, not retained), on a change (at
    most one per 'telemetry_min_interval_s') and every 'telemetry_period_s' ('telemetry_idle_
    period_s' while idle). The body as stored; the payload adds 'record_id'."""

    model_config = ConfigDict(title="telemetry")

    type: Literal["telemetry"] = Field(default="telemetry", description=_TYPE_DESCRIPTION)

    at: AwareDatetime
    state: State
    source: Source = Field(description="Who decides the power: aggregator, fallback, or none.")
    setpoint_id: str | None = Field(description="The setpoint being followed, if any.")
    enabled: bool = Field(description="Power stage enabled.")
    commanded_power_w: float
    measured_power_w: float | None = Field(description="At the inverter; null: not measured.")
    soc_pct: float | None
    voltage_v: float | None = Field(description="Vehicle pack voltage.")
    binding_limit: LimitBody | None = Field(
        description="The limit that cut the power asked for; null: none did."
    )
    limits: list[LimitBody] = Field(
        description="Every limit in force, one per rule and direction (the lowest)."
    )
    faults: list[str]
    flexibility: Flexibility
    plan: PlanBody | None = Field(
        default=None, description="The local plan's next slots, when it plans."
    )


def _record_id_field() -> Any:
    return Field(
        pattern=ID_PATTERN,
        description="Unique forever per charger (also across restarts and a new database); "
        "a message seen again with the same record_id is a redelivery: drop it.",
    )


class TelemetryMessage(TelemetryBody):
    """Measurements and flexibility (topic 'telemetry', QoS 1, not retained), on a change (at
    most one per 'telemetry_min_interval_s') and every 'telemetry_period_s' ('telemetry_idle_
    period_s' while idle); kept and delivered in order after an outage."""

    model_config = ConfigDict(title="telemetry")

    record_id: str = _record_id_field()


class StatusMessage(_Message):
    """The charger's state at a glance (topic 'status', QoS 1, retained), on change and on
    every (re)connect."""

    model_config = ConfigDict(title="status")

    type: Literal["status"] = Field(default="status", description=_TYPE_DESCRIPTION)

    at: AwareDatetime
    state: State
    source: Source
    setpoint_id: str | None
    enabled: bool
    faults: list[str]


EventKind = Literal[
    "link_restored",
    "control_source_changed",
    "fault_raised",
    "fault_cleared",
    "messages_dropped",
    "records_dropped",
    "storage_failed",
    "storage_restored",
    "revert_settings_rewritten",
]


class EventBody(_Message):
    """Something happened (topic 'event', QoS 1, not retained). The body as stored; the payload
    adds 'record_id'."""

    model_config = ConfigDict(title="event")

    type: Literal["event"] = Field(default="event", description=_TYPE_DESCRIPTION)

    at: AwareDatetime
    kind: EventKind
    message: str = Field(description="Readable summary.")
    setpoint_id: str | None = None
    fault: str | None = None
    from_source: Source | None = None
    to_source: Source | None = None
    down_s: float | None = Field(default=None, ge=0, description="How long the link was down.")
    dropped: int | None = Field(
        default=None, ge=0, description="Messages or stored records dropped on overflow."
    )


class EventMessage(EventBody):
    """Something happened (topic 'event', QoS 1, not retained); kept and delivered in order
    after an outage."""

    model_config = ConfigDict(title="event")

    record_id: str = _record_id_field()


Money = Annotated[float, Field(description="In 'currency' units.")]


class ReceiptRefusal(_Message):
    """Discharges the core refused or reduced for one reason during the session."""

    model_config = ConfigDict(title="refusal")

    reason: str = Field(
        min_length=1, max_length=64, description="The binding limit's rule, e.g. 'soc_floor'."
    )
    count: int = Field(
        ge=1, description="Episodes: a run of control cycles cut by this rule counts once."
    )
    example: str = Field(max_length=256, description="One binding limit, as the core wrote it.")


class SessionReceipt(_Message):
    """The owner's receipt for the session (controller/economics/receipt.py, docs/ledger.md)."""

    model_config = ConfigDict(title="receipt")

    session_id: str = Field(min_length=1, max_length=64)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. 'CNY'.")
    plugged_in_at: AwareDatetime
    ended_at: AwareDatetime
    charged_kwh: float = Field(ge=0, description="Energy into the vehicle.")
    discharged_kwh: float = Field(ge=0, description="Energy out of the vehicle.")
    import_cost: Money = Field(description="Each kWh at the import price in force then.")
    export_revenue: Money = Field(description="Each kWh at the export price then, bonuses in.")
    wear_cost: float = Field(ge=0, description="What the session's cycles cost the battery.")
    net: Money = Field(description="export_revenue - import_cost - wear_cost.")
    soc_at_plug_in_pct: float | None = Field(ge=0, le=100)
    soc_at_end_pct: float | None = Field(ge=0, le=100, description="At unplugging.")
    soc_at_departure_pct: float | None = Field(
        ge=0, le=100, description="At the planned departure; null: the car left before it."
    )
    target_soc_pct: float | None = Field(ge=0, le=100, description="null: no departure target.")
    departure_at: AwareDatetime | None = Field(description="The planned departure.")
    target_met: bool | None = Field(description="null: no target, or no SoC reported.")
    refusals: list[ReceiptRefusal] = Field(max_length=64)
    peak_event_kwh: float = Field(ge=0, description="Exported while a peak event ran.")
    owner_message: str = Field(min_length=1, max_length=256, description="One line for the owner.")


class SessionBody(_Message):
    """One finished charging or discharging session from the energy ledger (topic 'session',
    QoS 1, not retained). The body as stored; the payload adds 'record_id'."""

    model_config = ConfigDict(title="session")

    type: Literal["session"] = Field(default="session", description=_TYPE_DESCRIPTION)

    session_id: str = Field(min_length=1, max_length=64)
    protocol: str = Field(
        min_length=1, max_length=32, description="The vehicle protocol, e.g. 'chademo'."
    )
    vehicle_id: str | None = Field(max_length=128, description="null: the car did not say.")
    started_at: AwareDatetime
    ended_at: AwareDatetime
    soc_start_pct: float | None = Field(ge=0, le=100)
    soc_end_pct: float | None = Field(ge=0, le=100)
    charged_kwh: float = Field(ge=0, description="Energy into the vehicle.")
    discharged_kwh: float = Field(ge=0, description="Energy out of the vehicle.")
    energy_source: str = Field(
        min_length=1, max_length=32, description="Where the energy figures come from."
    )
    import_cost: Money
    export_value: Money
    net_value: Money = Field(description="export_value - import_cost, in 'currency' units.")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. 'EUR'.")
    end_reason: str | None = Field(
        min_length=1, max_length=256, description="Why the session ended; null: not known."
    )
    receipt: SessionReceipt | None = Field(
        default=None,
        description="The owner's receipt; absent when it could not be made (a wall clock that "
        "stepped back past the plug-in) or from a controller without receipts.",
    )


class SessionMessage(SessionBody):
    """One finished session (topic 'session', QoS 1, not retained); kept and delivered in order
    after an outage."""

    model_config = ConfigDict(title="session")

    record_id: str = _record_id_field()


_TYPE_FIRST = re.compile(rb'^\{"type":"[a-z_]+"')


def with_record_id(record_id: str, body_json: bytes, kind: str | None = None) -> bytes:
    """A stored record's payload: its body (a JSON object serialised by its model, so "type"
    comes first) with ``record_id`` right after "type". A body stored before records had a type
    (by an older version, still in the outbox) gets ``kind`` as its type."""
    members = body_json[1:]  # after "{": "}" or '"name":value,...}'
    typed = _TYPE_FIRST.match(body_json)
    if typed is not None:
        first = [body_json[1 : typed.end()]]
        members = body_json[typed.end() :].removeprefix(b",")
    elif kind is not None:
        first = [b'"type":' + json.dumps(kind).encode()]
    else:
        first = []
    first.append(b'"record_id":' + json.dumps(record_id).encode())
    return b"{" + b",".join(first) + (b"}" if members == b"}" else b"," + members)


AVAILABILITY_ONLINE = b"online"
AVAILABILITY_OFFLINE = b"offline"

# The JSON payload of each topic (availability is the bare word "online" or "offline").
TOPIC_MODELS: dict[str, type[_Message]] = {
    "setpoint": SetpointMessage,
    "ack": AckMessage,
    "price_schedule": PriceScheduleMessage,
    "price_event": PriceEventMessage,
    "price_ack": PriceAckMessage,
    "telemetry": TelemetryMessage,
    "status": StatusMessage,
    "event": EventMessage,
    "session": SessionMessage,
}

# The store-and-forward records (``durable_outbox.py``): kind -> the body it stores.
# Each is published on the topic of the same name with 'record_id' added.
RECORD_BODIES: dict[str, type[_Message]] = {
    "telemetry": TelemetryBody,
    "event": EventBody,
    "session": SessionBody,
}


def json_schema(topic: str) -> dict[str, Any]:
    """The published JSON Schema of one topic's payload."""
    schema = TOPIC_MODELS[topic].model_json_schema()
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{topic}.schema.json", **schema}


def schema_files() -> dict[str, str]:
    """File name -> content of every published schema, exactly as shipped."""
    return {
        f"{topic}.schema.json": json.dumps(json_schema(topic), indent=2) + "\n"
        for topic in TOPIC_MODELS
    }


def write_schema_files(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Rewrite the shipped schema files from the models."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_schema_files():
        sys.stdout.write(f"{written_path}\n")
