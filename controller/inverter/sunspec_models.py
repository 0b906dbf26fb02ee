"""SunSpec model definitions, read from the SunSpec Alliance's own JSON (the pysunspec2 package).

Rather than hand-copied register tables, every offset, type, scale-factor reference and symbol
comes from ``sunspec2/models/json/model_<id>.json``. A model's fixed part is flattened into
points with their offsets counted from the model's ID register; nested groups without a repeat
count are flattened as ``Group.Point``. Repeating groups (curves, strings) are not needed for
power control and are left out.

Every point type of the SunSpec JSON is known to the codec. A definition this loader still
cannot use (a type newer than the codec, a size that contradicts its type, a malformed file)
raises ``UnusableModelError``; ``usable_model_def`` turns it, and a model with no definition at
all, into None with one log line per model id, so discovery walks past the model instead of
taking the link down with it (issue 16, item 1).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import structlog

from controller.errors import ProtocolError
from controller.inverter.codec import RegType, words_of

log = structlog.get_logger(component="inverter")


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    offset: int  # registers from the model's ID register
    size: int  # registers
    reg_type: RegType
    sf: str | int | None  # name of the scale-factor point, a fixed exponent, or none
    writable: bool
    units: str | None
    symbols: dict[int, str] = field(default_factory=dict)  # enum value or bit -> name


@dataclass(frozen=True, slots=True)
class ModelDef:
    model_id: int
    name: str
    length: int  # the L the standard gives (registers after ID and L)
    points: dict[str, PointDef]

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise UnknownPointError(
                f"model {self.model_id} ({self.name}) has no point {name!r}"
            ) from None


class UnknownPointError(ProtocolError, KeyError):
    """The definition has no point of that name (another revision of the model)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(ProtocolError, LookupError):
    """No definition for this model id in the installed SunSpec package."""


class UnusableModelError(UnknownModelError):
    """A definition this loader cannot use (unknown point type, contradictory size, bad JSON)."""


def _raw_definition(model_id: int) -> dict[str, Any]:
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise UnknownModelError(f"no SunSpec definition for model {model_id}") from None
    except ValueError as exc:  # UnicodeDecodeError
        raise UnusableModelError(f"model {model_id}: unreadable definition: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise UnusableModelError(f"model {model_id}: malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnusableModelError(f"model {model_id}: the definition is not a JSON object")
    return data


def _point_def(raw: dict[str, Any], prefix: str, offset: int) -> PointDef:
    try:
        reg_type = RegType(raw["type"])
    except ValueError:
        raise UnusableModelError(
            f"point {prefix}{raw['name']}: unknown type {raw['type']!r}"
        ) from None
    size = int(raw["size"])
    if size <= 0 or (reg_type is not RegType.STRING and size != words_of(reg_type)):
        raise UnusableModelError(
            f"point {prefix}{raw['name']}: size {size} does not match type {reg_type.value}"
        )
    name = prefix + raw["name"]
    return PointDef(
        name=name,
        offset=offset,
        size=size,
        reg_type=reg_type,
        sf=raw.get("sf"),
        writable=raw.get("access") == "RW",
        units=raw.get("units"),
        symbols={int(s["value"]): str(s["name"]) for s in raw.get("symbols", [])},
    )


def _flatten(group: dict[str, Any], prefix: str, start: int, out: dict[str, PointDef]) -> int:
    offset = start
    for raw in group.get("points", []):
        point = _point_def(raw, prefix, offset)
        out[point.name] = point
        offset += point.size
    for sub in group.get("groups", []):
        if "count" in sub and sub["count"] not in (1, "1"):
            break  # a repeating group ends the fixed part
        offset = _flatten(sub, f"{prefix}{sub['name']}.", offset, out)
    return offset


@functools.cache
def model_def(model_id: int) -> ModelDef:
    """The definition of one SunSpec model, cached.

    Raises UnknownModelError when the package has none, UnusableModelError (a subclass) when
    it has one this loader cannot use."""
    raw = _raw_definition(model_id)
    try:
        group = raw["group"]
        points: dict[str, PointDef] = {}
        end = _flatten(group, "", 0, points)
        length_point: dict[str, Any] = next((p for p in group["points"] if p["name"] == "L"), {})
        length = int(length_point.get("value") or end - 2)
        name = str(group["name"])
    except UnusableModelError as exc:
        raise UnusableModelError(f"model {model_id}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed definition
        raise UnusableModelError(
            f"model {model_id}: malformed definition ({type(exc).__name__}: {exc})"
        ) from None
    return ModelDef(model_id=model_id, name=name, length=length, points=points)


@functools.cache
def usable_model_def(model_id: int) -> ModelDef | None:
    """The model's definition, or None (logged once per model id) when there is none or the
    loader cannot use it: such a model is skipped, never fatal."""
    try:
        return model_def(model_id)
    except UnusableModelError as exc:
        log.warning(
            "SunSpec model skipped: its definition cannot be used", model=model_id, reason=str(exc)
        )
    except UnknownModelError:
        log.info("SunSpec model skipped: no definition (a vendor model?)", model=model_id)
    return None
