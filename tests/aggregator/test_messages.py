"""The wire format: shipped JSON Schemas match the models, and docs/mqtt.md's examples validate."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pydantic
import pytest

from controller.aggregator.durable_outbox import DurableOutbox
from controller.aggregator.messages import (
    TOPIC_MODELS,
    AckMessage,
    SetpointMessage,
    schema_files,
    with_record_id,
)
from controller.storage.db import open_database
from tests.aggregator.test_durable_outbox import session

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "mqtt.md"
EXAMPLE = re.compile(r"^```json (\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_examples() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]


def test_shipped_schema_files_are_generated_from_the_models() -> None:
    """controller/aggregator/schemas/*.json equal what the models export (regenerate with
    python -m controller.aggregator.messages)."""
    shipped = resources.files("controller.aggregator") / "schemas"
    for name, text in schema_files().items():
        assert (shipped / name).read_text(encoding="utf-8") == text, f"{name} is out of date"
    assert sorted(p.name for p in shipped.iterdir() if p.name.endswith(".json")) == sorted(
        schema_files()
    )


def test_every_topic_has_examples_in_the_docs() -> None:
    """docs/mqtt.md shows at least one example for every JSON topic."""
    assert {topic for topic, _ in doc_examples()} == set(TOPIC_MODELS)


@pytest.mark.parametrize(("topic", "text"), doc_examples())
def test_doc_examples_validate_against_their_model(topic: str, text: str) -> None:
    """Every JSON example in docs/mqtt.md is a valid payload of its topic."""
    model = TOPIC_MODELS[topic]
    message = model.model_validate_json(text)
    assert model.model_validate_json(message.to_json()) == message  # and it round-trips


def test_schema_says_what_the_model_enforces() -> None:
    """The published setpoint schema forbids unknown fields and states the cross-field rules."""
    schema = json.loads(schema_files()["setpoint.schema.json"])
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"id", "issued_at"}
    assert {"required": ["ttl_s"]} in schema["allOf"][0]["oneOf"]
    assert schema["properties"]["power_w"]["type"] == "number"  # never null


def test_optional_fields_are_omitted_not_null() -> None:
    """An ack leaves out the fields that do not apply, but keeps a null id."""
    ack = AckMessage.model_validate_json(
        '{"id": null, "accepted": false, "at": "2025-03-14T17:30:00Z", "reason": "x"}'
    )
    assert json.loads(ack.to_json()) == {
        "type": "ack",
        "id": None,
        "accepted": False,
        "at": "2025-03-14T17:30:00Z",
        "reason": "x",
    }


def test_setpoint_model_is_strict() -> None:
    """Strings are not numbers and null is not absence."""
    with pytest.raises(pydantic.ValidationError):
        SetpointMessage.model_validate_json(
            '{"id": "a", "issued_at": "2025-03-14T17:30:00Z", "ttl_s": "5", "power_w": 1}'
        )


OUTGOING = ("ack", "price_ack", "telemetry", "status", "event", "session")


@pytest.mark.parametrize("topic", OUTGOING)
def test_every_published_payload_says_its_type_first(topic: str) -> None:
    """Each payload the charger publishes has "type", its topic's name, as the first field,
    and the schema requires it (a consumer routes on it); incoming ones have none."""
    schema = json.loads(schema_files()[f"{topic}.schema.json"])
    assert schema["required"][0] == "type"
    assert next(iter(schema["properties"])) == "type"
    assert schema["properties"]["type"]["const"] == topic
    for name, text in doc_examples():
        if name == topic:
            assert next(iter(json.loads(text))) == "type", f"docs/mqtt.md {topic} example"
    for incoming in ("setpoint", "price_schedule", "price_event"):
        assert "type" not in json.loads(schema_files()[f"{incoming}.schema.json"])["properties"]


def test_a_session_record_from_the_outbox_carries_its_type(tmp_path: Path) -> None:
    """The ledger's session body has no type: the outbox stores it through the model, so the
    published payload starts with "type": "session", then "record_id"."""
    outbox = DurableOutbox(open_database(tmp_path / "ledger.sqlite"))
    record_id = outbox.put("session", session())
    (record,) = outbox.peek()
    payload = json.loads(record.payload())
    assert list(payload)[:3] == ["type", "record_id", "session_id"]
    assert (payload["type"], payload["record_id"]) == ("session", record_id)
    TOPIC_MODELS["session"].model_validate_json(record.payload())


def test_a_record_stored_without_a_type_gets_its_kind() -> None:
    """A body an older version stored (no "type") is published with its kind as the type."""
    assert with_record_id("w-7", b'{"at":"x","kind":"fault_raised"}', "event") == (
        b'{"type":"event","record_id":"w-7","at":"x","kind":"fault_raised"}'
    )
    assert with_record_id("w-8", b'{"type":"event","at":"x"}', "event") == (
        b'{"type":"event","record_id":"w-8","at":"x"}'
    )
